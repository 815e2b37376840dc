"""A real OpenBao server (dev mode, `bao` 2.7.2) SIGKILLed while proxy-mode launchers serve
its mounts: every launcher, janitor and plugin exits, and every socket directory goes,
within the bound the README states (tests/proxy/test_proxy_lifecycle.py: VAULT_GONE_BOUND).

Everything an operator does goes through the project's CLI (keygen, sign, launcher build
--mode proxy, register) and `bao`. The module has its own server: the test kills it.
"""

from __future__ import annotations

import os
import shutil
import signal
import time
from pathlib import Path

from shim.demo.bao import descendants
from tests.support import baoplugins as bp
from tests.support import openbao
from tests.support.wait import wait_until
from tests.proxy.test_proxy_lifecycle import VAULT_GONE_BOUND, alive, wait_gone

NAME = "proxied-kv"
MOUNTS = ("px-a", "px-b")  # two mounts: two launchers, each with its own socket directory


def launcher_tree(server) -> set[int]:
    return {p for p in descendants(server.pid) if alive(p)}


def bound_by(pid: int, directory: Path) -> set[str]:
    """Names in ``directory`` of the unix sockets that process ``pid`` holds."""
    paths = {}
    with open("/proc/net/unix") as f:
        for line in f.read().splitlines()[1:]:
            fields = line.split()
            if len(fields) >= 8 and os.path.dirname(fields[7]) == str(directory):
                paths[fields[6]] = os.path.basename(fields[7])
    names = set()
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            link = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:
            continue
        if link.startswith("socket:[") and link[8:-1] in paths:
            names.add(paths[link[8:-1]])
    return names


def test_openbao_sigkill_leaves_no_launcher_janitor_plugin_or_socket(bao_dev, tmp_path_factory, tmp_path):
    server = bao_dev
    binary = openbao.build_plugin("secret", "1.0.0", tmp_path / "bin", bp.cache_dir(tmp_path_factory))
    rel = openbao.Release(server, tmp_path / "release", NAME, extra_build=("--mode", "proxy"))
    dest = rel.versions / "secret-1.0.0"
    shutil.copyfile(binary, dest)
    dest.chmod(0o755)
    rel.add(dest, "1.0.0")
    done = rel.register()
    assert done.returncode == 0, done.stdout + done.stderr
    tmp_before = set(os.listdir(server.tmpdir))
    for mount in MOUNTS:
        bp.enable(server, "secret", NAME, mount)
        answer = bp.read(server, f"{mount}/version")
        assert answer is not None and answer["version"] == "v1.0.0", answer

    pids = launcher_tree(server)
    # per mount at least: launcher, janitor, plugin (OpenBao may run more, e.g. for the version probe)
    assert len(pids) >= 3 * len(MOUNTS), {p: Path(f"/proc/{p}/cmdline").read_bytes()[:80] for p in pids}
    # OpenBao's own broker listeners (Storage, SystemView) are its sockets, not ours: a
    # SIGKILLed OpenBao leaves them, with or without the shim.
    openbao_own = bound_by(server.pid, server.tmpdir)
    ours = sorted(set(os.listdir(server.tmpdir)) - tmp_before - openbao_own)
    assert len([n for n in ours if n.startswith("vps.")]) >= len(MOUNTS), ours

    os.kill(server.pid, signal.SIGKILL)
    killed = time.monotonic()
    server.kill()  # reaps it
    took = wait_gone(pids, deadline=max(20.0, 4 * VAULT_GONE_BOUND))

    def ours_left() -> list[str]:
        return sorted(set(os.listdir(server.tmpdir)) - tmp_before - openbao_own)

    wait_until(lambda: not ours_left(), "the launchers' files in OpenBao's TMPDIR to be removed",
               deadline=max(0.0, killed + 4 * VAULT_GONE_BOUND - time.monotonic()), poll=0.02,
               detail=lambda: f"left in OpenBao's TMPDIR: {ours_left()}")
    cleaned = time.monotonic() - killed
    left = ours_left()
    print(f"OpenBao SIGKILL -> processes gone after {took:.2f} s, sockets after {cleaned:.2f} s")
    assert left == [], f"left in OpenBao's TMPDIR: {left}"
    assert max(took, cleaned) < VAULT_GONE_BOUND
