"""`register`: the pure parts (plan, dry run, validation) and the faults a real server cannot be
made to produce (a 5xx, a dropped connection), against the Python fake of Vault's API.

Everything a real server can show (success, version mismatch, 403, 404, sealed, pins,
mounts, the launcher not running) is tested against OpenBao in
tests/openbao/test_openbao_ops_register.py.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import socket

import pytest

from shim.ops.cli import add_register_parser
from shim.ops.errors import (
    LauncherFileError,
    PluginVersionMismatchError,
    RegistrationError,
    VaultConfigError,
    VaultServerError,
    VaultUnreachableError,
)
from shim.ops.register import apply
from shim.ops.registration import PROBE_VERSION, Registration, plan, render_dry_run, sha256_file
from shim.ops.vaultenv import ServerInfo, VaultEnv, server_info_from
from tests.support.fakevault import ROOT_TOKEN, FakeVault

LAUNCHER_BYTES = b"#!/usr/bin/python3 -I\nprint('launcher')\n"


@pytest.fixture
def clean_env(monkeypatch, tmp_path):
    """No Vault/OpenBao/proxy variables from the developer's shell; HOME is empty."""
    import os

    for key in list(os.environ):
        if key.startswith(("VAULT_", "BAO_")) or key.lower().endswith("_proxy"):
            monkeypatch.delenv(key)
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    return home


@pytest.fixture
def vault(clean_env, monkeypatch):
    with FakeVault() as fake:
        monkeypatch.setenv("VAULT_ADDR", fake.url)
        monkeypatch.setenv("VAULT_TOKEN", ROOT_TOKEN)
        yield fake


@pytest.fixture
def launcher(tmp_path):
    path = tmp_path / "vault-plugin-shim-launcher"
    path.write_bytes(LAUNCHER_BYTES)
    return path


def sha(data: bytes = LAUNCHER_BYTES) -> str:
    return hashlib.sha256(data).hexdigest()


def reg(**kw) -> Registration:
    base = dict(plugin_type="secret", name="myplugin", command="vault-plugin-shim-launcher", sha256=sha())
    base.update(kw)
    return Registration(**base)


def client():
    return VaultEnv.from_environ().client()


def cli(*argv: str) -> tuple[int, str, str]:
    parser = argparse.ArgumentParser(prog="vault-plugin-shim")
    add_register_parser(parser.add_subparsers(dest="cmd", required=True))
    ns = parser.parse_args(list(argv))
    out, err = io.StringIO(), io.StringIO()
    code = ns.func(ns, stdout=out, stderr=err)
    return code, out.getvalue(), err.getvalue()


# --- what only the fake can do -------------------------------------------------------------

def test_5xx_from_the_server_is_a_server_error_pointing_at_its_log(vault):
    """A real server cannot be made to fail with a 500 on demand; the fake can."""
    vault.inject_error("PUT", "sys/plugins/catalog/secret/myplugin", 500, "internal error")
    with pytest.raises(VaultServerError) as info:
        apply(client(), reg())
    assert "HTTP 500" in info.value.reason and "server log" in info.value.fix
    assert vault.catalog == {}


def test_dropped_connection_is_unreachable(clean_env, monkeypatch):
    """A server that accepts the connection and closes it without answering (no real server
    does this on purpose)."""
    import threading

    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen()
    stop = threading.Event()

    def drop():
        while not stop.is_set():
            try:
                conn, _ = listener.accept()
            except OSError:
                return
            conn.recv(65536)
            conn.close()

    thread = threading.Thread(target=drop, daemon=True)
    thread.start()
    try:
        monkeypatch.setenv("VAULT_ADDR", f"http://127.0.0.1:{listener.getsockname()[1]}")
        monkeypatch.setenv("VAULT_TOKEN", ROOT_TOKEN)
        with pytest.raises(VaultUnreachableError) as info:
            apply(client(), reg())
        assert "no answer" in info.value.reason and "VAULT_ADDR" in info.value.fix
    finally:
        stop.set()
        listener.close()
        thread.join(5)


def test_unreachable_vault(clean_env, monkeypatch):
    with socket.socket() as s:           # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    monkeypatch.setenv("VAULT_ADDR", f"http://127.0.0.1:{port}")
    monkeypatch.setenv("VAULT_TOKEN", ROOT_TOKEN)
    with pytest.raises(VaultUnreachableError) as info:
        apply(client(), reg())
    assert "VAULT_ADDR" in info.value.fix


def test_dry_run_without_version_marks_the_reported_version():
    text = render_dry_run(reg(pin=True, mount_path="p"))
    assert "vault write sys/plugins/pins/secret/myplugin 'version=<reported version>'" in text
    assert "-plugin-version=<reported version>" in text
    assert "OpenBao has no pins" in text


def test_plan_on_openbao_tunes_instead_of_pinning():
    calls = plan(reg(pin=True, version="v1.2.0"), ServerInfo("openbao", "2.7.2"))
    assert not any(c.path.startswith("sys/plugins/pins") for c in calls)
    [tune] = [c for c in calls if c.path.endswith("/tune")]
    assert tune.body == {"plugin_version": "v1.2.0"} and "secrets tune -plugin-version=v1.2.0" in tune.cli


def test_plan_refusals_come_before_the_write():
    steps = [(c.method, c.path, c.query) for c in plan(reg(version="v1.2.0", mount_path="m"))]
    catalog = "sys/plugins/catalog/secret/myplugin"
    trial = "sys/mounts/vault-plugin-shim-probe-myplugin"
    assert steps == [("GET", "sys/mounts", ""), ("PUT", catalog, ""),
                     ("POST", trial, ""), ("DELETE", trial, ""),
                     ("DELETE", catalog, f"version={PROBE_VERSION}"),
                     ("GET", "sys/plugins/catalog", ""), ("PUT", catalog, ""), ("POST", "sys/mounts/m", "")]


