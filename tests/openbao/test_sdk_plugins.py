"""The SDK plugins (shim/demo/sdkplugin: OpenBao's SDK, and HashiCorp's vault/sdk) on a real
OpenBao 2.7.2: registered directly, and through exec- and proxy-mode launchers, each built
multiplexed (ServeMultiplex) and not.

What is checked, for each: the catalog records the version the plugin reports (vX.Y.Z); two
mounts (database: two connections) answer and keep their data in OpenBao's Storage; the
framework's existence check picks create or update; and the number of plugin processes:
one for every mount of a multiplexed plugin (direct, exec: the plugin; proxy: one launcher
with one child), one per mount otherwise. Then v2 is signed in and a reload makes every
mount answer v2 with the data intact.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from shim.demo import gobuild, gomod
from tests.support import baoplugins as bp
from tests.support import openbao
from tests.support import sdkplugins as sdk
from tests.support.wait import wait_until

MOUNTS = ("a", "b")


@pytest.fixture(scope="module")
def plugins(tmp_path_factory):
    return sdk.build(tmp_path_factory)


def _name(prefix: str, kind: str, mux: bool) -> str:
    return f"{prefix}{kind}{'m' if mux else 'p'}"   # no name is a prefix of another


def _check_engines(engines: list[sdk.Engine], version: str) -> None:
    for e in engines:
        assert e.version()["version"] == version
        assert e.write("k", f"in {e.mount}")["operation"] == "create"    # the existence check said no
        assert e.write("k", f"in {e.mount}")["operation"] == "update"    # ... and now yes
        assert e.read("k") == {"value": f"in {e.mount}", "written_by": version, "served_by": version}
        assert e.keys() == ["k"]


def _expect_processes(server, name: str, mux: bool, mounts: int) -> list[int]:
    want = 1 if mux else mounts
    return wait_until(lambda: (p := sdk.plugin_processes(server, name)) and len(p) == want and p,
                      f"{want} plugin process(es) of {name}, seen {sdk.plugin_processes(server, name)}")


@pytest.mark.parametrize("mux", [False, True], ids=["plain", "mux"])
@pytest.mark.parametrize("kind", sdk.BACKEND_KINDS)
def test_backend_registered_directly(bao_dev, plugins, kind, mux):
    name = _name("d", kind, mux)
    command = f"{name}-1.0.0"
    bp.install(bao_dev, plugins[(kind, "1.0.0", mux)], command)
    bp.register_direct(bao_dev, sdk.plugin_type(kind), name, command)
    assert bp.plugin_info(bao_dev, sdk.plugin_type(kind), name, version="v1.0.0")["version"] == "v1.0.0"
    engines = [sdk.Engine(bao_dev, kind, name, f"{name}-{m}").enable() for m in MOUNTS]
    try:
        _check_engines(engines, "v1.0.0")
        pids = _expect_processes(bao_dev, name, mux, len(engines))
        assert {e.version()["pid"] for e in engines} == set(pids)
        assert all(e.version()["multiplexed"] is mux for e in engines)
        assert len({e.version().get("backend_uuid") for e in engines}) == len(engines) or kind == "vaultsdk"
        # Why HashiCorp's SDK works here: OpenBao sends each plugin variable under both names
        # (its SDK reads BAO_*, HashiCorp's VAULT_*), AutoMTLS included.
        env = set(Path(f"/proc/{pids[0]}/environ").read_bytes().split(b"\0"))
        assert {b"BAO_PLUGIN_AUTOMTLS_ENABLED=true", b"VAULT_PLUGIN_AUTOMTLS_ENABLED=true"} <= env
    finally:
        for e in engines:
            e.disable()
    wait_until(lambda: not sdk.plugin_processes(bao_dev, name), f"{name}'s processes to exit")


def test_the_periodic_function_runs_for_every_mount_of_a_multiplexed_process(bao_dev, plugins):
    """OpenBao's rollback manager calls each mount's PeriodicFunc once a minute (not
    configurable): each mount's backend in the one process counts its runs in its Storage."""
    name = "periodicm"
    bp.install(bao_dev, plugins[("secret", "1.0.0", True)], f"{name}-1.0.0")
    bp.register_direct(bao_dev, "secret", name, f"{name}-1.0.0")
    engines = [sdk.Engine(bao_dev, "secret", name, f"{name}-{m}").enable() for m in MOUNTS]
    try:
        for e in engines:
            got = wait_until(lambda: bp.read(bao_dev, e.path("periodic")), f"{e.mount}'s periodic function",
                             deadline=150)
            assert got["runs"] >= 1 and got["last_by"] == "v1.0.0"
            assert e.version()["periodic_runs"] >= 1
        assert len(sdk.plugin_processes(bao_dev, name)) == 1
    finally:
        for e in engines:
            e.disable()


