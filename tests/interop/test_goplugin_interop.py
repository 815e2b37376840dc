"""Interop with real HashiCorp go-plugin peers (tests/gopeer), at both ends of go-plugin's
history: 1.0.1 (Debian, Go 1.19) and the current release (tests/gopeer/go.mod, 1.8.0).

* our PluginClient -> Go plugin (AutoMTLS through our ClientFront)
* Go host -> our PluginServer (AutoMTLS through our ServerFront)

Every test runs once per release. A missing Go toolchain or module fails these tests (it
never skips them).
"""

from __future__ import annotations

import hashlib
import logging
import sys
from pathlib import Path

import grpc
import pytest

from shim.goplugin import handshake as hs
from shim.goplugin.protos import grpctest_pb2 as pb, grpctest_pb2_grpc as rpc
from shim.goplugin.client import PluginClient
from shim.goplugin.errors import ChecksumError, StartError

from tests.goplugin.test_goplugin_e2e import PLUGIN_SOURCE
from tests.support import gopeer
from tests.support.procs import alive

pytestmark = pytest.mark.interop

ROOT = Path(__file__).resolve().parents[2]
CONFIG = hs.HandshakeConfig(hs.VAULT_BACKEND.cookie_key, hs.VAULT_BACKEND.cookie_value, (5,))


@pytest.fixture(scope="module", params=gopeer.RELEASES, ids=lambda r: f"go-plugin-{r}")
def release(request):
    return request.param


@pytest.fixture(scope="module")
def go_plugin(go_build, release):
    return go_build.plugin("1.0.0", 2, release=release)


@pytest.fixture(scope="module")
def go_host(go_build, release):
    return go_build.host(release=release)


@pytest.fixture(scope="module")
def py_plugin(tmp_path_factory):
    path = tmp_path_factory.mktemp("pyplugin") / "py-plugin"
    path.write_text(f"#!{sys.executable}\n" + PLUGIN_SOURCE)
    path.chmod(0o755)
    return path


@pytest.fixture
def sockdir(tmp_path):
    d = tmp_path / "sock"
    d.mkdir()
    return d




def _go_client(path, sockdir, **kw) -> PluginClient:
    env = {"PATH": "/usr/bin:/bin", "TMPDIR": str(sockdir), **kw.pop("env", {})}
    kw.setdefault("sha256", hashlib.sha256(Path(path).read_bytes()).hexdigest())
    return PluginClient([str(path)], CONFIG, env=env, skip_host_env=True, **kw)


def _stdio_thread(client):
    return next(t for t in client._threads if t.name == "goplugin-stdio")


# --- our client -> Go plugin -----------------------------------------------------------

