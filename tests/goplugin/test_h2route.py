"""The HTTP/2 frame router's pure core: frames (shim.goplugin.h2frame), HPACK path extraction,
the events it returns, broker message rewriting with flow-control compensation, errors that say
which side was at fault, and synthesized error trailers."""

from __future__ import annotations

import hpack
import pytest
from hypothesis import given, settings, strategies as st

from shim.goplugin import h2frame as h
from shim.goplugin.protos import grpc_broker_pb2 as pb
from shim.goplugin.broker import ConnInfo, conninfo_to_message
from shim.goplugin.errors import H2RouteError, HostProtocolError, PluginProtocolError
from shim.goplugin.h2events import CallEnded, CallOpened, ConnInfoSeen, Data, Shutdown, UnreadBrokerMessage
from shim.goplugin.h2route import MAX_BROKER_MESSAGE, Router, conninfo_message, read_conninfo

GRPC_HEADERS = [(":method", "POST"), (":scheme", "http"), (":authority", "localhost"),
                ("content-type", "application/grpc"), ("te", "trailers"), ("user-agent", "grpc-go/1.29.1")]


def request_headers(path: str, **extra) -> list[tuple[str, str]]:
    return [(":path", path), *GRPC_HEADERS, *extra.items()]


def settings_frame(**values) -> bytes:
    ids = {"header_table_size": 1, "max_frame_size": 5}
    return h.frame(h.SETTINGS, 0, 0, b"".join(ids[k].to_bytes(2, "big") + v.to_bytes(4, "big")
                                             for k, v in values.items()))


def window_update(sid: int, inc: int) -> bytes:
    return h.frame(h.WINDOW_UPDATE, 0, sid, inc.to_bytes(4, "big"))


def grpc_msg(body: bytes) -> bytes:
    return b"\x00" + len(body).to_bytes(4, "big") + body


def conninfo_msg(sid: int, network: str, address: str) -> bytes:
    return grpc_msg(conninfo_to_message(ConnInfo(sid, network, address)).SerializeToString())


def parse(data: bytes) -> list[h.Frame]:
    reader = h.FrameReader()
    frames = reader.feed(data)
    assert reader.pending == 0
    return frames


class Pair:
    """A router with an HPACK encoder playing Vault, driven as the relay drives it: each
    ConnInfo the router shows is answered with ``from_vault`` / ``from_child`` of it (the
    relay's broker bridge); those of a held connection are collected in ``held``."""

    def __init__(self, from_vault=lambda info: info, from_child=lambda info: info, watch=()):
        self.router = Router(watch=watch)
        self.from_vault, self.from_child = from_vault, from_child
        self.held: list[ConnInfo] = []
        self.enc = hpack.Encoder()
        self.router.receive_vault(h.PREFACE)
        assert self.router.data_to_child() == h.PREFACE

    def vault(self, data: bytes) -> list:
        return self._drive(self.router.receive_vault(data))

    def child(self, data: bytes) -> list:
        return self._drive(self.router.receive_child(data))

    def _drive(self, events: list) -> list:
        """Every event, the answers' included."""
        seen = []
        while events:
            seen += events
            waiting = []
            for event in events:
                if isinstance(event, ConnInfoSeen):
                    new = (self.from_vault if event.from_vault else self.from_child)(event.info)
                    if event.relayed:
                        waiting.append(new)
                    elif new is not None:
                        self.held.append(new)
            events = self.router.answer(waiting[0]) if waiting else []
        return seen

    def open(self, sid: int, path: str, end: bool = False) -> bytes:
        block = self.enc.encode(request_headers(path))
        raw = h.frame(h.HEADERS, h.END_HEADERS | (h.END_STREAM if end else 0), sid, block)
        self.vault(raw)
        assert self.router.data_to_child() == raw, "headers pass byte for byte"
        return raw


# --- frames --------------------------------------------------------------------------

