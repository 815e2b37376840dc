"""Proxy mode: serve go-plugin to Vault ourselves and relay to the verified plugin.

Vault -> [mTLS, our ServerFront] -> relay (grpc.aio, raw bytes) -> plugin child (plaintext,
private socket). In order:

1. a :class:`~shim.goplugin.janitor.Janitor` records everything we create, so even a
   SIGKILL of the launcher leaves no socket, key file or process behind;
2. the child starts from the sealed memfd (:class:`~shim.goplugin.child.Child`) with
   Vault's env minus what we own; its handshake line gives the app protocol version;
3. go-plugin's own services (health, GRPCController, GRPCStdio, GRPCBroker) are ours: a
   plaintext :class:`~shim.goplugin.server.PluginServer` on a private socket;
4. the relay forwards every call as raw bytes, unary and streaming alike: ours to that
   server, everything else to the child, with metadata, deadline, cancellation, status,
   details and trailing metadata;
5. broker ids are bridged both ways by rewriting ConnInfo (:class:`BrokerBridge`);
6. then our handshake line, and wait: Vault's Shutdown stops the child gracefully; the
   child's death makes us exit 1 at once, so Vault's reload path takes over.

Why plaintext to the child: see README "Threat model" (proxy mode).
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
from typing import Awaitable, Callable, Mapping

import grpc

from .. import hclog
from . import grpcutil, handshake as hs, mtls
from .broker import ConnInfo
from .child import Child, ExecRefusedError
from .errors import GoPluginError, TLSSetupError
from .janitor import Janitor
from .server import HclogHandler, PluginServer
from .tlsfront import ClientFront, ServerFront, private_dir, run_in_loop

log = logging.getLogger(__name__)

START_TIMEOUT = 50.0     # below Vault's 1 minute, so our error is the one Vault logs
CHILD_GRACE = 1.0        # Vault SIGKILLs us 2 s after Shutdown; leave room for our own cleanup
RELAY_GRACE = 0.5
EXIT_WAIT = 0.2          # how long an UNAVAILABLE call waits to learn whether the plugin died
MAX_SOCKET_PATH = 107    # sun_path is 108 bytes with the terminating NUL
OWNED = ("/grpc.health.v1.Health/", "/plugin.GRPCController/", "/plugin.GRPCStdio/",
         "/plugin.GRPCBroker/")
_REQUEST_SKIP = frozenset({"user-agent", "te", "content-type", "host", "connection"})
_MAX_CACHED_METHODS = 4096


# --- the relay (pure helpers first) -----------------------------------------------------

def owned(method: str) -> bool:
    """go-plugin's own services are answered by the launcher, not the plugin."""
    return method.startswith(OWNED)


def request_metadata(md) -> tuple[tuple[str, str | bytes], ...]:
    """What a caller sent, minus transport headers grpc sets itself (``multiplex_id`` and
    any other application metadata pass)."""
    return tuple((k, v) for k, v in (md or ()) if not k.startswith((":", "grpc-")) and k not in _REQUEST_SKIP)


def response_metadata(md) -> tuple[tuple[str, str | bytes], ...]:
    """Headers and trailers to pass back; ``grpc-status-details-bin`` (rich status
    details) must pass, the status itself is set separately."""
    return tuple((k, v) for k, v in (md or ())
                 if not k.startswith(":") and k not in ("grpc-status", "grpc-message"))


