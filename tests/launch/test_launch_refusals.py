"""Every bad input the launcher must refuse, one test each, through the real launcher file.

Each refusal must: exit non-zero, print nothing on stdout, log an hclog ERROR line that
names the file, the reason and the fix, and never execute the candidate.

Every test runs twice: against the Python launcher (the stub starting the interpreter) and
against the native exec-mode launcher (shim/launch/stubs/native/), which must refuse the
same inputs with the same lines.
"""

import json
import os
import time
from pathlib import Path

import pytest

from shim.trust.manifest import format_time
from tests.support import releases as R


def make_launcher(tmp: Path, policy, native: bool, name: str = "launcher") -> Path:
    if not native:
        return R.launcher(tmp, policy, name=name)
    from shim.launch.build import write_launcher

    write_launcher(policy, None, str(tmp / name), native=True)
    return tmp / name


class Setup:
    def __init__(self, tmp: Path, native: bool = False):
        self.tmp = tmp
        self.dir = tmp / "plugins"
        self.dir.mkdir(mode=0o755)
        self.keys = R.new_keys()
        self.policy = R.policy(self.dir, self.keys, min_version="1.0.0")
        self.launcher = make_launcher(tmp, self.policy, native)

    def plugin(self, label="v2", version="2.0.0", sign=True, **kw) -> Path:
        path = R.script_plugin(self.dir / f"myplugin-{version}", label)
        if sign:
            R.release(self.keys, path, version=version, **kw)
        return path

    def run(self, *args):
        return R.run(self.launcher, *args)


@pytest.fixture(params=["python", "native"])
def s(tmp_path, request):
    return Setup(tmp_path, native=request.param == "native")


def assert_refused(proc, path_part: str, reason_part: str):
    assert proc.returncode == 1, proc.stderr.decode()
    assert proc.stdout == b"", "nothing may reach stdout before the handshake"
    errors = [ln for ln in R.hclog_lines(proc.stderr) if ln["@level"] == "error"]
    assert errors, proc.stderr.decode()
    hit = [e for e in errors if path_part in e.get("file", "") and reason_part in e["reason"]]
    assert hit, f"no error naming {path_part!r} / {reason_part!r} in {errors}"
    assert all(e.get("fix") for e in hit), "every refusal says how to fix it"
    assert errors[-1]["error"] == "NoValidVersionError"
    return hit[0]


def test_valid_version_runs_with_vaults_args_and_logs_info(s):
    s.plugin()
    proc = s.run("--tls-skip-verify", "x")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == b"ran v2 --tls-skip-verify x\n"
    info = [ln for ln in R.hclog_lines(proc.stderr) if ln["@level"] == "info"]
    assert len(info) == 1
    assert info[0]["version"] == "2.0.0" and info[0]["key_id"] == s.keys.public.key_id_hex
    assert len(info[0]["sha256"]) == 64


def test_highest_valid_version_wins_and_lower_is_fallback(s):
    s.plugin("v1", "1.0.0")
    s.plugin("v1.5", "1.5.0")
    assert s.run().stdout == b"ran v1.5 \n"
    bad = s.plugin("v3", "3.0.0")
    bad.write_text(bad.read_text() + "# tampered\n")
    proc = s.run()
    assert proc.stdout == b"ran v1.5 \n"
    errors = [ln for ln in R.hclog_lines(proc.stderr) if ln["@level"] == "error"]
    assert [e["candidate"] for e in errors] == ["myplugin-3.0.0"]


def test_tampered_binary(s):
    path = s.plugin()
    path.write_text(path.read_text().replace("v2", "ev"))  # same size, other bytes
    assert_refused(s.run(), str(path), "sha256 is")


def test_binary_of_other_size(s):
    path = s.plugin()
    path.write_text(path.read_text() + "echo evil\n")
    assert_refused(s.run(), str(path), "the signed manifest says")


def test_manifest_modified_after_signing(s):
    path = s.plugin()
    mpath = Path(str(path) + ".manifest.json")
    doc = json.loads(mpath.read_text())
    doc["version"] = "9.0.0"
    mpath.write_text(json.dumps(doc, indent=2) + "\n")
    e = assert_refused(s.run(), ".minisig", "does not match the file's contents")
    assert e["error"] == "BadSignatureError"


def test_trusted_comment_modified(s):
    path = s.plugin()
    spath = Path(str(path) + ".manifest.json.minisig")
    lines = spath.read_text().splitlines()
    lines[2] = "trusted comment: something else"
    spath.write_text("\n".join(lines) + "\n")
    assert_refused(s.run(), ".minisig", "trusted comment's signature")


def test_signed_by_untrusted_key(s):
    path = R.script_plugin(s.dir / "myplugin-2.0.0", "v2")
    R.release(R.new_keys(), path, version="2.0.0")
    e = assert_refused(s.run(), ".minisig", "not trusted")
    assert e["error"] == "UnknownKeyError"


def test_missing_signature(s):
    path = s.plugin()
    os.unlink(str(path) + ".manifest.json.minisig")
    assert_refused(s.run(), ".minisig", "is missing")


def test_garbage_signature(s):
    path = s.plugin()
    Path(str(path) + ".manifest.json.minisig").write_text("untrusted comment: x\nnot base64!!\n")
    assert_refused(s.run(), ".minisig", "4 lines")


def test_legacy_ed_signature_refused(s):
    from shim.trust import minisign

    path = s.plugin()
    m = R.make_manifest(path, version="2.0.0")
    data = m.to_bytes()
    sig = s.keys.secret.sign(data)
    tc = "legacy"
    legacy = minisign.Signature(b"Ed", s.keys.secret.key_id, sig, tc, s.keys.secret.sign(sig + tc.encode()))
    Path(str(path) + ".manifest.json").write_bytes(data)
    Path(str(path) + ".manifest.json.minisig").write_text(legacy.to_text())
    e = assert_refused(s.run(), ".minisig", "legacy")
    assert e["error"] == "LegacySignatureError"


