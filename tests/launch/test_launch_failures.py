"""Every launch-path failure ends in a named hclog error, never a traceback (#13).

Vault logs a plugin's non-JSON stderr at DEBUG, so a Python traceback hides the reason from
the operator. Each failure here asserts: empty stdout, no ``Traceback`` on stderr, an hclog
``error`` line with the file (where there is one), the reason, the cause (where there is
one) and the fix, and a non-zero exit. Faults the kernel cannot be made to produce on
demand (EMFILE at the memfd, ENOSPC mid-copy) are injected into the real launch path in a
fresh interpreter; everything else is a real launch of a real launcher file.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from shim.trust.policy import encode_arg
from tests.support import releases as R
from tests.launch.test_launch_exec import run_patched


def failed(proc: subprocess.CompletedProcess, *, file: bool = True, cause: bool = False) -> list[dict]:
    """The common assertions; returns the error lines."""
    assert proc.returncode != 0, proc.stderr
    assert proc.stdout == b"", proc.stdout
    assert b"Traceback" not in proc.stderr, proc.stderr.decode(errors="replace")
    lines = R.hclog_lines(proc.stderr)
    assert len(lines) == len(proc.stderr.splitlines()), f"non-hclog stderr: {proc.stderr!r}"
    errors = [ln for ln in lines if ln["@level"] == "error"]
    assert errors, proc.stderr
    final = errors[-1]
    assert final.get("reason") and final.get("fix"), final
    if file:
        assert any(ln.get("file") for ln in errors), errors
    if cause:
        assert any(ln.get("cause") for ln in errors), errors
    return errors


@pytest.mark.parametrize("errno_name, reason, fix", [
    ("EMFILE", "too many open files", "open-file limit"),
    ("ENOSPC", "no space or memory", "memory limit"),
    ("ENOMEM", "no space or memory", "memory limit"),
])
def test_os_errors_while_making_the_verified_copy(setup, errno_name, reason, fix):
    tmp, d, keys, pol, path = setup
    patch = (f"import errno\ndef fail(*a, **kw):\n    raise OSError(errno.{errno_name}, os.strerror(errno.{errno_name}))\n"
             "import os\nM._copy = fail\n")
    errors = failed(run_patched(pol, patch, tmp), cause=True)
    assert any(reason in ln["reason"] and fix in ln["fix"] and errno_name.lower() not in ln["reason"]
               for ln in errors), errors


def test_no_usable_temp_directory(setup):
    """memfd_create refused (seccomp, an LSM) and TMPDIR unusable (a read-only root file
    system, or a path that does not exist): a named error naming TMPDIR."""
    tmp, d, keys, pol, path = setup
    patch = ("import errno\ndef refuse(name):\n    raise PermissionError(errno.EPERM, 'memfd_create denied')\n"
             "M._memfd_create = refuse\n")
    errors = failed(run_patched(pol, patch, tmp, env={"TMPDIR": str(tmp / "no-such-dir")}), cause=True)
    assert any("temporary directory" in ln["reason"] and ln.get("file") == str(tmp / "no-such-dir")
               and "TMPDIR" in ln["fix"] for ln in errors), errors


def test_a_memfd_name_longer_than_the_kernels_limit_still_launches(tmp_path):
    """A 128-byte plugin name plus a long prerelease version is within our own limits but
    over memfd_create's 249 bytes: the memfd name is cut, the launch goes on."""
    d = tmp_path / "plugins"
    d.mkdir(mode=0o755)
    keys = R.new_keys()
    name = "p" * 128
    version = "1.0.0-" + "a" * 120
    pol = R.policy(d, keys, name=name)
    path = R.script_plugin(d / "plugin-long", "long")
    R.release(keys, path, name=name, version=version)
    proc = R.run(R.launcher(tmp_path, pol))
    assert proc.stdout == b"ran long \n", proc.stderr


