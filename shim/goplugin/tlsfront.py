"""TLS fronts: stdlib ``ssl`` on the go-plugin socket, plaintext behind it.

grpcio's BoringSSL cannot do go-plugin's P-521 AutoMTLS with Go peers, so TLS is
terminated here and grpcio only ever sees plaintext on a unix socket inside a private
(0700) directory:

* :class:`ServerFront` (we serve): accept TLS on the public socket, require and pin the
  peer's certificate, then relay plaintext to a backend's private socket, or hand the
  connection to a ``route`` callback (proxy mode's HTTP/2 frame router).
* :class:`ClientFront` (we dial): grpcio dials a private plaintext socket; each
  connection is relayed over a new, pinned TLS connection to the peer's address.

All fronts of a process share one asyncio event loop on one daemon thread; each relayed
byte costs one ``data_received`` -> ``write`` hop per direction, with flow control
(a slow reader pauses the opposite side) and no extra buffering. Fronts can be created
from that loop's own thread too (the router does, for broker ids): the listening socket
is bound at once and served from the next loop iteration.
"""

from __future__ import annotations

import asyncio
import logging
import os
import shutil
import socket
import ssl
import tempfile
import threading
import time
from typing import Callable

from . import mtls
from .errors import TLSSetupError

log = logging.getLogger(__name__)

HANDSHAKE_TIMEOUT = 10.0
REFUSAL_LOG_INTERVAL = 60.0   # seconds between two WARN lines about refused connections
_EARLY_DATA_LIMIT = 1 << 20


_dir_tracker: "Callable[[str], None] | None" = None


def track_private_dirs(callback: "Callable[[str], None] | None") -> None:
    """Report every directory :func:`private_dir` makes from now on (a plugin process
    hands them to its janitor, so a SIGKILL leaves none behind); None stops it."""
    global _dir_tracker
    _dir_tracker = callback


def private_dir(prefix: str = "goplugin.", base: str | None = None) -> str:
    """A fresh directory only we can enter (mkdtemp is 0700)."""
    path = tempfile.mkdtemp(prefix=prefix, dir=base)
    os.chmod(path, 0o700)
    if _dir_tracker is not None:
        _dir_tracker(path)
    return path


def unlink_quietly(path: str | None) -> None:
    if path:
        try:
            os.unlink(path)
        except FileNotFoundError:
            pass


# --- the shared loop -------------------------------------------------------------------

class _LoopThread:
    _lock = threading.Lock()
    _loop: asyncio.AbstractEventLoop | None = None
    _pid: int | None = None

    @classmethod
    def get(cls) -> asyncio.AbstractEventLoop:
        with cls._lock:
            if cls._loop is None or cls._pid != os.getpid() or not cls._loop.is_running():
                loop = asyncio.new_event_loop()
                ready = threading.Event()

                def run():
                    asyncio.set_event_loop(loop)
                    loop.call_soon(ready.set)
                    loop.run_forever()

                threading.Thread(target=run, name="goplugin-tls", daemon=True).start()
                ready.wait()
                cls._loop, cls._pid = loop, os.getpid()
            return cls._loop


def run_in_loop(coro, timeout: float | None = None):
    """Run a coroutine on the shared loop from any other thread and return its result."""
    loop = _LoopThread.get()
    return asyncio.run_coroutine_threadsafe(coro, loop).result(timeout)


def call_in_loop(fn: Callable[[], None]) -> None:
    _LoopThread.get().call_soon_threadsafe(fn)


def spawn(coro, what: str) -> "asyncio.Task":
    """Run ``coro`` as a task on the running loop. A failure is logged as one warning line
    naming ``what`` (never asyncio's "Task exception was never retrieved" with a traceback)."""
    task = asyncio.ensure_future(coro)

    def retrieve(done: asyncio.Task) -> None:
        if done.cancelled():
            return
        exc = done.exception()
        if exc is not None:
            log.warning("%s failed: %s: %s", what, type(exc).__name__, exc)

    task.add_done_callback(retrieve)
    return task


