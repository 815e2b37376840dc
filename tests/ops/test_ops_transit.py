"""Transit misbehaviour that a real server cannot be made to produce, against the Python fake
(a signature that does not verify, one made with another key version), and the pure key id rule.

Everything a real Transit engine can show (key ids, signing, rotation, key types, 403, 404,
custom mounts, minisign interop, a launch) is in tests/openbao/test_openbao_ops_transit.py.
"""

from __future__ import annotations

import hashlib
import os

import pytest

from shim.ops.errors import TransitSignatureError
from shim.ops.transit import TransitSigner, key_id_for
from shim.ops.vaultenv import VaultEnv
from tests.support.fakevault import ROOT_TOKEN, FakeVault


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


def signer(name="release", mount="transit", **kw) -> TransitSigner:
    return TransitSigner(VaultEnv.from_environ().client(), name, mount, **kw)


def test_key_id_is_blake2b_of_the_public_key():
    pk = bytes(range(32))
    assert key_id_for(pk) == hashlib.blake2b(pk, digest_size=64).digest()[:8]
    with pytest.raises(ValueError):
        key_id_for(b"short")


def test_tampered_signature_fails_closed(vault):
    vault.tamper_signatures = True
    with pytest.raises(TransitSignatureError, match="does not verify"):
        signer().sign(b"x" * 64)


def test_signature_from_another_key_version_is_refused(vault):
    vault.sign_with_version = 2
    with pytest.raises(TransitSignatureError, match="key version 2"):
        signer().sign(b"x" * 64)