def test_an_unexpected_error_on_one_candidate_does_not_stop_the_fallback(setup):
    tmp, d, keys, pol, path = setup
    v2 = R.script_plugin(d / "myplugin-2.0.0", "two")
    R.release(keys, v2, version="2.0.0")
    patch = ("orig = S.check_digest\n"
             "def flaky(fd, cand):\n"
             "    if str(cand.manifest.version) == '2.0.0':\n"
             "        raise RuntimeError('a bug in one candidate')\n"
             "    return orig(fd, cand)\n"
             "S.check_digest = flaky\n")
    proc = run_patched(pol, patch, tmp)
    assert proc.stdout == b"ran good \n", proc.stderr
    assert b"Traceback" not in proc.stderr
    (line,) = [ln for ln in R.hclog_lines(proc.stderr) if ln["@level"] == "error"]
    assert "unexpected error" in line["reason"] and "RuntimeError: a bug in one candidate" in line["cause"]
    assert line["file"].endswith("myplugin-2.0.0")


def _interpreter_without_grpc(tmp: Path) -> Path:
    """A venv whose site-packages holds cryptography (and cffi) but not grpc."""
    venv = tmp / "no-grpc"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=120)
    import cryptography

    site = Path(cryptography.__file__).resolve().parent.parent
    (venv / "lib" / f"python{sys.version_info.major}.{sys.version_info.minor}" / "site-packages"
     / "crypto-only.pth").write_text(str(tmp / "crypto-only") + "\n")
    (tmp / "crypto-only").mkdir()
    for name in os.listdir(site):
        if name.startswith(("cryptography", "cffi", "_cffi_backend", "pycparser")):
            os.symlink(site / name, tmp / "crypto-only" / name)
    return venv / "bin" / "python"


def test_a_proxy_launcher_whose_interpreter_lacks_grpc(setup):
    tmp, d, keys, pol, path = setup
    python = _interpreter_without_grpc(tmp)
    launcher = tmp / "proxy-launcher"
    from shim.launch.build import write_launcher

    write_launcher(pol.replace(mode="proxy"), str(python), str(launcher))
    errors = failed(R.run(launcher), file=False, cause=True)
    assert "cannot import what proxy mode needs" in errors[-1]["reason"]
    assert "grpc" in errors[-1]["cause"] and "grpcio" in errors[-1]["fix"]
    assert b"starting" not in R.run(launcher).stderr  # refused before it claims to start


def test_sigint_during_a_launch(setup):
    tmp, d, keys, pol, path = setup
    patch = ("import os, signal\norig = S.check_digest\n"
             "def interrupted(fd, cand):\n    os.kill(os.getpid(), signal.SIGINT)\n    return orig(fd, cand)\n"
             "S.check_digest = interrupted\n")
    errors = failed(run_patched(pol, patch, tmp), file=False)
    assert "interrupted (SIGINT)" in errors[-1]["@message"]


def test_a_deeply_nested_policy_argument(setup):
    tmp, d, keys, pol, path = setup
    launcher = R.launcher(tmp, None)
    import base64

    deep = "--shim-policy=" + base64.urlsafe_b64encode(b"[" * 30000 + b"]" * 30000).decode()
    errors = failed(R.run(launcher, deep), file=False, cause=True)
    assert "RecursionError" in errors[-1]["cause"]
    assert R.run(launcher, encode_arg(pol)).stdout == b"ran good \n"  # the real one works


def test_a_broken_launcher_under_inspect_and_doctor(setup):
    tmp, d, keys, pol, path = setup
    launcher = R.launcher(tmp, pol)
    data = launcher.read_bytes()
    launcher.write_bytes(data[:-100] + b"\0" * 60 + data[-40:])  # the zip is damaged, the trailer intact
    for args in (["launcher", "inspect", str(launcher)], ["doctor", "--launcher", str(launcher)]):
        proc = subprocess.run([sys.executable, "-m", "shim.cli", *args], capture_output=True, text=True,
                              timeout=60, cwd="/")
        assert proc.returncode != 0 and "Traceback" not in proc.stderr, proc.stderr
        assert "not a vault-plugin-shim launcher (or a damaged one)" in proc.stdout + proc.stderr


def test_a_file_name_with_a_newline_cannot_forge_log_lines(setup):
    tmp, d, keys, pol, path = setup
    forged = d / 'evil\n{"@level":"info","@message":"all good"}'
    forged.write_text("#!/bin/sh\n")
    forged.chmod(0o755)
    Path(str(forged) + ".manifest.json").write_text("{}")
    proc = R.run(R.launcher(tmp, pol))
    assert proc.stdout == b"ran good \n", proc.stderr
    assert len(proc.stderr.splitlines()) == len(R.hclog_lines(proc.stderr))
    assert not any(ln["@message"] == "all good" for ln in R.hclog_lines(proc.stderr))
    (line,) = [ln for ln in R.hclog_lines(proc.stderr) if "rejected candidate" in ln["@message"]]
    assert "\\n" in line["@message"] and "\n" not in line["@message"]


