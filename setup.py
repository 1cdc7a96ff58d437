"""Build hook: compile every ext/*.pyx into an extension module of the ``supervisor`` package.

The module name is ``supervisor._<stem>`` so ``ext/logcodec.pyx`` becomes ``supervisor._logcodec``.
Everything else about the package lives in pyproject.toml.

The Yocto recipe builds with the release's own tools (yocto/README.md): scarthgap has setuptools 69 and
Cython 3, kirkstone setuptools 59 and Cython 0.29 (balenaos-integration.md §4.1, §4.3). Both work:
the .pyx sources are written for Cython 0.29 and 3 alike (ext/README.md), and with a setuptools older
than 61, which ignores pyproject.toml's ``[project]`` table, the same metadata is passed to ``setup()``
from it.
"""

import re
from pathlib import Path

import Cython
import setuptools
from Cython.Build import cythonize
from setuptools import Extension, find_packages, setup

HERE = Path(__file__).parent


def _version(text: str) -> tuple[int, ...]:
    return tuple(int(part) for part in re.findall(r"\d+", text)[:3])


def _pyx_source(pyx: Path) -> str:
    """The source Cython compiles: the .pyx itself, or for a Cython older than 0.29.31 (kirkstone 4.0
    has 0.29.28), which does not know ``noexcept``, a copy without the keyword. That is exact: 0.29
    treats every cdef function without an exception clause as noexcept."""
    if _version(Cython.__version__) >= (0, 29, 31):
        return str(pyx.relative_to(HERE))
    copy = HERE / "build" / f"cython-{Cython.__version__}" / pyx.name
    copy.parent.mkdir(parents=True, exist_ok=True)
    copy.write_text(re.sub(r"\bnoexcept\b ?", "", pyx.read_text()))
    return str(copy.relative_to(HERE))


def _metadata_for_old_setuptools() -> dict:
    """pyproject.toml's metadata as ``setup()`` arguments, for setuptools < 61 (no PEP 621)."""
    try:
        import tomllib
    except ModuleNotFoundError:  # Python 3.10: kirkstone's build tools bring tomli (python3-build)
        import tomli as tomllib
    pyproject = tomllib.loads((HERE / "pyproject.toml").read_text())
    project = pyproject["project"]
    init = (HERE / "supervisor/__init__.py").read_text()
    return {
        "name": project["name"],
        "version": re.search(r'^__version__ = "([^"]+)"$', init, re.M)[1],
        "description": project["description"],
        "long_description": (HERE / project["readme"]).read_text(),
        "long_description_content_type": "text/markdown",
        "license": project["license"]["text"],
        "python_requires": project["requires-python"],
        "install_requires": project["dependencies"],
        "extras_require": project.get("optional-dependencies", {}),
        "entry_points": {"console_scripts": [f"{k} = {v}" for k, v in project.get("scripts", {}).items()]},
        "packages": find_packages(include=pyproject["tool"]["setuptools"]["packages"]["find"]["include"]),
    }


extensions = [
    Extension(f"supervisor._{pyx.stem}", [_pyx_source(pyx)], extra_compile_args=["-O2"])
    for pyx in sorted((HERE / "ext").glob("*.pyx"))
]

setup(
    ext_modules=cythonize(
        extensions,
        language_level=3,
        compiler_directives={"boundscheck": False, "wraparound": False, "cdivision": True},
    ),
    **(_metadata_for_old_setuptools() if _version(setuptools.__version__) < (61,) else {}),
)
