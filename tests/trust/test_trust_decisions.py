"""The trust decisions called directly, on bytes and a fixed clock (as python-tuf tests its
trusted metadata set): no launcher, no plugins directory, no real time.

One test per refusal in README.md's threat model that has a pure decision behind it, named
after the row's end-to-end test (tests/launch/test_launch_refusals.py and others keep those, through
the real launcher file). Each asserts the error class and the reason the operator reads.
Refusals that only the file system part makes (a symlink refused by ``O_NOFOLLOW``, a file
over its size limit before reading, a missing file) stay with the end-to-end tests.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import stat
from pathlib import Path

import pytest

from shim.errors import ShimError
from shim.trust import minisign
from shim.trust.errors import (
    AmbiguousVersionError,
    BadSignatureError,
    DigestMismatchError,
    ExpiredError,
    FileTooLargeError,
    KeyFormatError,
    LegacySignatureError,
    ManifestError,
    PolicyError,
    RollbackError,
    SignatureFormatError,
    UnknownKeyError,
    UnsafeFileError,
    WrongPluginError,
)
from shim.trust.manifest import Manifest, Version, format_time, parse_time
from shim.trust.policy import Policy
from shim.trust.verify import (
    CLOCK_SKEW,
    EXPIRY_WARNING,
    Candidate,
    Selection,
    check_digest,
    check_file_stat,
    check_signed_manifest,
    expires_soon,
    launch_order,
    rank,
)
from tests.support import releases as R

NOW = parse_time("2026-06-01T12:00:00Z")     # the node's clock, for every decision here
NODE = ("linux", "amd64")                    # the node's platform
PATH = "/plugins/myplugin-2.0.0.manifest.json"
SIG_PATH = PATH + ".minisig"
BINARY = b'#!/bin/sh\necho "ran v2 $*"\n'
KEYS = R.new_keys()                          # the key the policy trusts
STRANGER = R.new_keys()                      # anyone else's
POLICY = R.policy(Path("/plugins"), KEYS, min_version="1.0.0")


def manifest(version: str = "2.0.0", *, issued: int = NOW - 3600, expires: int | None = None,
             **changes) -> Manifest:
    return Manifest(name="myplugin", type="secret", version=Version.parse(version),
                    sha256=hashlib.sha256(BINARY).hexdigest(), size=len(BINARY), os="linux", arch="amd64",
                    issued_at=issued, expires_at=expires).replace(**changes)


def signed(m: Manifest, keys: R.Keys = KEYS) -> tuple[bytes, bytes]:
    """(manifest bytes, .minisig bytes), as ``vault-plugin-shim sign`` writes them."""
    data = m.to_bytes()
    return data, R.signature(keys, data, m.trusted_comment())


def check(data: bytes, sig: bytes, policy: Policy = POLICY, now: float = NOW):
    return check_signed_manifest(policy, data, sig, now=now, path=PATH, platform_=NODE)


def refused(error: type, reason: str, data: bytes, sig: bytes, **kw) -> ShimError:
    """``check`` refuses with exactly ``error``, a reason holding ``reason``, and a fix."""
    with pytest.raises(ShimError) as info:
        check(data, sig, **kw)
    exc = info.value
    assert type(exc) is error, exc
    assert reason in exc.reason, exc.reason
    assert exc.fix, "every refusal says how to fix it"
    return exc


def test_a_signed_manifest_for_this_plugin_passes_and_names_the_key_that_signed_it():
    m = manifest()
    assert check(*signed(m)) == (m, KEYS.public)


# --- the signature: checked first, over the exact bytes ----------------------------------

def test_manifest_modified_after_signing():
    data, sig = signed(manifest())
    bumped = data.replace(b'"version": "2.0.0"', b'"version": "9.0.0"')
    assert bumped != data
    exc = refused(BadSignatureError, f"signature by key {KEYS.public.key_id_hex} does not match the file's contents",
                  bumped, sig)
    assert exc.path == SIG_PATH


def test_trusted_comment_modified():
    data, sig = signed(manifest())
    lines = sig.decode().splitlines()
    lines[2] = "trusted comment: vault-plugin-shim manifest name=myplugin type=secret version=9.0.0"
    refused(BadSignatureError, "the trusted comment's signature", data, ("\n".join(lines) + "\n").encode())


def test_signed_by_untrusted_key():
    exc = refused(UnknownKeyError, f"signed by key {STRANGER.public.key_id_hex}, which is not trusted",
                  *signed(manifest(), STRANGER))
    assert exc.path == SIG_PATH


def test_signed_by_untrusted_key_under_a_trusted_key_id():
    """Another key's signature labelled with the trusted key's id: a forgery, not a key we lack."""
    data = manifest().to_bytes()
    sig = minisign.sign_detached(data, KEYS.secret.key_id, STRANGER.secret.sign, trusted_comment="forged")
    refused(BadSignatureError, "does not match the file's contents", data, sig)


def test_legacy_ed_signature_refused():
    data = manifest().to_bytes()
    raw = KEYS.secret.sign(data)   # legacy `Ed`: Ed25519 over the data itself, not its BLAKE2b-512
    legacy = minisign.Signature(minisign.ALG_ED25519, KEYS.secret.key_id, raw, "legacy",
                                KEYS.secret.sign(raw + b"legacy")).to_text().encode()
    refused(LegacySignatureError, "legacy non-prehashed `Ed` signature refused", data, legacy)
    # it is a valid signature all the same: refused by choice, and only a caller's opt-in takes it
    assert minisign.verify(data, minisign.Signature.parse(legacy), [KEYS.public], allow_legacy=True) == KEYS.public


def test_nothing_unsigned_is_interpreted():
    """Malformed bytes under a stranger's signature are refused for the key, not parsed."""
    garbage = b'{"schema": "vault-plugin-shim/manifest/v1", "name": '
    refused(UnknownKeyError, "which is not trusted", garbage, R.signature(STRANGER, garbage))


