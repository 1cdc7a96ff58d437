"""librsync signatures and deltas: compiled vs twin (byte-identical), and against the real rdiff.

Our signatures must equal rdiff's byte for byte, which checks the rolling sums, the strong sums
and rdiff's default block and sum lengths. Our deltas need not equal rdiff's, but each tool must
apply the other's deltas to the same bytes.
"""

from __future__ import annotations

import importlib
import io
import random
import shutil
import subprocess
import tracemalloc

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from supervisor.delta import _rsync_py as twin

FAST = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
MAGICS = {
    twin.RS_RK_BLAKE2_SIG_MAGIC: [],
    twin.RS_BLAKE2_SIG_MAGIC: ["-R", "rollsum"],
    twin.RS_RK_MD4_SIG_MAGIC: ["-H", "md4"],
    twin.RS_MD4_SIG_MAGIC: ["-H", "md4", "-R", "rollsum"],
}


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


def sig_bytes(module, data: bytes, **kwargs) -> bytes:
    out = io.BytesIO()
    assert module.signature(io.BytesIO(data), out, **kwargs) == len(out.getvalue())
    return out.getvalue()


def delta_bytes(module, basis: bytes, new: bytes, **kwargs) -> bytes:
    sig = module.load_signature(io.BytesIO(sig_bytes(module, basis, **kwargs)))
    out = io.BytesIO()
    assert module.delta(sig, io.BytesIO(new), out) == len(out.getvalue())
    return out.getvalue()


def apply(module, basis: bytes, delta: bytes) -> bytes:
    out = io.BytesIO()
    module.patch(io.BytesIO(basis), delta, out)
    return out.getvalue()


def commands(delta: bytes) -> list[tuple[str, int, int]]:
    """Decode a delta into (opcode name, param1, param2), skipping literal data."""
    assert delta[:4] == b"rs\x026"
    i, out = 4, []
    while True:
        op = twin.OPCODES[delta[i]]
        p1 = int.from_bytes(delta[i + 1 : i + 1 + op.len1], "big")
        p2 = int.from_bytes(delta[i + 1 + op.len1 : i + 1 + op.len1 + op.len2], "big")
        out.append((op.name, op.immediate or p1, p2))
        i += 1 + op.len1 + op.len2 + (op.immediate or p1 if op.kind == twin.LITERAL else 0)
        if op.kind == twin.END:
            assert i == len(delta)
            return out


def edited(data: bytes, seed: int, edits: int) -> bytes:
    rng = random.Random(seed)
    out = bytearray(data)
    for _ in range(edits):
        pos = rng.randrange(len(out) + 1)
        out[pos : pos + rng.randrange(200)] = rng.randbytes(rng.randrange(300))
    return bytes(out)


# ---------------------------------------------------------------------------------------------
# Checksums and signatures
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("data", "digest"),
    [  # RFC 1320, appendix A.5
        (b"", "31d6cfe0d16ae931b73c59d7e0c089c0"),
        (b"abc", "a448017aaf21d8525fc10ae87aa6729d"),
        (b"message digest", "d9130a8164549fe818874806e1c7014b"),
        (b"1234567890" * 8, "e33b4ddc9c38f2199c3e7b164fcc0536"),
    ],
)
def test_md4_vectors(data, digest):
    assert twin.md4(data).hex() == digest
    assert _compiled().md4(data).hex() == digest


@given(st.binary(max_size=300))
def test_md4_compiled_matches_twin(data):
    assert _compiled().md4(data) == twin.md4(data)


SIZES = [0, 1, 255, 256, 65536, 65537, 100_003, 1_048_575, 3_000_017]


@pytest.mark.parametrize("magic", sorted(MAGICS))
@pytest.mark.parametrize(  # the twin's byte loop is slow: it stops at 100 kB
    ("impl", "size"), [("compiled", n) for n in SIZES] + [("python", n) for n in SIZES if n < 200_000]
)
def test_signature_equals_rdiff(tmp_path, impl, size, magic):
    """rdiff's default block length (sqrt in 128-byte steps) and full strong sums, byte for byte."""
    mod = _compiled() if impl == "compiled" else twin
    data = random.Random(size).randbytes(size)
    (tmp_path / "basis").write_bytes(data)
    subprocess.run([_rdiff(), *MAGICS[magic], "signature", "basis", "sig"], cwd=tmp_path, check=True)
    with (tmp_path / "basis").open("rb") as basis:
        out = io.BytesIO()
        mod.signature(basis, out, magic=magic)
    assert out.getvalue() == (tmp_path / "sig").read_bytes()


