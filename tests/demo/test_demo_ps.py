"""The report's PS, answered on a real 3-node OpenBao Raft cluster: when does a request to a
node on the OLD plugin succeed, and when does it fail with `checksums did not match`?

Setting of every test: all nodes run the old image (the v1.0.0 binary as `demo-kv`); a
plugin is registered by its sha256 and mounted; then its catalog entry is rewritten with the
NEW binary's sha256, as the baseline's init container does. Each test has its own plugin
name and mount, so the tests do not disturb each other; they share one cluster.

What decides it: only a *launch* checks the sha256. A plugin process that was started before
the catalog changed keeps serving, reads and writes, on the active node and on standbys. Any
event that makes a node start the plugin again after the change fails on an old image:
a crash of the process (relaunched by the next request), `plugin reload`, and mount set-up,
which a node does when it becomes active and again when it steps back to standby.
"""

from __future__ import annotations

import itertools
import os
import signal
from pathlib import Path

import pytest

from shim.demo import cluster as cl
from shim.demo import nodelog
from tests.support import baoplugins, openbao
from tests.support.wait import wait_until

ENTRY = "v1.0.0"
POLICY = 'path "+/*" { capabilities = ["create", "read", "update", "delete", "list"] }'
_names = itertools.count(1)


class Stage:
    def __init__(self, c: cl.Cluster, old_sha: str, new_sha: str):
        self.c, self.old_sha, self.new_sha = c, old_sha, new_sha
        self.token = ""

    def admin(self, method, path, body=None):
        a = self.c.wait_active(60)
        status, doc = self.c.call(a, method, path, body, timeout=30)
        assert status in (200, 204), (method, path, status, doc)
        return doc

    def req(self, node: int, method: str, path: str, body=None) -> tuple[int, dict]:
        return cl.api(self.c.nodes[node].server.addr, method, path, body, self.token, timeout=30)

    def fresh(self) -> str:
        """A new plugin name, registered with the old binary's sha256 and mounted at <name>/;
        returns once every node serves it."""
        name = f"ps{next(_names)}"
        self.admin("POST", f"sys/plugins/catalog/secret/{name}",
                   {"sha256": self.old_sha, "command": "demo-kv", "version": ENTRY})
        self.admin("POST", f"sys/mounts/{name}", {"type": name, "config": {"plugin_version": ENTRY}})
        self.admin("PUT", f"{name}/kv/k", {"n": 0})
        for i in range(len(self.c.nodes)):
            wait_until(lambda: self.req(i, "GET", f"{name}/kv/k")[0] == 200,
                       f"{self.c.nodes[i].name} to serve {name}/", deadline=60)
        return name

    def rewrite(self, name: str) -> None:
        """The baseline's init container: the entry now names the new binary."""
        self.admin("POST", f"sys/plugins/catalog/secret/{name}",
                   {"sha256": self.new_sha, "command": "demo-kv", "version": ENTRY})
        entry = self.admin("GET", f"sys/plugins/catalog/secret/{name}/{ENTRY}")["data"]
        assert entry["sha256"] == self.new_sha
        self.c.wait_applied()  # standbys too: each reads the catalog from its own copy

    def pid(self, node: int, name: str) -> int:
        status, doc = self.req(node, "GET", f"{name}/version")
        assert status == 200, doc
        return doc["data"]["pid"]

    def crash(self, node: int, name: str) -> list[str]:
        """SIGKILL the node's plugin process for ``name``; returns the answers to reads sent
        until the host has noticed (they meet the dead socket: `rpc error: code = Unavailable`,
        no relaunch is tried). The first answer that is not that is left for the caller."""
        server = self.c.nodes[node].server
        offset = server.log_size()
        os.kill(self.pid(node, name), signal.SIGKILL)
        openbao.wait_for_log(server, "plugin process exited", offset=offset, timeout=30)
        transient = []

        def noticed() -> bool:
            error = _error(self.req(node, "GET", f"{name}/kv/k")[1])
            if "code = Unavailable" in error:
                transient.append(error)
                return False
            return True

        wait_until(noticed, "the host to notice its plugin's crash", deadline=15)
        return transient

    def active(self) -> int:
        return self.c.wait_active(60)

    def standbys(self) -> list[int]:
        a = self.active()
        return [n.index for n in self.c.nodes if n.index != a and n.up]