def test_expired_manifest(s):
    past = int(time.time()) - 7200
    s.plugin(issued=past - 3600, expires=past)
    e = assert_refused(s.run(), "manifest.json", "expired at " + format_time(past))
    assert e["error"] == "ExpiredError"


def test_manifest_issued_in_the_future(s):
    s.plugin(issued=int(time.time()) + 86400)
    assert_refused(s.run(), "manifest.json", "in the future")


def test_rollback_below_floor(s):
    s.plugin("v0.9", "0.9.0")
    e = assert_refused(s.run(), "manifest.json", "below the minimum version 1.0.0")
    assert e["error"] == "RollbackError"


def test_wrong_plugin_name(s):
    s.plugin(name="otherplugin")
    assert_refused(s.run(), "manifest.json", "plugin 'otherplugin'")


def test_wrong_plugin_type(s):
    s.plugin(type="auth")
    assert_refused(s.run(), "manifest.json", "auth plugin")


def test_wrong_architecture(s):
    s.plugin(arch="sparc64")
    assert_refused(s.run(), "manifest.json", "linux/sparc64")


def test_binary_is_symlink(s):
    real = R.script_plugin(s.tmp / "elsewhere", "evil")
    path = s.plugin()
    R.release(s.keys, real, version="2.0.0")  # even a correctly signed target is refused
    data = Path(str(real) + ".manifest.json").read_bytes()
    os.unlink(path)
    os.symlink(real, path)
    R.sign_bytes(s.keys, path, data)
    e = assert_refused(s.run(), str(path), "symbolic link")
    assert e["error"] == "UnsafeFileError"


def test_manifest_is_symlink(s):
    path = s.plugin()
    mpath = Path(str(path) + ".manifest.json")
    target = s.tmp / "m.json"
    target.write_bytes(mpath.read_bytes())
    mpath.unlink()
    mpath.symlink_to(target)
    assert_refused(s.run(), str(mpath), "symbolic link")


@pytest.mark.parametrize("mode", [0o757, 0o775])
def test_binary_writable_by_others(s, mode):
    path = s.plugin()
    path.chmod(mode)
    assert_refused(s.run(), str(path), "writable by group or others")


def test_manifest_writable_by_others(s):
    path = s.plugin()
    Path(str(path) + ".manifest.json").chmod(0o666)
    assert_refused(s.run(), "manifest.json", "writable by group or others")


def test_plugins_dir_writable_by_others(s):
    s.plugin()
    s.dir.chmod(0o777)
    proc = s.run()
    assert proc.returncode == 1 and proc.stdout == b""
    (err,) = [ln for ln in R.hclog_lines(proc.stderr) if ln["@level"] == "error"]
    assert err["file"] == str(s.dir) and "writable by group or others" in err["reason"] and err["fix"]


def test_binary_owned_by_stranger(s):
    if os.geteuid() != 0:
        pytest.fail("this test must run as root to chown a file to another user")
    path = s.plugin()
    os.chown(path, 4242, 4242)
    assert_refused(s.run(), str(path), "owned by uid 4242")


def test_binary_not_regular_file(s):
    path = s.plugin()
    m = Path(str(path) + ".manifest.json").read_bytes()
    sig = Path(str(path) + ".manifest.json.minisig").read_bytes()
    path.unlink()
    os.mkfifo(path, 0o644)
    Path(str(path) + ".manifest.json").write_bytes(m)
    Path(str(path) + ".manifest.json.minisig").write_bytes(sig)
    assert_refused(s.run(), str(path), "not a regular file")


def test_malformed_manifest_json(s):
    path = s.plugin(sign=False)
    R.sign_bytes(s.keys, path, b'{"schema": "vault-plugin-shim/manifest/v1", "name": ')
    e = assert_refused(s.run(), "manifest.json", "not valid JSON")
    assert e["error"] == "ManifestError"


def test_unknown_manifest_schema(s):
    path = s.plugin(sign=False)
    doc = json.loads(R.make_manifest(path, version="2.0.0").to_bytes())
    doc["schema"] = "vault-plugin-shim/manifest/v2"
    R.sign_bytes(s.keys, path, json.dumps(doc).encode())
    assert_refused(s.run(), "manifest.json", "unsupported manifest schema")


def test_oversized_manifest(s):
    path = s.plugin(sign=False)
    R.sign_bytes(s.keys, path, b" " * (64 * 1024 + 1))
    e = assert_refused(s.run(), "manifest.json", "more than the 65536-byte limit")
    assert e["error"] == "FileTooLargeError"


@pytest.mark.parametrize("native", [False, True], ids=["python", "native"])
def test_oversized_binary_against_policy(tmp_path, native):
    s = Setup(tmp_path, native)
    small = s.policy.replace(max_size=10)
    s.launcher = make_launcher(tmp_path, small, native, name="small-launcher")
    s.plugin()
    assert_refused(s.run(), "manifest.json", "exceeds the policy's max_size 10")


def test_empty_plugins_dir(s):
    proc = s.run()
    assert proc.returncode == 1 and proc.stdout == b""
    (err,) = R.hclog_lines(proc.stderr)
    assert err["@level"] == "error" and "0 candidates" in err["reason"] and "manifest.json.minisig" in err["fix"]


def test_missing_plugins_dir(s):
    s.dir.rmdir()
    proc = s.run()
    assert proc.returncode == 1 and proc.stdout == b""
    (err,) = R.hclog_lines(proc.stderr)
    assert err["file"] == str(s.dir) and "does not exist" in err["reason"]
