# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True, initializedcheck=False
"""Compiled librsync signatures, deltas and patches: the hot path of ``supervisor.delta.rsync``.

It has the same API and gives byte-identical output and error messages as the pure-Python twin
``supervisor/delta/_rsync_py.py``. The twin's docstring states the rules; the opcode table, the
rdiff argument defaults and the error wording are imported from it, so they exist only once.
This module exists for speed:

* patch: the delta is parsed with C pointers as it arrives (readinto into one reused buffer,
  or the caller's chunks). A split command header is carried over in 17 bytes. COPY data goes
  straight from the basis into the output buffer with ``pread`` (the GIL is released), and
  LITERAL data is memcpy'd. Output leaves in 256 KiB writes (small enough to stay in L2
  between the read and the write). The memory is two fixed buffers, whatever the file sizes.
  mmap is avoided because it would count the whole basis as resident.
* signature and delta: the rolling sums are C loops. A sparse bitmap of weak sums rejects most
  positions with one load; behind it, a hash table of int32 chains finds the candidate blocks.
  BLAKE2 goes through hashlib (only on a weak match). MD4 is implemented here, since OpenSSL 3
  no longer offers it to hashlib.
"""

from cpython.bytearray cimport PyByteArray_AS_STRING
from cpython.bytes cimport PyBytes_AS_STRING
from libc.errno cimport EINTR, errno
from libc.stdint cimport int32_t, int64_t, uint8_t, uint32_t, uint64_t
from libc.string cimport memcmp, memcpy, memmove
from posix.types cimport off_t
from posix.unistd cimport pread
from cpython.mem cimport PyMem_Free, PyMem_Malloc, PyMem_Realloc

cimport cython

import hashlib
import os
import stat

from supervisor.delta._rsync_py import (  # one definition of the tables, defaults and errors
    BLAKE2,
    COPY,
    END,
    LITERAL,
    LITERAL_CAP,
    OPCODES,
    RABINKARP,
    RESERVED,
    RS_BLAKE2_SIG_MAGIC,
    RS_DELTA_MAGIC,
    RS_MD4_SIG_MAGIC,
    RS_RK_BLAKE2_SIG_MAGIC,
    RS_RK_MD4_SIG_MAGIC,
    SIG_KINDS,
    DeltaFormatError,
    basis_size,
    err_basis_short,
    err_copy_range,
    err_magic,
    err_opcode,
    err_sig_truncated,
    err_trailing,
    err_truncated,
    err_zero_length,
    read_full,
    remaining_size,
    sig_args,
    sig_header,
)

