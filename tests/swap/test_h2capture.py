"""The set-up call capture (shim.launch.capture), fed real frames.

``tests/data/h2rec/*.jsonl`` are the bytes each side of one routed connection sent, recorded
in the launcher's router while a real OpenBao 2.7.2 mounted the demo secrets engine
(Setup, Type, SpecialPaths, Initialize, requests), ran the database plugin (Type,
Initialize, NewUser, Close) and probed a plugin's version at registration (a metadata-mode
Setup). They go through the real router, whose events hand the capture what it sees.
"""

from __future__ import annotations

import base64
import json
from pathlib import Path

import hpack
import pytest
from hypothesis import given, settings, strategies as st

from shim.launch import capture as cap
from shim.goplugin.h2events import ConnInfoSeen
from shim.goplugin.h2frame import DATA, END_HEADERS, END_STREAM, HEADERS, PREFACE, RST_STREAM, frame
from shim.goplugin.h2route import Router

REC = Path(__file__).resolve().parents[1] / "data" / "h2rec"


def recording(name: str) -> list[tuple[bool, bytes]]:
    out = []
    for line in (REC / name).read_text().splitlines():
        entry = json.loads(line)
        out.append((entry["from"] == "vault", base64.b64decode(entry["data"])))
    return out


class Routed:
    """A router and the capture's tap on it, driven as the relay drives them: the tap sees the
    router's events, each ConnInfo passes on unchanged."""

    def __init__(self, capture: cap.SetupCapture):
        self.tap = capture.tap()
        self.router = Router(watch=self.tap.watched)

    def feed(self, from_vault: bool, data: bytes) -> None:
        events = (self.router.receive_vault if from_vault else self.router.receive_child)(data)
        while events:
            for event in events:
                self.tap.see(event)
            last = events[-1]
            events = self.router.answer(last.info) if isinstance(last, ConnInfoSeen) and last.relayed else []


def route(chunks, capture: cap.SetupCapture, upto: int | None = None) -> Routed:
    routed = Routed(capture)
    for from_vault, data in chunks[:upto]:
        routed.feed(from_vault, data)
        routed.router.data_to_child()
        routed.router.data_to_vault()
    return routed


def plans(chunks, capture: cap.SetupCapture) -> list[cap.Plan]:
    """The capture's plan after each chunk of the recording."""
    routed, out = Routed(capture), []
    for from_vault, data in chunks:
        routed.feed(from_vault, data)
        out.append(capture.plan())
    return out


def test_a_real_mount_gives_setup_and_initialize_to_replay_and_type_and_paths_to_compare():
    capture = cap.SetupCapture("secret")
    seen = plans(recording("openbao-secret-mount.jsonl"), capture)
    assert seen[-1].replay == []  # OpenBao stopped: its Cleanup ended what Setup began
    plan = [p for p in seen if p.replay and not p.in_flight][-1]  # the state before that Cleanup
    assert "in flight" in [p for p in seen if p.replay][-1].waiting   # and while it was on its way
    assert (plan.waiting, plan.refusal, plan.in_flight) == ("", "", 0)
    assert [c.path for c in plan.replay] == [cap.SETUP, cap.INITIALIZE]
    setup = cap.setup_args(plan.replay[0].request)
    assert setup.broker_id == 1 and plan.broker_ids == [1]
    assert setup.config["plugin_version"] == "v1.0.0"
    assert len(setup.backend_uuid) == 36
    key = plan.replay[0].key
    assert key and all(c.key == key for c in plan.replay)
    assert ("multiplex_id", key) in plan.replay[0].metadata
    assert not any(name.startswith(":") or name in ("te", "content-type", "user-agent")
                   for name, _ in plan.replay[0].metadata)
    assert cap.setup_error(plan.replay[0].reply) == ""
    assert cap.initialize_error(plan.replay[1].reply) == ""
    compared = {c.path: c for c in plan.compare}
    assert set(compared) == {cap.TYPE, cap.SPECIAL_PATHS}
    assert cap.describe_answer(cap.TYPE, compared[cap.TYPE].reply) == "type 1"
    assert cap.describe_answer(cap.SPECIAL_PATHS, compared[cap.SPECIAL_PATHS].reply) == "no special paths"


