"""`doctor`: one test per finding, on real launchers and signed versions built with the real code."""

from __future__ import annotations

import argparse
import io
import json
import os
import subprocess
import sys
import time

import pytest

from shim.launch.build import write_launcher
from shim.ops.doctor import add_doctor_parser
from shim.ops.doctor import diagnose, exit_code, render
from shim.trust.policy import encode_arg
from tests.support.releases import PYTHON, launcher, new_keys, policy, release, script_plugin


@pytest.fixture
def setup(tmp_path):
    keys = new_keys()
    plugins = tmp_path / "versions"
    plugins.mkdir(mode=0o755)
    vault_plugins = tmp_path / "plugins"
    vault_plugins.mkdir()
    pol = policy(plugins, keys)
    lau = launcher(vault_plugins, pol, name="vault-plugin-shim-launcher")
    return keys, plugins, pol, lau


def by(findings, check):
    return [f for f in findings if f.check == check]


def verdict(findings):
    [v] = by(findings, "next-launch")
    return v


def run_cli(*argv):
    parser = argparse.ArgumentParser()
    add_doctor_parser(parser.add_subparsers(dest="cmd", required=True))
    ns = parser.parse_args(["doctor", *argv])
    out, err = io.StringIO(), io.StringIO()
    return ns.func(ns, stdout=out, stderr=err), out.getvalue(), err.getvalue()


def test_healthy_pod_launches_the_highest_valid_version(setup):
    keys, plugins, pol, lau = setup
    release(keys, script_plugin(plugins / "myplugin-1.0.0", "one"), version="1.0.0")
    release(keys, script_plugin(plugins / "myplugin-1.1.0", "two"), version="1.1.0")
    import hashlib
    findings = diagnose(str(lau), expected_sha256=hashlib.sha256(lau.read_bytes()).hexdigest())
    assert exit_code(findings) == 0, render(findings)
    assert "matches the catalog" in by(findings, "launcher")[0].message
    assert by(findings, "interpreter")[0].status == "ok"
    assert by(findings, "plugins-dir")[0].status == "ok"
    cands = {f.subject: f.message for f in by(findings, "candidate")}
    assert cands[str(plugins / "myplugin-1.1.0")].startswith("would launch: version 1.1.0")
    assert cands[str(plugins / "myplugin-1.0.0")].startswith("valid, not the highest")
    v = verdict(findings)
    assert v.status == "ok" and "myplugin-1.1.0" in v.message and "1.1.0" in v.message


def test_catalog_checksum_mismatch(setup):
    keys, plugins, _, lau = setup
    release(keys, script_plugin(plugins / "p", "x"))
    findings = diagnose(str(lau), expected_sha256="0" * 64)
    [launcher_fail] = [f for f in by(findings, "launcher") if f.status == "fail"]
    assert "differs from the catalog" in launcher_fail.message and "checksums did not match" in launcher_fail.fix
    assert verdict(findings).status == "fail" and "checksums" in verdict(findings).message


def test_missing_launcher(tmp_path):
    findings = diagnose(str(tmp_path / "nope"))
    assert by(findings, "launcher")[0].status == "fail" and verdict(findings).status == "fail"


def test_launcher_outside_plugin_directory(setup, tmp_path):
    _, _, _, lau = setup
    findings = diagnose(str(lau), plugin_directory=str(tmp_path))
    assert any("not directly inside" in f.message for f in by(findings, "launcher"))


def test_missing_interpreter(setup, tmp_path):
    keys, plugins, pol, _ = setup
    odd = tmp_path / "plugins" / "odd-launcher"
    write_launcher(pol, "/nonexistent/python3", str(odd))
    findings = diagnose(str(odd))
    [f] = by(findings, "interpreter")
    assert f.status == "fail" and "apk add python3 py3-cryptography" in f.fix


def test_plugins_dir_missing_or_group_writable(setup):
    keys, plugins, pol, lau = setup
    os.chmod(plugins, 0o775)
    findings = diagnose(str(lau))
    assert by(findings, "plugins-dir")[0].status == "fail"
    assert "writable by group" in by(findings, "plugins-dir")[0].message
    os.rmdir(plugins)
    findings = diagnose(str(lau))
    assert "does not exist" in by(findings, "plugins-dir")[0].message
    assert verdict(findings).status == "fail"


def test_tampered_highest_version_falls_back_and_is_reported(setup):
    keys, plugins, _, lau = setup
    release(keys, script_plugin(plugins / "p-1", "one"), version="1.0.0")
    good2 = script_plugin(plugins / "p-2", "two")
    release(keys, good2, version="2.0.0")
    good2.write_text('#!/bin/sh\necho "evil"\n')       # swapped after signing
    findings = diagnose(str(lau))
    fails = [f for f in by(findings, "candidate") if f.status == "fail"]
    assert fails and fails[0].subject.endswith("p-2")
    assert "p-1" in verdict(findings).message and verdict(findings).status == "ok"
    assert exit_code(findings) == 1                     # a rejected candidate is worth a look


