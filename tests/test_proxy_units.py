"""Proxy mode's pure parts and its janitor, without Vault or a plugin (the frame router's
core is tested in test_h2route.py)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from shim.goplugin import handshake as hs
from shim.launch.child import child_environment
from shim.goplugin.janitor import Janitor, Ledger

ROOT = Path(__file__).resolve().parent.parent


def test_child_environment_drops_what_the_launcher_owns():
    vault = {"VAULT_BACKEND_PLUGIN": "cookie", hs.ENV_PROTOCOL_VERSIONS: "5", hs.ENV_CLIENT_CERT: "PEM",
             hs.ENV_UNIX_SOCKET_DIR: "/vault/sock", hs.ENV_UNIX_SOCKET_GROUP: "vault",
             hs.ENV_MULTIPLEX_GRPC: "true", "VAULT_PLUGIN_AUTOMTLS_ENABLED": "true", "TMPDIR": "/tmp",
             "VAULT_VERSION": "1.17.0", hs.ENV_MIN_PORT: "10000"}
    env = child_environment(vault, "/tmp/vps.x/c")
    assert hs.ENV_CLIENT_CERT not in env  # plaintext to the child: see README, proxy mode
    assert hs.ENV_UNIX_SOCKET_GROUP not in env and hs.ENV_MULTIPLEX_GRPC not in env
    assert env[hs.ENV_UNIX_SOCKET_DIR] == env["TMPDIR"] == "/tmp/vps.x/c"
    # an SDK plugin must still skip its legacy (unwrap-token) TLS path
    assert env["VAULT_PLUGIN_AUTOMTLS_ENABLED"] == "true"
    for key in ("VAULT_BACKEND_PLUGIN", hs.ENV_PROTOCOL_VERSIONS, "VAULT_VERSION", hs.ENV_MIN_PORT):
        assert env[key] == vault[key]


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
