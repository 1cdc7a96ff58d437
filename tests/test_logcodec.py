"""Docker log stream codec: compiled module vs pure-Python twin vs an independent oracle."""

from __future__ import annotations

import importlib
import importlib.machinery
import json
import re
import struct
import time
from array import array
from datetime import UTC, datetime, timedelta, timezone

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from supervisor.logs import _codec_py as twin

NOW = 4242
SERVICE = 17


def _compiled():
    """The extension itself; raises (so tests fail, never skip) when it is not built."""
    return importlib.import_module("supervisor._logcodec")


@pytest.fixture(params=["compiled", "python"])
def mod(request):
    return _compiled() if request.param == "compiled" else twin


def frame(stream_type: int, payload: bytes) -> bytes:
    return struct.pack(">BxxxL", stream_type, len(payload)) + payload


def dumps_line(record) -> bytes:
    return json.dumps(record, separators=(",", ":"), ensure_ascii=False).encode() + b"\n"


def run(module, chunks, nanos=None, **kwargs) -> list[dict]:
    kwargs.setdefault("now_ms", lambda: NOW)
    demuxer = module.Demuxer(SERVICE, **kwargs)
    records = []
    for chunk in chunks:
        records += demuxer.feed(chunk, nanos)
    return records + demuxer.close(nanos)


def typed_items(records):
    """Records with key order and value types made explicit (True == 1 in a plain comparison)."""
    return [[(k, type(v), v) for k, v in r.items()] for r in records]


# ---------------------------------------------------------------------------------------------
# Independent oracle: whole stream at once, one byte at a time, datetime for the calendar
# ---------------------------------------------------------------------------------------------

_ORACLE_TS = re.compile(
    rb"(\d{4})-(\d\d)-(\d\d)[Tt](\d\d):(\d\d):(\d\d)(?:\.(\d{1,9}))?([Zz]|([+-])(\d\d):(\d\d))"
)
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_CYCLE_MS = 146097 * 86400 * 1000  # the Gregorian calendar repeats every 400 years


def oracle_ts(value: bytes) -> int | None:
    m = _ORACLE_TS.fullmatch(value)
    if m is None:
        return None
    year, month, day, hour, minute, second = (int(g) for g in m.group(1, 2, 3, 4, 5, 6))
    shift = 0
    if year == 0:  # datetime starts at year 1
        year, shift = 400, -_CYCLE_MS
    frac = (m.group(7) or b"").decode()
    if m.group(9):
        off_h, off_m = int(m.group(10)), int(m.group(11))
        if off_m > 59:
            return None
        sign = 1 if m.group(9) == b"+" else -1
        try:
            tz = timezone(sign * timedelta(hours=off_h, minutes=off_m))
        except ValueError:
            return None
    else:
        tz = UTC
    try:
        dt = datetime(year, month, day, hour, minute, second, int((frac + "000000")[:6]), tz)
    except ValueError:
        return None
    return (dt - _EPOCH) // timedelta(milliseconds=1) + shift


def oracle_nanos(value: bytes) -> int:
    """The nanoseconds within the millisecond of a valid timestamp: fraction digits 4 to 9."""
    frac = (_ORACLE_TS.fullmatch(value).group(7) or b"").decode()
    return int((frac + "0" * 9)[3:9])


