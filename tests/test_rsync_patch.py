"""librsync patcher: compiled module vs pure-Python twin vs an oracle vs the real ``rdiff patch``.

Deltas are built here by hand with an encoder independent of the code under test, so every
opcode width is exercised, not only the ones an emitter picks.
"""

from __future__ import annotations

import hashlib
import importlib
import io
import os
import random
import shutil
import subprocess
import sys
import tracemalloc
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from supervisor.delta import _rsync_py as twin

MAGIC = b"rs\x026"
END = b"\0"
WIDTHS = (1, 2, 4, 8)
CODE = {1: 0, 2: 1, 4: 2, 8: 3}
FAST = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def _compiled():
    """The extension itself; raises (so tests fail, never skip) when it is not built."""
    return importlib.import_module("supervisor._rsync")


@pytest.fixture(params=["compiled", "python"])
def mod(request):
    return _compiled() if request.param == "compiled" else twin


def _rdiff() -> str:
    path = shutil.which("rdiff")
    assert path, "rdiff is not installed (apt-get install -y rdiff): the interoperability tests need it"
    return path


# ---------------------------------------------------------------------------------------------
# Independent encoder and oracle
# ---------------------------------------------------------------------------------------------


def lit(data: bytes, width: int | None = None) -> bytes:
    """LITERAL: immediate opcode (len <= 64) when width is None, else LITERAL_N<width>."""
    if width is None:
        assert 1 <= len(data) <= 64
        return bytes([len(data)]) + data
    return bytes([0x41 + CODE[width]]) + len(data).to_bytes(width, "big") + data


def copy(offset: int, length: int, a: int = 1, b: int = 1) -> bytes:
    return bytes([0x45 + 4 * CODE[a] + CODE[b]]) + offset.to_bytes(a, "big") + length.to_bytes(b, "big")


def fits(value: int) -> list[int]:
    return [w for w in WIDTHS if value < 256**w]


def every_opcode_delta(basis: bytes) -> tuple[bytes, bytes]:
    """A delta using all 64 immediate literals, N1/N2/N4/N8 and all 16 COPY widths."""
    assert len(basis) >= 300
    rng = random.Random(7)
    body, want = bytearray(), bytearray()
    for n in range(1, 65):
        data = rng.randbytes(n)
        body += lit(data)
        want += data
    for width in WIDTHS:
        data = rng.randbytes(70 + width)
        body += lit(data, width)
        want += data
    for a in WIDTHS:
        for b in WIDTHS:
            offset, length = rng.randrange(256), rng.randrange(1, 44)
            body += copy(offset, length, a, b)
            want += basis[offset : offset + length]
    return MAGIC + bytes(body) + END, bytes(want)


@st.composite
def commands(draw, basis_len: int):
    """A valid delta (any legal widths) and the output it must produce, as (delta, want) pieces."""
    pieces = []
    for _ in range(draw(st.integers(0, 12))):
        if basis_len and draw(st.booleans()):
            offset = draw(st.integers(0, basis_len - 1))
            length = draw(st.integers(1, basis_len - offset))
            a = draw(st.sampled_from(fits(offset)))
            b = draw(st.sampled_from(fits(length)))
            pieces.append((copy(offset, length, a, b), ("copy", offset, length)))
        else:
            data = draw(st.binary(min_size=1, max_size=300))
            width = draw(st.sampled_from(([None] if len(data) <= 64 else []) + fits(len(data))))
            pieces.append((lit(data, width), ("lit", data)))
    return pieces


def oracle(basis: bytes, pieces) -> tuple[bytes, bytes]:
    delta = MAGIC + b"".join(p[0] for p in pieces) + END
    out = bytearray()
    for _, (kind, *args) in pieces:
        out += args[0] if kind == "lit" else basis[args[0] : args[0] + args[1]]
    return delta, bytes(out)


