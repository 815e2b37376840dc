"""Our PluginClient <-> our PluginServer, with the plugin launched as a real process."""

from __future__ import annotations

import hashlib
import logging
import os
import stat
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest

from shim.goplugin import handshake as hs
from shim.goplugin.protos import grpctest_pb2 as pb, grpctest_pb2_grpc as rpc
from shim.goplugin.client import PluginClient
from shim.goplugin.errors import ChecksumError, CookieError, HandshakeError, StartError, VersionError
from tests.support.procs import alive

ROOT = Path(__file__).resolve().parents[2]
CONFIG = hs.HandshakeConfig(hs.VAULT_BACKEND.cookie_key, hs.VAULT_BACKEND.cookie_value, (5,))

# A Python twin of tests/gopeer/plugin: grpctest.Test + PingPong, same broker convention.
PLUGIN_SOURCE = textwrap.dedent('''\
    import os, signal, subprocess, sys, threading
    sys.path.insert(0, os.environ["PYPLUGIN_ROOT"])
    from shim.goplugin import hclog
    from shim.goplugin import handshake as hs
    from shim.goplugin.server import serve
    from shim.goplugin.protos import grpctest_pb2 as pb, grpctest_pb2_grpc as rpc

    VERSION = os.environ.get("PYPLUGIN_VERSION", "py")
    MULT = int(os.environ.get("PYPLUGIN_MULT", "2"))

    class Ping(rpc.PingPongServicer):
        def __init__(self, msg):
            self.msg = msg
        def Ping(self, request, context):
            return pb.PongResponse(msg=self.msg)

    class Test(rpc.TestServicer):
        def __init__(self, broker):
            self.broker = broker
        def Double(self, request, context):
            return pb.TestResponse(Output=request.Input * MULT)
        def Stream(self, request_iterator, context):
            for req in request_iterator:
                yield pb.TestResponse(Output=req.Input * MULT)
        def PrintKV(self, request, context):
            value = request.ValueString if request.WhichOneof("Value") == "ValueString" else request.ValueInt
            if request.Key.startswith("log."):
                hclog.log(request.Key[4:], str(value))
            elif request.Key == "stdout":
                print(value, flush=True)
            elif request.Key == "spawn":
                child = subprocess.Popen(["sleep", "300"], env={**os.environ, str(value): "1"})
                hclog.log("info", "spawned", child=child.pid)
            else:
                hclog.log("info", "kv", **{request.Key: value})
            return pb.PrintKVResponse()
        def _serve(self, msg):
            sid = self.broker.next_id()
            self.broker.accept_and_serve(sid, lambda s: rpc.add_PingPongServicer_to_server(Ping(msg), s))
            return sid
        def Bidirectional(self, request, context):
            if request.id == 0:
                return pb.BidirectionalResponse(id=self._serve("brokered version=" + VERSION))
            channel = self.broker.dial(request.id)
            try:
                msg = rpc.PingPongStub(channel).Ping(pb.PingRequest(), timeout=10).msg
            finally:
                channel.close()
            return pb.BidirectionalResponse(id=self._serve(f"relayed {msg} via version={VERSION}"))

    def register(ctx):
        rpc.add_TestServicer_to_server(Test(ctx.broker), ctx.server)
        rpc.add_PingPongServicer_to_server(Ping("version=" + VERSION), ctx.server)

    if os.environ.get("PYPLUGIN_EXIT_EARLY"):
        hclog.log("error", "exiting early on request")
        sys.exit(int(os.environ["PYPLUGIN_EXIT_EARLY"]))
    if os.environ.get("PYPLUGIN_SILENT"):
        signal.pause()
    if os.environ.get("PYPLUGIN_GARBAGE"):
        print("hello, I am not a handshake", flush=True)
    hclog.log("info", "python test plugin starting", version=VERSION, pid=os.getpid())
    kwargs = {}
    if os.environ.get("PYPLUGIN_IGNORE_SHUTDOWN"):
        kwargs["on_shutdown"] = lambda: hclog.log("warn", "ignoring shutdown")
    versions = tuple(int(v) for v in os.environ.get("PYPLUGIN_VERSIONS", "5").split(","))
    config = hs.HandshakeConfig(hs.VAULT_BACKEND.cookie_key, hs.VAULT_BACKEND.cookie_value, versions)
    sys.exit(serve(config, register, **kwargs))
''')