def _on_loop_thread() -> bool:
    try:
        return asyncio.get_running_loop() is _LoopThread._loop
    except RuntimeError:
        return False


# --- one relayed connection end --------------------------------------------------------

class _End(asyncio.Protocol):
    """One side of a relay. Data for an unlinked end is held (bounded) until link()."""

    def __init__(self, conns: set):
        self.transport: asyncio.Transport | None = None
        self.peer: _End | None = None
        self.early: list[bytes] = []
        self.early_size = 0
        self.eof = False
        self.lost = False
        self.lost_exc: BaseException | None = None
        self.activity: asyncio.Event | None = None  # set on first data or close (connect_check)
        self._conns = conns

    def connection_made(self, transport):
        self.transport = transport
        self._conns.add(self)

    def link(self, peer: "_End") -> None:
        self.peer, peer.peer = peer, self
        for end in (self, peer):
            other = end.peer
            if end.early:
                other.transport.write(b"".join(end.early))
                end.early.clear()
            if end.eof or end.lost:
                other.transport.close()

    def data_received(self, data):
        peer = self.peer
        if peer is not None:
            peer.transport.write(data)
            return
        self.early.append(data)
        self.early_size += len(data)
        if self.activity is not None:
            self.activity.set()
        if self.early_size > _EARLY_DATA_LIMIT:
            self.transport.abort()

    def eof_received(self):
        self.eof = True
        if self.peer is not None:
            self.peer.transport.close()  # flushes what is buffered first
        return False

    def connection_lost(self, exc):
        self.lost, self.lost_exc = True, exc
        if self.activity is not None:
            self.activity.set()
        self._conns.discard(self)
        if self.peer is not None and not self.peer.transport.is_closing():
            self.peer.transport.close()

    def pause_writing(self):
        if self.peer is not None:
            self.peer.transport.pause_reading()

    def resume_writing(self):
        if self.peer is not None:
            self.peer.transport.resume_reading()

    def abort(self):
        if self.transport is not None:
            self.transport.abort()


async def _open(network: str, address: str, protocol: _End, ctx: ssl.SSLContext | None = None):
    loop = asyncio.get_running_loop()
    tls = {} if ctx is None else {"ssl": ctx, "server_hostname": mtls.SERVER_NAME,
                                  "ssl_handshake_timeout": HANDSHAKE_TIMEOUT}
    if network == "unix":
        transport, _ = await loop.create_unix_connection(lambda: protocol, address, **tls)
    elif network == "tcp":
        host, _, port = address.rpartition(":")
        transport, _ = await loop.create_connection(lambda: protocol, host.strip("[]"), int(port), **tls)
    else:
        raise TLSSetupError(f"unknown network {network!r}")
    return transport