def oracle(stream: bytes, *, multiplexed=True, timestamps=True, max_line=65536, close=True,
           nanos: list[int] | None = None) -> list[dict]:
    """The records of ``stream``; ``nanos`` gets each one's nanoseconds within its millisecond."""
    segments = []
    if multiplexed:
        pos = 0
        while pos + 8 <= len(stream):
            length = int.from_bytes(stream[pos + 4 : pos + 8], "big")
            segments.append((1 if stream[pos] >= 2 else 0, stream[pos + 8 : pos + 8 + length]))
            pos += 8 + length
    else:
        segments.append((0, stream))

    records = []
    cont: list[int | None] = [None, None]

    def emit(s: int, raw: bytes, final: bool) -> None:
        if final and raw.endswith(b"\r"):
            raw = raw[:-1]
        if cont[s] is not None:
            ts, ns = cont[s], -1  # a piece after the first
            if final:
                cont[s] = None
        else:
            ts, ns = None, -2  # no timestamp: the clock's
            if timestamps:
                prefix = raw.split(b" ", 1)[0]
                if len(prefix) < len(raw) and len(prefix) <= 35:
                    ts = oracle_ts(prefix)
                    if ts is not None:
                        raw = raw[len(prefix) + 1 :]
                        ns = oracle_nanos(prefix)
            if ts is None:
                ts = NOW
            if not final:
                cont[s] = ts
        if nanos is not None:
            nanos.append(ns)
        records.append(
            {
                "message": raw.decode("utf-8", "replace"),
                "isStdErr": s == 1,
                "timestamp": ts,
                "serviceId": SERVICE,
            }
        )

    bufs = [bytearray(), bytearray()]
    for s, payload in segments:
        if multiplexed and timestamps and (bufs[s] or cont[s] is not None):
            # A frame continuing an open line (the engine's split of a long line) starts with its
            # own timestamp, the same as the line's first: it is dropped. Another millisecond
            # means the open line ended without a newline (a process that exited mid-line).
            space = payload[:36].find(b" ")
            stamp = oracle_ts(payload[:space]) if space >= 0 else None
            if stamp is not None:
                line_stamp = cont[s]
                if line_stamp is None:
                    prefix = bytes(bufs[s][:36]).split(b" ", 1)[0]
                    line_stamp = oracle_ts(prefix) if len(prefix) < len(bufs[s][:36]) else None
                if line_stamp is None or line_stamp == stamp:
                    payload = payload[space + 1 :]
                else:
                    if bufs[s]:
                        emit(s, bytes(bufs[s]), True)
                        bufs[s].clear()
                    cont[s] = None
        for byte in payload:
            if byte == 0x0A:
                emit(s, bytes(bufs[s]), True)
                bufs[s].clear()
            else:
                bufs[s].append(byte)
                if len(bufs[s]) > max_line:
                    emit(s, bytes(bufs[s][:max_line]), False)
                    del bufs[s][:max_line]
    for s in (0, 1):
        if bufs[s] and close:
            emit(s, bytes(bufs[s]), True)
    return records


# ---------------------------------------------------------------------------------------------
# Strategies
# ---------------------------------------------------------------------------------------------


@st.composite
def valid_timestamps(draw) -> bytes:
    dt = draw(st.datetimes(min_value=datetime(1, 1, 2), max_value=datetime(9999, 12, 30)))
    ndigits = draw(st.integers(0, 9))
    frac = "".join(draw(st.lists(st.sampled_from("0123456789"), min_size=ndigits, max_size=ndigits)))
    zone = draw(
        st.one_of(
            st.sampled_from(["Z", "z"]),
            st.builds(
                lambda sign, h, m: f"{sign}{h:02d}:{m:02d}",
                st.sampled_from("+-"),
                st.integers(0, 23),
                st.integers(0, 59),
            ),
        )
    )
    sep = draw(st.sampled_from("Tt"))
    text = f"{dt.year:04d}-{dt.month:02d}-{dt.day:02d}{sep}{dt.hour:02d}:{dt.minute:02d}:{dt.second:02d}"
    if ndigits:
        text += "." + frac
    return (text + zone).encode()


@st.composite
def mutated_timestamps(draw) -> bytes:
    ts = bytearray(draw(valid_timestamps()))
    pos = draw(st.integers(0, len(ts) - 1))
    action = draw(st.sampled_from(["replace", "delete", "insert", "truncate"]))
    byte = draw(st.sampled_from(b"0123456789:-+.TZ x\xff"))
    if action == "replace":
        ts[pos] = byte
    elif action == "delete":
        del ts[pos]
    elif action == "insert":
        ts.insert(pos, byte)
    else:
        del ts[pos:]
    return bytes(ts)


timestamps = st.one_of(valid_timestamps(), mutated_timestamps())
messages = st.one_of(
    st.binary(max_size=40),
    st.text(max_size=30).map(lambda s: s.encode("utf-8")),  # any unicode, controls included
    st.sampled_from([b"\xff", b"\xc3", b"\xe2\x82", b"\xf0\x9f\x98", b"\xed\xa0\x80", b"\xc0\xaf"]),
    st.sampled_from([b'say "hi"', b"C:\\path", b"a\tb", b"\x7f\x1b[0m", b"caf\xc3\xa9 \xe2\x82\xac"]),
)
line_ends = st.sampled_from([b"\n", b"\r\n", b""])
fragments = st.one_of(
    st.builds(lambda ts, msg, end: ts + b" " + msg + end, timestamps, messages, line_ends),
    messages,
    st.sampled_from([b"\n", b"\r\n", b"\r", b" ", b"\n\n", b"\r\r\n"]),
)
payloads = st.lists(fragments, max_size=8).map(b"".join)
frames = st.lists(st.tuples(st.integers(0, 3), payloads), max_size=12)
max_lines = st.sampled_from([1, 3, 8, 36, 40, 65536])


def split(data: bytes, cuts: list[int], kinds: list[int]) -> list:
    bounds = [0, *sorted(set(cuts)), len(data)]
    chunks = [data[a:b] for a, b in zip(bounds, bounds[1:], strict=False)]
    wrap = (bytes, bytearray, memoryview)
    return [wrap[kinds[i % len(kinds)]](c) for i, c in enumerate(chunks)]


