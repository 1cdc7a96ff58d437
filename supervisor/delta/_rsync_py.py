"""Pure-Python twin of ``supervisor._rsync``: librsync signatures, deltas and patches.

It is the reference that the compiled module is tested against, the baseline of
``tests/bench/bench_patch.py``, and the fallback when the extension is not built. Both modules
must produce the same bytes and the same error messages; change them together. The compiled
module imports the tables, argument rules and error messages from here, so they exist once.

The format (librsync 2.x, what ``rdiff`` reads and writes): big-endian integers throughout.

* A signature is ``magic, block_len, strong_len`` (u32 each), then ``weak (u32), strong
  (strong_len bytes)`` per block of the basis; the last block may be short.
* A delta is ``RS_DELTA_MAGIC``, then commands (``OPCODES``), then END. A LITERAL carries
  its bytes, a COPY names an absolute ``offset, length`` in the basis.

Defined behaviour beyond the format (shared by both implementations):

* patch: every length and offset is checked before anything is written for that command.
  A zero length, a COPY reaching past the basis end, a reserved opcode, a bad magic, bytes after
  END or a delta that ends anywhere but right after END raise ``DeltaFormatError``. The message
  names the delta offset. Output already written stays written; the caller must discard it.
* delta: a greedy scan. A window of ``block_len`` bytes rolls over the new file. At each
  position, the block right after the pending COPY is tried first (identical regions become one
  COPY), then every block with the same weak sum, lowest index first. At end of file the window
  shrinks one byte at a time, so a short final basis block can match. A literal is emitted once it
  reaches ``LITERAL_CAP`` bytes (32 KiB, as librsync does), which bounds memory. Opcodes are the
  smallest librsync's emitter would choose: LITERAL_1..64, then N1/N2/N4 (never N8), and COPY with
  the narrowest widths. The result is often byte-identical to ``rdiff delta``, but that is not a
  promise: only that each side applies the other's deltas.
"""

from __future__ import annotations

import hashlib
import math
import struct
from collections.abc import Callable, Iterable
from typing import BinaryIO, NamedTuple

__all__ = [
    "OPCODES",
    "RS_BLAKE2_SIG_MAGIC",
    "RS_DELTA_MAGIC",
    "RS_MD4_SIG_MAGIC",
    "RS_RK_BLAKE2_SIG_MAGIC",
    "RS_RK_MD4_SIG_MAGIC",
    "DeltaFormatError",
    "Patcher",
    "Signature",
    "delta",
    "load_signature",
    "patch",
    "signature",
]

RS_DELTA_MAGIC = 0x72730236
RS_MD4_SIG_MAGIC = 0x72730136
RS_BLAKE2_SIG_MAGIC = 0x72730137
RS_RK_MD4_SIG_MAGIC = 0x72730146
RS_RK_BLAKE2_SIG_MAGIC = 0x72730147

ROLLSUM, RABINKARP = 0, 1  # weak (rolling) sums
MD4, BLAKE2 = 0, 1  # strong sums


class SigKind(NamedTuple):
    weak: int
    strong: int
    max_strong_len: int


SIG_KINDS = {
    RS_MD4_SIG_MAGIC: SigKind(ROLLSUM, MD4, 16),
    RS_BLAKE2_SIG_MAGIC: SigKind(ROLLSUM, BLAKE2, 32),
    RS_RK_MD4_SIG_MAGIC: SigKind(RABINKARP, MD4, 16),
    RS_RK_BLAKE2_SIG_MAGIC: SigKind(RABINKARP, BLAKE2, 32),
}

DEFAULT_BLOCK_LEN = 2048  # rdiff's choice when the basis size is unknown (a pipe)
DEFAULT_MIN_STRONG_LEN = 12  # rdiff's "-S -1" when the basis size is unknown
LITERAL_CAP = 1 << 15  # the longest literal the delta emits: librsync's 32 KiB miss segments
CHUNK = 1 << 18  # read size of the twin

