"""Proxy mode's pure parts and its janitor, without Vault or a plugin (the frame router's
core is tested in tests/goplugin/test_h2route.py)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from shim.goplugin import handshake as hs
from shim.goplugin.janitor import Janitor, Ledger
from shim.launch.environment import VaultEnvironment

ROOT = Path(__file__).resolve().parents[2]


def test_child_environment_drops_what_the_launcher_owns():
    vault = {"VAULT_BACKEND_PLUGIN": "cookie", hs.ENV_PROTOCOL_VERSIONS: "5", hs.ENV_CLIENT_CERT: "PEM",
             hs.ENV_UNIX_SOCKET_DIR: "/vault/sock", hs.ENV_UNIX_SOCKET_GROUP: "vault",
             hs.ENV_MULTIPLEX_GRPC: "true", "VAULT_PLUGIN_AUTOMTLS_ENABLED": "true", "TMPDIR": "/tmp",
             "VAULT_VERSION": "1.17.0", hs.ENV_MIN_PORT: "10000"}
    env = VaultEnvironment.parse(vault).for_child("/tmp/vps.x/c")
    assert hs.ENV_CLIENT_CERT not in env  # plaintext to the child: see README, proxy mode
    assert hs.ENV_UNIX_SOCKET_GROUP not in env and hs.ENV_MULTIPLEX_GRPC not in env
    assert env[hs.ENV_UNIX_SOCKET_DIR] == env["TMPDIR"] == "/tmp/vps.x/c"
    # an SDK plugin must still skip its legacy (unwrap-token) TLS path
    assert env["VAULT_PLUGIN_AUTOMTLS_ENABLED"] == "true"
    for key in ("VAULT_BACKEND_PLUGIN", hs.ENV_PROTOCOL_VERSIONS, "VAULT_VERSION", hs.ENV_MIN_PORT):
        assert env[key] == vault[key]


def test_vaults_environment_is_read_once_into_what_the_proxy_and_the_child_use():
    from dataclasses import FrozenInstanceError

    from shim.goplugin.vault import BACKEND_COOKIE, DATABASE_COOKIE

    vault = VaultEnvironment.parse({DATABASE_COOKIE[0]: DATABASE_COOKIE[1], hs.ENV_PROTOCOL_VERSIONS: "5,x,6",
                                    hs.ENV_CLIENT_CERT: "PEM", hs.ENV_UNIX_SOCKET_DIR: "/vault/sock",
                                    hs.ENV_UNIX_SOCKET_GROUP: "", "TMPDIR": "/var/tmp"})
    assert (vault.cookie, vault.protocol_versions) == (DATABASE_COOKIE, (5, 6))
    assert (vault.client_cert, vault.socket_dir, vault.socket_group, vault.tmpdir) == (
        "PEM", "/vault/sock", None, "/var/tmp")   # empty is unset
    with pytest.raises(FrozenInstanceError):
        vault.tmpdir = "/elsewhere"
    with pytest.raises(TypeError):
        vault.variables["TMPDIR"] = "/elsewhere"
    # no cookie: the backend's key, with a value the plugin's go-plugin refuses
    bare = VaultEnvironment.parse({})
    assert bare.cookie == (BACKEND_COOKIE[0], "unset") and bare.protocol_versions == ()
    assert (bare.client_cert, bare.socket_dir, bare.tmpdir) == (None, None, None)


def test_the_launch_rooms_errors_are_launch_errors():
    """cli.main catches ShimError: every error the launch path raises on purpose is one, the
    two that once were go-plugin's included (an exec refused, Vault gone)."""
    from shim.errors import ShimError
    from shim.goplugin.errors import GoPluginError
    from shim.launch import errors

    for cls in (errors.ExecRefusedError, errors.VaultGoneError, errors.SwapError, errors.NativeRefusal):
        assert issubclass(cls, errors.LaunchError) and issubclass(cls, ShimError)
        assert not issubclass(cls, GoPluginError), cls


def test_vault_gone_while_the_proxy_starts_is_a_warning_and_exit_1(monkeypatch, capfd):
    """VaultGoneError left GoPluginError for LaunchError: proxy.run still takes it for what it
    is (Vault went away: a WARN, exit 1), not for a failure to start (an ERROR)."""
    from shim.goplugin import mtls
    from shim.launch import proxy
    from shim.launch.errors import VaultGoneError

    def gone(self):
        self.vault_gone = True
        raise VaultGoneError("the process that started this launcher (pid 1) has exited")

    monkeypatch.setattr(proxy.Proxy, "_watch_vault", gone)
    env = {"VAULT_BACKEND_PLUGIN": "x", hs.ENV_CLIENT_CERT: mtls.generate_identity().cert_pem.decode()}
    assert proxy.run(0, ["unused"], env, signals=False) == 1
    err = capfd.readouterr().err
    assert "not started: Vault has exited" in err and "cannot start" not in err, err