@pytest.mark.parametrize(
    ("block_len", "strong_len"), [(1, 1), (7, 5), (64, 0), (100, -1), (2048, 8), (300_000, 32)]
)
def test_signature_lengths_equal_rdiff(tmp_path, block_len, strong_len):
    data = random.Random(block_len).randbytes(50_000)
    (tmp_path / "basis").write_bytes(data)
    args = ["-b", str(block_len), "-S", str(strong_len), "signature", "basis", "sig"]
    subprocess.run([_rdiff(), *args], cwd=tmp_path, check=True, capture_output=True)
    for module in (_compiled(), twin):
        with (tmp_path / "basis").open("rb") as basis:
            out = io.BytesIO()
            module.signature(basis, out, block_len=block_len, strong_len=strong_len)
        assert out.getvalue() == (tmp_path / "sig").read_bytes()


def test_signature_of_a_pipe_uses_rdiffs_unknown_size_defaults(tmp_path):
    data = random.Random(5).randbytes(10_000)
    rdiff = subprocess.run(
        [_rdiff(), "-S", "-1", "signature", "-", "-"], input=data, capture_output=True, check=True
    )

    class Pipe(io.RawIOBase):
        def __init__(self) -> None:
            self.f = io.BytesIO(data)

        def readable(self) -> bool:
            return True

        def readinto(self, b) -> int:
            chunk = self.f.read(min(len(b), 999))
            b[: len(chunk)] = chunk
            return len(chunk)

    for module in (_compiled(), twin):
        out = io.BytesIO()
        module.signature(Pipe(), out, strong_len=-1)
        assert out.getvalue()[:12] == bytes.fromhex("72730147 00000800 0000000c")
        assert out.getvalue() == rdiff.stdout


@FAST
@given(
    data=st.binary(max_size=2000),
    block_len=st.integers(1, 300),
    strong_len=st.integers(1, 16),
    magic=st.sampled_from(sorted(MAGICS)),
)
def test_signature_compiled_matches_twin(data, block_len, strong_len, magic):
    kwargs = {"block_len": block_len, "strong_len": strong_len, "magic": magic}
    assert sig_bytes(_compiled(), data, **kwargs) == sig_bytes(twin, data, **kwargs)


def test_signature_argument_errors(mod):
    with pytest.raises(ValueError, match="unknown signature magic"):
        sig_bytes(mod, b"x", magic=twin.RS_DELTA_MAGIC)
    with pytest.raises(ValueError, match="strong sum length 17 is not in 1..16"):
        sig_bytes(mod, b"x", magic=twin.RS_MD4_SIG_MAGIC, strong_len=17)
    with pytest.raises(ValueError, match="block length -5"):
        sig_bytes(mod, b"x", block_len=-5)


def test_load_signature(mod):
    data = random.Random(9).randbytes(1000)
    sig = mod.load_signature(io.BytesIO(sig_bytes(mod, data, block_len=100, strong_len=8)))
    assert (sig.magic, sig.block_len, sig.strong_len, len(sig)) == (twin.RS_RK_BLAKE2_SIG_MAGIC, 100, 8, 10)
    assert "blocks=10" in repr(sig)


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"rs\x01", "signature truncated at offset 3: the header needs 12 bytes"),
        (bytes.fromhex("72730236 00000100 00000020"), "not a librsync signature: magic 0x72730236"),
        (bytes.fromhex("72730147 00000000 00000020"), "signature block length is 0"),
        (bytes.fromhex("72730147 00000100 00000021"), "strong sum length 33 at offset 8 is not in 1..32"),
        (bytes.fromhex("72730146 00000100 00000011"), "strong sum length 17 at offset 8 is not in 1..16"),
        (
            bytes.fromhex("72730147 00000100 00000004") + bytes(8 + 5),
            "truncated at offset 25: a block record needs 8",
        ),
    ],
)
def test_load_signature_errors(mod, data, message):
    with pytest.raises(twin.DeltaFormatError, match=message):
        mod.load_signature(io.BytesIO(data))


# ---------------------------------------------------------------------------------------------
# Deltas
# ---------------------------------------------------------------------------------------------


@st.composite
def pairs(draw):
    basis = draw(st.binary(max_size=1500))
    new = bytearray(basis)
    for _ in range(draw(st.integers(0, 6))):
        pos = draw(st.integers(0, len(new)))
        cut = draw(st.integers(0, 100))
        new[pos : pos + cut] = draw(st.binary(max_size=100) | st.just(basis[: draw(st.integers(0, 200))]))
    return basis, bytes(new)