ROLLSUM_OFFSET = 31
RK_SEED = 1
RK_MULT = 0x08104225
RK_INVM = 0x98F009AD  # RK_MULT ** -1 mod 2**32
RK_ADJ = 0x08104224  # (RK_MULT - 1) * RK_SEED
MASK32 = 0xFFFFFFFF


# ---------------------------------------------------------------------------------------------
# The opcode table (librsync's prototab)
# ---------------------------------------------------------------------------------------------

END, LITERAL, COPY, RESERVED = range(4)
WIDTHS = (1, 2, 4, 8)  # parameter widths; idx(w) is the position in this tuple
OP_LITERAL_N1 = 0x41
OP_COPY_N1_N1 = 0x45


class Opcode(NamedTuple):
    name: str
    kind: int
    immediate: int  # the literal length an opcode implies (LITERAL_1..64), else 0
    len1: int  # width of the first parameter: literal length or COPY offset (0: none)
    len2: int  # width of the COPY length (0: none)


def _opcode_table() -> tuple[Opcode, ...]:
    table = [Opcode("END", END, 0, 0, 0)]
    table += [Opcode(f"LITERAL_{n}", LITERAL, n, 0, 0) for n in range(1, 65)]
    table += [Opcode(f"LITERAL_N{w}", LITERAL, 0, w, 0) for w in WIDTHS]
    table += [Opcode(f"COPY_N{a}_N{b}", COPY, 0, a, b) for a in WIDTHS for b in WIDTHS]
    table += [Opcode(f"RESERVED_{op:#04x}", RESERVED, 0, 0, 0) for op in range(len(table), 256)]
    return tuple(table)


OPCODES = _opcode_table()


def width_index(value: int) -> int:
    """Index in WIDTHS of the narrowest big-endian field that holds value."""
    return 0 if value <= 0xFF else 1 if value <= 0xFFFF else 2 if value <= MASK32 else 3


def literal_header(length: int) -> bytes:
    """LITERAL command header as librsync's emitter writes it (immediate up to 64, never N8)."""
    if length <= 64:
        return bytes((length,))
    idx = width_index(length)
    return bytes((OP_LITERAL_N1 + idx,)) + length.to_bytes(WIDTHS[idx], "big")


def copy_header(offset: int, length: int) -> bytes:
    """COPY command with the narrowest offset and length widths."""
    a, b = width_index(offset), width_index(length)
    return (
        bytes((OP_COPY_N1_N1 + 4 * a + b,))
        + offset.to_bytes(WIDTHS[a], "big")
        + length.to_bytes(WIDTHS[b], "big")
    )


# ---------------------------------------------------------------------------------------------
# Errors: one wording for both twins
# ---------------------------------------------------------------------------------------------


class DeltaFormatError(ValueError):
    """Malformed delta or signature data; the message says what is wrong and at which offset."""


def err_magic(found: int) -> DeltaFormatError:
    return DeltaFormatError(
        f"not a librsync delta: magic {found:#010x} at offset 0, expected {RS_DELTA_MAGIC:#010x}"
    )


def err_opcode(op: int, at: int) -> DeltaFormatError:
    return DeltaFormatError(f"unknown opcode {op:#04x} at delta offset {at}")


def err_zero_length(op: int, at: int) -> DeltaFormatError:
    return DeltaFormatError(f"{OPCODES[op].name} at delta offset {at} has length 0")


def err_copy_range(op: int, at: int, offset: int, length: int, basis_size: int) -> DeltaFormatError:
    return DeltaFormatError(
        f"{OPCODES[op].name} at delta offset {at} reads basis bytes {offset}..{offset + length} "
        f"beyond the end of the basis ({basis_size} bytes)"
    )


def err_trailing(at: int) -> DeltaFormatError:
    return DeltaFormatError(f"trailing data at delta offset {at} after the END command")


