"""`keygen --from-transit` and `sign --transit-key` against OpenBao's real Transit engine
(type=ed25519), checked with the minisign CLI and by a launch under OpenBao."""

from __future__ import annotations

import base64
import os
import hashlib
import json
import shutil
import subprocess

import pytest

from shim.ops.errors import TransitError, VaultNotFoundError, VaultPermissionError
from shim.ops.transit import TransitSigner
from shim.ops.vaultenv import VaultEnv
from tests.support import openbao


@pytest.fixture(scope="module")
def transit(bao_dev):
    bao_dev.bao("secrets", "enable", "transit")
    return bao_dev


def new_key(server, name, **params):
    server.bao("write", "-f", f"transit/keys/{name}", *(f"{k}={v}" for k, v in params.items()))
    return name


def public_raw(server, name, version) -> bytes:
    keys = json.loads(server.bao("read", "-format=json", f"transit/keys/{name}").stdout)["data"]["keys"]
    return base64.b64decode(keys[str(version)]["public_key"])


def minisign_verify(pub, path) -> subprocess.CompletedProcess:
    if shutil.which("minisign") is None:
        pytest.fail("the minisign CLI is missing: apt-get install minisign (or bash build/install.sh)",
                    pytrace=False)
    return subprocess.run(["minisign", "-V", "-p", str(pub), "-m", str(path)], capture_output=True,
                          text=True, timeout=30)


def signer(server, name, token=None, **kw) -> TransitSigner:
    env = VaultEnv.from_environ({"VAULT_ADDR": server.addr, "VAULT_TOKEN": token or server.token},
                                home=server.root)
    return TransitSigner(env.client(), name, **kw)


@pytest.fixture(scope="module")
def go_cache(tmp_path_factory):
    from tests.support import baoplugins

    return baoplugins.cache_dir(tmp_path_factory)   # one Go build cache per session, shared


def test_keygen_and_sign_with_transit_verify_with_minisign_and_launch(transit, tmp_path, go_cache):
    key = new_key(transit, "release", type="ed25519")
    env = openbao.cli_env(transit)
    pub = tmp_path / "transit.pub"
    k = openbao.shim("keygen", "--from-transit", key, "--public-key", pub, env=env)
    assert k.returncode == 0, k.stderr
    expected_id = hashlib.blake2b(public_raw(transit, key, 1), digest_size=64).digest()[:8][::-1].hex().upper()
    assert f"public key {expected_id} of Transit key release version 1" in k.stdout

    versions = tmp_path / "versions"
    versions.mkdir(mode=0o755)
    plugin = openbao.build_plugin("secret", "1.0.0", versions, go_cache)
    s = openbao.shim("sign", plugin, "--transit-key", key, "--trusted-key", pub, "--name", "transit-signed",
                     "--type", "secret", "--version", "1.0.0", env=env)
    assert s.returncode == 0, s.stderr
    assert f"Transit key release version 1: key id {expected_id}" in s.stdout
    m = minisign_verify(pub, f"{plugin}.manifest.json")
    assert m.returncode == 0 and "name=transit-signed type=secret version=1.0.0" in m.stdout, m.stderr

    launcher = transit.plugin_dir / "transit-signed-launcher"
    openbao.shim("launcher", "build", "--trusted-key", pub, "--name", "transit-signed", "--plugins-dir",
                 versions, "--output", launcher, env=env, check=True)
    done = openbao.shim("register", "secret", "transit-signed", "--launcher", launcher, "--mount",
                        "transit-signed", env=env)
    assert done.returncode == 0, done.stderr
    answer = json.loads(transit.bao("read", "-format=json", "transit-signed/version").stdout)["data"]
    assert answer["version"] == "v1.0.0"
    line = openbao.wait_for_log(transit, "vault-plugin-shim: starting secret plugin transit-signed 1.0.0")
    assert f"key_id={expected_id}" in line


