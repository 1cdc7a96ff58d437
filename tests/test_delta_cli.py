"""``python -m supervisor.delta``: rdiff's arguments in rdiff's order, run as a real subprocess."""

from __future__ import annotations

import os
import random
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PROG = "python -m supervisor.delta"


def _rdiff() -> str:
    path = shutil.which("rdiff")
    assert path, "rdiff is not installed (apt-get install -y rdiff): the interoperability tests need it"
    return path


def cli(*args: str, cwd: Path, stdin: bytes | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}  # this checkout, not some installed copy
    return subprocess.run(
        [sys.executable, "-m", "supervisor.delta", *args],
        cwd=cwd,
        env=env,
        input=stdin,
        capture_output=True,
        timeout=60,
    )


@pytest.fixture
def files(tmp_path):
    rng = random.Random(42)
    basis = rng.randbytes(300_000)
    new = bytearray(basis)
    for _ in range(20):
        pos = rng.randrange(len(new))
        new[pos : pos + rng.randrange(100)] = rng.randbytes(rng.randrange(200))
    (tmp_path / "basis").write_bytes(basis)
    (tmp_path / "new").write_bytes(bytes(new))
    return tmp_path


def test_signature_delta_patch_roundtrip(files):
    for args in (
        ["signature", "basis", "sig"],
        ["delta", "sig", "new", "delta"],
        ["patch", "basis", "delta", "out"],
    ):
        result = cli(*args, cwd=files)
        assert (result.returncode, result.stdout, result.stderr) == (0, b"", b""), args
    assert (files / "out").read_bytes() == (files / "new").read_bytes()
    subprocess.run([_rdiff(), "signature", "basis", "rdiff.sig"], cwd=files, check=True)
    assert (files / "sig").read_bytes() == (files / "rdiff.sig").read_bytes()
    subprocess.run([_rdiff(), "patch", "basis", "delta", "rdiff.out"], cwd=files, check=True)
    assert (files / "rdiff.out").read_bytes() == (files / "new").read_bytes()


def test_patches_rdiffs_delta(files):
    subprocess.run([_rdiff(), "signature", "basis", "sig"], cwd=files, check=True)
    subprocess.run([_rdiff(), "delta", "sig", "new", "delta"], cwd=files, check=True)
    assert cli("patch", "basis", "delta", "out", cwd=files).returncode == 0
    assert (files / "out").read_bytes() == (files / "new").read_bytes()


@pytest.mark.parametrize(
    "options",
    [["-H", "md4"], ["-R", "rollsum"], ["--hash=md4", "--rollsum=rollsum"], ["-b", "1024", "-S", "-1"]],
)
def test_signature_options_match_rdiff(files, options):
    subprocess.run([_rdiff(), *options, "signature", "basis", "rdiff.sig"], cwd=files, check=True)
    result = cli("signature", *options, "basis", "sig", cwd=files)  # options after the command too
    assert result.returncode == 0, result.stderr
    assert (files / "sig").read_bytes() == (files / "rdiff.sig").read_bytes()


def test_stdin_and_stdout(files):
    sig = cli("signature", cwd=files, stdin=(files / "basis").read_bytes())
    assert sig.returncode == 0 and sig.stdout[:4] == b"rs\x01\x47"
    (files / "sig").write_bytes(cli("signature", "basis", "-", cwd=files).stdout)
    delta = cli("delta", "sig", "-", cwd=files, stdin=(files / "new").read_bytes())
    assert delta.returncode == 0 and delta.stdout[:4] == b"rs\x026"
    out = cli("patch", "basis", cwd=files, stdin=delta.stdout)
    assert (out.returncode, out.stdout) == (0, (files / "new").read_bytes())


