"""When a hot-swapping launcher looks at its plugins directory again.

Three things ask for a rescan: the directory changed (``watchdog``'s inotify observer, or its
polling observer where the kernel refuses inotify), an operator sent SIGHUP, or the fixed
interval passed (a safety net, and for manifests that expire while nothing changes). A release is three
files written in any order, often through a temporary name and a rename, so a rescan waits
until the directory has been quiet for ``settle`` seconds. :class:`Debounce` is that
decision, pure (clock in, time out); :class:`Watcher` is its thread, fed through a
self-pipe, so a signal handler or watchdog's own thread can poke it safely.

Rescans never overlap, and never come closer than ``min_gap`` to each other: a directory
whose files flap cannot turn into a storm of rescans. A directory that never settles is
rescanned ``max_defer`` seconds after its first change anyway. watchdog (about 60 ms of
imports) is imported on the watcher's thread, after the launcher has answered Vault.
"""

from __future__ import annotations

import logging
import os
import selectors
import threading
import time
from typing import Callable

from shim.goplugin import hclog

log = logging.getLogger(__name__)

SETTLE = 1.0        # quiet seconds before a changed directory is rescanned
MIN_GAP = 2.0       # at least this long between two rescans
MAX_DEFER = 10.0    # a directory that keeps changing is rescanned after this long anyway
INTERVAL = 60.0     # and every INTERVAL seconds regardless
POLL = 1.0          # without inotify, the directory is listed this often

# Events our own reading causes (opening a manifest, closing it unchanged): not changes.
_IGNORED_EVENTS = frozenset({"opened", "closed_no_write"})

FILES, SIGNAL, TIMER, START, RETRY = "files changed", "SIGHUP", "interval", "start", "retry"


class Debounce:
    """When the next rescan is due, and why. Times are from one monotonic clock."""

    def __init__(self, now: float, *, settle: float = SETTLE, min_gap: float = MIN_GAP,
                 max_defer: float = MAX_DEFER, interval: float = INTERVAL):
        self.settle, self.min_gap, self.max_defer, self.interval = settle, min_gap, max_defer, interval
        self.last_rescan = now
        self.first_change: float | None = None
        self.last_change: float | None = None
        self.asked: float | None = None      # SIGHUP (or start, or a retry) waiting
        self.asked_reasons: list[str] = []

    def changed(self, now: float) -> None:
        if self.first_change is None:
            self.first_change = now
        self.last_change = now

    def ask(self, now: float, reason: str = SIGNAL) -> None:
        if self.asked is None:
            self.asked = now
        if reason not in self.asked_reasons:
            self.asked_reasons.append(reason)

    def due(self) -> float:
        wanted = self.last_rescan + self.interval
        if self.first_change is not None:
            wanted = min(wanted, self.last_change + self.settle, self.first_change + self.max_defer)
        if self.asked is not None:
            wanted = min(wanted, self.asked)
        return max(wanted, self.last_rescan + self.min_gap)

    def take(self, now: float) -> str | None:
        """The reason for a rescan that is due now (and forget what it covers), else None."""
        if now < self.due():
            return None
        reasons = list(self.asked_reasons)
        if self.first_change is not None:
            reasons.append(FILES)
        self.first_change = self.last_change = self.asked = None
        self.asked_reasons = []
        return ", ".join(reasons) or TIMER

    def done(self, now: float) -> None:
        """A rescan ended at ``now``: the gap and the interval count from here."""
        self.last_rescan = now


