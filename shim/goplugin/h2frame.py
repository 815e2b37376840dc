"""HTTP/2 frames and gRPC messages on them, as the frame router (:mod:`.h2route`) reads and
writes them (sans-I/O).

:class:`FrameReader` splits a byte stream into checked :class:`Frame` s, :func:`frame` writes
one; :func:`encode_literal` is the only HPACK encoding we need (our own header blocks leave
the peer's table alone); :class:`MessageSplitter` reassembles gRPC's length-prefixed messages
from DATA payloads; :class:`Withheld` keeps the flow-control credit owed when a relayed
message changed length. Bytes that are not HTTP/2 as the router needs it raise
:class:`~.errors.H2RouteError`: this module does not know which peer sent them, the router
says whose they were. Frame layout from RFC 9113, header coding from RFC 7541.
"""

from __future__ import annotations

from .errors import H2RouteError

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"

DATA, HEADERS, PRIORITY, RST_STREAM, SETTINGS, PUSH_PROMISE, PING, GOAWAY, WINDOW_UPDATE, CONTINUATION = range(10)
END_STREAM = ACK = 0x1
END_HEADERS = 0x4
PADDED = 0x8
PRIORITY_FLAG = 0x20
SETTINGS_HEADER_TABLE_SIZE = 0x1
NO_ERROR, REFUSED_STREAM, CANCEL = 0x0, 0x7, 0x8

MAX_FRAME_OUT = 16384            # every peer accepts frames this large (SETTINGS_MAX_FRAME_SIZE floor)
LAST_STREAM_ID = 0x7FFFFFFF

_FIXED_LENGTH = {PRIORITY: 5, RST_STREAM: 4, PING: 8, WINDOW_UPDATE: 4}
_ON_STREAM = frozenset({DATA, HEADERS, PRIORITY, RST_STREAM, PUSH_PROMISE, CONTINUATION})
_ON_CONNECTION = frozenset({SETTINGS, PING, GOAWAY})


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


def window_increment(f: Frame) -> int:
    """A WINDOW_UPDATE frame's increment."""
    return int.from_bytes(f.raw[9:13], "big") & 0x7FFFFFFF


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
        self.awaiting_preface = preface

    def feed(self, data: bytes) -> list[Frame]:
        buf = self._buf
        buf += data
        if self.awaiting_preface:
            if len(buf) < len(PREFACE):
                if not PREFACE.startswith(bytes(buf)):
                    raise H2RouteError("the peer did not start with the HTTP/2 connection preface")
                return []
            if bytes(buf[:len(PREFACE)]) != PREFACE:
                raise H2RouteError("the peer did not start with the HTTP/2 connection preface")
            del buf[:len(PREFACE)]
            self.awaiting_preface = False
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


# --- gRPC messages ----------------------------------------------------------------------

def grpc_message(text: str) -> bytes:
    """grpc-message percent-encoding: printable ASCII except '%' passes."""
    return b"".join(bytes((c,)) if 0x20 <= c <= 0x7E and c != 0x25 else b"%%%02X" % c for c in text.encode())


def length_prefixed(body: bytes) -> bytes:
    """One uncompressed gRPC message: flag byte 0, 4 length bytes, the body."""
    return b"\x00" + len(body).to_bytes(4, "big") + body


class MessageSplitter:
    """gRPC length-prefixed messages (1 flag byte, 4 length bytes, body) from DATA payloads.
    A message announced larger than ``limit`` turns the splitter into a pass-through."""

    def __init__(self, limit: int):
        self.limit = limit
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
            if size > self.limit:
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


# --- flow control -----------------------------------------------------------------------

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
