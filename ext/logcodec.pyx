# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True, initializedcheck=False
"""Compiled Docker log stream codec: the hot path of ``supervisor.logs.codec``.

Same API and byte-identical behaviour as the pure-Python twin ``supervisor/logs/_codec_py.py``,
whose module docstring lists the edge-case rules. This module exists for speed.
The demuxer walks the chunk with C pointers and never holds more than one frame header
and ``max_line`` bytes per stream. The encoder writes JSON straight from the str's internal
representation into one growable buffer per call.

Message bytes go through ``PyUnicode_DecodeUTF8(..., "replace")``. That is exactly what
``bytes.decode("utf-8", "replace")`` calls, so the result is identical by construction.
It is already a validating decoder with an ASCII fast path, so a separate validator would
only add a second pass over valid input.
"""

from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_FromStringAndSize, PyBytes_GET_SIZE
from cpython cimport array
from cpython.dict cimport PyDict_GetItem, PyDict_Next, PyDict_Size
from cpython.mem cimport PyMem_Free, PyMem_Malloc, PyMem_Realloc
from cpython.object cimport PyObject
from cpython.unicode cimport PyUnicode_DecodeUTF8
from libc.stdint cimport INT64_MIN, int32_t, int64_t, uint8_t, uint16_t, uint32_t, uint64_t
from libc.string cimport memchr, memcpy
from posix.time cimport CLOCK_REALTIME, clock_gettime, timespec

from supervisor.logs._codec_py import LogStreamError  # one exception class for both twins
from supervisor.logs._codec_py import NANOS_CLOCK, NANOS_PIECE  # Demuxer.feed's nanos markers

import array as _array_module
import json

cdef extern from "Python.h":
    # Declared here: Cython 0.29 (kirkstone's) has no cpython.long declaration of it.
    long long PyLong_AsLongLongAndOverflow(object, int*) except? -1
    bint PyUnicode_CheckExact(object)
    Py_ssize_t Py_SIZE(object)
    bint PyLong_CheckExact(object)
    bint PyDict_CheckExact(object)
    bint PyUnicode_IS_ASCII(object)
    unsigned int PyUnicode_KIND(object)
    void* PyUnicode_DATA(object)
    Py_ssize_t PyUnicode_GET_LENGTH(object)
    PyObject* Py_True
    PyObject* Py_False
    PyObject* Py_None

__all__ = ["NANOS_CLOCK", "NANOS_PIECE", "Demuxer", "LogStreamError", "RepeatFilter", "encode",
           "encode_batch", "encode_many", "parse_timestamp"]

cdef enum:
    C_NANOS_PIECE = -1  # NANOS_PIECE
    C_NANOS_CLOCK = -2  # NANOS_CLOCK

cdef enum:
    MAX_TS_LEN = 35  # "YYYY-MM-DDTHH:MM:SS.nnnnnnnnn+HH:MM"

_json_encode = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False).encode

cdef int[13] DAYS_IN_MONTH = [0, 31, 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31]


# ---------------------------------------------------------------------------------------------
# Timestamps
# ---------------------------------------------------------------------------------------------

cdef inline int _digits(const uint8_t* p, int n) noexcept nogil:
    """Value of n ASCII digits, or -1 if any is not a digit."""
    cdef int v = 0, i, d
    for i in range(n):
        d = p[i] - 48
        if d < 0 or d > 9:
            return -1
        v = v * 10 + d
    return v


cdef inline int64_t _days_from_civil(int64_t y, int64_t m, int64_t d) noexcept nogil:
    """Days since 1970-01-01, proleptic Gregorian (valid for year 0 too)."""
    cdef int64_t era, yoe, doy, doe
    if m <= 2:
        y -= 1
    era = (y if y >= 0 else y - 399) // 400
    yoe = y - era * 400
    doy = (153 * (m + (-3 if m > 2 else 9)) + 2) // 5 + d - 1
    doe = yoe * 365 + yoe // 4 - yoe // 100 + doy
    return era * 146097 + doe - 719468


