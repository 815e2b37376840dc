"""Proxy mode end to end: HashiCorp go-plugin as host, a launcher built with mode "proxy",
and a real plugin behind it (the Go peer, or a Python plugin on our server library). The
same scenarios run in exec mode where go-plugin allows it. Every test runs with the Go peers
of go-plugin 1.0.1 (Debian) and of the current release (tests/gopeer/go.mod).

The host behaves like Vault: sha256 of the registered launcher, AutoMTLS, the backend
cookie, stderr re-logged at each line's hclog level, Kill = Shutdown then SIGKILL.
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
from pathlib import Path

import pytest

from tests.support import gopeer
from tests.support import releases as R
from tests.goplugin.test_goplugin_e2e import PLUGIN_SOURCE

pytestmark = pytest.mark.interop

ROOT = Path(__file__).resolve().parents[2]
MODES = ["proxy", "exec", "native-proxy"]   # native-proxy: the native launcher decides, then runs the proxy


@pytest.fixture(scope="module", params=gopeer.RELEASES, ids=lambda r: f"go-plugin-{r}")
def peer(go_build, tmp_path_factory, request):
    py = tmp_path_factory.mktemp("pyplugin") / "py-plugin"
    py.write_text(f"#!{sys.executable}\n" + PLUGIN_SOURCE)
    py.chmod(0o755)
    release = request.param
    return {"host": go_build.host(release=release), "go": go_build.plugin("1.0.0", 2, release=release), "py": py,
            "release": release}


class Node:
    """A Vault node: plugin_directory with the launcher, the signed versions, a TMPDIR."""

    def __init__(self, peer, tmp: Path, mode: str, plugin: str = "go", name: str = "myplugin", native: bool = False):
        # "native-proxy": proxy mode from the native launcher (it selects, verifies and seals;
        # its Python part runs the verdict): the proxy tests run against it too
        native, mode = native or mode == "native-proxy", "proxy" if mode == "native-proxy" else mode
        self.peer, self.tmp, self.mode, self.native = peer, tmp, mode, native
        self.versions = tmp / "versions"
        self.versions.mkdir(mode=0o755)
        (tmp / "vault-plugins").mkdir()
        # TMPDIR for the launcher and the plugin: short, unix socket paths have 107 bytes
        self.sock = Path(tempfile.mkdtemp(prefix="px", dir="/tmp"))
        self.keys = R.new_keys()
        self.name = name
        pol = R.policy(self.versions, self.keys, name=name).replace(mode=mode)
        self.launcher = R.launcher(tmp / "vault-plugins", pol, name="myplugin-shim", native=native)
        self.sha256 = gopeer.sha256_file(self.launcher)
        self.binary = dst = self.versions / f"{name}-1.0.0"
        shutil.copy(peer[plugin], dst)
        os.chmod(dst, 0o755)
        R.release(self.keys, dst, name=name, version="1.0.0")
        self.env = {"PYPLUGIN_ROOT": str(ROOT), "PYPLUGIN_VERSION": "1.0.0"} if plugin == "py" else {}

    def host(self, *action, env=(), **kw):
        kw.setdefault("host_env", {"TMPDIR": str(self.sock)})
        kw.setdefault("timeout", 60)
        entries = [f"{k}={v}" for k, v in self.env.items()] + list(env)
        res = gopeer.run_host(self.peer["host"], self.launcher, *action, sha256=self.sha256, env=entries, **kw)
        assert res.leftover_pids == [], res.describe()
        return res

    def leftovers(self) -> list[str]:
        """What is left in TMPDIR. Only proxy mode promises nothing: go-plugin 1.0.1 itself
        leaves its broker sockets (and, when SIGKILLed, its plugin socket) behind."""
        if self.mode == "exec":
            return []
        return sorted(str(p.relative_to(self.sock)) for p in self.sock.rglob("*"))

    def close(self):
        shutil.rmtree(self.sock, ignore_errors=True)


@pytest.fixture(params=MODES)
def node(request, peer, tmp_path):
    n = Node(peer, tmp_path, request.param)
    yield n
    n.close()


@pytest.fixture
def pynode(peer, tmp_path):
    n = Node(peer, tmp_path, "proxy", plugin="py")
    yield n
    n.close()


def shim_started(res) -> dict:
    lines = res.logs(level="info", message="vault-plugin-shim: starting")
    assert len(lines) == 1, res.describe()
    return lines[0]


def test_unary_calls(node):
    res = node.host("double", "21", "-5")
    assert res.ok, res.describe()
    assert res.results == [42, -10]
    started = shim_started(res)
    assert started["version"] == "1.0.0" and started["exec_via"] == "memfd"
    assert started.get("mode", "exec") == node.mode
    assert started.get("selected_by") == ("native launcher" if node.native else None)
    assert res.plugin_exited and not res.logs(message="plugin failed to exit gracefully"), res.describe()
    assert node.leftovers() == []


def test_ping_answers_from_the_plugin_behind(node):
    res = node.host("ping")
    assert res.ok and res.results == ["version=1.0.0"], res.describe()


def test_bidirectional_streaming(node):
    res = node.host("stream", "1", "2", "3", "40")
    assert res.ok, res.describe()
    assert res.results == [2, 4, 6, 80]


def test_broker_host_dials_an_id_the_plugin_serves(node):
    res = node.host("broker", "host-dials")
    assert res.ok, res.describe()
    assert res.results[0]["msg"] == "brokered version=1.0.0"
    assert node.leftovers() == []


def test_broker_plugin_dials_an_id_the_host_serves(node):
    """Proxy mode talks plaintext to its child, so 1.0.1's plugin-side dial works through
    it; in exec mode the Go plugin dials Vault's mTLS listener itself and hits go-plugin
    1.0.1's bug (no ServerName under AutoMTLS), exactly as it does when run directly."""
    res = node.host("broker", "plugin-dials")
    if node.mode == "exec" and node.peer["release"] == "1.0.1":
        assert not res.ok and gopeer.BROKER_BUG_101 in res.error, res.describe()
        return
    assert res.ok, res.describe()
    msg = res.results[0]["msg"]
    assert msg.startswith("relayed host nonce=") and msg.endswith(" via version=1.0.0")
    assert node.leftovers() == []


