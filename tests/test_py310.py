"""The package stays runnable on kirkstone: Python 3.10 and kirkstone's build tools and libraries
(balenaos-integration.md §4.1, §4.3, §4.4; yocto/README.md "Kirkstone").

``vermin`` checks every module against 3.10 (a static check, always run). Where a real Python 3.10
exists (pyenv's on this project's machines), the wheel is also built as kirkstone's recipe builds it,
with setuptools 59.5, Cython 0.29.28 and tomli (``python -m build --no-isolation``), installed with
kirkstone's versions of the libraries (this layer's recipes where it ships one), and run: every module
imports, the CLI answers, and the compiled extensions agree with their pure-Python twins and rdiff.
"""

from __future__ import annotations

import glob
import os
import shutil
import subprocess
import sys
import tomllib
import zipfile
from email.parser import Parser
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

import supervisor
from tests.test_yocto_layer import _ours

REPO = Path(__file__).resolve().parents[1]

#: kirkstone's build tools (oe-core kirkstone; Cython and setuptools at the release's own version).
KIRKSTONE_BUILD = ["setuptools==59.5.0", "wheel==0.37.1", "Cython==0.29.28", "build==0.7.0", "tomli==2.0.1"]
#: What a kirkstone image has at run time: this layer's recipes for kirkstone (checked below), and the
#: other layers' versions (§4.4; None there stands for the closest release of the time).
KIRKSTONE_RUNTIME = {
    "flask": "3.0.3", "werkzeug": "3.0.6", "blinker": "1.8.2", "waitress": "3.0.2",
    "docker": "7.1.0", "sdbus": "0.14.0", "gpiozero": "2.0.1", "prometheus-client": "0.21.1",
    "click": "8.1.2", "itsdangerous": "2.1.2", "jinja2": "3.1.2", "markupsafe": "2.1.1", "colorzero": "2.0",
    "requests": "2.27.1", "urllib3": "1.26.18", "charset-normalizer": "2.0.12", "idna": "3.3",
    "certifi": "2022.12.7", "psutil": "5.9.0",
}


#: vermin's console script (``vermin = vermin:main``), run by this interpreter.
VERMIN = [sys.executable, "-c", "import sys, vermin; sys.exit(vermin.main())"]


