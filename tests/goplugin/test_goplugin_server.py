"""PluginServer in-process: environment handling, TLS setup failures, cleanup."""

from __future__ import annotations

import os
import stat

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from shim.goplugin import grpcutil, handshake as hs, mtls
from shim.goplugin.protos import grpc_controller_pb2, grpc_controller_pb2_grpc
from shim.goplugin.errors import CookieError, StartError, TLSSetupError
from shim.goplugin.server import PluginServer
from shim.goplugin.tlsfront import ClientFront

CONFIG = hs.HandshakeConfig("TEST_COOKIE", "yes", (4, 5))
BASE_ENV = {"TEST_COOKIE": "yes", hs.ENV_PROTOCOL_VERSIONS: "3,4"}


@pytest.fixture
def tmpdir_env(tmp_path, monkeypatch):
    d = tmp_path / "tmp"
    d.mkdir()
    import tempfile
    monkeypatch.setattr(tempfile, "tempdir", str(d))
    return d


def test_wrong_cookie_raises(tmpdir_env):
    with pytest.raises(CookieError):
        PluginServer(CONFIG, environ={"TEST_COOKIE": "no"}).start()
    assert list(tmpdir_env.iterdir()) == []


def test_plaintext_in_socket_dir_and_cleanup(tmp_path, tmpdir_env):
    sockets = tmp_path / "sockets"
    sockets.mkdir()
    server = PluginServer(CONFIG, environ={**BASE_ENV, hs.ENV_UNIX_SOCKET_DIR: str(sockets)})
    line = server.start()
    try:
        assert line.app_version == 4 and line.server_cert is None
        assert os.path.dirname(line.address) == str(sockets)
        assert stat.S_ISSOCK(os.stat(line.address).st_mode)
        with grpcutil.new_channel("unix:" + line.address) as channel:
            reply = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(service="plugin"),
                                                             timeout=10)
            assert reply.status == health_pb2.HealthCheckResponse.SERVING
            grpc_controller_pb2_grpc.GRPCControllerStub(channel).Shutdown(grpc_controller_pb2.Empty(), timeout=10)
        assert server.wait(10)
    finally:
        server.stop()
    assert list(sockets.iterdir()) == []
    assert list(tmpdir_env.iterdir()) == []


def test_automtls_serves_only_the_announced_host(tmp_path, tmpdir_env):
    host = mtls.generate_identity()
    server = PluginServer(CONFIG, environ={**BASE_ENV, hs.ENV_CLIENT_CERT: host.cert_pem.decode()})
    line = server.start()
    try:
        assert line.server_cert is not None
        assert os.path.dirname(line.address).startswith(str(tmpdir_env))
        good = ClientFront("unix", line.address, mtls.client_context(host, line.server_cert), line.server_cert)
        good.connect_check()
        with grpcutil.FrontedChannel(grpcutil.new_channel(good.target), good) as channel:
            health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(service="plugin"), timeout=10)
        stranger = mtls.generate_identity()
        bad = ClientFront("unix", line.address, mtls.client_context(stranger, line.server_cert), line.server_cert)
        with pytest.raises(TLSSetupError):
            bad.connect_check()
        bad.close()
    finally:
        server.stop()
    assert list(tmpdir_env.iterdir()) == []


def test_bad_client_cert_env_is_our_error(tmpdir_env):
    with pytest.raises(TLSSetupError, match="PLUGIN_CLIENT_CERT"):
        PluginServer(CONFIG, environ={**BASE_ENV, hs.ENV_CLIENT_CERT: "not a pem"}).start()
    assert list(tmpdir_env.iterdir()) == []


def test_missing_socket_dir_is_our_error(tmp_path, tmpdir_env):
    with pytest.raises(StartError, match="not a directory"):
        PluginServer(CONFIG, environ={**BASE_ENV, hs.ENV_UNIX_SOCKET_DIR: str(tmp_path / "nope")}).start()


def test_socket_group(tmp_path, tmpdir_env):
    gid = os.getgid()
    server = PluginServer(CONFIG, environ={**BASE_ENV, hs.ENV_UNIX_SOCKET_GROUP: str(gid)})
    line = server.start()
    try:
        st = os.stat(line.address)
        assert st.st_gid == gid and stat.S_IMODE(st.st_mode) == 0o660
    finally:
        server.stop()


def test_register_gets_version_and_handlers_are_served(tmpdir_env):
    seen = {}
    handler = grpc.method_handlers_generic_handler("x.Echo", {
        "Echo": grpc.unary_unary_rpc_method_handler(lambda req, ctx: req)})
    server = PluginServer(CONFIG, lambda ctx: seen.update(version=ctx.version), handlers=[handler],
                          environ={**BASE_ENV, hs.ENV_PROTOCOL_VERSIONS: "5"})
    line = server.start()
    try:
        assert seen == {"version": 5}
        with grpcutil.new_channel("unix:" + line.address) as channel:
            assert channel.unary_unary("/x.Echo/Echo")(b"hi", timeout=10) == b"hi"
            # a message over grpcio's 4 MiB default limit
            assert channel.unary_unary("/x.Echo/Echo")(b"z" * (5 << 20), timeout=30) == b"z" * (5 << 20)
    finally:
        server.stop()