def test_clock_findings(setup):
    keys, plugins, _, lau = setup
    now = time.time()
    release(keys, script_plugin(plugins / "soon", "s"), version="1.0.0", issued=int(now) - 100,
            expires=int(now) + 3 * 86400)
    release(keys, script_plugin(plugins / "future", "f"), version="2.0.0", issued=int(now) + 7200)
    release(keys, script_plugin(plugins / "old", "o"), version="3.0.0", issued=int(now) - 7200,
            expires=int(now) - 60)
    findings = diagnose(str(lau), now=now)
    clock = by(findings, "clock")
    assert any(f.status == "warn" and "expires" in f.message and "3.0 days" in f.message for f in clock)
    assert any(f.status == "fail" and "future" in f.message for f in by(findings, "candidate"))
    assert any(f.status == "fail" and "expired" in f.message for f in by(findings, "candidate"))
    assert "soon" in verdict(findings).message


def test_no_valid_version_explains_what_vault_logs(setup):
    keys, plugins, _, lau = setup
    other = new_keys()
    release(other, script_plugin(plugins / "p", "x"))     # signed by an untrusted key
    findings = diagnose(str(lau))
    assert "not trusted" in by(findings, "candidate")[0].message
    v = verdict(findings)
    assert v.status == "fail" and "plugin exited before we could connect" in v.message


def test_stray_binary_without_manifest(setup):
    keys, plugins, _, lau = setup
    script_plugin(plugins / "forgotten", "x")
    findings = diagnose(str(lau))
    assert any(f.subject.endswith("forgotten") and f.status == "info" for f in by(findings, "candidate"))


def test_policy_from_catalog_args(setup, tmp_path):
    keys, plugins, pol, _ = setup
    bare = tmp_path / "plugins" / "bare-launcher"
    write_launcher(None, PYTHON, str(bare))
    release(keys, script_plugin(plugins / "p", "x"))
    assert by(diagnose(str(bare)), "policy")[0].status == "fail"
    findings = diagnose(str(bare), catalog_args=[encode_arg(pol)])
    [pf] = by(findings, "policy")
    assert pf.status == "ok" and pf.message.startswith("catalog args policy")
    assert verdict(findings).status == "ok"


def test_cli_text_and_json(setup):
    keys, plugins, _, lau = setup
    release(keys, script_plugin(plugins / "p", "x"))
    code, out, _ = run_cli("--launcher", str(lau))
    assert code == 0 and "[OK  ] next-launch:" in out
    code, out, _ = run_cli("--launcher", str(lau), "--json", "--sha256", "f" * 64)
    assert code == 1
    doc = json.loads(out)
    assert {"check", "status", "message", "fix", "subject"} <= set(doc[0])
    assert doc[-1]["check"] == "next-launch" and doc[-1]["status"] == "fail"


def test_launcher_doctor_runs_the_installed_package_not_its_own_code(setup):
    """`L doctor` by an operator: the launcher carries no ops code (its bytes are what Vault
    pins), so it hands over to the installed package under the same interpreter."""
    keys, plugins, _, lau = setup
    release(keys, script_plugin(plugins / "p", "x"))
    done = subprocess.run([str(lau), "doctor"], capture_output=True, text=True, timeout=120, cwd="/",
                          env={"PATH": os.environ["PATH"]})
    assert done.returncode == 0, done.stdout + done.stderr
    assert "would launch" in done.stdout


def test_launcher_doctor_explains_when_the_package_is_not_installed(tmp_path, setup):
    keys, plugins, _, _ = setup
    release(keys, script_plugin(plugins / "p", "x"))
    bare = tmp_path / "bare-venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(bare)], check=True, timeout=120)
    from shim.trust.policy import Policy

    lau = tmp_path / "lau-bare"
    write_launcher(Policy(name="myplugin", type="secret", plugins_dir=str(plugins), trusted_keys=(keys.public,)),
                   str(bare / "bin" / "python"), str(lau))
    done = subprocess.run([str(lau), "doctor"], capture_output=True, text=True, timeout=120, cwd="/",
                          env={"PATH": os.environ["PATH"]})
    assert done.returncode == 2 and done.stdout == ""
    assert "needs the vault-plugin-shim package installed" in done.stderr
    assert "Traceback" not in done.stderr


def test_relative_plugins_dir_is_resolved_from_the_launcher(tmp_path):
    from shim.trust.policy import Policy

    keys = new_keys()
    vault_plugins = tmp_path / "plugins"
    (vault_plugins / "versions").mkdir(parents=True)
    os.chmod(vault_plugins / "versions", 0o755)
    release(keys, script_plugin(vault_plugins / "versions" / "p", "x"))
    pol = Policy(name="myplugin", type="secret", plugins_dir="versions", trusted_keys=(keys.public,))
    lau = launcher(vault_plugins, pol, name="vault-plugin-shim-launcher")
    findings = diagnose(str(lau))
    assert str(vault_plugins / "versions") in by(findings, "plugins-dir")[0].subject
    assert verdict(findings).status == "ok", render(findings)