def err_truncated(end: int, state: int, op: int, at: int, missing: int, total: int) -> DeltaFormatError:
    """The delta stopped at offset ``end`` in ``state`` (see Patcher); op/at: the open command."""
    if state == _MAGIC:
        why = "the magic number needs 4 bytes"
    elif state == _DATA:
        why = f"{OPCODES[op].name} at offset {at} is missing {missing} of its {total} data bytes"
    elif missing:
        why = f"the {OPCODES[op].name} command at offset {at} needs {total} bytes"
    else:
        why = "no END command"
    return DeltaFormatError(f"delta truncated at offset {end}: {why}")


def err_basis_short(offset: int) -> OSError:
    return OSError(f"basis ended at offset {offset} while copying: it changed during the patch")


# ---------------------------------------------------------------------------------------------
# Shared helpers (also used by the compiled module)
# ---------------------------------------------------------------------------------------------


def basis_size(basis: BinaryIO) -> int:
    """Size of the whole basis: COPY offsets are absolute, whatever the current position."""
    here = basis.tell()
    size = basis.seek(0, 2)
    basis.seek(here)
    return size


def remaining_size(stream: BinaryIO) -> int | None:
    """Bytes from the current position to the end, or None for a pipe or socket."""
    try:
        if stream.seekable():
            here = stream.tell()
            end = stream.seek(0, 2)
            stream.seek(here)
            return end - here
    except (AttributeError, OSError):
        pass
    return None


def _ln2(value: int) -> int:
    return value.bit_length() - 1 if value > 0 else 0


