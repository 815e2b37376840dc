"""`register` against a fake Vault that speaks Vault's HTTP API, through the real hvac client."""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import socket

import pytest

from shim.ops.cli import add_register_parser
from shim.ops.register import (
    LauncherFileError,
    MountConflictError,
    PinAmbiguousError,
    PluginVersionMismatchError,
    Registration,
    RegistrationError,
    apply,
    plan,
    render_dry_run,
    sha256_file,
)
from shim.ops.vaultenv import (
    VaultConfigError,
    VaultEnv,
    VaultNotFoundError,
    VaultPermissionError,
    VaultRequestError,
    VaultServerError,
    VaultUnreachableError,
)
from support.fakevault import ROOT_TOKEN, FakeVault

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


# --- the catalog write -------------------------------------------------------------------

def test_register_writes_catalog_entry_with_token_and_adopts_reported_version(vault):
    vault.reported_versions[("secret", "myplugin")] = "v1.2.3"
    r = reg(args=("--policy", "/vault/shim/policy.json"), env=("SHIM_LOG=info",))
    result = apply(client(), r)

    [put] = vault.calls("PUT", "sys/plugins/catalog/secret/myplugin")
    assert put.token == ROOT_TOKEN
    assert put.namespace is None
    assert put.body == {"sha256": sha(), "command": "vault-plugin-shim-launcher",
                        "args": ["--policy", "/vault/shim/policy.json"], "env": ["SHIM_LOG=info"]}
    entry = vault.catalog[("secret", "myplugin", "v1.2.3")]
    assert entry["sha256"] == sha() and entry["args"] == ["--policy", "/vault/shim/policy.json"]
    assert result.registered and result.recorded_versions == ["v1.2.3"]
    assert "v1.2.3" in result.summary(r)


def test_register_with_matching_version_sends_it(vault):
    vault.reported_versions[("auth", "myauth")] = "v0.4.0"
    apply(client(), reg(plugin_type="auth", name="myauth", version="v0.4.0"))
    [put] = vault.calls("PUT", "sys/plugins/catalog/auth/myauth")
    assert put.body["version"] == "v0.4.0"
    assert ("auth", "myauth", "v0.4.0") in vault.catalog


def test_version_mismatch_explains_the_shim_and_gives_the_fix(vault):
    vault.reported_versions[("secret", "myplugin")] = "v1.2.3"
    with pytest.raises(PluginVersionMismatchError) as info:
        apply(client(), reg(version="1.3.0"))
    err = info.value
    assert (err.reported, err.requested) == ("v1.2.3", "v1.3.0")
    text = err.diagnostics()
    assert "launcher" in text and "leave --version out" in text and "--version v1.2.3" in text
    assert vault.catalog == {}


def test_403_names_sudo_on_the_catalog_path(vault, monkeypatch):
    vault.add_token("ops", {"sys/plugins/catalog/*": ["create", "update"]})   # no sudo
    monkeypatch.setenv("VAULT_TOKEN", "ops")
    with pytest.raises(VaultPermissionError) as info:
        apply(client(), reg())
    text = info.value.diagnostics()
    assert "HTTP 403" in text and "permission denied" in text
    assert "sudo" in info.value.fix and "sys/plugins/catalog/secret/myplugin" in info.value.fix


def test_unknown_token_is_403_too(vault, monkeypatch):
    monkeypatch.setenv("VAULT_TOKEN", "expired-token")
    with pytest.raises(VaultPermissionError):
        apply(client(), reg())


def test_400_from_vault_becomes_request_error_with_vaults_message(vault):
    vault.inject_error("PUT", "sys/plugins/catalog/secret/myplugin", 400, "missing command value")
    with pytest.raises(VaultRequestError) as info:
        apply(client(), reg())
    assert "missing command value" in info.value.reason
    assert "PUT /v1/sys/plugins/catalog/secret/myplugin" in info.value.reason


def test_missing_launcher_on_the_node_is_a_500_with_a_plugin_directory_fix(clean_env, monkeypatch, tmp_path):
    plugin_dir = tmp_path / "plugins"
    plugin_dir.mkdir()
    with FakeVault(plugin_directory=plugin_dir) as fake:
        monkeypatch.setenv("VAULT_ADDR", fake.url)
        monkeypatch.setenv("VAULT_TOKEN", ROOT_TOKEN)
        with pytest.raises(VaultServerError) as info:
            apply(client(), reg())
        assert "HTTP 500" in info.value.reason
        assert "plugin_directory" in info.value.fix and "vault-plugin-shim-launcher" in info.value.fix
        (plugin_dir / "vault-plugin-shim-launcher").write_bytes(LAUNCHER_BYTES)
        assert apply(client(), reg()).registered