cdef bint _parse_ts(const uint8_t* p, Py_ssize_t n, int64_t* out, int32_t* sub=NULL) noexcept nogil:
    """RFC 3339 (nano) -> epoch ms, rounded down, and into ``sub`` (unless NULL) the nanoseconds
    within that millisecond; False if invalid. See the twin for the rules."""
    cdef int year, month, day, hour, minute, second, off_h, off_m, mdays, i, ndig, millis
    cdef int32_t nanos = 0
    cdef int64_t secs
    cdef Py_ssize_t pos
    cdef uint8_t c
    if n < 20 or n > MAX_TS_LEN:
        return False
    if p[4] != 45 or p[7] != 45 or (p[10] != 84 and p[10] != 116) or p[13] != 58 or p[16] != 58:
        return False  # '-' '-' 'T'/'t' ':' ':'
    year = _digits(p, 4)
    month = _digits(p + 5, 2)
    day = _digits(p + 8, 2)
    hour = _digits(p + 11, 2)
    minute = _digits(p + 14, 2)
    second = _digits(p + 17, 2)
    if year < 0 or month < 1 or month > 12 or day < 1 or hour < 0 or hour > 23:
        return False
    if minute < 0 or minute > 59 or second < 0 or second > 59:
        return False
    mdays = DAYS_IN_MONTH[month]
    if month == 2 and year % 4 == 0 and (year % 100 != 0 or year % 400 == 0):
        mdays = 29
    if day > mdays:
        return False
    pos = 19
    millis = 0
    if p[pos] == 46:  # '.'
        pos += 1
        ndig = 0
        while pos < n and p[pos] - 48 <= 9 and p[pos] >= 48:
            if ndig < 3:
                millis = millis * 10 + (p[pos] - 48)
            elif ndig < 9:
                nanos = nanos * 10 + (p[pos] - 48)
            ndig += 1
            pos += 1
        if ndig == 0 or ndig > 9:
            return False
        for i in range(ndig, 3):
            millis *= 10
        for i in range(ndig if ndig > 3 else 3, 9):
            nanos *= 10
    if pos >= n:
        return False
    secs = _days_from_civil(year, month, day) * 86400 + hour * 3600 + minute * 60 + second
    c = p[pos]
    if c == 90 or c == 122:  # 'Z' / 'z'
        if pos + 1 != n:
            return False
    elif c == 43 or c == 45:  # '+' / '-'
        if pos + 6 != n or p[pos + 3] != 58:
            return False
        off_h = _digits(p + pos + 1, 2)
        off_m = _digits(p + pos + 4, 2)
        if off_h < 0 or off_h > 23 or off_m < 0 or off_m > 59:
            return False
        if c == 43:
            secs -= off_h * 3600 + off_m * 60
        else:
            secs += off_h * 3600 + off_m * 60
    else:
        return False
    out[0] = secs * 1000 + millis
    if sub != NULL:
        sub[0] = nanos
    return True


def parse_timestamp(value) -> int | None:
    """Parse Docker's RFC 3339 (nano) timestamp into epoch milliseconds, rounded down.

    Returns None instead of raising: a line whose prefix is not a timestamp is still a valid line.
    """
    cdef const uint8_t[::1] view = value
    cdef int64_t ms
    if view.shape[0] and _parse_ts(&view[0], view.shape[0], &ms):
        return ms
    return None


cdef inline int64_t _clock_ms() noexcept nogil:
    cdef timespec ts
    clock_gettime(CLOCK_REALTIME, &ts)
    return <int64_t>ts.tv_sec * 1000 + ts.tv_nsec // 1000000


# ---------------------------------------------------------------------------------------------
# Demuxer
# ---------------------------------------------------------------------------------------------

cdef struct LineBuf:
    char* data
    Py_ssize_t length
    Py_ssize_t cap