def split(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({c % (len(data) + 1) for c in cuts})
    return [data[i:j] for i, j in zip([0, *points], [*points, len(data)], strict=True)]


def run(module, basis: bytes, delta) -> tuple[bytes, str | None]:
    """Output and error message (None: success) of a patch; output is what was written."""
    out = io.BytesIO()
    try:
        n = module.patch(io.BytesIO(basis), delta, out)
    except twin.DeltaFormatError as exc:
        return out.getvalue(), str(exc)
    assert n == len(out.getvalue())
    return out.getvalue(), None


# ---------------------------------------------------------------------------------------------
# The package uses the compiled module
# ---------------------------------------------------------------------------------------------


def test_package_uses_compiled_module():
    from supervisor import delta
    from supervisor.delta import rsync

    compiled = _compiled()
    assert rsync.IMPLEMENTATION == "compiled"
    for name in ("patch", "Patcher", "signature", "load_signature", "delta", "Signature"):
        assert getattr(rsync, name) is getattr(compiled, name)
        assert getattr(delta, name) is getattr(compiled, name)
    assert compiled.DeltaFormatError is twin.DeltaFormatError
    assert issubclass(rsync.DeltaFormatError, ValueError)


def test_fallback_to_twin_only_when_the_extension_is_missing():
    code = (
        "import sys; sys.modules['supervisor._rsync'] = None\n"  # as if never built
        "from supervisor.delta import rsync, _rsync_py\n"
        "assert rsync.patch is _rsync_py.patch\n"
        "print(rsync.IMPLEMENTATION)"
    )
    root = Path(__file__).resolve().parents[1]
    result = subprocess.run(
        [sys.executable, "-c", code],
        cwd=root,
        env={**os.environ, "PYTHONPATH": str(root)},
        capture_output=True,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout == b"python\n"
    assert b"supervisor._rsync is not built; using the slower pure-Python twin" in result.stderr


# ---------------------------------------------------------------------------------------------
# Every opcode, differential, streaming
# ---------------------------------------------------------------------------------------------


def test_every_opcode(mod):
    basis = random.Random(1).randbytes(400)
    delta, want = every_opcode_delta(basis)
    assert run(mod, basis, delta) == (want, None)
    assert run(mod, basis, [delta[i : i + 1] for i in range(len(delta))]) == (want, None)


def test_every_opcode_matches_rdiff(tmp_path):
    basis = random.Random(1).randbytes(400)
    delta, want = every_opcode_delta(basis)
    (tmp_path / "basis").write_bytes(basis)
    (tmp_path / "delta").write_bytes(delta)
    subprocess.run([_rdiff(), "patch", "basis", "delta", "out"], cwd=tmp_path, check=True)
    assert (tmp_path / "out").read_bytes() == want


@FAST
@given(data=st.data(), basis=st.binary(max_size=600), cuts=st.lists(st.integers(0, 10**6), max_size=8))
def test_random_deltas_match_oracle(data, basis, cuts):
    delta, want = oracle(basis, data.draw(commands(len(basis))))
    chunks = split(delta, cuts)
    assert run(_compiled(), basis, chunks) == (want, None)
    assert run(twin, basis, chunks) == (want, None)
    assert run(_compiled(), basis, iter(chunks)) == (want, None)


@FAST
@given(
    basis=st.binary(max_size=80),
    body=st.binary(max_size=80),
    end=st.sampled_from([b"", END, END + b"x"]),
    cuts=st.lists(st.integers(0, 10**6), max_size=5),
)
def test_garbage_same_outcome_in_both(basis, body, end, cuts):
    """Arbitrary bytes: both twins write the same bytes and fail with the same message."""
    chunks = split(MAGIC + body + end, cuts)
    assert run(_compiled(), basis, chunks) == run(twin, basis, chunks)


@FAST
@given(data=st.data(), basis=st.binary(min_size=1, max_size=200))
def test_mutated_deltas_same_outcome_in_both(data, basis):
    delta, _ = oracle(basis, data.draw(commands(len(basis))))
    delta = bytearray(delta)
    for _ in range(data.draw(st.integers(1, 3))):
        delta[data.draw(st.integers(0, len(delta) - 1))] = data.draw(st.integers(0, 255))
    cut = data.draw(st.integers(0, len(delta)))
    assert run(_compiled(), basis, bytes(delta[:cut])) == run(twin, basis, bytes(delta[:cut]))


def test_patcher_feed_close(mod, tmp_path):
    basis = tmp_path / "basis"
    basis.write_bytes(b"0123456789" * 10)
    out = io.BytesIO()
    with basis.open("rb") as f:
        patcher = mod.Patcher(f, out)
        for piece in (MAGIC[:1], MAGIC[1:] + copy(90, 10)[:2], copy(90, 10)[2:], lit(b"!"), b"", END):
            patcher.feed(piece)
        assert patcher.close() == 11
    assert out.getvalue() == b"0123456789!"
    assert patcher.written == 11


def test_file_delta_and_real_basis_file(mod, tmp_path):
    """A basis with a file descriptor (pread in the compiled module) and a delta file."""
    rng = random.Random(3)
    basis = rng.randbytes(3 << 20)
    (tmp_path / "basis").write_bytes(basis)
    big = rng.randbytes((1 << 20) + 17)  # literal longer than any internal buffer
    delta = MAGIC + copy(5, 2 << 20, 1, 4) + lit(big, 4) + copy(0, 3 << 20, 8, 8) + lit(b"end") + END
    (tmp_path / "delta").write_bytes(delta)
    progress = []
    with (tmp_path / "basis").open("rb") as b, (tmp_path / "delta").open("rb") as d:
        b.seek(123)  # COPY offsets are absolute, whatever the position
        out = io.BytesIO()
        n = mod.patch(b, d, out, progress=lambda *a: progress.append(a))
    want = basis[5 : 5 + (2 << 20)] + big + basis + b"end"
    assert out.getvalue() == want and n == len(want)
    assert progress and progress[-1] == (len(delta), len(want))
    assert [p[1] for p in progress] == sorted(p[1] for p in progress)


class ShortWriter(io.RawIOBase):
    """A raw stream that takes at most 1000 bytes per write, as a pipe or socket may."""

    def __init__(self) -> None:
        self.data = bytearray()

    def writable(self) -> bool:
        return True

    def write(self, b) -> int:
        n = min(len(b), 1000)
        self.data += bytes(b[:n])
        return n


def test_short_writes_are_completed(mod):
    basis = bytes(range(256)) * 40
    delta = MAGIC + copy(0, len(basis), 1, 2) + lit(b"x" * 3000, 2) + END
    sink = ShortWriter()
    assert mod.patch(io.BytesIO(basis), delta, sink) == len(basis) + 3000
    assert bytes(sink.data) == basis + b"x" * 3000


def test_delta_readable_without_readinto(mod):
    class ReadOnly:
        def __init__(self, data: bytes) -> None:
            self.f = io.BytesIO(data)

        def read(self, n: int = -1) -> bytes:
            return self.f.read(min(n, 7))

    basis = b"abcdefgh" * 4
    delta = MAGIC + copy(8, 16) + lit(b"tail", 1) + END
    assert run(mod, basis, ReadOnly(delta)) == (basis[8:24] + b"tail", None)


# ---------------------------------------------------------------------------------------------
# Errors: each with a clear message naming the offset
# ---------------------------------------------------------------------------------------------

SMALL = MAGIC + lit(b"hello") + copy(2, 3, 2, 4) + lit(b"world" * 20, 2) + END


def test_truncated_at_every_cut_point(mod):
    basis = b"0123456789"
    for cut in range(len(SMALL)):
        out, error = run(mod, basis, SMALL[:cut])
        assert error is not None and error.startswith(f"delta truncated at offset {cut}: "), (cut, error)
    assert run(mod, basis, SMALL)[1] is None


@pytest.mark.parametrize(
    ("cut", "reason"),
    [
        (0, "the magic number needs 4 bytes"),
        (3, "the magic number needs 4 bytes"),
        (4, "no END command"),
        (7, "LITERAL_5 at offset 4 is missing 3 of its 5 data bytes"),
        (10, "no END command"),
        (12, "the COPY_N2_N4 command at offset 10 needs 7 bytes"),
        (22, "LITERAL_N2 at offset 17 is missing 98 of its 100 data bytes"),
        (len(SMALL) - 1, "no END command"),
    ],
)
def test_truncation_messages(mod, cut, reason):
    assert run(mod, b"0123456789", SMALL[:cut])[1] == f"delta truncated at offset {cut}: {reason}"


@pytest.mark.parametrize("op", range(0x55, 0x100))
def test_unknown_opcode(mod, op):
    out, error = run(mod, b"abc", MAGIC + lit(b"ok") + bytes([op]) + b"\0" * 20 + END)
    assert error == f"unknown opcode {op:#04x} at delta offset 7"
    assert out == b"ok"  # what came before stays written: the caller discards it


@pytest.mark.parametrize(
    ("cmd", "message"),
    [
        (
            copy(5, 6),
            "COPY_N1_N1 at delta offset 4 reads basis bytes 5..11 beyond the end of the basis (10 bytes)",
        ),
        (
            copy(10, 1, 4, 1),
            "COPY_N4_N1 at delta offset 4 reads basis bytes 10..11 beyond the end of the basis",
        ),
        (copy(2**64 - 1, 2, 8, 8), f"reads basis bytes {2**64 - 1}..{2**64 + 1} beyond the end"),
        (copy(1, 2**64 - 1, 1, 8), f"reads basis bytes 1..{2**64} beyond the end"),
        (copy(0, 0), "COPY_N1_N1 at delta offset 4 has length 0"),
        (bytes([0x41, 0]), "LITERAL_N1 at delta offset 4 has length 0"),
        (bytes([0x44]) + bytes(8), "LITERAL_N8 at delta offset 4 has length 0"),
    ],
)
def test_bad_command(mod, cmd, message):
    out, error = run(mod, b"0123456789", MAGIC + cmd + END)
    assert error is not None and message in error
    assert out == b""


def test_copy_to_exact_end_is_fine(mod):
    assert run(mod, b"0123456789", MAGIC + copy(0, 10) + copy(9, 1, 8, 8) + END) == (b"01234567899", None)


def test_trailing_garbage(mod):
    assert (
        run(mod, b"", MAGIC + lit(b"a") + END + b"\0")[1]
        == "trailing data at delta offset 7 after the END command"
    )
    assert (
        run(mod, b"", [MAGIC + END, b"", b"junk"])[1]
        == "trailing data at delta offset 5 after the END command"
    )


def test_bad_magic(mod):
    out, error = run(mod, b"", b"rs\x016" + END)
    assert error == "not a librsync delta: magic 0x72730136 at offset 0, expected 0x72730236"
    assert run(mod, b"", b"")[1] == "delta truncated at offset 0: the magic number needs 4 bytes"


def test_errors_are_sticky(mod):
    patcher = mod.Patcher(io.BytesIO(b""), io.BytesIO())
    with pytest.raises(twin.DeltaFormatError, match="unknown opcode 0x99"):
        patcher.feed(MAGIC + b"\x99")
    with pytest.raises(twin.DeltaFormatError, match="unknown opcode 0x99"):
        patcher.feed(END)
    with pytest.raises(twin.DeltaFormatError, match="unknown opcode 0x99"):
        patcher.close()


def test_basis_shrinking_during_patch(mod, tmp_path):
    path = tmp_path / "basis"
    path.write_bytes(b"x" * 100)
    with path.open("rb") as basis:
        patcher = mod.Patcher(basis, io.BytesIO())
        path.write_bytes(b"x" * 10)  # truncated under the patcher's feet
        with pytest.raises(OSError, match="basis ended at offset 10"):
            patcher.feed(MAGIC + copy(0, 100))


# ---------------------------------------------------------------------------------------------
# Bounded memory on a 64 MiB pair
# ---------------------------------------------------------------------------------------------


class HashSink:
    def __init__(self) -> None:
        self.sha = hashlib.sha256()
        self.size = 0

    def write(self, b) -> int:
        self.sha.update(b)
        self.size += len(b)
        return len(b)


@pytest.fixture(scope="module")
def big_pair(tmp_path_factory):
    """A 64 MiB basis and a delta of scattered COPYs and big literals (N4 and N8), plus the
    expected output's sha256 and size, all computed in bounded memory."""
    root = tmp_path_factory.mktemp("big")
    rng = random.Random(64)
    size = 64 << 20
    with (root / "basis").open("wb") as f:
        for _ in range(64):
            f.write(rng.randbytes(1 << 20))
    want = HashSink()
    with (root / "basis").open("rb") as basis, (root / "delta").open("wb") as delta:
        delta.write(MAGIC)

        def add_copy(offset: int, length: int) -> None:
            delta.write(copy(offset, length, 4, 4))
            basis.seek(offset)
            while length:
                piece = basis.read(min(length, 1 << 20))
                want.write(piece)
                length -= len(piece)

        for _ in range(200):
            offset = rng.randrange(size - (1 << 20))
            add_copy(offset, rng.randrange(1, 1 << 18))
            data = rng.randbytes(rng.randrange(1, 5000))
            delta.write(lit(data, 2))
            want.write(data)
        for width, length in ((4, 5 << 20), (8, 9 << 20)):  # long literals, streamed
            delta.write(bytes([0x41 + CODE[width]]) + length.to_bytes(width, "big"))
            for _ in range(length >> 20):
                data = rng.randbytes(1 << 20)
                delta.write(data)
                want.write(data)
        add_copy(0, size)
        delta.write(END)
    return root, want.sha.hexdigest(), want.size


def test_memory_stays_bounded(mod, big_pair):
    root, digest, size = big_pair
    sink = HashSink()
    with (root / "basis").open("rb") as basis, (root / "delta").open("rb") as delta:
        tracemalloc.start()
        try:
            written = mod.patch(basis, delta, sink)
            peak = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
    assert (written, sink.size, sink.sha.hexdigest()) == (size, size, digest)
    assert size > 90 << 20
    assert peak < 4 << 20, f"tracemalloc peak {peak / 2**20:.1f} MiB"


# ---------------------------------------------------------------------------------------------
# rdiff delta -> our patch
# ---------------------------------------------------------------------------------------------


def edited(data: bytes, seed: int, edits: int) -> bytes:
    rng = random.Random(seed)
    out = bytearray(data)
    for _ in range(edits):
        pos = rng.randrange(len(out) + 1)
        out[pos : pos + rng.randrange(300)] = rng.randbytes(rng.randrange(400))
    return bytes(out)


PAIRS = {
    "edits": lambda rng: (b := rng.randbytes(200_000), edited(b, 1, 30)),
    "empty-basis": lambda rng: (b"", rng.randbytes(5000)),
    "empty-new": lambda rng: (rng.randbytes(5000), b""),
    "both-empty": lambda rng: (b"", b""),
    "identical": lambda rng: (b := rng.randbytes(100_000), b),
    "zeros": lambda rng: (bytes(100_000), bytes(50_000) + b"x" + bytes(70_000)),
    "shuffled": lambda rng: (b := rng.randbytes(64 * 1024), b[32768:] + b[:32768] + b[100:5000]),
}


@pytest.mark.parametrize("options", [[], ["-b", "64"], ["-H", "md4", "-R", "rollsum"]])
@pytest.mark.parametrize("case", sorted(PAIRS))
def test_rdiff_delta_applies(mod, tmp_path, case, options):
    basis, new = PAIRS[case](random.Random(case))
    (tmp_path / "basis").write_bytes(basis)
    (tmp_path / "new").write_bytes(new)
    rdiff = _rdiff()
    subprocess.run([rdiff, *options, "signature", "basis", "sig"], cwd=tmp_path, check=True)
    subprocess.run([rdiff, "delta", "sig", "new", "delta"], cwd=tmp_path, check=True)
    with (tmp_path / "basis").open("rb") as b, (tmp_path / "delta").open("rb") as d:
        out = io.BytesIO()
        mod.patch(b, d, out)
    assert out.getvalue() == new