def test_junk_files_are_summarised_not_logged_one_by_one(setup):
    tmp, d, keys, pol, path = setup
    for i in range(40):
        (d / f"junk-{i:03d}.manifest.json").write_text("{}")
    proc = R.run(R.launcher(tmp, pol))
    assert proc.stdout == b"ran good \n", proc.stderr
    errors = [ln for ln in R.hclog_lines(proc.stderr) if ln["@level"] == "error"]
    assert len(errors) == 11, [e["@message"] for e in errors]
    assert errors[-1]["@message"].startswith("vault-plugin-shim: 30 more rejected candidates")
    assert "doctor" in errors[-1]["fix"]


def test_an_older_expired_version_is_not_an_error_while_a_newer_one_runs(setup):
    tmp, d, keys, pol, path = setup
    old = R.script_plugin(d / "myplugin-0.9.0", "old")
    R.release(keys, old, version="0.9.0", issued=1, expires=2)
    proc = R.run(R.launcher(tmp, pol))
    assert proc.stdout == b"ran good \n", proc.stderr
    levels = {ln["@message"].split(":")[1].strip(): ln["@level"] for ln in R.hclog_lines(proc.stderr)
              if "rejected candidate" in ln["@message"]}
    assert list(levels.values()) == ["debug"], levels
    # with nothing newer to run, the same expiry is an error
    path.unlink()
    proc = R.run(R.launcher(tmp, pol, name="launcher2"))
    failed(proc)


# --- fuzz: random plugin directories through the real launch path ----------------------

NAMES = st.sampled_from(["myplugin-1.0.0", "myplugin-2.0.0", "x", "a\nb", "é", ".hidden", "-dash"])


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(files=st.lists(st.tuples(NAMES, st.sampled_from(["binary", "manifest", "sig", "dir", "link", "fifo"]),
                                st.binary(max_size=300), st.sampled_from([0o755, 0o644, 0o777, 0o600, 0o000])),
                      max_size=8))
def test_fuzz_random_plugin_directories_end_in_named_errors(tmp_path_factory, files):
    tmp = tmp_path_factory.mktemp("fuzz")
    d = tmp / "plugins"
    d.mkdir(mode=0o755)
    keys = R.new_keys()
    R.release(keys, R.script_plugin(d / "myplugin-1.0.0", "good"), version="1.0.0")
    for name, kind, data, mode in files:
        target = d / (name + {"binary": "", "manifest": ".manifest.json", "sig": ".manifest.json.minisig",
                              "dir": ".manifest.json", "link": ".manifest.json", "fifo": ".manifest.json"}[kind])
        if os.path.lexists(target):
            continue
        if kind == "dir":
            target.mkdir()
        elif kind == "link":
            os.symlink("/etc/passwd", target)
        elif kind == "fifo":
            os.mkfifo(target)
        else:
            target.write_bytes(data)
            target.chmod(mode)
    proc = R.run(R.launcher(tmp, R.policy(d, keys)), timeout=60)
    assert b"Traceback" not in proc.stderr, proc.stderr.decode(errors="replace")
    assert len(proc.stderr.splitlines()) == len(R.hclog_lines(proc.stderr)), proc.stderr
    if proc.returncode == 0:
        assert proc.stdout.startswith(b"ran "), proc.stdout
    else:
        assert proc.stdout == b""
        for ln in R.hclog_lines(proc.stderr):
            if ln["@level"] == "error":
                assert ln.get("reason") and ln.get("fix"), ln
    shutil.rmtree(tmp, ignore_errors=True)


def test_the_interrupt_signal_is_not_ignored_by_the_plugin(setup):
    """Handling SIGINT in the launcher must not leave it ignored in the plugin it execs."""
    tmp, d, keys, pol, path = setup
    path.write_text("#!/bin/sh\ngrep SigIgn /proc/self/status\n")
    R.release(keys, path, version="1.0.0")
    proc = R.run(R.launcher(tmp, pol))
    ignored = int(proc.stdout.split()[1], 16)
    assert not ignored & (1 << (signal.SIGINT - 1)), proc.stdout