class _Front:
    """Shared lifecycle: a listener on the loop, live connections, last error."""

    def __init__(self):
        self._server: asyncio.base_events.Server | None = None
        self._conns: set = set()   # anything with abort(): relay ends, routed connections
        self._starting: asyncio.Future | None = None
        self._closed = False
        self.last_error: BaseException | None = None
        self.connections_accepted = 0
        self.refusals = 0
        self._refusals_logged_at: float | None = None
        self._refusals_unlogged = 0
        self._clock = time.monotonic

    def _fail(self, what: str, exc: BaseException) -> None:
        self.last_error = exc
        log.warning("%s: %s", what, exc)

    def _refused(self, what: str, exc: BaseException) -> None:
        """A refused connection: anyone who can reach the socket can cause one, so at most
        one WARN line per REFUSAL_LOG_INTERVAL, the next one counting those not logged."""
        self.refusals += 1
        self.last_error = exc
        now = self._clock()
        if self._refusals_logged_at is not None and now - self._refusals_logged_at < REFUSAL_LOG_INTERVAL:
            self._refusals_unlogged += 1
            return
        more = (f" ({self._refusals_unlogged} more refused since the last such line)"
                if self._refusals_unlogged else "")
        self._refusals_logged_at, self._refusals_unlogged = now, 0
        log.warning("%s: %s%s", what, exc, more)

    def _listen(self, path: str) -> None:
        """Listen on ``path`` now. From the loop's own thread (a broker rewrite inside the
        frame router) the socket is bound at once and served from the next iteration:
        early connections wait in the backlog."""
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.bind(path)
            sock.listen(128)
            sock.setblocking(False)
        except BaseException:
            sock.close()
            raise
        if _on_loop_thread():
            self._starting = spawn(self._serve_sock(sock), f"listening on {path}")
        else:
            run_in_loop(self._serve_sock(sock), timeout=10)

    async def _serve_sock(self, sock: socket.socket) -> None:
        loop = asyncio.get_running_loop()
        if self._closed:
            sock.close()
            return
        self._server = await loop.create_unix_server(self._accepted, sock=sock)

    async def _close(self):
        if self._starting is not None and not self._starting.done():
            await self._starting
        if self._server is not None:
            self._server.close()
        for end in list(self._conns):
            end.abort()
        if self._server is not None:
            await self._server.wait_closed()

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        try:
            run_in_loop(self._close(), timeout=10)
        finally:
            self._cleanup()

    def _cleanup(self) -> None:
        pass

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


class ServerFront(_Front):
    """Accept pinned mTLS on ``path``; relay plaintext to the unix socket ``backend``.

    With ``route`` instead of a backend, each accepted TLS connection is handed over
    after the handshake: ``route(transport, early, conns)`` gets the TLS transport, the
    bytes already read, and the set in which to keep itself (with an ``abort()``) while
    it lives; it sets the transport's protocol itself.

    ``path`` must not exist yet; it is removed again by :meth:`close`.
    """

    def __init__(self, path: str, backend: str | None, ctx: ssl.SSLContext, peer_der: bytes,
                 *, route: Callable[[asyncio.Transport, bytes, set], None] | None = None):
        super().__init__()
        self.path, self.backend, self.ctx, self.peer_der = path, backend, ctx, peer_der
        self.route = route
        self._listen(path)

    def _accepted(self):
        end = _End(self._conns)
        outer = end.connection_made

        def made(transport):
            transport.pause_reading()  # nothing may be read before start_tls takes over
            outer(transport)
            self.connections_accepted += 1
            spawn(self._serve(end, transport), f"a TLS connection on {self.path}")

        end.connection_made = made
        return end

    async def _serve(self, end: _End, raw: asyncio.Transport):
        loop = asyncio.get_running_loop()
        try:
            tls = await loop.start_tls(raw, end, self.ctx, server_side=True,
                                       ssl_handshake_timeout=HANDSHAKE_TIMEOUT)
            if tls is None or tls.is_closing():
                # The handshake completed, then the connection was lost before we got here
                # (a peer that gives up, or our own close() aborting it): nothing to serve.
                log.debug("TLS connection on %s closed right after its handshake", self.path)
                raw.abort()
                return
            mtls.check_peer(tls.get_extra_info("ssl_object"), self.peer_der)
        except (ssl.SSLError, TLSSetupError) as exc:
            self._refused(f"refused a TLS connection on {self.path}", exc)
            raw.abort()
            return
        except (OSError, asyncio.TimeoutError) as exc:  # the peer went away mid-handshake
            log.debug("TLS handshake on %s did not complete: %r", self.path, exc)
            raw.abort()
            return
        end.transport = tls
        if self.route is not None:
            self._conns.discard(end)
            if end.lost or end.eof:
                tls.abort()
                return
            early = b"".join(end.early)
            end.early.clear()
            self.route(tls, early, self._conns)
            return
        backend = _End(self._conns)
        try:
            await _open("unix", self.backend, backend)
        except OSError as exc:
            self._fail(f"cannot reach the gRPC server behind {self.path}", exc)
            tls.abort()
            return
        end.link(backend)

    def _cleanup(self):
        unlink_quietly(self.path)