@pytest.mark.parametrize("mux", [False, True], ids=["plain", "mux"])
def test_database_registered_directly(bao_dev, plugins, tmp_path, mux):
    name = _name("d", "database", mux)
    command = f"{name}-1.0.0"
    bp.install(bao_dev, plugins[("database", "1.0.0", mux)], command)
    bp.register_direct(bao_dev, "database", name, command)
    assert bp.plugin_info(bao_dev, "database", name, version="v1.0.0")["version"] == "v1.0.0"
    db = sdk.Database(bao_dev, f"{name}-db", tmp_path / "users")
    try:
        for conn in MOUNTS:
            db.connect(conn, name)
            creds = db.creds(conn)
            assert creds["data"]["username"].startswith(f"v1-0-0-{conn}-r-")
            assert db.user_file(conn, creds["data"]["username"]).exists()
        _expect_processes(bao_dev, name, mux, len(MOUNTS))
    finally:
        db.disable()
    wait_until(lambda: not sdk.plugin_processes(bao_dev, name), f"{name}'s processes to exit")


def _release(server, tmp_path, name: str, kind: str, mode: str, binary, version: str) -> openbao.Release:
    rel = openbao.Release(server, tmp_path / name, name, kind=sdk.plugin_type(kind),
                          extra_build=("--mode", mode))
    ship(rel, binary, version)
    return rel


def ship(rel: openbao.Release, binary, version: str) -> None:
    dest = rel.versions / f"{rel.name}-{version}"
    shutil.copyfile(binary, dest)
    dest.chmod(0o755)
    rel.add(dest, version)


@pytest.mark.parametrize("mux", [False, True], ids=["plain", "mux"])
@pytest.mark.parametrize("mode", ["exec", "proxy"])
@pytest.mark.parametrize("kind", sdk.BACKEND_KINDS)
def test_backend_through_the_launcher(bao_dev, plugins, tmp_path, kind, mode, mux):
    name = _name(f"l{mode[0]}", kind, mux)
    rel = _release(bao_dev, tmp_path, name, kind, mode, plugins[(kind, "1.0.0", mux)], "1.0.0")
    done = rel.register()
    assert done.returncode == 0, done.stdout + done.stderr
    engines = [sdk.Engine(bao_dev, kind, name, f"{name}-{m}").enable() for m in MOUNTS]
    try:
        _check_engines(engines, "v1.0.0")
        pids = _expect_processes(bao_dev, name, mux, len(engines))
        assert {e.version()["pid"] for e in engines} == set(pids)
        if mode == "proxy":   # one launcher per plugin process: the multiplexed one serves both mounts
            assert len({_parent(p) for p in pids}) == len(pids)
        ship(rel, plugins[(kind, "2.0.0", mux)], "2.0.0")
        bao_dev.bao("plugin", "reload", f"-plugin={name}")
        for e in engines:
            wait_until(lambda: e.version().get("version") == "v2.0.0", f"{e.mount} to answer v2.0.0")
            assert e.read("k") == {"value": f"in {e.mount}", "written_by": "v1.0.0", "served_by": "v2.0.0"}
        _expect_processes(bao_dev, name, mux, len(engines))
    finally:
        for e in engines:
            e.disable()
    wait_until(lambda: not sdk.plugin_processes(bao_dev, name), f"{name}'s processes to exit")


