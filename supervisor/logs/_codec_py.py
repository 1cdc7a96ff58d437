"""Pure-Python twin of ``supervisor._logcodec`` (the Docker log stream codec).

It is the reference that the compiled module is tested against, the baseline of
``tests/bench/bench_logcodec.py``, and the fallback when the extension is not built.
Both modules must behave identically, byte for byte; change them together.

Defined behaviour beyond the obvious (shared by both implementations):

* Frames of type 0 (stdin) count as stdout and type 3 (daemon error) as stderr, like Docker's stdcopy.
* A line longer than ``max_line`` bytes is cut into ``max_line``-byte pieces. Only the first piece
  has a timestamp prefix. The other pieces get the first piece's timestamp and keep all their bytes.
  Only the final piece has its ``\\r`` stripped. Each piece is decoded on its own, so a cut inside a
  UTF-8 sequence gives U+FFFD on both sides.
* With ``timestamps`` on a multiplexed stream, a frame that continues an unterminated line (the
  engine splits lines longer than 16 KiB into several messages, each framed and stamped on its
  own, all with the first piece's timestamp) starts with its own timestamp: that prefix is
  dropped, so the line arrives whole with the first piece's timestamp. Only a valid timestamp
  followed by a space within the frame's first ``_MAX_TS_LEN + 1`` bytes is dropped; anything
  else is line data. A valid timestamp of another millisecond than the open line's means the open
  line was a final line without newline (a process that exited mid-line; the next run's output
  follows it in the log): the open line is emitted as a line of its own, and the frame starts a
  new line, its timestamp parsed as usual. An open line whose start had no timestamp is
  continued, unless ``max_line`` already cut it: then the clock time its pieces got is compared.
* ``encode`` never raises for a lone surrogate. It outputs ``?`` in its place, like
  ``str.encode("utf-8", "replace")`` would.
"""

from __future__ import annotations

import functools
import json
import re
import time
from array import array
from collections.abc import Callable, Iterable
from itertools import compress
from operator import itemgetter, lt, not_

__all__ = ["NANOS_CLOCK", "NANOS_PIECE", "Demuxer", "LogStreamError", "RepeatFilter", "encode",
           "encode_batch", "encode_many", "parse_timestamp"]

_MAX_TS_LEN = 35  # "YYYY-MM-DDTHH:MM:SS.nnnnnnnnn+HH:MM"
_TS_RE = re.compile(rb"(\d{4}-\d\d-\d\d[Tt]\d\d:\d\d:\d\d)(?:\.(\d{1,9}))?(?:[Zz]|([+-])(\d\d):(\d\d))")
_DAYS_IN_MONTH = (0, 31, 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31)
_LINE_START = object()  # _cont_ts value: the next piece starts a new line
#: Demuxer.feed's ``nanos`` for a record that is a piece of a line cut by max_line, after its first.
NANOS_PIECE = -1
#: ... and for a line without a (valid) timestamp, stamped with the clock's time.
NANOS_CLOCK = -2
_json_encode = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False).encode


class LogStreamError(ValueError):
    """A corrupt multiplexed stream: a frame header that Docker would never send.

    ``records`` holds the records that the failing ``feed()`` call had already completed,
    so a caller can still forward them.
    """

    def __init__(self, message: str, records: list[dict] | None = None) -> None:
        super().__init__(message)
        self.records: list[dict] = records if records is not None else []


def _check_nanos(nanos: object) -> None:
    if not (type(nanos) is array and nanos.typecode == "i"):
        raise TypeError("nanos must be an array('i')")


def _default_now_ms() -> int:
    return time.time_ns() // 1_000_000


def _days_from_civil(year: int, month: int, day: int) -> int:
    """Days since 1970-01-01 in the proleptic Gregorian calendar (valid for year 0 too)."""
    if month <= 2:
        year -= 1
    era = year // 400
    yoe = year - era * 400
    doy = (153 * (month + (-3 if month > 2 else 9)) + 2) // 5 + day - 1
    doe = yoe * 365 + yoe // 4 - yoe // 100 + doy
    return era * 146097 + doe - 719468