class ClientFront(_Front):
    """A private plaintext unix socket whose connections are relayed over pinned mTLS.

    ``target`` is what grpcio should dial (``unix:/private/dir/front.sock``).
    """

    def __init__(self, network: str, address: str, ctx: ssl.SSLContext, peer_der: bytes,
                 *, base: str | None = None):
        super().__init__()
        self.network, self.address, self.ctx, self.peer_der = network, address, ctx, peer_der
        self.dir = private_dir("goplugin-dial.", base)
        self.path = os.path.join(self.dir, "front.sock")
        self.target = "unix:" + self.path
        self._spare: _End | None = None
        try:
            self._listen(self.path)
        except BaseException:
            self._cleanup()
            raise

    async def _upstream(self) -> _End:
        end = _End(self._conns)
        try:
            transport = await _open(self.network, self.address, end, self.ctx)
            mtls.check_peer(transport.get_extra_info("ssl_object"), self.peer_der)
        except (OSError, asyncio.TimeoutError, TLSSetupError, ValueError) as exc:
            end.abort()
            self._fail(f"TLS connection to {self.network}:{self.address} failed", exc)
            raise
        return end

    def connect_check(self, timeout: float = HANDSHAKE_TIMEOUT + 1) -> None:
        """Open one TLS connection now and keep it for grpcio's first connection.

        Waits for the peer's first bytes (an HTTP/2 server sends SETTINGS at once):
        under TLS 1.3 the client finishes its handshake before the server has checked
        our certificate, so only data, or a close, tells whether we were accepted.
        Raises TLSSetupError with the reason, so a bad peer fails fast and clearly
        instead of as a gRPC UNAVAILABLE after retries.
        """
        async def prepare():
            end = await self._upstream()
            end.activity = asyncio.Event()
            if not end.early and not end.lost:
                try:
                    await asyncio.wait_for(end.activity.wait(), HANDSHAKE_TIMEOUT)
                except asyncio.TimeoutError:
                    end.abort()
                    raise TLSSetupError(f"{self.network}:{self.address} sent nothing within "
                                        f"{HANDSHAKE_TIMEOUT:g}s after the TLS handshake") from None
            if end.lost and not end.early:
                reason = end.lost_exc or ConnectionResetError("connection closed by the peer")
                self._fail(f"TLS connection to {self.network}:{self.address} failed", reason)
                raise TLSSetupError(f"{self.network}:{self.address} closed the TLS connection right "
                                    f"after the handshake ({reason}); it did not accept our client certificate",
                                    fix="the plugin must trust the certificate sent in PLUGIN_CLIENT_CERT")
            self._spare = end
        try:
            run_in_loop(prepare(), timeout)
        except TLSSetupError:
            raise
        except Exception as exc:
            raise TLSSetupError(f"TLS connection to {self.network}:{self.address} failed: "
                                f"{type(exc).__name__}: {exc}") from None

    def _accepted(self):
        end = _End(self._conns)
        outer = end.connection_made

        def made(transport):
            outer(transport)
            self.connections_accepted += 1
            spare, self._spare = self._spare, None
            if spare is not None and not spare.lost and not spare.eof:
                end.link(spare)
            else:
                transport.pause_reading()
                spawn(self._relay(end, transport), f"a connection relayed to {self.address}")

        end.connection_made = made
        return end

    async def _relay(self, end: _End, transport: asyncio.Transport):
        try:
            upstream = await self._upstream()
        except Exception:
            transport.abort()
            return
        end.link(upstream)
        transport.resume_reading()

    def _cleanup(self):
        unlink_quietly(self.path)
        shutil.rmtree(self.dir, ignore_errors=True)

    def close(self) -> None:
        spare, self._spare = self._spare, None
        if spare is not None:
            call_in_loop(spare.abort)
        super().close()