def test_a_real_database_session_replays_initialize_until_close_ends_it():
    chunks = recording("openbao-database.jsonl")
    capture = cap.SetupCapture("database")
    route(chunks, capture)
    assert capture.plan().replay == []  # the recording ends with Close: nothing left to replay
    # Before Close: Initialize (with the directory) is what a new child needs.
    capture = cap.SetupCapture("database")
    routed = Routed(capture)
    for from_vault, data in chunks:
        routed.feed(from_vault, data)
        calls = capture.calls()
        if any(p == cap.DB_INITIALIZE for p, _ in calls) and any(p == cap.DB_TYPE for p, _ in calls):
            plan = capture.plan()
            if plan.replay:
                break
    assert [c.path for c in plan.replay] == [cap.DB_INITIALIZE]
    config = cap.read_fields(plan.replay[0].request)
    assert config[0][0] == 1 and b"directory" in config[0][2]
    assert [c.path for c in plan.compare] == [cap.DB_TYPE]
    assert cap.describe_answer(cap.DB_TYPE, plan.compare[0].reply) == "type 'shimdb'"
    assert plan.waiting == "" and plan.refusal == ""


def test_a_backend_is_not_ready_before_vault_set_it_up():
    chunks = recording("openbao-secret-mount.jsonl")
    capture = cap.SetupCapture("secret")
    routed = Routed(capture)
    seen_waiting = seen_in_flight = False
    for from_vault, data in chunks:
        plan = capture.plan()
        if not any(c.path == cap.SETUP for c in plan.replay):
            seen_waiting |= "not set the plugin up" in plan.waiting or "in flight" in plan.waiting
            seen_in_flight |= plan.in_flight > 0
        routed.feed(from_vault, data)
    assert seen_waiting and seen_in_flight
    ready = [p for p in plans(chunks, cap.SetupCapture("secret")) if p.replay and not p.in_flight]
    assert ready and all(p.waiting == "" for p in ready)


def test_the_generation_moves_with_every_stateful_call_only():
    capture = cap.SetupCapture("secret")
    route(recording("openbao-secret-mount.jsonl"), capture)
    # Setup, Initialize and (at OpenBao's stop) Cleanup: three starts.
    assert capture.generation == 3
    assert capture.in_flight == 0


def test_a_registration_probe_is_a_metadata_mode_setup():
    capture = cap.SetupCapture("secret")
    route(recording("openbao-metadata-probe.jsonl"), capture)
    calls = capture.calls()
    setup = next(c for (p, _), c in calls.items() if p == cap.SETUP)
    args = cap.setup_args(setup.request)
    assert (args.broker_id, args.config, args.backend_uuid) == (1, {}, "")
    mux = calls[(cap.MULTIPLEXING, "")]
    assert mux.reply is None  # Unimplemented: an error status, no message


# --- synthetic streams: what the recordings do not show --------------------------------

def _headers(sid: int, path: str, extra=(), end=False) -> bytes:
    block = hpack.Encoder().encode([(":method", "POST"), (":path", path), (":scheme", "http"),
                                    (":authority", "x"), ("content-type", "application/grpc"),
                                    ("te", "trailers"), *extra])
    return frame(HEADERS, END_HEADERS | (END_STREAM if end else 0), sid, block)


def _msg(body: bytes, flag: int = 0) -> bytes:
    return bytes((flag,)) + len(body).to_bytes(4, "big") + body


def _setup_body(broker: int, config: dict, uuid: str) -> bytes:
    def ld(num, data):
        return bytes(((num << 3) | 2, len(data))) + data
    out = bytes((0x08, broker))
    for k, v in config.items():
        out += ld(2, ld(1, k.encode()) + ld(2, v.encode()))
    return out + ld(3, uuid.encode())


