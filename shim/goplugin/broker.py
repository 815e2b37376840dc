"""go-plugin's GRPCBroker: extra gRPC connections negotiated over one stream.

One side calls :meth:`Broker.accept_and_serve` (open a listener, announce
``ConnInfo{service_id, network, address}`` on the ``plugin.GRPCBroker/StartStream``
stream); the other calls :meth:`Broker.dial`, which waits up to 5 s for that ConnInfo
and connects. Vault uses this in ``pb.Backend/Setup`` to serve Storage/SystemView to
the plugin.

The ConnInfo rules are pure (:class:`ConnInfo`, :func:`parse_conninfo`,
:class:`BrokerCore`), so a relaying proxy can read, check and rewrite ConnInfo
messages without sockets. :class:`Broker` is the thin threaded shell around them.

TLS (AutoMTLS): accepting uses our certificate and requires the peer's; dialing
presents ours, verifies the peer's as ``localhost`` and pins it. Both go through the
stdlib-ssl fronts in :mod:`shim.goplugin.tlsfront`.
"""

from __future__ import annotations

import logging
import os
import queue
import shutil
import threading
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable, Iterator, Sequence

from .errors import BrokerError
from .handshake import NETWORKS

if TYPE_CHECKING:  # pragma: no cover
    import grpc
    from .mtls import MTLSPair

log = logging.getLogger(__name__)

DIAL_TIMEOUT = 5.0
UINT32_MAX = 2 ** 32 - 1


# --- pure part -------------------------------------------------------------------------

@dataclass(frozen=True)
class Knock:
    """Multiplexing handshake (go-plugin v1.6+ with PLUGIN_MULTIPLEX_GRPC). Not served."""

    knock: bool = False
    ack: bool = False
    error: str = ""


@dataclass(frozen=True)
class ConnInfo:
    service_id: int
    network: str
    address: str
    knock: Knock | None = None

    def rewrite(self, network: str, address: str) -> "ConnInfo":
        """The same announcement pointing somewhere else (a proxy's own listener)."""
        return parse_conninfo(self.service_id, network, address, self.knock)


def parse_conninfo(service_id: int, network: str, address: str, knock: Knock | None = None) -> ConnInfo:
    """A validated ConnInfo; BrokerError says what is wrong."""
    if type(service_id) is not int or not 0 <= service_id <= UINT32_MAX:
        raise BrokerError(f"ConnInfo service_id {service_id!r} is not a uint32")
    if knock is not None and (knock.knock or knock.ack):
        # Knock-only messages carry no address.
        return ConnInfo(service_id, network, address, knock)
    if network not in NETWORKS:
        raise BrokerError(f"ConnInfo for service {service_id}: Unknown address type: {network!r}")
    if not address or "\0" in address:
        raise BrokerError(f"ConnInfo for service {service_id}: empty or invalid {network} address")
    return ConnInfo(service_id, network, address, knock)


def conninfo_from_message(msg) -> ConnInfo:
    knock = None
    if msg.HasField("knock"):
        knock = Knock(msg.knock.knock, msg.knock.ack, msg.knock.error)
    return parse_conninfo(msg.service_id, msg.network, msg.address, knock)


def conninfo_to_message(info: ConnInfo):
    from .protos import grpc_broker_pb2 as pb

    msg = pb.ConnInfo(service_id=info.service_id, network=info.network, address=info.address)
    if info.knock is not None:
        msg.knock.CopyFrom(pb.ConnInfo.Knock(knock=info.knock.knock, ack=info.knock.ack,
                                             error=info.knock.error))
    return msg


class BrokerCore:
    """Pending announcements by service id, with go-plugin's timing rules.

    An announcement waits ``timeout`` seconds to be claimed by a Dial, then is dropped.
    A second announcement for an id that is still pending is dropped (go-plugin keeps
    the first). Ids come from :meth:`next_id`, starting at 1, wrapping like a uint32.
    """

    def __init__(self, timeout: float = DIAL_TIMEOUT):
        self.timeout = timeout
        self._pending: dict[int, tuple[ConnInfo, float]] = {}
        self._next = 0

    def next_id(self) -> int:
        self._next = (self._next + 1) & UINT32_MAX
        return self._next

    def received(self, info: ConnInfo, now: float) -> bool:
        """Record an announcement; False when it was dropped (duplicate or knock)."""
        self.expire(now)
        if info.knock is not None and (info.knock.knock or info.knock.ack):
            return False
        if info.service_id in self._pending:
            return False
        self._pending[info.service_id] = (info, now)
        return True

    def claim(self, service_id: int, now: float) -> ConnInfo | None:
        self.expire(now)
        entry = self._pending.pop(service_id, None)
        return None if entry is None else entry[0]

    def expire(self, now: float) -> list[int]:
        gone = [sid for sid, (_, t) in self._pending.items() if now - t >= self.timeout]
        for sid in gone:
            del self._pending[sid]
        return gone

    def pending(self) -> list[int]:
        return sorted(self._pending)


