"""The plugin side of go-plugin: serve gRPC the way a go-plugin server does.

:class:`PluginServer` checks the cookie, negotiates the app protocol version, listens
on a unix socket (``PLUGIN_UNIX_SOCKET_DIR`` or a private temp dir), serves AutoMTLS
when ``PLUGIN_CLIENT_CERT`` is set (through a :class:`~shim.goplugin.tlsfront.ServerFront`)
and plaintext otherwise, and registers go-plugin's own services next to the caller's:
``grpc.health.v1.Health`` ("plugin" = SERVING), ``plugin.GRPCController`` (Shutdown),
``plugin.GRPCStdio`` and ``plugin.GRPCBroker``. :func:`serve` is the ``main()`` helper:
it prints the handshake line and blocks until the host shuts the plugin down.
"""

from __future__ import annotations

import collections
import logging
import os
import secrets
import shutil
import signal
import sys
import threading
from dataclasses import dataclass, field
from typing import Callable, Mapping, Sequence

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from . import grpcutil, handshake as hs, mtls
from .protos import (grpc_controller_pb2, grpc_controller_pb2_grpc, grpc_stdio_pb2,
                     grpc_stdio_pb2_grpc)
from .broker import Broker
from .errors import CookieError, GoPluginError, StartError
from .tlsfront import ServerFront, private_dir, track_private_dirs, unlink_quietly

log = logging.getLogger(__name__)

HEALTH_SERVICE = "plugin"
STDIO_BUFFER_LIMIT = 1 << 20


@dataclass
class ServeContext:
    """What a ``register`` callback gets: add servicers to ``server``."""

    server: grpc.Server
    broker: Broker
    version: int
    environ: Mapping[str, str]


# --- GRPCStdio ---------------------------------------------------------------------------

class _Stdio:
    """Captures fds 1/2 into pipes and hands the chunks to the StreamStdio caller.

    Data is kept (up to STDIO_BUFFER_LIMIT bytes, oldest dropped first) until a host
    streams it, and sent once. Unlike a full pipe, a host that never asks cannot block
    the plugin.
    """

    CHANNELS = {1: grpc_stdio_pb2.StdioData.STDOUT, 2: grpc_stdio_pb2.StdioData.STDERR}

    def __init__(self):
        self._cond = threading.Condition()
        self._chunks: collections.deque = collections.deque()
        self._size = 0
        self.dropped = 0
        self._stopping = False

    def capture(self, fd: int) -> None:
        stream = {1: sys.stdout, 2: sys.stderr}[fd]
        try:
            stream.flush()
        except (AttributeError, ValueError, OSError):
            pass
        r, w = os.pipe()
        os.dup2(w, fd)
        os.close(w)
        if fd == 1 and hasattr(sys.stdout, "reconfigure"):
            sys.stdout.reconfigure(line_buffering=True)
        threading.Thread(target=self._pump, args=(r, self.CHANNELS[fd]), daemon=True,
                         name=f"goplugin-stdio-{fd}").start()

    def _pump(self, fd: int, channel: int) -> None:
        while True:
            try:
                data = os.read(fd, 65536)
            except OSError:
                data = b""
            if not data:
                os.close(fd)
                return
            self.feed(channel, data)

    def feed(self, channel: int, data: bytes) -> None:
        with self._cond:
            self._chunks.append((channel, data))
            self._size += len(data)
            while self._size > STDIO_BUFFER_LIMIT and len(self._chunks) > 1:
                _, old = self._chunks.popleft()
                self._size -= len(old)
                self.dropped += len(old)
            self._cond.notify_all()

    def stop(self) -> None:
        with self._cond:
            self._stopping = True
            self._cond.notify_all()

    def servicer(self):
        stdio = self

        class _Servicer(grpc_stdio_pb2_grpc.GRPCStdioServicer):
            def StreamStdio(self, request, context):
                def wake():
                    with stdio._cond:
                        stdio._cond.notify_all()
                context.add_callback(wake)
                while True:
                    with stdio._cond:
                        while not stdio._chunks and not stdio._stopping and context.is_active():
                            stdio._cond.wait()
                        if stdio._stopping or not context.is_active():
                            return
                        chunks = list(stdio._chunks)
                        stdio._chunks.clear()
                        stdio._size = 0
                    for channel, data in chunks:
                        yield grpc_stdio_pb2.StdioData(channel=channel, data=data)

        return _Servicer()


class _Controller(grpc_controller_pb2_grpc.GRPCControllerServicer):
    def __init__(self, on_shutdown: Callable[[], None]):
        self._on_shutdown = on_shutdown

    def Shutdown(self, request, context):
        # Reply first; stopping the server from inside its own handler would wait on us.
        threading.Thread(target=self._on_shutdown, name="goplugin-shutdown", daemon=True).start()
        return grpc_controller_pb2.Empty()


# --- the server ------------------------------------------------------------------------