def test_broker_plugin_dials_in_exec_mode_with_go_plugin_1_4_4s_fix(go_build, peer, tmp_path):
    """The same plugin built with go-plugin 1.4.4's broker fix (applied to a private copy of
    1.0.1): in exec mode its own dial of Vault's mTLS listener now works through the launcher
    (under either release's host)."""
    fixed = gopeer.build_plugin(tmp_path / "bin", "1.0.0", 2, broker_fix=True)
    (tmp_path / "node").mkdir()
    n = Node({**peer, "go": fixed}, tmp_path / "node", "exec")
    try:
        res = n.host("broker", "plugin-dials")
        assert res.ok, res.describe()
        assert res.results[0]["msg"].endswith(" via version=1.0.0")
    finally:
        n.close()


@pytest.mark.parametrize("kill", ["graceful", "hard"])
def test_kill_leaves_no_orphans_sockets_or_keys(node, kill):
    """hard = the host SIGKILLs the PID it started (the launcher) before Kill()."""
    marker = gopeer.new_marker()
    try:
        res = node.host("broker", "host-dials", env=[marker], kill=kill)
        assert res.ok, res.describe()
        assert gopeer.find_marked_processes(marker) == []
        assert node.leftovers() == []
    finally:
        gopeer.kill_marked_processes(marker)
    if node.mode == "proxy" and kill == "hard":
        assert res.logs(level="warn", message="cleaned up after the launcher ended"), res.describe()


def test_proxy_child_logs_keep_their_level(pynode):
    res = pynode.host("printkv", "log.error", "boom through the proxy")
    assert res.ok, res.describe()
    assert res.logs(level="error", message="boom through the proxy"), res.describe()
    assert res.logs(level="info", message="python test plugin starting"), res.describe()


def test_proxy_python_plugin_calls_and_broker(pynode):
    res = pynode.host("double", "21")
    assert res.ok and res.results == [42], res.describe()
    res = pynode.host("stream", "1", "2", "3")
    assert res.ok and res.results == [2, 4, 6], res.describe()
    res = pynode.host("broker", "host-dials", "plugin-dials")
    assert res.ok, res.describe()
    hd, pd = res.results
    assert hd["msg"] == "brokered version=1.0.0"
    assert pd["msg"].startswith("relayed host nonce=") and pd["msg"].endswith(" via version=1.0.0")
    assert pynode.leftovers() == []


def test_proxy_python_plugin_grandchild_dies_with_a_sigkilled_launcher(pynode):
    """The plugin starts a process of its own; a SIGKILL of the launcher takes both."""
    marker = gopeer.new_marker("PROXY_GRANDCHILD")
    key = marker.split("=")[0]
    entries = [f"{k}={v}" for k, v in pynode.env.items()] + [marker]
    try:
        with gopeer.start_host(pynode.peer["host"], pynode.launcher, "printkv", "spawn", key, env=entries,
                               sha256=pynode.sha256, kill="hard", host_env={"TMPDIR": str(pynode.sock)}) as h:
            launcher_pid = h.wait_holding()
            # the plugin and its own child carry Vault's environment (the marker); the
            # launcher's interpreter runs with the stub's fixed environment, so it does not
            alive = gopeer.find_marked_processes(marker)
            assert launcher_pid not in alive and len(alive) == 2, alive
            assert os.path.exists(f"/proc/{launcher_pid}")
            res = h.release()
        assert res.ok and res.leftover_pids == [], res.describe()
        assert gopeer.find_marked_processes(marker) == []
        assert not os.path.exists(f"/proc/{launcher_pid}")
        assert pynode.leftovers() == []
    finally:
        gopeer.kill_marked_processes(marker)