def test_ledger_tracks_additions_and_retractions():
    ledger = Ledger()
    for line in (b"+dir /a\n", b"+file /a/s\n", b"+pgid 123\n", b"-pgid 123\n", b"+dir /a\n", b"bogus\n",
                 b"+pgid", b"-file /never\n"):
        ledger.feed(line)
    assert ledger.items == {"dir": ["/a"], "file": ["/a/s"], "pgid": []}
    assert Ledger.line("+", "dir", "/x y") == b"+dir /x y\n"


def test_ledger_cleanup_kills_the_group_and_removes_paths(tmp_path):
    d = tmp_path / "made"
    d.mkdir()
    (d / "sock").write_text("")
    proc = subprocess.Popen(["sleep", "300"], process_group=0)
    ledger = Ledger()
    for line in (Ledger.line("+", "dir", d), Ledger.line("+", "pgid", proc.pid)):
        ledger.feed(line)
    done = ledger.cleanup()
    assert proc.wait(5) == -9
    assert not d.exists()
    assert done == {"dir": [str(d)], "file": [], "pgid": [str(proc.pid)]}


def test_janitor_cleans_up_when_its_pipe_closes(tmp_path, capfd):
    d = tmp_path / "leftover"
    d.mkdir()
    janitor = Janitor()
    janitor.check()
    janitor.add("dir", d)
    janitor.close()  # as if the launcher had been SIGKILLed
    assert janitor.proc.returncode == 0
    assert not d.exists()
    assert "cleaned up after the launcher ended" in capfd.readouterr().err


def test_janitor_is_quiet_when_nothing_is_left(capfd):
    janitor = Janitor()
    janitor.check()
    janitor.close()
    assert capfd.readouterr().err == ""


def test_exec_mode_stays_import_light():
    code = ("import sys, shim.launch.entry; "
            "bad = [m for m in ('grpc', 'cryptography', 'shim.launch.proxy') if m in sys.modules]; "
            "sys.exit(str(bad) if bad else 0)")
    res = subprocess.run([sys.executable, "-I", "-c", code], cwd=ROOT, capture_output=True, text=True,
                         env={"PATH": os.environ.get("PATH", "/usr/bin:/bin")})
    assert res.returncode == 0, res.stderr + res.stdout


FORK_PROBE = """
import asyncio, os, subprocess, sys
sys.path.insert(0, {root!r})
if {launcher!r}:
    import shim.launch.proxy  # noqa: F401  (first, as a proxy launch imports it before grpc)
import grpc
from shim.launch.child import _child_setup

async def main():
    server = grpc.aio.server()
    server.add_insecure_port("127.0.0.1:0")
    await server.start()
    r, w = os.pipe()
    setup = _child_setup(os.getpid(), None)

    def pre():
        setup()
        os.write(w, b"%d " % len(os.listdir("/proc/self/task")))

    for _ in range(3):
        subprocess.Popen(["true"], preexec_fn=pre, pass_fds=(w,), close_fds=True).wait()
    os.close(w)
    print(os.read(r, 100).decode().split())
    await server.stop(None)

asyncio.run(main())
"""


@pytest.mark.parametrize("launcher", [True, False], ids=["launcher", "grpc-alone"])
def test_the_forked_child_runs_no_grpc_thread_before_its_exec(launcher):
    """A CI run lost a swap to this: the new child died of SIGABRT before exec, with gRPC's
    'Epoll1Poller ... epoll_wait error: Bad file descriptor' as its last stderr line. gRPC's
    fork handlers had restarted its threads in the child, and the child's close_fds closed
    their epoll descriptor. With grpc alone (the control) they are there; in the launcher
    they must not be."""
    import ast

    env = {k: v for k, v in os.environ.items() if not k.startswith("GRPC_")}
    done = subprocess.run([sys.executable, "-c", FORK_PROBE.format(root=str(ROOT), launcher=launcher)],
                          capture_output=True, text=True, timeout=60, env=env)
    assert done.returncode == 0, done.stderr
    threads = [int(n) for n in ast.literal_eval(done.stdout.strip().splitlines()[-1])]
    if launcher:
        assert threads == [1, 1, 1], f"threads in the forked child before exec: {threads}"
    else:
        assert min(threads) > 1, (f"grpcio no longer restarts threads in a forked child ({threads}): "
                                  "this control, and the GRPC_ENABLE_FORK_SUPPORT line in shim/launch/proxy.py, "
                                  "can be revisited")