@dataclass
class _Resources:
    dirs: list[str] = field(default_factory=list)
    sockets: list[str] = field(default_factory=list)
    front: ServerFront | None = None


def apply_socket_group(path: str, group: str | None) -> None:
    """``PLUGIN_UNIX_SOCKET_GROUP``: let that group (the host's) connect to our socket."""
    if not group:
        return
    import grp
    try:
        gid = int(group) if group.isdigit() else grp.getgrnam(group).gr_gid
        os.chown(path, -1, gid)
        os.chmod(path, 0o660)
    except (KeyError, OSError) as exc:
        raise StartError(f"cannot give socket {path} to group {group!r}: {exc}",
                         fix=f"set {hs.ENV_UNIX_SOCKET_GROUP} to a group this plugin's user is in") from None


class PluginServer:
    """A go-plugin gRPC server. ``start()`` -> handshake line; ``wait()`` until stopped.

    ``register(ctx)`` adds the plugin's servicers; ``handlers`` are extra generic RPC
    handlers (a proxy relays everything through one). ``on_shutdown`` runs when the
    host calls GRPCController.Shutdown; the default stops the server gracefully.
    ``on_conninfo`` takes the host's broker announcements (see :class:`Broker`).
    """

    def __init__(self, config: hs.HandshakeConfig,
                 register: Callable[[ServeContext], None] | None = None, *,
                 handlers: Sequence[grpc.GenericRpcHandler] = (),
                 environ: Mapping[str, str] | None = None,
                 max_workers: int = 32,
                 on_shutdown: Callable[[], None] | None = None,
                 capture_stdout: bool = False, capture_stderr: bool = False,
                 shutdown_grace: float = 1.0,
                 on_conninfo: Callable | None = None,
                 cleanup_on_kill: bool = False):
        self.config = config
        self.cleanup_on_kill = cleanup_on_kill
        self._janitor = None
        self.on_conninfo = on_conninfo
        self.register = register
        self.handlers = list(handlers)
        self.environ = dict(os.environ if environ is None else environ)
        self.max_workers = max_workers
        self.on_shutdown = on_shutdown or self.stop
        self.capture = [fd for fd, on in ((1, capture_stdout), (2, capture_stderr)) if on]
        self.shutdown_grace = shutdown_grace
        self.health = health.HealthServicer()
        self.stdio = _Stdio()
        self.broker: Broker | None = None
        self.server: grpc.Server | None = None
        self.line: hs.HandshakeLine | None = None
        self._res = _Resources()
        self._stop_lock = threading.Lock()
        self._stopped = threading.Event()
        self._stopping = False

    def start(self) -> hs.HandshakeLine:
        """Everything up to (not including) printing the handshake line."""
        cookie_error = hs.check_cookie(self.environ, self.config)
        if cookie_error is not None:
            raise cookie_error
        offered = hs.parse_protocol_versions(self.environ.get(hs.ENV_PROTOCOL_VERSIONS))
        for bad in offered.invalid:
            log.warning("host sent invalid plugin version %r in %s", bad, hs.ENV_PROTOCOL_VERSIONS)
        version = hs.negotiate_version(self.config.versions, offered.versions)
        if self.cleanup_on_kill:
            self._start_janitor()
        try:
            self.line = self._start(version)
        except BaseException:
            self._release()
            raise
        return self.line

    def _start(self, version: int) -> hs.HandshakeLine:
        tls = None
        client_pem = self.environ.get(hs.ENV_CLIENT_CERT)
        if client_pem:
            tls = mtls.MTLSPair(mtls.generate_identity(), mtls.cert_der_from_pem(client_pem))
        public = self._public_socket_path()
        self.broker = Broker(tls, socket_dir=self.environ.get(hs.ENV_UNIX_SOCKET_DIR) or None,
                             on_conninfo=self.on_conninfo)
        self.server = server = grpcutil.new_server(self.max_workers, self.handlers)
        self.health.set(HEALTH_SERVICE, health_pb2.HealthCheckResponse.SERVING)
        self.health.set("", health_pb2.HealthCheckResponse.SERVING)
        health_pb2_grpc.add_HealthServicer_to_server(self.health, server)
        grpc_controller_pb2_grpc.add_GRPCControllerServicer_to_server(
            _Controller(self._shutdown_requested), server)
        grpc_stdio_pb2_grpc.add_GRPCStdioServicer_to_server(self.stdio.servicer(), server)
        from .protos import grpc_broker_pb2_grpc
        grpc_broker_pb2_grpc.add_GRPCBrokerServicer_to_server(self.broker.servicer(), server)
        if self.register is not None:
            self.register(ServeContext(server, self.broker, version, self.environ))
        if tls is None:
            grpcutil.bind_unix(server, public)
            self._res.sockets.append(public)
            server.start()
        else:
            inner = private_dir("goplugin-grpc.")
            self._res.dirs.append(inner)
            backend = os.path.join(inner, "grpc.sock")
            grpcutil.bind_unix(server, backend)
            server.start()
            self._res.front = ServerFront(public, backend, tls.server_context(), tls.peer_der)
        apply_socket_group(public, self.environ.get(hs.ENV_UNIX_SOCKET_GROUP))
        return hs.HandshakeLine(app_version=version, network="unix", address=public, protocol="grpc",
                                server_cert=None if tls is None else tls.identity.cert_der)

    def _start_janitor(self) -> None:
        """A SIGKILL from the host runs none of our cleanup: a janitor process removes
        every private directory (and a socket in the host's directory) when we die."""
        from .janitor import Janitor

        self._janitor = janitor = Janitor()
        janitor.check()
        track_private_dirs(lambda path: janitor.add("dir", path))

    def _public_socket_path(self) -> str:
        base = self.environ.get(hs.ENV_UNIX_SOCKET_DIR)
        if base:
            if not os.path.isdir(base):
                raise StartError(f"{hs.ENV_UNIX_SOCKET_DIR}={base} is not a directory",
                                 fix="the host must create the socket directory before starting the plugin")
        else:
            base = private_dir("plugin.")
            self._res.dirs.append(base)
        path = os.path.join(base, f"plugin{secrets.randbelow(10**9):09d}")
        if self._janitor is not None and base == self.environ.get(hs.ENV_UNIX_SOCKET_DIR):
            self._janitor.add("file", path)
        return path

    def announce(self) -> None:
        """Print the handshake line on fd 1, then move stdout/stderr into GRPCStdio."""
        if self.line is None:
            raise RuntimeError("announce() before start()")
        try:
            sys.stdout.flush()
        except (AttributeError, ValueError, OSError):
            pass
        data = (self.line.format() + "\n").encode("utf-8")
        while data:
            data = data[os.write(1, data):]
        for fd in self.capture:
            self.stdio.capture(fd)

    def _shutdown_requested(self) -> None:
        log.debug("host requested shutdown")
        self.on_shutdown()

    def stop(self, grace: float | None = None) -> None:
        """Stop serving, end the streams, remove every socket and directory we made."""
        with self._stop_lock:
            if self._stopping:
                first = False
            else:
                self._stopping = first = True
        if not first:
            self._stopped.wait()
            return
        try:
            self.stdio.stop()
            if self.broker is not None:
                self.broker.close()
            if self.server is not None:
                self.server.stop(self.shutdown_grace if grace is None else grace).wait()
        finally:
            self._release()
            self._stopped.set()

    def _release(self) -> None:
        if self._res.front is not None:
            self._res.front.close()
            self._res.front = None
        for path in self._res.sockets:
            unlink_quietly(path)
        for d in self._res.dirs:
            shutil.rmtree(d, ignore_errors=True)
        self._res = _Resources()
        if self._janitor is not None:
            track_private_dirs(None)
            self._janitor.close()
            self._janitor = None

    def wait(self, timeout: float | None = None) -> bool:
        return self._stopped.wait(timeout)


