"""The wheel ``pip wheel .`` builds (what the Yocto recipe's PEP 517 build makes) is complete: it
installs into a clean venv and runs there without the source tree."""

from __future__ import annotations

import subprocess
import venv
import zipfile
from pathlib import Path


def test_wheel_runs_from_a_clean_venv(wheelhouse: Path, tmp_path: Path):
    (wheel,) = wheelhouse.glob("pysupervisor-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    # The Cython hot paths are compiled into the wheel (not only their pure-Python twins).
    for ext in ("_logcodec", "_rsync"):
        assert any(n.startswith(f"supervisor/{ext}.") and n.endswith(".so") for n in names), names
    assert not any(n.endswith((".pyx", ".c")) for n in names)

    env_dir = tmp_path / "venv"
    venv.create(env_dir, with_pip=True)
    python = env_dir / "bin/python"
    subprocess.run([python, "-m", "pip", "install", "-q", "--no-index", "--find-links", wheelhouse,
                    "pysupervisor"], check=True, timeout=300)
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    clean_env = {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path)}  # no PYTHONPATH to the repo
    run = subprocess.run([python, "-m", "supervisor", "--help"], cwd=outside, env=clean_env,
                         capture_output=True, text=True, timeout=60)
    assert run.returncode == 0, run.stderr
    assert run.stdout.startswith("usage: python -m supervisor")
    where = subprocess.run(
        [python, "-c", "import supervisor, supervisor._logcodec, supervisor._rsync, hw.led; "
                       "print(supervisor.__file__); print(supervisor._logcodec.__file__)"],
        cwd=outside, env=clean_env, capture_output=True, text=True, timeout=60, check=True)
    for line in where.stdout.splitlines():
        assert line.startswith(str(env_dir)), where.stdout