def test_frames_round_trip_fed_one_byte_at_a_time():
    raws = [h.frame(h.SETTINGS, 0, 0, b"\x00\x01\x00\x00\x10\x00"), h.frame(h.PING, 0, 0, b"12345678"),
            h.frame(h.DATA, h.END_STREAM | h.PADDED, 3, b"\x02abc\x00\x00"),
            h.frame(h.HEADERS, h.PRIORITY_FLAG, 5, b"\x00\x00\x00\x01\x10blk"),
            h.frame(h.CONTINUATION, h.END_HEADERS, 5, b"more"), h.frame(h.RST_STREAM, 0, 5, b"\x00\x00\x00\x08"),
            h.frame(h.GOAWAY, 0, 0, b"\x00\x00\x00\x05\x00\x00\x00\x00debug"), window_update(0, 1000),
            h.frame(0xFA, 0x3, 7, b"unknown types pass")]
    reader = h.FrameReader()
    got = []
    for byte in b"".join(raws):
        got += reader.feed(bytes((byte,)))
    assert [f.raw for f in got] == raws
    assert [(f.type, f.stream_id) for f in got][:3] == [(h.SETTINGS, 0), (h.PING, 0), (h.DATA, 3)]
    assert h.unpadded_payload(h.DATA, got[2].flags, got[2].payload) == (b"abc", 3)
    assert h.unpadded_payload(h.HEADERS, got[3].flags, got[3].payload) == (b"blk", 0)


MALFORMED = [
    (h.frame(h.PING, 0, 0, b"short"), "length"),
    (h.frame(h.WINDOW_UPDATE, 0, 1, b"\x00\x00\x01"), "length"),
    (h.frame(h.DATA, 0, 0, b"x"), "stream 0"),
    (h.frame(h.SETTINGS, 0, 3, b""), "not 0"),
    (h.frame(h.SETTINGS, 0, 0, b"12345"), "SETTINGS"),
    (h.frame(h.SETTINGS, h.ACK, 0, b"123456"), "SETTINGS"),
    (h.frame(h.GOAWAY, 0, 0, b"1234"), "GOAWAY"),
    (h.frame(h.DATA, h.PADDED, 1, b"\x05ab"), "padding"),
    (h.frame(h.DATA, h.PADDED, 1, b""), "padding"),
    (h.frame(h.HEADERS, h.PRIORITY_FLAG, 1, b"\x00\x00"), "too short"),
]


@pytest.mark.parametrize("raw, why", MALFORMED)
def test_malformed_frames_are_our_error(raw, why):
    with pytest.raises(H2RouteError, match=why):
        h.FrameReader().feed(raw)


@pytest.mark.parametrize("raw, why", MALFORMED)
def test_the_router_says_whose_malformed_frames_they_were(raw, why):
    with pytest.raises(HostProtocolError, match=why):
        Router().receive_vault(h.PREFACE + raw)
    with pytest.raises(PluginProtocolError, match=why):
        Router().receive_child(raw)
    assert not issubclass(HostProtocolError, PluginProtocolError)
    assert not issubclass(PluginProtocolError, HostProtocolError)


def test_preface_is_required_from_vault():
    with pytest.raises(H2RouteError, match="preface"):
        h.FrameReader(preface=True).feed(b"GET / HTTP/1.1\r\n")
    reader = h.FrameReader(preface=True)
    assert reader.feed(h.PREFACE[:10]) == []
    assert [f.type for f in reader.feed(h.PREFACE[10:] + settings_frame())] == [h.SETTINGS]


@settings(max_examples=400, deadline=None)
@given(st.binary(max_size=300), st.integers(1, 40))
def test_fuzz_frame_reader_gives_frames_or_our_error(data, step):
    reader = h.FrameReader()
    try:
        for i in range(0, len(data), step):
            for f in reader.feed(data[i:i + step]):
                assert len(f.raw) >= 9 and 0 <= f.stream_id < 2 ** 31
    except H2RouteError:
        pass


frame_st = st.builds(lambda t, fl, sid, p: h.frame(t, fl, sid, p), st.sampled_from(range(11)),
                     st.integers(0, 255), st.integers(0, 9), st.binary(max_size=40))


@settings(max_examples=400, deadline=None)
@given(st.lists(frame_st, max_size=8), st.lists(frame_st, max_size=8))
def test_fuzz_router_gives_bytes_or_our_error(from_vault, from_child):
    router = Router()
    side = HostProtocolError
    try:
        router.receive_vault(h.PREFACE + b"".join(from_vault))
        side = PluginProtocolError
        router.receive_child(b"".join(from_child))
        router.fail_streams("gone")
    except H2RouteError as exc:
        assert type(exc) is side, "the error names the side whose bytes broke HTTP/2"
    parse(router.data_to_vault())
    out = router.data_to_child()
    parse(out[len(h.PREFACE):] if out.startswith(h.PREFACE) else out)