cdef class Demuxer:
    """Incremental demultiplexer + line splitter for ONE container's Docker log/attach stream."""

    cdef object _service_id
    cdef object _now_ms
    cdef bint _multiplexed
    cdef bint _timestamps
    cdef Py_ssize_t _max_line
    cdef uint8_t _header[8]
    cdef int _hlen               # bytes of a split frame header collected so far
    cdef uint64_t _remaining     # payload bytes of the current frame not seen yet
    cdef int _stream             # 0 stdout, 1 stderr
    cdef LineBuf _buf[2]         # unterminated line per stream, never longer than max_line
    cdef bint _cont[2]           # the next piece of this stream continues a line cut by max_line
    cdef object _cont_ts0
    cdef object _cont_ts1
    cdef array.array _nanos      # feed()'s ``nanos`` while it runs
    cdef bint _strip             # the current frame continues a line: drop its timestamp prefix
    cdef uint8_t _prefix[MAX_TS_LEN + 1]  # the start of such a frame, until its prefix is decided
    cdef int _plen
    cdef object _error

    def __cinit__(self):
        self._buf[0].data = NULL
        self._buf[0].cap = 0
        self._buf[1].data = NULL
        self._buf[1].cap = 0

    def __init__(self, service_id=None, *, multiplexed=True, timestamps=True,
                 max_line=65536, now_ms=None):
        if max_line < 1:
            raise ValueError("max_line must be at least 1")
        self._service_id = service_id
        self._multiplexed = bool(multiplexed)
        self._timestamps = bool(timestamps)
        self._max_line = max_line
        self._now_ms = now_ms
        self._reset()
        self._error = None

    def __dealloc__(self):
        PyMem_Free(self._buf[0].data)
        PyMem_Free(self._buf[1].data)

    cdef void _reset(self) noexcept:
        self._hlen = 0
        self._remaining = 0
        self._stream = 0
        self._buf[0].length = 0
        self._buf[1].length = 0
        self._cont[0] = False
        self._cont[1] = False
        self._cont_ts0 = None
        self._cont_ts1 = None
        self._strip = False
        self._plen = 0

    cdef int _take_nanos(self, object nanos) except -1:
        if nanos is not None and not (type(nanos) is array.array and (<array.array>nanos).ob_descr.typecode == b"i"):
            raise TypeError("nanos must be an array('i')")
        self._nanos = nanos
        return 0

    def feed(self, chunk, nanos=None) -> list:
        """Consume one chunk; return a record for every line it completes; ``nanos`` as in the twin."""
        cdef list out = []
        self._take_nanos(nanos)
        try:
            if self._error is not None:
                raise LogStreamError(self._error)
            if type(chunk) is not bytes:
                chunk = memoryview(chunk).tobytes()  # any bytes-like object, never an int
            self._feed(<const uint8_t*>PyBytes_AS_STRING(chunk), PyBytes_GET_SIZE(chunk), out)
        finally:
            self._nanos = None
        return out

    def close(self, nanos=None) -> list:
        """Flush unterminated final lines (stdout first); drop an incomplete frame; reset."""
        self._take_nanos(nanos)
        try:
            return self._close()
        finally:
            self._nanos = None

    cdef list _close(self):
        cdef list out = []
        cdef int s
        if self._strip and self._plen:  # an undecided prefix of a cut frame is line data
            self._consume(self._stream, <const char*>self._prefix, self._plen, out)
        for s in range(2):
            if self._buf[s].length:
                self._emit(s, self._buf[s].data, self._buf[s].length, True, out)
                self._buf[s].length = 0
            PyMem_Free(self._buf[s].data)  # the stream is over: give the line buffers back
            self._buf[s].data = NULL
            self._buf[s].cap = 0
        self._reset()
        return out

    cdef int _feed(self, const uint8_t* p, Py_ssize_t n, list out) except -1:
        cdef const uint8_t* hdr
        cdef Py_ssize_t take
        if not self._multiplexed:
            return self._consume(0, <const char*>p, n, out)
        while n > 0:
            if self._remaining:
                take = <Py_ssize_t>self._remaining if self._remaining < <uint64_t>n else n
                if self._strip:
                    take = self._strip_prefix(p, take, out)
                else:
                    self._consume(self._stream, <const char*>p, take, out)
                self._remaining -= <uint64_t>take
                p += take
                n -= take
                continue
            if self._hlen == 0 and n >= 8:
                hdr = p
                p += 8
                n -= 8
            else:
                take = 8 - self._hlen
                if take > n:
                    take = n
                memcpy(self._header + self._hlen, p, take)
                self._hlen += <int>take
                p += take
                n -= take
                if self._hlen < 8:
                    break
                self._hlen = 0
                hdr = self._header
            if hdr[0] > 3 or hdr[1] or hdr[2] or hdr[3]:
                self._corrupt(hdr, out)
            self._stream = 1 if hdr[0] >= 2 else 0
            self._remaining = ((<uint32_t>hdr[4] << 24) | (<uint32_t>hdr[5] << 16)
                               | (<uint32_t>hdr[6] << 8) | <uint32_t>hdr[7])
            self._strip = self._timestamps and (self._buf[self._stream].length > 0
                                                or self._cont[self._stream])
        return 0

    cdef Py_ssize_t _strip_prefix(self, const uint8_t* p, Py_ssize_t take, list out) except -1:
        """Collect a continuation frame's start (see the twin); returns the bytes of p used."""
        cdef Py_ssize_t i = 0
        cdef int64_t ms
        cdef bint spaced = False
        while i < take and self._plen < MAX_TS_LEN + 1:
            self._prefix[self._plen] = p[i]
            self._plen += 1
            i += 1
            if p[i - 1] == 32:
                spaced = True
                break
        if not spaced and self._plen <= MAX_TS_LEN and <uint64_t>i < self._remaining:
            return i  # the prefix goes on in the next chunk
        self._strip = False
        if not (spaced and _parse_ts(self._prefix, self._plen - 1, &ms)):
            self._consume(self._stream, <const char*>self._prefix, self._plen, out)
        elif self._line_stamp_differs(self._stream, ms):
            self._break_line(self._stream, out)  # the open line was a final partial line
            self._consume(self._stream, <const char*>self._prefix, self._plen, out)
        self._plen = 0
        return i

    cdef bint _line_stamp_differs(self, int s, int64_t ms) except -1:
        """Whether the open line of stream s has a timestamp (ms) other than ``ms`` (see the twin)."""
        cdef LineBuf* b = &self._buf[s]
        cdef const char* sp
        cdef Py_ssize_t limit
        cdef int64_t line_ms
        if self._cont[s]:
            ts = self._cont_ts0 if s == 0 else self._cont_ts1
            return ts is not None and ts != ms
        limit = b.length if b.length < MAX_TS_LEN + 1 else MAX_TS_LEN + 1
        if limit == 0:
            return False
        sp = <const char*>memchr(b.data, 32, limit)
        if sp == NULL or not _parse_ts(<const uint8_t*>b.data, sp - b.data, &line_ms):
            return False
        return line_ms != ms

    cdef int _break_line(self, int s, list out) except -1:
        """End the open line of stream s where it is (a line the engine did not split)."""
        cdef Py_ssize_t n = self._buf[s].length
        if n:
            self._buf[s].length = 0  # the data stays valid until the next append
            self._emit(s, self._buf[s].data, n, True, out)
        self._cont[s] = False
        return 0

    cdef int _corrupt(self, const uint8_t* hdr, list out) except -1:
        cdef bytes raw = PyBytes_FromStringAndSize(<const char*>hdr, 8)
        if hdr[0] > 3:
            problem = f"unknown stream type {hdr[0]}"
        else:
            problem = f"nonzero padding bytes {raw[1:4].hex(' ')}"
        self._error = f"corrupt log stream: {problem} in frame header {raw.hex(' ')}"
        raise LogStreamError(self._error, out)

    cdef int _append(self, int s, const char* p, Py_ssize_t n) except -1:
        cdef LineBuf* b = &self._buf[s]
        cdef Py_ssize_t need = b.length + n, cap
        cdef char* data
        if need > b.cap:
            cap = b.cap * 2 if b.cap else 256
            if cap < need:
                cap = need
            if cap > self._max_line:
                cap = self._max_line
            data = <char*>PyMem_Realloc(b.data, cap)
            if data == NULL:
                raise MemoryError()
            b.data = data
            b.cap = cap
        memcpy(b.data + b.length, p, n)
        b.length = need
        return 0

    cdef int _consume(self, int s, const char* p, Py_ssize_t n, list out) except -1:
        """Split one stream's payload bytes into lines, carrying the partial line over."""
        cdef LineBuf* b = &self._buf[s]
        cdef Py_ssize_t max_line = self._max_line, seg, room
        cdef const char* nl
        while n > 0:
            nl = <const char*>memchr(p, 10, n)
            seg = nl - p if nl != NULL else n
            if b.length:
                room = max_line - b.length
                if seg > room:  # the buffered line overflows: cut it
                    self._append(s, p, room)
                    p += room
                    n -= room
                    seg -= room
                    b.length = 0  # the data stays valid until the next append
                    self._emit(s, b.data, max_line, False, out)
                elif nl == NULL:
                    return self._append(s, p, n)
                else:
                    self._append(s, p, seg)
                    n -= seg + 1
                    p = nl + 1
                    seg = b.length
                    b.length = 0
                    self._emit(s, b.data, seg, True, out)
                    continue
            while seg > max_line:
                self._emit(s, p, max_line, False, out)
                p += max_line
                n -= max_line
                seg -= max_line
            if nl == NULL:
                return self._append(s, p, n)
            self._emit(s, p, seg, True, out)
            n -= seg + 1
            p = nl + 1
        return 0

    cdef int _emit(self, int s, const char* p, Py_ssize_t n, bint final, list out) except -1:
        """Turn one line (or a max_line piece of one) into a record."""
        cdef int64_t ms
        cdef int32_t nanos = C_NANOS_PIECE
        cdef Py_ssize_t count
        cdef Py_ssize_t space, limit
        cdef const char* sp
        if final and n and p[n - 1] == 13:
            n -= 1
        if self._cont[s]:
            ts = self._cont_ts0 if s == 0 else self._cont_ts1
            if final:
                self._cont[s] = False
        else:
            ts = None
            nanos = C_NANOS_CLOCK
            if self._timestamps:
                limit = n if n < MAX_TS_LEN + 1 else MAX_TS_LEN + 1
                sp = <const char*>memchr(p, 32, limit)
                if sp != NULL:
                    space = sp - p
                    if _parse_ts(<const uint8_t*>p, space, &ms, &nanos):
                        ts = ms
                        p += space + 1
                        n -= space + 1
            if ts is None:
                ts = _clock_ms() if self._now_ms is None else self._now_ms()
            if not final:
                self._cont[s] = True
                if s == 0:
                    self._cont_ts0 = ts
                else:
                    self._cont_ts1 = ts
        if self._nanos is not None:
            count = Py_SIZE(self._nanos)
            array.resize_smart(self._nanos, count + 1)
            self._nanos.data.as_ints[count] = nanos
        out.append({
            "message": PyUnicode_DecodeUTF8(p, n, "replace"),
            "isStdErr": s == 1,
            "timestamp": ts,
            "serviceId": self._service_id,
        })
        return 0