@pytest.mark.parametrize("body, product, pins", [
    ({"version": "1.15.2", "build_date": "2023-11-06T11:33:28Z"}, "vault", False),
    ({"version": "1.16.1", "build_date": "2024-04-03T12:35:53Z"}, "vault", True),
    ({"version": "1.17.0+ent", "enterprise": True}, "vault", True),
    ({"version": "2.7.2", "commit_date": "2026-10-26T20:32:27Z"}, "openbao", False),
    ({"data": {"version": "2.0.0"}}, "openbao", False),
    ({}, "unknown", None),
])
def test_server_info_from_seal_status(body, product, pins):
    info = server_info_from(body)
    assert info.product == product and info.has_plugin_pins is pins


def test_bare_reported_version_mismatch_does_not_give_circular_advice():
    err = PluginVersionMismatchError("p", "1.0.0", "v1.0.0")
    assert "must report vX.Y.Z" in err.fix and "--version 1.0.0" not in err.fix
    err = PluginVersionMismatchError("p", "v1.2.3", "v1.3.0")
    assert "--version v1.2.3" in err.fix


def test_database_plugins_are_not_mounted():
    with pytest.raises(RegistrationError) as info:
        reg(plugin_type="database", mount_path="db")
    assert "database/config/" in info.value.fix and "plugin_name=" in info.value.fix


# --- environment ---------------------------------------------------------------------------

def test_no_token_anywhere_is_a_config_error(clean_env, monkeypatch):
    monkeypatch.setenv("VAULT_ADDR", "http://127.0.0.1:1")
    with pytest.raises(VaultConfigError) as info:
        client()
    assert "vault login" in info.value.fix


# --- dry run -------------------------------------------------------------------------------

def test_dry_run_prints_cli_and_http_and_sends_nothing(vault, launcher, monkeypatch):
    monkeypatch.setenv("VAULT_NAMESPACE", "team-a")
    code, out, err = cli("register", "secret", "myplugin", "--launcher", str(launcher),
                         "--arg=--policy", "--arg=/vault/shim/policy.json", "--env", "SHIM_LOG=info",
                         "--version", "v1.2.3", "--pin", "--mount", "myplugin", "--dry-run")
    assert code == 0, err
    assert vault.requests == []
    lines = out.splitlines()
    assert ("vault plugin register -sha256=" + sha() + " -command=vault-plugin-shim-launcher "
            "-args=--policy -args=/vault/shim/policy.json -env=SHIM_LOG=info -version=v1.2.3 "
            "secret myplugin") in lines
    assert "PUT /v1/sys/plugins/catalog/secret/myplugin" in lines
    puts = [json.loads(lines[i + 1]) for i, x in enumerate(lines) if x == "PUT /v1/sys/plugins/catalog/secret/myplugin"]
    common = {"sha256": sha(), "command": "vault-plugin-shim-launcher",
              "args": ["--policy", "/vault/shim/policy.json"], "env": ["SHIM_LOG=info"]}
    assert puts == [{**common, "version": PROBE_VERSION}, {**common, "version": "v1.2.3"}]   # probe, write
    assert "GET /v1/sys/plugins/catalog" in lines
    assert "vault write sys/plugins/pins/secret/myplugin version=v1.2.3" in lines
    assert "POST /v1/sys/plugins/pins/secret/myplugin" in lines
    assert "vault secrets list -format=json" in lines and "GET /v1/sys/mounts" in lines
    assert "vault secrets enable -path=myplugin -plugin-version=v1.2.3 myplugin" in lines
    assert "POST /v1/sys/mounts/myplugin" in lines
    assert any("X-Vault-Namespace: team-a" in line for line in lines)
    assert ROOT_TOKEN not in out


def test_dry_run_for_auth_and_database(clean_env):
    auth = render_dry_run(reg(plugin_type="auth", name="a", mount_path="a"))
    assert "vault auth enable -path=a '-plugin-version=<reported version>' a" in auth
    assert "POST /v1/sys/auth/a" in auth
    db = render_dry_run(reg(plugin_type="database", name="db"))
    assert "vault plugin register" in db and "plugin_name=" in db


def test_dry_run_quotes_arguments_for_the_shell():
    write = [c for c in plan(reg(args=("--comment", "two words"))) if c.method == "PUT"][-1]
    assert "'-args=two words'" in write.cli


# --- CLI -----------------------------------------------------------------------------------

def test_cli_sha256_needs_command(vault):
    code, _, err = cli("register", "secret", "p", "--sha256", sha(), "--dry-run")
    assert code == 1 and "--command" in err
    code, out, _ = cli("register", "secret", "p", "--sha256", sha().upper(), "--command", "launcher", "--dry-run")
    assert code == 0 and f"-sha256={sha()}" in out


# --- pure parts ----------------------------------------------------------------------------

def test_sha256_file(launcher, tmp_path):
    assert sha256_file(launcher) == sha()
    with pytest.raises(LauncherFileError):
        sha256_file(tmp_path / "missing")
    with pytest.raises(LauncherFileError):
        sha256_file(tmp_path)


@pytest.mark.parametrize("bad", [
    dict(command="launcher --flag"), dict(command="../launcher"), dict(command="dir/launcher"),
    dict(sha256="abc"), dict(env=("NOEQUALS",)), dict(version="latest"), dict(version="v1.0.0+builtin"),
    dict(plugin_type="kv"), dict(name="a/b"), dict(mount_path="/"),
])
def test_registration_rejects_what_vault_would_refuse(bad):
    with pytest.raises(RegistrationError):
        reg(**bad)
