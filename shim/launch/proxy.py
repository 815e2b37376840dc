"""Proxy mode: serve go-plugin to Vault ourselves and route its HTTP/2 to the verified plugin.

Vault -> [mTLS, our ServerFront] -> HTTP/2 frame router -> plugin child (plaintext,
private socket), one child connection per Vault connection. In order:

1. a :class:`~shim.goplugin.janitor.Janitor` records everything we create, so even a
   SIGKILL of the launcher leaves no socket, key file or process behind;
2. the child starts from the sealed memfd (:class:`~shim.launch.child.Child`) with
   Vault's env minus what we own; its handshake line gives the app protocol version;
   one health check over plaintext gRPC tells that it serves;
3. each TLS connection from Vault is spliced frame by frame onto a new connection to the
   child (:class:`~shim.goplugin.h2route.Router`): the child answers every call itself,
   go-plugin's own services included (health, GRPCStdio, GRPCController), so metadata,
   deadlines, cancellation, status and trailers pass untouched;
4. on the broker stream the router rewrites ConnInfo both ways (:class:`BrokerBridge`):
   the child's listeners get an mTLS front for Vault, Vault's get a plaintext front;
5. Vault's GRPCController/Shutdown reaches the child and marks our stop as requested;
   the child's death ends every open call with UNAVAILABLE naming its exit status, and
   makes us exit 1 at once, so Vault's reload path takes over;
6. Vault's own death (even SIGKILL, which leaves no one to stop us) is seen through a
   pidfd of our parent taken at start: we stop the child as Vault's Kill would (Shutdown,
   then SIGKILL of its group after CHILD_GRACE) and remove everything, then exit.

Profile (benchmarks/proxy.py, 2 vCPU): the grpc.aio relay this replaced cost ~0.8 ms per
call (p50 ~11x direct, 8-caller throughput ~6% of direct); with frame routing proxy p50 is
~3x direct and 8-caller throughput ~42% of direct, against ~2.1x / ~64% for the bare
TLS front with a byte splice. Why plaintext to the child: README "Threat model".
"""

from __future__ import annotations

import asyncio
import logging
import os
import secrets
import selectors
import shutil
import signal
import tempfile
import threading
from typing import Callable, Mapping

# gRPC's fork handlers restart its event-engine threads in a forked child. The launcher forks
# to start the plugin (a preexec_fn sets PR_SET_PDEATHSIG, see shim.launch.child), and the
# child closes every other descriptor before exec; such a thread then meets a closed epoll fd
# and aborts the child ("Epoll1Poller ... epoll_wait error: Bad file descriptor", SIGABRT)
# before it can exec the plugin. No child of the launcher uses gRPC: turn them off before grpc
# is imported. The plugin's environment is Vault's, kept apart (child_env), so this does not
# reach it.
os.environ["GRPC_ENABLE_FORK_SUPPORT"] = "0"

from shim.goplugin import grpcutil, handshake as hs, hclog, mtls  # noqa: E402
from shim.goplugin.broker import ConnInfo
from shim.goplugin.errors import GoPluginError, TLSSetupError
from shim.goplugin.h2route import H2RouteError, Router
from shim.goplugin.janitor import Janitor
from shim.goplugin.procgroup import signal_group
from shim.goplugin.server import HclogHandler, apply_socket_group
from shim.goplugin.tlsfront import ClientFront, ServerFront, private_dir, run_in_loop, spawn
from shim.launch.child import EXIT_WAIT, Child, ExecRefusedError

log = logging.getLogger(__name__)

START_TIMEOUT = 50.0     # below Vault's 1 minute, so our error is the one Vault logs
CHILD_GRACE = 1.0        # Vault SIGKILLs us 2 s after Shutdown; leave room for our own cleanup
CLOSE_GRACE = 0.5        # flushing the last frames to Vault when we stop
MAX_SOCKET_PATH = 107    # sun_path is 108 bytes with the terminating NUL


class VaultGoneError(GoPluginError):
    """The process that started us (Vault) has exited."""

    default_fix = ("nothing to do here: Vault starts the plugin again when it comes back; this "
                   "launcher stopped its plugin and removed its sockets")


# --- broker bridging ------------------------------------------------------------------

