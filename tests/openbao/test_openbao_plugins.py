"""Self-check of the demo OpenBao plugins (shim/demo/baoplugin) on a real OpenBao dev server.

Each plugin is registered directly (its own sha256 in the catalog, no launcher), mounted or
configured, and must answer as a real plugin does: its version through
logical.PluginVersion (the catalog records it) and its requests; the secrets engine and the
auth method through OpenBao's Storage, which they reach by dialling Setup's broker id under
AutoMTLS (what go-plugin 1.0.1 cannot do without the fix gobuild applies).
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from shim.demo import gobuild
from tests.support import baoplugins as bp
from tests.support import openbao

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def plugins(tmp_path_factory):
    return bp.build(tmp_path_factory, versions=("1.0.0",))


def _children_of(pid: int) -> set[int]:
    from shim.demo.bao import descendants
    return set(descendants(pid))


@pytest.mark.parametrize("kind", ["secret", "auth"])
def test_backend_plugin_registered_directly_answers_and_uses_storage(bao_dev, plugins, kind):
    name = f"self-{kind}"
    command = f"{name}-1.0.0"
    bp.install(bao_dev, plugins[(kind, "1.0.0")], command)
    sha = bp.register_direct(bao_dev, kind, name, command)
    # OpenBao ran the plugin at registration and stored the version it reported.
    info = bp.plugin_info(bao_dev, kind, name, version="v1.0.0")
    assert info["sha256"] == sha
    assert info["version"] == "v1.0.0"
    assert info["command"] == command

    mount = f"self-{kind}-m"
    bp.enable(bao_dev, kind, name, mount)
    ver = bp.read(bao_dev, bp.api_path(kind, mount, "version"))
    assert ver["version"] == "v1.0.0"
    assert ver["kind"] == kind
    assert ver["transport"] == "automtls"
    assert ver["storage"] == "ok"
    assert ver["pid"] in _children_of(bao_dev.pid)
    assert Path(ver["exe"]).name == command

    kv = bp.api_path(kind, mount, "kv/greeting")
    assert bp.read(bao_dev, kv) is None
    bp.write(bao_dev, kv, text="hello", n="1")
    got = bp.read(bao_dev, kv)
    assert got == {"text": "hello", "n": "1", "written_by": "v1.0.0", "served_by": "v1.0.0"}
    listed = json.loads(bao_dev.bao("list", "-format=json", bp.api_path(kind, mount, "kv/")).stdout)
    assert listed == ["greeting"]
    bao_dev.bao("delete", kv)
    assert bp.read(bao_dev, kv) is None

    # The broker connection is what Storage runs on: the plugin logged it, OpenBao re-logged it.
    openbao.wait_for_log(bao_dev, "setup: storage connected through the broker")


def test_auth_login_returns_a_token_that_works(bao_dev, plugins):
    bp.install(bao_dev, plugins[("auth", "1.0.0")], "login-auth-1.0.0")
    bp.register_direct(bao_dev, "auth", "login-auth", "login-auth-1.0.0")
    bp.enable(bao_dev, "auth", "login-auth", "login")

    # login is unauthenticated: no token in the request.
    env = {k: v for k, v in bao_dev.env().items() if k not in ("VAULT_TOKEN", "BAO_TOKEN")}
    env["HOME"] = str(bao_dev.root)
    res = bao_dev.bao("write", "-format=json", "auth/login/login", "name=alice", env=env)
    answer = json.loads(res.stdout)
    token = answer["auth"]["client_token"]
    assert token
    assert answer["auth"]["metadata"] == {"name": "alice", "issued_by": "v1.0.0"}
    assert answer["auth"]["policies"] == ["default"]
    assert answer["data"]["logins"] == 1

    looked = json.loads(bao_dev.bao("token", "lookup", "-format=json",
                                    env={**env, "VAULT_TOKEN": token, "BAO_TOKEN": token}).stdout)
    assert looked["data"]["meta"] == {"name": "alice", "issued_by": "v1.0.0"}
    assert looked["data"]["path"] == "auth/login/login"

    again = json.loads(bao_dev.bao("write", "-format=json", "auth/login/login", "name=alice",
                                   env=env).stdout)
    assert again["data"]["logins"] == 2  # counted in OpenBao's storage through the broker


def test_database_plugin_creates_and_revokes_users(bao_dev, plugins, tmp_path):
    bp.install(bao_dev, plugins[("database", "1.0.0")], "self-db-1.0.0")
    sha = bp.register_direct(bao_dev, "database", "self-db", "self-db-1.0.0")
    info = bp.plugin_info(bao_dev, "database", "self-db", version="v1.0.0")
    assert (info["sha256"], info["version"]) == (sha, "v1.0.0")

    users = tmp_path / "users"
    users.mkdir()
    bao_dev.bao("secrets", "enable", "-path=selfdb", "database")
    bao_dev.bao("write", "selfdb/config/conn", "plugin_name=self-db", f"directory={users}",
                "allowed_roles=reader")
    config = bp.read(bao_dev, "selfdb/config/conn")
    assert config["plugin_version"] == "v1.0.0"
    assert config["connection_details"] == {"directory": str(users)}
    bao_dev.bao("write", "selfdb/roles/reader", "db_name=conn",
                "creation_statements=GRANT read TO {{name}}", "default_ttl=1h")

    creds = json.loads(bao_dev.bao("read", "-format=json", "selfdb/creds/reader").stdout)
    username = creds["data"]["username"]
    assert username.startswith("v1-0-0-reader-")
    record = json.loads((users / f"{username}.json").read_text())
    assert record["created_by"] == "v1.0.0"
    assert record["role"] == "reader"
    assert record["statements"] == ["GRANT read TO {{name}}"]
    assert record["password_sha256"] == hashlib.sha256(creds["data"]["password"].encode()).hexdigest()
    assert record["expiration"]  # the engine passed the lease's end

    bao_dev.bao("lease", "revoke", "-sync", creds["lease_id"])
    assert not (users / f"{username}.json").exists()  # DeleteUser ran


def test_database_config_is_refused_without_a_directory(bao_dev, plugins):
    bp.install(bao_dev, plugins[("database", "1.0.0")], "bad-db-1.0.0")
    bp.register_direct(bao_dev, "database", "bad-db", "bad-db-1.0.0")
    bao_dev.bao("secrets", "enable", "-path=baddb", "database")
    res = bao_dev.bao("write", "baddb/config/conn", "plugin_name=bad-db", "directory=relative",
                      "allowed_roles=*", check=False)
    assert res.returncode != 0
    assert 'connection parameter "directory" must be an absolute path' in res.stderr


def test_without_the_broker_fix_storage_fails_as_go_plugin_101_does(bao_dev, tmp_path_factory):
    """The reason gobuild patches go-plugin: unpatched, Setup's broker dial fails under AutoMTLS."""
    unfixed = bp.build(tmp_path_factory, kinds=("secret",), versions=("1.0.0",),
                       broker_fix=False)[("secret", "1.0.0")]
    bp.install(bao_dev, unfixed, "unfixed-secret-1.0.0")
    bp.register_direct(bao_dev, "secret", "unfixed-secret", "unfixed-secret-1.0.0")
    bp.enable(bao_dev, "secret", "unfixed-secret", "unfixed")  # the dial is lazy: this works
    ver = bp.read(bao_dev, "unfixed/version")
    assert ver["version"] == "v1.0.0"
    assert "certificate is valid for localhost, not unused" in ver["storage"]
    res = bao_dev.bao("write", "unfixed/kv/a", "x=1", check=False)
    assert res.returncode != 0
    assert "certificate is valid for localhost, not unused" in res.stderr