# --- parser attacks: strict parsing and limits, on the signed bytes ----------------------

def test_malformed_manifest_json():
    garbage = b'{"schema": "vault-plugin-shim/manifest/v1", "name": '
    exc = refused(ManifestError, "manifest is not valid JSON", garbage, R.signature(KEYS, garbage))
    assert exc.path == PATH


def test_unknown_manifest_schema():
    doc = json.loads(manifest().to_bytes())
    doc["schema"] = "vault-plugin-shim/manifest/v2"
    data = json.dumps(doc).encode()
    refused(ManifestError, "unsupported manifest schema 'vault-plugin-shim/manifest/v2'", data, R.signature(KEYS, data))


def test_oversized_manifest():
    data = b" " * (64 * 1024 + 1)
    refused(ManifestError, "manifest is 65537 bytes, more than 65536", data, R.signature(KEYS, data))


def test_oversized_signature():
    data, sig = signed(manifest())
    refused(SignatureFormatError, "signature file is 16385 bytes, more than the 16384-byte limit", data,
            sig + b" " * (16 * 1024 + 1 - len(sig)))


def test_garbage_signature():
    data, _ = signed(manifest())
    refused(SignatureFormatError, "a minisign signature has 4 lines, this one has 2", data,
            b"untrusted comment: x\nnot base64!!\n")


def test_a_public_key_of_another_algorithm_is_refused():
    blob = b"XX" + KEYS.public.key_id + KEYS.public.raw
    text = KEYS.public.to_text().splitlines()[0] + "\n" + base64.b64encode(blob).decode() + "\n"
    with pytest.raises(KeyFormatError, match="unsupported public key algorithm b'XX'"):
        minisign.PublicKey.parse(text.encode())
    assert minisign.PublicKey.parse(KEYS.public.to_text().encode()) == KEYS.public


# --- what the signed manifest says, against the policy and the node ----------------------

def test_wrong_plugin_name():
    refused(WrongPluginError, "manifest is for secret plugin 'otherplugin', this launcher serves secret plugin "
            "'myplugin'", *signed(manifest(name="otherplugin")))


