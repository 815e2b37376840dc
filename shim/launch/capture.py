"""The set-up calls Vault made to the proxied plugin, read from the routed frames (sans-I/O).

A hot swap must bring a new plugin process to the state Vault built in the running one
(README "Hot swap"). That state comes from a few calls, seen on the HTTP/2 streams the
router passes anyway (``sdk/plugin/pb/backend.proto``,
``sdk/database/dbplugin/v5/proto/database.proto``):

* ``pb.Backend/Setup`` (broker id, config, backend UUID) and ``pb.Backend/Initialize``;
* ``dbplugin.v5.Database/Initialize`` (the connection config);
* answers Vault cached when it mounted: ``pb.Backend/Type``, ``pb.Backend/SpecialPaths``,
  ``dbplugin.v5.Database/Type``, and ``PluginMultiplexing/MultiplexingSupport``;
* ``pb.Backend/Cleanup`` and ``dbplugin.v5.Database/Close`` end that state.

:class:`SetupCapture` keeps the latest completed call of each kind per ``multiplex_id``
(OpenBao sends one on every call, multiplexed or not): the request body and metadata to
replay byte for byte, the reply to check or compare. The router shows the calls it is told to
watch (:data:`WATCHED`) as events, with the header blocks it decoded already and copies of
DATA payloads; the relay hands them to a per-connection :class:`Tap`. Nothing here touches a
socket or changes a frame. The messages are read with a small protobuf
wire-format reader: the launcher carries no generated code for OpenBao's protos.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from typing import Callable

from shim.goplugin.h2events import CallEnded, CallOpened, Data

SETUP = "/pb.Backend/Setup"
INITIALIZE = "/pb.Backend/Initialize"
TYPE = "/pb.Backend/Type"
SPECIAL_PATHS = "/pb.Backend/SpecialPaths"
CLEANUP = "/pb.Backend/Cleanup"
DB_INITIALIZE = "/dbplugin.v5.Database/Initialize"
DB_TYPE = "/dbplugin.v5.Database/Type"
DB_CLOSE = "/dbplugin.v5.Database/Close"
MULTIPLEXING = "/pluginutil.multiplexing.PluginMultiplexing/MultiplexingSupport"

REPLAYED = (SETUP, INITIALIZE, DB_INITIALIZE)          # in this order, per multiplex id
COMPARED = (TYPE, SPECIAL_PATHS, DB_TYPE, MULTIPLEXING)
TEARDOWN = {CLEANUP: (SETUP, INITIALIZE, TYPE, SPECIAL_PATHS), DB_CLOSE: (DB_INITIALIZE, DB_TYPE)}
WATCHED = frozenset(REPLAYED + COMPARED + tuple(TEARDOWN))
STATEFUL = frozenset(REPLAYED + tuple(TEARDOWN))        # these move the generation

MAX_MESSAGE = 4 << 20     # a set-up message larger than this is not kept (the swap then refuses)
# Metadata gRPC itself sets on a call; everything else (multiplex_id above all) is replayed.
_TRANSPORT_HEADERS = frozenset({b"te", b"content-type", b"user-agent"})


class WireError(ValueError):
    """Bytes that are not the protobuf message they should be."""


# --- protobuf wire format ---------------------------------------------------------------

def _varint(data: bytes, pos: int) -> tuple[int, int]:
    value = shift = 0
    for i in range(10):
        if pos >= len(data):
            raise WireError("truncated varint")
        byte = data[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return value & 0xFFFFFFFFFFFFFFFF, pos
        shift += 7
    raise WireError("varint longer than 10 bytes")


def read_fields(data: bytes) -> list[tuple[int, int, int | bytes]]:
    """(field number, wire type, value) of each field, in order: varints as int, 32/64-bit
    fields as their raw bytes, length-delimited ones as bytes. Groups are refused."""
    out = []
    pos, size = 0, len(data)
    while pos < size:
        key, pos = _varint(data, pos)
        number, wire = key >> 3, key & 7
        if number == 0:
            raise WireError("field number 0")
        if wire == 0:
            value, pos = _varint(data, pos)
        elif wire == 1 or wire == 5:
            width = 8 if wire == 1 else 4
            if pos + width > size:
                raise WireError("truncated fixed-width field")
            value, pos = data[pos:pos + width], pos + width
        elif wire == 2:
            length, pos = _varint(data, pos)
            if pos + length > size:
                raise WireError(f"field {number} is {length} bytes, only {size - pos} left")
            value, pos = data[pos:pos + length], pos + length
        else:
            raise WireError(f"wire type {wire} (groups) in field {number}")
        out.append((number, wire, value))
    return out


def _last(fields, number: int, wire: int, default):
    value = default
    for num, w, v in fields:
        if num == number:
            if w != wire:
                raise WireError(f"field {number} has wire type {w}, not {wire}")
            value = v
    return value


def _text(raw: bytes, what: str) -> str:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        raise WireError(f"{what} is not UTF-8") from None


@dataclass(frozen=True)
class SetupArgs:
    broker_id: int
    config: dict
    backend_uuid: str


def setup_args(body: bytes) -> SetupArgs:
    """``SetupArgs{uint32 broker_id = 1; map<string,string> Config = 2; string backendUUID = 3}``."""
    fields = read_fields(body)
    config = {}
    for num, wire, value in fields:
        if num == 2:
            if wire != 2:
                raise WireError("SetupArgs.Config entry is not a message")
            entry = read_fields(value)
            config[_text(_last(entry, 1, 2, b""), "a Config key")] = _text(_last(entry, 2, 2, b""), "a Config value")
    broker_id = _last(fields, 1, 0, 0)
    if broker_id > 0xFFFFFFFF:
        raise WireError("SetupArgs.broker_id is not a uint32")
    return SetupArgs(broker_id, config, _text(_last(fields, 3, 2, b""), "backendUUID"))


def setup_error(body: bytes) -> str:
    """``SetupReply{string err = 1}``: empty when Setup worked."""
    return _text(_last(read_fields(body), 1, 2, b""), "SetupReply.err")


def initialize_error(body: bytes) -> str:
    """``InitializeReply{ProtoError err = 1}``: "" when unset, else its message."""
    fields = read_fields(body)
    if not any(num == 1 for num, _, _ in fields):
        return ""
    err = read_fields(_last(fields, 1, 2, b""))
    return _text(_last(err, 2, 2, b""), "ProtoError.err_msg") or f"error type {_last(err, 1, 0, 0)}"


def multiplexing_supported(body: bytes) -> bool:
    """``MultiplexingSupportResponse{bool supported = 1}``."""
    return bool(_last(read_fields(body), 1, 0, 0))


def _canonical(body: bytes) -> tuple:
    """A message as a sorted tuple of its non-default fields: proto3 omits defaults, and the
    order of repeated values carries no meaning in any answer compared here."""
    return tuple(sorted((num, wire, value) for num, wire, value in read_fields(body)
                        if value not in (0, b"")))


def answer(path: str, body: bytes) -> tuple:
    """The comparable form of a reply Vault caches. ``SpecialPathsReply{Paths paths = 1}``
    is opened one level (each path list compared as a set)."""
    if path == SPECIAL_PATHS:
        fields = read_fields(body)
        rest = tuple(sorted((n, w, v) for n, w, v in fields if n != 1 and v not in (0, b"")))
        return _canonical(_last(fields, 1, 2, b"")), rest
    return _canonical(body)


def describe_answer(path: str, body: bytes | None) -> str:
    """A short human text of an answer, for the WARN line of a refused swap."""
    if body is None:
        return "no answer"
    try:
        fields = read_fields(body)
        if path == SPECIAL_PATHS:
            names = {1: "root", 2: "unauthenticated", 3: "local_storage", 4: "seal_wrap_storage",
                     5: "write_forwarded_storage"}
            lists: dict[str, list[str]] = {}
            for num, wire, value in read_fields(_last(fields, 1, 2, b"")):
                key = names.get(num, f"field {num}")
                lists.setdefault(key, []).append(value.decode("utf-8", "replace") if wire == 2 else str(value))
            return ", ".join(f"{k}={sorted(v)}" for k, v in sorted(lists.items())) or "no special paths"
        if path == TYPE:
            return f"type {_last(fields, 1, 0, 0)}"
        if path == DB_TYPE:
            return f"type {_last(fields, 1, 2, b'').decode('utf-8', 'replace')!r}"
        if path == MULTIPLEXING:
            return "supported" if multiplexing_supported(body) else "not supported"
    except WireError as exc:
        return f"unreadable ({exc})"
    return f"{len(body)} bytes"


# --- calls -----------------------------------------------------------------------------

@dataclass
class Call:
    """One completed call: what Vault sent and what the plugin answered (None if it
    answered with an error status: a failed unary call carries no message)."""

    path: str
    key: str                                   # the multiplex_id metadata, "" without one
    metadata: tuple                            # ((name, value), ...) to send on a replay
    request: bytes | None                      # the message body; None if unreadable
    reply: bytes | None
    seq: int
    problem: str = ""                          # why request/reply could not be read


class _Messages:
    """gRPC length-prefixed messages from DATA payloads."""

    __slots__ = ("buf", "messages", "problem")

    def __init__(self):
        self.buf = bytearray()
        self.messages: list[bytes] = []
        self.problem = ""

    def feed(self, data: bytes) -> None:
        if self.problem:
            return
        buf = self.buf
        buf += data
        while len(buf) >= 5:
            size = int.from_bytes(buf[1:5], "big")
            if buf[0] not in (0, 1) or size > MAX_MESSAGE:
                self.problem = "a message larger than 4 MiB" if size > MAX_MESSAGE else "a malformed message"
                buf.clear()
                return
            if len(buf) < 5 + size:
                return
            if buf[0] == 1:
                self.problem = "a compressed message"
            else:
                self.messages.append(bytes(buf[5:5 + size]))
            del buf[:5 + size]

    def single(self) -> bytes | None:
        return self.messages[0] if len(self.messages) == 1 and not self.buf and not self.problem else None


class _Open:
    __slots__ = ("path", "key", "metadata", "request", "reply")

    def __init__(self, path: str, key: str, metadata: tuple):
        self.path, self.key, self.metadata = path, key, metadata
        self.request, self.reply = _Messages(), _Messages()


def call_metadata(headers) -> tuple[str, str, tuple]:
    """(path, multiplex_id, metadata to replay) from a decoded request header block."""
    path, key, metadata = "", "", []
    for name, value in headers:
        if name == b":path":
            path = value.decode("ascii", "replace")
        elif name.startswith(b":") or name in _TRANSPORT_HEADERS or name.startswith(b"grpc-"):
            continue
        else:
            text = name.decode("ascii", "replace")
            if name == b"multiplex_id":
                key = value.decode("utf-8", "replace")
            metadata.append((text, value if name.endswith(b"-bin") else value.decode("utf-8", "replace")))
    return path, key, tuple(metadata)


class Tap:
    """The capture's view of one routed connection (the router's loop thread only)."""

    watched = WATCHED   # the call paths to show it (the router's ``watch``)

    def __init__(self, store: "SetupCapture"):
        self.store = store
        self.streams: dict[int, _Open] = {}

    def see(self, event) -> None:
        """One of the router's events for a watched call (CallOpened, Data, CallEnded)."""
        if isinstance(event, Data):
            self.data(event.stream_id, event.from_vault, event.payload)
        elif isinstance(event, CallOpened):
            self.opened(event.stream_id, event.headers)
        elif isinstance(event, CallEnded):
            (self.ended if event.complete else self.reset)(event.stream_id)

    def opened(self, sid: int, headers) -> bool:
        """A request header block from Vault; True when this stream is watched."""
        path, key, metadata = call_metadata(headers)
        if path not in WATCHED:
            return False
        self.streams[sid] = _Open(path, key, metadata)
        self.store._started(path)
        return True

    def data(self, sid: int, from_vault: bool, payload: bytes) -> None:
        st = self.streams.get(sid)
        if st is not None:
            (st.request if from_vault else st.reply).feed(payload)

    def ended(self, sid: int) -> None:
        """The plugin ended the stream (its trailers, or DATA with END_STREAM)."""
        st = self.streams.pop(sid, None)
        if st is not None:
            self.store._finished(st, complete=True)

    def reset(self, sid: int) -> None:
        """Either side reset the stream: the call did not complete."""
        st = self.streams.pop(sid, None)
        if st is not None:
            self.store._finished(st, complete=False)

    def close(self) -> None:
        """The connection ended: what was still open never completed."""
        for sid in list(self.streams):
            self.reset(sid)


