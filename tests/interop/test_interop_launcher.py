"""Exec mode against HashiCorp's go-plugin as host AND plugin: Debian's 1.0.1, and the
current release (tests/gopeer/go.mod).

The host behaves like Vault: SecureConfig sha256 of the registered file, AutoMTLS, gRPC,
the backend magic cookie, stderr re-logged at each line's hclog level. The launcher file
and its sha256 never change while the plugins directory moves from v1 to v2.
"""

import os
import shutil

import pytest

from tests.support import gopeer
from tests.support import releases as R

pytestmark = pytest.mark.interop


@pytest.fixture(scope="module", params=gopeer.RELEASES, ids=lambda r: f"go-plugin-{r}")
def peer(go_build, tmp_path_factory, request):
    tmp = tmp_path_factory.mktemp("vault")
    release = request.param
    return {"host": go_build.host(release=release), "v0.9": go_build.plugin("0.9.0", 1, release=release),
            "v1": go_build.plugin("1.0.0", 2, release=release), "v2": go_build.plugin("2.0.0", 3, release=release),
            "tmp": tmp}


class Node:
    """One Vault node: a plugin_directory with the launcher, and the signed versions dir."""

    def __init__(self, peer, tmp):
        self.peer, self.tmp = peer, tmp
        self.versions = tmp / "versions"
        self.versions.mkdir(mode=0o755)
        (tmp / "vault-plugins").mkdir()
        (tmp / "sock").mkdir()
        self.keys = R.new_keys()
        self.launcher = R.launcher(tmp / "vault-plugins", R.policy(self.versions, self.keys, min_version="1.0.0"),
                                   name="myplugin-shim")
        self.sha256 = gopeer.sha256_file(self.launcher)  # what `vault plugin register` stored, once

    def ship(self, version_key, version, keys=None):
        for f in self.versions.iterdir():
            f.unlink()
        dst = self.versions / f"myplugin-{version}"
        shutil.copy(self.peer[version_key], dst)
        os.chmod(dst, 0o755)
        R.release(keys or self.keys, dst, version=version)
        return dst

    def host(self, *action, **kw):
        kw.setdefault("host_env", {"TMPDIR": str(self.tmp / "sock")})
        return gopeer.run_host(self.peer["host"], self.launcher, *action, sha256=self.sha256, **kw)


@pytest.fixture
def node(peer, tmp_path):
    return Node(peer, tmp_path)


def shim_errors(res):
    return [ln for ln in res.logs(level="error") if "vault-plugin-shim" in str(ln.get("@message"))]


def test_same_launcher_serves_v1_then_v2(node):
    node.ship("v1", "1.0.0")
    r1 = node.host("double", "5")
    assert r1.ok, r1.describe()
    assert r1.results == [10]
    assert node.host("ping").results == ["version=1.0.0"]
    started = [ln for ln in r1.logs(level="info") if "vault-plugin-shim: starting" in str(ln.get("@message"))]
    assert started and started[0]["version"] == "1.0.0"

    node.ship("v2", "2.0.0")  # the image rolls; the catalog entry does not change
    r2 = node.host("double", "5")
    assert r2.ok, r2.describe()
    assert r2.results == [15]
    assert node.host("ping").results == ["version=2.0.0"]
    assert gopeer.sha256_file(node.launcher) == node.sha256


def test_streaming_through_exec_mode(node):
    node.ship("v2", "2.0.0")
    res = node.host("stream", "1", "2", "3")
    assert res.ok and res.results == [3, 6, 9], res.describe()


def test_registering_the_plugin_itself_breaks_on_upgrade(node, peer):
    """The problem the shim solves: a catalog sha256 of v1 refuses v2's binary."""
    v2 = node.ship("v2", "2.0.0")
    res = gopeer.run_host(peer["host"], v2, "ping", sha256=gopeer.sha256_file(peer["v1"]),
                          host_env={"TMPDIR": str(node.tmp / "sock")})
    assert not res.ok and "checksums did not match" in res.error


@pytest.mark.parametrize("case", ["tampered", "untrusted-key", "below-floor"])
def test_refusals_reach_the_hosts_log_at_error_level(node, case):
    if case == "tampered":
        path = node.ship("v2", "2.0.0")
        with open(path, "r+b") as fh:
            fh.seek(-1, os.SEEK_END)
            last = fh.read(1)
            fh.seek(-1, os.SEEK_END)
            fh.write(bytes([last[0] ^ 1]))
        expect = "sha256 is"
    elif case == "untrusted-key":
        node.ship("v2", "2.0.0", keys=R.new_keys())
        expect = "which is not trusted"
    else:
        node.ship("v0.9", "0.9.0")
        expect = "below the minimum version 1.0.0"
    res = node.host("ping")
    assert not res.ok, res.describe()
    # go-plugin 1.0.1 reads the early exit as an empty handshake line; newer ones say "exited"
    assert ("plugin exited before we could connect" in res.error
            or "Unrecognized remote plugin message: \n" in res.error), res.error
    errors = shim_errors(res)
    assert any(expect in ln.get("reason", "") for ln in errors), res.describe()
    assert any(ln.get("@message", "").startswith("vault-plugin-shim: refusing to start") for ln in errors)


@pytest.mark.parametrize("kill", ["graceful", "hard"])
def test_no_orphans_after_the_host_kills_the_plugin(node, kill):
    node.ship("v1", "1.0.0")
    marker = gopeer.new_marker()
    res = node.host("ping", env=[marker], kill=kill)
    assert res.ok, res.describe()
    assert res.pid, "the host reports the pid it started"
    assert gopeer.find_marked_processes(marker) == []
    assert res.leftover_pids == []