# --- the I/O shell ---------------------------------------------------------------------

_CLOSE = object()


class BrokeredServer:
    """A gRPC server announced under a broker id. ``stop()`` removes its sockets."""

    def __init__(self, service_id: int, server: "grpc.Server", dirs: list[str], front=None):
        self.service_id, self.server, self._dirs, self._front = service_id, server, dirs, front
        self._stopped = False

    def stop(self, grace: float | None = None) -> None:
        if self._stopped:
            return
        self._stopped = True
        self.server.stop(grace).wait()
        if self._front is not None:
            self._front.close()
        for d in self._dirs:
            shutil.rmtree(d, ignore_errors=True)


class Broker:
    """Both broker roles over one StartStream stream.

    The host side attaches with :meth:`run_client_stream`; the plugin side registers
    :meth:`servicer` on its gRPC server. ``tls`` is our identity plus the peer's
    certificate, or None when the plugin runs without AutoMTLS. ``on_conninfo``, when
    given, receives every valid ConnInfo from the peer instead of the pending table (a
    proxy rewrites and forwards them; :meth:`dial` then has nothing to wait for).
    """

    def __init__(self, tls: "MTLSPair | None" = None, *, socket_dir: str | None = None,
                 dial_timeout: float = DIAL_TIMEOUT, clock: Callable[[], float] = time.monotonic,
                 on_conninfo: Callable[[ConnInfo], None] | None = None):
        self.tls = tls
        self.on_conninfo = on_conninfo
        self.socket_dir = socket_dir
        self.dial_timeout = dial_timeout
        self._clock = clock
        self._core = BrokerCore(dial_timeout)
        self._cond = threading.Condition()
        self._outgoing: "queue.SimpleQueue" = queue.SimpleQueue()
        self._closed = False
        self._served: list[BrokeredServer] = []
        self._dialed: list = []
        self._server_ctx = self._client_ctx = None

    # ids and announcements

    def next_id(self) -> int:
        with self._cond:
            return self._core.next_id()

    def announce(self, info: ConnInfo) -> None:
        """Send a ConnInfo to the peer (queued until the stream is up)."""
        if self._closed:
            raise BrokerError("broker closed")
        self._outgoing.put(conninfo_to_message(info))

    def _incoming(self, msg) -> None:
        try:
            info = conninfo_from_message(msg)
        except BrokerError as exc:
            log.warning("ignoring a malformed ConnInfo from the peer: %s", exc)
            return
        if self.on_conninfo is not None:
            try:
                self.on_conninfo(info)
            except Exception as exc:  # one bad announcement must not end the stream
                log.warning("ConnInfo for service %d could not be handled: %s", info.service_id, exc)
            return
        with self._cond:
            if not self._core.received(info, self._clock()):
                log.warning("ignoring ConnInfo for service %d (duplicate, or a multiplexing knock "
                            "we do not support)", info.service_id)
            self._cond.notify_all()

    def wait_conninfo(self, service_id: int, timeout: float | None = None) -> ConnInfo:
        timeout = self.dial_timeout if timeout is None else timeout
        deadline = self._clock() + timeout
        with self._cond:
            while True:
                if self._closed:
                    raise BrokerError("broker closed while waiting for connection info")
                info = self._core.claim(service_id, self._clock())
                if info is not None:
                    return info
                left = deadline - self._clock()
                if left <= 0:
                    raise BrokerError(f"timeout waiting for connection info for broker id {service_id}")
                self._cond.wait(left)

    # streams

    def _outgoing_messages(self) -> Iterator:
        while True:
            item = self._outgoing.get()
            if item is _CLOSE:
                return
            yield item

    def _consume(self, responses) -> None:
        try:
            for msg in responses:
                self._incoming(msg)
        except Exception as exc:  # the stream ends with an RpcError when the channel closes
            if not self._closed:
                log.debug("broker stream ended: %s", exc)

    def run_client_stream(self, channel: "grpc.Channel") -> threading.Thread:
        """Host role: open StartStream on ``channel`` and pump it on a daemon thread."""
        from .protos import grpc_broker_pb2_grpc as rpc

        responses = rpc.GRPCBrokerStub(channel).StartStream(self._outgoing_messages())
        self._client_call = responses
        thread = threading.Thread(target=self._consume, args=(responses,), name="goplugin-broker",
                                  daemon=True)
        thread.start()
        return thread

    def servicer(self):
        """Plugin role: the GRPCBroker servicer to add to our gRPC server."""
        from .protos import grpc_broker_pb2_grpc as rpc

        broker = self

        class _Servicer(rpc.GRPCBrokerServicer):
            def StartStream(self, request_iterator, context):
                context.add_callback(lambda: broker._outgoing.put(_CLOSE))
                threading.Thread(target=broker._consume, args=(request_iterator,),
                                 name="goplugin-broker", daemon=True).start()
                yield from broker._outgoing_messages()

        return _Servicer()

    # serving and dialing

    def _listen_dir(self) -> str:
        from .tlsfront import private_dir
        return private_dir("goplugin-broker.", self.socket_dir)

    def accept_and_serve(self, service_id: int,
                         register: Callable[["grpc.Server"], None] | None = None, *,
                         handlers: Sequence["grpc.GenericRpcHandler"] = (),
                         max_workers: int = 16) -> BrokeredServer:
        """Serve a new gRPC server for ``service_id`` and announce it to the peer."""
        from . import grpcutil
        from .tlsfront import ServerFront, private_dir

        if self._closed:
            raise BrokerError("broker closed")
        server = grpcutil.new_server(max_workers, handlers)
        if register is not None:
            register(server)
        public_dir = self._listen_dir()
        public = os.path.join(public_dir, f"broker-{service_id}.sock")
        dirs, front = [public_dir], None
        try:
            if self.tls is None:
                grpcutil.bind_unix(server, public)
            else:
                inner = private_dir("goplugin-grpc.")
                dirs.append(inner)
                backend = os.path.join(inner, "grpc.sock")
                grpcutil.bind_unix(server, backend)
            server.start()
            if self.tls is not None:
                if self._server_ctx is None:
                    self._server_ctx = self.tls.server_context()
                front = ServerFront(public, backend, self._server_ctx, self.tls.peer_der)
            served = BrokeredServer(service_id, server, dirs, front)
        except BaseException:
            server.stop(None)
            for d in dirs:
                shutil.rmtree(d, ignore_errors=True)
            raise
        self._served.append(served)
        self.announce(ConnInfo(service_id, "unix", public))
        return served

    def dial(self, service_id: int, timeout: float | None = None) -> "grpc.Channel":
        """Wait for the peer's ConnInfo for ``service_id`` and return a channel to it."""
        info = self.wait_conninfo(service_id, timeout)
        return self.dial_conninfo(info)

    def dial_conninfo(self, info: ConnInfo) -> "grpc.Channel":
        from . import grpcutil
        from .tlsfront import ClientFront

        if self.tls is None:
            channel = grpcutil.new_channel(grpcutil.grpc_target(info.network, info.address))
        else:
            if self._client_ctx is None:
                self._client_ctx = self.tls.client_context()
            front = ClientFront(info.network, info.address, self._client_ctx, self.tls.peer_der)
            try:
                front.connect_check()
            except BaseException:
                front.close()
                raise
            channel = grpcutil.FrontedChannel(grpcutil.new_channel(front.target), front)
        self._dialed.append(channel)
        return channel

    def close(self) -> None:
        """Stop everything this broker served or dialed and end the stream."""
        if self._closed:
            return
        with self._cond:
            self._closed = True
            self._cond.notify_all()
        self._outgoing.put(_CLOSE)
        call = getattr(self, "_client_call", None)
        if call is not None:
            call.cancel()
        for served in self._served:
            served.stop(0)
        for channel in self._dialed:
            channel.close()

