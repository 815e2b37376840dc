"""Proxy mode: serve go-plugin to Vault ourselves and route its HTTP/2 to the verified plugin.


Vault -> [mTLS, our ServerFront] -> HTTP/2 frame router -> plugin child (plaintext,
private socket), one child connection per Vault connection. This module is the launcher's
main for proxy mode (:func:`run`) and the :class:`Proxy` that sets everything up, watches
it and tears it down; each other job has its module:

* :mod:`shim.launch.environment`: what Vault set in our environment, read once;
* :mod:`shim.launch.child`: the plugin process, started from the sealed memfd;
* :mod:`shim.launch.relay`: one Vault connection spliced onto one child connection;
* :mod:`shim.launch.bridge`: GRPCBroker ids bridged both ways;
* :mod:`shim.launch.generations`: each plugin child and what routes to it;
* :mod:`shim.launch.swaphost`: what a hot swap asks of the proxy.

In order:

1. a :class:`~shim.goplugin.janitor.Janitor` records everything we create, so even a
   SIGKILL of the launcher leaves no socket, key file or process behind;
2. the child starts from the sealed memfd (:class:`~shim.launch.child.Child`) with
   Vault's env minus what we own; its handshake line gives the app protocol version;
   one health check over plaintext gRPC tells that it serves;
3. each TLS connection from Vault is spliced frame by frame onto a new connection to the
   child (:class:`~shim.launch.relay.RoutedConnection` around the sans-I/O
   :class:`~shim.goplugin.h2route.Router`): the child answers every call itself,
   go-plugin's own services included (health, GRPCStdio, GRPCController), so metadata,
   deadlines, cancellation, status and trailers pass untouched;
4. each ConnInfo the router sees on the broker stream, either way, the relay has rewritten
   (:class:`~shim.launch.bridge.BrokerBridge`): the child's listeners get an mTLS front
   for Vault, Vault's get a plaintext front;
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
import threading
from typing import Mapping

# gRPC's fork handlers restart its event-engine threads in a forked child. The launcher forks
# to start the plugin (a preexec_fn sets PR_SET_PDEATHSIG, see shim.launch.child), and the
# child closes every other descriptor before exec; such a thread then meets a closed epoll fd
# and aborts the child ("Epoll1Poller ... epoll_wait error: Bad file descriptor", SIGABRT)
# before it can exec the plugin. No child of the launcher uses gRPC: turn them off before grpc
# is imported. The plugin's environment is Vault's, kept apart (VaultEnvironment.for_child),
# so this does not reach it.
os.environ["GRPC_ENABLE_FORK_SUPPORT"] = "0"

from shim.goplugin import grpcutil, handshake as hs, hclog, mtls  # noqa: E402
from shim.goplugin.broker import ConnInfo
from shim.goplugin.errors import Diagnostic, GoPluginError, TLSSetupError
from shim.goplugin.janitor import Janitor
from shim.goplugin.procgroup import signal_group
from shim.goplugin.server import HclogHandler, apply_socket_group
from shim.goplugin.tlsfront import ServerFront, private_dir, run_in_loop
from shim.launch.bridge import BrokerBridge
from shim.launch.child import EXIT_WAIT, Child
from shim.launch.environment import VaultEnvironment
from shim.launch.errors import ExecRefusedError, VaultGoneError
from shim.launch.generations import Generation
from shim.launch.relay import RoutedConnection, finish_all

log = logging.getLogger(__name__)

START_TIMEOUT = 50.0     # below Vault's 1 minute, so our error is the one Vault logs
CHILD_GRACE = 1.0        # Vault SIGKILLs us 2 s after Shutdown; leave room for our own cleanup
MAX_SOCKET_PATH = 107    # sun_path is 108 bytes with the terminating NUL


class Proxy:
    """Everything proxy mode runs, in the order :meth:`run` sets it up and tears it down."""

    def __init__(self, fd: int, argv: list[str], vault: VaultEnvironment, *,
                 start_timeout: float = START_TIMEOUT, child_grace: float = CHILD_GRACE,
                 name: str | None = None, capture=None):
        """``capture`` (a :class:`~shim.launch.capture.SetupCapture`) turns on what a hot
        swap needs: every routed connection shows it the set-up calls."""
        self.fd, self.argv, self.name = fd, list(argv), name
        self.vault = vault
        self.capture = capture
        self.current: Generation | None = None     # where new Vault connections go
        self.generations: list[Generation] = []   # every child alive: current, starting, retiring
        self._gen_lock = threading.Lock()
        self.start_timeout, self.child_grace = start_timeout, child_grace
        self.janitor: Janitor | None = None
        self.base: str | None = None
        self.child: Child | None = None            # the current child (the launch's, while it starts)
        self.bridge: BrokerBridge | None = None
        self.front: ServerFront | None = None
        self.line: hs.HandshakeLine | None = None
        self.routed: set[RoutedConnection] = set()  # live routed connections (loop thread)
        self._wake_r, self._wake_w = os.pipe2(os.O_CLOEXEC | os.O_NONBLOCK)
        self._stopping = False
        self._vault_shutdown = False
        self.vault_gone = False
        self._vault_pid: int | None = None
        self._parent_pidfd: int | None = None  # Vault, watched on the loop thread
        self._group_pidfd: int | None = None   # the child's group, for a stop from the loop thread
        self.swapper = None                  # shim.launch.swap.Swapper when hot swap is on

    # set-up ------------------------------------------------------------------------

    def start(self) -> hs.HandshakeLine:
        """Everything up to (not including) printing our handshake line."""
        if not self.vault.client_cert:
            raise TLSSetupError(f"proxy mode needs Vault's AutoMTLS certificate, but {hs.ENV_CLIENT_CERT} "
                                "is not set", fix="run Vault with AutoMTLS (the default since Vault 1.12), "
                                                  "or build the launcher with --mode exec")
        vault_der = mtls.cert_der_from_pem(self.vault.client_cert)
        self._watch_vault()
        self.janitor = Janitor()
        self.base = private_dir("vps.", self.vault.tmpdir)
        self.janitor.add("dir", self.base)
        child_dir = os.path.join(self.base, "c")
        os.mkdir(child_dir, 0o700)
        longest = os.path.join(child_dir, "goplugin-dial.12345678", "front.sock")  # see ClientFront
        if len(longest.encode()) > MAX_SOCKET_PATH:
            raise GoPluginError(f"the temp directory {os.path.dirname(self.base)} is too deep for unix "
                                f"socket paths (at most {MAX_SOCKET_PATH} bytes)",
                                fix="point TMPDIR in the plugin's catalog env at a shorter directory")

        identity = mtls.generate_identity()
        public_dir = self.vault.socket_dir or self.base
        self.bridge = BrokerBridge(identity, vault_der, private=self.base, public=public_dir,
                                   on_public_socket=self._public_socket)
        self._check_vault()
        self.child = child = Child(self.fd, self.argv, self.vault, child_dir, start_timeout=self.start_timeout,
                                   on_spawn=self._spawned, name=self.name, exe_dir=self.base)
        child_line = child.start()
        self._check_vault()
        gen = self.current = Generation(child, child_line, os.path.basename(self.argv[0]), child_dir)
        self.generations.append(gen)
        self._check_child(grpcutil.grpc_target(child_line.network, child_line.address))
        run_in_loop(gen.watch(), timeout=10)

        public = os.path.join(public_dir, f"plugin{secrets.randbelow(10**9):09d}")
        self._public_socket(public)
        self.front = ServerFront(public, None, self.bridge.server_ctx, vault_der, route=self._route)
        apply_socket_group(public, self.vault.socket_group)
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

        channel = self.current.channel = grpcutil.new_channel(target)
        try:
            reply = health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(service="plugin"), timeout=self.child.health_timeout,
                wait_for_ready=True)
        except grpc.RpcError as exc:
            raise ConnectError(f"health check of the plugin failed: {exc.code().name}: {exc.details()}") from None
        if reply.status != health_pb2.HealthCheckResponse.SERVING:
            raise ConnectError(f"plugin reports health status {reply.status}, not SERVING")

    def _public_socket(self, path: str) -> None:
        if os.path.dirname(path) != self.base:  # in Vault's socket dir: record it for the janitor
            self.janitor.add("file", path)

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
        exited = gen.exit if gen is not None else None
        if exited is not None and not exited.done():
            try:
                await asyncio.wait_for(asyncio.shield(exited), EXIT_WAIT)
            except asyncio.TimeoutError:
                pass
        # The process decides, not the future: on a loaded machine the timeout can fire in
        # the loop turn that would resolve it. A child that died by itself has its exit
        # noted before the launcher reaps it; one we stop has no note and is "stopping".
        if gen is not None:
            note = gen.exit_note
            if note is None and not self._stopping:
                detail = gen.child.exit_detail()
                note = None if detail in ("still running", "not started") else detail
            if note is not None:
                return f"vault-plugin-shim: the plugin process exited during the call ({note})"
        if self._stopping:
            return "vault-plugin-shim: the plugin is stopping"
        return "vault-plugin-shim: the plugin closed its connection"

    # generations (a hot swap's, through shim.launch.swaphost) -------------------------

    @property
    def stopping(self) -> bool:
        """Stopping, or Vault is gone: no new child, no switch."""
        return self._stopping or self.vault_gone

    def adopt(self, gen: Generation) -> None:
        """A child started next to the current one: tear it down with us, watch its exit."""
        with self._gen_lock:
            self.generations.append(gen)
        run_in_loop(gen.watch(), timeout=10)

    def make_current(self, gen: Generation) -> Generation:
        """Loop thread: new Vault connections go to ``gen`` from now on, and :meth:`wait`
        watches its child. Returns the generation that was current."""
        old, self.current, self.child = self.current, gen, gen.child
        try:
            os.write(self._wake_w, b"s")
        except BlockingIOError:
            pass
        return old

    def vault_conninfo(self, info: ConnInfo) -> None:
        """Vault announced a broker id on the broker stream a swap kept (a mount set up after
        the swap, already bridged by :class:`~shim.launch.bridge.BrokerBridge`): pass it to
        the current child on the broker stream we host for it, as a swap's replay does (loop
        thread)."""
        broker = getattr(self.current.child, "broker", None)
        if broker is None:
            log.warning("Vault announced broker id %d, but the plugin process has no broker stream of ours; ignored",
                        info.service_id)
            return
        broker.announce(info)

    def _others(self) -> list[Generation]:
        with self._gen_lock:
            return [g for g in self.generations if g is not self.current]

    def discard(self, gen: Generation) -> None:
        """Kill a generation that is not current (a refused version, or a retired one) and
        remove what it had."""
        if gen is self.current:
            raise GoPluginError("refusing to discard the current plugin process")
        try:
            run_in_loop(gen.unwatch(), timeout=10)
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
                sel.register(child.pidfd, selectors.EVENT_READ, "child")
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
        if self.current is not None:
            self.current.note_exit()

    def _stop_child(self) -> None:
        """Graceful when asked: Vault's own Shutdown already reached the child, or we send
        one (SIGTERM); wait ``child_grace`` for the exit, then SIGKILL the group."""
        child = self.child
        channel = self.current.channel if self.current is not None else None
        if self._stopping and child.proc is not None and not child.exited():
            if not self._vault_shutdown and channel is not None:
                import grpc

                from shim.goplugin.protos import grpc_controller_pb2, grpc_controller_pb2_grpc
                try:
                    grpc_controller_pb2_grpc.GRPCControllerStub(channel).Shutdown(
                        grpc_controller_pb2.Empty(), timeout=self.child_grace)
                except grpc.RpcError as exc:
                    log.debug("Shutdown call ended with %s", exc.code().name)
            with selectors.DefaultSelector() as sel:
                sel.register(child.pidfd, selectors.EVENT_READ)
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
        current = self.current
        if current is not None and current.channel is not None:
            current.channel.close()
        if self.routed or (current is not None and current.loop_pidfd is not None) or self._parent_pidfd is not None:
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
        if self.current is not None:
            await self.current.unwatch()
        # only routed connections: the front aborts the rest
        await finish_all(list(self.routed))


def run(fd: int, argv: list[str], vault_env: VaultEnvironment | Mapping[str, str], *,
        start_timeout: float = START_TIMEOUT, plugin: str = "plugin", signals: bool = True, name: str | None = None,
        hot_swap=None) -> int:
    """Proxy mode's main: returns the launcher's exit code. ``vault_env`` is the environment
    Vault gave the launcher, as the launch read it (:class:`~shim.launch.environment.VaultEnvironment`),
    or as a mapping, read here.
    ``plugin`` names the plugin in messages; ``name`` is what its process is called (``comm``),
    by default the file name of ``argv[0]``. ``hot_swap`` (:class:`shim.launch.swap.Options`)
    turns hot swap on: once Vault has our handshake line, the plugins directory is watched
    (and rescanned on SIGHUP)."""
    root = logging.getLogger()
    if not root.handlers:
        handler = HclogHandler()
        handler.setLevel(logging.WARNING)
        root.addHandler(handler)
    vault = vault_env if isinstance(vault_env, VaultEnvironment) else VaultEnvironment.parse(vault_env)
    proxy = Proxy(fd, argv, vault, start_timeout=start_timeout, name=name,
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
        except (GoPluginError, VaultGoneError, OSError) as exc:
            if proxy.vault_gone:  # whatever broke, it broke because Vault went away
                hclog.warn(f"vault-plugin-shim: {plugin} not started: Vault has exited")
                return 1
            fields = exc.fields() if isinstance(exc, Diagnostic) else {"reason": str(exc)}
            hclog.error(f"vault-plugin-shim: cannot start {plugin} in proxy mode: "
                        f"{getattr(exc, 'reason', None) or exc}", **fields)
            return 1
        try:
            proxy.announce()
        except VaultGoneError:
            return 1
        if hot_swap is not None:
            from shim.launch.swaphost import SwapHost

            proxy.swapper = hot_swap.swapper(SwapHost(proxy))
            proxy.swapper.start()
        return proxy.wait()
    finally:
        proxy.close()