class Relay(grpc.GenericRpcHandler):
    """One grpc.aio handler for every method: a stream-stream relay of raw bytes.

    On the wire a unary call is a stream with one message each way, so relaying every
    method as stream-stream, without (de)serializers, is transparent for both kinds.
    """

    def __init__(self, route: Callable[[str], grpc.aio.Channel],
                 explain: Callable[[grpc.StatusCode, str], Awaitable[str]] | None = None):
        self.route = route
        self.explain = explain
        self._handlers: dict[str, grpc.RpcMethodHandler] = {}

    def service(self, handler_call_details):
        method = handler_call_details.method
        handler = self._handlers.get(method)
        if handler is None:
            async def relay(request_iterator, context, method=method):
                await self.relay(method, request_iterator, context)
            handler = grpc.stream_stream_rpc_method_handler(relay)
            if len(self._handlers) < _MAX_CACHED_METHODS:
                self._handlers[method] = handler
        return handler

    async def relay(self, method: str, request_iterator, context) -> None:
        channel = self.route(method)
        call = channel.stream_stream(method)(metadata=request_metadata(context.invocation_metadata()),
                                             timeout=context.time_remaining())

        async def pump():
            try:
                async for request in request_iterator:
                    await call.write(request)
                await call.done_writing()
            except (grpc.RpcError, asyncio.InvalidStateError, grpc.aio.UsageError):
                pass  # the call already ended; its status tells the caller why

        pump_task = asyncio.ensure_future(pump())
        try:
            headers = await call.initial_metadata()
            if headers:
                await context.send_initial_metadata(response_metadata(headers))
            try:
                while (response := await call.read()) is not grpc.aio.EOF:
                    await context.write(response)
                code, details = await call.code(), await call.details()
                trailers = await call.trailing_metadata()
            except grpc.aio.AioRpcError as exc:
                code, details, trailers = exc.code(), exc.details(), exc.trailing_metadata()
            trailers = response_metadata(trailers)
            if trailers:
                context.set_trailing_metadata(trailers)
            if code != grpc.StatusCode.OK:
                context.set_code(code)
                context.set_details(details if self.explain is None else await self.explain(code, details or ""))
        finally:
            pump_task.cancel()
            call.cancel()  # Vault cancelled (this task was cancelled), or nothing left to do


# --- broker bridging ------------------------------------------------------------------

class BrokerBridge:
    """Rewrites ConnInfo between Vault and the child and relays the connections.

    * Vault serves an id (Storage, SystemView in Setup): its listener speaks mTLS and
      trusts only the certificate we announced. A :class:`ClientFront` gives the child a
      private plaintext socket whose connections we carry over that mTLS to Vault.
    * The child serves an id: Vault must dial it with mTLS against our certificate. A
      :class:`ServerFront` terminates that and relays to the child's plaintext socket.
    """

    def __init__(self, identity: mtls.Identity, vault_der: bytes, *, private: str, public: str,
                 on_public_socket: Callable[[str], None], tmp_base: str):
        self.vault_der = vault_der
        self.private, self.public = private, public
        self.on_public_socket = on_public_socket
        self.server_ctx = mtls.server_context(identity, vault_der, tmp_base=tmp_base)
        self.client_ctx = mtls.client_context(identity, vault_der, tmp_base=tmp_base)
        self.to_child: Callable[[ConnInfo], None] | None = None
        self.to_vault: Callable[[ConnInfo], None] | None = None
        self._fronts: list = []
        self._lock = threading.Lock()
        self._closed = False

    def _keep(self, front) -> bool:
        with self._lock:
            if self._closed:
                front.close()
                return False
            self._fronts.append(front)
            return True

    def from_vault(self, info: ConnInfo) -> None:
        if info.knock is not None and (info.knock.knock or info.knock.ack):
            log.warning("ignoring a multiplexing knock from Vault for broker id %d", info.service_id)
            return
        front = ClientFront(info.network, info.address, self.client_ctx, self.vault_der, base=self.private)
        if self._keep(front) and self.to_child is not None:
            self.to_child(ConnInfo(info.service_id, "unix", front.path))

    def from_child(self, info: ConnInfo) -> None:
        if info.knock is not None and (info.knock.knock or info.knock.ack):
            log.warning("ignoring a multiplexing knock from the plugin for broker id %d", info.service_id)
            return
        if info.network != "unix":
            raise GoPluginError(f"the plugin announced broker id {info.service_id} on {info.network}; "
                                "only unix sockets are relayed")
        path = os.path.join(self.public, f"broker{info.service_id}-{secrets.randbelow(10**9):09d}")
        self.on_public_socket(path)
        front = ServerFront(path, info.address, self.server_ctx, self.vault_der)
        if self._keep(front) and self.to_vault is not None:
            self.to_vault(info.rewrite("unix", path))

    def close(self) -> None:
        with self._lock:
            self._closed = True
            fronts, self._fronts = self._fronts, []
        for front in fronts:
            front.close()


# --- the launcher's proxy ---------------------------------------------------------------

def _apply_socket_group(path: str, group: str | None) -> None:
    if not group:
        return
    import grp
    try:
        gid = int(group) if group.isdigit() else grp.getgrnam(group).gr_gid
        os.chown(path, -1, gid)
        os.chmod(path, 0o660)
    except (KeyError, OSError) as exc:
        raise GoPluginError(f"cannot give socket {path} to group {group!r}: {exc}",
                            fix=f"set {hs.ENV_UNIX_SOCKET_GROUP} to a group this plugin's user is in") from None


