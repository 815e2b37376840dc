"""HTTP/2 frame routing between Vault and the proxied plugin (sans-I/O).

Proxy mode splices Vault's (TLS-terminated) HTTP/2 connection onto a plaintext HTTP/2
connection to the plugin child. Almost every frame passes byte for byte; the
:class:`Router` only looks where the launcher must act:

* every header block from Vault is HPACK-decoded (in order, so the decoder's dynamic
  table stays in step with the child's) to learn each stream's ``:path``;
* on ``/plugin.GRPCBroker/StartStream`` the gRPC messages are reassembled both ways,
  each ConnInfo is handed to a rewrite callback and re-framed; when a message changes
  length, HTTP/2 flow control is compensated (:class:`Withheld`);
* ``/plugin.GRPCController/Shutdown`` from Vault is reported (the call itself passes);
* :meth:`Router.fail_streams` ends every stream still open toward Vault with a gRPC
  UNAVAILABLE status (for a plugin that died), then GOAWAY;
* for a hot swap, :meth:`Router.goaway` asks Vault to move to a new connection (a graceful
  GOAWAY: nothing is refused), :meth:`Router.open_calls` tells when the calls left have
  drained, and a tap (proxy mode's: ``shim.launch.capture``) sees the set-up calls' messages;
  :meth:`Router.hold_broker` then keeps Vault's broker stream after its child is gone
  (Vault opens it once per plugin client): the router answers Vault on that connection
  itself and hands Vault's later ConnInfo to a callback.

Nothing here touches a socket: bytes go in with :meth:`Router.receive_vault` /
:meth:`Router.receive_child`, bytes come out with :meth:`Router.data_to_child` /
:meth:`Router.data_to_vault`. Frame layout from RFC 9113, header coding from RFC 7541.
"""

from __future__ import annotations

import logging
from typing import Callable

import hpack
import hpack.exceptions

from .errors import GoPluginError

log = logging.getLogger(__name__)

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"

DATA, HEADERS, PRIORITY, RST_STREAM, SETTINGS, PUSH_PROMISE, PING, GOAWAY, WINDOW_UPDATE, CONTINUATION = range(10)
END_STREAM = ACK = 0x1
END_HEADERS = 0x4
PADDED = 0x8
PRIORITY_FLAG = 0x20
SETTINGS_HEADER_TABLE_SIZE = 0x1
NO_ERROR, REFUSED_STREAM, CANCEL = 0x0, 0x7, 0x8

MAX_FRAME_OUT = 16384            # every peer accepts frames this large (SETTINGS_MAX_FRAME_SIZE floor)
MAX_BROKER_MESSAGE = 64 << 10    # larger is no ConnInfo: pass it unread rather than hold it
BROKER_PATH = b"/plugin.GRPCBroker/StartStream"
STDIO_PATH = b"/plugin.GRPCStdio/StreamStdio"
SHUTDOWN_PATH = b"/plugin.GRPCController/Shutdown"
LAST_STREAM_ID = 0x7FFFFFFF
GRPC_UNAVAILABLE = 14

_FIXED_LENGTH = {PRIORITY: 5, RST_STREAM: 4, PING: 8, WINDOW_UPDATE: 4}
_ON_STREAM = frozenset({DATA, HEADERS, PRIORITY, RST_STREAM, PUSH_PROMISE, CONTINUATION})
_ON_CONNECTION = frozenset({SETTINGS, PING, GOAWAY})


class H2RouteError(GoPluginError):
    """A peer sent something that is not HTTP/2 as the router needs it; the connection ends."""


# --- frames ---------------------------------------------------------------------------

class Frame:
    """One frame as received: ``raw`` is the whole frame, header included."""

    __slots__ = ("type", "flags", "stream_id", "raw")

    def __init__(self, type: int, flags: int, stream_id: int, raw: bytes):
        self.type, self.flags, self.stream_id, self.raw = type, flags, stream_id, raw

    @property
    def payload(self) -> bytes:
        return self.raw[9:]

    def __repr__(self) -> str:
        return f"Frame(type={self.type}, flags={self.flags:#x}, stream={self.stream_id}, len={len(self.raw) - 9})"


def frame(type: int, flags: int, stream_id: int, payload: bytes = b"") -> bytes:
    """Serialize one frame (the reserved bit is always 0)."""
    return (len(payload).to_bytes(3, "big") + bytes((type, flags)) + (stream_id & 0x7FFFFFFF).to_bytes(4, "big")
            + payload)