def test_sealed_vault_503_says_unseal(vault):
    vault.inject_error("PUT", "sys/plugins/catalog/secret/myplugin", 503, "Vault is sealed")
    with pytest.raises(VaultServerError) as info:
        apply(client(), reg())
    assert "unseal" in info.value.fix


def test_unreachable_vault(clean_env, monkeypatch):
    with socket.socket() as s:           # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    monkeypatch.setenv("VAULT_ADDR", f"http://127.0.0.1:{port}")
    monkeypatch.setenv("VAULT_TOKEN", ROOT_TOKEN)
    with pytest.raises(VaultUnreachableError) as info:
        apply(client(), reg())
    assert "VAULT_ADDR" in info.value.fix


# --- pins ----------------------------------------------------------------------------------

def test_pin_posts_version_after_registering(vault):
    vault.reported_versions[("secret", "myplugin")] = "v1.2.3"
    result = apply(client(), reg(version="v1.2.3", pin=True))
    order = [(c.method, c.path) for c in vault.requests]
    assert order[0] == ("PUT", "sys/plugins/catalog/secret/myplugin")
    [pin] = vault.calls("POST", "sys/plugins/pins/secret/myplugin")
    assert pin.body == {"version": "v1.2.3"}
    assert vault.pins[("secret", "myplugin")] == "v1.2.3" and result.pinned


def test_pin_on_vault_before_1_16_says_so(clean_env, monkeypatch):
    with FakeVault(supports_pins=False) as fake:
        monkeypatch.setenv("VAULT_ADDR", fake.url)
        monkeypatch.setenv("VAULT_TOKEN", ROOT_TOKEN)
        with pytest.raises(VaultNotFoundError) as info:
            apply(client(), reg(version="v1.0.0", pin=True))
        assert "1.16" in info.value.fix


def test_pin_without_version_pins_what_vault_recorded_for_this_launcher(vault):
    vault.reported_versions[("secret", "myplugin")] = "v1.4.0"
    result = apply(client(), reg(pin=True, mount_path="myplugin"))
    [pin] = vault.calls("POST", "sys/plugins/pins/secret/myplugin")
    assert pin.body == {"version": "v1.4.0"} and result.pinned_version == "v1.4.0"
    [mount] = vault.calls("POST", "sys/mounts/myplugin")
    assert mount.body["plugin_version"] == "v1.4.0"      # not an older unversioned entry


def test_pin_without_version_refuses_to_guess(vault):
    vault.catalog[("secret", "myplugin", "v1.0.0")] = {"sha256": sha(), "name": "myplugin"}
    vault.reported_versions[("secret", "myplugin")] = "v1.4.0"
    with pytest.raises(PinAmbiguousError) as info:
        apply(client(), reg(pin=True))
    assert "v1.0.0, v1.4.0" in info.value.reason and "--version" in info.value.fix
    assert not vault.calls("POST", "sys/plugins/pins/secret/myplugin")


def test_dry_run_without_version_marks_the_recorded_version():
    text = render_dry_run(reg(pin=True, mount_path="p"))
    assert "vault write sys/plugins/pins/secret/myplugin 'version=<recorded version>'" in text
    assert "-plugin-version=<recorded version>" in text


# --- mounts --------------------------------------------------------------------------------

def test_mount_is_created_when_missing(vault):
    vault.reported_versions[("secret", "myplugin")] = "v1.2.3"
    result = apply(client(), reg(version="v1.2.3", mount_path="/team/myplugin/", description="shim test"))
    [post] = vault.calls("POST", "sys/mounts/team/myplugin")
    assert post.body == {"type": "myplugin", "description": "shim test", "plugin_version": "v1.2.3"}
    assert vault.mount_table()["team/myplugin/"]["type"] == "myplugin"
    assert result.mount == "created"


def test_auth_mount_goes_to_sys_auth(vault):
    apply(client(), reg(plugin_type="auth", name="myauth", mount_path="myauth"))
    [post] = vault.calls("POST", "sys/auth/myauth")
    assert post.body == {"type": "myauth"}
    assert vault.calls("GET", "sys/auth")
    assert not vault.calls("GET", "sys/mounts")