@FAST
@given(
    pair=pairs(),
    block_len=st.integers(1, 64),
    strong_len=st.sampled_from([1, 2, 8, 16]),
    magic=st.sampled_from(sorted(MAGICS)),
)
def test_delta_compiled_matches_twin_and_roundtrips(pair, block_len, strong_len, magic):
    """Tiny strong sums (1-2 bytes) force collisions: a delta must still roundtrip when it does
    not hit a false match, and both twins must take the same decisions either way."""
    basis, new = pair
    kwargs = {"block_len": block_len, "strong_len": strong_len, "magic": magic}
    delta = delta_bytes(_compiled(), basis, new, **kwargs)
    assert delta == delta_bytes(twin, basis, new, **kwargs)
    if strong_len >= 8:
        assert apply(_compiled(), basis, delta) == new
        assert apply(twin, basis, delta) == new


@FAST
@given(basis=st.binary(max_size=3000), new=st.binary(max_size=3000), block_len=st.integers(1, 40))
def test_delta_unrelated_files(basis, new, block_len):
    delta = delta_bytes(_compiled(), basis, new, block_len=block_len)
    assert delta == delta_bytes(twin, basis, new, block_len=block_len)
    assert apply(_compiled(), basis, delta) == new


def test_delta_opcodes_are_the_emitters(mod):
    """Immediate literals up to 64 bytes, then N1/N2/N4; narrowest COPY widths; merged COPYs."""
    rng = random.Random(4)
    basis = rng.randbytes(300_000)
    new = (
        rng.randbytes(64)
        + basis
        + rng.randbytes(65)
        + basis[:1000]
        + rng.randbytes(256)
        + rng.randbytes(70_000)
    )
    delta = delta_bytes(mod, basis, new, block_len=1000)
    assert commands(delta) == [
        ("LITERAL_64", 64, 0),
        ("COPY_N1_N4", 0, 300_000),  # 300 blocks merged into one COPY
        ("LITERAL_N1", 65, 0),
        ("COPY_N1_N2", 0, 1000),
        ("LITERAL_N2", 32768, 0),  # 70_256 bytes in LITERAL_CAP pieces
        ("LITERAL_N2", 32768, 0),
        ("LITERAL_N2", 4720, 0),
        ("END", 0, 0),
    ]
    assert commands(delta_bytes(mod, b"", b"x" * 300, block_len=16)) == [
        ("LITERAL_N2", 300, 0),
        ("END", 0, 0),
    ]
    assert commands(delta_bytes(mod, b"abc", b"")) == [("END", 0, 0)]


def test_short_last_block_matches_at_end(mod):
    basis = bytes(range(256)) * 3 + b"tail!"
    new = b"head" + basis
    assert commands(delta_bytes(mod, basis, new, block_len=256)) == [
        ("LITERAL_4", 4, 0),
        ("COPY_N1_N2", 0, 773),
        ("END", 0, 0),
    ]


def test_long_literals_are_capped(mod):
    """A new file with nothing in common: literals of LITERAL_CAP bytes (bounded memory)."""
    rng = random.Random(8)
    cap = twin.LITERAL_CAP
    new = rng.randbytes(2 * cap + 12345)
    delta = delta_bytes(mod, rng.randbytes(1000), new, block_len=512)
    assert commands(delta) == [
        ("LITERAL_N2", cap, 0),
        ("LITERAL_N2", cap, 0),
        ("LITERAL_N2", 12345, 0),
        ("END", 0, 0),
    ]


def test_literal_of_64_kib_uses_n4():
    assert twin.literal_header(65535)[:1] == b"\x42"
    assert twin.literal_header(65536) == b"\x43\x00\x01\x00\x00"
    assert twin.copy_header(2**32, 1) == b"\x51" + (2**32).to_bytes(8, "big") + b"\x01"


def test_delta_memory_is_bounded(tmp_path):
    compiled = _compiled()
    rng = random.Random(11)
    (tmp_path / "basis").write_bytes(rng.randbytes(4 << 20))
    with (tmp_path / "new").open("wb") as f:
        for _ in range(24):
            f.write(rng.randbytes(1 << 20))
    with (tmp_path / "basis").open("rb") as basis:
        sig_out = io.BytesIO()
        compiled.signature(basis, sig_out, block_len=4096)
    sig = compiled.load_signature(io.BytesIO(sig_out.getvalue()))

    class Sink:
        size = 0

        def write(self, b) -> int:
            self.size += len(b)
            return len(b)

    sink = Sink()
    with (tmp_path / "new").open("rb") as new:
        tracemalloc.start()
        try:
            compiled.delta(sig, new, sink)
            peak = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
    assert sink.size > 24 << 20
    assert peak < 4 << 20, f"tracemalloc peak {peak / 2**20:.1f} MiB"


