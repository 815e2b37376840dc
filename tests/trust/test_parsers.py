"""Strict parsing of manifests, keys, signatures and policies, with property-based fuzzing:
any byte string yields either a value or one of our own errors, never anything else."""

import json

import pytest
from hypothesis import given, settings, strategies as st

from shim.errors import ShimError
from shim.trust.errors import ManifestError, PolicyError
from shim.trust import minisign as M
from shim.trust.manifest import Manifest, Version
from shim.trust.policy import Policy, encode_arg, split_args
from tests.support import releases as R

GOOD = {
    "schema": "vault-plugin-shim/manifest/v1", "name": "kv", "type": "secret", "version": "1.2.3",
    "sha256": "a" * 64, "size": 10, "os": "linux", "arch": "amd64",
    "issued_at": "2026-01-01T00:00:00Z", "expires_at": None,
}


def doc(**changes):
    d = dict(GOOD)
    for k, v in changes.items():
        if v is ...:
            d.pop(k)
        else:
            d[k] = v
    return json.dumps(d).encode()


def test_good_manifest_round_trips():
    m = Manifest.parse(doc())
    assert m.version == Version.parse("1.2.3") and m.expires_at is None
    assert Manifest.parse(m.to_bytes()) == m


@pytest.mark.parametrize("changes, reason", [
    ({"schema": "vault-plugin-shim/manifest/v2"}, "unsupported manifest schema"),
    ({"extra": 1}, "unknown manifest field"),
    ({"size": "10"}, "wrong type"),
    ({"size": True}, "wrong type"),
    ({"size": 0}, "outside"),
    ({"size": 2 ** 40}, "outside"),
    ({"sha256": "A" * 64}, "sha256"),
    ({"sha256": "a" * 63}, "sha256"),
    ({"version": "1.2"}, "semantic version"),
    ({"version": "v1.2.3"}, "semantic version"),
    ({"version": "01.2.3"}, "semantic version"),
    ({"type": "plugin"}, "plugin type"),
    ({"name": "../evil"}, "plugin name"),
    ({"issued_at": "2026-01-01 00:00:00"}, "UTC time"),
    ({"expires_at": "2025-01-01T00:00:00Z"}, "not after issued_at"),
    ({"arch": "AMD64"}, "GOARCH"),
    ({"name": ...}, "missing"),
])
def test_manifest_rejections(changes, reason):
    with pytest.raises(ManifestError) as e:
        Manifest.parse(doc(**changes), path="/p/m.json")
    assert reason in e.value.reason and e.value.path == "/p/m.json" and e.value.fix


@pytest.mark.parametrize("raw, reason", [
    (b'{"schema": "a", "schema": "b"}', "duplicate key"),
    (b'[1, 2]', "JSON object"),
    (b'{"size": NaN}', "not valid JSON"),
    (b"\xff\xfe", "not valid JSON"),
    (b"[" * 60000, "not valid JSON"),
])
def test_manifest_malformed(raw, reason):
    with pytest.raises(ManifestError) as e:
        Manifest.parse(raw)
    assert reason in e.value.reason


def test_semver_precedence():
    order = ["0.9.0", "1.0.0-alpha", "1.0.0-alpha.1", "1.0.0-alpha.beta", "1.0.0-beta", "1.0.0-beta.2",
             "1.0.0-beta.11", "1.0.0-rc.1", "1.0.0", "1.0.1", "1.10.0", "2.0.0"]
    parsed = [Version.parse(v) for v in order]
    assert sorted(reversed(parsed)) == parsed
    assert str(Version.parse("1.0.0-rc.1+build.5")) == "1.0.0-rc.1+build.5"


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=2048))
def test_fuzz_manifest_bytes(data):
    try:
        Manifest.parse(data)
    except ManifestError:
        pass


@settings(max_examples=300, deadline=None)
@given(st.dictionaries(st.sampled_from(sorted(GOOD) + ["x"]),
                       st.one_of(st.none(), st.booleans(), st.integers(), st.text(max_size=80),
                                 st.sampled_from(list(GOOD.values())))))
def test_fuzz_manifest_fields(fields):
    d = dict(GOOD, **fields)
    try:
        m = Manifest.parse(json.dumps(d).encode())
    except ManifestError:
        return
    assert Manifest.parse(m.to_bytes()) == m


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=400))
def test_fuzz_public_key(data):
    try:
        M.PublicKey.parse(data)
    except ShimError:
        pass


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=600))
def test_fuzz_signature(data):
    try:
        M.Signature.parse(data)
    except ShimError:
        pass


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=400))
def test_fuzz_secret_key(data):
    try:
        M.SecretKey.parse(data, b"pw")
    except ShimError:
        pass


