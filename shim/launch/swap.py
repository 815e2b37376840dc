"""Hot swap in proxy mode: a new signed version takes over a running mount, no restart.

A launcher built with ``hot_swap`` watches its plugins directory (:mod:`shim.launch.watch`)
and, on each rescan, runs the launch path's own selection
(:func:`shim.launch.sealed.select_sealed`: the same checks, the same floor, the bytes sealed
and hashed; in a native launcher, the native decision itself:
:class:`~shim.launch.verdict.NativeSelector` runs the launcher's select-only mode, which hands a
sealed, verified copy back). When that picks another release than the one running,
:class:`Swapper`:

1. starts it as a second child from its sealed copy (:meth:`Host.start_generation`, through
   :func:`shim.launch.sealed.start_verified`, as a launch starts it);
2. replays the set-up calls Vault made (:mod:`shim.launch.capture`): ``Setup`` with the
   same broker id (bridged to Vault's Storage listener), config and backend UUID, then
   ``Initialize``; or the database plugin's ``Initialize``;
3. compares what Vault cached at mount (``Type``, ``SpecialPaths``...): a difference means
   Vault would act on stale metadata, so the swap is refused with a WARN (a ``plugin reload``
   is needed);
4. switches: new Vault connections go to the new child, every open one is asked to move
   (HTTP/2 GOAWAY); calls in flight drain on the old child (at most ``DRAIN_TIMEOUT``), which
   then gets ``Cleanup``/``Close`` and ``Shutdown`` and is killed.

Anything failing before the switch rolls back: the new child is killed, the old one keeps
serving, an ERROR names the file and the reason, and :class:`Memory` keeps that release from
being tried again until its files change. No valid version left: the running one stays
(ERROR on each rescan). Each swap ends with one INFO line. The state is published for
``doctor`` in the launcher's private directory (:mod:`shim.launch.swapstatus`, which ``doctor``
reads without importing this module).

grpc is imported only where a swap runs.
"""

from __future__ import annotations

import os
import threading
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable, Protocol

from shim.goplugin import hclog
from shim.goplugin.errors import Diagnostic
from shim.launch import capture as cap
from shim.launch.errors import NeedsReload, SwapError
from shim.launch.sealed import select_sealed, start_verified
from shim.launch.swapstatus import NEXT_LAUNCH_FIX, StatusBoard
from shim.trust.manifest import format_time

if TYPE_CHECKING:  # pragma: no cover
    from shim.launch.verdict import NativeSelector
    from shim.trust.policy import Policy
    from shim.trust.verify import Candidate

DRAIN_TIMEOUT = 30.0    # calls still open on the old child this long after the switch are ended
SETUP_TIMEOUT = 10.0    # each replayed call must answer within this ("a plugin that hangs in Setup")
START_TIMEOUT = 20.0    # the new child's handshake line


# --- releases and what was learned about them -------------------------------------------

@dataclass(frozen=True)
class Release:
    """One signed version, as the launcher knows it."""

    version: str
    sha256: str
    issued_at: float
    file: str
    key_id: str

    @classmethod
    def of(cls, cand: "Candidate") -> "Release":
        m = cand.manifest
        return cls(str(m.version), m.sha256, m.issued_at, cand.path, cand.key.key_id_hex)

    @property
    def identity(self) -> tuple:
        """The same signed bytes under the same signature: a copy under another name is the
        same release; a rebuilt or re-signed one is a new one."""
        return self.sha256, self.version, self.issued_at

    def brief(self) -> dict:
        return {"version": self.version, "file": self.file, "sha256": self.sha256, "key_id": self.key_id}


class Memory:
    """Releases that failed to swap in, or were refused: not tried again until they change."""

    def __init__(self):
        self._entries: dict[tuple, dict] = {}

    def remember(self, release: Release, reason: str, level: str, at: float) -> None:
        self._entries[release.identity] = {**release.brief(), "reason": reason, "level": level,
                                           "at": round(at, 3)}

    def recall(self, release: Release) -> dict | None:
        return self._entries.get(release.identity)

    def entries(self) -> list[dict]:
        return sorted(self._entries.values(), key=lambda e: e["at"])

    def items(self) -> list[tuple[tuple, dict]]:
        """(identity, entry) of every release remembered, oldest first."""
        return sorted(self._entries.items(), key=lambda item: item[1]["at"])