def _one_call(routed: Routed, sid: int, path: str, request: bytes, reply: bytes | None, *, flag=0,
              extra=(), reset=False) -> None:
    routed.feed(True, _headers(sid, path, extra) + frame(DATA, END_STREAM, sid, _msg(request, flag)))
    if reset:
        routed.feed(True, frame(RST_STREAM, 0, sid, (8).to_bytes(4, "big")))
        return
    resp = hpack.Encoder()
    out = frame(HEADERS, END_HEADERS, sid, resp.encode([(":status", "200")]))
    if reply is not None:
        out += frame(DATA, 0, sid, _msg(reply))
    out += frame(HEADERS, END_HEADERS | END_STREAM, sid, resp.encode([("grpc-status", "0" if reply is not None
                                                                          else "13")]))
    routed.feed(False, out)


def _fresh_router(capture) -> Routed:
    routed = Routed(capture)
    routed.feed(True, PREFACE)
    return routed


def test_a_failed_setup_is_not_replayed_and_cleanup_forgets_a_working_one():
    capture = cap.SetupCapture("secret")
    routed = _fresh_router(capture)
    mid = (("multiplex_id", "m1"),)
    _one_call(routed, 1, cap.SETUP, _setup_body(3, {"a": "b"}, "u-1"), b"\x0a\x04nope", extra=mid)
    assert capture.plan().replay == [] and "not set the plugin up" in capture.plan().waiting
    _one_call(routed, 3, cap.SETUP, _setup_body(4, {"a": "b"}, "u-1"), b"", extra=mid)
    plan = capture.plan()
    assert [c.path for c in plan.replay] == [cap.SETUP] and plan.broker_ids == [4]
    _one_call(routed, 5, cap.CLEANUP, b"", b"", extra=mid)
    assert capture.plan().replay == []


def test_an_initialize_that_failed_is_not_replayed():
    capture = cap.SetupCapture("secret")
    routed = _fresh_router(capture)
    _one_call(routed, 1, cap.SETUP, _setup_body(2, {}, "u"), b"")
    _one_call(routed, 3, cap.INITIALIZE, b"", b"\x0a\x06\x12\x04boom")  # ProtoError{err_msg: "boom"}
    assert [c.path for c in capture.plan().replay] == [cap.SETUP]
    assert cap.initialize_error(b"\x0a\x06\x12\x04boom") == "boom"


def test_a_reset_call_never_completes():
    capture = cap.SetupCapture("secret")
    routed = _fresh_router(capture)
    _one_call(routed, 1, cap.SETUP, _setup_body(2, {}, "u"), None, reset=True)
    assert capture.calls() == {} and capture.in_flight == 0


def test_a_compressed_setup_refuses_the_swap():
    capture = cap.SetupCapture("secret")
    routed = _fresh_router(capture)
    _one_call(routed, 1, cap.SETUP, _setup_body(2, {}, "u"), b"", flag=1)
    assert "compressed" in capture.plan().refusal


def test_a_multiplexed_plugin_replays_every_mount_and_forgets_a_removed_one():
    """One process, several mounts: each mount's Setup (its own multiplex_id and broker id)
    and Initialize are replayed in the order the mounts came, MultiplexingSupport is compared,
    and a mount's Cleanup removes only that mount from the next plan."""
    capture = cap.SetupCapture("secret")
    routed = _fresh_router(capture)
    _one_call(routed, 1, cap.MULTIPLEXING, b"", b"\x08\x01")
    sid = 3
    for broker, key in ((2, "m-a"), (5, "m-b"), (9, "m-c")):
        mid = (("multiplex_id", key),)
        _one_call(routed, sid, cap.SETUP, _setup_body(broker, {}, f"u-{key}"), b"", extra=mid)
        _one_call(routed, sid + 2, cap.INITIALIZE, b"", b"", extra=mid)
        sid += 4
    plan = capture.plan()
    assert plan.refusal == "" and plan.waiting == ""
    assert [(c.path, c.key) for c in plan.replay] == [
        (cap.SETUP, "m-a"), (cap.INITIALIZE, "m-a"), (cap.SETUP, "m-b"), (cap.INITIALIZE, "m-b"),
        (cap.SETUP, "m-c"), (cap.INITIALIZE, "m-c")]
    assert plan.broker_ids == [2, 5, 9]
    assert [c.path for c in plan.compare] == [cap.MULTIPLEXING]
    _one_call(routed, sid, cap.CLEANUP, b"", b"", extra=(("multiplex_id", "m-b"),))
    plan = capture.plan()
    assert [(c.path, c.key) for c in plan.replay] == [
        (cap.SETUP, "m-a"), (cap.INITIALIZE, "m-a"), (cap.SETUP, "m-c"), (cap.INITIALIZE, "m-c")]
    assert plan.broker_ids == [2, 9]