@pytest.fixture(scope="module")
def stage(tmp_path_factory):
    openbao.require_bao()
    bins = baoplugins.build(tmp_path_factory, kinds=("secret",))
    old, new = bins[("secret", "1.0.0")], bins[("secret", "2.0.0")]
    image = tmp_path_factory.mktemp("old-image")
    (image / "demo-kv").write_bytes(old.read_bytes())
    (image / "demo-kv").chmod(0o755)
    root = Path(tmp_path_factory.mktemp("ps-cluster"))
    c = cl.Cluster(root / "c", {"old": image}, log_level="debug")  # relaunches are logged at debug
    try:
        c.start("old")
        s = Stage(c, baoplugins.sha256_file(old), baoplugins.sha256_file(new))
        s.admin("PUT", "sys/policies/acl/app", {"policy": POLICY})
        s.token = s.admin("POST", "auth/token/create", {"policies": ["app"], "ttl": "1h"})["auth"]["client_token"]
        yield s
    finally:
        c.close()
    left = c.leftovers()
    assert left == [], f"processes left by the cluster: {left}"


def _error(doc: dict) -> str:
    return "; ".join(doc.get("errors") or [])


def test_plugins_start_at_mount_setup_on_every_node(stage):
    """No lazy start on OpenBao 2.7 (plugin protocol 5): once the mount exists, every node,
    standbys included, runs its own plugin process from its own plugin_directory."""
    name = stage.fresh()
    pids = {i: stage.pid(i, name) for i in range(3)}
    assert len(set(pids.values())) == 3, pids
    for i, pid in pids.items():
        environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
        assert f"TMPDIR={stage.c.nodes[i].server.tmpdir}".encode() in environ, "each node runs its own"
        assert os.readlink(f"/proc/{pid}/exe") == str(stage.c.nodes[i].plugin_dir / "demo-kv")


def test_a_running_plugin_is_not_checked_again(stage):
    """After the catalog names the new binary, processes started before keep serving: reads
    and writes, on the active node and on standbys, with the same PIDs."""
    name = stage.fresh()
    before = {i: stage.pid(i, name) for i in range(3)}
    stage.rewrite(name)
    for i in range(3):
        for _ in range(5):
            status, doc = stage.req(i, "PUT", f"{name}/kv/k", {"n": 1})
            assert status == 200 and doc["data"]["written_by"] == ENTRY, (i, doc)
            status, doc = stage.req(i, "GET", f"{name}/kv/k")
            assert status == 200 and doc["data"]["served_by"] == ENTRY, (i, doc)
    assert {i: stage.pid(i, name) for i in range(3)} == before


def test_a_crashed_plugin_cannot_be_started_again_on_the_active_node(stage):
    """The next request relaunches a crashed plugin (reloadBackend) and that launch checks the
    new sha256: 500 `checksums did not match` for reads and writes, and for every request
    after (each one tries the launch again). On 2.7.2 a write's first plugin call is a
    HandleRequest (resolve-path), so the answer is the bare checksum error and the log has
    no `failed to run existence check`."""
    name = stage.fresh()
    a = stage.active()
    stage.rewrite(name)
    server = stage.c.nodes[a].server
    offset = server.log_size()
    stage.crash(a, name)  # until the host has seen the exit, requests meet a dead socket
    answers = [stage.req(a, m, f"{name}/kv/k", b) for m, b in [("PUT", {"n": 2}), ("GET", None)] * 3]
    assert [s for s, _ in answers] == [500] * 6, answers
    assert {_error(d) for _, d in answers} == {"checksums did not match"}
    log = server.log_text(offset)
    assert log.count("reloading plugin backend") >= 7  # the probe in crash() and the six
    assert "failed to run existence check" not in log


def test_a_crashed_plugin_on_a_standby_fails_reads_and_writes_there(stage):
    """Standbys serve reads from their own plugin and run writes through it before
    forwarding them; a standby whose plugin must be started again fails both, while the
    active node (its process untouched) still serves."""
    name = stage.fresh()
    a, sb = stage.active(), stage.standbys()[0]
    stage.rewrite(name)
    stage.crash(sb, name)
    for method, body in (("GET", None), ("PUT", {"n": 3})):
        status, doc = stage.req(sb, method, f"{name}/kv/k", body)
        assert (status, _error(doc)) == (500, "checksums did not match"), (method, doc)
    status, doc = stage.req(a, "PUT", f"{name}/kv/k", {"n": 4})
    assert status == 200 and doc["data"]["written_by"] == ENTRY