# ---------------------------------------------------------------------------------------------
# Encoder
# ---------------------------------------------------------------------------------------------

cdef struct Writer:
    char* data
    Py_ssize_t length
    Py_ssize_t cap


cdef inline int _reserve(Writer* w, Py_ssize_t extra) except -1:
    if w.length + extra <= w.cap:
        return 0
    return _grow(w, extra)


cdef int _grow(Writer* w, Py_ssize_t extra) except -1:
    cdef Py_ssize_t cap
    cdef char* data
    cap = w.cap * 2
    if cap < w.length + extra:
        cap = w.length + extra
    data = <char*>PyMem_Realloc(w.data, cap)
    if data == NULL:
        raise MemoryError()
    w.data = data
    w.cap = cap
    return 0


cdef inline int _write(Writer* w, const char* p, Py_ssize_t n) except -1:
    _reserve(w, n)
    memcpy(w.data + w.length, p, n)
    w.length += n
    return 0


# 0: copy as is; otherwise the character after the backslash ('u' means \u00XX)
cdef uint8_t[128] ESCAPE
cdef int _i
for _i in range(128):
    ESCAPE[_i] = 0
for _i in range(32):
    ESCAPE[_i] = 117  # 'u'
ESCAPE[8] = 98     # \b
ESCAPE[9] = 116    # \t
ESCAPE[10] = 110   # \n
ESCAPE[12] = 102   # \f
ESCAPE[13] = 114   # \r
ESCAPE[34] = 34    # \"
ESCAPE[92] = 92    # \\