# ---------------------------------------------------------------------------------------------
# Differential tests
# ---------------------------------------------------------------------------------------------

FAST = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@FAST
@given(
    frames=frames,
    multiplexed=st.booleans(),
    with_ts=st.booleans(),
    max_line=max_lines,
    truncate=st.booleans(),
    data=st.data(),
)
def test_demux_matches_twin_and_oracle(frames, multiplexed, with_ts, max_line, truncate, data):
    if multiplexed:
        stream = b"".join(frame(t, p) for t, p in frames)
        if truncate and stream:  # an incomplete final frame (header or payload)
            stream = stream[: data.draw(st.integers(0, len(stream) - 1), label="truncate at")]
    else:
        stream = b"".join(p for _, p in frames)
    cuts = data.draw(st.lists(st.integers(0, len(stream)), max_size=20), label="cuts")
    kinds = data.draw(st.lists(st.integers(0, 2), min_size=1, max_size=3), label="chunk types")
    chunks = split(stream, cuts, kinds)
    kwargs = {"multiplexed": multiplexed, "timestamps": with_ts, "max_line": max_line}

    compiled_ns, python_ns, expected_ns = array("i"), array("i"), []
    compiled = run(_compiled(), chunks, compiled_ns, **kwargs)
    python = run(twin, chunks, python_ns, **kwargs)
    expected = oracle(stream, nanos=expected_ns, **kwargs)

    assert typed_items(compiled) == typed_items(python) == typed_items(expected)
    assert list(compiled_ns) == list(python_ns) == expected_ns
    encoded = b"".join(dumps_line(r) for r in expected)
    assert _compiled().encode_many(compiled) == twin.encode_many(python) == encoded
    assert b"".join(_compiled().encode(r) for r in compiled) == encoded


@FAST
@given(frames=frames, bad=st.sampled_from([b"\x04\0\0\0", b"\xff\0\0\0", b"\x01\0\x01\0"]), data=st.data())
def test_corrupt_header_matches(frames, bad, data):
    good = b"".join(frame(t, p) for t, p in frames)
    stream = good + bad + b"\0\0\0\x05hello"
    cuts = data.draw(st.lists(st.integers(0, len(stream)), max_size=10), label="cuts")
    chunks = split(stream, cuts, [0])
    results = []
    for module in (_compiled(), twin):
        demuxer = module.Demuxer(SERVICE, now_ms=lambda: NOW)
        records = []
        with pytest.raises(module.LogStreamError) as info:
            for chunk in chunks:
                records += demuxer.feed(chunk)
        records += info.value.records
        results.append((typed_items(records), str(info.value)))
    assert results[0] == results[1]
    assert results[0][0] == typed_items(oracle(good, close=False))


@settings(max_examples=300, deadline=None)
@given(st.one_of(timestamps, st.binary(max_size=36)))
def test_parse_timestamp_matches(value):
    expected = oracle_ts(value)
    assert _compiled().parse_timestamp(value) == twin.parse_timestamp(value) == expected


any_char = st.one_of(st.characters(), st.characters(categories=["Cs"]))  # lone surrogates too
json_scalars = st.one_of(
    st.lists(any_char, max_size=20).map("".join),
    st.booleans(),
    st.none(),
    st.integers(),
    st.integers(min_value=-(2**64), max_value=2**64),
)
json_values = st.one_of(
    json_scalars,
    st.floats(allow_nan=False),
    st.lists(json_scalars, max_size=3),
    st.dictionaries(st.text(max_size=5), json_scalars, max_size=3),
)


def reference_line(record) -> bytes:
    text = json.dumps(record, separators=(",", ":"), ensure_ascii=False)
    return text.encode("utf-8", "replace") + b"\n"


@settings(max_examples=300, deadline=None)
@given(st.lists(st.dictionaries(st.text(max_size=10), json_values, max_size=5), max_size=5))
def test_encode_matches_json(records):
    expected = b"".join(reference_line(r) for r in records)
    for module in (_compiled(), twin):
        assert module.encode_many(records) == expected
        assert b"".join(module.encode(r) for r in records) == expected


# ---------------------------------------------------------------------------------------------
# encode_batch (the cloud log stream's lines) and RepeatFilter (the engine's repeats)
# ---------------------------------------------------------------------------------------------

RECORD_KEYS = ["message", "isStdErr", "timestamp", "serviceId"]
MAX_CHARS = 30


def codec_record(message="m", is_err=False, timestamp=1, service_id=SERVICE) -> dict:
    return {"message": message, "isStdErr": is_err, "timestamp": timestamp, "serviceId": service_id}