def test_wrong_plugin_type():
    refused(WrongPluginError, "manifest is for auth plugin 'myplugin', this launcher serves secret plugin",
            *signed(manifest(type="auth")))


@pytest.mark.parametrize("goos, goarch", [("linux", "arm64"), ("darwin", "amd64"), ("linux", "sparc64")])
def test_wrong_architecture(goos, goarch):
    exc = refused(WrongPluginError, f"manifest is for {goos}/{goarch}, this node is linux/amd64",
                  *signed(manifest(os=goos, arch=goarch)))
    assert "platform" in exc.fix


def test_rollback_below_floor():
    m = manifest("0.9.0")
    exc = refused(RollbackError, "version 0.9.0 is below the minimum version 1.0.0", *signed(m))
    assert exc.manifest == m   # signed and parsed: its version still orders the verdicts
    refused(RollbackError, "version 1.0.0-rc.1 is below the minimum version 1.0.0", *signed(manifest("1.0.0-rc.1")))
    assert check(*signed(manifest("1.0.0")))[0].version == Version.parse("1.0.0")   # the floor itself runs


def test_expired_manifest():
    expires = NOW - 7200
    data, sig = signed(manifest(issued=expires - 3600, expires=expires))
    refused(ExpiredError, f"manifest for 2.0.0 expired at {format_time(expires)} (node clock: {format_time(NOW)})",
            data, sig)
    refused(ExpiredError, "expired at", data, sig, now=expires)          # at its expiry, it is over
    assert check(data, sig, now=expires - 1)[0].expires_at == expires   # a second before, it runs


def test_manifest_issued_in_the_future():
    m = manifest(issued=NOW + CLOCK_SKEW + 1)
    exc = refused(ExpiredError, f"is issued at {format_time(m.issued_at)}, in the future of this node's clock "
                  f"({format_time(NOW)})", *signed(m))
    assert "NTP" in exc.fix
    assert check(*signed(manifest(issued=NOW + CLOCK_SKEW)))   # skew up to CLOCK_SKEW is the clocks' fault


def test_oversized_binary_against_policy():
    refused(FileTooLargeError, f"binary size {len(BINARY)} exceeds the policy's max_size 10", *signed(manifest()),
            policy=POLICY.replace(max_size=10))


def test_a_launch_within_30_days_of_expiry_warns():
    expires = NOW + EXPIRY_WARNING - 1
    assert expires_soon(manifest(expires=expires), NOW) == EXPIRY_WARNING - 1
    assert expires_soon(manifest(expires=NOW + EXPIRY_WARNING), NOW) is None
    assert expires_soon(manifest(), NOW) is None                 # no expiry, nothing to warn about


# --- the binary's bytes, against the signed manifest --------------------------------------

def candidate(m: Manifest | None, version: str = "2.0.0") -> Candidate:
    cand = Candidate(f"myplugin-{version}", f"/plugins/myplugin-{version}")
    cand.manifest = m
    return cand


def in_memory(data: bytes) -> int:
    fd = os.memfd_create("candidate", os.MFD_CLOEXEC)
    os.write(fd, data)
    return fd


@pytest.mark.parametrize("data, reason", [
    (BINARY.replace(b"v2", b"ev"), "sha256 is "),                   # same size, other bytes
    (BINARY + b"echo evil\n", f"copied {len(BINARY) + 10} bytes, the signed manifest says {len(BINARY)}"),
], ids=["tampered_binary", "binary_of_other_size"])
def test_binary_bytes_against_the_signed_manifest(data, reason):
    fd = in_memory(data)
    try:
        with pytest.raises(DigestMismatchError) as info:
            check_digest(fd, candidate(manifest()))
    finally:
        os.close(fd)
    assert reason in info.value.reason and info.value.path == "/plugins/myplugin-2.0.0" and info.value.fix
    fd = in_memory(BINARY)
    try:
        check_digest(fd, candidate(manifest()))    # the signed bytes themselves pass
    finally:
        os.close(fd)


# --- who may have written the files (the decision on an fstat, made on the open descriptor) --