cdef const char* HEX = b"0123456789abcdef"


cdef inline char* _put_escape(char* o, uint32_t c) noexcept nogil:
    cdef uint8_t e = ESCAPE[c]
    o[0] = 92
    if e == 117:
        o[1] = 117
        o[2] = 48
        o[3] = 48
        o[4] = HEX[c >> 4]
        o[5] = HEX[c & 15]
        return o + 6
    o[1] = e
    return o + 2


cdef inline char* _put_ascii(char* o, const uint8_t* src, Py_ssize_t n) noexcept nogil:
    """Copy ASCII bytes, escaping as needed; runs without escapes go 8 bytes at a time."""
    cdef Py_ssize_t i = 0
    cdef uint64_t word, t
    cdef uint8_t c
    cdef int k
    while i + 8 <= n:
        memcpy(&word, src + i, 8)
        # bytes < 0x20, == '"' (0x22) or == '\\' (0x5c); exact for ASCII input
        t = ((word - 0x2020202020202020ULL)
             | ((word ^ 0x2222222222222222ULL) - 0x0101010101010101ULL)
             | ((word ^ 0x5c5c5c5c5c5c5c5cULL) - 0x0101010101010101ULL)) & ~word & 0x8080808080808080ULL
        if t == 0:
            memcpy(o, &word, 8)
            o += 8
            i += 8
            continue
        for k in range(8):
            c = src[i]
            if ESCAPE[c]:
                o = _put_escape(o, c)
            else:
                o[0] = <char>c
                o += 1
            i += 1
    while i < n:
        c = src[i]
        if ESCAPE[c]:
            o = _put_escape(o, c)
        else:
            o[0] = <char>c
            o += 1
        i += 1
    return o