def test_corrupt_delta_exits_2_and_leaves_no_output(files):
    cli("signature", "basis", "sig", cwd=files)
    cli("delta", "sig", "new", "delta", cwd=files)
    delta = (files / "delta").read_bytes()
    (files / "cut").write_bytes(delta[:-5])
    result = cli("patch", "basis", "cut", "out", cwd=files)
    assert result.returncode == 2
    assert result.stderr.decode().startswith(f"{PROG}: patch: delta truncated at offset {len(delta) - 5}: ")
    assert result.stderr.count(b"\n") == 1
    assert sorted(p.name for p in files.iterdir()) == [
        "basis",
        "cut",
        "delta",
        "new",
        "sig",
    ]  # no out, no temp

    new = (files / "new").read_bytes()
    (files / "bad").write_bytes(delta[:4] + b"\x99")
    result = cli("-f", "patch", "basis", "bad", "new", cwd=files)  # -f: would replace new
    assert result.returncode == 2
    assert result.stderr == f"{PROG}: patch: unknown opcode 0x99 at delta offset 4\n".encode()
    assert (files / "new").read_bytes() == new  # a failed patch replaces nothing


def test_corrupt_signature_exits_2(files):
    (files / "sig").write_bytes(b"rs\x01\x47" + bytes(8))
    result = cli("delta", "sig", "new", "delta", cwd=files)
    assert result.returncode == 2
    assert b"signature block length is 0" in result.stderr
    assert not (files / "delta").exists()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ([], "the following arguments are required: command"),
        (["frobnicate"], "invalid choice: 'frobnicate'"),
        (["delta"], "usage: delta SIGNATURE [NEWFILE [DELTA]]"),
        (["patch", "a", "b", "c", "d"], "usage: patch BASIS [DELTA [NEWFILE]]"),
        (["signature", "a", "b", "c"], "usage: signature [BASIS [SIGNATURE]]"),
        (["--bogus", "signature"], "unrecognized arguments: --bogus"),
        (["-b", "-3", "signature", "basis", "sig"], "--block-size must be >= 0"),
        (["-S", "33", "signature", "basis", "sig"], "strong sum length 33 is not in 1..32"),
        (["signature", "missing", "sig"], "No such file or directory: 'missing'"),
        (["patch", "-", "delta", "out"], "the basis must be a file, not stdin"),
        (["signature", "basis", "new"], "new: file exists (use -f to replace it)"),
    ],
)
def test_usage_and_io_errors_exit_1(files, args, message):
    new = (files / "new").read_bytes()
    result = cli(*args, cwd=files)
    assert result.returncode == 1, result.stderr
    assert message in result.stderr.decode()
    assert result.stderr.count(b"\n") == 1
    assert (files / "new").read_bytes() == new
    assert sorted(p.name for p in files.iterdir()) == ["basis", "new"]


def test_force_replaces_existing_output(files):
    (files / "sig").write_bytes(b"old")
    assert cli("signature", "basis", "sig", cwd=files).returncode == 1
    assert (files / "sig").read_bytes() == b"old"
    assert cli("-f", "signature", "basis", "sig", cwd=files).returncode == 0
    assert (files / "sig").read_bytes()[:4] == b"rs\x01\x47"
    assert (files / "sig").stat().st_mode & 0o777 == 0o666 & ~_umask()


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def test_progress_and_statistics(files):
    quiet = cli("signature", "basis", "sig", cwd=files)
    assert quiet.stderr == b""  # stderr is a pipe here: no bar unless asked
    cli("delta", "sig", "new", "delta", cwd=files)
    result = cli("--progress", "-s", "patch", "basis", "delta", "out", cwd=files)
    assert result.returncode == 0
    err = result.stderr.decode()
    assert "\rpatch [##############################] 100%" in err
    assert f"{PROG}: patch statistics: {(files / 'delta').stat().st_size} bytes in, 300" in err
    assert err.endswith("(compiled)\n")


def test_version():
    result = cli("--version", cwd=ROOT)
    assert (result.returncode, result.stdout) == (0, f"{PROG} (compiled)\n".encode())
