"""The host side of go-plugin: start a plugin process and talk gRPC to it, like Vault.

:class:`PluginClient` checks the file's sha256 on the file descriptor it then executes
(so a rename or symlink swap between check and exec changes nothing; an in-place write to
the same file still could, as with Vault's own hash-then-exec: the launcher's sealed memfd
is what closes that), starts the plugin in its own process group
with go-plugin's environment, reads and checks the handshake line, dials (AutoMTLS
through a :class:`~shim.goplugin.tlsfront.ClientFront`), health-checks, and runs the
broker and stdio streams. Plugin stderr is re-logged like go-plugin does. ``kill()``
asks the plugin to shut down, waits 2 s, then SIGKILLs its whole process group.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import os
import selectors
import shutil
import signal
import subprocess
import threading
import time
from collections import deque
from typing import Callable, Mapping, Sequence

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from . import grpcutil, handshake as hs, mtls
from .protos import (grpc_controller_pb2, grpc_controller_pb2_grpc, grpc_stdio_pb2_grpc)
from .broker import Broker
from .errors import ChecksumError, ConnectError, StartError, TLSSetupError
from .logrelay import LineSplitter, parse_stderr_line
from .procgroup import member_pidfds, wait_pidfds
from .tlsfront import ClientFront

log = logging.getLogger(__name__)

START_TIMEOUT = 60.0
KILL_GRACE = 2.0
DEFAULT_MIN_PORT, DEFAULT_MAX_PORT = 10000, 25000


def sha256_fd(fd: int) -> bytes:
    h = hashlib.sha256()
    offset = 0
    while True:
        chunk = os.pread(fd, 1 << 20, offset)
        if not chunk:
            return h.digest()
        h.update(chunk)
        offset += len(chunk)


def _checksum_bytes(value: bytes | str) -> bytes:
    if isinstance(value, str):
        try:
            value = bytes.fromhex(value)
        except ValueError:
            raise ChecksumError(f"sha256 {value!r} is not hex") from None
    if len(value) != 32:
        raise ChecksumError(f"sha256 must be 32 bytes, got {len(value)}")
    return value


class PluginClient:
    """One plugin process and its gRPC connection.

    ``cmd`` is argv (``cmd[0]`` a path, or a name looked up on PATH). ``sha256`` (hex
    or raw) makes the start fail with ChecksumError unless the file matches.
    ``env`` is added to the host environment (or replaces it with
    ``skip_host_env=True``); go-plugin's own variables always win.
    """

    def __init__(self, cmd: Sequence[str], config: hs.HandshakeConfig, *,
                 sha256: bytes | str | None = None, auto_mtls: bool = True,
                 env: Mapping[str, str] | None = None, skip_host_env: bool = False,
                 start_timeout: float = START_TIMEOUT, health_timeout: float = 10.0,
                 min_port: int = DEFAULT_MIN_PORT, max_port: int = DEFAULT_MAX_PORT,
                 logger: logging.Logger | None = None,
                 on_stdio: Callable[[int, bytes], None] | None = None, cwd: str | None = None,
                 on_conninfo: Callable | None = None):
        if not cmd:
            raise ValueError("cmd must name the plugin executable")
        self.cmd = list(cmd)
        self.config = config
        self.sha256 = None if sha256 is None else _checksum_bytes(sha256)
        self.auto_mtls = auto_mtls
        self.env = dict(env or {})
        self.skip_host_env = skip_host_env
        self.start_timeout = start_timeout
        self.health_timeout = health_timeout
        self.min_port, self.max_port = min_port, max_port
        self.plugin_log = logger or logging.getLogger(
            f"shim.goplugin.plugin.{os.path.basename(self.cmd[0])}")
        self.on_stdio = on_stdio
        self.on_conninfo = on_conninfo
        self.cwd = cwd
        self.proc: subprocess.Popen | None = None
        self.line: hs.HandshakeLine | None = None
        self.version: int | None = None
        self.identity: mtls.Identity | None = None
        self.channel: grpc.Channel | None = None
        self.broker: Broker | None = None
        self.front: ClientFront | None = None
        self.stderr_tail: deque[str] = deque(maxlen=20)
        self._pidfd: int | None = None
        self._threads: list[threading.Thread] = []
        self._stdio_call = None
        self.returncode: int | None = None
        self._lock = threading.Lock()

    @property
    def pidfd(self) -> int | None:
        """A pidfd of the plugin process (readable once it has exited), for a caller's own
        selector; None before the start. The client owns it: do not close it."""
        return self._pidfd

    # --- launching ---------------------------------------------------------------

    def _resolve(self) -> str:
        path = self.cmd[0]
        if os.sep not in path:
            found = shutil.which(path)
            if found is None:
                raise StartError(f"plugin command {path!r} not found on PATH")
            path = found
        return path

    def _environment(self) -> dict[str, str]:
        env = {} if self.skip_host_env else dict(os.environ)
        env.update(self.env)
        env.update({
            self.config.cookie_key: self.config.cookie_value,
            hs.ENV_MIN_PORT: str(self.min_port),
            hs.ENV_MAX_PORT: str(self.max_port),
            hs.ENV_PROTOCOL_VERSIONS: hs.protocol_versions_env(self.config.versions),
        })
        env.pop(hs.ENV_CLIENT_CERT, None)
        if self.auto_mtls:
            env[hs.ENV_CLIENT_CERT] = self.identity.cert_pem.decode("ascii")
        return env

    def start(self) -> hs.HandshakeLine:
        """Launch the plugin and read its handshake line. Idempotent."""
        with self._lock:
            if self.line is not None:
                return self.line
            path = self._resolve()
            try:
                fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
            except OSError as exc:
                raise StartError(f"cannot open plugin {path}: {exc.strerror}") from None
            try:
                if self.sha256 is not None:
                    try:
                        ok = hmac.compare_digest(sha256_fd(fd), self.sha256)
                    except OSError as exc:
                        raise ChecksumError(f"error verifying checksum: {exc}") from None
                    if not ok:
                        raise ChecksumError(f"checksums did not match for {path}")
                if self.auto_mtls:
                    self.identity = mtls.generate_identity()
                self._launch(path, fd)
            finally:
                os.close(fd)
            try:
                self.line = self._read_handshake()
                self.version = hs.check_app_version(self.line, self.config.versions)
                if self.line.protocol != "grpc":
                    raise StartError(f'Unsupported plugin protocol "{self.line.protocol}". Supported: [grpc]',
                                     fix="this host only speaks gRPC plugins")
                if self.auto_mtls and self.line.server_cert is None:
                    raise TLSSetupError("the plugin ignored PLUGIN_CLIENT_CERT: its handshake line has no "
                                        "server certificate",
                                        fix="use a go-plugin based plugin with AutoMTLS, or auto_mtls=False")
            except BaseException:
                self._terminate()
                raise
            return self.line

    def _launch(self, path: str, fd: int) -> None:
        # Exec the descriptor we hashed (fexecve-like): the inode checked is the inode run
        # (not sealed: an in-place write after the hash would still take effect).
        # The fd stays open in the child so a script's interpreter can reopen it.
        exe = f"/proc/self/fd/{fd}" if self.sha256 is not None else path
        try:
            self.proc = subprocess.Popen(
                self.cmd, executable=exe, env=self._environment(), cwd=self.cwd,
                stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                pass_fds=(fd,) if self.sha256 is not None else (), process_group=0)
        except OSError as exc:
            raise StartError(f"cannot start plugin {path}: {exc.strerror or exc}") from None
        self._pidfd = os.pidfd_open(self.proc.pid)
        log.debug("plugin started: path=%s pid=%d", path, self.proc.pid)
        self._spawn(self._read_stderr, "stderr")

    def _spawn(self, target, name: str) -> None:
        t = threading.Thread(target=target, name=f"goplugin-{name}", daemon=True)
        t.start()
        self._threads.append(t)

    def _read_handshake(self) -> hs.HandshakeLine:
        out = self.proc.stdout.fileno()
        buf = bytearray()
        deadline = time.monotonic() + self.start_timeout
        exited = False
        with selectors.DefaultSelector() as sel:
            sel.register(out, selectors.EVENT_READ, "out")
            sel.register(self._pidfd, selectors.EVENT_READ, "exit")
            while True:
                nl = buf.find(b"\n")
                if nl >= 0:
                    break
                if len(buf) > hs.MAX_LINE:
                    raise StartError("the plugin wrote more than 64 KiB to stdout without a newline")
                left = deadline - time.monotonic()
                if left <= 0:
                    raise StartError("timeout while waiting for plugin to start",
                                     fix=f"the plugin printed no handshake line within {self.start_timeout:g}s")
                events = sel.select(left)
                if any(key.data == "out" for key, _ in events):
                    chunk = os.read(out, 65536)
                    if chunk:
                        buf += chunk
                        continue
                    exited = True  # stdout closed: nothing more is coming
                if exited or any(key.data == "exit" for key, _ in events):
                    # Drain what the plugin wrote before it went away.
                    while chunk := self._read_nonblocking(out):
                        buf += chunk
                    if b"\n" in buf:
                        break
                    raise StartError("plugin exited before we could connect" + self._exit_detail())
        line, rest = bytes(buf[:nl + 1]), bytes(buf[nl + 1:])
        self._spawn(lambda: self._drain_stdout(rest), "stdout")
        return hs.parse_handshake_line(line)

    @staticmethod
    def _read_nonblocking(fd: int) -> bytes:
        os.set_blocking(fd, False)
        try:
            return os.read(fd, 65536)
        except BlockingIOError:
            return b""
        finally:
            os.set_blocking(fd, True)

    def _exit_detail(self) -> str:
        parts = []
        with selectors.DefaultSelector() as sel:  # stdout closes just before the exit status is set
            sel.register(self._pidfd, selectors.EVENT_READ)
            sel.select(1.0)
        try:  # WNOWAIT: look at the status but leave the zombie for _terminate to reap
            info = os.waitid(os.P_PID, self.proc.pid, os.WEXITED | os.WNOHANG | os.WNOWAIT)
        except ChildProcessError:
            info = None
        if info is not None:
            parts.append(f"exit status {info.si_status}" if info.si_code == os.CLD_EXITED
                         else f"killed by signal {info.si_status}")
        for t in self._threads:
            if t.name == "goplugin-stderr":
                t.join(1.0)
        if self.stderr_tail:
            parts.append("last stderr: " + " | ".join(self.stderr_tail))
        return f" ({'; '.join(parts)})" if parts else ""

    def _drain_stdout(self, first: bytes) -> None:
        """After the handshake stdout is unused; keep the pipe empty so writes never block."""
        data = first
        while True:
            if data:
                self.plugin_log.debug("plugin stdout: %s", data.decode("utf-8", "replace").rstrip("\n"))
            try:
                data = os.read(self.proc.stdout.fileno(), 65536)
            except (OSError, ValueError):
                return
            if not data:
                return

    def _read_stderr(self) -> None:
        splitter = LineSplitter()
        fd = self.proc.stderr.fileno()
        while True:
            try:
                data = os.read(fd, 65536)
            except (OSError, ValueError):
                data = b""
            pieces = splitter.feed(data) if data else splitter.close()
            for raw, whole in pieces:
                self._relog(raw, whole)
            if not data:
                return

    def _relog(self, raw: bytes, whole: bool) -> None:
        if not whole:
            self.plugin_log.debug("%s", raw.decode("utf-8", "replace"))
            return
        entry = parse_stderr_line(raw)
        self.stderr_tail.append(entry.render()[:500])
        self.plugin_log.log(entry.level, "%s", entry.render())

    def _exited_now(self) -> bool:
        if self._pidfd is None:
            return True
        with selectors.DefaultSelector() as sel:
            sel.register(self._pidfd, selectors.EVENT_READ)
            return bool(sel.select(0))

    def exited(self) -> bool:
        return self.proc is not None and self._exited_now()

    # --- connecting -------------------------------------------------------------

    def connect(self) -> grpc.Channel:
        """Start if needed, dial, health-check, and start the broker and stdio streams."""
        line = self.start()
        with self._lock:
            if self.channel is not None:
                return self.channel
            try:
                self._connect(line)
            except BaseException:
                self._disconnect()
                self._terminate()
                raise
            return self.channel

    def _connect(self, line: hs.HandshakeLine) -> None:
        tls = None
        if line.server_cert is not None and self.auto_mtls:
            tls = mtls.MTLSPair(self.identity, line.server_cert)
            mtls.cert_pem_from_der(line.server_cert)  # a clear error for a broken cert
            self.front = ClientFront(line.network, line.address, tls.client_context(), tls.peer_der)
            self.front.connect_check()
            self.channel = grpcutil.FrontedChannel(grpcutil.new_channel(self.front.target), self.front)
        else:
            self.channel = grpcutil.new_channel(grpcutil.grpc_target(line.network, line.address))
        self.ping(wait_for_ready=True)
        self.broker = Broker(tls, on_conninfo=self.on_conninfo)
        self.broker.run_client_stream(self.channel)
        self._spawn(self._stream_stdio, "stdio")

    def ping(self, *, wait_for_ready: bool = False) -> None:
        """go-plugin's Ping: the health of service "plugin"."""
        try:
            reply = health_pb2_grpc.HealthStub(self.channel).Check(
                health_pb2.HealthCheckRequest(service="plugin"), timeout=self.health_timeout,
                wait_for_ready=wait_for_ready)
        except grpc.RpcError as exc:
            extra = ""
            if self.front is not None and self.front.last_error is not None:
                extra = f"; TLS: {self.front.last_error}"
            raise ConnectError(f"health check of the plugin failed: {exc.code().name}: {exc.details()}{extra}"
                               ) from None
        if reply.status != health_pb2.HealthCheckResponse.SERVING:
            raise ConnectError(f"plugin reports health status {reply.status}, not SERVING")

    def _stream_stdio(self) -> None:
        from google.protobuf import empty_pb2

        call = grpc_stdio_pb2_grpc.GRPCStdioStub(self.channel).StreamStdio(empty_pb2.Empty())
        self._stdio_call = call
        try:
            for item in call:
                if self.on_stdio is not None:
                    self.on_stdio(item.channel, item.data)
                else:
                    self.plugin_log.debug("plugin %s: %s", "stdout" if item.channel == 1 else "stderr",
                                          item.data.decode("utf-8", "replace").rstrip("\n"))
        except grpc.RpcError as exc:
            if exc.code() == grpc.StatusCode.UNIMPLEMENTED:
                log.warning("plugin does not support GRPCStdio (go-plugin before 1.1); "
                            "its stdout/stderr after the handshake are not mirrored")
            elif exc.code() not in (grpc.StatusCode.CANCELLED, grpc.StatusCode.UNAVAILABLE):
                log.warning("plugin stdio stream ended: %s", exc.code().name)

    # --- stopping ---------------------------------------------------------------

    def kill(self, grace: float = KILL_GRACE) -> None:
        """Shutdown over gRPC, wait ``grace`` seconds for exit, then SIGKILL the group."""
        with self._lock:
            if self.proc is None:
                return
            graceful = False
            if self.channel is not None:
                if self.broker is not None:
                    self.broker.close()
                try:
                    grpc_controller_pb2_grpc.GRPCControllerStub(self.channel).Shutdown(
                        grpc_controller_pb2.Empty(), timeout=grace)
                except grpc.RpcError as exc:
                    # go-plugin <= 1.4 stops its server inside Shutdown, so the reply is
                    # often lost (UNAVAILABLE) although the plugin is exiting. Like
                    # go-plugin's host, wait for the exit anyway.
                    log.debug("Shutdown call ended with %s", exc.code().name)
                graceful = True
            self._disconnect()
            if graceful:
                with selectors.DefaultSelector() as sel:
                    sel.register(self._pidfd, selectors.EVENT_READ)
                    if not sel.select(grace):
                        log.warning("plugin failed to exit gracefully")
            self._terminate()

    def _disconnect(self) -> None:
        if self._stdio_call is not None:
            self._stdio_call.cancel()
        if self.broker is not None:
            self.broker.close()
        if self.channel is not None:
            self.channel.close()
        elif self.front is not None:
            self.front.close()
        self.channel = None

    def _terminate(self) -> None:
        """SIGKILL the plugin's process group, reap it, join our readers."""
        proc, self.proc = self.proc, None
        if proc is None:
            return
        # The unreaped leader keeps the group id ours, so this cannot hit a stranger.
        members = member_pidfds(proc.pid)
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        proc.wait()
        wait_pidfds(members, timeout=5.0)
        for t in self._threads:
            if t is not threading.current_thread():
                t.join(5.0)
        self._threads.clear()
        for stream in (proc.stdout, proc.stderr):
            if stream is not None:
                stream.close()
        if self._pidfd is not None:
            os.close(self._pidfd)
            self._pidfd = None
        self.returncode = proc.returncode

    def __enter__(self) -> "PluginClient":
        self.connect()
        return self

    def __exit__(self, *exc) -> None:
        self.kill()