class Proxy:
    """Everything proxy mode runs, in the order :meth:`run` sets it up and tears it down."""

    def __init__(self, fd: int, argv: list[str], vault_env: Mapping[str, str], *,
                 start_timeout: float = START_TIMEOUT, child_grace: float = CHILD_GRACE):
        self.fd, self.argv = fd, list(argv)
        self.env = dict(vault_env)
        self.start_timeout, self.child_grace = start_timeout, child_grace
        self.janitor: Janitor | None = None
        self.base: str | None = None
        self.child: Child | None = None
        self.owned: PluginServer | None = None
        self.bridge: BrokerBridge | None = None
        self.front: ServerFront | None = None
        self.line: hs.HandshakeLine | None = None
        self._relay_server = None
        self._loop_pidfd: int | None = None
        self._channels: list = []
        self._wake_r, self._wake_w = os.pipe2(os.O_CLOEXEC | os.O_NONBLOCK)
        self._stopping = False

    # set-up ------------------------------------------------------------------------

    def start(self) -> hs.HandshakeLine:
        """Everything up to (not including) printing our handshake line."""
        client_pem = self.env.get(hs.ENV_CLIENT_CERT)
        if not client_pem:
            raise TLSSetupError(f"proxy mode needs Vault's AutoMTLS certificate, but {hs.ENV_CLIENT_CERT} "
                                "is not set", fix="run Vault with AutoMTLS (the default since Vault 1.12), "
                                                  "or build the launcher with --mode exec")
        vault_der = mtls.cert_der_from_pem(client_pem)
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
                                   on_public_socket=self._public_socket, tmp_base=self.base)
        self.child = child = Child(self.fd, self.argv, self.env, child_dir, start_timeout=self.start_timeout,
                                   on_conninfo=self.bridge.from_child,
                                   on_spawn=lambda pid: self.janitor.add("pgid", pid))
        child_line = child.start()
        child.connect()
        self.bridge.to_child = child.broker.announce

        cookie_key = child.config.cookie_key
        version = child_line.app_version
        self.owned = PluginServer(
            hs.HandshakeConfig(cookie_key, self.env[cookie_key], (version,)),
            environ={cookie_key: self.env[cookie_key], hs.ENV_PROTOCOL_VERSIONS: str(version),
                     hs.ENV_UNIX_SOCKET_DIR: self.base},
            on_shutdown=self.request_stop, on_conninfo=self.bridge.from_vault, max_workers=16)
        owned_line = self.owned.start()
        self.bridge.to_vault = self.owned.broker.announce

        relay_sock = os.path.join(self.base, "relay")
        child_target = grpcutil.grpc_target(child_line.network, child_line.address)
        run_in_loop(self._start_relay(relay_sock, child_target, "unix:" + owned_line.address), timeout=30)
        public = os.path.join(public_dir, f"plugin{secrets.randbelow(10**9):09d}")
        self._public_socket(public)
        self.front = ServerFront(public, relay_sock, self.bridge.server_ctx, vault_der)
        _apply_socket_group(public, self.env.get(hs.ENV_UNIX_SOCKET_GROUP))
        self.janitor.check()
        self.line = hs.HandshakeLine(app_version=version, network="unix", address=public, protocol="grpc",
                                     server_cert=identity.cert_der)
        return self.line

    def _public_socket(self, path: str) -> None:
        if os.path.dirname(path) != self.base:  # in Vault's socket dir: record it for the janitor
            self.janitor.add("file", path)

    async def _start_relay(self, path: str, child_target: str, owned_target: str) -> None:
        child = grpc.aio.insecure_channel(child_target, options=grpcutil.OPTIONS)
        local = grpc.aio.insecure_channel(owned_target, options=grpcutil.OPTIONS)
        self._channels = [child, local]
        loop = asyncio.get_running_loop()
        self._child_exit = exited = loop.create_future()
        self._loop_pidfd = pidfd = os.dup(self.child._pidfd)  # ours: the child closes its own on reaping

        def child_exited():
            loop.remove_reader(pidfd)
            if not exited.done():
                exited.set_result(None)

        loop.add_reader(pidfd, child_exited)
        relay = Relay(lambda method: local if owned(method) else child, self._explain)
        server = grpc.aio.server(options=grpcutil.OPTIONS)
        server.add_generic_rpc_handlers((relay,))
        if server.add_insecure_port("unix:" + path) == 0:
            raise OSError(f"grpc could not listen on unix socket {path}")
        await server.start()
        self._relay_server = server

    async def _explain(self, code: grpc.StatusCode, details: str) -> str:
        """Say so when a call failed because the plugin died. A dying plugin's connection
        can break a moment before its exit status is there: an UNAVAILABLE waits for it
        briefly (EXIT_WAIT), other codes only look."""
        exited = self._child_exit
        if code == grpc.StatusCode.UNAVAILABLE and not exited.done():
            try:
                await asyncio.wait_for(asyncio.shield(exited), EXIT_WAIT)
            except asyncio.TimeoutError:
                pass
        if exited.done():
            return f"vault-plugin-shim: the plugin process exited during the call ({self.child.exit_detail()}): {details}"
        return details

    # running -----------------------------------------------------------------------

    def announce(self) -> None:
        data = (self.line.format() + "\n").encode("ascii")
        while data:
            data = data[os.write(1, data):]

    def request_stop(self) -> None:
        """Vault's Shutdown (or SIGTERM): stop the child gracefully, then exit 0."""
        self._stopping = True
        try:
            os.write(self._wake_w, b"x")
        except BlockingIOError:
            pass

    def wait(self) -> int:
        """Block until Vault shuts us down (0) or the child dies (1)."""
        with selectors.DefaultSelector() as sel:
            sel.register(self._wake_r, selectors.EVENT_READ)
            sel.register(self.child._pidfd, selectors.EVENT_READ)
            while not sel.select():
                pass
        if self._stopping:
            return 0
        hclog.error("vault-plugin-shim: the plugin process exited unexpectedly; stopping, so that Vault "
                    "restarts the plugin", pid=self.child.pid, status=self.child.exit_detail(),
                    last_stderr=" | ".join(list(self.child.stderr_tail)[-5:]))
        return 1

    # tear-down ---------------------------------------------------------------------

    def close(self) -> None:
        """Stop everything; safe to call at any point of start()."""
        if self.child is not None:
            if self._stopping and not self.child.exited():
                self.child.kill(self.child_grace)  # GRPCController.Shutdown, then SIGKILL the group
            else:
                self.child.terminate()
        if self._relay_server is not None or self._channels or self._loop_pidfd is not None:
            try:
                run_in_loop(self._stop_relay(), timeout=10)
            except Exception as exc:  # never let a stuck relay keep sockets around
                log.warning("relay did not stop cleanly: %s", exc)
        for part in (self.front, self.bridge):
            if part is not None:
                part.close()
        if self.owned is not None:
            self.owned.stop(0)
        if self.base is not None:
            shutil.rmtree(self.base, ignore_errors=True)
        if self.janitor is not None:
            if self.child is not None and self.child.pid is not None:
                self.janitor.remove("pgid", self.child.pid)
            self.janitor.close()
        for fd in (self._wake_r, self._wake_w):
            os.close(fd)

    async def _stop_relay(self) -> None:
        if self._loop_pidfd is not None:
            asyncio.get_running_loop().remove_reader(self._loop_pidfd)
            os.close(self._loop_pidfd)
            self._loop_pidfd = None
        if self._relay_server is not None:
            await self._relay_server.stop(RELAY_GRACE)
        for channel in self._channels:
            await channel.close()


def run(fd: int, argv: list[str], vault_env: Mapping[str, str], *, start_timeout: float = START_TIMEOUT,
        plugin: str = "plugin", signals: bool = True) -> int:
    """Proxy mode's main: returns the launcher's exit code."""
    root = logging.getLogger()
    if not root.handlers:
        handler = HclogHandler()
        handler.setLevel(logging.WARNING)
        root.addHandler(handler)
    proxy = Proxy(fd, argv, vault_env, start_timeout=start_timeout)
    if signals and threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # the host's group gets Ctrl-C too; it stops us itself
        signal.signal(signal.SIGTERM, lambda *_: proxy.request_stop())
    try:
        try:
            proxy.start()
        except ExecRefusedError:
            raise  # the memfd cannot be executed here: the caller retries with a private copy
        except (GoPluginError, OSError) as exc:
            fields = exc.fields() if isinstance(exc, GoPluginError) else {"reason": str(exc)}
            hclog.error(f"vault-plugin-shim: cannot start {plugin} in proxy mode: "
                        f"{getattr(exc, 'reason', None) or exc}", **fields)
            return 1
        proxy.announce()
        return proxy.wait()
    finally:
        proxy.close()