class BrokerBridge:
    """Rewrites ConnInfo between Vault and the child and relays the connections.

    * Vault serves an id (Storage, SystemView in Setup): its listener speaks mTLS and
      trusts only the certificate we announced. A :class:`ClientFront` gives the child a
      private plaintext socket whose connections we carry over that mTLS to Vault.
    * The child serves an id: Vault must dial it with mTLS against our certificate. A
      :class:`ServerFront` terminates that and relays to the child's plaintext socket.

    Both return the ConnInfo to pass on, or None to drop the message.
    """

    def __init__(self, identity: mtls.Identity, vault_der: bytes, *, private: str, public: str,
                 on_public_socket: Callable[[str], None]):
        self.vault_der = vault_der
        self.private, self.public = private, public
        self.on_public_socket = on_public_socket
        self.server_ctx = mtls.server_context(identity, vault_der)
        self.client_ctx = mtls.client_context(identity, vault_der)
        self._fronts: list = []
        self.vault_ids: dict[int, ClientFront] = {}   # Vault's broker ids, for a swap's Setup
        self._lock = threading.Lock()
        self._closed = False

    def _keep(self, front) -> bool:
        with self._lock:
            if self._closed:
                front.close()
                return False
            self._fronts.append(front)
            return True

    def from_vault(self, info: ConnInfo) -> ConnInfo | None:
        if info.knock is not None and (info.knock.knock or info.knock.ack):
            log.warning("ignoring a multiplexing knock from Vault for broker id %d", info.service_id)
            return None
        front = ClientFront(info.network, info.address, self.client_ctx, self.vault_der, base=self.private)
        if not self._keep(front):
            return None
        with self._lock:
            self.vault_ids[info.service_id] = front
        return info.rewrite("unix", front.path)

    def from_child(self, info: ConnInfo) -> ConnInfo | None:
        if info.knock is not None and (info.knock.knock or info.knock.ack):
            log.warning("ignoring a multiplexing knock from the plugin for broker id %d", info.service_id)
            return None
        if info.network != "unix":
            raise GoPluginError(f"the plugin announced broker id {info.service_id} on {info.network}; "
                                "only unix sockets are relayed")
        path = os.path.join(self.public, f"broker{info.service_id}-{secrets.randbelow(10**9):09d}")
        self.on_public_socket(path)
        front = ServerFront(path, info.address, self.server_ctx, self.vault_der)
        if not self._keep(front):
            return None
        return info.rewrite("unix", path)

    def close(self) -> None:
        with self._lock:
            self._closed = True
            fronts, self._fronts = self._fronts, []
        for front in fronts:
            front.close()


# --- one routed connection (the router's I/O shell) -----------------------------------

class _Side(asyncio.Protocol):
    def __init__(self, link: "RoutedConnection", vault: bool):
        self.link, self.vault = link, vault

    def data_received(self, data):
        self.link.received(self.vault, data)

    def eof_received(self):
        self.link.lost(self.vault)
        return False

    def connection_lost(self, exc):
        self.link.lost(self.vault)

    def pause_writing(self):
        other = self.link.child if self.vault else self.link.vault
        if other is not None:
            other.pause_reading()

    def resume_writing(self):
        other = self.link.child if self.vault else self.link.vault
        if other is not None:
            other.resume_reading()