cdef int _write_str(Writer* w, str s) except -1:
    """Write s as a JSON string in UTF-8; a lone surrogate becomes '?' (like errors="replace")."""
    cdef Py_ssize_t n = PyUnicode_GET_LENGTH(s), i
    cdef unsigned int kind = PyUnicode_KIND(s)
    cdef void* data = PyUnicode_DATA(s)
    cdef char* o
    cdef uint32_t c
    _reserve(w, 6 * n + 2)  # worst case: every character becomes \u00XX
    o = w.data + w.length
    o[0] = 34
    o += 1
    if PyUnicode_IS_ASCII(s):
        o = _put_ascii(o, <const uint8_t*>data, n)
    else:
        for i in range(n):
            if kind == 1:
                c = (<const uint8_t*>data)[i]
            elif kind == 2:
                c = (<const uint16_t*>data)[i]
            else:
                c = (<const uint32_t*>data)[i]
            if c < 128:
                if ESCAPE[c]:
                    o = _put_escape(o, c)
                else:
                    o[0] = <char>c
                    o += 1
            elif c < 0x800:
                o[0] = <char>(0xC0 | (c >> 6))
                o[1] = <char>(0x80 | (c & 0x3F))
                o += 2
            elif c < 0x10000:
                if 0xD800 <= c <= 0xDFFF:
                    o[0] = 63  # '?'
                    o += 1
                else:
                    o[0] = <char>(0xE0 | (c >> 12))
                    o[1] = <char>(0x80 | ((c >> 6) & 0x3F))
                    o[2] = <char>(0x80 | (c & 0x3F))
                    o += 3
            else:
                o[0] = <char>(0xF0 | (c >> 18))
                o[1] = <char>(0x80 | ((c >> 12) & 0x3F))
                o[2] = <char>(0x80 | ((c >> 6) & 0x3F))
                o[3] = <char>(0x80 | (c & 0x3F))
                o += 4
    o[0] = 34
    w.length = o + 1 - w.data
    return 0


cdef int _write_int(Writer* w, object value) except -1:
    cdef int overflow = 0
    cdef long long v = PyLong_AsLongLongAndOverflow(value, &overflow)
    cdef unsigned long long u
    cdef char[24] tmp
    cdef int pos = 24
    if overflow:
        text = int.__repr__(value).encode("ascii")  # same as json; raises past the digit limit
        return _write(w, text, len(text))
    u = <unsigned long long>(-(v + 1)) + 1 if v < 0 else <unsigned long long>v
    while True:
        pos -= 1
        tmp[pos] = <char>(48 + u % 10)
        u //= 10
        if u == 0:
            break
    if v < 0:
        pos -= 1
        tmp[pos] = 45
    return _write(w, tmp + pos, 24 - pos)


cdef int _write_record(Writer* w, object record) except -1:
    """Append one NDJSON line; anything but str keys and str/bool/int/None values goes to json."""
    cdef Py_ssize_t start = w.length, pos = 0
    cdef PyObject* key
    cdef PyObject* value
    cdef bint first = True
    if PyDict_CheckExact(record):
        _reserve(w, 2)
        w.data[w.length] = 123  # '{'
        w.length += 1
        while PyDict_Next(record, &pos, &key, &value):
            if not PyUnicode_CheckExact(<object>key):
                break
            if not first:
                _reserve(w, 1)
                w.data[w.length] = 44  # ','
                w.length += 1
            first = False
            _write_str(w, <str>key)
            _reserve(w, 6)
            w.data[w.length] = 58  # ':'
            w.length += 1
            if PyUnicode_CheckExact(<object>value):
                _write_str(w, <str>value)
            elif value == Py_True:
                _write(w, b"true", 4)
            elif value == Py_False:
                _write(w, b"false", 5)
            elif value == Py_None:
                _write(w, b"null", 4)
            elif PyLong_CheckExact(<object>value):
                _write_int(w, <object>value)
            else:
                break
        else:
            _write(w, b"}\n", 2)
            return 0
        w.length = start  # unsupported type: let json do the whole record
    text = _json_encode(record).encode("utf-8", "replace")
    _write(w, text, len(text))
    return _write(w, b"\n", 1)


