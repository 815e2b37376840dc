"""How the environment becomes a Vault client, following the vault CLI's rules."""

from __future__ import annotations

import pytest

from shim.ops.errors import VaultConfigError
from shim.ops.vaultenv import DEFAULT_ADDR, VaultEnv, parse_go_bool, vault_messages


def env(tmp_path, **values):
    return VaultEnv.from_environ(values, home=tmp_path)


def test_defaults(tmp_path):
    e = env(tmp_path)
    assert (e.addr, e.token, e.token_source, e.namespace, e.verify) == (DEFAULT_ADDR, None, None, None, True)


def test_token_env_wins_over_file(tmp_path):
    (tmp_path / ".vault-token").write_text("from-file\n")
    assert env(tmp_path).token == "from-file"
    assert env(tmp_path).token_source.endswith(".vault-token")
    e = env(tmp_path, VAULT_TOKEN="from-env")
    assert (e.token, e.token_source) == ("from-env", "VAULT_TOKEN")


def test_empty_token_file_means_no_token(tmp_path):
    (tmp_path / ".vault-token").write_text("\n")
    assert env(tmp_path).token is None


def test_home_from_environment(tmp_path):
    (tmp_path / ".vault-token").write_text("t")
    assert VaultEnv.from_environ({"HOME": str(tmp_path)}).token == "t"


def test_tls_settings(tmp_path):
    ca = tmp_path / "ca.pem"
    ca.write_text("-----BEGIN CERTIFICATE-----\n")
    assert env(tmp_path, VAULT_CACERT=str(ca)).verify == str(ca)
    assert env(tmp_path, VAULT_CAPATH=str(tmp_path)).verify == str(tmp_path)
    assert env(tmp_path, VAULT_CACERT=str(ca), VAULT_SKIP_VERIFY="true").verify is False
    assert env(tmp_path, VAULT_SKIP_VERIFY="0").verify is True
    with pytest.raises(VaultConfigError, match="does not exist"):
        env(tmp_path, VAULT_CACERT=str(tmp_path / "missing.pem"))
    with pytest.raises(VaultConfigError, match="VAULT_SKIP_VERIFY"):
        env(tmp_path, VAULT_SKIP_VERIFY="yes please")


def test_client_cert_needs_both_halves(tmp_path):
    assert env(tmp_path, VAULT_CLIENT_CERT="c", VAULT_CLIENT_KEY="k").client_cert == ("c", "k")
    with pytest.raises(VaultConfigError, match="VAULT_CLIENT_KEY"):
        env(tmp_path, VAULT_CLIENT_CERT="c")


def test_openbao_names_are_a_fallback(tmp_path):
    e = env(tmp_path, BAO_ADDR="https://bao:8200/", BAO_TOKEN="b", BAO_NAMESPACE="ns")
    assert (e.addr, e.token, e.namespace) == ("https://bao:8200", "b", "ns")
    assert env(tmp_path, BAO_ADDR="https://bao:8200", VAULT_ADDR="https://vault:8200").addr == "https://vault:8200"


def test_client_carries_namespace_and_verify(tmp_path):
    e = env(tmp_path, VAULT_ADDR="http://127.0.0.1:8200", VAULT_TOKEN="t", VAULT_NAMESPACE="team",
            VAULT_SKIP_VERIFY="1")
    c = e.client()
    assert c.adapter.namespace == "team" and c.adapter.token == "t"
    assert c.adapter._kwargs["verify"] is False


@pytest.mark.parametrize("text,value", [("1", True), ("TRUE", True), ("t", True), ("False", False), ("0", False)])
def test_go_parse_bool(text, value):
    assert parse_go_bool(text, "X") is value


def test_vault_messages_strip_multierror():
    class E(Exception):
        errors = ["1 error occurred:\n\t* permission denied\n\n"]
    assert vault_messages(E()) == "permission denied"
