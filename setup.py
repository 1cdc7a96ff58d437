"""Build hook: compile every ext/*.pyx into an extension module of the ``supervisor`` package.

The module name is ``supervisor._<stem>`` so ``ext/logcodec.pyx`` becomes ``supervisor._logcodec``.
Everything else about the package lives in pyproject.toml.
"""

from pathlib import Path

from Cython.Build import cythonize
from setuptools import Extension, setup

HERE = Path(__file__).parent

extensions = [
    Extension(f"supervisor._{pyx.stem}", [str(pyx.relative_to(HERE))], extra_compile_args=["-O2"])
    for pyx in sorted((HERE / "ext").glob("*.pyx"))
]

setup(
    ext_modules=cythonize(
        extensions,
        language_level=3,
        compiler_directives={"boundscheck": False, "wraparound": False, "cdivision": True},
    ),
)