__all__ = [
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

cdef enum:
    OUT_BUF = 1 << 18      # output buffer of every job: 256 KiB stays in L2 between read and write
    IN_BUF = 1 << 18       # delta read buffer of patch()
    SIG_BUF = 1 << 20      # basis read buffer of signature()
    DELTA_READ = 1 << 20   # free room the delta job's input buffer keeps for each read

cdef enum:
    S_MAGIC = 0
    S_COMMAND = 1
    S_DATA = 2
    S_DONE = 3

cdef enum:
    C_RABINKARP = 1  # the twin's weak/strong kind numbers, checked below
    C_BLAKE2 = 1

cdef uint32_t RK_MULT = 0x08104225U
cdef uint32_t RK_INVM = 0x98F009ADU
cdef uint32_t RK_ADJ = 0x08104224U
cdef uint32_t ROLL_OFFSET = 31

# The opcode table as C arrays, filled from the twin's OPCODES.
cdef uint8_t[256] OP_KIND
cdef uint8_t[256] OP_IMMEDIATE
cdef uint8_t[256] OP_LEN1
cdef uint8_t[256] OP_LEN2
cdef int _op
for _op in range(256):
    OP_KIND[_op] = OPCODES[_op].kind
    OP_IMMEDIATE[_op] = OPCODES[_op].immediate
    OP_LEN1[_op] = OPCODES[_op].len1
    OP_LEN2[_op] = OPCODES[_op].len2
assert (OP_KIND[0], OP_KIND[1], OP_KIND[0x45], OP_KIND[0x55]) == (END, LITERAL, COPY, RESERVED)
assert (C_RABINKARP, C_BLAKE2) == (RABINKARP, BLAKE2)

_blake2b = hashlib.blake2b
cdef int64_t LIT_CAP = LITERAL_CAP  # a C copy: the delta's per-byte loop compares with it


cdef inline uint64_t _get_be(const uint8_t* p, int width) noexcept nogil:
    cdef uint64_t v = 0
    cdef int i
    for i in range(width):
        v = (v << 8) | p[i]
    return v


cdef inline int _width_index(uint64_t v) noexcept nogil:
    return 0 if v <= 0xFF else 1 if v <= 0xFFFF else 2 if v <= 0xFFFFFFFFU else 3


cdef inline uint8_t* _put_be(uint8_t* o, uint64_t v, int idx) noexcept nogil:
    cdef int width = 1 << idx, i
    for i in range(width):
        o[width - 1 - i] = <uint8_t>(v & 0xFF)
        v >>= 8
    return o + width


# ---------------------------------------------------------------------------------------------
# I/O helpers
# ---------------------------------------------------------------------------------------------

@cython.final
cdef class _Writer:
    """Output buffer in front of ``out.write``: few large writes of one reused memoryview."""

    cdef object _write
    cdef object _buf
    cdef object _mv
    cdef object _progress
    cdef uint8_t* data
    cdef Py_ssize_t length
    cdef Py_ssize_t cap
    cdef uint64_t written    # bytes handed to out
    cdef uint64_t consumed   # input bytes, for progress reports

    def __cinit__(self, out, Py_ssize_t cap, progress):
        self._write = out.write
        self._buf = bytearray(cap)
        self._mv = memoryview(self._buf)
        self.data = <uint8_t*>PyByteArray_AS_STRING(self._buf)
        self.cap = cap
        self.length = 0
        self.written = 0
        self.consumed = 0
        self._progress = progress

    cdef int flush(self) except -1:
        cdef Py_ssize_t n = self.length
        if n == 0:
            return 0
        view = self._mv[:n] if n < self.cap else self._mv
        while True:
            r = self._write(view)
            if r is None or r >= n:
                break
            view = view[r:]  # a raw stream may write less
            n -= r
        self.written += self.length
        self.length = 0
        if self._progress is not None:
            self._progress(self.consumed, self.written)
        return 0

    cdef inline uint8_t* reserve(self, Py_ssize_t n) except NULL:
        """Room for n contiguous bytes (n <= cap), flushing first if needed."""
        if self.length + n > self.cap:
            self.flush()
        return self.data + self.length

    cdef int put(self, const uint8_t* p, Py_ssize_t n) except -1:
        cdef Py_ssize_t take
        while n > 0:
            if self.length == self.cap:
                self.flush()
            take = self.cap - self.length
            if take > n:
                take = n
            memcpy(self.data + self.length, p, take)
            self.length += take
            p += take
            n -= take
        return 0

    cdef uint64_t total(self):
        return self.written + <uint64_t>self.length


cdef Py_ssize_t _fill(object readinto, object read, object mv, Py_ssize_t start, Py_ssize_t stop) except -1:
    """Read into mv[start:stop] until it is full or the stream ends; return the bytes read."""
    cdef Py_ssize_t got = start, n
    while got < stop:
        if readinto is not None:
            n = readinto(mv[got:stop]) or 0
        else:
            data = read(stop - got)
            n = len(data) if data else 0
            if n:
                mv[got:got + n] = data
        if n == 0:
            break
        got += n
    return got - start


cdef int _regular_fd(object f) except -2:
    """The file descriptor of a regular file (for pread), or -1."""
    try:
        fd = f.fileno()
        if stat.S_ISREG(os.fstat(fd).st_mode):
            return fd
    except (AttributeError, OSError, ValueError):
        pass
    return -1


# ---------------------------------------------------------------------------------------------
# Checksums
# ---------------------------------------------------------------------------------------------

cdef uint32_t[9] RK_POW  # RK_MULT ** i
RK_POW[0] = 1
for _op in range(1, 9):
    RK_POW[_op] = RK_POW[_op - 1] * RK_MULT


cdef inline uint32_t _rk_sum(const uint8_t* p, Py_ssize_t n) noexcept nogil:
    """Eight bytes per step: the multiplications are independent, only h * MULT**8 is serial."""
    cdef uint32_t h = 1  # RK_SEED
    cdef Py_ssize_t i = 0
    while i + 8 <= n:
        h = (h * RK_POW[8] + p[i] * RK_POW[7] + p[i + 1] * RK_POW[6] + p[i + 2] * RK_POW[5]
             + p[i + 3] * RK_POW[4] + p[i + 4] * RK_POW[3] + p[i + 5] * RK_POW[2]
             + p[i + 6] * RK_MULT + p[i + 7])
        i += 8
    while i < n:
        h = h * RK_MULT + p[i]
        i += 1
    return h


cdef inline uint32_t _roll_sum(const uint8_t* p, Py_ssize_t n) noexcept nogil:
    cdef uint32_t s1 = 0, s2 = 0
    cdef Py_ssize_t i
    for i in range(n):
        s1 += p[i] + ROLL_OFFSET
        s2 += s1
    return (s2 << 16) | (s1 & 0xFFFF)


cdef inline uint32_t _weak_sum(int kind, const uint8_t* p, Py_ssize_t n) noexcept nogil:
    return _rk_sum(p, n) if kind == C_RABINKARP else _roll_sum(p, n)


cdef inline uint32_t _pow32(uint32_t base, uint64_t exp) noexcept nogil:
    cdef uint32_t result = 1
    while exp:
        if exp & 1:
            result *= base
        base *= base
        exp >>= 1
    return result


# MD4 (RFC 1320): per round its constant, message word order and rotations.
cdef uint32_t[3] MD4_CONST = [0, 0x5A827999U, 0x6ED9EBA1U]
cdef uint8_t[48] MD4_ORDER = [
    0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15,
    0, 4, 8, 12, 1, 5, 9, 13, 2, 6, 10, 14, 3, 7, 11, 15,
    0, 8, 4, 12, 2, 10, 6, 14, 1, 9, 5, 13, 3, 11, 7, 15,
]
cdef uint8_t[12] MD4_SHIFT = [3, 7, 11, 19, 3, 5, 9, 13, 3, 9, 11, 15]


cdef void _md4_block(uint32_t* state, const uint8_t* block) noexcept nogil:
    cdef uint32_t[16] x
    cdef uint32_t[4] v
    cdef uint32_t f, t, b, c, d
    cdef int i, r, a, s
    for i in range(16):
        x[i] = (<uint32_t>block[4 * i] | (<uint32_t>block[4 * i + 1] << 8)
                | (<uint32_t>block[4 * i + 2] << 16) | (<uint32_t>block[4 * i + 3] << 24))
    for i in range(4):
        v[i] = state[i]
    for r in range(3):
        for i in range(16):
            a = (4 - (i & 3)) & 3
            b = v[(a + 1) & 3]
            c = v[(a + 2) & 3]
            d = v[(a + 3) & 3]
            if r == 0:
                f = (b & c) | (~b & d)
            elif r == 1:
                f = (b & c) | (b & d) | (c & d)
            else:
                f = b ^ c ^ d
            t = v[a] + f + x[MD4_ORDER[16 * r + i]] + MD4_CONST[r]
            s = MD4_SHIFT[4 * r + (i & 3)]
            v[a] = (t << s) | (t >> (32 - s))
    for i in range(4):
        state[i] += v[i]


cdef void _md4(const uint8_t* p, Py_ssize_t n, uint8_t* digest) noexcept nogil:
    cdef uint32_t[4] state  # set element by element: Cython 0.29 refuses an array literal under nogil
    cdef uint8_t[128] tail
    cdef Py_ssize_t done = 0, rest, padded, i
    cdef uint64_t bits = (<uint64_t>n) * 8
    state[0] = 0x67452301U
    state[1] = 0xEFCDAB89U
    state[2] = 0x98BADCFEU
    state[3] = 0x10325476U
    while n - done >= 64:
        _md4_block(state, p + done)
        done += 64
    rest = n - done
    memcpy(tail, p + done, rest)
    tail[rest] = 0x80
    padded = 64 if rest < 56 else 128
    for i in range(rest + 1, padded - 8):
        tail[i] = 0
    for i in range(8):
        tail[padded - 8 + i] = <uint8_t>((bits >> (8 * i)) & 0xFF)
    _md4_block(state, tail)
    if padded == 128:
        _md4_block(state, tail + 64)
    for i in range(16):
        digest[i] = <uint8_t>((state[i >> 2] >> (8 * (i & 3))) & 0xFF)


def md4(data) -> bytes:
    """MD4 digest (for tests: the twin has its own)."""
    cdef const uint8_t[::1] view = data
    cdef uint8_t[16] digest
    cdef const uint8_t* empty = <const uint8_t*>b""
    _md4(&view[0] if view.shape[0] else empty, view.shape[0], digest)
    return bytes(digest[:16])


# ---------------------------------------------------------------------------------------------
# Signature
# ---------------------------------------------------------------------------------------------

def signature(basis, out, *, block_len=None, strong_len=None, magic=RS_RK_BLAKE2_SIG_MAGIC,
              progress=None) -> int:
    """Write the signature of basis (from its position to its end); return the bytes written.

    block_len None/0 and strong_len None/0 take rdiff's defaults; strong_len -1 its minimum.
    """
    cdef Py_ssize_t blen, slen, per, got, i, n, rec
    cdef int weak_kind, strong_kind
    cdef uint8_t* p
    cdef uint8_t* o
    cdef uint32_t w
    cdef uint8_t[16] md
    blen, slen = sig_args(remaining_size(basis), magic, block_len, strong_len)
    kind = SIG_KINDS[magic]
    weak_kind, strong_kind = kind.weak, kind.strong
    rec = 4 + slen
    per = SIG_BUF // blen if blen < SIG_BUF else 1  # whole blocks per read
    inbuf = bytearray(per * blen)
    inmv = memoryview(inbuf)
    p = <uint8_t*>PyByteArray_AS_STRING(inbuf)
    readinto = getattr(basis, "readinto", None)
    read = basis.read if readinto is None else None
    cdef _Writer wr = _Writer(out, OUT_BUF, progress)
    o = wr.reserve(12)
    _put_be(o, magic, 2)
    _put_be(o + 4, blen, 2)
    _put_be(o + 8, slen, 2)
    wr.length += 12
    while True:
        got = _fill(readinto, read, inmv, 0, per * blen)
        wr.consumed += got
        i = 0
        while i < got:
            n = blen if got - i >= blen else got - i
            with nogil:
                w = _weak_sum(weak_kind, p + i, n)
            o = wr.reserve(rec)
            _put_be(o, w, 2)
            if strong_kind == C_BLAKE2:
                digest = _blake2b(inmv[i:i + n], digest_size=32).digest()
                memcpy(o + 4, <const char*>digest, slen)
            else:
                _md4(p + i, n, md)
                memcpy(o + 4, md, slen)
            wr.length += rec
            i += n
        if got < per * blen:
            break
    wr.flush()
    return wr.total()


@cython.final
cdef class Signature:
    """A loaded signature: per-block sums and a weak-sum index for the delta search."""

    cdef readonly uint32_t magic
    cdef readonly uint32_t block_len
    cdef readonly uint32_t strong_len
    cdef int weak_kind
    cdef int strong_kind
    cdef Py_ssize_t count
    cdef Py_ssize_t cap
    cdef uint32_t* weak
    cdef uint8_t* strong
    cdef int32_t* head     # 2**bits chain heads (-1: empty); chains go up in block index
    cdef int32_t* next
    cdef int bits
    cdef uint8_t* filter   # 2**fbits bits, about 3 % set: most positions end after one load
    cdef int fbits

    def __cinit__(self):
        self.weak = NULL
        self.strong = NULL
        self.head = NULL
        self.next = NULL
        self.filter = NULL
        self.count = 0
        self.cap = 0

    def __dealloc__(self):
        PyMem_Free(self.weak)
        PyMem_Free(self.strong)
        PyMem_Free(self.head)
        PyMem_Free(self.next)
        PyMem_Free(self.filter)

    def __len__(self):
        return self.count

    def __repr__(self):
        return (f"<Signature magic={self.magic:#010x} block_len={self.block_len} "
                f"strong_len={self.strong_len} blocks={self.count}>")

    cdef int _grow(self, Py_ssize_t cap) except -1:
        cdef uint32_t* weak
        cdef uint8_t* strong
        if cap <= self.cap:
            return 0
        if cap > 0x7FFFFFFF:
            raise DeltaFormatError("signature has more than 2**31 - 1 blocks")
        weak = <uint32_t*>PyMem_Realloc(self.weak, cap * sizeof(uint32_t))
        if weak == NULL:
            raise MemoryError()
        self.weak = weak
        strong = <uint8_t*>PyMem_Realloc(self.strong, cap * self.strong_len)
        if strong == NULL:
            raise MemoryError()
        self.strong = strong
        self.cap = cap
        return 0

    cdef int _index(self) except -1:
        cdef Py_ssize_t size, k
        cdef uint32_t h
        self.bits = 4
        while (<Py_ssize_t>1 << self.bits) < 2 * self.count:
            self.bits += 1
        size = <Py_ssize_t>1 << self.bits
        self.head = <int32_t*>PyMem_Malloc(size * sizeof(int32_t))
        self.next = <int32_t*>PyMem_Malloc((self.count or 1) * sizeof(int32_t))
        if self.head == NULL or self.next == NULL:
            raise MemoryError()
        for k in range(size):
            self.head[k] = -1
        for k in range(self.count - 1, -1, -1):  # prepend backwards: chains ascend
            h = self._slot(self.weak[k])
            self.next[k] = self.head[h]
            self.head[h] = <int32_t>k
        # The filter: a chain lookup per byte costs a mispredicted branch whenever the chain
        # head is taken (a third of the time at this load), a sparse bitmap almost never.
        self.fbits = 12
        while self.fbits < 27 and (<Py_ssize_t>1 << self.fbits) < 32 * self.count:
            self.fbits += 1
        self.filter = <uint8_t*>PyMem_Malloc((<Py_ssize_t>1 << self.fbits) >> 3)
        if self.filter == NULL:
            raise MemoryError()
        for k in range(((<Py_ssize_t>1 << self.fbits) >> 3)):
            self.filter[k] = 0
        for k in range(self.count):
            h = self._fslot(self.weak[k])
            self.filter[h >> 3] |= <uint8_t>(1 << (h & 7))
        return 0

    cdef inline uint32_t _slot(self, uint32_t w) noexcept nogil:
        return (w * 2654435761U) >> (32 - self.bits)

    cdef inline uint32_t _fslot(self, uint32_t w) noexcept nogil:
        return ((w ^ (w >> 15)) * 0x2C1B3C6DU) >> (32 - self.fbits)

    cdef inline bint _maybe(self, uint32_t w, int64_t expected) noexcept nogil:
        """True when some block has weak sum w: only then is the strong sum worth computing."""
        cdef int32_t k
        cdef uint32_t f
        if 0 <= expected < self.count and self.weak[expected] == w:
            return True
        f = self._fslot(w)
        if not (self.filter[f >> 3] & (1 << (f & 7))):
            return False
        k = self.head[self._slot(w)]
        while k >= 0:
            if self.weak[k] == w:
                return True
            k = self.next[k]
        return False

    cdef int64_t _find(self, uint32_t w, const uint8_t* p, Py_ssize_t n, int64_t expected,
                       object mv, Py_ssize_t start) except -2:
        """Index of the block holding p[:n] (expected first, then ascending), or -1."""
        cdef uint8_t[32] digest
        cdef bint have = False
        cdef int32_t k
        if 0 <= expected < self.count and self.weak[expected] == w:
            self._strong(p, n, mv, start, digest)
            have = True
            if memcmp(digest, self.strong + expected * self.strong_len, self.strong_len) == 0:
                return expected
        k = self.head[self._slot(w)]
        while k >= 0:
            if self.weak[k] == w:
                if not have:
                    self._strong(p, n, mv, start, digest)
                    have = True
                if memcmp(digest, self.strong + <Py_ssize_t>k * self.strong_len, self.strong_len) == 0:
                    return k
            k = self.next[k]
        return -1

    cdef int _strong(self, const uint8_t* p, Py_ssize_t n, object mv, Py_ssize_t start,
                     uint8_t* digest) except -1:
        if self.strong_kind == C_BLAKE2:
            d = _blake2b(mv[start:start + n], digest_size=32).digest()
            memcpy(digest, <const char*>d, 32)
        else:
            _md4(p, n, digest)
        return 0


def load_signature(sig) -> Signature:
    """Read a signature file (streamed: only the per-block sums are kept)."""
    cdef Signature s = Signature.__new__(Signature)
    cdef Py_ssize_t rec, whole, i
    cdef const uint8_t* p
    cdef bytes data
    magic, blen, slen = sig_header(read_full(sig, 12))
    s.magic, s.block_len, s.strong_len = magic, blen, slen
    s.weak_kind, s.strong_kind = SIG_KINDS[magic].weak, SIG_KINDS[magic].strong
    rec = 4 + slen
    size = remaining_size(sig)
    if size:
        s._grow(size // rec)
    offset = 12
    while True:
        data = read_full(sig, rec * 4096)
        whole = len(data) - len(data) % rec
        if s.count + whole // rec > s.cap:
            s._grow(max(s.count + whole // rec, 2 * s.cap))
        p = <const uint8_t*>PyBytes_AS_STRING(data)
        for i in range(0, whole, rec):
            s.weak[s.count] = <uint32_t>_get_be(p + i, 4)
            memcpy(s.strong + s.count * (rec - 4), p + i + 4, rec - 4)
            s.count += 1
        offset += whole
        if whole != len(data):
            raise err_sig_truncated(offset + len(data) - whole, rec)
        if len(data) < rec * 4096:
            break
    s._index()
    return s


# ---------------------------------------------------------------------------------------------
# Delta
# ---------------------------------------------------------------------------------------------

@cython.final
cdef class _Emitter:
    """Writes delta commands, merging COPYs of contiguous basis ranges."""

    cdef _Writer w
    cdef uint64_t copy_offset
    cdef uint64_t copy_len  # 0: no pending COPY

    def __cinit__(self, _Writer w):
        self.w = w
        self.copy_len = 0
        _put_be(w.reserve(4), RS_DELTA_MAGIC, 2)
        w.length += 4

    cdef int flush_copy(self) except -1:
        cdef int a, b
        cdef uint8_t* o
        if self.copy_len:
            a = _width_index(self.copy_offset)
            b = _width_index(self.copy_len)
            o = self.w.reserve(17)
            o[0] = <uint8_t>(0x45 + 4 * a + b)
            o = _put_be(_put_be(o + 1, self.copy_offset, a), self.copy_len, b)
            self.w.length = o - self.w.data
            self.copy_len = 0
        return 0

    cdef int literal(self, const uint8_t* p, Py_ssize_t n) except -1:
        cdef int idx
        cdef uint8_t* o
        if n == 0:
            return 0
        self.flush_copy()
        o = self.w.reserve(5)
        if n <= 64:
            o[0] = <uint8_t>n
            o += 1
        else:
            idx = _width_index(n)
            o[0] = <uint8_t>(0x41 + idx)
            o = _put_be(o + 1, n, idx)
        self.w.length = o - self.w.data
        return self.w.put(p, n)

    cdef int copy(self, uint64_t offset, uint64_t length) except -1:
        if self.copy_len and self.copy_offset + self.copy_len == offset:
            self.copy_len += length
            return 0
        self.flush_copy()
        self.copy_offset = offset
        self.copy_len = length
        return 0

    cdef inline int64_t expected(self, uint32_t block_len) noexcept:
        cdef uint64_t end = self.copy_offset + self.copy_len
        return <int64_t>(end // block_len) if self.copy_len and end % block_len == 0 else -1

    cdef int end(self) except -1:
        self.flush_copy()
        self.w.reserve(1)[0] = 0
        self.w.length += 1
        self.w.flush()
        return 0


def delta(sig, new, out, *, progress=None) -> int:
    """Write a delta turning the signature's basis into new; return the bytes written."""
    cdef Signature s = sig if isinstance(sig, Signature) else load_signature(sig)
    cdef uint32_t blen = s.block_len, w = 0, rk_mult = 0, rk_full, s1 = 0, s2 = 0
    cdef uint32_t in_byte, out_byte, count
    cdef bint rk = s.weak_kind == C_RABINKARP, eof = False, have = False
    cdef int64_t base = 0, pos = 0, lit = 0, avail, end, k, expected
    cdef Py_ssize_t cap, filled = 0, got
    cdef uint8_t* data
    cdef _Writer wr = _Writer(out, OUT_BUF, progress)
    cdef _Emitter emit = _Emitter(wr)
    cap = LIT_CAP + blen + DELTA_READ
    buf = bytearray(cap)
    mv = memoryview(buf)
    data = <uint8_t*>PyByteArray_AS_STRING(buf)
    readinto = getattr(new, "readinto", None)
    read = new.read if readinto is None else None
    rk_full = _pow32(RK_MULT, blen)
    while True:
        avail = base + filled
        if not eof and avail < pos + blen + 1:  # room for the window and the byte after it
            memmove(data, data + (lit - base), <size_t>(avail - lit))
            filled = <Py_ssize_t>(avail - lit)
            base = lit
            got = _fill(readinto, read, mv, filled, cap)
            eof = got < cap - filled
            filled += got
            wr.consumed = <uint64_t>(base + filled)
            continue
        end = pos + blen if pos + blen < avail else avail
        if end <= pos:
            break
        if not have:
            w = _weak_sum(s.weak_kind, data + (pos - base), <Py_ssize_t>(end - pos))
            rk_mult = _pow32(RK_MULT, <uint64_t>(end - pos))
            s1 = w & 0xFFFF
            s2 = w >> 16
            have = True
        expected = emit.expected(blen)
        if s._maybe(w, expected):
            k = s._find(w, data + (pos - base), <Py_ssize_t>(end - pos), expected, mv, <Py_ssize_t>(pos - base))
            if k >= 0:
                emit.literal(data + (lit - base), <Py_ssize_t>(pos - lit))
                emit.copy(<uint64_t>k * blen, <uint64_t>(end - pos))
                pos = lit = end
                have = False
                continue
        if end - pos == blen and end < avail:
            # The hot loop: roll one byte at a time while nothing can match and the literal
            # stays under the cap. Same steps as below, without the refill checks.
            while True:
                out_byte = data[pos - base]
                in_byte = data[end - base]
                if rk:
                    w = w * RK_MULT + in_byte - rk_full * (out_byte + RK_ADJ)
                else:
                    s1 += in_byte - out_byte
                    s2 += s1 - blen * (out_byte + ROLL_OFFSET)
                    w = (s2 << 16) | (s1 & 0xFFFF)
                pos += 1
                end += 1
                if pos - lit >= LIT_CAP or end >= avail or s._maybe(w, -1):
                    break
            if pos - lit >= LIT_CAP:
                emit.literal(data + (lit - base), <Py_ssize_t>(pos - lit))
                lit = pos
            continue
        # end of file: the window shrinks
        out_byte = data[pos - base]
        count = <uint32_t>(end - pos)
        if rk:
            rk_mult *= RK_INVM
            w -= rk_mult * (out_byte + RK_ADJ)
        else:
            s1 -= out_byte + ROLL_OFFSET
            s2 -= count * (out_byte + ROLL_OFFSET)
            w = (s2 << 16) | (s1 & 0xFFFF)
        pos += 1
        if pos - lit >= LIT_CAP:
            emit.literal(data + (lit - base), <Py_ssize_t>(pos - lit))
            lit = pos
    emit.literal(data + (lit - base), <Py_ssize_t>(pos - lit))
    wr.consumed = <uint64_t>pos
    emit.end()
    return wr.total()


# ---------------------------------------------------------------------------------------------
# Patch
# ---------------------------------------------------------------------------------------------

@cython.final
cdef class Patcher:
    """Incremental patch: ``feed()`` delta bytes as they arrive, then ``close()``.

    basis must be seekable (COPY reads it at random); out only needs ``write()``.
    """

    cdef object _basis
    cdef object _error
    cdef _Writer _w
    cdef int _fd             # basis file descriptor for pread, -1: seek + readinto
    cdef uint64_t _size      # basis size
    cdef uint64_t _fed       # delta bytes fed so far
    cdef int _state
    cdef uint8_t[17] _hdr    # a split magic or command header
    cdef int _hlen
    cdef uint64_t _hdr_at    # delta offset of _hdr[0]
    cdef int _op             # the open LITERAL, for error messages
    cdef uint64_t _at
    cdef uint64_t _left      # literal bytes still to come
    cdef uint64_t _total

    def __init__(self, basis, out, *, progress=None):
        self._basis = basis
        self._error = None
        self._w = _Writer(out, OUT_BUF, progress)
        self._fd = _regular_fd(basis)
        self._size = os.fstat(self._fd).st_size if self._fd >= 0 else basis_size(basis)
        self._fed = 0
        self._state = S_MAGIC
        self._hlen = 0

    @property
    def written(self):
        return self._w.total()

    def feed(self, chunk) -> None:
        """Apply the commands chunk completes; raises DeltaFormatError (and stays failed)."""
        cdef const uint8_t[::1] view = chunk
        if self._error is not None:
            raise DeltaFormatError(self._error)
        if view.shape[0]:
            self._feed_checked(&view[0], view.shape[0])
        self._report()

    def close(self) -> int:
        """Check that the delta ended right after END; flush; return the bytes written."""
        cdef int need
        if self._error is not None:
            raise DeltaFormatError(self._error)
        if self._state != S_DONE:
            if self._state == S_COMMAND and self._hlen:
                need = 1 + OP_LEN1[self._hdr[0]] + OP_LEN2[self._hdr[0]]
                exc = err_truncated(self._fed, S_COMMAND, self._hdr[0], self._hdr_at, need - self._hlen, need)
            else:
                exc = err_truncated(self._fed, self._state, self._op, self._at, self._left, self._total)
            self._error = str(exc)
            self._w.flush()
            raise exc
        self._w.flush()
        return self._w.total()

    cdef int _report(self) except -1:
        if self._w._progress is not None:
            self._w._progress(self._w.consumed, self._w.total())
        return 0

    cdef int _feed_checked(self, const uint8_t* p, Py_ssize_t n) except -1:
        try:
            self._feed(p, n)
        except DeltaFormatError as exc:
            self._error = str(exc)
            self._w.flush()  # like the twin: what preceded the bad command is written
            raise
        return 0

    cdef int _feed(self, const uint8_t* p, Py_ssize_t n) except -1:
        cdef uint64_t base = self._fed  # delta offset of p[0]
        cdef Py_ssize_t i = 0, take
        cdef uint8_t op
        cdef int need
        cdef uint32_t magic
        self._fed += <uint64_t>n
        while i < n:
            if self._state == S_DATA:
                take = n - i
                if <uint64_t>take > self._left:
                    take = <Py_ssize_t>self._left
                self._w.put(p + i, take)
                i += take
                self._left -= <uint64_t>take
                if self._left == 0:
                    self._state = S_COMMAND
            elif self._state == S_COMMAND:
                if self._hlen == 0:
                    op = p[i]
                    if OP_KIND[op] == RESERVED:
                        raise err_opcode(op, base + i)
                    need = 1 + OP_LEN1[op] + OP_LEN2[op]
                    if n - i >= need:  # the usual case: the whole header is in this chunk
                        self._run(op, p + i + 1, base + i)
                        i += need
                        continue
                    self._hdr_at = base + i
                else:
                    op = self._hdr[0]
                    need = 1 + OP_LEN1[op] + OP_LEN2[op]
                take = need - self._hlen
                if take > n - i:
                    take = n - i
                memcpy(self._hdr + self._hlen, p + i, take)
                self._hlen += <int>take
                i += take
                if self._hlen == need:
                    self._hlen = 0
                    self._run(op, self._hdr + 1, self._hdr_at)
            elif self._state == S_MAGIC:
                take = 4 - self._hlen
                if take > n - i:
                    take = n - i
                memcpy(self._hdr + self._hlen, p + i, take)
                self._hlen += <int>take
                i += take
                if self._hlen == 4:
                    self._hlen = 0
                    magic = <uint32_t>_get_be(self._hdr, 4)
                    if magic != RS_DELTA_MAGIC:
                        raise err_magic(magic)
                    self._state = S_COMMAND
            else:
                raise err_trailing(base + i)
        self._w.consumed = self._fed
        return 0

    cdef int _run(self, uint8_t op, const uint8_t* params, uint64_t at) except -1:
        cdef int kind = OP_KIND[op], len1 = OP_LEN1[op]
        cdef uint64_t p1, p2
        if kind == END:
            self._state = S_DONE
            return 0
        p1 = _get_be(params, len1)
        if kind == LITERAL:
            if OP_IMMEDIATE[op]:
                p1 = OP_IMMEDIATE[op]
            elif p1 == 0:
                raise err_zero_length(op, at)
            self._state = S_DATA
            self._op = op
            self._at = at
            self._left = self._total = p1
            return 0
        p2 = _get_be(params + len1, OP_LEN2[op])
        if p2 == 0:
            raise err_zero_length(op, at)
        if p2 > self._size or p1 > self._size - p2:
            raise err_copy_range(op, at, p1, p2, self._size)
        return self._copy(p1, p2)

    cdef int _copy(self, uint64_t offset, uint64_t length) except -1:
        """Basis bytes straight into the output buffer."""
        cdef _Writer w = self._w
        cdef Py_ssize_t take, got
        cdef ssize_t r
        cdef int fd = self._fd
        cdef uint8_t* dst
        while length:
            if w.length == w.cap:
                w.flush()
            take = w.cap - w.length
            if <uint64_t>take > length:
                take = <Py_ssize_t>length
            dst = w.data + w.length
            if fd >= 0:
                got = 0
                while got < take:
                    with nogil:
                        r = pread(fd, dst + got, <size_t>(take - got), <off_t>(offset + <uint64_t>got))
                    if r > 0:
                        got += r
                    elif r == 0:
                        raise err_basis_short(offset + got)
                    elif errno != EINTR:
                        raise OSError(errno, os.strerror(errno))
            else:
                self._basis.seek(offset)
                got = _fill(getattr(self._basis, "readinto", None), self._basis.read, w._mv,
                            w.length, w.length + take)
                if got < take:
                    raise err_basis_short(offset + got)
            w.length += take
            offset += <uint64_t>take
            length -= <uint64_t>take
        return 0

    cdef int _feed_stream(self, object readinto) except -1:
        """The whole delta from a file: readinto one reused buffer, parse in place."""
        buf = bytearray(IN_BUF)
        mv = memoryview(buf)
        cdef const uint8_t* p = <const uint8_t*>PyByteArray_AS_STRING(buf)
        cdef Py_ssize_t n
        while True:
            n = readinto(mv) or 0
            if n == 0:
                return 0
            self._feed_checked(p, n)
            self._report()


def patch(basis, delta, out, *, progress=None) -> int:
    """Apply delta (a file, an iterable of chunks or bytes) to basis, writing to out.

    Returns the bytes written. progress(delta bytes read, bytes written) is called as it goes.
    """
    cdef Patcher patcher = Patcher(basis, out, progress=progress)
    if isinstance(delta, (bytes, bytearray, memoryview)):
        patcher.feed(delta)
    elif hasattr(delta, "readinto"):
        patcher._feed_stream(delta.readinto)
    elif hasattr(delta, "read"):
        while True:  # no walrus: Cython 0.29 (kirkstone's) lacks it
            chunk = delta.read(IN_BUF)
            if not chunk:
                break
            patcher.feed(chunk)
    else:
        for chunk in delta:
            patcher.feed(chunk)
    return patcher.close()