class RoutedConnection:
    """Vault's TLS connection and our plaintext connection to the child, spliced by a
    :class:`Router`. Output is written once per batch of frames read."""

    def __init__(self, proxy: "Proxy", vault: asyncio.Transport, early: bytes, conns: set):
        """``conns`` is the front's set (it aborts what is left when it closes); the proxy
        keeps its own set of routed connections, to end their calls gracefully first. The
        connection goes to the generation current now, for its whole life."""
        self.proxy = proxy
        self.gen = proxy.current
        self.router = Router(from_vault=self._from_vault, from_child=proxy.bridge.from_child,
                             on_shutdown=proxy.vault_shutdown,
                             tap=None if proxy.capture is None else proxy.capture.tap())
        self.vault: asyncio.Transport | None = vault
        self.child: asyncio.Transport | None = None
        self.conns = conns
        self.closed = asyncio.get_running_loop().create_future()
        self._ending = False
        self._reason: str | None = None   # why we end it ourselves (a swap), for open calls
        conns.add(self)
        proxy.routed.add(self)
        self.gen.routed.add(self)
        vault.set_protocol(_Side(self, True))
        vault.pause_reading()
        spawn(self._open(early), "connecting a Vault connection to the plugin")

    async def _open(self, early: bytes) -> None:
        loop = asyncio.get_running_loop()
        network, address = self.gen.address
        try:
            if network == "unix":
                child, _ = await loop.create_unix_connection(lambda: _Side(self, False), address)
            else:
                host, _, port = address.rpartition(":")
                child, _ = await loop.create_connection(lambda: _Side(self, False), host.strip("[]"), int(port))
        except OSError as exc:
            log.warning("cannot connect to the plugin at %s: %s", address, exc)
            await self.finish()
            return
        if self._ending:
            child.abort()
            return
        self.child = child
        if early:
            self.received(True, early)
        if self.vault is not None:
            self.vault.resume_reading()

    def _from_vault(self, info: ConnInfo) -> ConnInfo | None:
        """Vault's ConnInfo, bridged. Between a swap's switch and the end of its drain, the
        broker stream still runs to the old child: the current one must hear it too (a mount
        enabled in that window sets up there)."""
        new = self.proxy.bridge.from_vault(info)
        if new is not None and self.router.held is None and self.gen is not self.proxy.current:
            self.proxy.vault_conninfo(new)
        return new

    def received(self, from_vault: bool, data: bytes) -> None:
        if self._ending:  # Vault's open calls have their answer already
            return
        if not from_vault and self.router.held is not None:  # the retired child's last bytes
            return
        router = self.router
        try:
            if from_vault:
                router.receive_vault(data)
            else:
                router.receive_child(data)
        except H2RouteError as exc:
            log.warning("closing a connection from Vault: %s", exc)
            self.abort()
            return
        self.flush()

    def flush(self) -> None:
        router = self.router
        out = router.data_to_child()
        if out and self.child is not None:
            self.child.write(out)
        out = router.data_to_vault()
        if out and self.vault is not None:
            self.vault.write(out)

    def goaway(self) -> None:
        """A swap: Vault's next calls go to a new connection (to the new child)."""
        if not self._ending:
            self.router.goaway()
            self.flush()

    def hold_broker(self) -> bool:
        """A swap retires this connection's child, but Vault's broker stream runs here (Vault
        opens it once per plugin client; a multiplexed plugin's later mounts announce their
        Storage on it): keep the connection to Vault, answered by the router alone, and close
        the one to the child. False when Vault's broker stream is not here."""
        if self._ending or not self.router.hold_broker(self.proxy.vault_conninfo):
            return False
        child, self.child = self.child, None
        if child is not None:
            child.close()
        if self in self.gen.routed:
            self.gen.routed.discard(self)
            self.gen.calls_done += self.router.calls_done
        self.flush()
        return True

    def lost(self, vault: bool) -> None:
        if vault:
            self.abort()
        elif not self._ending and self.router.held is None:
            spawn(self.finish(), "ending Vault's open calls")

    async def finish(self, reason: str | None = None) -> None:
        """The child's side ended (or we stop, or a swap retires it): end Vault's open
        calls with a reason."""
        if self._ending:
            return
        self._ending = True
        if self.child is not None:
            self.child.close()
        # a held broker stream outlived its child: it ends with the current one
        message = reason or await self.proxy.explain(None if self.router.held is not None else self.gen)
        self.router.fail_streams(message)
        out = self.router.data_to_vault()
        if self.vault is not None and not self.vault.is_closing():
            if out:
                self.vault.write(out)
            self.vault.close()   # flushes what is buffered first
        else:
            self._done()

    def abort(self) -> None:
        self._ending = True
        for t in (self.vault, self.child):
            if t is not None:
                t.abort()
        self._done()

    def _done(self) -> None:
        self.conns.discard(self)
        self.proxy.routed.discard(self)
        if self in self.gen.routed:
            self.gen.routed.discard(self)
            self.gen.calls_done += self.router.calls_done
        if self.router.tap is not None:
            self.router.tap.close()
        if not self.closed.done():
            self.closed.set_result(None)


# --- one plugin child and what routes to it ---------------------------------------------

def _no_stdio_warning(record: logging.LogRecord) -> bool:
    """A swapped-in child's stdout and stderr are read from its pipes (and GRPCStdio when it
    has it), so a go-plugin < 1.1 child without GRPCStdio loses nothing: no warning."""
    return not record.getMessage().startswith("plugin does not support GRPCStdio")


class Generation:
    """One plugin child: the launch's, or a version a hot swap started next to it. New
    Vault connections go to the current one; a retiring one keeps its connections until
    they drain."""

    def __init__(self, child: Child, line: hs.HandshakeLine, label: str, directory: str):
        self.child, self.line, self.label, self.dir = child, line, label, directory
        self.address = (line.network, line.address)
        self.app_version = line.app_version
        self.channel = None               # our own plaintext channel to it
        self.own_channel = True           # we close it (else the child's PluginClient does)
        self.routed: set[RoutedConnection] = set()   # loop thread
        self.calls_done = 0               # calls ended on connections already gone (loop thread)
        self.exit: asyncio.Future | None = None      # loop thread
        self.loop_pidfd: int | None = None
        self.exit_note: str | None = None

    def note_exit(self) -> None:
        if self.exit_note is None and self.child.exited():
            self.exit_note = self.child.exit_detail()

    def exit_detail(self) -> str | None:
        """None while it runs, else how it ended (for a swap's error message)."""
        if not self.child.exited():
            return None
        self.note_exit()
        tail = " | ".join(list(self.child.stderr_tail)[-3:])
        return self.exit_note + (f"; last stderr: {tail}" if tail else "")

    def calls(self) -> tuple[int, int]:
        """(calls still open, calls ended) over its connections (loop thread)."""
        return (sum(c.router.open_calls() for c in self.routed),
                self.calls_done + sum(c.router.calls_done for c in self.routed))