def test_closing_the_connection_ends_its_calls_in_flight():
    capture = cap.SetupCapture("secret")
    routed = Routed(capture)
    routed.feed(True, PREFACE + _headers(1, cap.SETUP))
    assert capture.in_flight == 1
    routed.tap.close()
    assert capture.in_flight == 0 and capture.calls() == {}


def test_answers_compare_lists_as_sets():
    def paths(**lists):
        num = {"root": 1, "unauthenticated": 2}
        inner = b"".join(bytes(((num[k] << 3) | 2, len(v))) + v.encode() for k, vs in lists.items() for v in vs)
        return bytes((0x0A, len(inner))) + inner
    a = paths(root=["a", "b"], unauthenticated=["login"])
    b = paths(unauthenticated=["login"], root=["b", "a"])
    c = paths(root=["a"], unauthenticated=["login"])
    assert cap.answer(cap.SPECIAL_PATHS, a) == cap.answer(cap.SPECIAL_PATHS, b)
    assert cap.answer(cap.SPECIAL_PATHS, a) != cap.answer(cap.SPECIAL_PATHS, c)
    assert cap.describe_answer(cap.SPECIAL_PATHS, a) == "root=['a', 'b'], unauthenticated=['login']"
    assert cap.answer(cap.TYPE, b"\x08\x01") != cap.answer(cap.TYPE, b"\x08\x02")
    assert cap.answer(cap.TYPE, b"") == cap.answer(cap.TYPE, b"\x08\x00")  # proto3 default


@pytest.mark.parametrize("data, message", [
    (b"\x08", "truncated varint"),
    (b"\x0a\x05ab", "field 1 is 5 bytes"),
    (b"\x00\x01", "field number 0"),
    (b"\x0b", "groups"),
    (b"\x08" + b"\xff" * 10 + b"\x01", "longer than 10 bytes"),
])
def test_malformed_messages_are_wire_errors(data, message):
    with pytest.raises(cap.WireError, match=message):
        cap.read_fields(data)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=200))
def test_any_bytes_read_or_fail_as_wire_errors(data):
    for fn in (cap.read_fields, cap.setup_args, cap.setup_error, cap.initialize_error,
               lambda d: cap.answer(cap.SPECIAL_PATHS, d)):
        try:
            fn(data)
        except cap.WireError:
            pass


@settings(max_examples=200, deadline=None)
@given(st.integers(0, 2**32 - 1), st.dictionaries(st.text(max_size=20), st.text(max_size=40), max_size=5),
       st.text(max_size=40))
def test_setup_args_read_back_what_was_written(broker, config, uuid):
    def varint(n):
        out = bytearray()
        while True:
            b, n = n & 0x7F, n >> 7
            out.append(b | (0x80 if n else 0))
            if not n:
                return bytes(out)

    def ld(num, data):
        return varint((num << 3) | 2) + varint(len(data)) + data
    body = b"\x08" + varint(broker)
    for k, v in config.items():
        body += ld(2, ld(1, k.encode()) + ld(2, v.encode()))
    body += ld(3, uuid.encode())
    assert cap.setup_args(body) == cap.SetupArgs(broker, config, uuid)