@pytest.fixture(scope="module")
def plugin_path(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("pyplugin") / "py-test-plugin"
    path.write_text(f"#!{sys.executable}\n" + PLUGIN_SOURCE)
    path.chmod(0o755)
    return path


@pytest.fixture
def sockdir(tmp_path, monkeypatch):
    """Every temp file and socket of this test (ours and the plugin's) lands here."""
    d = tmp_path / "tmp"
    d.mkdir()
    monkeypatch.setenv("TMPDIR", str(d))
    import tempfile
    monkeypatch.setattr(tempfile, "tempdir", str(d))
    return d


def _client(path, **kw) -> PluginClient:
    env = {"PYPLUGIN_ROOT": str(ROOT), **kw.pop("env", {})}
    kw.setdefault("sha256", hashlib.sha256(Path(path).read_bytes()).hexdigest())
    return PluginClient([str(path)], kw.pop("config", CONFIG), env=env, **kw)




def _marked(marker: str) -> list[int]:
    found = []
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                with open(f"/proc/{d}/environ", "rb") as f:
                    if f"{marker}=1".encode() in f.read().split(b"\0"):
                        found.append(int(d))
            except OSError:
                pass
    return found


def _leftovers(d: Path) -> list[str]:
    return sorted(str(p.relative_to(d)) for p in d.rglob("*"))


@pytest.mark.parametrize("auto_mtls", [True, False], ids=["mtls", "plaintext"])
def test_calls_stream_broker_stdio_and_kill(plugin_path, sockdir, auto_mtls, caplog):
    caplog.set_level(logging.DEBUG)
    seen_stdio = []
    got_stdio = threading.Event()

    def on_stdio(channel, data):
        seen_stdio.append((channel, data))
        if b"\n" in data:
            got_stdio.set()

    client = _client(plugin_path, auto_mtls=auto_mtls, on_stdio=on_stdio)
    channel = client.connect()
    pid = client.proc.pid
    assert client.version == 5
    assert (client.line.server_cert is not None) == auto_mtls
    assert stat.S_ISSOCK(os.stat(client.line.address).st_mode)

    test = rpc.TestStub(channel)
    assert test.Double(pb.TestRequest(Input=21), timeout=10).Output == 42
    assert [r.Output for r in test.Stream(iter(pb.TestRequest(Input=i) for i in (1, 2, 3)), timeout=10)] == [2, 4, 6]
    assert rpc.PingPongStub(channel).Ping(pb.PingRequest(), timeout=10).msg == "version=py"

    # broker, plugin serves -> host dials
    sid = test.Bidirectional(pb.BidirectionalRequest(id=0), timeout=10).id
    with client.broker.dial(sid) as brokered:
        assert rpc.PingPongStub(brokered).Ping(pb.PingRequest(), timeout=10).msg == "brokered version=py"

    # broker, host serves -> plugin dials (and relays on a new id the host dials)
    host_id = client.broker.next_id()
    served = client.broker.accept_and_serve(
        host_id, lambda s: rpc.add_PingPongServicer_to_server(_HostPing(), s))
    relay_id = test.Bidirectional(pb.BidirectionalRequest(id=host_id), timeout=15).id
    with client.broker.dial(relay_id) as brokered:
        assert rpc.PingPongStub(brokered).Ping(pb.PingRequest(), timeout=10).msg == \
            "relayed host nonce via version=py"
    served.stop()

    # stdio: stdout after the handshake arrives on GRPCStdio
    test.PrintKV(pb.PrintKVRequest(Key="stdout", ValueString="to stdout"), timeout=10)
    assert got_stdio.wait(10)
    assert {c for c, _ in seen_stdio} == {1}
    assert b"".join(d for _, d in seen_stdio) == b"to stdout\n"

    # stderr hclog lines are re-logged at their level
    test.PrintKV(pb.PrintKVRequest(Key="log.warn", ValueString="careful now"), timeout=10)
    client.kill()
    assert any(r.levelno == logging.WARNING and r.getMessage().startswith("careful now") for r in caplog.records)
    assert not alive(pid)
    assert client.returncode == 0  # it exited on Shutdown, not by SIGKILL
    assert _leftovers(sockdir) == []


class _HostPing(rpc.PingPongServicer):
    def Ping(self, request, context):
        return pb.PongResponse(msg="host nonce")


def test_kill_takes_the_whole_process_group(plugin_path, sockdir):
    marker = f"PYPLUGIN_MARK_{os.getpid()}_{time.monotonic_ns()}"
    client = _client(plugin_path, env={"PYPLUGIN_IGNORE_SHUTDOWN": "1"})
    channel = client.connect()
    rpc.TestStub(channel).PrintKV(pb.PrintKVRequest(Key="spawn", ValueString=marker), timeout=10)
    children = _marked(marker)
    assert len(children) == 1
    t0 = time.monotonic()
    client.kill()
    waited = time.monotonic() - t0
    assert 1.9 < waited < 5, waited  # Shutdown ignored: 2 s grace, then SIGKILL
    assert client.returncode == -9
    assert [p for p in children if alive(p)] == []


def test_checksum_mismatch_never_starts(plugin_path, sockdir):
    client = _client(plugin_path, sha256="00" * 32)
    with pytest.raises(ChecksumError, match="checksums did not match"):
        client.start()
    assert client.proc is None


def test_exit_before_handshake(plugin_path, sockdir):
    client = _client(plugin_path, env={"PYPLUGIN_EXIT_EARLY": "3"})
    with pytest.raises(StartError, match="plugin exited before we could connect") as ei:
        client.start()
    assert "exit status 3" in str(ei.value) and "exiting early on request" in str(ei.value)


def test_start_timeout(plugin_path, sockdir):
    client = _client(plugin_path, env={"PYPLUGIN_SILENT": "1"}, start_timeout=1.0)
    t0 = time.monotonic()
    with pytest.raises(StartError, match="timeout while waiting for plugin to start"):
        client.start()
    assert time.monotonic() - t0 < 3
    assert client.proc is None


def test_garbage_before_handshake(plugin_path, sockdir):
    client = _client(plugin_path, env={"PYPLUGIN_GARBAGE": "1"})
    with pytest.raises(HandshakeError, match="Unrecognized remote plugin message"):
        client.start()
    assert client.proc is None


def test_version_mismatch(plugin_path, sockdir):
    # The plugin only speaks 6; we offer 4,5 -> it falls back to its lowest (6), we refuse.
    config = hs.HandshakeConfig(CONFIG.cookie_key, CONFIG.cookie_value, (4, 5))
    client = _client(plugin_path, env={"PYPLUGIN_VERSIONS": "6"}, config=config)
    with pytest.raises(VersionError, match="Plugin version: 6, Client versions: \\[4, 5\\]"):
        client.start()


def test_negotiates_highest_common_version(plugin_path, sockdir):
    config = hs.HandshakeConfig(CONFIG.cookie_key, CONFIG.cookie_value, (3, 4, 5))
    with _client(plugin_path, env={"PYPLUGIN_VERSIONS": "3,4"}, config=config) as client:
        assert client.version == 4


def test_wrong_cookie_prints_go_plugin_message(plugin_path, tmp_path):
    import subprocess
    env = {"PATH": os.environ["PATH"], "PYPLUGIN_ROOT": str(ROOT)}
    proc = subprocess.run([str(plugin_path)], env=env, capture_output=True, timeout=30)
    assert proc.returncode == 1 and proc.stdout == b""
    assert proc.stderr.decode().endswith(CookieError.human_message)