def sig_args(size: int | None, magic: int, block_len: int | None, strong_len: int | None) -> tuple[int, int]:
    """rdiff's defaults: block_len ~ sqrt(size) in 128-byte steps, full strong sum; -1: its minimum."""
    kind = SIG_KINDS.get(magic)
    if kind is None:
        raise ValueError(f"unknown signature magic {magic:#010x}")
    if not block_len:
        if size is None:
            block_len = DEFAULT_BLOCK_LEN
        else:
            block_len = 256 if size <= 256 * 256 else math.isqrt(size) & ~127
    if block_len < 1 or block_len > MASK32:
        raise ValueError(f"block length {block_len} is out of range")
    if not strong_len:
        strong_len = kind.max_strong_len
    elif strong_len == -1:
        if size is None:
            strong_len = DEFAULT_MIN_STRONG_LEN
        else:
            strong_len = 2 + (_ln2(size + (1 << 24)) + _ln2(size // block_len + 1) + 7) // 8
    if not 1 <= strong_len <= kind.max_strong_len:
        raise ValueError(
            f"strong sum length {strong_len} is not in 1..{kind.max_strong_len} for magic {magic:#010x}"
        )
    return block_len, strong_len


def write_all(out: BinaryIO, data: bytes) -> None:
    """out.write(data), continued when a raw stream takes only part of it."""
    view = memoryview(data)
    while view:
        n = out.write(view)
        if n is None or n >= len(view):
            return
        view = view[n:]


def read_full(stream: BinaryIO, size: int) -> bytes:
    """Up to size bytes, short only at end of stream (pipes return short reads)."""
    data = stream.read(size)
    if data is None:
        data = b""
    if len(data) == size or not data:
        return bytes(data)
    parts = [data]
    got = len(data)
    while got < size:
        more = stream.read(size - got)
        if not more:
            break
        parts.append(more)
        got += len(more)
    return b"".join(parts)


def delta_chunks(delta: BinaryIO | Iterable[bytes] | bytes, size: int = CHUNK) -> Iterable[bytes]:
    """A delta source as chunks: a file-like object is read in size-byte pieces."""
    if isinstance(delta, bytes | bytearray | memoryview):
        yield bytes(delta)
        return
    read = getattr(delta, "read", None)
    if read is None:
        yield from delta
        return
    while True:
        chunk = read(size)
        if not chunk:
            return
        yield chunk


# ---------------------------------------------------------------------------------------------
# Checksums
# ---------------------------------------------------------------------------------------------


def weak_sum(weak: int, data: bytes) -> int:
    """Rolling sum of a whole block: librsync's rollsum (rsync's) or its Rabin-Karp hash."""
    if weak == RABINKARP:
        h = RK_SEED
        for c in data:
            h = (h * RK_MULT + c) & MASK32
        return h
    s1 = s2 = 0
    for c in data:
        s1 += c + ROLLSUM_OFFSET
        s2 += s1
    return ((s2 & 0xFFFF) << 16) | (s1 & 0xFFFF)


# MD4 (RFC 1320): per round, the auxiliary function, the added constant, the message word order
# and the four rotations.
_MD4_ROUNDS = (
    (lambda x, y, z: (x & y) | (~x & z), 0, tuple(range(16)), (3, 7, 11, 19)),
    (
        lambda x, y, z: (x & y) | (x & z) | (y & z),
        0x5A827999,
        (0, 4, 8, 12, 1, 5, 9, 13, 2, 6, 10, 14, 3, 7, 11, 15),
        (3, 5, 9, 13),
    ),
    (
        lambda x, y, z: x ^ y ^ z,
        0x6ED9EBA1,
        (0, 8, 4, 12, 2, 10, 6, 14, 1, 9, 5, 13, 3, 11, 7, 15),
        (3, 9, 11, 15),
    ),
)


def md4(data: bytes) -> bytes:
    """MD4 digest; OpenSSL 3 no longer offers it to hashlib and old rdiff signatures use it."""
    bits = struct.pack("<Q", (len(data) * 8) & (2**64 - 1))
    msg = bytes(data) + b"\x80" + b"\0" * ((55 - len(data)) % 64) + bits
    state = [0x67452301, 0xEFCDAB89, 0x98BADCFE, 0x10325476]
    for block in range(0, len(msg), 64):
        x = struct.unpack_from("<16I", msg, block)
        v = state[:]
        for func, const, order, shifts in _MD4_ROUNDS:
            for i, k in enumerate(order):
                a, b, c, d = (-i) % 4, (1 - i) % 4, (2 - i) % 4, (3 - i) % 4
                t = (v[a] + func(v[b], v[c], v[d]) + x[k] + const) & MASK32
                s = shifts[i % 4]
                v[a] = ((t << s) | (t >> (32 - s))) & MASK32
        state = [(s + t) & MASK32 for s, t in zip(state, v, strict=True)]
    return struct.pack("<4I", *state)


def strong_sum(strong: int, data: bytes) -> bytes:
    """Full-length strong sum (librsync truncates it to strong_len)."""
    return md4(data) if strong == MD4 else hashlib.blake2b(data, digest_size=32).digest()


# ---------------------------------------------------------------------------------------------
# Signature
# ---------------------------------------------------------------------------------------------


def signature(
    basis: BinaryIO,
    out: BinaryIO,
    *,
    block_len: int | None = None,
    strong_len: int | None = None,
    magic: int = RS_RK_BLAKE2_SIG_MAGIC,
    progress: Callable[[int, int], None] | None = None,
) -> int:
    """Write the signature of basis (from its position to its end); return the bytes written.

    block_len None/0 and strong_len None/0 take rdiff's defaults; strong_len -1 its minimum.
    """
    block_len, strong_len = sig_args(remaining_size(basis), magic, block_len, strong_len)
    kind = SIG_KINDS[magic]
    write_all(out, struct.pack(">III", magic, block_len, strong_len))
    done, written, reported = 0, 12, 0
    while block := read_full(basis, block_len):
        record = struct.pack(">I", weak_sum(kind.weak, block)) + strong_sum(kind.strong, block)[:strong_len]
        write_all(out, record)
        done += len(block)
        written += len(record)
        if progress is not None and done - reported >= CHUNK:
            reported = done
            progress(done, written)
    if progress is not None:
        progress(done, written)
    return written


class Signature:
    """A loaded signature: per-block sums and a weak-sum index for the delta search."""

    def __init__(self, magic: int, block_len: int, strong_len: int) -> None:
        self.magic = magic
        self.block_len = block_len
        self.strong_len = strong_len
        self.weak: list[int] = []
        self.strong: list[bytes] = []
        self.index: dict[int, list[int]] = {}

    def __len__(self) -> int:
        return len(self.weak)

    def __repr__(self) -> str:
        return (
            f"<Signature magic={self.magic:#010x} block_len={self.block_len} "
            f"strong_len={self.strong_len} blocks={len(self)}>"
        )


def sig_header(data: bytes) -> tuple[int, int, int]:
    """Validated (magic, block_len, strong_len) from the 12-byte header."""
    if len(data) < 12:
        raise DeltaFormatError(f"signature truncated at offset {len(data)}: the header needs 12 bytes")
    magic, block_len, strong_len = struct.unpack(">III", data)
    kind = SIG_KINDS.get(magic)
    if kind is None:
        raise DeltaFormatError(f"not a librsync signature: magic {magic:#010x} at offset 0")
    if block_len == 0:
        raise DeltaFormatError("signature block length is 0 at offset 4")
    if not 1 <= strong_len <= kind.max_strong_len:
        raise DeltaFormatError(
            f"signature strong sum length {strong_len} at offset 8 is not in 1..{kind.max_strong_len}"
        )
    return magic, block_len, strong_len


def err_sig_truncated(offset: int, record: int) -> DeltaFormatError:
    return DeltaFormatError(f"signature truncated at offset {offset}: a block record needs {record} bytes")


def load_signature(sig: BinaryIO) -> Signature:
    """Read a signature file (streamed: only the per-block sums are kept)."""
    magic, block_len, strong_len = sig_header(read_full(sig, 12))
    result = Signature(magic, block_len, strong_len)
    record = 4 + strong_len
    offset = 12
    while True:
        data = read_full(sig, record * 4096)
        whole = len(data) - len(data) % record
        for i in range(0, whole, record):
            weak = int.from_bytes(data[i : i + 4], "big")
            result.index.setdefault(weak, []).append(len(result.weak))
            result.weak.append(weak)
            result.strong.append(data[i + 4 : i + record])
        offset += whole
        if whole != len(data):
            raise err_sig_truncated(offset + len(data) - whole, record)
        if len(data) < record * 4096:
            return result


# ---------------------------------------------------------------------------------------------
# Delta
# ---------------------------------------------------------------------------------------------


class _Emitter:
    """Writes commands, merging COPYs of contiguous basis ranges."""

    def __init__(self, out: BinaryIO) -> None:
        self.out = out
        self.copy_offset = 0
        self.copy_len = 0  # 0: no pending COPY
        self.written = 4
        write_all(out, RS_DELTA_MAGIC.to_bytes(4, "big"))

    def _write(self, data: bytes) -> None:
        write_all(self.out, data)
        self.written += len(data)

    def flush_copy(self) -> None:
        if self.copy_len:
            self._write(copy_header(self.copy_offset, self.copy_len))
            self.copy_len = 0

    def literal(self, data: bytes) -> None:
        if data:
            self.flush_copy()
            self._write(literal_header(len(data)) + data)

    def copy(self, offset: int, length: int) -> None:
        if self.copy_len and self.copy_offset + self.copy_len == offset:
            self.copy_len += length
            return
        self.flush_copy()
        self.copy_offset, self.copy_len = offset, length

    def expected_block(self, block_len: int) -> int:
        """The block that would extend the pending COPY, or -1."""
        end = self.copy_offset + self.copy_len
        return end // block_len if self.copy_len and end % block_len == 0 else -1

    def end(self) -> int:
        self.flush_copy()
        self._write(b"\0")
        return self.written


def _find(
    sig: Signature, strong_kind: int, weak: int, window: bytearray, start: int, stop: int, expected: int
) -> int:
    """Index of the block holding window[start:stop] (order: see the module docstring), or -1."""
    strong = None
    if 0 <= expected < len(sig.weak) and sig.weak[expected] == weak:
        strong = strong_sum(strong_kind, bytes(window[start:stop]))[: sig.strong_len]
        if strong == sig.strong[expected]:
            return expected
    for k in sig.index.get(weak, ()):
        if strong is None:
            strong = strong_sum(strong_kind, bytes(window[start:stop]))[: sig.strong_len]
        if strong == sig.strong[k]:
            return k
    return -1


def delta(
    sig: Signature | BinaryIO,
    new: BinaryIO,
    out: BinaryIO,
    *,
    progress: Callable[[int, int], None] | None = None,
) -> int:
    """Write a delta turning the signature's basis into new; return the bytes written."""
    if not isinstance(sig, Signature):
        sig = load_signature(sig)
    kind = SIG_KINDS[sig.magic]
    rk = kind.weak == RABINKARP
    blen = sig.block_len
    emit = _Emitter(out)
    buf = bytearray()
    base = 0  # new-file offset of buf[0]
    eof = False
    pos = lit = 0  # window start; start of the pending literal
    weak = None  # weak sum of the current window, None: compute afresh
    rk_mult = pow(RK_MULT, blen, 1 << 32)  # RK_MULT ** window length
    reported = 0
    while True:
        avail = base + len(buf)
        if not eof and avail < pos + blen + 1:  # room for the window and the byte after it
            del buf[: lit - base]
            base = lit
            more = read_full(new, CHUNK)
            eof = len(more) < CHUNK
            buf += more
            if progress is not None and base + len(buf) - reported >= CHUNK:
                reported = base + len(buf)
                progress(reported, emit.written)
            continue
        end = min(pos + blen, avail)
        if end <= pos:
            break
        if weak is None:
            weak = weak_sum(kind.weak, bytes(buf[pos - base : end - base]))
            rk_mult = pow(RK_MULT, end - pos, 1 << 32)
            s1, s2 = weak & 0xFFFF, weak >> 16
        k = _find(sig, kind.strong, weak, buf, pos - base, end - base, emit.expected_block(blen))
        if k >= 0:
            emit.literal(bytes(buf[lit - base : pos - base]))
            emit.copy(k * blen, end - pos)
            pos = lit = end
            weak = None
            continue
        out_byte = buf[pos - base]
        if end - pos == blen and end < avail:  # roll: the next window is full too
            in_byte = buf[end - base]
            if rk:
                weak = (weak * RK_MULT + in_byte - rk_mult * (out_byte + RK_ADJ)) & MASK32
            else:
                s1 = (s1 + in_byte - out_byte) & 0xFFFF
                s2 = (s2 + s1 - blen * (out_byte + ROLLSUM_OFFSET)) & 0xFFFF
                weak = (s2 << 16) | s1
        else:  # end of file: the window shrinks
            count = end - pos
            if rk:
                rk_mult = (rk_mult * RK_INVM) & MASK32
                weak = (weak - rk_mult * (out_byte + RK_ADJ)) & MASK32
            else:
                s1 = (s1 - out_byte - ROLLSUM_OFFSET) & 0xFFFF
                s2 = (s2 - count * (out_byte + ROLLSUM_OFFSET)) & 0xFFFF
                weak = (s2 << 16) | s1
        pos += 1
        if pos - lit >= LITERAL_CAP:
            emit.literal(bytes(buf[lit - base : pos - base]))
            lit = pos
    emit.literal(bytes(buf[lit - base : pos - base]))
    written = emit.end()
    if progress is not None:
        progress(pos, written)
    return written


# ---------------------------------------------------------------------------------------------
# Patch
# ---------------------------------------------------------------------------------------------

_MAGIC, _COMMAND, _DATA, _DONE = range(4)  # Patcher states


class Patcher:
    """Incremental patch: ``feed()`` delta bytes as they arrive, then ``close()``.

    basis must be seekable (COPY reads it at random); out only needs ``write()``.
    """

    def __init__(
        self, basis: BinaryIO, out: BinaryIO, *, progress: Callable[[int, int], None] | None = None
    ) -> None:
        self._basis = basis
        self._out = out
        self._progress = progress
        self._size = basis_size(basis)
        self._buf = bytearray()  # unparsed delta: at most one chunk plus a split command header
        self._offset = 0  # delta offset of _buf[0]
        self._state = _MAGIC
        self._op = 0  # the open LITERAL, for error messages
        self._at = 0
        self._left = 0  # literal bytes still to come
        self._total = 0
        self._written = 0
        self._error: str | None = None

    @property
    def written(self) -> int:
        return self._written

    def feed(self, chunk: bytes) -> None:
        """Apply the commands chunk completes; raises DeltaFormatError (and stays failed)."""
        if self._error is not None:
            raise DeltaFormatError(self._error)
        try:
            self._feed(chunk)
        except DeltaFormatError as exc:
            self._error = str(exc)
            raise
        if self._progress is not None:
            self._progress(self._offset, self._written)

    def close(self) -> int:
        """Check that the delta ended right after END; return the bytes written."""
        if self._error is not None:
            raise DeltaFormatError(self._error)
        if self._state != _DONE:
            end = self._offset + len(self._buf)
            if self._state == _COMMAND and self._buf:  # a split command header
                op = self._buf[0]
                need = 1 + OPCODES[op].len1 + OPCODES[op].len2
                exc = err_truncated(end, _COMMAND, op, self._offset, need - len(self._buf), need)
            else:
                exc = err_truncated(end, self._state, self._op, self._at, self._left, self._total)
            self._error = str(exc)
            raise exc
        return self._written

    def _write(self, data: bytes) -> None:
        write_all(self._out, data)
        self._written += len(data)

    def _feed(self, chunk: bytes) -> None:
        buf = self._buf
        buf += chunk
        n = len(buf)
        i = 0
        try:
            while i < n:
                state = self._state
                if state == _DATA:
                    take = min(self._left, n - i)
                    self._write(bytes(buf[i : i + take]))
                    i += take
                    self._left -= take
                    if not self._left:
                        self._state = _COMMAND
                elif state == _COMMAND:
                    op = buf[i]
                    cmd = OPCODES[op]
                    at = self._offset + i
                    if cmd.kind == RESERVED:
                        raise err_opcode(op, at)
                    need = 1 + cmd.len1 + cmd.len2
                    if n - i < need:
                        break
                    p1 = int.from_bytes(buf[i + 1 : i + 1 + cmd.len1], "big")
                    p2 = int.from_bytes(buf[i + 1 + cmd.len1 : i + need], "big")
                    if cmd.kind == END:
                        self._state = _DONE
                    elif cmd.kind == LITERAL:
                        length = cmd.immediate or p1
                        if not length:
                            raise err_zero_length(op, at)
                        self._state, self._op, self._at = _DATA, op, at
                        self._left = self._total = length
                    else:
                        if not p2:
                            raise err_zero_length(op, at)
                        if p1 + p2 > self._size:
                            raise err_copy_range(op, at, p1, p2, self._size)
                        self._copy(p1, p2)
                    i += need
                elif state == _MAGIC:
                    if n - i < 4:
                        break
                    magic = int.from_bytes(buf[i : i + 4], "big")
                    if magic != RS_DELTA_MAGIC:
                        raise err_magic(magic)
                    self._state = _COMMAND
                    i += 4
                else:
                    raise err_trailing(self._offset + i)
        finally:
            del buf[:i]
            self._offset += i

    def _copy(self, offset: int, length: int) -> None:
        basis = self._basis
        while length:
            basis.seek(offset)
            data = basis.read(min(length, CHUNK))
            if not data:
                raise err_basis_short(offset)
            self._write(data)
            offset += len(data)
            length -= len(data)


def patch(
    basis: BinaryIO,
    delta: BinaryIO | Iterable[bytes] | bytes,
    out: BinaryIO,
    *,
    progress: Callable[[int, int], None] | None = None,
) -> int:
    """Apply delta (a file, an iterable of chunks or bytes) to basis, writing to out.

    Returns the bytes written. progress(delta bytes read, bytes written) is called as it goes.
    """
    patcher = Patcher(basis, out, progress=progress)
    for chunk in delta_chunks(delta):
        patcher.feed(chunk)
    return patcher.close()