@functools.lru_cache(maxsize=64)
def _civil_seconds(stamp: bytes) -> int | None:
    """Epoch seconds of "YYYY-MM-DDTHH:MM:SS" (digits already checked), None if out of range.

    Cached because consecutive log lines nearly always share their second.
    """
    year, month, day = int(stamp[0:4]), int(stamp[5:7]), int(stamp[8:10])
    hour, minute, second = int(stamp[11:13]), int(stamp[14:16]), int(stamp[17:19])
    if not 1 <= month <= 12 or day < 1 or hour > 23 or minute > 59 or second > 59:
        return None
    leap = year % 4 == 0 and (year % 100 != 0 or year % 400 == 0)
    if day > _DAYS_IN_MONTH[month] + (month == 2 and leap):
        return None
    return _days_from_civil(year, month, day) * 86400 + hour * 3600 + minute * 60 + second


def parse_timestamp(value: bytes) -> int | None:
    """Parse Docker's RFC 3339 (nano) timestamp into epoch milliseconds, rounded down.

    Returns None instead of raising: a line whose prefix is not a timestamp is still a valid line.
    """
    parsed = _parse_stamp(value)
    return None if parsed is None else parsed[0]


def _parse_stamp(value: bytes) -> tuple[int, int] | None:
    """:func:`parse_timestamp` and the nanoseconds within that millisecond (0-999,999)."""
    m = _TS_RE.fullmatch(value)
    if m is None:
        return None
    seconds = _civil_seconds(bytes(m[1]))
    if seconds is None:
        return None
    if m[3] is not None:
        off_h, off_m = int(m[4]), int(m[5])
        if off_h > 23 or off_m > 59:
            return None
        offset = off_h * 3600 + off_m * 60
        seconds -= offset if m[3] == b"+" else -offset
    frac = int((m[2] + b"00000000")[:9]) if m[2] else 0
    return seconds * 1000 + frac // 1_000_000, frac % 1_000_000


