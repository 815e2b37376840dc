"""Hot swap in proxy mode: a new signed version takes over a running mount, no restart.

A launcher built with ``hot_swap`` watches its plugins directory (:mod:`shim.launch.watch`)
and, on each rescan, runs the launch path's own selection
(:func:`shim.launch.entry.select_sealed`: the same checks, the same floor, the bytes sealed
and hashed; in a native launcher, the native decision itself: :class:`NativeSelector` runs the
launcher's select-only mode, which hands a sealed, verified copy back). When that picks another
release than the one running, :class:`Swapper`:

1. starts it as a second child from its sealed copy (:meth:`Host.start_generation`);
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
``doctor`` in the launcher's private directory (:class:`StatusBoard`, :func:`find_status`).

grpc is imported only where a swap runs, so ``doctor`` can read the status cheaply.
"""

from __future__ import annotations

import json
import os
import threading
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable, Protocol

from shim.goplugin import hclog
from shim.goplugin.errors import Diagnostic
from shim.launch import capture as cap
from shim.launch.errors import NativeRefusal, NeedsReload, SwapError
from shim.trust.manifest import format_time

if TYPE_CHECKING:  # pragma: no cover
    from shim.trust.policy import Policy
    from shim.trust.verify import Candidate

DRAIN_TIMEOUT = 30.0    # calls still open on the old child this long after the switch are ended
SETUP_TIMEOUT = 10.0    # each replayed call must answer within this ("a plugin that hangs in Setup")
START_TIMEOUT = 20.0    # the new child's handshake line
STATUS_FILE = "swap-status.json"


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


# --- the status doctor reads --------------------------------------------------------------

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

    capture: cap.SetupCapture

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
    the launcher is native, and each rescan runs its select-only mode (:class:`NativeSelector`)
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


# --- the native launcher's decision, for a rescan ------------------------------------------

SELECT_TIMEOUT = 120.0   # select-only mode hashes at most one binary of max_size (2 GiB: about 20 s)
SELECT_ONLY = "--vault-plugin-shim-select-only="
SKIP = "--vault-plugin-shim-skip="
REFUSING = "vault-plugin-shim: refusing to start "
REJECTED = "vault-plugin-shim: rejected candidate "