# --- the launcher's proxy ---------------------------------------------------------------

class Proxy:
    """Everything proxy mode runs, in the order :meth:`run` sets it up and tears it down."""

    def __init__(self, fd: int, argv: list[str], vault_env: Mapping[str, str], *,
                 start_timeout: float = START_TIMEOUT, child_grace: float = CHILD_GRACE,
                 name: str | None = None, capture=None):
        """``capture`` (an :class:`~shim.goplugin.h2capture.SetupCapture`) turns on what a
        hot swap needs: every routed connection shows it the set-up calls."""
        self.fd, self.argv, self.name = fd, list(argv), name
        self.capture = capture
        self.current: Generation | None = None
        self.generations: list[Generation] = []   # every child alive: current, starting, retiring
        self._gen_lock = threading.Lock()
        self.env = dict(vault_env)
        self.start_timeout, self.child_grace = start_timeout, child_grace
        self.janitor: Janitor | None = None
        self.base: str | None = None
        self.child: Child | None = None
        self.child_address: tuple[str, str] | None = None
        self.bridge: BrokerBridge | None = None
        self.front: ServerFront | None = None
        self.line: hs.HandshakeLine | None = None
        self._channel = None
        self._child_exit: asyncio.Future | None = None
        self._loop_pidfd: int | None = None
        self.routed: set[RoutedConnection] = set()  # live routed connections (loop thread)
        self._wake_r, self._wake_w = os.pipe2(os.O_CLOEXEC | os.O_NONBLOCK)
        self._stopping = False
        self._vault_shutdown = False
        self.vault_gone = False
        self._vault_pid: int | None = None
        self._parent_pidfd: int | None = None  # Vault, watched on the loop thread
        self._group_pidfd: int | None = None   # the child's group, for a stop from the loop thread
        self._exit_note: str | None = None  # the child's exit, noted before we reap it
        self.swapper = None                  # shim.launch.swap.Swapper when hot swap is on

    # set-up ------------------------------------------------------------------------

    def start(self) -> hs.HandshakeLine:
        """Everything up to (not including) printing our handshake line."""
        client_pem = self.env.get(hs.ENV_CLIENT_CERT)
        if not client_pem:
            raise TLSSetupError(f"proxy mode needs Vault's AutoMTLS certificate, but {hs.ENV_CLIENT_CERT} "
                                "is not set", fix="run Vault with AutoMTLS (the default since Vault 1.12), "
                                                  "or build the launcher with --mode exec")
        vault_der = mtls.cert_der_from_pem(client_pem)
        self._watch_vault()
        self.janitor = Janitor()
        self.base = private_dir("vps.", self.env.get("TMPDIR") or None)
        self.janitor.add("dir", self.base)
        child_dir = os.path.join(self.base, "c")
        os.mkdir(child_dir, 0o700)
        longest = os.path.join(child_dir, "goplugin-dial.12345678", "front.sock")  # see ClientFront
        if len(longest.encode()) > MAX_SOCKET_PATH:
            raise GoPluginError(f"the temp directory {os.path.dirname(self.base)} is too deep for unix "
                                f"socket paths (at most {MAX_SOCKET_PATH} bytes)",
                                fix="point TMPDIR in the plugin's catalog env at a shorter directory")

        identity = mtls.generate_identity()
        public_dir = self.env.get(hs.ENV_UNIX_SOCKET_DIR) or self.base
        self.bridge = BrokerBridge(identity, vault_der, private=self.base, public=public_dir,
                                   on_public_socket=self._public_socket)
        self._check_vault()
        self.child = child = Child(self.fd, self.argv, self.env, child_dir, start_timeout=self.start_timeout,
                                   on_spawn=self._spawned, name=self.name, exe_dir=self.base)
        child_line = child.start()
        self._check_vault()
        self.child_address = (child_line.network, child_line.address)
        self._check_child(grpcutil.grpc_target(child_line.network, child_line.address))
        gen = Generation(child, child_line, os.path.basename(self.argv[0]), child_dir)
        gen.channel = self._channel
        self.current = gen
        self.generations.append(gen)
        run_in_loop(self._watch_child(gen), timeout=10)

        public = os.path.join(public_dir, f"plugin{secrets.randbelow(10**9):09d}")
        self._public_socket(public)
        self.front = ServerFront(public, None, self.bridge.server_ctx, vault_der, route=self._route)
        apply_socket_group(public, self.env.get(hs.ENV_UNIX_SOCKET_GROUP))
        self.janitor.check()
        self._check_vault()
        self.line = hs.HandshakeLine(app_version=child_line.app_version, network="unix", address=public,
                                     protocol="grpc", server_cert=identity.cert_der)
        return self.line

    def _watch_vault(self) -> None:
        """A pidfd of our parent (Vault: the stub execs the interpreter in the process
        Vault started), read on the loop thread. If Vault died before we took it, we have
        been reparented already: getppid() tells, after the pidfd is open. (Had it died
        before our first getppid(), our handshake line meets a closed pipe instead.)"""
        ppid = os.getppid()
        try:
            pidfd = os.pidfd_open(ppid)
        except OSError:
            pidfd = None
        if pidfd is None or os.getppid() != ppid:
            if pidfd is not None:
                os.close(pidfd)
            self.vault_gone = True
            raise VaultGoneError(f"the process that started this launcher (pid {ppid}) has exited")
        self._vault_pid, self._parent_pidfd = ppid, pidfd

        async def watch():
            asyncio.get_running_loop().add_reader(pidfd, self._vault_exited)

        run_in_loop(watch(), timeout=10)

    def _vault_exited(self) -> None:
        """Loop thread: Vault is gone, so nobody will ever stop us. Stop as its Kill would."""
        asyncio.get_running_loop().remove_reader(self._parent_pidfd)
        self.vault_gone = True
        hclog.warn("vault-plugin-shim: Vault (the process that started this launcher) has exited; "
                   "stopping the plugin and removing its sockets", vault_pid=self._vault_pid)
        if self.line is None and self._group_pidfd is not None:
            self._kill_starting_child()  # still starting: do not wait for its handshake
        self.request_stop()

    def _spawned(self, pid: int) -> None:
        self.janitor.add("pgid", pid)
        self._group_pidfd = os.pidfd_open(pid)  # our unreaped child: it names its group
        if self.vault_gone:  # Vault went while we were spawning: the callback may have missed it
            self._kill_starting_child()

    def _kill_starting_child(self) -> None:
        try:
            signal_group(self._group_pidfd)
        except OSError:  # kernels before 6.9: the child itself (the group goes in close())
            try:
                signal.pidfd_send_signal(self._group_pidfd, signal.SIGKILL)
            except ProcessLookupError:
                pass

    def _check_vault(self) -> None:
        if self.vault_gone:
            raise VaultGoneError(f"Vault (pid {self._vault_pid}) exited while the plugin was starting")

    def _check_child(self, target: str) -> None:
        """go-plugin's Ping on our own channel, kept for a graceful Shutdown on SIGTERM."""
        import grpc
        from grpc_health.v1 import health_pb2, health_pb2_grpc

        from shim.goplugin.errors import ConnectError

        self._channel = grpcutil.new_channel(target)
        try:
            reply = health_pb2_grpc.HealthStub(self._channel).Check(
                health_pb2.HealthCheckRequest(service="plugin"), timeout=self.child.health_timeout,
                wait_for_ready=True)
        except grpc.RpcError as exc:
            raise ConnectError(f"health check of the plugin failed: {exc.code().name}: {exc.details()}") from None
        if reply.status != health_pb2.HealthCheckResponse.SERVING:
            raise ConnectError(f"plugin reports health status {reply.status}, not SERVING")

    def _public_socket(self, path: str) -> None:
        if os.path.dirname(path) != self.base:  # in Vault's socket dir: record it for the janitor
            self.janitor.add("file", path)

    async def _watch_child(self, gen: Generation) -> None:
        loop = asyncio.get_running_loop()
        gen.exit = exited = loop.create_future()
        gen.loop_pidfd = pidfd = os.dup(gen.child._pidfd)  # ours: the child closes its own on reaping
        if gen is self.current:
            self._child_exit, self._loop_pidfd = exited, pidfd

        def child_exited():
            loop.remove_reader(pidfd)
            if not exited.done():
                exited.set_result(None)

        loop.add_reader(pidfd, child_exited)

    async def _unwatch_child(self, gen: Generation) -> None:
        if gen.loop_pidfd is not None:
            asyncio.get_running_loop().remove_reader(gen.loop_pidfd)
            os.close(gen.loop_pidfd)
            gen.loop_pidfd = None
        if gen.exit is not None and not gen.exit.done():
            gen.exit.set_result(None)

    def _route(self, tls: asyncio.Transport, early: bytes, conns: set) -> None:
        """ServerFront hands over each accepted TLS connection from Vault."""
        RoutedConnection(self, tls, early, conns)

    def vault_shutdown(self) -> None:
        """Vault called GRPCController/Shutdown: the call goes on to the child."""
        self._vault_shutdown = True
        self.request_stop()

    async def explain(self, gen: Generation | None = None) -> str:
        """Why a child's connection ended, for the calls still open toward Vault. A
        dying plugin's connection can break a moment before its exit status is there:
        wait for it briefly (EXIT_WAIT)."""
        gen = gen or self.current
        exited = gen.exit if gen is not None else self._child_exit
        if exited is not None and not exited.done():
            try:
                await asyncio.wait_for(asyncio.shield(exited), EXIT_WAIT)
            except asyncio.TimeoutError:
                pass
        # The process decides, not the future: on a loaded machine the timeout can fire in
        # the loop turn that would resolve it. A child that died by itself has its exit
        # noted before the launcher reaps it; one we stop has no note and is "stopping".
        if gen is not None:
            note = gen.exit_note or (self._exit_note if gen.child is self.child else None)
            if note is None and not self._stopping:
                detail = gen.child.exit_detail()
                note = None if detail in ("still running", "not started") else detail
            if note is not None:
                return f"vault-plugin-shim: the plugin process exited during the call ({note})"
        if self._stopping:
            return "vault-plugin-shim: the plugin is stopping"
        return "vault-plugin-shim: the plugin closed its connection"

    # hot swap (shim.launch.swap.Host) ----------------------------------------------

    def _others(self) -> list[Generation]:
        with self._gen_lock:
            return [g for g in self.generations if g is not self.current]

    def start_generation(self, fd: int, argv: list[str], label: str, start_timeout: float) -> Generation:
        """Start a verified version next to the running one (not routed to yet): its own
        directory, its group on the janitor's ledger, our own connection to it, its broker
        stream (we are its host) and its stdio read. Raises what the start raises."""
        if self._stopping or self.vault_gone:
            raise GoPluginError("the launcher is stopping")
        child_dir = tempfile.mkdtemp(prefix="c", dir=self.base)
        logging.getLogger("shim.goplugin.client").addFilter(_no_stdio_warning)
        child = Child(fd, argv, self.env, child_dir, start_timeout=start_timeout,
                      on_spawn=lambda pid: self.janitor.add("pgid", pid), name=self.name, exe_dir=self.base,
                      on_conninfo=self._late_conninfo)
        try:
            child.connect()
        except BaseException:
            child.terminate()
            if child.pid is not None:
                self.janitor.remove("pgid", child.pid)
            shutil.rmtree(child_dir, ignore_errors=True)
            raise
        gen = Generation(child, child.line, label, child_dir)
        gen.channel, gen.own_channel = child.channel, False
        with self._gen_lock:
            self.generations.append(gen)
        run_in_loop(self._watch_child(gen), timeout=10)
        return gen

    def vault_conninfo(self, info: ConnInfo) -> None:
        """Vault announced a broker id on the broker stream a swap kept (a mount set up after
        the swap, already bridged by :class:`BrokerBridge`): pass it to the current child on
        the broker stream we host for it, as a swap's replay does (loop thread)."""
        broker = getattr(self.current.child, "broker", None)
        if broker is None:
            log.warning("Vault announced broker id %d, but the plugin process has no broker stream of ours; ignored",
                        info.service_id)
            return
        broker.announce(info)

    def _late_conninfo(self, info: ConnInfo) -> None:
        log.warning("a swapped-in plugin announced broker id %d; Vault cannot be told after a swap, ignored",
                    info.service_id)

    def announce_vault_broker(self, gen: Generation, broker_id: int) -> None:
        """Make Vault's broker id ``broker_id`` (Storage, SystemView of Setup) dialable for
        ``gen``: announce our front to Vault's listener on its broker stream."""
        from shim.launch.swap import SwapError

        front = self.bridge.vault_ids.get(broker_id)
        if front is None:
            raise SwapError(f"Vault's broker id {broker_id} (from its Setup) was never announced to this launcher")
        gen.child.broker.announce(ConnInfo(broker_id, "unix", front.path))

    def switch(self, gen: Generation, generation: int) -> Generation | None:
        """Route new Vault connections to ``gen`` and ask the old ones to move; None (and
        nothing changed) when Vault started a set-up call since ``generation``."""
        return run_in_loop(self._switch(gen, generation), timeout=10)

    async def _switch(self, gen: Generation, generation: int) -> Generation | None:
        capture = self.capture
        if capture is not None and (capture.generation != generation or capture.in_flight):
            return None
        if self._stopping or self.vault_gone:
            return None
        old = self.current
        self.current = gen
        self.child, self.child_address, self._channel = gen.child, gen.address, gen.channel
        self._child_exit, self._loop_pidfd, self._exit_note = gen.exit, gen.loop_pidfd, None
        for conn in list(old.routed):
            conn.goaway()
        try:
            os.write(self._wake_w, b"s")  # wait() watches the new child from now on
        except BlockingIOError:
            pass
        return old

    def drain(self, old: Generation, timeout: float, reason: str) -> tuple[int, int]:
        """Wait until ``old`` has no call open (at most ``timeout``), then end what is left
        on its connections with UNAVAILABLE and ``reason``: (calls drained, calls cut)."""
        return run_in_loop(self._drain(old, timeout, reason), timeout=timeout + 15)

    async def _drain(self, old: Generation, timeout: float, reason: str) -> tuple[int, int]:
        loop = asyncio.get_running_loop()
        _, done_before = old.calls()
        deadline = loop.time() + timeout
        while old.calls()[0] and loop.time() < deadline and not old.child.exited():
            await asyncio.sleep(0.02)
        cut, done = old.calls()
        message = reason if not cut else f"{reason}; the call was still open {timeout:g} s after the switch"
        conns = [conn for conn in list(old.routed) if not conn.hold_broker()]
        for conn in conns:
            await conn.finish(message)
        if conns:
            await asyncio.wait([conn.closed for conn in conns], timeout=CLOSE_GRACE)
        return done - done_before, cut

    def retire(self, old: Generation, plan) -> None:
        """End a drained generation as Vault would end a mount: Cleanup (or the database's
        Close) for each set-up it had, GRPCController/Shutdown, then its group is killed."""
        import grpc

        from shim.goplugin import h2capture as cap
        from shim.goplugin._proto import grpc_controller_pb2, grpc_controller_pb2_grpc

        teardown = {cap.SETUP: cap.CLEANUP, cap.DB_INITIALIZE: cap.DB_CLOSE}
        if old.channel is not None and not old.child.exited():
            for call in plan.replay:
                path = teardown.get(call.path)
                if path is None:
                    continue
                try:
                    old.channel.unary_unary(path)(b"", timeout=self.child_grace, metadata=call.metadata or None)
                except grpc.RpcError as exc:
                    log.debug("%s on the retired plugin ended with %s", path, exc.code().name)
            try:
                grpc_controller_pb2_grpc.GRPCControllerStub(old.channel).Shutdown(
                    grpc_controller_pb2.Empty(), timeout=self.child_grace)
            except grpc.RpcError as exc:
                log.debug("Shutdown of the retired plugin ended with %s", exc.code().name)
            with selectors.DefaultSelector() as sel:
                sel.register(old.child._pidfd, selectors.EVENT_READ)
                sel.select(self.child_grace)
        self.discard(old)

    def discard(self, gen: Generation) -> None:
        """Kill a generation that is not current (a refused version, or a retired one) and
        remove what it had."""
        if gen is self.current:
            raise GoPluginError("refusing to discard the current plugin process")
        try:
            run_in_loop(self._unwatch_child(gen), timeout=10)
        except Exception as exc:
            log.debug("unwatching a retired plugin: %s", exc)
        gen.note_exit()
        pid = gen.child.pid
        gen.child.terminate()
        if gen.own_channel and gen.channel is not None:
            gen.channel.close()
        if pid is not None:
            self.janitor.remove("pgid", pid)
        shutil.rmtree(gen.dir, ignore_errors=True)
        with self._gen_lock:
            if gen in self.generations:
                self.generations.remove(gen)

    # running -----------------------------------------------------------------------

    def announce(self) -> None:
        data = (self.line.format() + "\n").encode("ascii")
        try:
            while data:
                data = data[os.write(1, data):]
        except BrokenPipeError as exc:  # nobody reads our stdout: Vault is gone
            self.vault_gone = True
            raise VaultGoneError("Vault closed the plugin's stdout before the handshake line") from exc

    def request_stop(self) -> None:
        """Vault's Shutdown (or SIGTERM): stop the child gracefully, then exit 0."""
        self._stopping = True
        try:
            os.write(self._wake_w, b"x")
        except BlockingIOError:
            pass

    def wait(self) -> int:
        """Block until Vault shuts us down (0) or the current child dies (1). A swap
        changes which child that is (it pokes the wake pipe)."""
        while True:
            child = self.child
            with selectors.DefaultSelector() as sel:
                sel.register(self._wake_r, selectors.EVENT_READ, "wake")
                sel.register(child._pidfd, selectors.EVENT_READ, "child")
                events = sel.select()
            if any(key.data == "wake" for key, _ in events):
                try:
                    os.read(self._wake_r, 64)
                except BlockingIOError:
                    pass
            if self._stopping or self.vault_gone:
                break
            if child is self.child and child.exited():
                break
        self._note_exit()
        if self.vault_gone:
            return 1
        if self._stopping:
            return 0
        hclog.error("vault-plugin-shim: the plugin process exited unexpectedly; stopping, so that Vault "
                    "restarts the plugin", pid=self.child.pid, status=self.child.exit_detail(),
                    last_stderr=" | ".join(list(self.child.stderr_tail)[-5:]))
        return 1

    # tear-down ---------------------------------------------------------------------

    def _note_exit(self) -> None:
        """Keep the exit status for messages: only close() reaps the child (this thread)."""
        if self._exit_note is None and self.child is not None and self.child.exited():
            self._exit_note = self.child.exit_detail()

    def _stop_child(self) -> None:
        """Graceful when asked: Vault's own Shutdown already reached the child, or we send
        one (SIGTERM); wait ``child_grace`` for the exit, then SIGKILL the group."""
        child = self.child
        if self._stopping and child.proc is not None and not child.exited():
            if not self._vault_shutdown and self._channel is not None:
                import grpc

                from shim.goplugin._proto import grpc_controller_pb2, grpc_controller_pb2_grpc
                try:
                    grpc_controller_pb2_grpc.GRPCControllerStub(self._channel).Shutdown(
                        grpc_controller_pb2.Empty(), timeout=self.child_grace)
                except grpc.RpcError as exc:
                    log.debug("Shutdown call ended with %s", exc.code().name)
            with selectors.DefaultSelector() as sel:
                sel.register(child._pidfd, selectors.EVENT_READ)
                if not sel.select(self.child_grace):
                    log.warning("plugin failed to exit gracefully")
        self._note_exit()
        child.terminate()

    def close(self) -> None:
        """Stop everything; safe to call at any point of start()."""
        if self.swapper is not None:
            self.swapper.stop()
        for gen in self._others():
            self.discard(gen)
        if self.child is not None:
            self._stop_child()
        if self._channel is not None:
            self._channel.close()
        if self.routed or self._loop_pidfd is not None or self._parent_pidfd is not None:
            try:
                run_in_loop(self._finish(), timeout=10)
            except Exception as exc:  # never let a stuck connection keep sockets around
                log.warning("routed connections did not stop cleanly: %s", exc)
        for part in (self.front, self.bridge):
            if part is not None:
                part.close()
        if self.base is not None:
            shutil.rmtree(self.base, ignore_errors=True)
        if self.janitor is not None:
            if self.child is not None and self.child.pid is not None:
                self.janitor.remove("pgid", self.child.pid)
            self.janitor.close()
        for fd in (self._wake_r, self._wake_w, self._group_pidfd):
            if fd is not None:
                os.close(fd)

    async def _finish(self) -> None:
        """End Vault's open calls with a reason and flush, before the front aborts the rest."""
        if self._parent_pidfd is not None:
            asyncio.get_running_loop().remove_reader(self._parent_pidfd)
            os.close(self._parent_pidfd)
            self._parent_pidfd = None
        if self._loop_pidfd is not None:
            loop = asyncio.get_running_loop()
            loop.remove_reader(self._loop_pidfd)
            os.close(self._loop_pidfd)
            self._loop_pidfd = None
            if self._child_exit is not None and not self._child_exit.done():
                self._child_exit.set_result(None)
        conns = list(self.routed)  # only routed connections: the front aborts the rest
        for conn in conns:
            await conn.finish()
        if conns:
            await asyncio.wait([conn.closed for conn in conns], timeout=CLOSE_GRACE)


