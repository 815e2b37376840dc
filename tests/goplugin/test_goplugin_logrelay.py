"""Plugin stderr -> host log records, as go-plugin's host does it (pure)."""

from __future__ import annotations

import datetime
import json
import logging

import pytest
from hypothesis import given, strategies as st

from shim.goplugin import hclog
from shim.goplugin.logrelay import TRACE, LineSplitter, LogLine, parse_stderr_line, parse_timestamp


def test_hclog_json_line():
    raw = b'{"@level":"warn","@message":"disk low","@timestamp":"2024-05-01T10:00:00.123456Z","free":3,"@module":"p"}'
    entry = parse_stderr_line(raw)
    assert entry.level == logging.WARNING and entry.message == "disk low"
    assert entry.fields == (("free", 3), ("@module", "p"))
    assert entry.timestamp == datetime.datetime(2024, 5, 1, 10, 0, 0, 123456, tzinfo=datetime.timezone.utc)
    assert entry.render() == "disk low: free=3 @module=p"


def test_our_hclog_writer_is_understood():
    line = hclog.format_line("error", "boom", {"plugin": "x"}).rstrip("\n").encode()
    entry = parse_stderr_line(line)
    assert (entry.level, entry.message) == (logging.ERROR, "boom")
    assert ("plugin", "x") in entry.fields and entry.timestamp is not None


@pytest.mark.parametrize("level,expected", [("trace", TRACE), ("debug", logging.DEBUG), ("INFO", logging.INFO),
                                            (" error ", logging.ERROR)])
def test_levels(level, expected):
    assert parse_stderr_line(json.dumps({"@level": level, "@message": "m"}).encode()).level == expected


@pytest.mark.parametrize("raw,level", [
    (b"[ERROR] plain failure", logging.ERROR),
    (b"[WARN] plain", logging.WARNING),
    (b"[INFO] plain", logging.INFO),
    (b"[TRACE] plain", TRACE),
    (b"just text", logging.DEBUG),
    (b"[1,2]", logging.DEBUG),
    # bad timestamps make the whole line plain text (go-plugin's parseJSON fails)
    (b'[ERROR] {"@level":"info"}', logging.ERROR),
    (b'{"@level":"error","@message":"m","@timestamp":"2024-05-01T10:00:00Z"}', logging.DEBUG),
    (b'{"@level":"error","@message":"m","@timestamp":"2024-13-01T10:00:00.000000Z"}', logging.DEBUG),
    (b'{"@level":"error","@message":"m","@timestamp":5}', logging.DEBUG),
    # where Go's host would panic, we log the line as text
    (b'{"@level":"error","@message":5}', logging.DEBUG),
    (b'{"@level":["error"],"@message":"m"}', logging.DEBUG),
])
def test_plain_text(raw, level):
    entry = parse_stderr_line(raw)
    assert entry.level == level and entry.message == raw.decode() and entry.fields == ()


def test_unknown_level_is_logged_verbatim_at_debug():
    raw = b'{"@level":"fatal","@message":"m","k":1}'
    assert parse_stderr_line(raw) == LogLine(logging.DEBUG, raw.decode())


def test_timestamp_offsets():
    assert parse_timestamp("2024-05-01T10:00:00.000001+02:00").utcoffset() == datetime.timedelta(hours=2)
    assert parse_timestamp("2024-05-01T10:00:00.000001-07:30").utcoffset() == -datetime.timedelta(hours=7, minutes=30)
    assert parse_timestamp("2024-05-01T10:00:00.0000011Z") is None
    assert parse_timestamp("2024-05-01T10:00:00.000001+24:00") is None


@given(st.binary(max_size=200))
def test_any_line_parses(raw):
    entry = parse_stderr_line(raw)
    assert isinstance(entry, LogLine) and isinstance(entry.message, str)
    entry.render()


def test_splitter_lines_and_long_pieces():
    s = LineSplitter(max_line=8)
    assert s.feed(b"ab\ncd") == [(b"ab", True)]
    assert s.feed(b"\r\n") == [(b"cd", True)]
    out = s.feed(b"0123456789abcdefXY\nz")
    assert out == [(b"01234567", False), (b"89abcdef", False), (b"XY", False)]
    assert s.feed(b"\n") == [(b"z", True)]
    assert s.close() == []
    s.feed(b"tail")
    assert s.close() == [(b"tail", True)]


@given(st.lists(st.binary(max_size=30).map(lambda b: b.replace(b"\r", b"")), max_size=20))
def test_splitter_preserves_bytes(chunks):
    s = LineSplitter(max_line=16)
    out = []
    for c in chunks:
        out += s.feed(c)
    out += s.close()
    data = b"".join(chunks)
    assert all(len(piece) <= 16 for piece, _ in out)
    joined = b"".join(p for p, _ in out)
    assert joined == data.replace(b"\n", b"")
