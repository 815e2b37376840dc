"""minisign compatibility, both directions, against the real `minisign` CLI (Debian package)."""

import shutil
import subprocess
from pathlib import Path

import pytest

from shim.trust.errors import (
    BadSignatureError,
    KeyPasswordError,
    LegacySignatureError,
    UnknownKeyError,
)
from shim.trust import minisign as M

pytestmark = pytest.mark.interop


@pytest.fixture(scope="module")
def minisign_cli():
    path = shutil.which("minisign")
    if path is None:
        pytest.fail("the minisign CLI is missing: apt-get install -y minisign (CI installs it in .ci/run)")
    return path


def sh(*args, input=None, cwd=None):
    return subprocess.run(args, input=input, capture_output=True, cwd=cwd, timeout=120)


def test_minisign_verifies_our_signature(minisign_cli, tmp_path):
    key = M.SecretKey.generate()
    (tmp_path / "pk").write_text(key.public_key().to_text())
    data = b"manifest bytes\n"
    (tmp_path / "f").write_bytes(data)
    (tmp_path / "f.minisig").write_bytes(M.sign_detached(data, key.key_id, key.sign, trusted_comment="tc ok"))
    proc = sh(minisign_cli, "-V", "-H", "-p", str(tmp_path / "pk"), "-m", str(tmp_path / "f"))
    assert proc.returncode == 0, proc.stderr
    assert b"Trusted comment: tc ok" in proc.stdout
    (tmp_path / "f").write_bytes(data + b"x")
    assert sh(minisign_cli, "-V", "-p", str(tmp_path / "pk"), "-m", str(tmp_path / "f")).returncode != 0


def test_we_verify_minisign_signatures_and_read_its_unencrypted_key(minisign_cli, tmp_path):
    assert sh(minisign_cli, "-G", "-W", "-p", "pk", "-s", "sk", cwd=tmp_path).returncode == 0
    (tmp_path / "f").write_bytes(b"payload")
    assert sh(minisign_cli, "-S", "-s", "sk", "-m", "f", "-t", "from cli", cwd=tmp_path).returncode == 0
    pub = M.PublicKey.parse((tmp_path / "pk").read_bytes())
    sig = M.Signature.parse((tmp_path / "f.minisig").read_bytes())
    assert sig.algorithm == b"ED" and sig.trusted_comment == "from cli"
    assert M.verify(b"payload", sig, [pub]) == pub
    with pytest.raises(BadSignatureError):
        M.verify(b"payloaD", sig, [pub])
    with pytest.raises(UnknownKeyError):
        M.verify(b"payload", sig, [M.SecretKey.generate().public_key()])
    sk = M.SecretKey.parse((tmp_path / "sk").read_bytes())
    assert sk.public_key() == pub
    # the key id minisign prints is the one we print (0.11 drops leading zeros, newer
    # releases pad to 16 digits as we do: compare the numbers)
    printed = (tmp_path / "pk").read_text().splitlines()[0].rsplit(" ", 1)[1]
    assert int(printed, 16) == int(pub.key_id_hex, 16)


def test_encrypted_minisign_key_with_password(minisign_cli, tmp_path):
    proc = sh(minisign_cli, "-G", "-p", "pk", "-s", "sk", input=b"s3cret\ns3cret\n", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    data = (tmp_path / "sk").read_bytes()
    assert M.SecretKey.is_encrypted(data)
    with pytest.raises(KeyPasswordError):
        M.SecretKey.parse(data, b"wrong")
    key = M.SecretKey.parse(data, b"s3cret")
    assert key.public_key() == M.PublicKey.parse((tmp_path / "pk").read_bytes())


def test_minisign_signs_with_our_encrypted_key(minisign_cli, tmp_path):
    key = M.SecretKey.generate()
    # small scrypt limits keep the test fast; minisign reads them from the file
    (tmp_path / "sk").write_text(key.to_text(b"pw", opslimit=1 << 20, memlimit=1 << 24))
    (tmp_path / "f").write_bytes(b"data")
    proc = sh(minisign_cli, "-S", "-s", "sk", "-m", "f", input=b"pw\n", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    sig = M.Signature.parse((tmp_path / "f.minisig").read_bytes())
    assert M.verify(b"data", sig, [key.public_key()])


def test_legacy_minisign_signature_refused_by_default(minisign_cli, tmp_path):
    assert sh(minisign_cli, "-G", "-W", "-p", "pk", "-s", "sk", cwd=tmp_path).returncode == 0
    (tmp_path / "f").write_bytes(b"payload")
    assert sh(minisign_cli, "-S", "-l", "-s", "sk", "-m", "f", cwd=tmp_path).returncode == 0
    pub = M.PublicKey.parse((tmp_path / "pk").read_bytes())
    sig = M.Signature.parse((tmp_path / "f.minisig").read_bytes())
    assert sig.algorithm == b"Ed"
    with pytest.raises(LegacySignatureError):
        M.verify(b"payload", sig, [pub])
    assert M.verify(b"payload", sig, [pub], allow_legacy=True) == pub


def test_cli_keygen_sign_verifies_with_minisign(minisign_cli, tmp_path):
    """The user-facing commands end to end: keygen (encrypted, password from env), sign, minisign -V."""
    import os
    import sys

    env = dict(os.environ, VAULT_PLUGIN_SHIM_PASSWORD="hunter2")
    cli = [sys.executable, "-m", "shim.cli"]
    root = Path(__file__).resolve().parents[2]
    run = lambda *a: subprocess.run([*cli, *a], env=env, capture_output=True, text=True, cwd=root, timeout=120)
    p = run("keygen", "--secret-key", str(tmp_path / "sk"), "--public-key", str(tmp_path / "pk"))
    assert p.returncode == 0, p.stderr
    assert (tmp_path / "sk").stat().st_mode & 0o777 == 0o600
    plugin = tmp_path / "plugin"
    plugin.write_bytes(b"\x7fELF fake")
    p = run("sign", "--secret-key", str(tmp_path / "sk"), "--name", "kv", "--type", "secret",
            "--version", "v1.2.3", "--expires", "30d", str(plugin))
    assert p.returncode == 0, p.stderr
    v = sh(minisign_cli, "-V", "-p", str(tmp_path / "pk"), "-m", str(tmp_path / "plugin.manifest.json"))
    assert v.returncode == 0 and b"name=kv type=secret version=1.2.3" in v.stdout
    env["VAULT_PLUGIN_SHIM_PASSWORD"] = "wrong"
    p = run("sign", "--secret-key", str(tmp_path / "sk"), "--name", "kv", "--type", "secret",
            "--version", "1.2.3", str(plugin))
    assert p.returncode == 1 and "wrong password" in p.stderr