def stat_of(mode: int, uid: int = 0) -> os.stat_result:
    return os.stat_result((mode, 1, 1, 1, uid, uid, 100, 0, 0, 0))


@pytest.mark.parametrize("st, directory, reason", [
    (stat_of(stat.S_IFREG | 0o757), False, "is writable by group or others (mode 0757)"),
    (stat_of(stat.S_IFREG | 0o775), False, "is writable by group or others (mode 0775)"),
    (stat_of(stat.S_IFREG | 0o666), False, "is writable by group or others (mode 0666)"),
    (stat_of(stat.S_IFDIR | 0o777), True, "is writable by group or others (mode 0777)"),
    (stat_of(stat.S_IFREG | 0o755, uid=4242), False, "is owned by uid 4242, not by root or the Vault user (uid 1000)"),
    (stat_of(stat.S_IFIFO | 0o644), False, "is not a regular file"),
    (stat_of(stat.S_IFREG | 0o755), True, "is not a directory"),
], ids=["binary_writable_by_others-0757", "binary_writable_by_others-0775", "manifest_writable_by_others",
        "plugins_dir_writable_by_others", "binary_owned_by_stranger", "binary_not_regular_file",
        "plugins_dir_not_a_directory"])
def test_unsafe_files(st, directory, reason):
    with pytest.raises(UnsafeFileError) as info:
        check_file_stat(st, "/plugins/x", directory=directory, uid=1000)
    assert info.value.reason == reason and info.value.path == "/plugins/x" and info.value.fix


def test_an_unsafe_plugins_directory_is_fixed_as_a_directory():
    """A directory's fix says chmod 0755 (a umask of 002 gives 0775), not a file's advice."""
    for st in (stat_of(stat.S_IFDIR | 0o775), stat_of(stat.S_IFDIR | 0o755, uid=4242)):
        with pytest.raises(UnsafeFileError) as info:
            check_file_stat(st, "/plugins", directory=True, uid=1000)
        assert info.value.fix.startswith("make the plugins directory owned by root") and "chmod 0755" in info.value.fix
    with pytest.raises(UnsafeFileError) as info:
        check_file_stat(stat_of(stat.S_IFREG | 0o775), "/plugins/x", uid=1000)
    assert "plugins directory" not in info.value.fix


def test_files_of_root_or_the_vault_user_that_only_they_can_write_are_safe():
    check_file_stat(stat_of(stat.S_IFREG | 0o755), "/plugins/x", uid=1000)
    check_file_stat(stat_of(stat.S_IFREG | 0o644, uid=1000), "/plugins/x", uid=1000)
    check_file_stat(stat_of(stat.S_IFDIR | 0o755), "/plugins", directory=True, uid=1000)


# --- the policy ----------------------------------------------------------------------------

def test_two_trusted_keys_with_one_key_id_are_refused():
    """Refused when a policy is read, not only when one is built."""
    twin = minisign.PublicKey(KEYS.public.key_id, STRANGER.public.raw)
    doc = json.loads(POLICY.to_json())
    doc["trusted_keys"].append(twin.to_text().splitlines()[1])
    with pytest.raises(PolicyError) as info:
        Policy.from_json(json.dumps(doc))
    assert f"two different trusted keys share the key id {KEYS.public.key_id_hex}" in info.value.reason
    assert "new key pair" in info.value.fix


@pytest.mark.parametrize("change, reason", [
    ({"schema": "vault-plugin-shim/policy/v2"}, "policy schema must be"),
    ({"extra": True}, "unknown policy field(s): extra"),
    ({"trusted_keys": []}, "at least one trusted public key"),
    ({"trusted_keys": ["not a key"]}, "invalid policy: the public key is not valid base64"),
    ({"min_version": "v1"}, "invalid policy: 'v1' is not a semantic version"),
    ({"max_size": "10"}, "'max_size' must be an integer"),
    ({"on_refused_newer": "ignore"}, "on_refused_newer 'ignore' is not one of fallback, refuse"),
    ({"plugins_dir": "../escape"}, "must be an absolute path"),
])
def test_a_policy_is_read_strictly(change, reason):
    doc = {**json.loads(POLICY.to_json()), **change}
    with pytest.raises(PolicyError) as info:
        Policy.from_json(json.dumps(doc))
    assert reason in info.value.reason
    assert Policy.from_json(POLICY.to_json()) == POLICY