@pytest.mark.parametrize("mux", [False, True], ids=["plain", "mux"])
@pytest.mark.parametrize("mode", ["exec", "proxy"])
def test_database_through_the_launcher(bao_dev, plugins, tmp_path, mode, mux):
    name = _name(f"l{mode[0]}", "database", mux)
    rel = _release(bao_dev, tmp_path, name, "database", mode, plugins[("database", "1.0.0", mux)], "1.0.0")
    done = rel.register()
    assert done.returncode == 0, done.stdout + done.stderr
    db = sdk.Database(bao_dev, f"{name}-db", tmp_path / "users")
    try:
        for conn in MOUNTS:
            db.connect(conn, name)
            username = db.creds(conn)["data"]["username"]
            assert username.startswith(f"v1-0-0-{conn}-r-") and db.user_file(conn, username).exists()
        _expect_processes(bao_dev, name, mux, len(MOUNTS))
    finally:
        db.disable()
    wait_until(lambda: not sdk.plugin_processes(bao_dev, name), f"{name}'s processes to exit")


def _parent(pid: int) -> int:
    return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])


# --- the build helper ----------------------------------------------------------------------

def test_builds_are_cached_by_content_and_report_their_version(tmp_path_factory, tmp_path):
    cache = sdk.cache_dir(tmp_path_factory)
    a = gomod.build_sdk_plugin("secret", "1.0.0", tmp_path / "a", cache_dir=cache)
    b = gomod.build_sdk_plugin("secret", "1.0.0", tmp_path / "b", cache_dir=cache)
    c = gomod.build_sdk_plugin("secret", "2.0.0", tmp_path / "b", cache_dir=cache)
    m = gomod.build_sdk_plugin("secret", "1.0.0", tmp_path / "b", cache_dir=cache, multiplex=True)
    shas = [bp.sha256_file(p) for p in (a, b, c, m)]
    assert shas[0] == shas[1] and len(set(shas)) == 3
    with pytest.raises(ValueError, match="X.Y.Z"):
        gomod.build_sdk_plugin("secret", "v1.0.0", tmp_path)
    with pytest.raises(ValueError, match="kind"):
        gomod.build_sdk_plugin("kv", "1.0.0", tmp_path)


def test_a_build_from_a_read_only_copy_of_the_module_is_byte_identical(tmp_path_factory, tmp_path):
    """What `demo --prepare` does from an installed package: the module's files elsewhere,
    read-only; -trimpath and -buildvcs=false leave no trace of where they were."""
    copy = tmp_path / "site-packages" / "sdkplugin"
    shutil.copytree(gomod.SDKPLUGIN_DIR, copy, ignore=shutil.ignore_patterns("vaultsdk"))
    for path in sorted(copy.rglob("*"), reverse=True):
        path.chmod(0o555 if path.is_dir() else 0o444)
    copy.chmod(0o555)
    try:
        here = gomod.build(gomod.SDKPLUGIN_DIR, "./cmd/secret", dest_dir=tmp_path / "a", name="s",
                           ldflags="-X main.version=v1.0.0", cache_dir=tmp_path / "cache")
        there = gomod.build(copy, "./cmd/secret", dest_dir=tmp_path / "b", name="s",
                            ldflags="-X main.version=v1.0.0", cache_dir=tmp_path / "cache")
    finally:
        for path in [copy, *copy.rglob("*")]:
            path.chmod(0o755 if path.is_dir() else 0o644)
    assert bp.sha256_file(here) == bp.sha256_file(there)


def test_an_old_go_is_passed_over_and_named(tmp_path):
    need = "{}.{}.{}".format(*gomod.required_go(gomod.SDKPLUGIN_DIR))
    old = shutil.which("go", path="/usr/lib/go-1.19/bin")
    fake = tmp_path / "go"
    fake.write_text("#!/bin/sh\necho go1.19.8\n")
    fake.chmod(0o755)
    with pytest.raises(gobuild.GoUnavailable) as err:
        gomod.find_go(gomod.SDKPLUGIN_DIR, candidates=tuple(p for p in (old, str(fake)) if p))
    text = str(err.value)
    assert "\n" not in text
    assert f"need Go >= {need}" in text and "go1.19" in text and "https://go.dev/dl/" in text
    with pytest.raises(gobuild.GoUnavailable, match="no `go` is on PATH"):
        gomod.find_go(gomod.SDKPLUGIN_DIR, candidates=(str(tmp_path / "nothing"),))
    assert gomod.find_go(gomod.SDKPLUGIN_DIR).path   # this machine has one