def test_generated_go_code_is_fresh(tmp_path):
    gen = ROOT / "shim" / "demo" / "baoplugin" / "gen_protos.py"
    proc = subprocess.run([sys.executable, str(gen), "--out", str(tmp_path)],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    for pkg in ("pb", "logicalpb", "dbpb"):
        for fresh in (tmp_path / pkg).glob("*.pb.go"):
            committed = gobuild.BAOPLUGIN_DIR / pkg / fresh.name
            assert committed.read_text() == fresh.read_text(), (
                f"{committed} is stale: run python {gen.relative_to(ROOT)}")
    assert sorted(p.name for p in tmp_path.rglob("*.pb.go")) == \
        sorted(p.name for p in gobuild.BAOPLUGIN_DIR.rglob("*.pb.go"))


def test_build_is_cached_by_content(tmp_path_factory, tmp_path):
    cache = bp.cache_dir(tmp_path_factory)
    first = gobuild.build_bao_plugin("secret", "1.0.0", tmp_path / "a", cache_dir=cache)
    second = gobuild.build_bao_plugin("secret", "1.0.0", tmp_path / "b", cache_dir=cache)
    other = gobuild.build_bao_plugin("secret", "2.0.0", tmp_path / "b", cache_dir=cache)
    assert bp.sha256_file(first) == bp.sha256_file(second) != bp.sha256_file(other)
    assert os.access(first, os.X_OK)
    with pytest.raises(ValueError, match="X.Y.Z"):
        gobuild.build_bao_plugin("secret", "v1.0.0", tmp_path)
    with pytest.raises(ValueError, match="kind"):
        gobuild.build_bao_plugin("kv", "1.0.0", tmp_path)