def encode(record) -> bytes:
    """One NDJSON line, byte-identical to compact ``json.dumps(ensure_ascii=False)``."""
    cdef Writer w
    w.length = 0
    w.cap = 256
    w.data = <char*>PyMem_Malloc(w.cap)
    if w.data == NULL:
        raise MemoryError()
    try:
        _write_record(&w, record)
        return PyBytes_FromStringAndSize(w.data, w.length)
    finally:
        PyMem_Free(w.data)


def encode_many(records) -> bytes:
    """The concatenation of ``encode()`` of each record, built in one buffer."""
    cdef Writer w
    w.length = 0
    w.cap = min(200 * len(records) + 256, 1 << 20) if isinstance(records, list) else 4096
    w.data = <char*>PyMem_Malloc(w.cap)
    if w.data == NULL:
        raise MemoryError()
    try:
        for record in records:
            _write_record(&w, record)
        return PyBytes_FromStringAndSize(w.data, w.length)
    finally:
        PyMem_Free(w.data)


# ---------------------------------------------------------------------------------------------
# The Demuxer's records on their way out: the engine's repeats dropped, the cloud's NDJSON
# ---------------------------------------------------------------------------------------------

cdef str K_MESSAGE = "message"
cdef str K_IS_STDERR = "isStdErr"
cdef str K_TIMESTAMP = "timestamp"
cdef str K_SERVICE_ID = "serviceId"
cdef str K_ACK = "_ack"
cdef array.array STAMPS_TEMPLATE = _array_module.array("q")
cdef bytes B_MESSAGE = b'{"message":'
cdef bytes B_STDERR = b',"isStdErr":true,"timestamp":'
cdef bytes B_STDOUT = b',"isStdErr":false,"timestamp":'
cdef bytes B_SERVICE_ID = b',"serviceId":'


cdef inline int _put(Writer* w, bytes text) except -1:
    return _write(w, PyBytes_AS_STRING(text), PyBytes_GET_SIZE(text))


cdef inline bint _is_key(PyObject* key, str expected):
    return key == <PyObject*>expected or (PyUnicode_CheckExact(<object>key) and <str>key == expected)


def encode_batch(list records, Py_ssize_t max_chars):
    """The cloud log stream's NDJSON for a batch of the Demuxer's own records and the total length
    of their messages, or None; the twin's docstring gives the shape it accepts."""
    cdef Writer w
    cdef Py_ssize_t i, n = len(records), pos, size, chars = 0, length
    cdef PyObject* key
    cdef PyObject* value
    cdef PyObject* message
    cdef PyObject* is_err
    cdef PyObject* timestamp
    cdef PyObject* service_id
    cdef object record
    cdef int k
    w.length = 0
    w.cap = min(160 * n + 256, 1 << 20)
    w.data = <char*>PyMem_Malloc(w.cap)
    if w.data == NULL:
        raise MemoryError()
    try:
        for i in range(n):
            record = records[i]
            if not PyDict_CheckExact(record):
                return None
            size = PyDict_Size(record)
            if size != 4 and (size != 5 or i != n - 1):
                return None
            pos = 0
            k = 0
            message = is_err = timestamp = service_id = NULL
            while PyDict_Next(record, &pos, &key, &value):
                if k == 0 and _is_key(key, K_MESSAGE):
                    message = value
                elif k == 1 and _is_key(key, K_IS_STDERR):
                    is_err = value
                elif k == 2 and _is_key(key, K_TIMESTAMP):
                    timestamp = value
                elif k == 3 and _is_key(key, K_SERVICE_ID):
                    service_id = value
                elif k != 4 or not _is_key(key, K_ACK):
                    return None
                k += 1
            if not PyUnicode_CheckExact(<object>message) or not PyLong_CheckExact(<object>timestamp):
                return None
            if not PyLong_CheckExact(<object>service_id) or (is_err != Py_True and is_err != Py_False):
                return None
            length = PyUnicode_GET_LENGTH(<object>message)
            if length > max_chars:
                return None
            chars += length
            _put(&w, B_MESSAGE)
            _write_str(&w, <str>message)
            _put(&w, B_STDERR if is_err == Py_True else B_STDOUT)
            _write_int(&w, <object>timestamp)
            _put(&w, B_SERVICE_ID)
            _write_int(&w, <object>service_id)
            _write(&w, b"}\n", 2)
        return PyBytes_FromStringAndSize(w.data, w.length), chars
    finally:
        PyMem_Free(w.data)


