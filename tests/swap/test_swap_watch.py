"""When a hot-swapping launcher rescans its plugins directory (shim.launch.watch).

The debounce decision is pure and tested on a fake clock. The watcher is tested on a real
directory with watchdog's inotify observer: releases written in any order and through
temporary names settle into one rescan, our own reads cause none, SIGHUP and the interval
work. That flapping files cannot make a storm of rescans is tested on the watcher's own
thread with the shipped limits, on virtual time.
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from shim.launch import watch
from tests.support.wait import stays, wait_until

ROOT = Path(__file__).resolve().parents[2]


# --- the decision ------------------------------------------------------------------------

def test_a_change_waits_for_the_directory_to_settle():
    d = watch.Debounce(0.0, settle=1.0, min_gap=2.0, max_defer=10.0, interval=60.0)
    d.changed(5.0)
    assert d.due() == 6.0
    d.changed(5.8)           # the next file of the release
    assert d.due() == 6.8
    assert d.take(6.7) is None
    assert d.take(6.8) == watch.FILES
    d.done(7.0)
    assert d.due() == 67.0    # nothing pending: the interval


def test_a_directory_that_never_settles_is_rescanned_after_max_defer():
    d = watch.Debounce(0.0, settle=1.0, min_gap=2.0, max_defer=10.0, interval=60.0)
    t = 3.0
    while t < 20.0:
        d.changed(t)
        if d.take(t) is not None:
            break
        t += 0.5
    assert t == 13.0          # first change at 3.0, max_defer 10


def test_rescans_keep_the_minimum_gap():
    d = watch.Debounce(0.0, settle=0.1, min_gap=2.0, max_defer=10.0, interval=60.0)
    d.done(10.0)
    d.changed(10.1)
    d.ask(10.2)
    assert d.due() == 12.0
    assert d.take(12.0) == f"{watch.SIGNAL}, {watch.FILES}"


def test_sighup_is_due_at_once_and_the_interval_counts_from_the_last_rescan():
    d = watch.Debounce(0.0, settle=1.0, min_gap=2.0, max_defer=10.0, interval=30.0)
    d.done(100.0)
    d.ask(150.0)
    assert d.take(150.0) == watch.SIGNAL
    d.done(150.5)
    assert d.take(180.4) is None and d.take(180.5) == watch.TIMER


# --- the watcher on a real directory ---------------------------------------------------

class Recorder:
    def __init__(self, directory: Path | None = None, fail: bool = False):
        self.reasons: list[str] = []
        self.directory, self.fail = directory, fail
        self.lock = threading.Lock()

    def __call__(self, reason: str) -> None:
        if self.directory is not None:  # read every file, as a selection does
            for name in os.listdir(self.directory):
                with open(self.directory / name, "rb") as f:
                    f.read()
        with self.lock:
            self.reasons.append(reason)
        if self.fail:
            raise RuntimeError("a bug in the rescan")

    @property
    def count(self) -> int:
        with self.lock:
            return len(self.reasons)


@pytest.fixture
def started():
    made = []

    def start(directory, rescan, **kw):
        kw.setdefault("settle", 0.3)
        kw.setdefault("min_gap", 0.3)
        kw.setdefault("max_defer", 5.0)
        kw.setdefault("interval", 3600.0)
        kw.setdefault("rescan_at_start", False)
        w = watch.Watcher(str(directory), rescan, **kw)
        w.start()
        made.append(w)
        wait_until(lambda: w.mode != "starting", "the watcher to start")
        return w

    yield start
    for w in made:
        w.stop()


def write_release(d: Path, name: str, order: tuple[str, ...], via_temp: bool) -> None:
    for part in order:
        target = d / (name + part)
        if via_temp:
            tmp = d / f".{name}{part}.tmp"
            tmp.write_bytes(b"x" * 1000)
            os.replace(tmp, target)
        else:
            target.write_bytes(b"x" * 1000)
        time.sleep(0.05)  # a writer's pace: the files land one after another


@pytest.mark.parametrize("order, via_temp", [
    (("", ".manifest.json", ".manifest.json.minisig"), False),
    ((".manifest.json.minisig", ".manifest.json", ""), True),
    ((".manifest.json", "", ".manifest.json.minisig"), True),
])
def test_a_release_written_in_any_order_gives_one_rescan(tmp_path, started, order, via_temp):
    rec = Recorder(tmp_path)
    w = started(tmp_path, rec)
    assert w.mode == "inotify"
    write_release(tmp_path, "plugin-2.0.0", order, via_temp)
    wait_until(lambda: rec.count >= 1, "a rescan after the release landed")
    assert rec.reasons == [watch.FILES]
    assert stays(lambda: rec.count == 1, 1.5), f"more rescans: {rec.reasons}"


def test_our_own_reads_cause_no_rescan(tmp_path, started):
    for name in ("a", "b", "c"):
        (tmp_path / name).write_bytes(b"data")
    rec = Recorder(tmp_path)
    w = started(tmp_path, rec, rescan_at_start=True)
    wait_until(lambda: rec.count == 1, "the start rescan")
    assert rec.reasons == [watch.START] and w.mode == "inotify"
    assert stays(lambda: rec.count == 1, 1.5), f"rescans from our own reads: {rec.reasons}"


def test_removal_and_chmod_are_changes(tmp_path, started):
    f = tmp_path / "plugin-1.0.0"
    f.write_bytes(b"x")
    rec = Recorder()
    started(tmp_path, rec)
    f.chmod(0o600)
    wait_until(lambda: rec.count == 1, "a rescan after a chmod")
    f.unlink()
    wait_until(lambda: rec.count == 2, "a rescan after a removal")


def test_sighup_rescans_now(tmp_path, started):
    rec = Recorder()
    w = started(tmp_path, rec)
    w.trigger()
    wait_until(lambda: rec.count == 1, "a rescan after SIGHUP", deadline=5)
    assert rec.reasons == [watch.SIGNAL]


def test_without_inotify_a_polled_directory_still_sees_a_release(tmp_path, started):
    rec = Recorder(tmp_path)
    w = started(tmp_path, rec, use_inotify=False, poll=0.2)
    assert w.mode == "polling every 0.2 s"
    (tmp_path / "plugin-2.0.0").write_bytes(b"x")
    wait_until(lambda: rec.count == 1, "a rescan found by polling", deadline=10)
    assert rec.reasons == [watch.FILES]
    assert stays(lambda: rec.count == 1, 1.0), rec.reasons   # our own reads are not changes


def test_a_kernel_that_refuses_inotify_falls_back_to_polling_and_says_why(tmp_path, started, capfd, monkeypatch):
    # The per-user inotify instance limit (128, shared by every container of the uid on a
    # node) cannot be reached here without changing the machine for everyone: the refusal is
    # faked where watchdog's inotify observer starts, with the errno the kernel gives.
    import errno

    from watchdog.observers import inotify

    def refuse(self):
        raise OSError(errno.EMFILE, "inotify instance limit reached")

    monkeypatch.setattr(inotify.InotifyEmitter, "on_thread_start", refuse)
    rec = Recorder()
    w = started(tmp_path, rec, poll=0.2)
    assert w.mode == "polling every 0.2 s"
    (tmp_path / "plugin-2.0.0").write_bytes(b"x")
    wait_until(lambda: rec.count == 1, "a rescan found by polling", deadline=10)
    lines = [line for line in capfd.readouterr().err.splitlines() if "cannot watch the plugins directory" in line]
    assert len(lines) == 1 and '"@level":"warn"' in lines[0], lines
    assert "inotify instance limit reached" in lines[0] and "max_user_instances" in lines[0]
    assert "polling every 0.2 s instead" in lines[0] and str(tmp_path) in lines[0]


def test_without_inotify_or_polling_the_interval_and_sighup_still_rescan(tmp_path, started):
    rec = Recorder()
    w = started(tmp_path, rec, use_inotify=False, use_polling=False, interval=0.5)
    assert w.mode == "interval and SIGHUP"
    (tmp_path / "new").write_bytes(b"x")     # unseen without inotify
    wait_until(lambda: rec.count >= 2, "two interval rescans")
    assert set(rec.reasons) == {watch.TIMER}


class VirtualTime:
    """The watcher's clock and its waiting, on virtual time. When the watcher's thread waits
    (its selector's ``select``), the clock jumps to the next scripted event or to the end of
    the wait, whichever comes first (trio's MockClock with autojump, in a few lines): a storm
    of minutes plays out in milliseconds, the same way every run. Once the script is played
    and nothing is due before ``until``, the thread waits for real, for ``Watcher.stop``."""

    def __init__(self, start: float, script: list, until: float):
        self.now = start
        self.script = sorted(script, key=lambda event: event[0])  # (time, action): an action pokes the watcher
        self.until = until
        self.idle = threading.Event()

    def clock(self) -> float:
        return self.now

    def selectors_module(self):
        """A stand-in for the ``selectors`` module that shim.launch.watch waits with."""
        import selectors
        import types

        vt = self

        class Selector:
            def __init__(self):
                self.real = selectors.DefaultSelector()  # the watcher's self-pipe: pokes, and stop

            def __enter__(self):
                return self

            def __exit__(self, *exc):
                self.real.close()

            def register(self, fd, events):
                return self.real.register(fd, events)

            def select(self, timeout=None):
                ready = self.real.select(0)
                if ready:
                    return ready
                if vt.script and vt.script[0][0] <= vt.now + timeout:
                    at, action = vt.script.pop(0)
                    vt.now = max(vt.now, at)
                    action()
                    return self.real.select(0)
                if vt.now + timeout <= vt.until:
                    vt.now += timeout
                    return []
                vt.idle.set()
                return self.real.select(None)

        return types.SimpleNamespace(DefaultSelector=Selector, EVENT_READ=selectors.EVENT_READ)


def test_flapping_files_cannot_make_a_storm(tmp_path, monkeypatch):
    """The shipped limits, on virtual time: a file that flaps for 15 s without a pause, then
    15 s at an uneven pace (pauses longer than ``SETTLE`` among them). Rescans stay at least
    ``MIN_GAP`` apart, every change is rescanned within ``MAX_DEFER`` (a directory that never
    settles included), and the directory's final state wins."""
    t0 = 1000.0
    present = {"now": False}

    def flip():
        present["now"] = not present["now"]
        w.changed()   # what the inotify observer calls for each event

    changes = [t0 + 5.0 + i * 0.02 for i in range(750)]                  # 15 s that never settle
    paces = (0.02, 0.3, 1.2, 0.02, 1.7, 0.5)                              # then 15 s, some of it settling
    while changes[-1] < t0 + 35.0:
        changes.append(changes[-1] + paces[len(changes) % len(paces)])
    vt = VirtualTime(t0, [(at, flip) for at in changes], until=changes[-1] + 30.0)
    seen = []

    def rescan(reason: str) -> None:
        seen.append((vt.now, reason, present["now"]))

    monkeypatch.setattr(watch, "selectors", vt.selectors_module())
    w = watch.Watcher(str(tmp_path), rescan, settle=watch.SETTLE, min_gap=watch.MIN_GAP, max_defer=watch.MAX_DEFER,
                      interval=watch.INTERVAL, clock=vt.clock, use_inotify=False, use_polling=False,
                      rescan_at_start=False)
    w.start()   # after ``w`` is bound: the script's first event runs on the watcher's thread at once
    try:
        wait_until(vt.idle.is_set, "the storm to play out on virtual time", deadline=30)
    finally:
        w.stop()
    assert w.mode == "interval and SIGHUP"   # no observer: the script is the only source of changes

    times = [at for at, _, _ in seen]
    storm = changes[-1] - changes[0]
    during = [at for at in times if at <= changes[-1]]
    assert 2 <= len(during) <= storm / watch.MIN_GAP + 1, seen  # max_defer forces some, min_gap caps them
    gaps = [b - a for a, b in zip(times, times[1:])]
    assert min(gaps) >= watch.MIN_GAP, seen                       # rescans at least MIN_GAP apart
    assert any(changes[0] < at < changes[749] for at in times), seen  # forced while it never settles
    late = [next(at for at in times if at >= c) - c for c in changes]
    assert max(late) <= watch.MAX_DEFER, seen                     # every change rescanned within MAX_DEFER
    assert times[-1] >= changes[-1] and seen[-1][1:] == (watch.FILES, present["now"]), seen  # final state wins


def test_a_failing_rescan_logs_one_line_and_watching_goes_on(tmp_path, started, capfd):
    rec = Recorder(fail=True)
    w = started(tmp_path, rec)
    w.trigger()
    wait_until(lambda: rec.count == 1, "the failing rescan")
    (tmp_path / "x").write_bytes(b"x")
    wait_until(lambda: rec.count == 2, "a rescan after the failure")
    err = capfd.readouterr().err
    lines = [line for line in err.splitlines() if "rescan of the plugins directory failed" in line]
    assert len(lines) == 2 and '"@level":"error"' in lines[0] and "RuntimeError: a bug in the rescan" in lines[0]
    assert "Traceback" not in err


def test_stop_ends_the_thread_and_the_observer(tmp_path):
    rec = Recorder()
    w = watch.Watcher(str(tmp_path), rec, rescan_at_start=False)
    before = {t.ident for t in threading.enumerate()}
    w.start()
    wait_until(lambda: w.mode == "inotify", "inotify")
    w.stop()
    assert {t.ident for t in threading.enumerate() if t.is_alive()} <= before


def test_importing_the_watcher_does_not_import_watchdog():
    code = ("import sys; import shim.launch.watch; "
            "print(sorted(m for m in sys.modules if m.split('.')[0] == 'watchdog'))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, check=True)
    assert out.stdout.strip() == "[]"