class Demuxer:
    """Incremental demultiplexer + line splitter for ONE container's Docker log/attach stream."""

    __slots__ = (
        "_service_id",
        "_multiplexed",
        "_timestamps",
        "_max_line",
        "_now_ms",
        "_header",
        "_remaining",
        "_stream",
        "_partial",
        "_cont_ts",
        "_nanos",
        "_strip",
        "_prefix",
        "_error",
    )

    def __init__(
        self,
        service_id: int | None = None,
        *,
        multiplexed: bool = True,
        timestamps: bool = True,
        max_line: int = 65536,
        now_ms: Callable[[], int] | None = None,
    ) -> None:
        if max_line < 1:
            raise ValueError("max_line must be at least 1")
        self._service_id = service_id
        self._multiplexed = bool(multiplexed)
        self._timestamps = bool(timestamps)
        self._max_line = int(max_line)
        self._now_ms = now_ms if now_ms is not None else _default_now_ms
        self._header = bytearray()  # a frame header split across chunks
        self._remaining = 0  # payload bytes of the current frame not seen yet
        self._stream = 0  # 0 stdout, 1 stderr
        self._partial = (bytearray(), bytearray())  # unterminated line per stream, <= max_line
        self._cont_ts: list = [_LINE_START, _LINE_START]  # timestamp of a line cut by max_line
        self._nanos: array | None = None  # feed()'s ``nanos`` while it runs
        self._strip = False  # the current frame continues a line: drop its timestamp prefix
        self._prefix = bytearray()  # the start of such a frame, until its prefix is decided
        self._error: str | None = None

    def feed(self, chunk: bytes, nanos: array | None = None) -> list[dict]:
        """Consume one chunk; return a record for every line it completes. ``nanos``, an
        ``array('i')``: gets one value a record appended, in order, for the :class:`RepeatFilter`:
        the nanoseconds within its millisecond (0-999,999) of the record's timestamp,
        :data:`NANOS_PIECE` for a piece of a line cut by ``max_line`` after its first (same stamp),
        :data:`NANOS_CLOCK` for a line without a timestamp (stamped with the clock's time)."""
        if nanos is not None:
            _check_nanos(nanos)
        self._nanos = nanos
        try:
            return self._feed(chunk)
        finally:
            self._nanos = None

    def _feed(self, chunk: bytes) -> list[dict]:
        if self._error is not None:
            raise LogStreamError(self._error)
        out: list[dict] = []
        if type(chunk) is not bytes:
            chunk = memoryview(chunk).tobytes()  # any bytes-like object, never an int
        if not self._multiplexed:
            self._consume(0, chunk, out)
            return out
        pos, end = 0, len(chunk)
        while pos < end:
            if self._remaining:
                take = min(self._remaining, end - pos)
                data = chunk[pos : pos + take]
                self._remaining -= take
                pos += take
                if self._strip:
                    data = self._strip_prefix(data, out)
                if data:
                    self._consume(self._stream, data, out)
                continue
            need = 8 - len(self._header)
            self._header += chunk[pos : pos + need]
            pos += need
            if len(self._header) < 8:
                break
            header = bytes(self._header)
            self._header.clear()
            self._check_header(header, out)
            self._stream = stream = 1 if header[0] >= 2 else 0
            self._remaining = int.from_bytes(header[4:8], "big")
            self._strip = self._timestamps and bool(
                self._partial[stream] or self._cont_ts[stream] is not _LINE_START)
        return out

    def _strip_prefix(self, data: bytes, out: list[dict]) -> bytes:
        """Collect a continuation frame's start; once decided, what of it is line data."""
        prefix = self._prefix
        room = _MAX_TS_LEN + 1 - len(prefix)
        space = data.find(b" ", 0, room)
        if space >= 0:
            prefix += data[: space + 1]
            rest = data[space + 1 :]
        else:
            prefix += data[:room]
            rest = data[room:]
            if len(prefix) <= _MAX_TS_LEN and self._remaining:
                return b""  # the prefix goes on in the next chunk
        self._strip = False
        head = bytes(prefix)
        prefix.clear()
        stamp = parse_timestamp(head[:-1]) if head.endswith(b" ") else None
        if stamp is not None:
            line_stamp = self._line_stamp(self._stream)
            if line_stamp is None or line_stamp == stamp:
                return rest
            self._break_line(self._stream, out)  # the open line was a final partial line
        return head + rest

    def _line_stamp(self, stream: int) -> int | None:
        """The timestamp (ms) of the open line of ``stream``, None if it has none."""
        cont = self._cont_ts[stream]
        if cont is not _LINE_START:
            return cont
        buf = self._partial[stream]
        space = buf.find(b" ", 0, _MAX_TS_LEN + 1)
        return parse_timestamp(bytes(buf[:space])) if space >= 0 else None

    def _break_line(self, stream: int, out: list[dict]) -> None:
        """End the open line of ``stream`` where it is (a line the engine did not split)."""
        buf = self._partial[stream]
        if buf:
            self._emit(stream, bytes(buf), True, out)
            buf.clear()
        self._cont_ts[stream] = _LINE_START

    def close(self, nanos: array | None = None) -> list[dict]:
        """Flush unterminated final lines (stdout first); drop an incomplete frame; reset.
        ``nanos`` as for :meth:`feed`."""
        if nanos is not None:
            _check_nanos(nanos)
        self._nanos = nanos
        try:
            return self._close()
        finally:
            self._nanos = None

    def _close(self) -> list[dict]:
        out: list[dict] = []
        if self._strip and self._prefix:  # an undecided prefix of a cut frame is line data
            self._consume(self._stream, bytes(self._prefix), out)
        for stream in (0, 1):
            buf = self._partial[stream]
            if buf:
                self._emit(stream, bytes(buf), True, out)
                buf.clear()
            self._cont_ts[stream] = _LINE_START
        self._header.clear()
        self._remaining = 0
        self._strip = False
        self._prefix.clear()
        return out

    def _check_header(self, header: bytes, out: list[dict]) -> None:
        if header[0] > 3:
            problem = f"unknown stream type {header[0]}"
        elif header[1:4] != b"\0\0\0":
            problem = f"nonzero padding bytes {header[1:4].hex(' ')}"
        else:
            return
        self._error = f"corrupt log stream: {problem} in frame header {header.hex(' ')}"
        raise LogStreamError(self._error, out)

    def _consume(self, stream: int, data: bytes, out: list[dict]) -> None:
        """Split one stream's payload bytes into lines, carrying the partial line over."""
        buf = self._partial[stream]
        max_line = self._max_line
        start, end = 0, len(data)
        while start < end:
            nl = data.find(b"\n", start)
            stop = end if nl < 0 else nl
            if buf:
                room = max_line - len(buf)
                if stop - start > room:  # the buffered line overflows: cut it
                    buf += data[start : start + room]
                    start += room
                    self._emit(stream, bytes(buf), False, out)
                    buf.clear()
                elif nl < 0:
                    buf += data[start:]
                    return
                else:
                    buf += data[start:nl]
                    self._emit(stream, bytes(buf), True, out)
                    buf.clear()
                    start = nl + 1
                    continue
            while stop - start > max_line:
                self._emit(stream, data[start : start + max_line], False, out)
                start += max_line
            if nl < 0:
                buf += data[start:]
                return
            self._emit(stream, data[start:nl], True, out)
            start = nl + 1

    def _emit(self, stream: int, raw: bytes, final: bool, out: list[dict]) -> None:
        """Turn one line (or a max_line piece of one) into a record."""
        if final and raw.endswith(b"\r"):
            raw = raw[:-1]
        timestamp = self._cont_ts[stream]
        nanos = NANOS_PIECE
        if timestamp is _LINE_START:
            timestamp, nanos = None, NANOS_CLOCK
            if self._timestamps:
                space = raw.find(b" ", 0, _MAX_TS_LEN + 1)
                parsed = _parse_stamp(raw[:space]) if space >= 0 else None
                if parsed is not None:
                    timestamp, nanos = parsed
                    raw = raw[space + 1 :]
            if timestamp is None:
                timestamp = self._now_ms()
            if not final:
                self._cont_ts[stream] = timestamp
        elif final:
            self._cont_ts[stream] = _LINE_START
        if self._nanos is not None:
            self._nanos.append(nanos)
        out.append(
            {
                "message": raw.decode("utf-8", "replace"),
                "isStdErr": stream == 1,
                "timestamp": timestamp,
                "serviceId": self._service_id,
            }
        )