class NativeSelector:
    """A hot swap rescan on the native launcher's own decision (issue 20: one decision at launch,
    in every mode). The launcher kept a sealed copy of its own file (``self_fd``, the bytes Vault
    verified at launch); each rescan executes that copy in select-only mode
    (shim/launch/stubs/native/nv_proxy.c) with Vault's environment, a unix SOCK_SEQPACKET socket
    pair (the child's end named in argv), and the releases hot swap passes over. It makes the
    launch's selection, writes the launch's rejection lines to stderr (read here, and relayed with
    the rescan's one difference: a binary shorter than signed whose files changed within
    ``STILL_WRITTEN`` s is a WARN, as :func:`shim.launch.entry._log_rejections` does), and hands
    the sealed, verified copy back (SCM_RIGHTS) with its verdict."""

    def __init__(self, policy: "Policy", self_fd: int, launcher: str, env: dict, timeout: float = SELECT_TIMEOUT):
        self.policy, self.self_fd, self.launcher, self.env, self.timeout = policy, self_fd, launcher, dict(env), timeout

    def select(self, skips: list[tuple[tuple, str]]) -> tuple["Candidate", int, str]:
        """``skips``: (identity (sha256, version, issued_at), reason) of each release to pass
        over. Returns (candidate, fd of the sealed verified copy, how); raises a Diagnostic."""
        import socket
        import subprocess

        from shim.launch import entry, stubs

        parent, child = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        try:
            args = [self.launcher, f"{SELECT_ONLY}{child.fileno()}"]
            args += [f"{SKIP}{sha}:{int(issued)}:{version}:{reason}" for (sha, version, issued), reason in skips]
            try:
                proc = subprocess.Popen(args, executable=f"/proc/self/fd/{self.self_fd}", env=self.env,
                                        pass_fds=(self.self_fd, child.fileno()), stdin=subprocess.DEVNULL,
                                        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
            except OSError as exc:
                raise SwapError(f"cannot run the launcher's select-only mode ({exc.strerror})", path=self.launcher,
                                fix="allow executing the launcher's sealed copy (memfd) for the Vault "
                                    "process") from None
            finally:
                child.close()
            try:
                _, err = proc.communicate(timeout=self.timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.communicate()
                raise SwapError(f"the launcher's select-only mode did not decide within {self.timeout:g} s",
                                path=self.launcher) from None
            refusal = self._relay(err)
            try:
                data, ancdata, flags, _ = parent.recvmsg(stubs.VERDICT_MAX, socket.CMSG_SPACE(4 * 4),
                                                         socket.MSG_DONTWAIT)
            except BlockingIOError:
                data, ancdata, flags = b"", [], 0
        finally:
            parent.close()
        fds = []
        for level, kind, payload in ancdata:
            if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
                fds.extend(int.from_bytes(payload[i:i + 4], "little") for i in range(0, len(payload) - 3, 4))
        try:
            if proc.returncode != 0 or not data:
                raise refusal or SwapError(f"the launcher's select-only mode ended with status {proc.returncode} and "
                                           "handed nothing back", path=self.launcher)
            if len(fds) != 1 or flags & (socket.MSG_TRUNC | socket.MSG_CTRUNC):
                raise SwapError("the launcher's select-only mode handed back a malformed message", path=self.launcher)
            cand, how = entry.candidate_from_verdict(stubs.parse_handback(data))
            if os.fstat(fds[0]).st_size != cand.manifest.size:
                raise SwapError("the launcher's select-only copy has another size than its verdict", path=cand.path)
        except BaseException:
            for fd in fds:
                os.close(fd)
            raise
        os.set_inheritable(fds[0], False)
        return cand, fds[0], how

    def _relay(self, err: bytes) -> "NativeRefusal | None":
        """Log select-only mode's lines as the launch path logs them (they are the launch's own
        lines); return its refusal, if it refused."""
        import re

        from shim.launch.entry import STILL_WRITTEN, still_written

        refusal, last_error, other = None, None, []
        now = time.time()
        for raw in err.splitlines():
            try:
                line = json.loads(raw)
            except ValueError:
                line = None
            if not isinstance(line, dict) or not isinstance(line.get("@message"), str):
                if raw.strip():
                    other.append(raw.decode("utf-8", "replace")[:200])
                continue
            message, level = line["@message"], line.get("@level")
            if level == "error" and message.startswith(REFUSING):
                refusal = NativeRefusal(line)
                continue
            if level == "error" and message.startswith(REJECTED) and line.get("error") == "DigestMismatchError":
                m = re.fullmatch(r"is (\d+) bytes, the signed manifest says (\d+)", str(line.get("reason", "")))
                age = None if m is None else still_written(str(line.get("file", "")), int(m.group(2)), now)
                if age is not None and age < STILL_WRITTEN:
                    line = {**line, "@level": "warn",
                            "@message": message + f" (its files changed {age:.1f} s ago: still being copied in? the "
                                                  "next rescan, once the directory is quiet, looks again)"}
                    raw = json.dumps(line, separators=(",", ":"), ensure_ascii=False).encode("utf-8", "replace")
            elif level == "error":
                last_error = line
            hclog.write_stderr(raw.rstrip(b"\n") + b"\n")
        if refusal is None and last_error is not None:
            refusal = NativeRefusal(last_error)
        if refusal is None and other:
            refusal = NativeRefusal({"error": "LaunchError", "reason": "the launcher's select-only mode wrote: "
                                     + " | ".join(other[:3])})
        return refusal



class Swapper:
    """Rescans (called serially by the watcher) and swaps."""

    def __init__(self, host: Host, policy: "Policy", plugin_args: list[str], tmpdir: str | None,
                 running: "Candidate", *, drain_timeout: float = DRAIN_TIMEOUT, setup_timeout: float = SETUP_TIMEOUT,
                 start_timeout: float = START_TIMEOUT, clock: Callable[[], float] = time.time,
                 native: NativeSelector | None = None):
        self.host, self.policy, self.plugin_args, self.tmpdir = host, policy, list(plugin_args), tmpdir
        self.native = native
        self.running = Release.of(running)
        self.drain_timeout, self.setup_timeout, self.start_timeout = drain_timeout, setup_timeout, start_timeout
        self.clock = clock
        self.memory = Memory()
        self.status = StatusBoard(policy.name, getattr(host, "base", None))
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
        from shim.launch.entry import select_sealed

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
        from shim.launch import entry
        from shim.launch.child import ExecRefusedError

        argv = [cand.path, *self.plugin_args]
        label = str(cand.manifest.version)
        try:
            gen = self.host.start_generation(fd, argv, label, self.start_timeout)
        except ExecRefusedError as exc:
            if not how.startswith("memfd"):
                raise
            copy = entry._private_copy(cand, os.dup(fd), self.tmpdir, exc.reason)
            try:
                gen = self.host.start_generation(copy, argv, label, self.start_timeout)
            finally:
                os.close(copy)
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