@st.composite
def batch_records(draw) -> list[dict]:
    """Mostly the Demuxer's own records, some bent the ways a caller could bend them."""
    records = []
    for _ in range(draw(st.integers(0, 6))):
        message = draw(st.lists(any_char, max_size=MAX_CHARS + 2).map("".join))
        record = codec_record(message, draw(st.booleans()), draw(st.integers(-(2**64), 2**64)),
                              draw(st.integers(-5, 2**63)))
        bend = draw(st.sampled_from(["none"] * 6 + ["ack", "order", "extra", "missing", "type", "ack-mid"]))
        if bend in ("ack", "ack-mid"):
            record["_ack"] = print
        elif bend == "order":
            record = dict(reversed(list(record.items())))
        elif bend == "extra":
            record["isSystem"] = True
        elif bend == "missing":
            del record[draw(st.sampled_from(RECORD_KEYS))]
        elif bend == "type":
            record[draw(st.sampled_from(RECORD_KEYS))] = draw(st.one_of(json_values, st.just(1.5)))
        records.append(record)
    return records


def oracle_batch(records: list[dict]) -> tuple[bytes, int] | None:
    """What encode_batch must return, from the rule in its docstring."""
    out, chars = b"", 0
    for i, record in enumerate(records):
        keys = list(record)
        if keys != RECORD_KEYS and not (i == len(records) - 1 and keys == [*RECORD_KEYS, "_ack"]):
            return None
        message, is_err, stamp, service = (record[k] for k in RECORD_KEYS)
        if not (type(message) is str and len(message) <= MAX_CHARS and type(is_err) is bool
                and type(stamp) is int and type(service) is int):
            return None
        chars += len(message)
        out += reference_line({k: record[k] for k in RECORD_KEYS})
    return out, chars


@FAST
@given(records=batch_records())
def test_encode_batch_matches_twin_and_oracle(records):
    expected = oracle_batch(records)
    assert _compiled().encode_batch(records, MAX_CHARS) == expected
    assert twin.encode_batch(records, MAX_CHARS) == expected


def test_encode_batch_examples(mod):
    ack = codec_record("é", True, 7)
    ack["_ack"] = print
    assert mod.encode_batch([codec_record("a"), ack], 10) == (
        b'{"message":"a","isStdErr":false,"timestamp":1,"serviceId":17}\n'
        b'{"message":"\xc3\xa9","isStdErr":true,"timestamp":7,"serviceId":17}\n', 2)
    assert mod.encode_batch([], 10) == (b"", 0)
    assert mod.encode_batch([codec_record("x" * 11)], 10) is None  # to be cut: the general path
    assert mod.encode_batch([codec_record(service_id=None)], 10) is None  # not a service's line
    assert mod.encode_batch([ack, codec_record()], 10) is None  # an ack only on the last line
    assert mod.encode_batch([codec_record(is_err=1)], 10) is None


def oracle_unrepeated(state: dict, records: list[dict], nanos: list[int] | None, window: int) -> list[dict]:
    """The rule of RepeatFilter's docstring, line by line, on (millisecond, nanoseconds) stamps."""
    out = []
    for i, record in enumerate(records):
        s = 1 if record["isStdErr"] else 0
        ns = nanos[i] if nanos is not None else -2
        if ns == -1:  # a piece: where its line went
            if state["kept"][s]:
                out.append(record)
            continue
        key, newest = (record["timestamp"], max(ns, 0)), state["last"][s]
        keep = True
        if newest is None or key > newest:
            state["last"][s], state["at_last"][s], state["repeat"][s] = key, 1, -1
        elif key == newest:
            if state["repeat"][s] > 0:
                state["repeat"][s] -= 1
                keep = False
            elif ns >= 0:
                keep = False
            else:
                state["at_last"][s] += 1
        elif (newest[0] - key[0]) * 10**6 + newest[1] - key[1] <= window * 10**6:
            state["repeat"][s] = state["at_last"][s]
            keep = False
        state["kept"][s] = keep
        if keep:
            out.append(record)
    return out


stamp_parts = st.tuples(st.booleans(), st.integers(0, 40), st.sampled_from([0, 1, 500_000, 999_999, -1, -2]))


@FAST
@given(batches=st.lists(st.lists(stamp_parts, max_size=12), max_size=8), window=st.integers(0, 20),
       ordered=st.booleans(), with_nanos=st.booleans())