def test_a_refused_newer_version_is_a_named_fallback_and_expiry_is_shown(setup, tmp_path):
    """Issue 16, items 2 and 3: the fallback past a tampered newer release is its own failure
    (never only a candidate line), a launch within 30 days of expiry is warned about, and
    --json carries each candidate's expires_at."""
    keys, plugins, pol, lau = setup
    now = time.time()
    release(keys, script_plugin(plugins / "myplugin-1.0.0", "one"), version="1.0.0", issued=int(now) - 100,
            expires=int(now) + 20 * 86400)
    newer = script_plugin(plugins / "myplugin-2.0.0", "two")
    release(keys, newer, version="2.0.0")
    with open(newer, "ab") as fh:
        fh.write(b"# one byte more\n")
    findings = diagnose(str(lau), now=now, check_interpreter=False)
    [fallback] = by(findings, "fallback")
    assert fallback.status == "fail" and fallback.subject.endswith("myplugin-2.0.0")
    assert "version 2.0.0 newer than 1.0.0 is present and refused" in fallback.message
    assert "falls back to the older 1.0.0" in fallback.message
    assert any(f.status == "warn" and "in 20.0 days" in f.message for f in by(findings, "clock"))
    assert verdict(findings).status == "ok" and "an older version" in verdict(findings).message
    assert exit_code(findings) == 1
    code, out, _ = run_cli("--launcher", str(lau), "--no-interpreter-check", "--json")
    assert code == 1
    doc = json.loads(out)
    [ok] = [f for f in doc if f["check"] == "candidate" and f["status"] == "ok"]
    assert ok["details"]["expires_at"] == time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(int(now) + 20 * 86400))

    strict = launcher(lau.parent, pol.replace(on_refused_newer="refuse"), name="strict-launcher")
    findings = diagnose(str(strict), now=now, check_interpreter=False)
    assert verdict(findings).status == "fail" and "refuses to fall back" in verdict(findings).message


def test_each_fallback_finding_carries_its_own_versions_details(setup):
    """Two tampered newer releases: each fallback line's --json details name its own version
    (they used to carry whichever candidate the loop above saw last)."""
    keys, plugins, pol, lau = setup
    release(keys, script_plugin(plugins / "myplugin-1.0.0", "one"), version="1.0.0")
    for version in ("2.0.0", "3.0.0"):
        newer = script_plugin(plugins / f"myplugin-{version}", version)
        release(keys, newer, version=version)
        with open(newer, "ab") as fh:
            fh.write(b"# one byte more\n")
    code, out, _ = run_cli("--launcher", str(lau), "--no-interpreter-check", "--json")
    assert code == 1
    fallbacks = {f["subject"].rsplit("-", 1)[1]: f["details"]["version"] for f in json.loads(out)
                 if f["check"] == "fallback"}
    assert fallbacks == {"2.0.0": "2.0.0", "3.0.0": "3.0.0"}


def test_a_launcher_directory_others_can_write_fails(setup):
    """Vault hashes the launcher's path and then executes it: whoever can write the launcher,
    its directory or one above it can run other bytes under the registered checksum. doctor
    fails each such path (owned by another uid, or writable by group or others without the
    sticky bit), and passes a root-owned tree."""
    keys, plugins, pol, lau = setup
    release(keys, script_plugin(plugins / "myplugin-1.0.0", "one"), version="1.0.0")
    directory = lau.parent
    findings = diagnose(str(lau))
    assert [f.status for f in by(findings, "launcher-dir")] == ["ok"], render(findings)
    assert exit_code(findings) == 0, render(findings)
    try:
        os.chown(directory, 65534, 65534)
        findings = diagnose(str(lau))
        [bad] = by(findings, "launcher-dir")
        assert bad.status == "fail" and bad.subject == str(directory) and "owned by uid 65534" in bad.message
        assert bad.fix.startswith(f"chown root {directory}") and exit_code(findings) == 1
        os.chown(directory, 0, 0)
        os.chmod(directory, 0o777)
        [bad] = by(findings := diagnose(str(lau)), "launcher-dir")
        assert bad.status == "fail" and "writable by group or others (mode 0777)" in bad.message, render(findings)
        os.chmod(directory, 0o1777)      # sticky, like /tmp: nobody else can rename the launcher
        assert [f.status for f in by(diagnose(str(lau)), "launcher-dir")] == ["ok"]
        os.chmod(directory, 0o755)
        os.chmod(lau, 0o775)
        findings = diagnose(str(lau))
        assert any(f.status == "fail" and "someone other than root" in f.message for f in by(findings, "launcher"))
    finally:
        os.chown(directory, 0, 0)
        os.chmod(directory, 0o755)
        os.chmod(lau, 0o755)