# --- HPACK and stream state ------------------------------------------------------------

def test_paths_are_learned_through_the_dynamic_table_and_continuations():
    p = Pair()
    p.open(1, "/pb.Backend/HandleRequest")
    p.open(3, "/plugin.GRPCBroker/StartStream")
    # a later block split over HEADERS + CONTINUATION, reusing dynamic table entries
    block = p.enc.encode(request_headers("/plugin.GRPCController/Shutdown", multiplex_id="m1"))
    raws = [h.frame(h.HEADERS, h.PADDED, 5, b"\x02" + block[:4] + b"\x00\x00"),
            h.frame(h.CONTINUATION, 0, 5, block[4:9]), h.frame(h.CONTINUATION, h.END_HEADERS, 5, block[9:])]
    assert p.vault(b"".join(raws[:2])) == []
    assert p.vault(raws[2]) == [Shutdown(5)]
    assert p.router.data_to_child() == b"".join(raws)
    assert p.router.streams[1].broker is None and p.router.streams[3].broker is not None
    assert sorted(p.router.streams) == [1, 3, 5] and p.router.last_stream == 5


def test_an_interrupted_header_block_is_an_error():
    p = Pair()
    block = p.enc.encode(request_headers("/x/y"))
    with pytest.raises(HostProtocolError, match="interrupted"):
        p.router.receive_vault(h.frame(h.HEADERS, 0, 1, block) + h.frame(h.PING, 0, 0, b"8bytes!!"))


def test_header_table_size_follows_the_childs_setting():
    p = Pair()
    p.enc.header_table_size = 16384  # Vault's encoder uses a table the child allowed
    block = p.enc.encode(request_headers("/a/b"))
    with pytest.raises(HostProtocolError, match="header block"):
        Pair().router.receive_vault(h.frame(h.HEADERS, h.END_HEADERS, 1, block))
    p.router.receive_child(settings_frame(header_table_size=16384))
    assert p.router.data_to_vault() == settings_frame(header_table_size=16384)
    p.router.receive_vault(h.frame(h.HEADERS, h.END_HEADERS, 1, block))
    assert 1 in p.router.streams


def test_streams_end_with_the_childs_end_stream_or_a_reset():
    p = Pair()
    for sid in (1, 3, 5, 7):
        p.open(sid, "/pb.Backend/HandleRequest", end=True)
    child = [h.frame(h.HEADERS, h.END_HEADERS, 1, b"\x88"), h.frame(h.DATA, 0, 1, grpc_msg(b"r")),
             h.frame(h.HEADERS, h.END_HEADERS | h.END_STREAM, 1, b"\x40\x0bgrpc-status\x010"),
             h.frame(h.HEADERS, h.END_HEADERS | h.END_STREAM, 3, b"\x88"),
             h.frame(h.RST_STREAM, 0, 5, b"\x00\x00\x00\x08")]
    p.router.receive_child(b"".join(child))
    assert p.router.data_to_vault() == b"".join(child), "byte for byte"
    p.router.receive_vault(h.frame(h.RST_STREAM, 0, 7, b"\x00\x00\x00\x08"))
    assert p.router.streams == {}


# --- broker rewriting and flow control -------------------------------------------------

def test_withheld_credit_is_taken_from_later_updates():
    w = h.Withheld()
    w.add(0, 100)
    w.add(0, 20)
    w.add(3, 50)
    assert w.filter(0, 70) == 0 and w.owed[0] == 50   # dropped: would be <= 0
    assert w.filter(0, 50) == 0 and 0 not in w.owed    # exactly owed: dropped too
    assert w.filter(0, 10) == 10                        # nothing owed: passes
    assert w.filter(3, 80) == 30 and 3 not in w.owed    # the rest is carried
    w.add(5, 7)
    w.forget(5)
    assert w.filter(5, 1) == 1


def test_message_splitter_reassembles_and_gives_up_on_huge_messages():
    s = h.MessageSplitter(MAX_BROKER_MESSAGE)
    m1, m2 = grpc_msg(b"one"), grpc_msg(b"second")
    data = m1 + m2
    out = []
    for i in range(len(data)):
        out += s.feed(data[i:i + 1])
    assert out == [m1, m2] and s.buf == b""
    big = h.MessageSplitter(MAX_BROKER_MESSAGE)
    assert big.feed(b"\x00" + (MAX_BROKER_MESSAGE + 1).to_bytes(4, "big") + b"abc") == []
    assert big.passthrough and big.take_rest() == b"\x00" + (MAX_BROKER_MESSAGE + 1).to_bytes(4, "big") + b"abc"