def _check(ftype: int, flags: int, sid: int, payload: bytes) -> None:
    length = len(payload)
    fixed = _FIXED_LENGTH.get(ftype)
    if fixed is not None and length != fixed:
        raise H2RouteError(f"HTTP/2 frame type {ftype} with length {length}, not {fixed}")
    if ftype in _ON_STREAM and sid == 0:
        raise H2RouteError(f"HTTP/2 frame type {ftype} on stream 0")
    if ftype in _ON_CONNECTION and sid != 0:
        raise H2RouteError(f"HTTP/2 frame type {ftype} on stream {sid}, not 0")
    if ftype == SETTINGS and (length % 6 or (flags & ACK and length)):
        raise H2RouteError(f"HTTP/2 SETTINGS frame with length {length}")
    if ftype == GOAWAY and length < 8:
        raise H2RouteError(f"HTTP/2 GOAWAY frame with length {length}")
    if ftype in (DATA, HEADERS, PUSH_PROMISE):
        unpadded_payload(ftype, flags, payload)


def unpadded_payload(ftype: int, flags: int, payload: bytes) -> tuple[bytes, int]:
    """(payload without padding, number of padding bytes incl. the pad length field);
    for HEADERS the priority fields are dropped too."""
    start, end, padding = 0, len(payload), 0
    if flags & PADDED:
        if not payload or payload[0] >= end:
            raise H2RouteError(f"HTTP/2 frame type {ftype}: padding longer than the payload")
        padding = 1 + payload[0]
        start, end = 1, end - payload[0]
    if ftype == HEADERS and flags & PRIORITY_FLAG:
        start += 5
    elif ftype == PUSH_PROMISE:
        start += 4
    if start > end:
        raise H2RouteError(f"HTTP/2 frame type {ftype} too short for its flags")
    return payload[start:end], padding


class FrameReader:
    """Splits a byte stream into checked frames; an incomplete frame waits for more bytes."""

    def __init__(self, preface: bool = False):
        self._buf = bytearray()
        self._preface = preface

    def feed(self, data: bytes) -> list[Frame]:
        buf = self._buf
        buf += data
        if self._preface:
            if len(buf) < len(PREFACE):
                if not PREFACE.startswith(bytes(buf)):
                    raise H2RouteError("the peer did not start with the HTTP/2 connection preface")
                return []
            if bytes(buf[:len(PREFACE)]) != PREFACE:
                raise H2RouteError("the peer did not start with the HTTP/2 connection preface")
            del buf[:len(PREFACE)]
            self._preface = False
        frames: list[Frame] = []
        pos, size = 0, len(buf)
        while size - pos >= 9:
            length = int.from_bytes(buf[pos:pos + 3], "big")
            end = pos + 9 + length
            if end > size:
                break
            ftype, flags = buf[pos + 3], buf[pos + 4]
            sid = int.from_bytes(buf[pos + 5:pos + 9], "big") & 0x7FFFFFFF
            raw = bytes(buf[pos:end])
            if ftype <= CONTINUATION and (ftype in _FIXED_LENGTH or ftype not in (DATA, CONTINUATION)
                                          or flags & PADDED or sid == 0):
                _check(ftype, flags, sid, raw[9:])
            frames.append(Frame(ftype, flags, sid, raw))
            pos = end
        if pos:
            del buf[:pos]
        return frames

    @property
    def pending(self) -> int:
        return len(self._buf)


# --- HPACK encoding of our own header blocks --------------------------------------------

def _hpack_int(value: int, prefix: int, first: int = 0) -> bytes:
    limit = (1 << prefix) - 1
    if value < limit:
        return bytes((first | value,))
    out = bytearray((first | limit,))
    value -= limit
    while value >= 128:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def encode_literal(headers: list[tuple[bytes, bytes]]) -> bytes:
    """A header block of "literal header field without indexing, new name" entries only:
    the peer's decoder table is neither used nor changed (RFC 7541 6.2.2)."""
    out = bytearray()
    for name, value in headers:
        out += b"\x00" + _hpack_int(len(name), 7) + name + _hpack_int(len(value), 7) + value
    return bytes(out)


def grpc_message(text: str) -> bytes:
    """grpc-message percent-encoding: printable ASCII except '%' passes."""
    return b"".join(bytes((c,)) if 0x20 <= c <= 0x7E and c != 0x25 else b"%%%02X" % c for c in text.encode())


# --- flow control and broker messages ---------------------------------------------------

