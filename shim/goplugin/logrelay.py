"""Plugin stderr -> host log records, the way go-plugin's host reads them (sans-I/O).

Each stderr line that is a JSON object is an hclog entry: ``@level``, ``@message`` and
``@timestamp`` (layout ``2006-01-02T15:04:05.000000Z07:00``) are taken out, the other
keys become fields. A JSON line with a bad timestamp, or anything that is not JSON,
is plain text: logged at the level of a ``[TRACE]``/``[DEBUG]``/``[INFO]``/``[WARN]``/
``[ERROR]`` prefix, else debug. Lines longer than 64 KiB arrive in pieces, each logged
verbatim at debug. Where Go's host would crash (a non-string ``@message``) we log the
line as plain text instead.
"""

from __future__ import annotations

import datetime
import json
import logging
import re
from dataclasses import dataclass

TRACE = 5
LEVELS = {"trace": TRACE, "debug": logging.DEBUG, "info": logging.INFO,
          "warn": logging.WARNING, "error": logging.ERROR}
_PREFIXES = (("[TRACE]", TRACE), ("[DEBUG]", logging.DEBUG), ("[INFO]", logging.INFO),
             ("[WARN]", logging.WARNING), ("[ERROR]", logging.ERROR))
MAX_LINE = 64 * 1024
_TS = re.compile(r"(\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2})\.(\d{6})(Z|[+-]\d{2}:\d{2})\Z")

if logging.getLevelName(TRACE) == f"Level {TRACE}":
    logging.addLevelName(TRACE, "TRACE")


@dataclass(frozen=True)
class LogLine:
    level: int
    message: str
    fields: tuple[tuple[str, object], ...] = ()
    timestamp: datetime.datetime | None = None

    def render(self) -> str:
        if not self.fields:
            return self.message
        kv = " ".join(f"{k}={v if isinstance(v, str) else json.dumps(v)}" for k, v in self.fields)
        return f"{self.message}: {kv}"


def parse_timestamp(value: str) -> datetime.datetime | None:
    m = _TS.match(value)
    if not m:
        return None
    try:
        base = datetime.datetime.strptime(m.group(1), "%Y-%m-%dT%H:%M:%S")
    except ValueError:
        return None
    zone = m.group(3)
    if zone == "Z":
        tz = datetime.timezone.utc
    else:
        hours, minutes = int(zone[1:3]), int(zone[4:6])
        if hours > 23 or minutes > 59:
            return None
        sign = -1 if zone[0] == "-" else 1
        tz = datetime.timezone(sign * datetime.timedelta(hours=hours, minutes=minutes))
    return base.replace(microsecond=int(m.group(2)), tzinfo=tz)


def _plain(text: str) -> LogLine:
    for prefix, level in _PREFIXES:
        if text.startswith(prefix):
            return LogLine(level, text)
    return LogLine(logging.DEBUG, text)


def parse_stderr_line(line: bytes) -> LogLine:
    """One complete stderr line (without its newline) -> the record the host logs."""
    text = line.decode("utf-8", "replace")
    try:
        entry = json.loads(line)
    except (ValueError, RecursionError):
        return _plain(text)
    if entry is None:
        entry = {}
    if not isinstance(entry, dict):
        return _plain(text)
    message, level, stamp = entry.pop("@message", ""), entry.pop("@level", ""), None
    if not isinstance(message, str) or not isinstance(level, str):
        return _plain(text)
    if "@timestamp" in entry:
        raw_ts = entry.pop("@timestamp")
        stamp = parse_timestamp(raw_ts) if isinstance(raw_ts, str) else None
        if stamp is None:
            return _plain(text)
    levelno = LEVELS.get(level.strip().lower())
    if levelno is None:
        return LogLine(logging.DEBUG, text)
    return LogLine(levelno, message, tuple(entry.items()), stamp)


class LineSplitter:
    """Bytes in, complete lines out; a line over ``max_line`` comes out in pieces.

    ``feed`` returns ``(data, whole)`` pairs: ``whole`` is False for a piece of an
    over-long line (the host logs those verbatim, unparsed).
    """

    def __init__(self, max_line: int = MAX_LINE):
        self.max_line = max_line
        self._buf = bytearray()
        self._continuation = False

    def feed(self, data: bytes) -> list[tuple[bytes, bool]]:
        self._buf += data
        out = []
        while True:
            nl = self._buf.find(b"\n")
            if nl < 0 or nl > self.max_line:
                if len(self._buf) >= self.max_line:
                    out.append((bytes(self._buf[:self.max_line]), False))
                    del self._buf[:self.max_line]
                    self._continuation = True
                    continue
                return out
            line = bytes(self._buf[:nl]).removesuffix(b"\r")
            del self._buf[:nl + 1]
            out.append((line, not self._continuation))
            self._continuation = False

    def close(self) -> list[tuple[bytes, bool]]:
        if not self._buf:
            return []
        rest = [(bytes(self._buf), not self._continuation)]
        self._buf.clear()
        return rest