def _data_frames(raw: bytes, sid: int) -> bytes:
    return b"".join(h.unpadded_payload(h.DATA, f.flags, f.payload)[0] for f in parse(raw)
                    if f.type == h.DATA and f.stream_id == sid)


def test_child_conninfo_rewritten_longer_withholds_the_difference():
    seen = []

    def from_child(info):
        seen.append(info)
        return info.rewrite("unix", "/vault/sockets/broker7-123456789-much-longer-path")

    p = Pair(from_child=from_child)
    p.open(1, "/plugin.GRPCBroker/StartStream")
    original = conninfo_msg(7, "unix", "/tmp/c/plugin1")
    # the message arrives in two padded DATA frames
    f1 = h.frame(h.DATA, h.PADDED, 1, b"\x03" + original[:6] + b"\x00" * 3)
    f2 = h.frame(h.DATA, 0, 1, original[6:])
    assert p.child(f1) == []
    assert p.router.data_to_vault() == b"", "held until the message is complete"
    assert p.router.data_to_child() == window_update(0, 4) + window_update(1, 4), "padding is credited at once"
    assert p.child(f2) == [ConnInfoSeen(1, False, ConnInfo(7, "unix", "/tmp/c/plugin1"))]
    new = conninfo_msg(7, "unix", "/vault/sockets/broker7-123456789-much-longer-path")
    assert seen == [ConnInfo(7, "unix", "/tmp/c/plugin1")]
    assert _data_frames(p.router.data_to_vault(), 1) == new
    extra = len(new) - len(original)
    assert extra > 0 and p.router.owed_to_child.owed == {0: extra, 1: extra}
    # Vault credits what it got; the child spent only the original's length
    assert p.vault(window_update(0, extra - 1) + window_update(1, extra + 10) + window_update(0, 5)) == []
    assert p.router.data_to_child() == window_update(1, 10) + window_update(0, 4)
    assert p.router.owed_to_child.owed == {}


def test_vault_conninfo_rewritten_shorter_or_dropped_is_credited_back_at_once():
    def from_vault(info):
        return None if info.service_id == 2 else info.rewrite("unix", "/p/s")

    p = Pair(from_vault=from_vault)
    p.open(1, "/plugin.GRPCBroker/StartStream")
    m1 = conninfo_msg(1, "unix", "/tmp/vault-broker-listener-with-a-long-name")
    m2 = conninfo_msg(2, "unix", "/tmp/dropped")
    partial = conninfo_msg(3, "unix", "/tmp/held")
    raw = h.frame(h.DATA, 0, 1, m1 + m2 + partial[:4])
    assert [(e.from_vault, e.info.service_id) for e in p.vault(raw)] == [(True, 1), (True, 2)]
    assert _data_frames(p.router.data_to_child(), 1) == conninfo_msg(1, "unix", "/p/s")
    back = len(raw) - 9 - len(conninfo_msg(1, "unix", "/p/s")) - 4  # 4 bytes are still held
    assert p.router.data_to_vault() == window_update(0, back) + window_update(1, back)
    # the held rest completes; END_STREAM goes on with it; no stream update after END_STREAM
    p.vault(h.frame(h.DATA, h.END_STREAM, 1, partial[4:]))
    out = parse(p.router.data_to_child())
    assert out[-1].flags & h.END_STREAM
    assert b"".join(f.payload for f in out) == conninfo_msg(3, "unix", "/p/s")
    back = len(partial) - len(conninfo_msg(3, "unix", "/p/s"))
    assert p.router.data_to_vault() == window_update(0, back)


def test_unreadable_and_other_streams_pass():
    p = Pair(from_vault=lambda info: pytest.fail("not a ConnInfo"))
    p.open(1, "/plugin.GRPCBroker/StartStream")
    p.open(3, "/pb.Backend/Setup")
    other = h.frame(h.DATA, 0, 3, conninfo_msg(1, "unix", "/x"))
    assert p.vault(other) == []
    assert p.router.data_to_child() == other
    garbage = grpc_msg(b"\xff\xff\xff")
    [unread] = p.vault(h.frame(h.DATA, 0, 1, garbage))
    assert isinstance(unread, UnreadBrokerMessage)
    assert (unread.stream_id, unread.from_vault, unread.dropped) == (1, True, True)
    assert p.router.data_to_child() == b"", "dropped"
    assert p.router.data_to_vault() == window_update(0, len(garbage)) + window_update(1, len(garbage))