def test_mount_is_left_alone_when_present(vault):
    vault.mount_table()["myplugin/"] = {"type": "myplugin", "description": "", "plugin_version": ""}
    result = apply(client(), reg(mount_path="myplugin"))
    assert result.mount == "present"
    assert not [c for c in vault.requests if c.path.startswith("sys/mounts/")]
    assert "left unchanged" in result.summary(reg(mount_path="myplugin"))


def test_mount_conflict_fails_before_anything_is_changed(vault):
    vault.mount_table()["myplugin/"] = {"type": "kv", "description": ""}
    with pytest.raises(MountConflictError) as info:
        apply(client(), reg(mount_path="myplugin"))
    assert "'kv'" in info.value.reason
    assert not vault.calls("PUT") and not vault.calls("POST")


def test_database_plugins_are_not_mounted():
    with pytest.raises(RegistrationError) as info:
        reg(plugin_type="database", mount_path="db")
    assert "database/config/" in info.value.fix and "plugin_name=" in info.value.fix


# --- environment ---------------------------------------------------------------------------

def test_vault_token_file_fallback(clean_env, monkeypatch):
    (clean_env / ".vault-token").write_text(ROOT_TOKEN + "\n")
    with FakeVault() as fake:
        monkeypatch.setenv("VAULT_ADDR", fake.url)
        env = VaultEnv.from_environ()
        assert env.token_source == str(clean_env / ".vault-token")
        apply(env.client(), reg())
        assert [c.token for c in fake.requests] == [ROOT_TOKEN, ROOT_TOKEN]   # PUT + catalog read-back


def test_namespace_header_on_every_request(vault, monkeypatch):
    monkeypatch.setenv("VAULT_NAMESPACE", "team-a")
    apply(client(), reg(mount_path="myplugin"))
    assert {c.namespace for c in vault.requests} == {"team-a"}
    assert "myplugin/" in vault.mount_table("team-a")
    assert "myplugin/" not in vault.mount_table("")


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
    body = json.loads(lines[lines.index("PUT /v1/sys/plugins/catalog/secret/myplugin") + 1])
    assert body == {"sha256": sha(), "command": "vault-plugin-shim-launcher",
                    "args": ["--policy", "/vault/shim/policy.json"], "env": ["SHIM_LOG=info"],
                    "version": "v1.2.3"}
    assert "vault write sys/plugins/pins/secret/myplugin version=v1.2.3" in lines
    assert "POST /v1/sys/plugins/pins/secret/myplugin" in lines
    assert "vault secrets list -format=json" in lines and "GET /v1/sys/mounts" in lines
    assert "vault secrets enable -path=myplugin -plugin-version=v1.2.3 myplugin" in lines
    assert "POST /v1/sys/mounts/myplugin" in lines
    assert any("X-Vault-Namespace: team-a" in line for line in lines)
    assert ROOT_TOKEN not in out


def test_dry_run_for_auth_and_database(clean_env):
    auth = render_dry_run(reg(plugin_type="auth", name="a", mount_path="a"))
    assert "vault auth enable -path=a '-plugin-version=<recorded version>' a" in auth
    assert "POST /v1/sys/auth/a" in auth
    db = render_dry_run(reg(plugin_type="database", name="db"))
    assert "vault plugin register" in db and "plugin_name=" in db


def test_dry_run_quotes_arguments_for_the_shell():
    [call] = plan(reg(args=("--comment", "two words")))
    assert "'-args=two words'" in call.cli


# --- CLI -----------------------------------------------------------------------------------

def test_cli_register_for_real_and_error_exit(vault, launcher, monkeypatch):
    code, out, _ = cli("register", "secret", "myplugin", "--launcher", str(launcher))
    assert code == 0 and "registered secret plugin 'myplugin'" in out
    [put] = vault.calls("PUT", "sys/plugins/catalog/secret/myplugin")
    assert put.body["sha256"] == sha() and put.body["command"] == launcher.name

    monkeypatch.setenv("VAULT_TOKEN", "nobody")
    code, out, err = cli("register", "secret", "myplugin", "--launcher", str(launcher))
    assert code == 1 and out == ""
    assert "HTTP 403" in err and "Fix:" in err and "sudo" in err


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