def test_repeat_filter_matches_twin_and_oracle(batches, window, ordered, with_nanos):
    """Batches in stream order, often a repeat of an earlier stretch (as the engine sends at a
    rotation): the same records kept (the same objects), the same stamps and state, batch by batch."""
    compiled, python = _compiled().RepeatFilter(window), twin.RepeatFilter(window)
    state: dict = {"last": [None, None], "at_last": [0, 0], "repeat": [-1, -1], "kept": [True, True]}
    base = 0
    for batch in batches:
        if ordered:  # newer than everything before: the twin's fast path
            batch = sorted((err, base + t, ns) for err, t, ns in batch)
            base = max((t for _, t, _ in batch), default=base) + 1
        records = [codec_record(str(i), err, t) for i, (err, t, _) in enumerate(batch)]
        nanos = array("i", [ns for _, _, ns in batch]) if with_nanos else None
        expected = oracle_unrepeated(state, records, None if nanos is None else list(nanos), window)
        for module_filter in (compiled, python):
            kept, stamps = module_filter.filter(records, nanos)
            assert [id(r) for r in kept] == [id(r) for r in expected]
            assert stamps.typecode == "q" and list(stamps) == [r["timestamp"] for r in expected]
        assert compiled.last == python.last == state["last"]
        assert compiled.at_last == python.at_last == state["at_last"]
        assert compiled.repeat == python.repeat == state["repeat"]


def test_repeat_filter_drops_a_rotation_repeat(mod):
    """The engine sends lines 3-5 again after line 6 (a json-file rotation): dropped, then line 7
    and a stderr line of the same millisecond as line 5 go through."""
    filt = mod.RepeatFilter(1000)
    first = [codec_record(str(n), False, 100 + n) for n in range(1, 7)]
    kept, stamps = filt.filter(first)
    assert kept is first and list(stamps) == [101, 102, 103, 104, 105, 106]
    again = [codec_record(str(n), False, 100 + n) for n in (3, 4, 5, 6, 7)] + [codec_record("e", True, 105)]
    kept, stamps = filt.filter(again)
    assert [r["message"] for r in kept] == ["7", "e"] and list(stamps) == [107, 105]


def test_a_repeat_within_one_millisecond_is_told_by_its_nanoseconds(mod):
    """A burst of lines stamped within one millisecond, the engine's repeat starting inside it: the
    stamps' nanoseconds (the Demuxer collects them) tell the repeat from new lines of that millisecond."""
    stamp = b"2026-12-01T04:00:00.123%06dZ "
    payload = b"".join(stamp % (n * 1000) + b"line %d\n" % n for n in range(10))
    repeat = b"".join(stamp % (n * 1000) + b"line %d\n" % n for n in range(6, 10))
    more = b"".join(stamp % (n * 1000) + b"line %d\n" % n for n in range(10, 12))
    demuxer, filt = mod.Demuxer(SERVICE, multiplexed=False), mod.RepeatFilter(1000)
    lines = []
    for chunk in (payload, repeat + more):
        nanos = array("i")
        kept, stamps = filt.filter(demuxer.feed(chunk, nanos), nanos)
        assert set(stamps) == {1796097600123}
        lines += [r["message"] for r in kept]
    assert lines == [f"line {n}" for n in range(12)]
    # The engine's repeat of exactly the newest line (the new file began with it): dropped, and the
    # pieces of a cut line go where its first piece went.
    filt = mod.RepeatFilter(1000)
    demuxer = mod.Demuxer(SERVICE, multiplexed=False, max_line=40)  # the stamp (31) + 9
    nanos = array("i")
    kept, _ = filt.filter(demuxer.feed(payload[:payload.index(b"line 1\n") + 7], nanos), nanos)
    nanos = array("i")
    last = stamp % 1000 + b"line 1\n"
    long = stamp % 2000 + b"a long line cut in pieces\n"
    kept2, _ = filt.filter(demuxer.feed(last + long + last + long, nanos), nanos)
    assert [r["message"] for r in kept] == ["line 0", "line 1"]
    assert [r["message"] for r in kept2] == ["a long li", "ne cut in pieces"]
    # Without the nanoseconds the repeat cannot be told from new lines of that millisecond.
    filt = mod.RepeatFilter(1000)
    kept, _ = filt.filter(mod.Demuxer(SERVICE, multiplexed=False).feed(payload + repeat + more))
    assert len(kept) == 16


def test_nanos_must_be_an_int_array(mod):
    with pytest.raises(TypeError):
        mod.Demuxer(SERVICE).feed(b"", [])
    with pytest.raises(TypeError):
        mod.RepeatFilter().filter([codec_record()], array("q", [0]))
    with pytest.raises(ValueError):
        mod.RepeatFilter().filter([codec_record()], array("i"))


# ---------------------------------------------------------------------------------------------
# Examples
# ---------------------------------------------------------------------------------------------