def test_rotated_key_is_refused_unless_its_version_is_trusted(transit, tmp_path):
    key = new_key(transit, "rotating", type="ed25519")
    env = openbao.cli_env(transit)
    pub1 = tmp_path / "v1.pub"
    openbao.shim("keygen", "--from-transit", key, "--public-key", pub1, env=env, check=True)
    transit.bao("write", "-f", f"transit/keys/{key}/rotate")
    plugin = tmp_path / "plugin"
    plugin.write_bytes(b"\x7fELF not really\n")
    sign = ("sign", plugin, "--transit-key", key, "--name", "p", "--type", "secret", "--version", "1.0.0")

    refused = openbao.shim(*sign, "--trusted-key", pub1, env=env)
    assert refused.returncode == 2            # the server holds a key the launchers do not trust
    v2_id = hashlib.blake2b(public_raw(transit, key, 2), digest_size=64).digest()[:8][::-1].hex().upper()
    assert f"version 2 is key id {v2_id}, not one of the trusted keys" in refused.stderr
    assert "--transit-key-version 2" in refused.stderr and "keygen --from-transit" in refused.stderr
    assert not (tmp_path / "plugin.manifest.json").exists()

    ok = openbao.shim(*sign, "--trusted-key", pub1, "--transit-key-version", "1", env=env)
    assert ok.returncode == 0, ok.stderr
    assert "Transit key rotating version 1" in ok.stdout
    assert minisign_verify(pub1, tmp_path / "plugin.manifest.json").returncode == 0

    pub2 = tmp_path / "v2.pub"
    k2 = openbao.shim("keygen", "--from-transit", key, "--transit-key-version", "2", "--public-key", pub2, env=env)
    assert k2.returncode == 0 and f"public key {v2_id}" in k2.stdout
    latest = openbao.shim(*sign, "--trusted-key", pub1, "--trusted-key", pub2, env=env)
    assert latest.returncode == 0 and "version 2" in latest.stdout
    assert minisign_verify(pub2, tmp_path / "plugin.manifest.json").returncode == 0


def test_missing_wrong_type_and_derived_keys(transit):
    with pytest.raises(VaultNotFoundError) as info:
        signer(transit, "no-such-key").public_key_raw()
    assert "type=ed25519" in info.value.fix
    new_key(transit, "aes", type="aes256-gcm96")
    with pytest.raises(TransitError, match="minisign needs ed25519"):
        signer(transit, "aes").public_key_raw()
    new_key(transit, "derived", type="ed25519", derived="true")
    with pytest.raises(TransitError, match="derived key"):
        signer(transit, "derived").public_key_raw()
    new_key(transit, "one-version", type="ed25519")
    with pytest.raises(TransitError, match="has no version 7"):
        signer(transit, "one-version", key_version=7).public_key_raw()


def test_sign_permission_denied(transit, tmp_path):
    new_key(transit, "readonly", type="ed25519")
    policy = tmp_path / "read.hcl"
    policy.write_text('path "transit/keys/readonly" { capabilities = ["read"] }\n')
    transit.bao("policy", "write", "transit-read", str(policy))
    token = transit.bao("token", "create", "-policy=transit-read", "-field=token").stdout.strip()
    s = signer(transit, "readonly", token=token)
    assert len(s.public_key_raw()) == 32
    with pytest.raises(VaultPermissionError) as info:
        s.sign(b"message")
    assert "HTTP 403" in info.value.reason and "transit/sign/readonly" in info.value.fix


def test_signature_verifies_for_the_exact_bytes(transit):
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

    new_key(transit, "raw", type="ed25519")
    s = signer(transit, "raw")
    message = bytes(range(256)) * 3
    Ed25519PublicKey.from_public_bytes(public_raw(transit, "raw", 1)).verify(s.sign(message), message)


def test_rotation_after_reading_the_key_still_signs_with_the_read_version(transit):
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

    new_key(transit, "race", type="ed25519")
    s = signer(transit, "race")
    pk = s.public_key_raw()
    transit.bao("write", "-f", "transit/keys/race/rotate")
    Ed25519PublicKey.from_public_bytes(pk).verify(s.sign(b"m"), b"m")
    assert signer(transit, "race").key_version == 2 and signer(transit, "race").public_key_raw() != pk
    assert signer(transit, "race", key_version=1).public_key_raw() == pk == public_raw(transit, "race", 1)


def test_custom_mount_and_signer_from_env(transit, monkeypatch):
    from shim.ops.transit import transit_signer_from_env

    transit.bao("secrets", "enable", "-path=signing", "transit")
    transit.bao("write", "-f", "signing/keys/ci", "type=ed25519")
    for key in [k for k in list(os.environ) if k.startswith(("VAULT_", "BAO_"))]:
        monkeypatch.delenv(key)
    monkeypatch.setenv("BAO_ADDR", transit.addr)           # OpenBao's names are read too
    monkeypatch.setenv("BAO_TOKEN", transit.token)
    s = transit_signer_from_env("ci", "signing")
    raw = json.loads(transit.bao("read", "-format=json", "signing/keys/ci").stdout)["data"]["keys"]["1"]
    assert s.public_key_raw() == base64.b64decode(raw["public_key"])
    assert len(s.sign(b"abc")) == 64
