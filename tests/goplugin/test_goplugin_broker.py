"""Broker ConnInfo rules, sans-I/O, plus the Broker shell's waiting."""

from __future__ import annotations

import threading

import pytest
from hypothesis import given, strategies as st

from shim.goplugin.protos import grpc_broker_pb2 as pb
from shim.goplugin.broker import (Broker, BrokerCore, ConnInfo, Knock, conninfo_from_message,
                                  conninfo_to_message, parse_conninfo)
from shim.goplugin.errors import BrokerError


def test_core_claim_and_expiry():
    core = BrokerCore(timeout=5)
    a = ConnInfo(1, "unix", "/a")
    assert core.received(a, now=0)
    assert not core.received(ConnInfo(1, "unix", "/other"), now=1)  # go-plugin keeps the first
    assert core.claim(1, now=4.9) == a
    assert core.claim(1, now=4.9) is None
    core.received(ConnInfo(2, "unix", "/b"), now=10)
    assert core.pending() == [2]
    assert core.expire(now=15) == [2]
    assert core.claim(2, now=15) is None


def test_core_ids_wrap_like_uint32():
    core = BrokerCore()
    assert [core.next_id() for _ in range(3)] == [1, 2, 3]
    core._next = 2 ** 32 - 1
    assert core.next_id() == 0


def test_core_ignores_knocks():
    core = BrokerCore()
    assert not core.received(ConnInfo(3, "", "", Knock(knock=True)), now=0)
    assert core.pending() == []


@pytest.mark.parametrize("args,match", [
    ((-1, "unix", "/a"), "uint32"), ((2 ** 32, "unix", "/a"), "uint32"),
    ((1, "udp", "/a"), "Unknown address type"), ((1, "unix", ""), "empty"),
])
def test_parse_conninfo_rejects(args, match):
    with pytest.raises(BrokerError, match=match):
        parse_conninfo(*args)


def test_rewrite_for_a_proxy():
    info = ConnInfo(7, "unix", "/plugin/side.sock")
    assert info.rewrite("unix", "/proxy/side.sock") == ConnInfo(7, "unix", "/proxy/side.sock")
    with pytest.raises(BrokerError):
        info.rewrite("unix", "")


@given(st.binary(max_size=64))
def test_any_wire_bytes_give_conninfo_or_our_error(data):
    try:
        msg = pb.ConnInfo.FromString(data)
    except Exception:  # protobuf's own DecodeError: not our layer
        return
    try:
        info = conninfo_from_message(msg)
    except BrokerError:
        return
    assert conninfo_from_message(conninfo_to_message(info)) == info


def test_message_roundtrip_with_knock():
    info = ConnInfo(9, "unix", "/s", Knock(knock=False, ack=False, error="x"))
    msg = conninfo_to_message(info)
    assert msg.HasField("knock") and msg.knock.error == "x"
    assert conninfo_from_message(msg) == info


def test_broker_dial_waits_for_conninfo_and_times_out():
    broker = Broker(None, dial_timeout=5)
    result = {}

    def waiter():
        result["info"] = broker.wait_conninfo(4)

    t = threading.Thread(target=waiter)
    t.start()
    broker._incoming(pb.ConnInfo(service_id=4, network="unix", address="/x"))
    t.join(5)
    assert result["info"] == ConnInfo(4, "unix", "/x")
    with pytest.raises(BrokerError, match="timeout waiting for connection info for broker id 5"):
        broker.wait_conninfo(5, timeout=0.05)
    broker.close()
    with pytest.raises(BrokerError, match="closed"):
        broker.wait_conninfo(4)


def test_announcements_are_queued_until_the_stream_runs():
    broker = Broker(None)
    broker.announce(ConnInfo(1, "unix", "/a"))
    broker.announce(ConnInfo(2, "unix", "/b"))
    stream = broker._outgoing_messages()
    assert [next(stream).service_id, next(stream).service_id] == [1, 2]
    broker.close()
    assert list(stream) == []