def test_plugin_reload_fails_and_leaves_the_mount_without_a_backend(stage):
    name = stage.fresh()
    a = stage.active()
    stage.rewrite(name)
    status, doc = cl.api(stage.c.nodes[a].server.addr, "PUT", "sys/plugins/reload/backend", {"plugin": name},
                         stage.c.token, timeout=30)
    assert status == 400 and "invalid backend version" in _error(doc) and "checksums did not match" in _error(doc), doc
    for method, body in (("GET", None), ("PUT", {"n": 5})):
        status, doc = stage.req(a, method, f"{name}/kv/k", body)
        assert status == 404 and "backend is nil" in _error(doc), doc


def test_a_node_that_becomes_active_sets_its_mounts_up_again_and_fails(stage):
    """Last (it moves leadership): after a step-down, the new active node and the node that
    stepped down both set their mounts up again; on the old image that launch fails, the
    mount has no backend, and every request there answers 404 `backend is nil` (the cause is
    only in the node's log). The third node, untouched, still reads with its old process,
    but its writes are forwarded to the broken active node and fail."""
    name = stage.fresh()
    old_active = stage.active()
    third = [i for i in stage.standbys()][0]
    third_pid = stage.pid(third, name)
    stage.rewrite(name)
    offsets = {i: stage.c.nodes[i].server.log_size() for i in range(3)}
    stage.c.wait_cooldowns()
    assert stage.c.step_down(old_active)
    new_active = stage.c.wait_active(60, exclude={old_active})
    if new_active == third:  # Raft chose the node we meant to keep untouched: swap the roles
        third = [i for i in range(3) if i not in (old_active, new_active)][0]
        third_pid = stage.pid(third, name)
    for node in (new_active, old_active):
        server = stage.c.nodes[node].server
        openbao.wait_for_log(server, "failed to create mount entry", offset=offsets[node], timeout=30)
        failed = [e for e in nodelog.log_events(server.log_text(offsets[node])) if e[1] == "mount-failed"]
        assert failed and "checksums did not match" in failed[-1][2], failed
        for method, body in (("GET", None), ("PUT", {"n": 6})):
            status, doc = stage.req(node, method, f"{name}/kv/k", body)
            assert status == 404 and "backend is nil" in _error(doc), (stage.c.nodes[node].name, method, doc)
    status, doc = stage.req(third, "GET", f"{name}/kv/k")
    assert status == 200 and doc["data"]["served_by"] == ENTRY
    assert stage.pid(third, name) == third_pid
    status, doc = stage.req(third, "PUT", f"{name}/kv/k", {"n": 7})
    assert status == 404 and "backend is nil" in _error(doc), doc



def test_a_standby_restarted_on_the_old_image_panics_at_the_next_write_and_the_kubelet_restarts_it(stage):
    """The crash a rollout meets. A standby on the old image restarted after the
    catalog change sets its mount up without a backend; the next write to that mount, applied
    through Raft on the standby, makes OpenBao 2.7.2 panic (`Router.Invalidate`). The cluster's
    kubelet records the crash with the panic line and restarts the node; it serves again."""
    name = stage.fresh()
    stage.rewrite(name)
    c = stage.c
    node = stage.standbys()[0]
    c.stop(node)
    c.start_node(node)
    assert c.wait_ready(node, deadline=90)
    server = c.nodes[node].server
    openbao.wait_for_log(server, "failed to create mount entry", timeout=30)
    before = len(c.events)
    crashes = c.nodes[node].crashes
    a = stage.active()
    n = itertools.count(100)

    def crashed() -> bool:
        cl.api(c.nodes[a].server.addr, "PUT", f"{name}/kv/k", {"n": next(n)}, stage.token, timeout=10)
        return c.nodes[node].crashes > crashes

    wait_until(crashed, f"{c.nodes[node].name} to crash on a write to {name}/", deadline=60, poll=0.5)
    crash = next(e for e in c.events[before:] if e.kind == "crash" and e.node == node)
    assert "panic: runtime error" in crash.detail, crash
    assert "routing.(*Router).Invalidate" in server.log_text(), server.log_tail(40)
    stage.admin("DELETE", f"sys/mounts/{name}")  # no more writes there: the restarted node stays up
    assert c.wait_ready(node, deadline=90 + cl.restart_delay(c.nodes[node].crashes))
    restarts = [e for e in c.events[before:] if e.kind == "start" and e.node == node and "kubelet" in e.detail]
    assert restarts and restarts[0].data["backoff"] == cl.restart_delay(crashes + 1), restarts