def encode(record: dict) -> bytes:
    """One NDJSON line, byte-identical to compact ``json.dumps(ensure_ascii=False)``."""
    return _json_encode(record).encode("utf-8", "replace") + b"\n"


def encode_many(records: Iterable[dict]) -> bytes:
    """The concatenation of ``encode()`` of each record, built in one go."""
    parts = [_json_encode(r) for r in records]
    if not parts:
        return b""
    parts.append("")
    return "\n".join(parts).encode("utf-8", "replace")


#: The keys of the Demuxer's records, in their order: the §8.2 fields of a service line.
_RECORD_KEYS = ("message", "isStdErr", "timestamp", "serviceId")
_RECORD_KEYS_ACK = (*_RECORD_KEYS, "_ack")
_stamp = itemgetter("timestamp")
_is_err = itemgetter("isStdErr")


def encode_batch(records: list[dict], max_chars: int) -> tuple[bytes, int] | None:
    """The cloud log stream's NDJSON for a batch of the Demuxer's own records, and the total length
    (characters) of their messages; None when any record is not exactly that shape, so the caller
    takes its general path (supervisor/logs/cloud.py ``to_record``).

    That shape: a dict whose keys are exactly ``message``, ``isStdErr``, ``timestamp``,
    ``serviceId`` in this order (the last record may have ``_ack`` after them, the hub's
    acknowledgement, which is not sent), with a ``str`` message of at most ``max_chars``
    characters, a ``bool`` isStdErr and ``int`` timestamp and serviceId. Each line is
    ``{"message":..,"isStdErr":..,"timestamp":..,"serviceId":..}`` as :func:`encode` writes it.
    """
    if not records:
        return b"", 0
    lines = []
    chars = 0
    last = len(records) - 1
    for i, record in enumerate(records):
        if type(record) is not dict:
            return None
        keys = tuple(record)
        if keys != _RECORD_KEYS and (i != last or keys != _RECORD_KEYS_ACK):
            return None
        message, is_err = record["message"], record["isStdErr"]
        timestamp, service_id = record["timestamp"], record["serviceId"]
        if (type(message) is not str or len(message) > max_chars or type(is_err) is not bool
                or type(timestamp) is not int or type(service_id) is not int):
            return None
        chars += len(message)
        lines.append(_json_encode({"message": message, "isStdErr": is_err, "timestamp": timestamp,
                                   "serviceId": service_id}))
    lines.append("")
    return "\n".join(lines).encode("utf-8", "replace"), chars