def test_package_uses_compiled_module():
    from supervisor.logs import codec

    compiled = _compiled()  # ImportError here means the extension was not built: a failure
    assert codec.IMPLEMENTATION == "compiled"
    assert codec.Demuxer is compiled.Demuxer
    assert codec.encode_many is compiled.encode_many
    assert codec.encode_batch is compiled.encode_batch and codec.RepeatFilter is compiled.RepeatFilter
    assert compiled.__file__.endswith(tuple(importlib.machinery.EXTENSION_SUFFIXES))
    assert compiled.LogStreamError is twin.LogStreamError


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (b"1970-01-01T00:00:00Z", 0),
        (b"2024-03-01T12:34:56.123456789Z", 1709296496123),
        (b"2024-03-01T12:34:56.1Z", 1709296496100),
        (b"2024-03-01T12:34:56.12Z", 1709296496120),
        (b"2024-03-01T12:34:56.999999999Z", 1709296496999),
        (b"2024-03-01t12:34:56z", 1709296496000),
        (b"2024-03-01T13:34:56+01:00", 1709296496000),
        (b"2024-03-01T07:04:56.5-05:30", 1709296496500),
        (b"2024-03-01T12:34:56-00:00", 1709296496000),
        (b"1969-12-31T23:59:59.9995Z", -1),  # floor, not truncation
        (b"2024-02-29T00:00:00Z", 1709164800000),
        (b"2000-02-29T00:00:00Z", 951782400000),
        (b"0000-01-01T00:00:00Z", -62167219200000),
        (b"9999-12-31T23:59:59.999999999+23:59", 253402214459999),
        (b"2024-03-01T12:34:56.1234567890Z", None),  # 10 fraction digits
        (b"2024-03-01T12:34:56.Z", None),
        (b"2024-03-01T12:34:56", None),
        (b"2024-03-01 12:34:56Z", None),
        (b"2024-13-01T12:34:56Z", None),
        (b"2023-02-29T12:34:56Z", None),
        (b"1900-02-29T12:34:56Z", None),
        (b"2024-04-31T12:34:56Z", None),
        (b"2024-03-01T24:00:00Z", None),
        (b"2024-03-01T12:60:00Z", None),
        (b"2024-03-01T12:34:60Z", None),
        (b"2024-03-01T12:34:56+24:00", None),
        (b"2024-03-01T12:34:56+01:60", None),
        (b"2024-03-01T12:34:56+0100", None),
        (b"2024-03-01T12:34:56Zx", None),
        (b" 2024-03-01T12:34:56Z", None),
        (b"2024-03-01T12:34:5\xd9\xa1Z", None),
        (b"", None),
        (b"hello", None),
    ],
)
def test_parse_timestamp(mod, value, expected):
    assert mod.parse_timestamp(value) == expected


def test_line_format_and_order(mod):
    stream = (
        frame(1, b"2024-03-01T12:34:56.123456789Z hello world\n")
        + frame(2, b"2024-03-01T12:34:57Z oops\r\n")
        + frame(0, b"2024-03-01T12:34:58Z from stdin\n")
        + frame(3, b"daemon error\n")
    )
    records = run(mod, [stream])
    assert [list(r) for r in records] == [["message", "isStdErr", "timestamp", "serviceId"]] * 4
    assert records == [
        {"message": "hello world", "isStdErr": False, "timestamp": 1709296496123, "serviceId": 17},
        {"message": "oops", "isStdErr": True, "timestamp": 1709296497000, "serviceId": 17},
        {"message": "from stdin", "isStdErr": False, "timestamp": 1709296498000, "serviceId": 17},
        {"message": "daemon error", "isStdErr": True, "timestamp": NOW, "serviceId": 17},
    ]


def test_crlf_strips_one_cr_and_empty_lines_count(mod):
    records = run(mod, [frame(1, b"a\r\nb\r\r\n\n\r\n")], timestamps=False)
    assert [r["message"] for r in records] == ["a", "b\r", "", ""]


def test_line_spanning_frames_and_chunks(mod):
    stream = frame(1, b"2024-03-01T12:34:56Z par") + frame(2, b"err\n") + frame(1, b"t\xc3")
    stream += frame(1, b"\xa9\n")
    chunks = [stream[i : i + 1] for i in range(len(stream))]  # splits the header and the UTF-8
    records = run(mod, chunks)
    assert [(r["message"], r["isStdErr"]) for r in records] == [("err", True), ("parté", False)]
    assert records[1]["timestamp"] == 1709296496000