cdef class RepeatFilter:
    """Drops the engine's repeats from ONE container's records; the twin's docstring gives the
    rule. One pass in C over the records, whatever their order."""

    cdef readonly int64_t window_ms
    cdef int64_t _last_ms[2]     # the newest stamp let through per stream (INT64_MIN: none yet)...
    cdef int32_t _last_ns[2]     # ... and its nanoseconds within the millisecond
    cdef int64_t _at_last[2]
    cdef int64_t _repeat[2]
    cdef bint _kept[2]           # where the stream's last line went (its next pieces go there too)

    def __init__(self, window_ms=1000):
        self.window_ms = window_ms
        self._last_ms[0] = self._last_ms[1] = INT64_MIN
        self._last_ns[0] = self._last_ns[1] = 0
        self._at_last[0] = self._at_last[1] = 0
        self._repeat[0] = self._repeat[1] = -1
        self._kept[0] = self._kept[1] = True

    @property
    def last(self):
        return [None if self._last_ms[s] == INT64_MIN else (self._last_ms[s], self._last_ns[s])
                for s in range(2)]

    @property
    def at_last(self):
        return [self._at_last[0], self._at_last[1]]

    @property
    def repeat(self):
        return [self._repeat[0], self._repeat[1]]

    def filter(self, list records, nanos=None):
        """``(kept records, array('q') of their timestamps)``; records are the Demuxer's, ``nanos``
        (an ``array('i')``, one a record) what it collected for them."""
        cdef Py_ssize_t i, n = len(records), kept = 0
        cdef array.array stamps = array.clone(STAMPS_TEMPLATE, n, False)
        cdef long long* out = stamps.data.as_longlongs
        cdef int* ns = NULL
        cdef list result = None
        cdef object record
        cdef PyObject* value
        cdef int s, overflow = 0
        cdef long long t
        cdef int32_t sub, raw
        cdef int64_t gap
        cdef bint keep
        if nanos is not None:
            if not (type(nanos) is array.array and (<array.array>nanos).ob_descr.typecode == b"i"):
                raise TypeError("nanos must be an array('i')")
            if Py_SIZE(nanos) != n:
                raise ValueError("nanos must have one value a record")
            ns = (<array.array>nanos).data.as_ints
        for i in range(n):
            record = records[i]
            if not PyDict_CheckExact(record):
                raise TypeError(f"a record is a dict, not {type(record).__name__}")
            value = PyDict_GetItem(record, K_IS_STDERR)
            if value == NULL:
                raise KeyError(K_IS_STDERR)
            s = 1 if (<object>value) else 0
            value = PyDict_GetItem(record, K_TIMESTAMP)
            if value == NULL:
                raise KeyError(K_TIMESTAMP)
            t = PyLong_AsLongLongAndOverflow(<object>value, &overflow)
            if overflow or t == INT64_MIN:
                raise OverflowError("a record's timestamp does not fit 64 bits")
            raw = ns[i] if ns != NULL else C_NANOS_CLOCK
            if raw == C_NANOS_PIECE:
                keep = self._kept[s]
            else:
                sub = raw if raw > 0 else 0
                keep = True
                if t > self._last_ms[s] or (t == self._last_ms[s] and sub > self._last_ns[s]):
                    self._last_ms[s] = t
                    self._last_ns[s] = sub
                    self._at_last[s] = 1
                    self._repeat[s] = -1
                elif t == self._last_ms[s] and sub == self._last_ns[s]:
                    if self._repeat[s] > 0:
                        self._repeat[s] -= 1
                        keep = False
                    elif raw >= 0:  # the newest line itself, again
                        keep = False
                    else:
                        self._at_last[s] += 1
                else:  # older than the newest: a repeat if within the window (in ns; no overflow)
                    gap = self._last_ms[s] - t
                    if gap <= self.window_ms + 1 and gap * 1000000 + self._last_ns[s] - sub <= self.window_ms * 1000000:
                        self._repeat[s] = self._at_last[s]
                        keep = False
                self._kept[s] = keep
            if not keep:
                if result is None:
                    result = records[:i]
            else:
                if result is not None:
                    result.append(record)
                out[kept] = t
                kept += 1
        if kept != n:
            array.resize(stamps, kept)
        return (records if result is None else result), stamps