class RepeatFilter:
    """Drops the engine's repeats from ONE container's records, in the order they are read; keeps
    the timestamps of what it lets through.

    Following a ``json-file`` log across its rotation (``max-size``) while behind the writer, the
    engine (seen with 20.10) sends again the lines of the new file it had sent already (1-200
    lines), with the stamps they had. Each stream's stamps never go back (the engine stamps each
    line of a stream as it reads it, to the nanosecond), so a record stamped before the newest of
    its stream (by at most ``window_ms``: more is a clock set back, taken as new) is a repeat, and
    so are as many of the following records stamped with exactly that newest stamp as were let
    through with it.

    A stamp is ``(timestamp, nanos)``: the record's millisecond and, given ``nanos`` (what
    :meth:`Demuxer.feed` collected), the nanoseconds within it. To the nanosecond no two lines of a
    stream share a stamp, so a record with exactly the newest stamp is a repeat too (the engine
    repeated the newest line itself), except a piece of a line cut by ``max_line``
    (:data:`NANOS_PIECE`), which goes where the line's first piece went, and a line stamped with
    the clock (:data:`NANOS_CLOCK`, compared as nanosecond 0 and counted like a stamp without
    nanoseconds). Without ``nanos`` stamps are milliseconds: a repeat that starts within the newest
    millisecond cannot be told from new lines of it and is let through again.

    ``last``, ``at_last``, ``repeat``: per stream (stdout, stderr), the newest stamp let through
    (None before the first), how many records carried it, and how many of those a repeat still has
    to bring (-1: none).
    """

    __slots__ = ("window_ms", "last", "at_last", "repeat", "_kept")

    def __init__(self, window_ms: int = 1000) -> None:
        self.window_ms = int(window_ms)
        self.last: list[tuple[int, int] | None] = [None, None]
        self.at_last = [0, 0]
        self.repeat = [-1, -1]
        self._kept = [True, True]  # where the stream's last line went (its next pieces go there too)

    def filter(self, records: list[dict], nanos: array | None = None) -> tuple[list[dict], array]:
        """``(kept records, array('q') of their timestamps)``; records are the Demuxer's, ``nanos``
        (one a record) what it collected for them."""
        if nanos is not None:
            _check_nanos(nanos)
            if len(nanos) != len(records):
                raise ValueError("nanos must have one value a record")
        if not records:
            return records, array("q")
        stamps = array("q", map(_stamp, records))
        # A batch of stamped lines newer than everything let through and strictly in order per stream
        # has no repeat: checked with builtins (C loops), and only each stream's newest stamp is kept.
        if nanos is not None and min(nanos) >= 0:
            keys = list(zip(stamps, nanos, strict=True))
            last = self.last
            errs = list(map(_is_err, records))
            ordered = all(t is None or min(keys) > t for t in last)
            newest = []
            for flags in (map(not_, errs), errs):
                mine = list(compress(keys, flags)) if ordered else None
                if mine and not all(map(lt, mine, mine[1:])):
                    ordered = False
                newest.append(mine)
            if ordered:
                for s, mine in enumerate(newest):
                    if mine:
                        last[s], self.at_last[s], self.repeat[s], self._kept[s] = mine[-1], 1, -1, True
                return records, stamps
        kept = self._line_by_line(records, nanos)
        return kept, array("q", map(_stamp, kept))

    def _line_by_line(self, records: list[dict], nanos: array | None) -> list[dict]:
        out = []
        last, at_last, repeat, kept = self.last, self.at_last, self.repeat, self._kept
        window = self.window_ms * 1_000_000
        for i, record in enumerate(records):
            s = 1 if record["isStdErr"] else 0
            ns = nanos[i] if nanos is not None else NANOS_CLOCK
            if ns == NANOS_PIECE:
                if kept[s]:
                    out.append(record)
                continue
            key, newest = (record["timestamp"], max(ns, 0)), last[s]
            keep = True
            if newest is None or key > newest:
                last[s], at_last[s], repeat[s] = key, 1, -1
            elif key == newest:
                if repeat[s] > 0:
                    repeat[s] -= 1
                    keep = False
                elif ns >= 0:  # the newest line itself, again
                    keep = False
                else:
                    at_last[s] += 1
            elif (newest[0] - key[0]) * 1_000_000 + newest[1] - key[1] <= window:
                repeat[s] = at_last[s]
                keep = False
            kept[s] = keep
            if keep:
                out.append(record)
        return records if len(out) == len(records) else out  # as the compiled one: the same list