KEEP, SWAP, REMEMBERED = "keep", "swap", "remembered"


def decide(running: Release, chosen: Release, memory: Memory) -> str:
    """What a rescan that selected ``chosen`` does while ``running`` serves."""
    if chosen.identity == running.identity:
        return KEEP
    if memory.recall(chosen) is not None:
        return REMEMBERED
    return SWAP


# --- replaying into the new child ------------------------------------------------------

def replay(channel, plan: cap.Plan, *, announce: Callable[[int], None], timeout: float = SETUP_TIMEOUT,
           exit_detail: Callable[[], str | None] = lambda: None) -> int:
    """Send ``plan``'s set-up calls to the new child, then compare its answers with what Vault
    got. Raises SwapError (or NeedsReload). ``announce(broker_id)`` must make that id
    dialable for the child before its Setup runs. Returns the number of calls replayed."""
    import grpc

    from shim.launch.child import EXIT_WAIT

    def call(c: cap.Call) -> bytes:
        stub = channel.unary_unary(c.path)
        try:
            return stub(c.request or b"", timeout=timeout, metadata=c.metadata or None)
        except grpc.RpcError as exc:
            gone = exit_detail()
            end = time.monotonic() + EXIT_WAIT
            while gone is None and exc.code() == grpc.StatusCode.UNAVAILABLE and time.monotonic() < end:
                time.sleep(0.02)  # a dying process's connection breaks a moment before its exit shows
                gone = exit_detail()
            if gone:
                raise SwapError(f"the new version's process exited during {c.path} ({gone})") from None
            if exc.code() == grpc.StatusCode.DEADLINE_EXCEEDED:
                raise SwapError(f"the new version did not answer {c.path} within {timeout:g} s") from None
            if exc.code() == grpc.StatusCode.UNIMPLEMENTED and c.path == cap.INITIALIZE:
                return b""  # as Vault's SDK client: a plugin without Initialize is fine
            if exc.code() == grpc.StatusCode.UNIMPLEMENTED and c.path == cap.MULTIPLEXING:
                return b""  # as Vault: no multiplexing service means "not supported" (plugin.Serve)
            raise SwapError(f"the new version failed {c.path}: {exc.code().name}: {exc.details()}") from None

    for c in plan.replay:
        if c.path == cap.SETUP:
            announce(cap.setup_args(c.request).broker_id)
        reply = call(c)
        try:
            if c.path == cap.SETUP and (err := cap.setup_error(reply)):
                raise SwapError(f"the new version's Setup answered an error: {err}")
            if c.path == cap.INITIALIZE and (err := cap.initialize_error(reply)):
                raise SwapError(f"the new version's Initialize answered an error: {err}")
        except cap.WireError as exc:
            raise SwapError(f"the new version's answer to {c.path} cannot be read ({exc})") from None
    for c in plan.compare:
        reply = call(c)
        try:
            same = cap.answer(c.path, reply) == cap.answer(c.path, c.reply)
        except cap.WireError as exc:
            raise SwapError(f"the answers to {c.path} cannot be compared ({exc})") from None
        if not same:
            raise NeedsReload(f"the new version answers {c.path} with {cap.describe_answer(c.path, reply)}, but "
                              f"Vault cached {cap.describe_answer(c.path, c.reply)} from the running one at mount")
    return len(plan.replay)


# --- the proxy's side ----------------------------------------------------------------

class Generation(Protocol):
    """One child as the proxy runs it (shim.launch.generations.Generation)."""

    channel: object            # plaintext gRPC channel of the launcher's own to the child
    app_version: int

    def exit_detail(self) -> str | None: ...