def test_close_flushes_stdout_then_stderr(mod):
    demuxer = mod.Demuxer(1, now_ms=lambda: NOW)
    assert demuxer.feed(frame(2, b"2024-03-01T12:34:56Z err tail") + frame(1, b"out tail\r")) == []
    records = demuxer.close()
    assert [(r["message"], r["isStdErr"], r["timestamp"]) for r in records] == [
        ("out tail", False, NOW),
        ("err tail", True, 1709296496000),
    ]
    assert demuxer.close() == []


def test_close_discards_incomplete_frame(mod):
    demuxer = mod.Demuxer(now_ms=lambda: NOW)
    assert demuxer.feed(frame(1, b"done\n") + b"\x01\0\0") == [
        {"message": "done", "isStdErr": False, "timestamp": NOW, "serviceId": None}
    ]
    assert demuxer.close() == []


def test_unparsable_prefix_keeps_whole_line(mod):
    records = run(mod, [frame(1, b"2024-03-01T12:34:56Zgarbage x\nno-space\n")])
    assert [(r["message"], r["timestamp"]) for r in records] == [
        ("2024-03-01T12:34:56Zgarbage x", NOW),
        ("no-space", NOW),
    ]


def test_timestamps_disabled_keeps_prefix(mod):
    records = run(mod, [frame(1, b"2024-03-01T12:34:56Z hi\n")], timestamps=False)
    assert (records[0]["message"], records[0]["timestamp"]) == ("2024-03-01T12:34:56Z hi", NOW)


def test_default_clock(mod):
    before = time.time_ns() // 1_000_000
    (record,) = mod.Demuxer().feed(frame(1, b"no timestamp\n"))
    assert before <= record["timestamp"] <= time.time_ns() // 1_000_000


def test_max_line_cuts_long_lines(mod):
    line = b"2024-03-01T12:34:56Z " + b"x" * 25 + b"\r\n"
    chunks = [frame(1, line[:10]), frame(1, line[10:])]
    records = run(mod, chunks, max_line=10)
    # the first 10 bytes hold only part of the timestamp, so it gets now_ms for all pieces
    assert [r["message"] for r in records] == ["2024-03-01", "T12:34:56Z", " xxxxxxxxx", "x" * 10, "xxxxxx"]
    assert {r["timestamp"] for r in records} == {NOW}
    records = run(mod, [frame(1, line)], max_line=30)
    assert [(r["message"], r["timestamp"]) for r in records] == [
        ("xxxxxxxxx", 1709296496000),  # 30 bytes minus the 21-byte prefix
        ("x" * 16, 1709296496000),  # continuation inherits the timestamp, \r stripped at the end
    ]


def test_max_line_bounds_unterminated_buffer(mod):
    demuxer = mod.Demuxer(now_ms=lambda: NOW, timestamps=False, max_line=4)
    assert [r["message"] for r in demuxer.feed(frame(1, b"abcdefghij"))] == ["abcd", "efgh"]
    assert [r["message"] for r in demuxer.close()] == ["ij"]


def test_invalid_utf8_is_replaced(mod):
    raw = b"bad \xff\xfe \xed\xa0\x80 \xf0\x9f\x98 ok \xe2\x82\xac"
    (record,) = run(mod, [frame(2, raw + b"\n")])
    assert record["message"] == raw.decode("utf-8", "replace")


def test_tty_mode_is_raw_stdout(mod):
    raw = b"\x02\0\0\0\0\0\0\x03abc\n2024-03-01T12:34:56Z tty\n"
    records = run(mod, [raw[:5], raw[5:]], multiplexed=False)
    assert [(r["message"], r["isStdErr"]) for r in records] == [
        ("\x02\0\0\0\0\0\0\x03abc", False),
        ("tty", False),
    ]


@pytest.mark.parametrize(
    ("header", "problem"),
    [
        (b"\x04\0\0\0\0\0\0\x01", "unknown stream type 4"),
        (b"\x01\0\x07\0\0\0\0\x01", "nonzero padding bytes 00 07 00"),
    ],
)
def test_corrupt_header_raises(mod, header, problem):
    demuxer = mod.Demuxer(now_ms=lambda: NOW)
    with pytest.raises(mod.LogStreamError, match=problem) as info:
        demuxer.feed(frame(1, b"kept\n") + header + b"x")
    assert isinstance(info.value, ValueError)
    assert [r["message"] for r in info.value.records] == ["kept"]
    with pytest.raises(mod.LogStreamError, match=problem):
        demuxer.feed(frame(1, b"more\n"))


def test_max_line_must_be_positive(mod):
    with pytest.raises(ValueError):
        mod.Demuxer(max_line=0)


