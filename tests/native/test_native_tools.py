"""`doctor` and `verify --launcher L` on a native launcher report what L's own code decides:
they run `L explain --json` (its dry mode; as the Vault uid for a root doctor with
--vault-uid), show its verdicts, and fail, naming both verdicts, where vault-plugin-shim's
Python selection decides otherwise (issue 20, item 2)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from shim.launch.build import write_launcher
from shim.ops import native as launcher_native
from shim.ops.doctor import diagnose, exit_code, render
from tests.support import releases as R

ROOT = Path(__file__).resolve().parents[2]


def by(findings, check):
    return [f for f in findings if f.check == check]


def verdict(findings):
    (v,) = by(findings, "next-launch")
    return v


def cli(*args):
    return subprocess.run([sys.executable, "-m", "shim.cli", *map(str, args)], capture_output=True, text=True,
                          cwd=ROOT, timeout=120)


def node(root: Path, *, refuse: bool = False, tampered: bool = True) -> tuple[Path, Path]:
    """A node: plugins/shim (native) over versions/ with 1.0.0 and a newer 2.0.0 (tampered)."""
    versions = root / "versions"
    versions.mkdir(mode=0o755)
    (root / "plugins").mkdir(mode=0o755)
    keys = R.new_keys()
    R.release(keys, R.script_plugin(versions / "myplugin-1.0.0", "v1"), version="1.0.0")
    v2 = R.script_plugin(versions / "myplugin-2.0.0", "v2")
    R.release(keys, v2, version="2.0.0")
    if tampered:
        v2.write_text(v2.read_text() + "# one more line\n")
    launcher = root / "plugins" / "shim"
    pol = R.policy(versions, keys).replace(on_refused_newer="refuse" if refuse else "fallback")
    write_launcher(pol, None, str(launcher), native=True)
    return launcher, versions


def test_doctor_shows_the_native_launchers_own_verdicts(tmp_path):
    launcher, versions = node(tmp_path, tampered=False)
    findings = diagnose(str(launcher))
    assert exit_code(findings) == 0, render(findings)
    (native,) = by(findings, "native")
    assert native.status == "ok" and "launcher's own code" in native.message and "agrees" in native.message
    assert not by(findings, "interpreter")          # it starts none
    v = verdict(findings)
    assert v.status == "ok" and str(versions / "myplugin-2.0.0") in v.message


def test_doctor_reports_next_launch_refuses_under_on_refused_newer_refuse(tmp_path):
    launcher, versions = node(tmp_path, refuse=True)
    findings = diagnose(str(launcher))
    assert exit_code(findings) == 1
    v = verdict(findings)
    assert v.status == "fail" and v.message.startswith("next launch refuses (the launcher's own decision): 1 "
                                                       "version(s) newer than 1.0.0 are present and refused"), v
    assert v.subject == str(versions / "myplugin-2.0.0") and "ship the newer release intact" in v.fix
    cands = {f.subject: f for f in by(findings, "candidate")}
    assert cands[str(versions / "myplugin-1.0.0")].message.startswith("chosen, but the next launch refuses")
    assert cands[str(versions / "myplugin-2.0.0")].status == "fail"
    # the CLI, text and exit status
    proc = cli("doctor", "--launcher", launcher)
    assert proc.returncode == 1 and "[FAIL] next-launch" in proc.stdout and "next launch refuses" in proc.stdout


def test_doctor_default_policy_runs_the_older_and_fails_on_the_fallback(tmp_path):
    launcher, versions = node(tmp_path)
    findings = diagnose(str(launcher))
    assert exit_code(findings) == 1
    (fallback,) = by(findings, "fallback")
    assert "falls back to the older 1.0.0" in fallback.message
    v = verdict(findings)
    assert v.status == "ok" and str(versions / "myplugin-1.0.0") in v.message and "older version" in v.message


def test_root_doctor_asks_the_launcher_as_the_vault_uid(tmp_path):
    """As root with --vault-uid, the launcher runs as that uid: a file it owns is fine for it,
    while root's own launch would refuse it (owned by a stranger)."""
    if os.geteuid() != 0:
        pytest.fail("this test needs root (CI runs as root)", pytrace=False)
    root = Path(tempfile.mkdtemp(prefix="native-tools-", dir="/tmp"))    # the uid must reach it
    try:
        root.chmod(0o755)
        launcher, versions = node(root, tampered=False)
        vault = 4242
        os.chown(versions / "myplugin-2.0.0", vault, vault)
        findings = diagnose(str(launcher), uid=vault)
        assert exit_code(findings) == 0, render(findings)
        (native,) = by(findings, "native")
        assert native.status == "ok" and "as uid 4242" in native.message, render(findings)
        assert str(versions / "myplugin-2.0.0") in verdict(findings).message
        doc = launcher_native.native_explain(str(launcher), vault)
        assert doc["uid"] == vault and doc["runs"] == str(versions / "myplugin-2.0.0")
        # as root itself, 2.0.0 belongs to a stranger: the launcher refuses it and runs 1.0.0
        findings = diagnose(str(launcher), uid=0)
        assert by(findings, "native")[0].status == "ok"
        assert str(versions / "myplugin-1.0.0") in verdict(findings).message
        assert launcher_native.native_explain(str(launcher))["candidates"][1]["error"]["error"] == "UnsafeFileError"
    finally:
        shutil.rmtree(root)


