"""hclog-compatible JSON lines on stderr.

go-plugin hosts (Vault, OpenBao) read a plugin's stderr line by line; a JSON object with
string ``@level``/``@message`` and an ``@timestamp`` in Go's layout
``2006-01-02T15:04:05.000000Z07:00`` is re-logged at that level with the other keys as
key/value pairs. Anything else lands at debug. stdout is never touched: before the
handshake it belongs to the go-plugin protocol.
"""

from __future__ import annotations

import json
import os
import time

LEVELS = ("trace", "debug", "info", "warn", "error")
MODULE = "vault-plugin-shim"


def timestamp(now: float | None = None) -> str:
    now = time.time() if now is None else now
    micros = int(round(now * 1_000_000))
    secs, frac = divmod(micros, 1_000_000)
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(secs)) + f".{frac:06d}Z"


# Control characters (newlines above all) in a file name would let whoever names a file
# forge whole lines in the host's text log, which re-logs our message and values verbatim.
_CONTROLS = {c: f"\\x{c:02x}" for c in (*range(0x20), 0x7f)}
_CONTROLS.update({0x0a: "\\n", 0x0d: "\\r", 0x09: "\\t", 0x2028: "\\u2028", 0x2029: "\\u2029",
                  0x85: "\\x85"})


def escape(text: str) -> str:
    """``text`` with control characters written as escapes, so it stays on one line."""
    return text.translate(_CONTROLS)


def format_line(level: str, message: str, fields: dict | None = None, now: float | None = None) -> str:
    if level not in LEVELS:
        raise ValueError(f"unknown hclog level {level!r}")
    entry = {"@level": level, "@message": escape(str(message)), "@module": MODULE,
             "@timestamp": timestamp(now)}
    for key, value in (fields or {}).items():
        if key.startswith("@"):
            key = key[1:]
        if not (isinstance(value, (int, float, bool)) or value is None):
            value = escape(str(value))
        entry[escape(key)] = value
    return json.dumps(entry, separators=(",", ":"), ensure_ascii=False) + "\n"


def write_stderr(data: bytes) -> None:
    """Write ``data`` whole to fd 2 directly: unbuffered, and safe right before exec. A
    failing fd 2 is ignored: there is nowhere left to say so."""
    try:
        while data:
            data = data[os.write(2, data):]
    except OSError:
        pass


def log(level: str, message: str, **fields) -> None:
    """Write one line to fd 2 (:func:`write_stderr`)."""
    write_stderr(format_line(level, message, fields).encode("utf-8", "replace"))


def write_to(stream, level: str, message: str, **fields) -> None:
    stream.write(format_line(level, message, fields))
    stream.flush()


def error(message: str, **fields) -> None:
    log("error", message, **fields)


def warn(message: str, **fields) -> None:
    log("warn", message, **fields)


def info(message: str, **fields) -> None:
    log("info", message, **fields)


def debug(message: str, **fields) -> None:
    log("debug", message, **fields)


__all__ = ["LEVELS", "escape", "format_line", "log", "write_stderr", "write_to", "error", "warn", "info", "debug",
           "timestamp"]