class Host(Protocol):
    """What the swap needs from the proxy (shim.launch.swaphost.SwapHost implements it)."""

    capture: cap.SetupCapture   # Vault's set-up calls, to replay into the new version
    base: str | None            # the launcher's private directory: the status for doctor goes there

    @property
    def current(self) -> Generation: ...

    def start_generation(self, fd: int, argv: list[str], label: str, start_timeout: float) -> Generation: ...

    def announce_vault_broker(self, gen: Generation, broker_id: int) -> None: ...

    def switch(self, gen: Generation, generation: int) -> Generation | None: ...

    def drain(self, old: Generation, timeout: float, reason: str) -> tuple[int, int]: ...

    def retire(self, old: Generation, plan: cap.Plan) -> None: ...

    def discard(self, gen: Generation) -> None: ...


# --- the swap itself ----------------------------------------------------------------

@dataclass
class Options:
    """What the launch hands proxy mode to turn hot swap on (shim.launch.entry). ``native``:
    the launcher is native, and each rescan runs its select-only mode
    (:class:`~shim.launch.verdict.NativeSelector`)
    instead of the Python selection."""

    policy: "Policy"
    plugin_args: list
    tmpdir: str | None
    running: "Candidate"
    native: "NativeSelector | None" = None

    def capture(self) -> cap.SetupCapture:
        return cap.SetupCapture(self.policy.type)

    def swapper(self, host: "Host") -> "Swapper":
        return Swapper(host, self.policy, self.plugin_args, self.tmpdir, self.running, native=self.native)