@settings(max_examples=200, deadline=None)
@given(st.lists(st.sampled_from(["untrusted comment: x", "trusted comment: y", "RUS", "A" * 100, "", "\r"]),
                max_size=6), st.binary(max_size=74))
def test_fuzz_signature_structure(lines, blob):
    """Near-valid structures: right line shapes with random payloads."""
    import base64

    text = "\n".join(lines + [base64.b64encode(blob).decode()]).encode()
    try:
        M.Signature.parse(text)
    except ShimError:
        pass


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=64), st.binary(max_size=32))
def test_fuzz_signature_verification(message, flip):
    """Any change to the signed bytes is rejected with our error, never accepted."""
    key = FUZZ_KEY
    sig = M.Signature.parse(M.sign_detached(b"original", key.key_id, key.sign, trusted_comment="t"))
    if message == b"original":
        return
    with pytest.raises(ShimError):
        M.verify(message, sig, [key.public_key()])


FUZZ_KEY = M.SecretKey.generate()


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=1024))
def test_fuzz_policy(data):
    try:
        Policy.from_json(data)
    except PolicyError:
        pass


def test_policy_round_trip_and_arg(tmp_path):
    keys = R.new_keys()
    pol = R.policy(tmp_path, keys, min_version="1.2.0")
    assert Policy.from_json(pol.to_json()) == pol
    parsed, rest = split_args(["-a", encode_arg(pol), "-b"])
    assert parsed == pol and rest == ["-a", "-b"]
    with pytest.raises(PolicyError):
        split_args([encode_arg(pol), encode_arg(pol)])
    with pytest.raises(PolicyError):
        Policy.from_json(pol.to_json().replace('"exec"', '"yolo"'))
    with pytest.raises(PolicyError):
        Policy.from_json(pol.to_json().replace(str(tmp_path), "../escape"))
    relative = Policy.from_json(pol.to_json().replace(str(tmp_path), "versions/kv"))
    assert relative.resolved("/vault/plugins/launcher").plugins_dir == "/vault/plugins/versions/kv"


@pytest.mark.parametrize("text", ["1.0.0\n", "1.0.0 ", "١.0.0", "1.0.0+build\n", "v1.0.0"])
def test_semver_is_ascii_and_anchored(text):
    from shim.trust.manifest import Version

    with pytest.raises(ValueError):
        Version.parse(text)


def test_a_version_tag_loses_exactly_one_leading_v():
    """Vault writes v1.2.3, manifests 1.2.3: one ``v`` is dropped, never two."""
    from shim.trust.manifest import strip_v

    assert Version.parse_tag("v1.2.3") == Version.parse_tag("1.2.3") == Version.parse("1.2.3")
    assert strip_v("vv1.2.3") == "v1.2.3" and strip_v("1.2.3") == "1.2.3"
    for text in ("vv1.2.3", "V1.2.3", "v", ""):
        with pytest.raises(ValueError, match=repr(text)):
            Version.parse_tag(text)


@pytest.mark.parametrize("name", ["my-plugin\n", "plugín", "my plugin", "-x", "x" * 129])
def test_plugin_names_are_ascii_and_anchored(name):
    from shim.trust.manifest import NAME_RE

    assert not NAME_RE.match(name)


@pytest.mark.parametrize("text", ["2023-02-29T00:00:00Z", "2026-13-01T00:00:00Z", "2026-01-01T24:00:00Z",
                                  "2026-01-01T00:00:60Z", "2026-01-01T00:00:00Z\n", "２026-01-01T00:00:00Z"])
def test_times_are_real_calendar_times(text):
    from shim.trust.manifest import parse_time

    with pytest.raises(ValueError):
        parse_time(text)


def test_two_trusted_keys_with_one_key_id_are_refused():
    from shim.trust.minisign import PublicKey, SecretKey
    from shim.trust.policy import Policy

    a = SecretKey.generate().public_key()
    b = PublicKey(a.key_id, SecretKey.generate().public_key().raw)
    with pytest.raises(PolicyError, match="share the key id"):
        Policy(name="p", type="secret", plugins_dir="/x", trusted_keys=(a, b))
    Policy(name="p", type="secret", plugins_dir="/x", trusted_keys=(a, a))  # the same key twice is harmless


def test_a_deeply_nested_policy_is_a_policy_error_not_a_recursion_error():
    from shim.trust.policy import Policy

    with pytest.raises(PolicyError) as info:
        Policy.from_json("[" * 30000 + "]" * 30000)
    assert "RecursionError" in info.value.fields().get("cause", "")
