"""What an OpenBao node's log says about its plugins (:func:`log_events`): the replay puts
these lines on its timeline and next to the answers they explain."""

from __future__ import annotations

import datetime
import re

_SDK_START = re.compile(r"sdkplugin \S+ v\S+ starting")   # shim/demo/sdkplugin's start-up line
_STAMP = re.compile(r"^(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d+)Z \[(\w+)\]\s+(.*)$")


def log_events(text: str) -> list[tuple[float, str, str]]:
    """What a node's log says about its plugin: ``(unix time, kind, detail)`` with kind
    ``launch`` (a plugin process started: its version and pid; the demo's SDK plugin and the
    GOPATH-built test plugins each log one start-up line), ``mount-failed`` (mount set-up
    could not start the plugin: OpenBao's error, multi-line error folded into one line) and
    ``exited`` (a plugin process ended)."""
    out = []
    lines = text.splitlines()
    for i, line in enumerate(lines):
        m = _STAMP.match(line)
        if not m:
            continue
        when = datetime.datetime.fromisoformat(m.group(1)).replace(tzinfo=datetime.timezone.utc).timestamp()
        msg = m.group(3)
        if "baoplugin starting:" in msg or _SDK_START.search(msg):
            version = re.search(r"plugin_version=(\S+)", msg)
            pid = re.search(r"\bpid=(\d+)", msg)
            out.append((when, "launch", f"{version.group(1) if version else '?'} pid {pid.group(1) if pid else '?'}"))
        elif "failed to create mount entry" in msg:
            body = []
            for follow in lines[i + 1:]:
                if _STAMP.match(follow) or not follow.startswith(" "):
                    break
                piece = follow.strip().lstrip("|").strip().removeprefix("\\t").lstrip("*").strip()
                if piece and piece != "error=":
                    body.append(piece)
            text = (body[0] + " " + "; ".join(body[1:])).strip() if body else msg
            out.append((when, "mount-failed", text))
        elif "failed to run existence check" in msg:
            err = re.search(r'error="?(.*?)"?$', msg)
            out.append((when, "existence-check-failed", err.group(1) if err else msg))
        elif "plugin process exited" in msg:
            pid = re.search(r"\bid=(\d+)", msg)
            out.append((when, "exited", f"pid {pid.group(1) if pid else '?'}"))
    return out