class Withheld:
    """Credit owed back because we forwarded more bytes than a sender sent.

    When a rewritten message is m - n bytes longer than the original, the receiver will
    credit m bytes while the sender spent only n: that much is taken out of the next
    WINDOW_UPDATEs to the sender, per stream and for the connection (stream 0).
    """

    def __init__(self):
        self.owed: dict[int, int] = {}

    def add(self, stream_id: int, amount: int) -> None:
        if amount > 0:
            self.owed[stream_id] = self.owed.get(stream_id, 0) + amount

    def filter(self, stream_id: int, increment: int) -> int:
        """The increment to forward; 0 means drop the WINDOW_UPDATE."""
        owed = self.owed.get(stream_id)
        if not owed:
            return increment
        if increment <= owed:
            if increment == owed:
                del self.owed[stream_id]
            else:
                self.owed[stream_id] = owed - increment
            return 0
        del self.owed[stream_id]
        return increment - owed

    def forget(self, stream_id: int) -> None:
        if stream_id:
            self.owed.pop(stream_id, None)


class MessageSplitter:
    """gRPC length-prefixed messages (1 flag byte, 4 length bytes, body) from DATA payloads.
    A message announced larger than MAX_BROKER_MESSAGE turns the splitter into a pass-through."""

    def __init__(self):
        self.buf = bytearray()
        self.passthrough = False

    def feed(self, data: bytes) -> list[bytes]:
        if self.passthrough:
            return []
        buf = self.buf
        buf += data
        out = []
        while len(buf) >= 5:
            size = int.from_bytes(buf[1:5], "big")
            if size > MAX_BROKER_MESSAGE:
                self.passthrough = True
                break
            if len(buf) < 5 + size:
                break
            out.append(bytes(buf[:5 + size]))
            del buf[:5 + size]
        return out

    def take_rest(self) -> bytes:
        rest = bytes(self.buf)
        self.buf.clear()
        return rest


def rewrite_conninfo(message: bytes, rewrite: Callable) -> bytes:
    """One gRPC message carrying a ConnInfo, passed through ``rewrite`` (ConnInfo ->
    ConnInfo, or None to drop it). Returns the new message, or b"" when dropped.
    Compressed messages cannot be read and pass unchanged; unreadable ones are dropped."""
    from google.protobuf.message import DecodeError

    from ._proto import grpc_broker_pb2 as pb
    from .broker import conninfo_from_message, conninfo_to_message

    if message[0] != 0:
        log.warning("broker message is compressed; passed on without rewriting")
        return message
    try:
        info = conninfo_from_message(pb.ConnInfo.FromString(message[5:]))
        new = rewrite(info)
    except (DecodeError, GoPluginError, OSError) as exc:
        log.warning("dropping a broker message that cannot be relayed: %s", exc)
        return b""
    if new is None:
        return b""
    body = conninfo_to_message(new).SerializeToString()
    return b"\x00" + len(body).to_bytes(4, "big") + body


# --- the router -------------------------------------------------------------------------

class _Stream:
    __slots__ = ("headers_out", "broker", "tapped", "long_lived")

    def __init__(self):
        self.headers_out = False        # response headers went to Vault
        self.broker: tuple[MessageSplitter, MessageSplitter] | None = None  # (from Vault, from child)
        self.tapped = False             # the tap watches this call
        self.long_lived = False         # broker or stdio stream: lives as long as the plugin client