class HclogHandler(logging.Handler):
    """Python log records as hclog JSON lines on fd 2, which a go-plugin host re-logs."""

    _LEVELS = ((logging.ERROR, "error"), (logging.WARNING, "warn"), (logging.INFO, "info"),
               (logging.DEBUG, "debug"))

    def emit(self, record: logging.LogRecord) -> None:
        from . import hclog

        level = next((name for no, name in self._LEVELS if record.levelno >= no), "trace")
        fields = {"logger": record.name}
        if record.exc_info:
            fields["error"] = logging.Formatter().formatException(record.exc_info)
        try:
            hclog.write_stderr(hclog.format_line(level, record.getMessage(), fields, record.created)
                               .encode("utf-8", "replace"))
        except Exception:
            self.handleError(record)


def serve(config: hs.HandshakeConfig, register: Callable[[ServeContext], None] | None = None,
          **kwargs) -> int:
    """``main()`` for a plugin: serve until the host shuts us down. Returns the exit code.

    A wrong cookie prints go-plugin's explanation on stderr and returns 1. SIGINT is
    ignored (the host's process group gets Ctrl-C too; the host stops us itself);
    SIGTERM stops gracefully. Without logging configured, log records go to stderr as
    hclog JSON lines (:class:`HclogHandler`), so the host re-logs them at their level.
    """
    kwargs.setdefault("capture_stdout", True)
    kwargs.setdefault("cleanup_on_kill", True)
    root = logging.getLogger()
    if not root.handlers:
        root.addHandler(HclogHandler())
    server = PluginServer(config, register, **kwargs)
    try:
        server.start()
    except CookieError as exc:
        sys.stderr.write(exc.human_message)
        sys.stderr.flush()
        return 1
    except GoPluginError as exc:
        log.error("plugin init error: %s", exc)
        return 1
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGINT, lambda *_: log.debug("plugin received interrupt signal, ignoring"))
        signal.signal(signal.SIGTERM, lambda *_: threading.Thread(target=server.stop, daemon=True).start())
    server.announce()
    while not server.wait(3600):
        pass
    return 0