class Swapper:
    """Rescans (called serially by the watcher) and swaps."""

    def __init__(self, host: Host, policy: "Policy", plugin_args: list[str], tmpdir: str | None,
                 running: "Candidate", *, drain_timeout: float = DRAIN_TIMEOUT, setup_timeout: float = SETUP_TIMEOUT,
                 start_timeout: float = START_TIMEOUT, clock: Callable[[], float] = time.time,
                 native: "NativeSelector | None" = None):
        self.host, self.policy, self.plugin_args, self.tmpdir = host, policy, list(plugin_args), tmpdir
        self.native = native
        self.running = Release.of(running)
        self.drain_timeout, self.setup_timeout, self.start_timeout = drain_timeout, setup_timeout, start_timeout
        self.clock = clock
        self.memory = Memory()
        self.status = StatusBoard(policy.name, host.base)
        self.watcher = None
        self.swaps = 0
        self._stopping = threading.Event()
        self._waiting = False            # a swap waits for Vault's set-up calls
        self._warned: set = set()
        host.capture.on_change = self._capture_moved
        self.status.update(running=self.running.brief(), pending=None, refused=[], no_valid_version=None,
                           watching="starting", swaps=0)

    @property
    def plugin(self) -> str:
        return f"{self.policy.type} plugin {self.policy.name}"

    # life cycle

    def start(self, **watch_options) -> None:
        from shim.launch.watch import Watcher

        self.watcher = Watcher(self.policy.plugins_dir, self.rescan, **watch_options)
        self.watcher.start()

    def request_rescan(self) -> None:
        """SIGHUP."""
        if self.watcher is not None:
            self.watcher.trigger()

    def stop(self) -> None:
        """The launcher stops: no new swap; one in progress fails at its next step (its new
        child is killed by the proxy), quietly. Does not wait for it."""
        self._stopping.set()
        if self.watcher is not None:
            self.watcher.stop(timeout=0.2)
        self.status.close()

    # one rescan

    def rescan(self, reason: str) -> None:
        if self._stopping.is_set():
            return
        self._waiting = False
        if self.watcher is not None:
            self.status.update(watching=self.watcher.mode)
        self.status.update(last_rescan={"at": round(self.clock(), 3), "trigger": reason})
        try:
            if self.native is not None:  # the native launcher's own decision (its select-only mode)
                cand, fd, how = self.native.select(self._skips())
            else:
                cand, fd, how = select_sealed(self.policy, self.clock(), tmpdir=self.tmpdir, skip=self._skip,
                                              rescan=True)
        except SwapError as exc:  # only the native selection raises this: it could not decide at all
            hclog.error(f"vault-plugin-shim: cannot rescan {self.policy.plugins_dir} for {self.plugin}; keeping "
                        f"{self.running.version} running", plugin=self.policy.name, running=self.running.version,
                        trigger=reason, **exc.fields())
            self.status.update(pending=None)
            return
        except Diagnostic as exc:
            hclog.error(f"vault-plugin-shim: no valid version of {self.plugin} is left in {self.policy.plugins_dir}; "
                        f"keeping {self.running.version} running", plugin=self.policy.name,
                        running=self.running.version, trigger=reason, **exc.fields())
            self.status.update(no_valid_version=exc.reason, pending=None)
            return
        self.status.update(no_valid_version=None)
        try:
            new = Release.of(cand)
            action = decide(self.running, new, self.memory)
            if action == KEEP:
                self.status.update(pending=None)
                return
            if action == REMEMBERED:
                hclog.debug(f"vault-plugin-shim: not trying {new.version} again until its files change",
                            file=new.file, reason=self.memory.recall(new)["reason"])
                self.status.update(pending=None)
                return
            fd = self._swap(cand, new, fd, how, reason)
        finally:
            if fd is not None and fd >= 0:
                os.close(fd)

    def _skip(self, cand: "Candidate") -> str | None:
        """Selection asks: a release that failed to take over is passed over (so the next
        valid one can run), until its files change."""
        entry = self.memory.recall(Release.of(cand))
        if entry is None or Release.of(cand).identity == self.running.identity:
            return None
        return self._skip_reason(entry)

    def _skips(self) -> list[tuple[tuple, str]]:
        """:meth:`_skip` for the native selection: every remembered release but the running one,
        with the reason selection gives when it passes over it."""
        return [(identity, self._skip_reason(entry)) for identity, entry in self.memory.items()
                if identity != self.running.identity]

    @staticmethod
    def _skip_reason(entry: dict) -> str:
        return (f"failed to take over from the running version at {format_time(entry['at'])} (the reason was "
                "logged then; doctor shows it); not tried again until its files change")

    def _refuse(self, new: Release, exc: SwapError, level: str) -> None:
        if self._stopping.is_set():
            return  # the launcher is stopping: that, not the version, ended the swap
        self.memory.remember(new, exc.reason, level, self.clock())
        fields = {"plugin": self.policy.name, "running": self.running.version, "version": new.version,
                  "file": new.file, **exc.fields()}
        if level == "warn":
            hclog.warn(f"vault-plugin-shim: not swapping {self.plugin} to {new.version}: {exc.reason}; this version "
                       f"needs a plugin reload; keeping {self.running.version} running", **fields)
        else:
            hclog.error(f"vault-plugin-shim: cannot swap {self.plugin} to {new.version} ({new.file}): {exc.reason}; "
                        f"keeping {self.running.version} running; this launcher does not try this file again until "
                        f"it changes, but the plugin's next launch (a crash, a plugin reload, a restart, a "
                        f"leadership change) starts it", **{"fix": NEXT_LAUNCH_FIX, **fields})
        self.status.update(pending=None, refused=self.memory.entries())

    def _swap(self, cand: "Candidate", new: Release, fd: int, how: str, reason: str) -> int | None:
        """Returns the fd if it is still ours to close (None once the child owns a copy)."""
        started = time.monotonic()
        plan = self.host.capture.plan()
        if plan.refusal:
            key = ("refusal", plan.refusal)
            if key not in self._warned:
                self._warned.add(key)
                hclog.warn(f"vault-plugin-shim: hot swap of {self.plugin} is off for this process: {plan.refusal}; "
                           f"{new.version} runs from the next launch", plugin=self.policy.name, version=new.version,
                           file=new.file)
            self.status.update(pending={**new.brief(), "state": f"not swappable: {plan.refusal}"})
            return fd
        if plan.waiting:
            self.status.update(pending={**new.brief(), "state": f"waiting: {plan.waiting}"})
            self._retry_soon(plan)
            return fd
        self.status.update(pending={**new.brief(), "state": "starting"})
        gen = None
        try:
            gen = self._start(cand, fd, how)
            replayed = replay(gen.channel, plan, announce=lambda bid: self.host.announce_vault_broker(gen, bid),
                              timeout=self.setup_timeout, exit_detail=gen.exit_detail)
            old = self.host.switch(gen, plan.generation)
        except NeedsReload as exc:
            self._discard(gen)
            self._refuse(new, exc, "warn")
            return fd
        except SwapError as exc:
            self._discard(gen)
            self._refuse(new, exc, "error")
            return fd
        except Diagnostic as exc:  # the start: handshake, health, exec refused
            self._discard(gen)
            self._refuse(new, SwapError(exc.reason, cause=exc.cause or None, fix=exc.fix or None), "error")
            return fd
        except Exception as exc:  # a bug: still roll back, and say so
            self._discard(gen)
            self._refuse(new, SwapError(f"an unexpected error ({type(exc).__name__}: {exc})",
                                        fix="report this as a vault-plugin-shim bug"), "error")
            return fd
        if old is None:  # Vault began a set-up call meanwhile: not the file's fault
            self._discard(gen)
            self.status.update(pending={**new.brief(), "state": "waiting: Vault made a set-up call during the swap"})
            self._retry_soon(plan)
            return fd
        took = time.monotonic() - started
        previous, self.running = self.running, new
        self.status.update(running=new.brief(), pending=None)
        t_drain = time.monotonic()
        drained, cut = self.host.drain(old, self.drain_timeout,
                                       f"vault-plugin-shim: swapped from {previous.version} to {new.version}")
        self.host.retire(old, plan)
        drain = time.monotonic() - t_drain
        self.swaps += 1
        last = {"from": previous.version, "to": new.version, "key_id": new.key_id, "took_ms": round(took * 1000),
                "drain_ms": round(drain * 1000), "calls_drained": drained, "calls_cut": cut,
                "calls_replayed": replayed, "at": round(self.clock(), 3)}
        self.status.update(last_swap=last, swaps=self.swaps)
        hclog.info(f"vault-plugin-shim: swapped {self.plugin} from {previous.version} to {new.version}",
                   plugin=self.policy.name, from_version=previous.version, to_version=new.version, key_id=new.key_id,
                   file=new.file, sha256=new.sha256, took_ms=last["took_ms"], drain_ms=last["drain_ms"],
                   calls_drained=drained, calls_cut=cut, calls_replayed=replayed, trigger=reason, exec_via=how)
        return None

    def _start(self, cand: "Candidate", fd: int, how: str):
        """Start the new version as a launch starts it (a private copy where memfd exec is
        refused); ``fd`` stays the rescan's. A refusal stays an ExecRefusedError: the swap
        refuses the version with its reason."""
        argv = [cand.path, *self.plugin_args]
        label = str(cand.manifest.version)
        gen = start_verified(cand, os.dup(fd), how, self.tmpdir,
                             lambda copy, _how: self.host.start_generation(copy, argv, label, self.start_timeout),
                             explain=False)
        current = self.host.current
        if gen.app_version != current.app_version:
            self.host.discard(gen)
            raise NeedsReload(f"the new version speaks plugin protocol {gen.app_version}; Vault negotiated "
                              f"{current.app_version} with the running one")
        return gen

    def _discard(self, gen) -> None:
        if gen is not None:
            try:
                self.host.discard(gen)
            except Exception as exc:  # never let the cleanup hide the reason
                hclog.warn("vault-plugin-shim: stopping a refused version's process failed", reason=str(exc))

    def _retry_soon(self, plan: cap.Plan) -> None:
        """Rescan when Vault's next set-up call has ended (not on a timer: no rescan storm
        while a plugin that is never set up sits idle)."""
        self._waiting = True
        capture = self.host.capture
        if (capture.generation, capture.in_flight) != (plan.generation, plan.in_flight):
            self._capture_moved()  # it ended while we looked

    def _capture_moved(self) -> None:
        if self._waiting and self.watcher is not None:
            self._waiting = False
            self.watcher.retry()