def test_delta_accepts_a_signature_file_and_reports_progress(mod):
    basis = random.Random(2).randbytes(50_000)
    new = edited(basis, 2, 5)
    seen = []
    out = io.BytesIO()
    n = mod.delta(io.BytesIO(sig_bytes(mod, basis)), io.BytesIO(new), out, progress=lambda *a: seen.append(a))
    assert n == len(out.getvalue()) and apply(mod, basis, out.getvalue()) == new
    assert seen[-1] == (len(new), n)


# ---------------------------------------------------------------------------------------------
# Interoperability with rdiff
# ---------------------------------------------------------------------------------------------

CASES = {
    "edits": lambda rng: (b := rng.randbytes(300_000), edited(b, 1, 40)),
    "insertions": lambda rng: (b := rng.randbytes(100_000), b[:500] + rng.randbytes(9) + b[500:] + b[:7000]),
    "empty-basis": lambda rng: (b"", rng.randbytes(3000)),
    "empty-new": lambda rng: (rng.randbytes(3000), b""),
    "zeros": lambda rng: (bytes(200_000), bytes(90_000) + b"\1" + bytes(10)),
    "text": lambda rng: (
        b := b"".join(b"line %d\n" % i for i in range(20_000)),
        b.replace(b"77", b"seventy-seven"),
    ),
}


@pytest.mark.parametrize("magic", sorted(MAGICS))
@pytest.mark.parametrize("case", sorted(CASES))
def test_our_delta_applies_with_rdiff(tmp_path, case, magic):
    basis, new = CASES[case](random.Random(case))
    (tmp_path / "basis").write_bytes(basis)
    delta = delta_bytes(_compiled(), basis, new, magic=magic)
    (tmp_path / "delta").write_bytes(delta)
    subprocess.run([_rdiff(), "patch", "basis", "delta", "out"], cwd=tmp_path, check=True)
    assert (tmp_path / "out").read_bytes() == new
    assert len(delta) < len(new) // 2 + 200 or case in ("empty-basis",)


@pytest.mark.parametrize("case", sorted(CASES))
def test_rdiff_signature_feeds_our_delta(tmp_path, case):
    """A signature made by rdiff, a delta made by us, applied by rdiff and by us."""
    basis, new = CASES[case](random.Random(case))
    (tmp_path / "basis").write_bytes(basis)
    subprocess.run([_rdiff(), "-b", "512", "signature", "basis", "sig"], cwd=tmp_path, check=True)
    with (tmp_path / "sig").open("rb") as sig:
        out = io.BytesIO()
        _compiled().delta(sig, io.BytesIO(new), out)
    (tmp_path / "delta").write_bytes(out.getvalue())
    subprocess.run([_rdiff(), "patch", "basis", "delta", "out"], cwd=tmp_path, check=True)
    assert (tmp_path / "out").read_bytes() == new
    assert apply(_compiled(), basis, out.getvalue()) == new


@pytest.mark.parametrize("magic", sorted(MAGICS))
@pytest.mark.parametrize("case", ["edits", "insertions", "text", "empty-new"])
def test_same_bytes_as_rdiff_delta_on_ordinary_edits(tmp_path, case, magic):
    """Not a promise of the format, but a sharp check of the emitter: on ordinary edits librsync
    and we take the same matches, merge the same COPYs and cut literals at the same 32 KiB.
    (They differ on purpose elsewhere: rdiff cuts a delta against an empty signature at its
    buffer size, and on repetitive data we prefer the block right after the previous COPY.)"""
    basis, new = CASES[case](random.Random(case))
    (tmp_path / "basis").write_bytes(basis)
    (tmp_path / "new").write_bytes(new)
    rdiff = _rdiff()
    subprocess.run([rdiff, *MAGICS[magic], "signature", "basis", "sig"], cwd=tmp_path, check=True)
    subprocess.run([rdiff, "delta", "sig", "new", "delta"], cwd=tmp_path, check=True)
    with (tmp_path / "sig").open("rb") as sig:
        out = io.BytesIO()
        _compiled().delta(sig, io.BytesIO(new), out)
    assert out.getvalue() == (tmp_path / "delta").read_bytes()


def test_repetitive_data_gives_long_copies():
    basis, new = CASES["zeros"](random.Random("zeros"))
    delta = delta_bytes(_compiled(), basis, new, block_len=64)
    assert commands(delta) == [
        ("COPY_N1_N4", 0, 89_984),  # 1406 zero blocks, each the one after the previous COPY
        ("LITERAL_27", 27, 0),  # 16 zeros, the 1, 10 zeros: no 64-byte zero window left
        ("END", 0, 0),
    ]
    assert apply(_compiled(), basis, delta) == new