def test_py_client_go_plugin_automtls(go_plugin, release, sockdir, caplog):
    caplog.set_level(logging.DEBUG)
    client = _go_client(go_plugin, sockdir)
    channel = client.connect()
    pid = client.proc.pid
    assert client.line.server_cert is not None and client.version == 5
    test = rpc.TestStub(channel)
    assert test.Double(pb.TestRequest(Input=21), timeout=10).Output == 42
    assert [r.Output for r in test.Stream(iter(pb.TestRequest(Input=i) for i in (1, 2, 3)), timeout=10)] == [2, 4, 6]
    assert rpc.PingPongStub(channel).Ping(pb.PingRequest(), timeout=10).msg == "version=1.0.0"
    big = 2 ** 31 - 1
    assert test.Double(pb.TestRequest(Input=big // 2), timeout=10).Output == (big // 2) * 2
    test.PrintKV(pb.PrintKVRequest(Key="log.error", ValueString="boom from go"), timeout=10)
    no_stdio = [r for r in caplog.records if "does not support GRPCStdio" in r.getMessage()]
    if release == "1.0.1":  # no GRPCStdio yet: a warning, not an error
        _stdio_thread(client).join(10)
        assert [r.levelno for r in no_stdio] == [logging.WARNING]
    else:
        assert no_stdio == []
    client.kill()
    assert client.returncode == 0 and not alive(pid)
    records = [r for r in caplog.records if r.name.startswith("shim.goplugin.plugin.")]
    assert any(r.levelno == logging.ERROR and r.getMessage().startswith("boom from go") for r in records)
    assert any(r.levelno == logging.INFO and r.getMessage().startswith("gopeer plugin starting") for r in records)
    assert list(sockdir.iterdir()) == []


def test_py_client_go_plugin_broker_host_dials_under_automtls(go_plugin, sockdir):
    with _go_client(go_plugin, sockdir) as client:
        sid = rpc.TestStub(client.channel).Bidirectional(pb.BidirectionalRequest(id=0), timeout=10).id
        with client.broker.dial(sid) as brokered:
            assert rpc.PingPongStub(brokered).Ping(pb.PingRequest(), timeout=10).msg == "brokered version=1.0.0"


class _HostPing(rpc.PingPongServicer):
    def Ping(self, request, context):
        return pb.PongResponse(msg="host nonce=py")


def _plugin_dials(client) -> str:
    host_id = client.broker.next_id()
    client.broker.accept_and_serve(host_id, lambda s: rpc.add_PingPongServicer_to_server(_HostPing(), s))
    relay = rpc.TestStub(client.channel).Bidirectional(pb.BidirectionalRequest(id=host_id), timeout=15).id
    with client.broker.dial(relay) as brokered:
        return rpc.PingPongStub(brokered).Ping(pb.PingRequest(), timeout=10).msg


def test_py_client_go_plugin_broker_plugin_dials_under_automtls(go_plugin, release, sockdir):
    """go-plugin 1.0.1's plugin side dials broker ids without ServerName (fixed in 1.4.4)."""
    with _go_client(go_plugin, sockdir) as client:
        if release == "1.0.1":
            with pytest.raises(grpc.RpcError) as ei:
                _plugin_dials(client)
            assert gopeer.BROKER_BUG_101 in ei.value.details()
        else:
            assert _plugin_dials(client) == "relayed host nonce=py via version=1.0.0"


def test_py_client_go_plugin_plaintext_broker_both_directions(go_plugin, sockdir):
    with _go_client(go_plugin, sockdir, auto_mtls=False) as client:
        assert client.line.server_cert is None
        assert _plugin_dials(client) == "relayed host nonce=py via version=1.0.0"


def test_py_client_go_plugin_exit_early(go_plugin, sockdir):
    client = _go_client(go_plugin, sockdir, env={"GOPEER_PLUGIN_EXIT_EARLY": "3"})
    with pytest.raises(StartError, match="plugin exited before we could connect") as ei:
        client.start()
    assert "exit status 3" in str(ei.value) and "exiting early on request" in str(ei.value)


def test_py_client_go_plugin_checksum(go_plugin, sockdir):
    with pytest.raises(ChecksumError, match="checksums did not match"):
        _go_client(go_plugin, sockdir, sha256="ab" * 32).start()


# --- Go host -> our server -------------------------------------------------------------

@pytest.fixture
def run(go_host, sockdir):
    def _run(plugin, *args, **kw):
        kw.setdefault("host_env", {"TMPDIR": str(sockdir)})
        kw.setdefault("env", {"PYPLUGIN_ROOT": str(ROOT), "PYPLUGIN_VERSION": "1.0.0"})
        kw.setdefault("timeout", 60)
        r = gopeer.run_host(go_host, plugin, *args, **kw)
        assert r.leftover_pids == [], r.describe()
        return r
    return _run


def test_go_host_py_plugin_calls(run, py_plugin, sockdir):
    r = run(py_plugin, "double", 21, -5)
    assert r.ok, r.describe()
    assert r.results == [42, -10]
    assert r.plugin_exited and not r.logs(message="plugin failed to exit gracefully")
    assert list(sockdir.iterdir()) == []
    r = run(py_plugin, "stream", 1, 2, 3)
    assert r.ok and r.results == [2, 4, 6], r.describe()
    r = run(py_plugin, "ping")
    assert r.ok and r.results == ["version=1.0.0"], r.describe()


def test_go_host_py_plugin_relogs_levels(run, py_plugin):
    r = run(py_plugin, "printkv", "log.error", "boom from python")
    assert r.ok, r.describe()
    line = r.logs(level="error", message="boom from python")
    assert line, r.describe()
    assert r.logs(level="info", message="python test plugin starting")


def test_go_host_py_plugin_broker_both_directions_under_automtls(run, py_plugin, sockdir):
    """Our plugin side dials the host's broker listener correctly (unlike go-plugin 1.0.1)."""
    r = run(py_plugin, "broker", "host-dials", "plugin-dials")
    assert r.ok, r.describe()
    hd, pd = r.results
    assert hd["ok"] and hd["msg"] == "brokered version=1.0.0"
    assert pd["ok"] and pd["msg"].startswith("relayed host nonce=") and pd["msg"].endswith(" via version=1.0.0")
    assert list(sockdir.iterdir()) == []


def test_go_host_py_plugin_plaintext(run, py_plugin, sockdir):
    r = run(py_plugin, "broker", "host-dials", "plugin-dials", automtls=False)
    assert r.ok, r.describe()
    assert list(sockdir.iterdir()) == []


def test_go_host_py_plugin_wrong_cookie(run, py_plugin):
    r = run(py_plugin, "ping", cookie_value="not-the-cookie")
    assert not r.ok
    # go-plugin 1.0.1 host: stdout EOF before a handshake line may read as an empty line
    assert "Unrecognized remote plugin message" in r.error or "exited before" in r.error
    assert r.logs(message="This binary is a plugin"), r.describe()


def test_go_host_py_plugin_hard_kill_leaves_no_process_or_socket(go_host, py_plugin, sockdir):
    marker = gopeer.new_marker("PYPLUGIN_MARK")
    env = [f"PYPLUGIN_ROOT={ROOT}", marker]
    try:
        with gopeer.start_host(go_host, py_plugin, "ping", env=env, kill="hard",
                               host_env={"TMPDIR": str(sockdir)}) as h:
            pid = h.wait_holding()
            assert gopeer.find_marked_processes(marker) == [pid]
            r = h.release()
        assert r.ok and r.plugin_exited and r.leftover_pids == [], r.describe()
        assert gopeer.find_marked_processes(marker) == []
        # the plugin's janitor removed its socket directories although it was SIGKILLed
        assert list(sockdir.iterdir()) == []
    finally:
        gopeer.kill_marked_processes(marker)


def test_go_host_py_plugin_bench(run, py_plugin, sockdir):
    r = run(py_plugin, "bench", iterations=3)
    assert r.ok, r.describe()
    for it in r.results:
        assert 0 < it["handshake_ms"] <= it["first_call_ms"] < 30000
    r = run(py_plugin, "unary-bench", iterations=300, concurrency=2, method="double")
    assert r.ok, r.describe()
    assert list(sockdir.iterdir()) == []