def test_equal_precedence_is_decided_by_issue_time_or_refused(tmp_path):
    """semver ignores +build: 2.0.0+a and 2.0.0+b are the same version. The newer signed
    issued_at runs, whatever the file names; with equal issue times both are refused."""
    d = tmp_path / "plugins"
    d.mkdir(mode=0o755)
    keys = R.new_keys()
    pol = R.policy(d, keys)
    # the file name that sorts first is the older build: a choice by name would run it
    R.release(keys, R.script_plugin(d / "myplugin-2.0.0-aaa", "older"), version="2.0.0+aaa", issued=1000)
    R.release(keys, R.script_plugin(d / "myplugin-2.0.0-zzz", "newer"), version="2.0.0+zzz", issued=2000)
    R.release(keys, R.script_plugin(d / "myplugin-1.0.0", "one"), version="1.0.0")
    launcher = R.launcher(tmp_path, pol)
    assert R.run(launcher).stdout == b"ran newer \n"
    R.release(keys, d / "myplugin-2.0.0-aaa", version="2.0.0+aaa", issued=2000)  # now a tie
    proc = R.run(launcher)
    assert proc.stdout == b"ran one \n", proc.stderr
    ties = [ln for ln in R.hclog_lines(proc.stderr) if ln.get("error") == "AmbiguousVersionError"]
    assert {t["candidate"] for t in ties} == {"myplugin-2.0.0-zzz", "myplugin-2.0.0-aaa"}
    assert all(t["@level"] == "error" and "cannot tell which is newer" in t["reason"] for t in ties)


def test_a_bad_manifest_is_named_not_its_binary(setup):
    """The rejection line names the file that is wrong: here the manifest, a FIFO."""
    tmp, d, keys, pol, path = setup
    bad = R.script_plugin(d / "myplugin-2.0.0", "two")
    os.mkfifo(str(bad) + ".manifest.json")
    proc = R.run(R.launcher(tmp, pol))
    assert proc.stdout == b"ran good \n", proc.stderr
    (line,) = [ln for ln in R.hclog_lines(proc.stderr) if "rejected candidate" in ln["@message"]]
    assert line["@message"].startswith(f"vault-plugin-shim: rejected candidate {bad}.manifest.json: ")
    assert line["file"] == f"{bad}.manifest.json" and "not a regular file" in line["reason"]


@pytest.mark.parametrize("value", ["123", "['not', 'a', 'string']", "{'name': 'x'}"])
def test_a_launcher_whose_policy_is_not_a_string_under_inspect_and_doctor(setup, value):
    """Issue #17 case 10: a well-formed launcher whose embedded POLICY is not a string (only a
    hand-made file can be) is named as damaged, with no traceback."""
    import io
    import zipfile

    from shim.launch import build, stubs

    tmp, d, keys, pol, path = setup
    launcher = R.launcher(tmp, pol)
    prefix, code, _ = stubs.unpack(launcher.read_bytes())
    out = io.BytesIO()
    with zipfile.ZipFile(io.BytesIO(code)) as src, zipfile.ZipFile(out, "w") as dst:
        for item in src.infolist():
            data = src.read(item)
            if item.filename == build.MAIN:
                text = data.decode()
                start = text.index("POLICY = ")
                end = text.index("\n", start)
                data = (text[:start] + f"POLICY = {value}" + text[end:]).encode()
            dst.writestr(item, data)
    launcher.write_bytes(stubs.pack(stubs.stub_bytes(), prefix, out.getvalue()))
    for args in (["launcher", "inspect", str(launcher)], ["doctor", "--launcher", str(launcher)]):
        proc = subprocess.run([sys.executable, "-m", "shim.cli", *args], capture_output=True, text=True,
                              timeout=60, cwd="/")
        assert proc.returncode != 0 and "Traceback" not in proc.stderr, proc.stderr
        assert "holds an invalid policy" in proc.stdout + proc.stderr or \
            "not a vault-plugin-shim launcher" in proc.stdout + proc.stderr, proc.stdout + proc.stderr
    errors = failed(R.run(launcher), file=False)  # and Vault's launch of it: one hclog line, no traceback
    assert "not JSON text" in errors[-1]["@message"] + errors[-1].get("reason", ""), errors