def test_compressed_broker_messages_pass_unread_and_conninfo_reads_back():
    p = Pair(from_vault=lambda info: pytest.fail("a compressed message is not read"))
    p.open(1, "/plugin.GRPCBroker/StartStream")
    compressed = b"\x01" + (3).to_bytes(4, "big") + b"abc"
    assert p.vault(h.frame(h.DATA, 0, 1, compressed)) == [UnreadBrokerMessage(1, True, "compressed", dropped=False)]
    assert _data_frames(p.router.data_to_child(), 1) == compressed
    got = conninfo_message(read_conninfo(conninfo_msg(9, "unix", "/a")).rewrite("unix", "/b"))
    assert pb.ConnInfo.FromString(got[5:]).address == "/b"


def test_the_router_takes_no_bytes_while_a_conninfo_waits_for_its_answer():
    router = Router()
    router.receive_vault(h.PREFACE)
    with pytest.raises(RuntimeError, match="no ConnInfoSeen"):
        router.answer(None)
    router.receive_vault(h.frame(h.HEADERS, h.END_HEADERS, 1, hpack.Encoder().encode(
        request_headers("/plugin.GRPCBroker/StartStream"))))
    ping = h.frame(h.PING, 0, 0, b"pingpong")
    events = router.receive_vault(h.frame(h.DATA, 0, 1, conninfo_msg(4, "unix", "/v")) + ping)
    assert events == [ConnInfoSeen(1, True, ConnInfo(4, "unix", "/v"))]
    with pytest.raises(RuntimeError, match="waits"):
        router.receive_child(ping)
    assert [f.type for f in parse(router.data_to_child()[len(h.PREFACE):])] == [h.HEADERS], "the rest waits too"
    assert router.answer(ConnInfo(4, "unix", "/p")) == []
    assert [f.type for f in parse(router.data_to_child())] == [h.DATA, h.PING]


def test_watched_calls_are_shown_as_events():
    p = Pair(watch=["/pb.Backend/Setup"])
    p.open(1, "/pb.Backend/HandleRequest")
    block = p.enc.encode(request_headers("/pb.Backend/Setup"))
    [opened] = p.vault(h.frame(h.HEADERS, h.END_HEADERS, 3, block))
    assert isinstance(opened, CallOpened) and opened.stream_id == 3
    assert (b":path", b"/pb.Backend/Setup") in opened.headers
    requests = h.frame(h.DATA, h.END_STREAM, 1, grpc_msg(b"x")) + h.frame(h.DATA, h.END_STREAM, 3, grpc_msg(b"q"))
    assert p.vault(requests) == [Data(3, True, grpc_msg(b"q"))]
    p.router.data_to_child()
    p.open(5, "/pb.Backend/Setup")
    assert p.child(h.frame(h.HEADERS, h.END_HEADERS, 3, b"\x88") + h.frame(h.DATA, 0, 3, grpc_msg(b"r"))
                   + h.frame(h.HEADERS, h.END_HEADERS | h.END_STREAM, 3, b"\x88")
                   + h.frame(h.HEADERS, h.END_HEADERS | h.END_STREAM, 1, b"\x88")) \
        == [Data(3, False, grpc_msg(b"r")), CallEnded(3, complete=True)]
    assert p.router.fail_streams("gone") == [CallEnded(5, complete=False)]


# --- child death ---------------------------------------------------------------------