class Router:
    """One Vault connection spliced onto one child connection.

    ``from_vault`` / ``from_child`` rewrite ConnInfo announcements seen on the broker
    stream (return None to drop one); ``on_shutdown`` is called when Vault calls
    GRPCController/Shutdown. ``tap`` (``opened``, ``data``, ``ended``, ``reset``, ``close``) is shown
    each request header block and, for the calls it wants, their DATA and their end. Stream
    state is kept for streams still open toward Vault.
    """

    def __init__(self, *, from_vault: Callable | None = None, from_child: Callable | None = None,
                 on_shutdown: Callable[[], None] | None = None, tap=None):
        self.rewrite_from_vault = from_vault or (lambda info: info)
        self.rewrite_from_child = from_child or (lambda info: info)
        self.on_shutdown = on_shutdown
        self.tap = tap                      # a tap (proxy mode's: shim.launch.capture.Tap), or None
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
        self.held: Callable | None = None   # hold_broker's callback: no child any more

    # output

    def data_to_child(self) -> bytes:
        out, self._to_child = self._to_child, []
        return b"".join(out) if len(out) != 1 else out[0]

    def data_to_vault(self) -> bytes:
        out, self._to_vault = self._to_vault, []
        return b"".join(out) if len(out) != 1 else out[0]

    # Vault -> child

    def receive_vault(self, data: bytes) -> None:
        if self.held is not None:
            self._receive_held(data)
            return
        frames = self._vault_in.feed(data)
        out = self._to_child
        if not self._preface_sent and not self._vault_in._preface:
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
                        self._broker_data(f, st.broker[0], self.rewrite_from_vault, out, self._to_vault,
                                          self.owed_to_vault)
                        continue
                    if st.tapped:
                        self.tap.data(f.stream_id, True, unpadded_payload(DATA, f.flags, f.payload)[0])
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
                    inc = self.owed_to_child.filter(f.stream_id, int.from_bytes(f.raw[9:13], "big") & 0x7FFFFFFF)
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
        if st is None or st.broker is not None or st.tapped:
            return
        for name, value in headers:
            if name == b":path":
                if value == BROKER_PATH:
                    st.broker = (MessageSplitter(), MessageSplitter())
                    st.long_lived = True
                elif value == STDIO_PATH:
                    st.long_lived = True
                elif value == SHUTDOWN_PATH and self.on_shutdown is not None:
                    self.on_shutdown()
                break
        if self.tap is not None and not st.long_lived:
            st.tapped = self.tap.opened(sid, headers)

    # child -> Vault

    def receive_child(self, data: bytes) -> None:
        frames = self._child_in.feed(data)
        out = self._to_vault
        streams = self.streams
        for f in frames:
            t = f.type
            if t == DATA:
                st = streams.get(f.stream_id)
                if st is not None:
                    if st.broker is not None:
                        self._broker_data(f, st.broker[1], self.rewrite_from_child, out, self._to_child,
                                          self.owed_to_child)
                        if f.flags & END_STREAM:
                            self._forget(f.stream_id)
                        continue
                    if st.tapped:
                        self.tap.data(f.stream_id, False, unpadded_payload(DATA, f.flags, f.payload)[0])
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
                    inc = self.owed_to_vault.filter(f.stream_id, int.from_bytes(f.raw[9:13], "big") & 0x7FFFFFFF)
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
            if st.tapped:
                if reset:
                    self.tap.reset(sid)
                else:
                    self.tap.ended(sid)

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

    def hold_broker(self, on_conninfo: Callable) -> bool:
        """A hot swap retires this connection's child, but Vault's broker stream runs here:
        Vault opens it once per plugin client, so a mount set up later (a multiplexed
        plugin's) announces its Storage broker id on it. From now on the router is Vault's
        only peer on this connection: it answers SETTINGS and PING, grants flow-control credit
        for what Vault sends, refuses new streams (REFUSED_STREAM: gRPC retries them on
        another connection), and passes each ConnInfo from Vault through ``from_vault`` to
        ``on_conninfo``. Only after a drain (:meth:`open_calls` is 0) and a GOAWAY. False,
        and nothing changed, when no broker stream from Vault is open here."""
        if self.finished or self._child_in_block or self._block is not None or self.open_calls():
            return False
        if not any(st.broker is not None for st in self.streams.values()):
            return False
        self.held = on_conninfo
        self._to_child.clear()
        return True

    def _held_conninfo(self, info):
        new = self.rewrite_from_vault(info)
        if new is not None:
            self.held(new)
        return None   # nothing is forwarded: there is no child here

    def _receive_held(self, data: bytes) -> None:
        out = self._to_vault
        for f in self._vault_in.feed(data):
            t = f.type
            if t == DATA:
                st = self.streams.get(f.stream_id)
                if st is not None and st.broker is not None and not st.broker[0].passthrough:
                    for message in st.broker[0].feed(unpadded_payload(DATA, f.flags, f.payload)[0]):
                        rewrite_conninfo(message, self._held_conninfo)
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

    @staticmethod
    def _broker_data(f: Frame, splitter: MessageSplitter, rewrite: Callable, out: list[bytes],
                     back: list[bytes], owed: Withheld) -> None:
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
            forwarded += rewrite_conninfo(message, rewrite)
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

    # child death

    def fail_streams(self, message: str) -> None:
        """End every stream still open toward Vault with UNAVAILABLE and ``message``,
        then GOAWAY. Once only; nothing is routed afterwards."""
        if self.finished:
            return
        self.finished = True
        if self.tap is not None:
            self.tap.close()
        if self._child_in_block:  # a frame now would break Vault's header block: just close
            self.streams.clear()
            return
        status = (b"grpc-status", str(GRPC_UNAVAILABLE).encode())
        text = (b"grpc-message", grpc_message(message))
        for sid in sorted(self.streams):
            st = self.streams[sid]
            headers = [status, text] if st.headers_out else \
                [(b":status", b"200"), (b"content-type", b"application/grpc"), status, text]
            self._to_vault.append(frame(HEADERS, END_STREAM | END_HEADERS, sid, encode_literal(headers)))
        self.streams.clear()
        self._to_vault.append(frame(GOAWAY, 0, 0, self.last_stream.to_bytes(4, "big") + NO_ERROR.to_bytes(4, "big")))
