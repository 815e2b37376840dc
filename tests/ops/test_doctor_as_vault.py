"""`doctor` takes Vault's view (#13): proxy launchers are not failures, the launcher's own
interpreter is checked for what its mode imports, a root doctor checks ownership and
readability as the Vault user, and a refused memfd with a noexec TMPDIR is a failure."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import tempfile

import pytest

from shim.launch.build import write_launcher
from shim.ops.doctor import _memfd_finding, diagnose, exit_code, render
from tests.support.releases import launcher, new_keys, policy, release, script_plugin
from tests.launch.test_launch_failures import _interpreter_without_grpc


@pytest.fixture
def setup(tmp_path):
    keys = new_keys()
    plugins = tmp_path / "versions"
    plugins.mkdir(mode=0o755)
    (tmp_path / "plugins").mkdir()
    release(keys, script_plugin(plugins / "myplugin-1.0.0", "one"), version="1.0.0")
    return tmp_path, keys, plugins


def by(findings, check):
    return [f for f in findings if f.check == check]


def test_a_proxy_launcher_is_diagnosed_not_failed(setup):
    tmp, keys, plugins = setup
    lau = launcher(tmp / "plugins", policy(plugins, keys).replace(mode="proxy"), name="shim")
    findings = diagnose(str(lau))
    assert exit_code(findings) == 0, render(findings)
    (interp,) = by(findings, "interpreter")
    assert interp.status == "ok" and "grpc" in interp.message and "proxy mode" in interp.message


def test_a_proxy_launcher_whose_interpreter_lacks_grpc_fails_with_the_fix(setup):
    tmp, keys, plugins = setup
    python = _interpreter_without_grpc(tmp)
    lau = tmp / "plugins" / "shim"
    write_launcher(policy(plugins, keys).replace(mode="proxy"), str(python), str(lau))
    findings = diagnose(str(lau))
    (interp,) = by(findings, "interpreter")
    assert interp.status == "fail" and "grpc" in interp.message and "grpcio" in interp.fix, render(findings)


def test_as_root_it_checks_as_the_vault_user(setup):
    """Root can read a 0600 root-owned manifest; the Vault user cannot, so its launch would
    fail. A file owned by the Vault user is fine for Vault, though root's own uid would
    reject it."""
    if os.geteuid() != 0:
        pytest.fail("this test needs root (CI runs as root)", pytrace=False)
    tmp, keys, plugins = setup
    lau = launcher(tmp / "plugins", policy(plugins, keys), name="shim")
    vault = 4242
    os.chown(plugins / "myplugin-1.0.0", vault, vault)  # owned by the Vault user: allowed
    assert exit_code(diagnose(str(lau), uid=vault)) == 0
    assert exit_code(diagnose(str(lau))) == 1  # as root itself, that file has a stranger's uid
    os.chown(plugins / "myplugin-1.0.0", 0, 0)
    os.chmod(plugins / "myplugin-1.0.0.manifest.json", 0o600)
    findings = diagnose(str(lau), uid=vault)
    bad = [f for f in by(findings, "plugins-dir") if f.status == "fail"]
    assert bad and "cannot be read by uid 4242" in bad[0].message, render(findings)
    assert by(findings, "vault-user")[0].status == "fail"
    (verdict,) = by(findings, "next-launch")
    assert verdict.status == "fail" and "running as uid 4242" in verdict.message, render(findings)
    assert verdict.subject == str(plugins / "myplugin-1.0.0.manifest.json")
    assert exit_code(diagnose(str(lau), uid=0)) == 0
    (verdict,) = by(diagnose(str(lau), uid=0), "next-launch")
    assert verdict.status == "ok", "root's own launch reads it"


@contextlib.contextmanager
def noexec_tmpfs():
    where = tempfile.mkdtemp(prefix="noexec-")
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "noexec,size=4m,mode=0700", "tmpfs", where],
                          capture_output=True, text=True)
    if done.returncode != 0:
        os.rmdir(where)
        pytest.fail(f"cannot mount a noexec tmpfs here (needs root): {done.stderr}", pytrace=False)
    try:
        yield where
    finally:
        subprocess.run(["umount", where], check=True)
        os.rmdir(where)


def test_memfd_noexec_2_with_a_noexec_tmpdir_is_a_failure(tmp_path):
    sysctl = tmp_path / "memfd_noexec"
    sysctl.write_text("2\n")
    with noexec_tmpfs() as where:
        out = []
        _memfd_finding(out, where, proc=str(sysctl))
        (f,) = out
        assert f.status == "fail" and "noexec" in f.message and "TMPDIR" in f.fix
    out = []
    _memfd_finding(out, str(tmp_path), proc=str(sysctl))
    assert [f.status for f in out] == ["info"]


def test_a_real_noexec_tmpdir_makes_the_fallback_say_so(tmp_path):
    """The kernel refuses to execute the private copy on a noexec tmpfs: the launcher's fix
    names TMPDIR (memfd exec refusal is injected; the noexec refusal is the kernel's)."""
    from tests.launch.test_launch_exec import run_patched

    d = tmp_path / "plugins"
    d.mkdir(mode=0o755)
    keys = new_keys()
    release(keys, script_plugin(d / "myplugin-1.0.0", "good"), version="1.0.0")
    patch = ("import errno\nreal = M.fexecve\ncalls = []\n"
             "def fexecve(fd, argv, env, *, script):\n"
             "    calls.append(fd)\n"
             "    if len(calls) == 1:\n"
             "        raise PermissionError(errno.EACCES, 'memfd exec refused')\n"
             "    return real(fd, argv, env, script=script)\n"
             "M.fexecve = fexecve\n")
    with noexec_tmpfs() as where:
        # a shell script runs anyway (its interpreter reads it); a noexec mount stops ELF exec
        import shutil

        shutil.copy("/bin/true", d / "myplugin-1.0.0")
        release(keys, d / "myplugin-1.0.0", version="1.0.0")
        proc = run_patched(policy(d, keys), patch, tmp_path, env={"TMPDIR": where})
    assert proc.returncode == 1 and proc.stdout == b"" and b"Traceback" not in proc.stderr, proc.stderr
    import json

    final = json.loads(proc.stderr.splitlines()[-1])
    assert "cannot execute the verified copy" in final["reason"] and "mounted noexec" in final["fix"], final


def test_doctor_shows_a_hot_swapping_launchers_pending_and_refused_swaps(setup):
    """A hot-swap launcher publishes its state in its private directory under Vault's
    TMPDIR for the plugin; doctor shows what it runs, a pending swap and why one was refused."""
    from shim.launch import swapstatus

    tmp, keys, plugins = setup
    lau = tmp / "plugins" / "shim"
    write_launcher(policy(plugins, keys).replace(mode="proxy"), sys.executable, str(lau), hot_swap=True)
    run_dir = tmp / "vault-tmp"
    (run_dir / "vps.doctortest").mkdir(parents=True, mode=0o700)
    board = swapstatus.StatusBoard("myplugin", str(run_dir / "vps.doctortest"))
    try:
        board.update(running={"version": "1.0.0", "file": str(plugins / "myplugin-1.0.0")}, watching="inotify",
                     pending={"version": "2.0.0", "file": str(plugins / "myplugin-2.0.0"), "state": "starting"},
                     refused=[{"version": "1.5.0", "file": str(plugins / "myplugin-1.5.0"),
                               "reason": "SpecialPaths differ from what Vault cached", "level": "warn"}])
        findings = diagnose(str(lau), tmpdir=str(run_dir))
    finally:
        board.close()
    swaps = by(findings, "hot-swap")
    assert any(f.status == "ok" and "runs version 1.0.0" in f.message for f in swaps), render(findings)
    assert any(f.status == "info" and "swap pending to 2.0.0" in f.message for f in swaps), render(findings)
    assert any(f.status == "warn" and "SpecialPaths differ" in f.message for f in swaps), render(findings)
    (interp,) = by(findings, "interpreter")
    assert "watchdog.observers" in interp.message
    assert by(findings, "next-launch")[0].status == "ok", "a version that needs a reload launches fine"


def test_doctor_says_the_next_launch_runs_a_version_hot_swap_refused(setup):
    """Issue #17 case 1: a refusal lives only in the launcher that refused; the next launch
    (a crash, a reload, a restart) selects afresh and starts that version. doctor says so."""
    from shim.launch import swapstatus

    tmp, keys, plugins = setup
    release(keys, script_plugin(plugins / "myplugin-3.0.0", "three"), version="3.0.0")
    lau = tmp / "plugins" / "shim"
    write_launcher(policy(plugins, keys).replace(mode="proxy"), sys.executable, str(lau), hot_swap=True)
    run_dir = tmp / "vault-tmp"
    (run_dir / "vps.doctortest").mkdir(parents=True, mode=0o700)
    board = swapstatus.StatusBoard("myplugin", str(run_dir / "vps.doctortest"))
    try:
        board.update(running={"version": "1.0.0", "file": str(plugins / "myplugin-1.0.0")}, watching="inotify",
                     refused=[{"version": "3.0.0", "file": str(plugins / "myplugin-3.0.0"),
                               "reason": "it did not answer Setup within 10 s", "level": "error"}])
        findings = diagnose(str(lau), tmpdir=str(run_dir))
    finally:
        board.close()
    (verdict,) = by(findings, "next-launch")
    assert verdict.status == "fail" and "which a running launcher's hot swap refused" in verdict.message, \
        render(findings)
    assert "did not answer Setup" in verdict.message and "remove that release" in verdict.fix
    refused = [f for f in by(findings, "hot-swap") if "swap to 3.0.0" in f.message]
    assert refused and "the plugin's next launch starts it" in refused[0].message