def test_fail_streams_synthesizes_unavailable_without_touching_vaults_table():
    p = Pair()
    for sid in (1, 3, 5):
        p.open(sid, "/pb.Backend/HandleRequest")
    p.router.receive_child(h.frame(h.HEADERS, h.END_HEADERS, 3, b"\x88")
                           + h.frame(h.HEADERS, h.END_HEADERS | h.END_STREAM, 5, b"\x88"))
    p.router.data_to_vault()
    message = "vault-plugin-shim: the plugin process exited during the call (exit status 7) 100% é"
    assert p.router.fail_streams(message) == []
    assert p.router.fail_streams("twice") == []
    frames = parse(p.router.data_to_vault())
    assert [(f.type, f.stream_id, f.flags) for f in frames] == [
        (h.HEADERS, 1, h.END_STREAM | h.END_HEADERS), (h.HEADERS, 3, h.END_STREAM | h.END_HEADERS), (h.GOAWAY, 0, 0)]
    vault = hpack.Decoder()
    trailers_only = vault.decode(frames[0].payload)
    trailers = vault.decode(frames[1].payload)
    assert len(vault.header_table.dynamic_entries) == 0
    encoded = "vault-plugin-shim: the plugin process exited during the call (exit status 7) 100%25 %C3%A9"
    assert trailers_only == [(":status", "200"), ("content-type", "application/grpc"),
                             ("grpc-status", "14"), ("grpc-message", encoded)]
    assert trailers == [("grpc-status", "14"), ("grpc-message", encoded)]
    assert frames[2].payload == (5).to_bytes(4, "big") + b"\x00\x00\x00\x00"
    assert p.router.streams == {}


def _held_pair() -> Pair:
    """Vault's broker stream (1) and a finished call (3), then a swap holds the connection."""
    pair = Pair(from_vault=lambda info: info.rewrite("unix", "/front/" + info.address.rsplit("/", 1)[-1]))
    pair.open(1, "/plugin.GRPCBroker/StartStream")
    pair.open(3, "/pb.Backend/HandleRequest", end=True)
    assert not pair.router.hold_broker(), "a call is still open"
    pair.router.receive_child(h.frame(h.HEADERS, h.END_HEADERS | h.END_STREAM, 3, b"\x88"))
    pair.router.data_to_vault()
    pair.router.goaway()
    assert [f.type for f in parse(pair.router.data_to_vault())] == [h.GOAWAY]
    assert pair.router.hold_broker()
    assert pair.router.data_to_child() == b""
    return pair


def test_a_held_connection_passes_vaults_conninfo_on_and_answers_vault_itself():
    pair = _held_pair()
    msg = conninfo_msg(7, "unix", "/vault/broker7.sock")
    events = pair.vault(h.frame(h.DATA, 0, 1, msg[:9]) + h.frame(h.DATA, 0, 1, msg[9:]))
    assert events == [ConnInfoSeen(1, True, ConnInfo(7, "unix", "/vault/broker7.sock"), relayed=False)]
    assert pair.held == [ConnInfo(7, "unix", "/front/broker7.sock")]
    out = parse(pair.router.data_to_vault())
    credit = [(f.stream_id, int.from_bytes(f.payload, "big")) for f in out if f.type == h.WINDOW_UPDATE]
    assert sorted(credit) == [(0, 9), (0, len(msg) - 9), (1, 9), (1, len(msg) - 9)]
    assert pair.vault(h.frame(h.PING, 0, 0, b"pingpong") + settings_frame(max_frame_size=32768)) == []
    out = parse(pair.router.data_to_vault())
    assert [(f.type, f.flags, f.payload) for f in out] == [(h.PING, h.ACK, b"pingpong"), (h.SETTINGS, h.ACK, b"")]
    assert pair.router.data_to_child() == b""


def test_a_held_connection_refuses_new_streams_and_needs_a_broker_stream():
    pair = _held_pair()
    pair.vault(h.frame(h.HEADERS, h.END_HEADERS, 5, pair.enc.encode(request_headers("/pb.Backend/Type"))))
    [refused] = parse(pair.router.data_to_vault())
    assert (refused.type, refused.stream_id, int.from_bytes(refused.payload, "big")) == (h.RST_STREAM, 5, h.REFUSED_STREAM)
    assert pair.router.data_to_child() == b"" and pair.held == []

    plain = Pair()
    plain.open(1, "/plugin.GRPCStdio/StreamStdio")
    assert not plain.router.hold_broker() and not plain.router.held


def test_hpack_integers_follow_rfc7541_examples():
    assert h._hpack_int(10, 5) == b"\x0a"
    assert h._hpack_int(1337, 5) == b"\x1f\x9a\x0a"
    long_name = b"x-" + b"n" * 200
    assert hpack.Decoder().decode(h.encode_literal([(long_name, b"v" * 300)]), raw=True) == [(long_name, b"v" * 300)]