def test_package_is_python310_compatible():
    """No standard-library name or syntax newer than 3.10 in supervisor/ and hw/."""
    proc = subprocess.run([*VERMIN, "--target=3.10-", "--no-tips", "--violations", "supervisor", "hw"],
                          cwd=REPO, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_vermin_catches_a_311_only_name(tmp_path):
    """The check above can fail: datetime.UTC (3.11) is reported."""
    (tmp_path / "m.py").write_text("from datetime import UTC\nprint(UTC)\n")
    proc = subprocess.run([*VERMIN, "--target=3.10-", "--no-tips", "--violations", str(tmp_path)],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode != 0 and "datetime.UTC" in proc.stdout


def test_runtime_pins_are_this_layers_kirkstone_recipes():
    for package, recipe in _ours("kirkstone").items():
        name = package.removeprefix("python3-")
        if name in KIRKSTONE_RUNTIME:
            assert recipe.stem.split("_", 1)[1] == KIRKSTONE_RUNTIME[name], recipe.name
    shipped = {p.removeprefix("python3-") for p in _ours("kirkstone")} - {"pysupervisor"}
    assert shipped <= set(KIRKSTONE_RUNTIME)


def _python310() -> str | None:
    """A working Python 3.10: pyenv's (this project's machines have one) or python3.10 on PATH."""
    roots = {os.environ.get("PYENV_ROOT") or "", os.path.expanduser("~/.pyenv")} - {""}
    candidates = [p for r in sorted(roots) for p in sorted(glob.glob(f"{r}/versions/3.10*/bin/python3.10"))]
    candidates.append(shutil.which("python3.10") or "")
    for path in filter(None, candidates):
        probe = subprocess.run([path, "-c", "import sys; print(sys.version_info[:2] == (3, 10))"],
                               capture_output=True, text=True, timeout=30)
        if probe.stdout.strip() == "True":  # a pyenv shim for an inactive version fails here
            return path
    return None


def _run(*cmd: str | Path, **kw) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run([str(c) for c in cmd], capture_output=True, text=True, **kw)
    assert proc.returncode == 0, f"{' '.join(map(str, cmd))}:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return proc


def test_kirkstone_toolchain_builds_a_wheel_that_runs_on_python310(tmp_path):
    python310 = _python310()
    if python310 is None:
        pytest.skip("no Python 3.10 interpreter here (python3.10 on PATH or pyenv's); the vermin check "
                    "above still guards 3.10 compatibility")
    env_dir = tmp_path / "venv310"
    _run(python310, "-m", "venv", env_dir, timeout=120)
    python = env_dir / "bin/python"
    pip = [python, "-m", "pip", "install", "-q", "--disable-pip-version-check"]
    _run(*pip, *KIRKSTONE_BUILD, timeout=300)

    # The recipe's sources: the files its SRC_URI names, without anything built in place.
    src = tmp_path / "pysupervisor"
    ignore = shutil.ignore_patterns("*.so", "*.c", "__pycache__", "build")
    src.mkdir()
    for name in ("pyproject.toml", "setup.py", "README.md"):
        shutil.copy(REPO / name, src / name)
    for name in ("ext", "hw", "supervisor"):
        shutil.copytree(REPO / name, src / name, ignore=ignore)
    _run(python, "-m", "build", "--no-isolation", "--wheel", "--outdir", tmp_path / "dist", src,
         cwd=src, timeout=540)
    (wheel,) = (tmp_path / "dist").glob("*.whl")
    assert wheel.name == f"pysupervisor-{supervisor.__version__}-cp310-cp310-linux_x86_64.whl"
    names = set(zipfile.ZipFile(wheel).namelist())
    tree = {str(p.relative_to(REPO)) for d in ("supervisor", "hw") for p in (REPO / d).rglob("*.py")}
    assert tree <= names, sorted(tree - names)
    compiled = {n.split(".")[0] for n in names if n.endswith(".so")}
    assert compiled == {"supervisor/_logcodec", "supervisor/_rsync"}
    dist_info = f"pysupervisor-{supervisor.__version__}.dist-info"
    metadata = zipfile.ZipFile(wheel).read(f"{dist_info}/METADATA").decode()
    assert "balena-supervisor-py = supervisor.cli:main" in zipfile.ZipFile(wheel).read(
        f"{dist_info}/entry_points.txt").decode()
    # setuptools 59 knows no [project] table: setup.py must have passed the same metadata.
    meta = Parser().parsestr(metadata)
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    assert meta["Requires-Python"] == project["requires-python"]
    def normal(spec: str) -> tuple[str, str]:
        requirement = Requirement(spec)
        return canonicalize_name(requirement.name), str(requirement.specifier)

    required = {normal(r) for r in meta.get_all("Requires-Dist") if "extra ==" not in r}
    assert required == {normal(r) for r in project["dependencies"]}

    _run(*pip, "--no-deps", wheel, *(f"{k}=={v}" for k, v in KIRKSTONE_RUNTIME.items()), timeout=540)
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    clean = {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path)}
    help_text = _run(python, "-m", "supervisor", "--help", cwd=outside, env=clean, timeout=60).stdout
    assert help_text.startswith("usage: python -m supervisor")
    check = r"""
import importlib, pkgutil, sys
import supervisor, hw
assert sys.version_info[:2] == (3, 10), sys.version
for pkg in (supervisor, hw):
    for mod in pkgutil.walk_packages(pkg.__path__, pkg.__name__ + "."):
        if not mod.name.endswith("__main__"):
            importlib.import_module(mod.name)
import supervisor._logcodec as c, supervisor.logs._codec_py as p
assert c.__file__.startswith(sys.prefix), c.__file__
for stamp in (b"2024-01-02T03:04:05.123456789Z", b"2024-02-29T23:59:59+01:00", b"1999-12-31T00:00:00.5-0330",
              b"2023-02-29T00:00:00Z", b"nonsense"):
    assert c.parse_timestamp(stamp) == p.parse_timestamp(stamp), stamp
for record in ({"message": "h\u00e9\n\"x\x01", "timestamp": 1700000000123, "isStdErr": False},
               {"message": "\ud83d\ude00" * 3, "timestamp": -1, "isStdErr": True, "serviceId": 2 ** 70}):
    assert c.encode(record) == p.encode(record), record
print("ok")
"""
    assert _run(python, "-c", check, cwd=outside, env=clean, timeout=120).stdout.strip() == "ok"

    # The compiled rsync against the reference tool: rdiff applies our delta, we apply rdiff's.
    rdiff = shutil.which("rdiff")
    assert rdiff, "rdiff is missing: run .ci/setup (it installs it)"
    basis, new = tmp_path / "basis", tmp_path / "new"
    data = os.urandom(300_000)
    basis.write_bytes(data)
    new.write_bytes(data[:100_000] + os.urandom(5_000) + data[120_000:] + b"tail")
    delta = [python, "-m", "supervisor.delta", "-f"]
    _run(*delta, "signature", basis, tmp_path / "sig", cwd=outside, env=clean, timeout=120)
    _run(*delta, "delta", tmp_path / "sig", new, tmp_path / "ours.delta", cwd=outside, env=clean, timeout=120)
    _run(rdiff, "patch", basis, tmp_path / "ours.delta", tmp_path / "by-rdiff", timeout=120)
    assert (tmp_path / "by-rdiff").read_bytes() == new.read_bytes()
    _run(rdiff, "signature", basis, tmp_path / "rsig", timeout=120)
    _run(rdiff, "delta", tmp_path / "rsig", new, tmp_path / "theirs.delta", timeout=120)
    _run(*delta, "patch", basis, tmp_path / "theirs.delta", tmp_path / "by-us", cwd=outside, env=clean,
         timeout=120)
    assert (tmp_path / "by-us").read_bytes() == new.read_bytes()