def test_encode_keeps_key_order(mod):
    system = {"message": 'Pulling "main"', "isSystem": True, "timestamp": 1700000000000}
    local = {
        "serviceName": "main",
        "message": "tab\there \\ é ✓ \x00\x1f\x7f",
        "isStdErr": False,
        "timestamp": 1700000000000,
        "serviceId": 123,
    }
    assert mod.encode(system) == (
        b'{"message":"Pulling \\"main\\"","isSystem":true,"timestamp":1700000000000}\n'
    )
    assert mod.encode(local) == dumps_line(local)
    assert mod.encode_many([system, local]) == dumps_line(system) + dumps_line(local)
    assert mod.encode_many(iter([system])) == dumps_line(system)
    assert mod.encode_many([]) == b""


def test_encode_fallback_and_surrogates(mod):
    odd = {"f": 1.5, "n": {"a": [1, None]}, 3: "int key", "big": -(2**70), "s": "a\ud800b\udfff"}
    assert mod.encode(odd) == reference_line(odd)
    assert b'"s":"a?b?"' in mod.encode(odd)
    assert mod.encode({"message": "\ud83d"}) == b'{"message":"?"}\n'


def test_longest_timestamp_prefix(mod):
    longest = b"2024-03-01T13:34:56.123456789+01:00"  # 35 bytes: the longest valid prefix
    records = run(mod, [frame(1, longest + b" max\n" + longest + b"0 x\n")])
    assert [(r["message"], r["timestamp"]) for r in records] == [
        ("max", 1709296496123),
        (longest.decode() + "0 x", NOW),  # a 36-byte prefix is never a timestamp
    ]


def test_reusable_after_close(mod):
    demuxer = mod.Demuxer(now_ms=lambda: NOW, max_line=4)
    assert [r["message"] for r in demuxer.feed(frame(1, b"abcdef"))] == ["abcd"]
    assert [r["message"] for r in demuxer.close()] == ["ef"]
    assert [r["message"] for r in demuxer.feed(bytearray(frame(2, b"gh\n")))] == ["gh"]


@pytest.mark.parametrize("impl", ["compiled", "python"])
def test_a_line_the_engine_split_arrives_whole(impl):
    """The engine splits a line longer than 16 KiB into messages framed and stamped on their own
    (``docker logs --timestamps`` shows the second stamp mid-line): the line arrives whole with
    the first piece's timestamp, however the chunks fall."""
    module = _compiled() if impl == "compiled" else twin
    first, second = b"2024-05-01T10:00:00.123456789Z ", b"2024-05-01T10:00:00.123456789Z "
    stream = (frame(1, first + b"a" * 16384) + frame(1, second + b"b" * 100 + b"\n")
              + frame(2, first + b"err\r\n"))
    for cut in (0, 8 + 16384 + len(first) + 8 + 5, 8 + 16384 + len(first) + 8 + 40, len(stream) - 1):
        demux = module.Demuxer(7)
        records = demux.feed(stream[:cut]) + demux.feed(stream[cut:]) + demux.close()
        assert [(r["message"], r["timestamp"], r["isStdErr"]) for r in records] == [
            ("a" * 16384 + "b" * 100, 1714557600123, False), ("err", 1714557600123, True)]
    # A continuation frame that does not start with a timestamp keeps its bytes.
    demux = module.Demuxer(7)
    records = demux.feed(frame(1, first + b"abc") + frame(1, b"no stamp here\n"))
    assert records[0]["message"] == "abcno stamp here"


@pytest.mark.parametrize("impl", ["compiled", "python"])
def test_a_partial_final_line_stays_apart_from_the_next_runs_output(impl):
    """A process that exits mid-line leaves a line without newline in the log; the restarted
    container's first line follows it, stamped later: two lines, each with its own timestamp.
    A piece of the engine's 16 KiB split carries the first piece's timestamp and is joined."""
    module = _compiled() if impl == "compiled" else twin
    old, new = b"2024-05-01T10:00:00.123456789Z ", b"2024-05-01T10:00:05.000000001Z "
    stream = frame(1, old + b"partial") + frame(1, new + b"one\n") + frame(1, new + b"two\n")
    for cut in range(len(stream) + 1):
        demux = module.Demuxer(7)
        records = demux.feed(stream[:cut]) + demux.feed(stream[cut:]) + demux.close()
        assert [(r["message"], r["timestamp"]) for r in records] == [
            ("partial", 1714557600123), ("one", 1714557605000), ("two", 1714557605000)], cut
    # the same after a line max_line cut: the cut line ends, the frame starts a new one
    demux = module.Demuxer(7, max_line=len(old) + 4)
    records = demux.feed(frame(1, old + b"abcdef") + frame(1, new + b"x\n")) + demux.close()
    assert [(r["message"], r["timestamp"]) for r in records] == [
        ("abcd", 1714557600123), ("ef", 1714557600123), ("x", 1714557605000)]
