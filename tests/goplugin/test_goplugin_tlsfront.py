"""TLS fronts: stdlib-ssl mTLS on the outside, plaintext grpcio inside private dirs."""

from __future__ import annotations

import os
import stat
import threading

import grpc
import pytest

from shim.goplugin import grpcutil, mtls, tlsfront
from shim.goplugin.errors import TLSSetupError
from tests.support.wait import wait_until


def _echo(request, context):
    return request


def _echo_stream(request_iterator, context):
    for item in request_iterator:
        yield item


HANDLER = grpc.method_handlers_generic_handler("t.Echo", {
    "Echo": grpc.unary_unary_rpc_method_handler(_echo),
    "Stream": grpc.stream_stream_rpc_method_handler(_echo_stream),
})


@pytest.fixture(scope="module")
def ids():
    return mtls.generate_identity(), mtls.generate_identity()


@pytest.fixture
def backend(tmp_path):
    d = tlsfront.private_dir(base=str(tmp_path))
    path = os.path.join(d, "grpc.sock")
    server = grpcutil.new_server(8, [HANDLER])
    grpcutil.bind_unix(server, path)
    server.start()
    yield path
    server.stop(None).wait()


@pytest.fixture
def server_front(tmp_path, backend, ids):
    host, plugin = ids
    front = tlsfront.ServerFront(str(tmp_path / "public.sock"), backend,
                                 mtls.server_context(plugin, host.cert_der), host.cert_der)
    yield front
    front.close()


def _client_front(server_front, tmp_path, me, peer_der):
    return tlsfront.ClientFront("unix", server_front.path, mtls.client_context(me, peer_der), peer_der,
                                base=str(tmp_path))


def test_private_dir_is_0700(tmp_path):
    d = tlsfront.private_dir(base=str(tmp_path))
    assert stat.S_IMODE(os.stat(d).st_mode) == 0o700


def test_relay_unary_stream_large_and_concurrent(server_front, tmp_path, ids):
    host, plugin = ids
    front = _client_front(server_front, tmp_path, host, plugin.cert_der)
    assert stat.S_IMODE(os.stat(front.dir).st_mode) == 0o700
    front.connect_check()
    with grpcutil.FrontedChannel(grpcutil.new_channel(front.target), front) as channel:
        echo = channel.unary_unary("/t.Echo/Echo")
        assert echo(b"hello", timeout=10) == b"hello"
        big = os.urandom(9 << 20)  # over grpcio's 4 MiB default: flow control + size limits
        assert echo(big, timeout=30) == big
        stream = channel.stream_stream("/t.Echo/Stream")
        assert list(stream(iter([b"a", b"b" * 70000, b"c"]), timeout=10)) == [b"a", b"b" * 70000, b"c"]
        errors = []

        def worker(n):
            try:
                for i in range(20):
                    payload = f"{n}-{i}".encode() * 100
                    assert echo(payload, timeout=10) == payload
            except Exception as exc:  # collected for the main thread
                errors.append(exc)

        threads = [threading.Thread(target=worker, args=(n,)) for n in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(30)
        assert errors == []
    assert front.last_error is None and server_front.last_error is None
    assert not os.path.exists(front.dir)


def test_stranger_client_is_refused(server_front, tmp_path, ids):
    """Under TLS 1.3 the server rejects a client cert after the client's handshake ends;
    connect_check still reports it, before grpcio ever sees the connection."""
    _, plugin = ids
    front = _client_front(server_front, tmp_path, mtls.generate_identity(), plugin.cert_der)
    try:
        with pytest.raises(TLSSetupError, match="did not accept our client certificate"):
            front.connect_check()
    finally:
        front.close()
    assert server_front.last_error is not None
    assert not os.path.exists(front.dir)


def test_client_refuses_an_unexpected_server(server_front, tmp_path, ids):
    host, _ = ids
    other = mtls.generate_identity()
    front = _client_front(server_front, tmp_path, host, other.cert_der)
    with pytest.raises(TLSSetupError, match="TLS connection to unix:"):
        front.connect_check()
    front.close()


def test_close_removes_sockets(tmp_path, backend, ids):
    host, plugin = ids
    public = str(tmp_path / "pub.sock")
    front = tlsfront.ServerFront(public, backend, mtls.server_context(plugin, host.cert_der), host.cert_der)
    assert stat.S_ISSOCK(os.stat(public).st_mode)
    client = tlsfront.ClientFront("unix", public, mtls.client_context(host, plugin.cert_der), plugin.cert_der,
                                  base=str(tmp_path))
    client.connect_check()
    channel = grpcutil.new_channel(client.target)
    assert channel.unary_unary("/t.Echo/Echo")(b"x", timeout=10) == b"x"
    client.close()
    front.close()
    channel.close()
    assert not os.path.exists(public) and not os.path.exists(client.dir)
    front.close()  # idempotent


def test_refused_connections_log_one_line_per_interval_with_a_count(server_front, tmp_path, ids, caplog):
    """Anyone who can reach the socket can make the front refuse a connection; a flood of them
    gives one WARN line, then one per interval counting the others (on a fake clock)."""
    _, plugin = ids
    now = [1000.0]
    server_front._clock = lambda: now[0]
    caplog.set_level("WARNING", logger="shim.goplugin.tlsfront")

    def stranger() -> None:
        front = _client_front(server_front, tmp_path, mtls.generate_identity(), plugin.cert_der)
        try:
            with pytest.raises(TLSSetupError):
                front.connect_check()
        finally:
            front.close()

    for _ in range(5):
        stranger()
    wait_until(lambda: server_front.refusals == 5, "the front to refuse 5 connections")
    lines = [r.getMessage() for r in caplog.records if "refused a TLS connection" in r.getMessage()]
    assert len(lines) == 1 and "more refused" not in lines[0], lines
    now[0] += tlsfront.REFUSAL_LOG_INTERVAL
    stranger()
    wait_until(lambda: server_front.refusals == 6, "the front to refuse a 6th connection")
    lines = [r.getMessage() for r in caplog.records if "refused a TLS connection" in r.getMessage()]
    assert len(lines) == 2 and "(4 more refused since the last such line)" in lines[1], lines