# --- what a swap needs ----------------------------------------------------------------

@dataclass
class Plan:
    """What to replay into a new child and which answers to compare, from one snapshot."""

    replay: list[Call] = field(default_factory=list)
    compare: list[Call] = field(default_factory=list)
    broker_ids: list[int] = field(default_factory=list)
    generation: int = 0
    in_flight: int = 0
    waiting: str = ""        # why a swap must wait (nothing wrong with the new version)
    refusal: str = ""        # why no version can be swapped in while this process runs


class SetupCapture:
    """Every routed connection's set-up calls, shared (the loop thread writes, the swap
    thread takes snapshots)."""

    def __init__(self, plugin_type: str, on_change: Callable[[], None] | None = None):
        self.plugin_type = plugin_type
        self.on_change = on_change   # after each set-up call ends (outside the lock)
        self._lock = threading.Lock()
        self._calls: dict[tuple[str, str], Call] = {}
        self._seq = 0
        self.generation = 0
        self.in_flight = 0

    def tap(self) -> Tap:
        return Tap(self)

    def _started(self, path: str) -> None:
        with self._lock:
            self._seq += 1
            if path in STATEFUL:
                self.generation += 1
                self.in_flight += 1

    def _finished(self, st: _Open, complete: bool) -> None:
        with self._lock:
            self._record(st, complete)
        if st.path in STATEFUL and self.on_change is not None:
            self.on_change()

    def _record(self, st: _Open, complete: bool) -> None:
        if st.path in STATEFUL:
            self.in_flight -= 1
        if not complete:
            return
        self._seq += 1
        if st.path in TEARDOWN:
            for path in TEARDOWN[st.path]:
                self._calls.pop((path, st.key), None)
            return
        problem = st.request.problem or st.reply.problem
        request = st.request.single()
        if request is None and not problem:
            problem = "not exactly one request message"
        self._calls[(st.path, st.key)] = Call(st.path, st.key, st.metadata, request, st.reply.single(),
                                              self._seq, problem)

    def calls(self) -> dict[tuple[str, str], Call]:
        with self._lock:
            return dict(self._calls)

    def plan(self) -> Plan:
        """The replay and the comparisons for a swap, from the calls completed so far."""
        with self._lock:
            calls = dict(self._calls)
            plan = Plan(generation=self.generation, in_flight=self.in_flight)
        mux = calls.get((MULTIPLEXING, ""))
        if mux is None:
            mux = next((c for (p, _), c in calls.items() if p == MULTIPLEXING), None)
        keys = sorted({key for (_, key) in calls}, key=lambda k: min(c.seq for (p, kk), c in calls.items()
                                                                    if kk == k))
        for key in keys:
            if self.plugin_type == "database":
                steps = [calls.get((DB_INITIALIZE, key))]
                compares = [calls.get((DB_TYPE, key))]
            else:
                setup = calls.get((SETUP, key))
                if setup is None or not self._worked(setup, plan):
                    continue
                init = calls.get((INITIALIZE, key))
                steps = [setup, init if init is not None and init.seq > setup.seq else None]
                compares = [calls.get((TYPE, key)), calls.get((SPECIAL_PATHS, key))]
            for call in steps:
                if call is None or (call.path != SETUP and not self._worked(call, plan)):
                    continue
                if call.problem or call.request is None:
                    plan.refusal = f"Vault's {call.path} request cannot be replayed ({call.problem})"
                    return plan
                plan.replay.append(call)
                if call.path == SETUP:
                    plan.broker_ids.append(setup_args(call.request).broker_id)
            plan.compare.extend(c for c in compares if c is not None and c.reply is not None)
        if mux is not None and mux.reply is not None:
            plan.compare.append(mux)
        if self.plugin_type != "database" and not any(c.path == SETUP for c in plan.replay):
            plan.waiting = "Vault has not set the plugin up yet (no successful pb.Backend/Setup seen)"
        if plan.in_flight:
            plan.waiting = "Vault has a set-up call in flight"
        return plan

    @staticmethod
    def _worked(call: Call, plan: Plan) -> bool:
        """Did the plugin accept this set-up call (its reply says no error)?"""
        if call.reply is None:
            return False
        try:
            if call.path == SETUP:
                setup_args(call.request or b"")
                return setup_error(call.reply) == ""
            if call.path == INITIALIZE:
                return initialize_error(call.reply) == ""
        except WireError:
            return False
        return True