def run(fd: int, argv: list[str], vault_env: Mapping[str, str], *, start_timeout: float = START_TIMEOUT,
        plugin: str = "plugin", signals: bool = True, name: str | None = None, hot_swap=None) -> int:
    """Proxy mode's main: returns the launcher's exit code. ``plugin`` names the plugin in
    messages; ``name`` is what its process is called (``comm``), by default the file name
    of ``argv[0]``. ``hot_swap`` (:class:`shim.launch.swap.Options`) turns hot swap on: once
    Vault has our handshake line, the plugins directory is watched (and rescanned on SIGHUP)."""
    root = logging.getLogger()
    if not root.handlers:
        handler = HclogHandler()
        handler.setLevel(logging.WARNING)
        root.addHandler(handler)
    proxy = Proxy(fd, argv, vault_env, start_timeout=start_timeout, name=name,
                  capture=None if hot_swap is None else hot_swap.capture())
    main_thread = signals and threading.current_thread() is threading.main_thread()
    if main_thread:
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # the host's group gets Ctrl-C too; it stops us itself
        signal.signal(signal.SIGTERM, lambda *_: proxy.request_stop())
        if hot_swap is not None:  # before: SIGHUP's default would end us
            signal.signal(signal.SIGHUP, lambda *_: proxy.swapper is not None and proxy.swapper.request_rescan())
    try:
        try:
            proxy.start()
        except ExecRefusedError:
            raise  # the memfd cannot be executed here: the caller retries with a private copy
        except (GoPluginError, OSError) as exc:
            if proxy.vault_gone:  # whatever broke, it broke because Vault went away
                hclog.warn(f"vault-plugin-shim: {plugin} not started: Vault has exited")
                return 1
            fields = exc.fields() if isinstance(exc, GoPluginError) else {"reason": str(exc)}
            hclog.error(f"vault-plugin-shim: cannot start {plugin} in proxy mode: "
                        f"{getattr(exc, 'reason', None) or exc}", **fields)
            return 1
        try:
            proxy.announce()
        except VaultGoneError:
            return 1
        if hot_swap is not None:
            proxy.swapper = hot_swap.swapper(proxy)
            proxy.swapper.start()
        return proxy.wait()
    finally:
        proxy.close()
