"""HTTP/2 frame routing between Vault and the proxied plugin (sans-I/O).

Proxy mode splices Vault's (TLS-terminated) HTTP/2 connection onto a plaintext HTTP/2
connection to the plugin child. Almost every frame passes byte for byte; the
:class:`Router` only looks where the launcher must act, and tells it so with events
(:mod:`.h2events`):

* every header block from Vault is HPACK-decoded (in order, so the decoder's dynamic
  table stays in step with the child's) to learn each stream's ``:path``;
* on ``/plugin.GRPCBroker/StartStream`` the gRPC messages are reassembled both ways; each
  ConnInfo is a :class:`ConnInfoSeen`, and the router waits for :meth:`Router.answer` (the
  ConnInfo to pass on instead, or None to drop it) before it routes on; when a message
  changes length, HTTP/2 flow control is compensated (:class:`~.h2frame.Withheld`);
* ``/plugin.GRPCController/Shutdown`` from Vault is a :class:`Shutdown` (the call passes);
* the calls on the paths it is told to ``watch`` are shown as :class:`CallOpened`,
  :class:`Data` and :class:`CallEnded` (proxy mode's hot swap reads Vault's set-up calls so);
* :meth:`Router.fail_streams` ends every stream still open toward Vault with a gRPC
  UNAVAILABLE status (for a plugin that died), then GOAWAY;
* for a hot swap, :meth:`Router.goaway` asks Vault to move to a new connection (a graceful
  GOAWAY: nothing is refused), :meth:`Router.open_calls` tells when the calls left have
  drained, and :meth:`Router.hold_broker` then keeps Vault's broker stream after its child is
  gone (Vault opens it once per plugin client): the router answers Vault on that connection
  itself and shows Vault's later ConnInfo as events that wait for no answer.

Nothing here touches a socket, calls back or logs: bytes go in with :meth:`Router.receive_vault`
/ :meth:`Router.receive_child`, which return the events; bytes come out with
:meth:`Router.data_to_child` / :meth:`Router.data_to_vault`. Bytes that break HTTP/2 raise
:class:`~.errors.HostProtocolError` when Vault sent them, :class:`~.errors.PluginProtocolError`
when the child did. The frames themselves are :mod:`.h2frame`'s.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Generator, Iterable

import hpack
import hpack.exceptions

from .errors import GoPluginError, H2RouteError, HostProtocolError, PluginProtocolError
from .h2events import CallEnded, CallOpened, ConnInfoSeen, Data, Event, Shutdown, UnreadBrokerMessage
from .h2frame import (ACK, CONTINUATION, DATA, END_HEADERS, END_STREAM, GOAWAY, HEADERS, LAST_STREAM_ID,
                      MAX_FRAME_OUT, NO_ERROR, PING, PREFACE, REFUSED_STREAM, RST_STREAM, SETTINGS,
                      SETTINGS_HEADER_TABLE_SIZE, WINDOW_UPDATE, Frame, FrameReader, MessageSplitter, Withheld,
                      encode_literal, frame, grpc_message, length_prefixed, unpadded_payload, window_increment)

if TYPE_CHECKING:  # pragma: no cover
    from .broker import ConnInfo

MAX_BROKER_MESSAGE = 64 << 10    # larger is no ConnInfo: pass it unread rather than hold it
BROKER_PATH = b"/plugin.GRPCBroker/StartStream"
STDIO_PATH = b"/plugin.GRPCStdio/StreamStdio"
SHUTDOWN_PATH = b"/plugin.GRPCController/Shutdown"
GRPC_UNAVAILABLE = 14

# Routing bytes: a generator that yields each ConnInfoSeen that waits and gets its answer back.
_Steps = Generator[ConnInfoSeen, "ConnInfo | None", None]


def read_conninfo(message: bytes) -> ConnInfo:
    """The ConnInfo in one uncompressed gRPC message. protobuf's DecodeError, or a
    GoPluginError, when it holds none."""
    from .protos import grpc_broker_pb2 as pb
    from .broker import conninfo_from_message

    return conninfo_from_message(pb.ConnInfo.FromString(message[5:]))


def conninfo_message(info: ConnInfo) -> bytes:
    """``info`` as one uncompressed gRPC message."""
    from .broker import conninfo_to_message

    return length_prefixed(conninfo_to_message(info).SerializeToString())


# --- the router -------------------------------------------------------------------------

class _Stream:
    __slots__ = ("headers_out", "broker", "watched", "long_lived")

    def __init__(self):
        self.headers_out = False        # response headers went to Vault
        self.broker: tuple[MessageSplitter, MessageSplitter] | None = None  # (from Vault, from child)
        self.watched = False            # its events are shown
        self.long_lived = False         # broker or stdio stream: lives as long as the plugin client


class Router:
    """One Vault connection spliced onto one child connection.

    ``watch``: the call paths whose calls are shown as :class:`CallOpened`, :class:`Data` and
    :class:`CallEnded` events. Stream state is kept for streams still open toward Vault.
    """

    def __init__(self, *, watch: Iterable[str] = ()):
        self.watch = frozenset(path.encode() for path in watch)
        self.calls_done = 0                 # call streams (not broker/stdio) that ended
        self.going_away = False
        self._goaway_held = False           # a GOAWAY waits for the child's header block to end
        self._vault_in = FrameReader(preface=True)
        self._child_in = FrameReader()
        self._to_child: list[bytes] = []
        self._to_vault: list[bytes] = []
        self._decoder = hpack.Decoder()
        self._decoder.max_header_list_size = 1 << 32
        self._block: tuple[int, bytearray] | None = None   # header block from Vault being collected
        self._child_in_block = False                         # the child is mid header block
        self.streams: dict[int, _Stream] = {}
        self.last_stream = 0
        self.owed_to_vault = Withheld()   # filters WINDOW_UPDATEs the child sends to Vault
        self.owed_to_child = Withheld()   # filters WINDOW_UPDATEs Vault sends to the child
        self.finished = False
        self._preface_sent = False
        self.held = False                 # hold_broker: no child any more
        self._events: list[Event] = []
        self._waiting: tuple[_Steps, type[H2RouteError]] | None = None   # routing that waits for answer()

    # input and output

    def receive_vault(self, data: bytes) -> list[Event]:
        """Bytes from Vault; the events they bring. HostProtocolError: they break HTTP/2."""
        return self._start(self._held_from_vault(data) if self.held else self._from_vault(data), HostProtocolError)

    def receive_child(self, data: bytes) -> list[Event]:
        """Bytes from the child; the events they bring. PluginProtocolError: they break HTTP/2."""
        return self._start(self._from_child(data), PluginProtocolError)

    def answer(self, info: ConnInfo | None) -> list[Event]:
        """What to pass on for the :class:`ConnInfoSeen` the router waits on (None drops the
        message); routing goes on, and the events of the bytes that waited are returned."""
        if self._waiting is None:
            raise RuntimeError("no ConnInfoSeen waits for an answer")
        steps, fault = self._waiting
        self._waiting = None
        return self._run(steps, info, fault)

    def _start(self, steps: _Steps, fault: type[H2RouteError]) -> list[Event]:
        if self._waiting is not None:
            raise RuntimeError("the router waits for the answer to a ConnInfoSeen")
        return self._run(steps, None, fault)

    def _run(self, steps: _Steps, answer: ConnInfo | None, fault: type[H2RouteError]) -> list[Event]:
        events = self._events = []
        try:
            asked = steps.send(answer)
        except StopIteration:
            return events
        except H2RouteError as exc:   # the frame codec's (it knows no side), or ours
            raise fault(exc.reason) from None
        events.append(asked)
        self._waiting = (steps, fault)
        return events

    def data_to_child(self) -> bytes:
        """The bytes to write to the child now (routed so far, even while an answer is awaited)."""
        return self._take(self._to_child)

    def data_to_vault(self) -> bytes:
        """The bytes to write to Vault now."""
        return self._take(self._to_vault)

    @staticmethod
    def _take(out: list[bytes]) -> bytes:
        data = b"".join(out) if len(out) != 1 else out[0]
        out.clear()   # emptied in place: routing that waits for an answer still holds the list
        return data

    # Vault -> child

    def _from_vault(self, data: bytes) -> _Steps:
        frames = self._vault_in.feed(data)
        out = self._to_child
        if not self._preface_sent and not self._vault_in.awaiting_preface:
            out.append(PREFACE)
            self._preface_sent = True
        for f in frames:
            t = f.type
            if self._block is not None and t != CONTINUATION:
                raise H2RouteError("HTTP/2 header block from Vault interrupted by another frame")
            if t == DATA:
                st = self.streams.get(f.stream_id)
                if st is not None:
                    if st.broker is not None:
                        yield from self._broker_data(f, True, st.broker[0], out, self._to_vault, self.owed_to_vault)
                        continue
                    if st.watched:
                        self._events.append(Data(f.stream_id, True, unpadded_payload(DATA, f.flags, f.payload)[0]))
            elif t == HEADERS:
                sid = f.stream_id
                fragment, _ = unpadded_payload(HEADERS, f.flags, f.payload)
                if sid not in self.streams and sid > self.last_stream:
                    self.streams[sid] = _Stream()
                    self.last_stream = sid
                if f.flags & END_HEADERS:
                    self._header_block(sid, fragment)
                else:
                    self._block = (sid, bytearray(fragment))
            elif t == CONTINUATION:
                if self._block is None or self._block[0] != f.stream_id:
                    raise H2RouteError("HTTP/2 CONTINUATION from Vault without its HEADERS")
                self._block[1].extend(f.payload)
                if f.flags & END_HEADERS:
                    sid, block = self._block
                    self._block = None
                    self._header_block(sid, bytes(block))
            elif t == WINDOW_UPDATE:
                if self.owed_to_child.owed:
                    inc = self.owed_to_child.filter(f.stream_id, window_increment(f))
                    if inc:
                        out.append(frame(WINDOW_UPDATE, 0, f.stream_id, inc.to_bytes(4, "big")))
                    continue
            elif t == RST_STREAM:
                self._forget(f.stream_id, reset=True)
            out.append(f.raw)

    def _header_block(self, sid: int, block: bytes) -> None:
        try:
            headers = self._decoder.decode(block, raw=True)
        except hpack.exceptions.HPACKError as exc:
            raise H2RouteError(f"cannot decode a header block from Vault: {exc}") from None
        st = self.streams.get(sid)
        if st is None or st.broker is not None or st.watched:
            return
        for name, value in headers:
            if name == b":path":
                if value == BROKER_PATH:
                    st.broker = (MessageSplitter(MAX_BROKER_MESSAGE), MessageSplitter(MAX_BROKER_MESSAGE))
                    st.long_lived = True
                elif value == STDIO_PATH:
                    st.long_lived = True
                elif value == SHUTDOWN_PATH:
                    self._events.append(Shutdown(sid))
                if value in self.watch and not st.long_lived:
                    st.watched = True
                    self._events.append(CallOpened(sid, headers))
                break

    # child -> Vault

    def _from_child(self, data: bytes) -> _Steps:
        frames = self._child_in.feed(data)
        out = self._to_vault
        streams = self.streams
        for f in frames:
            t = f.type
            if t == DATA:
                st = streams.get(f.stream_id)
                if st is not None:
                    if st.broker is not None:
                        yield from self._broker_data(f, False, st.broker[1], out, self._to_child, self.owed_to_child)
                        if f.flags & END_STREAM:
                            self._forget(f.stream_id)
                        continue
                    if st.watched:
                        self._events.append(Data(f.stream_id, False, unpadded_payload(DATA, f.flags, f.payload)[0]))
                    if f.flags & END_STREAM:
                        self._forget(f.stream_id)
            elif t == HEADERS:
                st = streams.get(f.stream_id)
                if st is not None:
                    if f.flags & END_STREAM:
                        self._forget(f.stream_id)
                    else:
                        st.headers_out = True
                self._child_in_block = not f.flags & END_HEADERS
                if self._goaway_held and not self._child_in_block:
                    out.append(f.raw)
                    self._send_goaway()
                    continue
            elif t == CONTINUATION:
                self._child_in_block = not f.flags & END_HEADERS
                if self._goaway_held and not self._child_in_block:
                    out.append(f.raw)
                    self._send_goaway()
                    continue
            elif t == WINDOW_UPDATE:
                if self.owed_to_vault.owed:
                    inc = self.owed_to_vault.filter(f.stream_id, window_increment(f))
                    if inc:
                        out.append(frame(WINDOW_UPDATE, 0, f.stream_id, inc.to_bytes(4, "big")))
                    continue
            elif t == RST_STREAM:
                self._forget(f.stream_id, reset=True)
            elif t == SETTINGS and not f.flags & ACK:
                payload = f.payload
                for i in range(0, len(payload), 6):
                    if int.from_bytes(payload[i:i + 2], "big") == SETTINGS_HEADER_TABLE_SIZE:
                        self._decoder.max_allowed_table_size = int.from_bytes(payload[i + 2:i + 6], "big")
            out.append(f.raw)

    # shared

    def _forget(self, sid: int, reset: bool = False) -> None:
        st = self.streams.pop(sid, None)
        if st is not None:
            self.owed_to_vault.forget(sid)
            self.owed_to_child.forget(sid)
            if not st.long_lived:
                self.calls_done += 1
            if st.watched:
                self._events.append(CallEnded(sid, complete=not reset))

    # the broker stream

    def _message(self, sid: int, from_vault: bool, message: bytes, relayed: bool = True):
        """What to pass on in place of one broker-stream message (a generator: a ConnInfo
        waits for its answer)."""
        from google.protobuf.message import DecodeError

        if message[0] != 0:
            self._events.append(UnreadBrokerMessage(sid, from_vault, "compressed", dropped=False))
            return message
        try:
            info = read_conninfo(message)
        except (DecodeError, GoPluginError) as exc:
            self._events.append(UnreadBrokerMessage(sid, from_vault, str(exc), dropped=True))
            return b""
        seen = ConnInfoSeen(sid, from_vault, info, relayed)
        if not relayed:
            self._events.append(seen)
            return b""
        new = yield seen
        return b"" if new is None else conninfo_message(new)

    def _broker_data(self, f: Frame, from_vault: bool, splitter: MessageSplitter, out: list[bytes],
                     back: list[bytes], owed: Withheld) -> _Steps:
        """Re-frame one broker-stream DATA frame; compensate the sender's flow control.

        ``out`` goes to the receiver, ``back`` to the sender; ``owed`` filters the
        WINDOW_UPDATEs that the receiver sends to the sender.
        """
        sid, end = f.stream_id, f.flags & END_STREAM
        if splitter.passthrough:
            out.append(f.raw)
            return
        data, _ = unpadded_payload(DATA, f.flags, f.payload)
        held_before = len(splitter.buf)
        forwarded = bytearray()
        for message in splitter.feed(data):
            forwarded += (yield from self._message(sid, from_vault, message))
        if splitter.passthrough or end:
            forwarded += splitter.take_rest()
        # bytes the splitter still holds are counted when they are forwarded
        delta = (len(f.raw) - 9) - len(forwarded) - (len(splitter.buf) - held_before)
        if forwarded or end:
            for pos in range(0, max(len(forwarded), 1), MAX_FRAME_OUT):
                chunk = bytes(forwarded[pos:pos + MAX_FRAME_OUT])
                last = pos + MAX_FRAME_OUT >= len(forwarded)
                out.append(frame(DATA, END_STREAM if (end and last) else 0, sid, chunk))
        if delta > 0:
            increment = delta.to_bytes(4, "big")
            back.append(frame(WINDOW_UPDATE, 0, 0, increment))
            if not end:
                back.append(frame(WINDOW_UPDATE, 0, sid, increment))
        elif delta < 0:
            owed.add(0, -delta)
            if not end:
                owed.add(sid, -delta)

    # hot swap

    def open_calls(self) -> int:
        """Calls still open toward Vault, not counting the broker and stdio streams (they
        last as long as Vault's plugin client)."""
        return sum(1 for st in self.streams.values() if not st.long_lived)

    def goaway(self) -> None:
        """Ask Vault to open no new stream here (GOAWAY, NO_ERROR, last stream 2^31-1): gRPC
        clients move their next calls to a new connection; every stream Vault opened, even
        one crossing this frame, is still served here. Held back while the child is in the
        middle of a header block (a frame there would break it)."""
        if self.going_away or self.finished:
            return
        self.going_away = True
        if self._child_in_block:
            self._goaway_held = True
        else:
            self._send_goaway()

    def _send_goaway(self) -> None:
        self._goaway_held = False
        self._to_vault.append(frame(GOAWAY, 0, 0, LAST_STREAM_ID.to_bytes(4, "big") + NO_ERROR.to_bytes(4, "big")))

    def hold_broker(self) -> bool:
        """A hot swap retires this connection's child, but Vault's broker stream runs here:
        Vault opens it once per plugin client, so a mount set up later (a multiplexed
        plugin's) announces its Storage broker id on it. From now on the router is Vault's
        only peer on this connection: it answers SETTINGS and PING, grants flow-control credit
        for what Vault sends, refuses new streams (REFUSED_STREAM: gRPC retries them on
        another connection), and shows each ConnInfo from Vault as a :class:`ConnInfoSeen`
        that is not ``relayed``. Only after a drain (:meth:`open_calls` is 0) and a GOAWAY.
        False, and nothing changed, when no broker stream from Vault is open here."""
        if (self.finished or self._waiting is not None or self._child_in_block or self._block is not None
                or self.open_calls()):
            return False
        if not any(st.broker is not None for st in self.streams.values()):
            return False
        self.held = True
        self._to_child.clear()
        return True

    def _held_from_vault(self, data: bytes) -> _Steps:
        out = self._to_vault
        for f in self._vault_in.feed(data):
            t = f.type
            if t == DATA:
                st = self.streams.get(f.stream_id)
                if st is not None and st.broker is not None and not st.broker[0].passthrough:
                    for message in st.broker[0].feed(unpadded_payload(DATA, f.flags, f.payload)[0]):
                        yield from self._message(f.stream_id, True, message, relayed=False)
                size = len(f.raw) - 9
                if size:   # consumed at once: give the credit back
                    out.append(frame(WINDOW_UPDATE, 0, 0, size.to_bytes(4, "big")))
                    if st is not None and not f.flags & END_STREAM:
                        out.append(frame(WINDOW_UPDATE, 0, f.stream_id, size.to_bytes(4, "big")))
                if f.flags & END_STREAM:
                    self._forget(f.stream_id)
            elif t == HEADERS:
                if f.stream_id in self.streams:
                    if f.flags & END_STREAM:
                        self._forget(f.stream_id)
                elif f.stream_id > self.last_stream:
                    self.last_stream = f.stream_id
                    out.append(frame(RST_STREAM, 0, f.stream_id, REFUSED_STREAM.to_bytes(4, "big")))
            elif t == RST_STREAM:
                self._forget(f.stream_id, reset=True)
            elif t == PING and not f.flags & ACK:
                out.append(frame(PING, ACK, 0, f.payload))
            elif t == SETTINGS and not f.flags & ACK:
                out.append(frame(SETTINGS, ACK, 0))

    # child death

    def fail_streams(self, message: str) -> list[Event]:
        """End every stream still open toward Vault with UNAVAILABLE and ``message``,
        then GOAWAY. Once only; nothing is routed afterwards. Returns a :class:`CallEnded`
        (not complete) for each watched call that was still open."""
        if self.finished:
            return []
        self.finished = True
        self._waiting = None
        ended: list[Event] = [CallEnded(sid, False) for sid, st in sorted(self.streams.items()) if st.watched]
        if self._child_in_block:  # a frame now would break Vault's header block: just close
            self.streams.clear()
            return ended
        status = (b"grpc-status", str(GRPC_UNAVAILABLE).encode())
        text = (b"grpc-message", grpc_message(message))
        for sid in sorted(self.streams):
            st = self.streams[sid]
            headers = [status, text] if st.headers_out else \
                [(b":status", b"200"), (b"content-type", b"application/grpc"), status, text]
            self._to_vault.append(frame(HEADERS, END_STREAM | END_HEADERS, sid, encode_literal(headers)))
        self.streams.clear()
        self._to_vault.append(frame(GOAWAY, 0, 0, self.last_stream.to_bytes(4, "big") + NO_ERROR.to_bytes(4, "big")))
        return ended
