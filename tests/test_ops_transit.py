"""Transit signing through hvac against the fake Vault, checked with cryptography and minisign."""

from __future__ import annotations

import base64
import hashlib
import os
import shutil
import subprocess

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from shim.ops.transit import TransitError, TransitSignatureError, TransitSigner, key_id_for, transit_signer_from_env
from shim.ops.vaultenv import VaultEnv, VaultNotFoundError, VaultPermissionError
from support.fakevault import ROOT_TOKEN, FakeVault


@pytest.fixture
def vault(monkeypatch, tmp_path):
    for key in list(os.environ):
        if key.startswith(("VAULT_", "BAO_")) or key.lower().endswith("_proxy"):
            monkeypatch.delenv(key)
    monkeypatch.setenv("HOME", str(tmp_path))
    with FakeVault() as fake:
        monkeypatch.setenv("VAULT_ADDR", fake.url)
        monkeypatch.setenv("VAULT_TOKEN", ROOT_TOKEN)
        fake.create_transit_key("release")
        yield fake


def raw_public(fake: FakeVault, name="release", version=1, mount="transit") -> bytes:
    key = fake.transit_keys[(mount, name)].versions[version - 1]
    return key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def signer(name="release", mount="transit", **kw) -> TransitSigner:
    return TransitSigner(VaultEnv.from_environ().client(), name, mount, **kw)


def test_public_key_and_key_id(vault):
    s = signer()
    assert s.public_key_raw() == raw_public(vault)
    assert s.key_version == 1
    assert s.key_id == hashlib.blake2b(raw_public(vault), digest_size=64).digest()[:8]
    assert key_id_for(raw_public(vault)) == s.key_id
    [read] = vault.calls("GET", "transit/keys/release")          # read once, then cached
    assert read.token == ROOT_TOKEN


def test_sign_sends_raw_input_without_hash_options_and_verifies(vault):
    message = hashlib.blake2b(b"plugin binary", digest_size=64).digest()
    sig = signer().sign(message)
    assert len(sig) == 64
    Ed25519PublicKey.from_public_bytes(raw_public(vault)).verify(sig, message)
    [post] = vault.calls("POST", "transit/sign/release")
    assert post.body == {"input": base64.b64encode(message).decode(), "key_version": 1}


def test_tampered_signature_fails_closed(vault):
    vault.tamper_signatures = True
    with pytest.raises(TransitSignatureError, match="does not verify"):
        signer().sign(b"x" * 64)


def test_signature_from_another_key_version_is_refused(vault):
    vault.sign_with_version = 2
    with pytest.raises(TransitSignatureError, match="key version 2"):
        signer().sign(b"x" * 64)


def test_rotation_after_reading_the_key_still_signs_with_the_read_version(vault):
    s = signer()
    pk = s.public_key_raw()
    vault.transit_keys[("transit", "release")].rotate()
    sig = s.sign(b"m")
    Ed25519PublicKey.from_public_bytes(pk).verify(sig, b"m")
    assert signer().key_version == 2 and signer().public_key_raw() != pk
    assert signer(key_version=1).public_key_raw() == pk


def test_wrong_key_type_derived_and_missing(vault):
    vault.create_transit_key("rsa", type="ecdsa-p256")
    with pytest.raises(TransitError, match="ed25519") as info:
        signer("rsa").public_key_raw()
    assert "type=ed25519" in info.value.fix
    vault.create_transit_key("derived", derived=True)
    with pytest.raises(TransitError, match="derived"):
        signer("derived").public_key_raw()
    with pytest.raises(VaultNotFoundError) as info:
        signer("nope").public_key_raw()
    assert "vault write -f transit/keys/nope type=ed25519" in info.value.fix


def test_custom_mount(vault):
    vault.mount_table()["signing/"] = {"type": "transit", "description": ""}
    vault.create_transit_key("ci", mount="signing")
    sig = signer("ci", mount="signing").sign(b"abc")
    Ed25519PublicKey.from_public_bytes(raw_public(vault, "ci", mount="signing")).verify(sig, b"abc")
    assert vault.calls("POST", "signing/sign/ci")


def test_sign_permission_denied(vault, monkeypatch):
    vault.add_token("ci", {"transit/keys/release": ["read"]})
    monkeypatch.setenv("VAULT_TOKEN", "ci")
    s = signer()
    assert len(s.public_key_raw()) == 32
    with pytest.raises(VaultPermissionError) as info:
        s.sign(b"m")
    assert "transit/sign/release" in info.value.fix


def test_transit_signer_from_env(vault, monkeypatch):
    monkeypatch.setenv("VAULT_NAMESPACE", "ci")
    vault.mount_table("ci")
    s = transit_signer_from_env("release")
    assert s.public_key_raw() == raw_public(vault)
    assert vault.requests[-1].namespace == "ci"


# --- the minisign contract (shim.trust.minisign) --------------------------------------------

def test_minisig_made_with_transit_verifies_with_our_verifier(vault):
    from shim.trust import minisign
    s = signer()
    data = b"\x7fELF pretend plugin" * 100
    text = minisign.sign_detached(data, s.key_id, s.sign, trusted_comment="file:plugin version:v1.2.3",
                                  untrusted_comment="signed by vault transit")
    pub = minisign.PublicKey.parse(s.minisign_public_key().to_text("transit key").encode())
    sig = minisign.Signature.parse(text)
    assert minisign.verify(data, sig, [pub]) == pub
    assert len(vault.calls("POST", "transit/sign/release")) == 2     # file signature + global signature


@pytest.mark.interop
def test_minisig_made_with_transit_verifies_with_the_minisign_cli(vault, tmp_path):
    from shim.trust import minisign
    s = signer()
    data = os.urandom(4096)
    (tmp_path / "plugin").write_bytes(data)
    (tmp_path / "plugin.minisig").write_bytes(
        minisign.sign_detached(data, s.key_id, s.sign, trusted_comment="release v1.2.3"))
    (tmp_path / "transit.pub").write_text(s.minisign_public_key().to_text("transit key"))
    done = subprocess.run(["minisign", "-V", "-p", str(tmp_path / "transit.pub"), "-m", str(tmp_path / "plugin")],
                          capture_output=True, text=True, timeout=30)
    assert done.returncode == 0, done.stderr
    assert "release v1.2.3" in done.stdout