# --- which version runs: launch order, and falling back past a refused newer one ------------

def test_equal_precedence_is_decided_by_issue_time():
    """Highest precedence first (build metadata ignored, a release after its prereleases);
    equal precedence by the signed issue time, newest first. Equal both ways is a tie that the
    launch order cannot break: :func:`rank` then refuses both (the next test)."""
    a = candidate(manifest("2.0.0+a", issued=NOW - 20), "2.0.0+a")
    b = candidate(manifest("2.0.0+b", issued=NOW - 10), "2.0.0+b")
    rc = candidate(manifest("2.0.0-rc.1", issued=NOW), "2.0.0-rc.1")
    old = candidate(manifest("1.9.0", issued=NOW), "1.9.0")
    assert sorted([old, a, rc, b], key=launch_order, reverse=True) == [b, a, rc, old]
    twin = candidate(manifest("2.0.0+c", issued=NOW - 10), "2.0.0+c")
    assert launch_order(twin) == launch_order(b)


def test_equal_precedence_is_decided_by_issue_time_or_refused():
    """semver ignores +build: 2.0.0+aaa and 2.0.0+zzz are the same version. From the signed
    bytes at the node's clock: the newer signed issue time runs first, whatever the file names;
    with equal issue times both are refused (nothing tells which is newer), and the next
    version runs. A candidate refused before keeps its own error."""
    def checked(version: str, issued: int, name: str) -> Candidate:
        cand = candidate(None, name)
        cand.manifest, cand.key = check(*signed(manifest(version, issued=issued)))
        return cand

    older = checked("2.0.0+aaa", NOW - 20, "2.0.0-aaa")    # the name that sorts first
    newer = checked("2.0.0+zzz", NOW - 10, "2.0.0-zzz")
    one = checked("1.0.0", NOW, "1.0.0")
    expired = candidate(manifest("3.0.0", expires=NOW - 1), "3.0.0")
    expired.error = ExpiredError("expired", path=expired.path)
    assert rank([older, newer, one, expired]) == ([newer, older, one], [expired])
    assert older.error is None and newer.error is None

    twin = checked("2.0.0+aaa", NOW - 10, "2.0.0-aaa")      # re-signed: now a tie with 2.0.0+zzz
    good, bad = rank([twin, newer, one, expired])
    assert (good, bad) == ([one], [twin, newer, expired])
    for cand, other in ((twin, newer), (newer, twin)):
        assert type(cand.error) is AmbiguousVersionError
        assert "cannot tell which is newer" in cand.error.reason and other.binary in cand.error.reason
        assert cand.error.path == cand.path and cand.error.fix
    assert type(expired.error) is ExpiredError


def test_a_refused_newer_version_is_a_named_fallback():
    """``passed_over``: the refused candidates that would have run before the chosen one, a
    version whose manifest did not verify among them (nothing shows it is older). The launch
    acts on it (an ERROR, or ``NewerVersionRefusedError`` under ``on_refused_newer: refuse``,
    in shim.launch.sealed)."""
    chosen = candidate(manifest("1.5.0"), "1.5.0")
    newer = candidate(manifest("2.0.0"), "2.0.0")
    newer.error = DigestMismatchError("sha256 is 00", path=newer.path)
    unknown = candidate(None, "3.0.0")
    unknown.error = BadSignatureError("does not match", path=unknown.path)
    older = candidate(manifest("1.0.0", issued=NOW - 7200, expires=NOW - 3600), "1.0.0")
    older.error = ExpiredError("expired", path=older.path)
    everything = [older, chosen, newer, unknown]
    assert Selection(chosen, None, everything).passed_over() == [newer, unknown]
    assert Selection(None, None, everything).passed_over() == [older, newer, unknown]
    assert Selection(chosen, None, [older, chosen]).passed_over() == []
