"""The state of a hot-swapping launcher, published for ``doctor``.

:class:`StatusBoard` is what a running :class:`shim.launch.swap.Swapper` writes: a JSON file in
the launcher's private directory (the version it runs, a swap pending, the releases it refused
and why, the last swap). :func:`find_status` and :func:`describe_status` are ``doctor``'s side:
they read it from any process, with nothing of the swap (grpc, the watcher) imported.
"""

from __future__ import annotations

import json
import os
import threading
import time

from shim.goplugin import hclog

STATUS_FILE = "swap-status.json"


class StatusBoard:
    """A JSON status for ``doctor`` in the launcher's private directory (0700, the Vault
    user's, under Vault's TMPDIR, removed with everything else by the janitor), replaced whole
    (written to a temporary name, then renamed) on each change."""

    def __init__(self, plugin: str, directory: str | None):
        self.path = None if directory is None else os.path.join(directory, STATUS_FILE)
        self.state: dict = {"pid": os.getpid(), "plugin": plugin}
        self._lock = threading.Lock()

    def update(self, **changes) -> None:
        with self._lock:
            self.state.update(changes)
            self.state["updated_at"] = round(time.time(), 3)
            if self.path is None:
                return
            tmp = self.path + ".tmp"
            try:
                fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
                with os.fdopen(fd, "w") as f:
                    json.dump(self.state, f, sort_keys=True)
                os.replace(tmp, self.path)
            except OSError as exc:  # doctor cannot show the status; nothing else changes
                hclog.debug("vault-plugin-shim: cannot write the swap status", file=self.path, reason=str(exc))

    def close(self) -> None:
        with self._lock:
            if self.path is not None:
                for path in (self.path, self.path + ".tmp"):
                    try:
                        os.unlink(path)
                    except FileNotFoundError:
                        pass
            self.path = None


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def find_status(plugin: str, tmpdir: str | None = None) -> list[dict]:
    """The status of every running hot-swapping launcher of ``plugin`` whose private
    directory is under ``tmpdir`` (Vault's TMPDIR for the plugin; default this process's)."""
    import glob
    import tempfile

    base = tmpdir or tempfile.gettempdir()
    found = []
    for path in sorted(glob.glob(os.path.join(glob.escape(base), "vps.*", STATUS_FILE))):
        try:
            fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
            with os.fdopen(fd, "rb") as f:
                state = json.loads(f.read(1 << 20))
        except (OSError, ValueError):
            continue
        if isinstance(state, dict) and state.get("plugin") == plugin and _alive(int(state.get("pid", 0))):
            found.append(state)
    return found


# A refusal lives in the refusing launcher only: the next launch selects afresh, and the
# highest valid version is the one hot swap refused.
NEXT_LAUNCH_FIX = "remove that release from the plugins directory, or ship a fixed one"


def refused_files(states: list[dict]) -> dict[str, str]:
    """file -> reason of every release a running launcher refused to swap to (not the 'needs a
    reload' kind, which a launch runs fine)."""
    return {e["file"]: e.get("reason", "") for st in states for e in st.get("refused", [])
            if e.get("level") != "warn" and e.get("file")}


def describe_status(state: dict) -> list[tuple[str, str]]:
    """(level, text) lines for doctor: ok, info, warn or fail."""
    out = []
    running = state.get("running") or {}
    out.append(("ok", f"launcher pid {state.get('pid')} runs version {running.get('version')} "
                      f"({running.get('file')}), hot swap on, watching by {state.get('watching', '?')}"))
    pending = state.get("pending")
    if pending:
        out.append(("info", f"swap pending to {pending.get('version')} ({pending.get('file')}): "
                            f"{pending.get('state')}"))
    for entry in state.get("refused", []):
        level = "warn" if entry.get("level") == "warn" else "fail"
        out.append((level, f"swap to {entry.get('version')} ({entry.get('file')}) refused: {entry.get('reason')}; "
                           "not tried again until its files change"
                           + ("" if level == "warn" else f"; the plugin's next launch starts it ({NEXT_LAUNCH_FIX})")))
    if state.get("no_valid_version"):
        out.append(("fail", f"no valid version is left in the plugins directory: {state['no_valid_version']}; "
                            "the running version keeps serving"))
    last = state.get("last_swap")
    if last:
        out.append(("info", f"last swap: {last.get('from')} -> {last.get('to')} in {last.get('took_ms')} ms, "
                            f"{last.get('calls_drained')} calls drained, {last.get('calls_cut')} cut"))
    return out