def test_verify_launcher_reports_the_native_decision(tmp_path):
    launcher, versions = node(tmp_path, refuse=True)
    proc = cli("verify", "--launcher", launcher)
    assert proc.returncode == 1, proc.stderr
    lines = proc.stdout.splitlines()
    assert f"  verdicts by the launcher's own code (`{launcher} explain --json`)" in lines
    assert any(ln.startswith("  [LAUNCH] myplugin-1.0.0") for ln in lines)
    assert any(ln.startswith("  [REJECT] myplugin-2.0.0") and "is 43 bytes" in ln
               for ln in lines), lines
    assert "FAIL: next launch refuses (the launcher's own decision): 1 version(s) newer than 1.0.0" in proc.stdout
    doc = json.loads(cli("verify", "--launcher", launcher, "--json").stdout)
    assert doc["decided_by"] == "launcher" and doc["ok"] is False
    assert doc["refusal"]["error"] == "NewerVersionRefusedError"
    assert doc["passed_over"] == [str(versions / "myplugin-2.0.0")]
    assert [c["ok"] for c in doc["candidates"]] == [True, False]
    # A healthy directory: exit 0, and --expect-version holds the launcher to it.
    for path in versions.glob("myplugin-2.0.0*"):
        path.unlink()
    assert cli("verify", "--launcher", launcher, "--expect-version", "1.0.0").returncode == 0
    assert cli("verify", "--launcher", launcher, "--expect-version", "2.0.0").returncode == 1


def test_a_difference_between_the_launcher_and_python_is_a_failure_naming_both(tmp_path, monkeypatch, capsys):
    from shim import cli as shim_cli

    launcher, versions = node(tmp_path, tampered=False)
    real = launcher_native.native_explain

    def lying(path, uid=None):      # as if the launcher's code refused 2.0.0 and ran 1.0.0
        doc = real(path, uid)
        one, two = doc["candidates"]
        one.update(chosen=True, runs=True)
        two.update(chosen=False, runs=False, verdict="refused",
                   error={"error": "BadSignatureError", "reason": "made up", "file": two["file"], "fix": "x"})
        return doc

    monkeypatch.setattr(launcher_native, "native_explain", lying)    # doctor and verify ask through it
    findings = diagnose(str(launcher))
    (native,) = by(findings, "native")
    assert native.status == "fail" and exit_code(findings) == 1
    assert ("myplugin-2.0.0: the launcher says refused (BadSignatureError), vault-plugin-shim's selection says "
            "ok, runs") in native.message
    assert "myplugin-1.0.0: the launcher says ok, runs, vault-plugin-shim's selection says ok" in native.message
    assert str(versions / "myplugin-1.0.0") in verdict(findings).message      # Vault gets the launcher's
    assert shim_cli.main(["verify", "--launcher", str(launcher)]) == 1
    out = capsys.readouterr().out
    assert ("FAIL: the launcher's own code and vault-plugin-shim's selection differ: myplugin-2.0.0: the launcher "
            "says refused (BadSignatureError), vault-plugin-shim's selection says ok, runs") in out


def test_a_python_launcher_keeps_todays_path(tmp_path):
    versions = tmp_path / "versions"
    versions.mkdir(mode=0o755)
    keys = R.new_keys()
    R.release(keys, R.script_plugin(versions / "myplugin-1.0.0", "v1"), version="1.0.0")
    launcher = R.launcher(tmp_path, R.policy(versions, keys))
    findings = diagnose(str(launcher))
    assert exit_code(findings) == 0 and not by(findings, "native"), render(findings)
    doc = json.loads(cli("verify", "--launcher", launcher, "--json").stdout)
    assert doc["decided_by"] == "vault-plugin-shim" and doc["ok"] is True


def test_doctor_reports_what_the_launcher_warned_while_deciding():
    """The launcher's dry mode hashes each valid candidate, on a second thread where the file
    is over 1 MiB. Where none can start (here the Vault uid's RLIMIT_NPROC is 1, as at a pods
    pids limit), the launcher logs a WARN on stderr; doctor shows it as a finding of its own,
    with the launcher's fix, and the verdicts are still the launcher's."""
    import resource

    if os.geteuid() != 0:
        pytest.fail("this test needs root (CI runs as root)", pytrace=False)
    root = Path(tempfile.mkdtemp(prefix="native-tools-", dir="/tmp"))    # the uid must reach it
    try:
        root.chmod(0o755)
        versions = root / "versions"
        versions.mkdir(mode=0o755)
        (root / "plugins").mkdir(mode=0o755)
        keys = R.new_keys()
        plugin = R.script_plugin(versions / "myplugin-1.0.0", "v1")
        with open(plugin, "a") as f:
            f.write(("#" * 1023 + "\n") * 2048)      # 2 MiB: hashed on a second thread where one can start
        R.release(keys, plugin, version="1.0.0")
        launcher = root / "plugins" / "shim"
        write_launcher(R.policy(versions, keys), None, str(launcher), native=True)

        def one_process():
            resource.setrlimit(resource.RLIMIT_NPROC, (1, 1))   # root is exempt; the uid it runs as is not

        args = [sys.executable, "-m", "shim.cli", "doctor", "--launcher", str(launcher), "--vault-uid", "54323",
                "--json"]
        for limited, warned in ((None, False), (one_process, True)):
            proc = subprocess.run(args, capture_output=True, text=True, cwd=ROOT, timeout=120, preexec_fn=limited)
            assert proc.returncode == 0, proc.stdout + proc.stderr
            findings = json.loads(proc.stdout)
            native = [f for f in findings if f["check"] == "native"]
            said = [f for f in native if "while deciding" in f["message"]]
            assert [f["status"] for f in said] == (["warn"] if warned else []), native
            assert any(f["status"] == "ok" and "as uid 54323" in f["message"] for f in native), native
            if warned:
                assert said[0]["message"] == (
                    "the launcher's own code said, while deciding: vault-plugin-shim: cannot start a second "
                    "thread to read while hashing; reading and hashing one piece at a time (slower)")
                assert said[0]["subject"] == str(plugin) and "pids" in said[0]["fix"]
    finally:
        shutil.rmtree(root)