class Watcher:
    """Calls ``rescan(reason)`` on its own thread, one at a time, as :class:`Debounce`
    decides. ``trigger()`` may be called from a signal handler."""

    def __init__(self, directory: str, rescan: Callable[[str], None], *, settle: float = SETTLE,
                 min_gap: float = MIN_GAP, max_defer: float = MAX_DEFER, interval: float = INTERVAL,
                 clock: Callable[[], float] = time.monotonic, use_inotify: bool = True,
                 use_polling: bool = True, poll: float = POLL, rescan_at_start: bool = True):
        self.directory = directory
        self.rescan = rescan
        self.clock = clock
        self.debounce = Debounce(clock(), settle=settle, min_gap=min_gap, max_defer=max_defer,
                                 interval=interval)
        if rescan_at_start:
            self.debounce.ask(clock(), START)
        self.use_inotify, self.use_polling, self.poll = use_inotify, use_polling, poll
        self.mode = "starting"          # "inotify", "polling every 1 s", or "interval and SIGHUP"
        self.rescans = 0
        self._r, self._w = os.pipe2(os.O_CLOEXEC | os.O_NONBLOCK)
        self._thread: threading.Thread | None = None
        self._observer = None
        self._stopping = False

    # poking (any thread, or a signal handler)

    def _poke(self, code: bytes) -> None:
        try:
            os.write(self._w, code)
        except (BlockingIOError, OSError):
            pass  # a full pipe already holds a poke; a closed one means we stopped

    def trigger(self) -> None:
        """SIGHUP: rescan now (no sooner than ``min_gap`` after the last one)."""
        self._poke(b"h")

    def changed(self) -> None:
        self._poke(b"e")

    def retry(self) -> None:
        """What held a swap back went away (Vault set the plugin up): rescan again."""
        self._poke(b"r")

    # the thread

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="vps-watch", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 60.0) -> None:
        """Stop watching; waits for a rescan in progress to end (the caller makes it end)."""
        self._stopping = True
        self._poke(b"q")
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout)
        self._stop_observer()
        for fd in (self._r, self._w):
            try:
                os.close(fd)
            except OSError:
                pass
        self._r = self._w = -1

    def _start_observer(self) -> None:
        """inotify; where the kernel refuses it (the per-user limit of inotify instances,
        128 by default and shared by every container of that uid on the node, or of watches),
        watchdog's polling observer, which lists the directory every POLL seconds; where even
        that cannot start, the interval and SIGHUP. Each step down is said once, at WARN."""
        inotify_error = None
        if self.use_inotify:
            try:
                from watchdog.observers import Observer
                self._observer = self._observe(Observer())
                self.mode = "inotify"
                return
            except Exception as exc:  # EMFILE / ENOSPC from inotify_init or add_watch, a missing module
                inotify_error = f"{type(exc).__name__}: {exc}"
        if self.use_polling:
            try:
                from watchdog.observers.polling import PollingObserver
                self._observer = self._observe(PollingObserver(timeout=self.poll))
                self.mode = f"polling every {self.poll:g} s"
            except Exception as exc:
                self.mode = "interval and SIGHUP"
                hclog.warn("vault-plugin-shim: cannot watch the plugins directory for new versions; rescanning "
                           f"every {self.debounce.interval:g} s and on SIGHUP only", file=self.directory,
                           reason=f"{type(exc).__name__}: {exc}",
                           **({"inotify": inotify_error} if inotify_error else {}), fix="send SIGHUP to the launcher after a copy, or report this as a bug")
                return
        else:
            self.mode = "interval and SIGHUP"
        if inotify_error is not None:
            hclog.warn(f"vault-plugin-shim: cannot watch the plugins directory with inotify; {self.mode} instead",
                       file=self.directory, reason=inotify_error,
                       fix="raise fs.inotify.max_user_instances (or max_user_watches) on the node; "
                           "new versions are still found, a little later")

    def _observe(self, observer):
        from watchdog.events import FileSystemEventHandler

        watcher = self

        class Handler(FileSystemEventHandler):
            def on_any_event(self, event):
                if event.event_type not in _IGNORED_EVENTS:
                    watcher.changed()

        try:
            observer.schedule(Handler(), self.directory, recursive=False)
            observer.start()
        except BaseException:
            try:
                observer.stop()
            except Exception as exc:
                log.debug("stopping a directory observer that did not start: %s", exc)
            raise
        return observer

    def _stop_observer(self) -> None:
        observer, self._observer = self._observer, None
        if observer is not None:
            try:
                observer.stop()
                observer.join(5.0)
            except Exception as exc:
                log.debug("stopping the directory observer: %s", exc)

    def _run(self) -> None:
        self._start_observer()
        with selectors.DefaultSelector() as sel:
            sel.register(self._r, selectors.EVENT_READ)
            while not self._stopping:
                wait = max(0.0, self.debounce.due() - self.clock())
                if sel.select(wait):
                    if self._read_pokes():
                        return
                reason = self.debounce.take(self.clock())
                if reason is None:
                    continue
                self.rescans += 1
                try:
                    self.rescan(reason)
                except Exception as exc:  # a bug must not stop the watching, nor print a traceback
                    if self._stopping:
                        return
                    hclog.error("vault-plugin-shim: a rescan of the plugins directory failed unexpectedly",
                                file=self.directory, reason=f"{type(exc).__name__}: {exc}",
                                fix="report this as a vault-plugin-shim bug; the running version keeps serving")
                self.debounce.done(self.clock())

    def _read_pokes(self) -> bool:
        """Apply what was poked; True when asked to quit."""
        try:
            data = os.read(self._r, 4096)
        except BlockingIOError:
            return False
        now = self.clock()
        if b"q" in data or self._stopping:
            return True
        if b"e" in data:
            self.debounce.changed(now)
        if b"h" in data:
            self.debounce.ask(now, SIGNAL)
        if b"r" in data:
            self.debounce.ask(now, RETRY)
        return False
