"""Hot swap's own decisions and its replay (shim.launch.swap), without Vault.

The replay runs against real go-plugin 1.0.1 processes (tests/swapplugin, a secrets engine
built with a fault on purpose), started by our PluginClient as a host would start them; the
set-up calls replayed are those a real OpenBao made (tests/data/h2rec).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from shim.goplugin import grpcutil, handshake as hs
from shim.goplugin.broker import ConnInfo
from shim.goplugin.client import PluginClient
from shim.launch import capture as cap, sealed, swap, swapstatus
from tests.support import swap as S
from tests.swap.test_h2capture import plans, recording

ROOT = Path(__file__).resolve().parents[2]


def rel(version="2.0.0", sha="ab" * 32, issued=100.0, file="/p/plugin-2.0.0"):
    return swap.Release(version, sha, issued, file, "0123456789ABCDEF")


# --- decisions -------------------------------------------------------------------------

def test_the_same_signed_bytes_under_another_name_is_no_swap():
    running = rel(file="/p/plugin-2.0.0")
    memory = swap.Memory()
    assert swap.decide(running, rel(file="/p/copy-of-2.0.0"), memory) == swap.KEEP
    assert swap.decide(running, rel(issued=101.0), memory) == swap.SWAP      # re-signed: a new release
    assert swap.decide(running, rel(version="3.0.0", sha="cd" * 32), memory) == swap.SWAP


def test_a_failed_release_is_not_tried_again_until_it_changes():
    running, bad = rel(), rel(version="3.0.0", sha="cd" * 32)
    memory = swap.Memory()
    memory.remember(bad, "exited during Setup", "error", 5.0)
    assert swap.decide(running, bad, memory) == swap.REMEMBERED
    assert swap.decide(running, rel(version="3.0.0", sha="ef" * 32), memory) == swap.SWAP  # a new build
    assert swap.decide(running, rel(version="3.0.0", sha="cd" * 32, issued=7.0), memory) == swap.SWAP
    assert memory.entries()[0]["reason"] == "exited during Setup"


# --- the status doctor reads --------------------------------------------------------------

def test_the_status_is_found_under_tmpdir_and_replaced_whole(tmp_path):
    base = tmp_path / "vps.abc123"
    base.mkdir(mode=0o700)
    board = swapstatus.StatusBoard("statustest-plugin", str(base))
    board.update(running=rel().brief(), watching="inotify", refused=[])
    found = swapstatus.find_status("statustest-plugin", str(tmp_path))
    assert [s["pid"] for s in found] == [os.getpid()]
    assert found[0]["running"]["version"] == "2.0.0"
    board.update(pending={**rel(version="3.0.0").brief(), "state": "starting"},
                 refused=[{"version": "2.5.0", "file": "/p/x", "reason": "SpecialPaths differ", "level": "warn"}])
    state = swapstatus.find_status("statustest-plugin", str(tmp_path))[0]
    assert state["pending"]["state"] == "starting"
    assert sorted(os.listdir(base)) == [swapstatus.STATUS_FILE]   # no temporary file left
    assert (base / swapstatus.STATUS_FILE).stat().st_mode & 0o077 == 0
    lines = swapstatus.describe_status(state)
    assert ("info", "swap pending to 3.0.0 (/p/plugin-2.0.0): starting") in lines
    assert any(level == "warn" and "SpecialPaths differ" in text for level, text in lines)
    assert swapstatus.find_status("another-plugin", str(tmp_path)) == []
    board.close()
    assert swapstatus.find_status("statustest-plugin", str(tmp_path)) == [] and os.listdir(base) == []


def test_a_status_left_by_a_dead_launcher_or_a_symlink_is_ignored(tmp_path):
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                          text=True, check=True)
    base = tmp_path / "vps.dead"
    base.mkdir()
    (base / swapstatus.STATUS_FILE).write_text(json.dumps({"plugin": "p", "pid": int(dead.stdout)}))
    link = tmp_path / "vps.link"
    link.mkdir()
    target = tmp_path / "elsewhere.json"
    target.write_text(json.dumps({"plugin": "p", "pid": os.getpid()}))
    (link / swapstatus.STATUS_FILE).symlink_to(target)
    assert swapstatus.find_status("p", str(tmp_path)) == []


def test_doctor_can_read_the_status_without_grpc():
    code = ("import sys, shim.launch.swap, shim.launch.swapstatus as s; s.find_status('x', '/nonexistent'); "
            "print(sorted(m for m in sys.modules if m.split('.')[0] in ('grpc', 'watchdog')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, check=True)
    assert out.stdout.strip() == "[]"


# --- replay against real plugin processes --------------------------------------------------

@pytest.fixture(scope="module")
def faults(tmp_path_factory):
    from tests.support import baoplugins as bp

    cache = bp.cache_dir(tmp_path_factory)
    out = tmp_path_factory.mktemp("faults")
    return {f: S.fault_plugin(cache, out, f, "3.0.0") for f in ("none", "exit-in-setup", "hang-in-setup",
                                                               "setup-error", "special-paths", "type")}


@pytest.fixture(scope="module")
def mount_plan():
    """What a real OpenBao mount of the demo secrets engine leaves to replay."""
    seen = plans(recording("openbao-secret-mount.jsonl"), cap.SetupCapture("secret"))
    plan = [p for p in seen if p.replay and not p.in_flight][-1]
    assert [c.path for c in plan.replay] == [cap.SETUP, cap.INITIALIZE]
    return plan


@pytest.fixture
def host_side(tmp_path):
    """A listener standing where Vault's broker id serves Storage (the plugin only dials it)."""
    sock_dir = Path(tempfile.mkdtemp(prefix="swapu", dir="/tmp"))
    server = grpcutil.new_server(2)
    path = str(sock_dir / "storage.sock")
    grpcutil.bind_unix(server, path)
    server.start()
    yield path
    server.stop(0)
    for p in sock_dir.iterdir():
        p.unlink()
    sock_dir.rmdir()


@pytest.fixture
def start(tmp_path):
    clients = []

    def run(binary: Path) -> PluginClient:
        client = PluginClient([str(binary)], hs.HandshakeConfig(hs.VAULT_BACKEND.cookie_key,
                                                                hs.VAULT_BACKEND.cookie_value, (5,)),
                              auto_mtls=False, env={"TMPDIR": str(tmp_path)}, start_timeout=30)
        clients.append(client)
        client.connect()
        return client

    yield run
    for c in clients:
        c.kill(0.5)


def exit_detail(client: PluginClient):
    def detail():
        if not client.exited():
            return None
        info = os.waitid(os.P_PID, client.proc.pid, os.WEXITED | os.WNOHANG | os.WNOWAIT)
        return f"exit status {info.si_status}" if info else "exited"
    return detail


def run_replay(client, plan, listener, timeout=5.0):
    return swap.replay(client.channel, plan, timeout=timeout, exit_detail=exit_detail(client),
                       announce=lambda bid: client.broker.announce(ConnInfo(bid, "unix", listener)))


def test_a_good_version_takes_the_replay_and_answers_as_vault_cached(faults, mount_plan, host_side, start):
    client = start(faults["none"])
    assert run_replay(client, mount_plan, host_side) == 2


@pytest.mark.parametrize("fault, error, text", [
    ("setup-error", swap.SwapError, "Setup answered an error: fault: this version refuses its configuration"),
    ("exit-in-setup", swap.SwapError, "exited during /pb.Backend/Setup (exit status 3)"),
    ("hang-in-setup", swap.SwapError, "did not answer /pb.Backend/Setup within 2 s"),
    ("special-paths", swap.NeedsReload, "SpecialPaths with unauthenticated=['open/*'], but Vault cached "
                                        "no special paths"),
    ("type", swap.NeedsReload, "Type with type 2, but Vault cached type 1"),
])
def test_a_bad_version_is_refused_with_the_reason(faults, mount_plan, host_side, start, fault, error, text):
    client = start(faults[fault])
    with pytest.raises(error) as info:
        run_replay(client, mount_plan, host_side, timeout=2.0)
    assert text in info.value.reason
    if error is swap.NeedsReload:
        assert "plugin reload" in info.value.fix


def test_an_unbridged_broker_id_fails_setup_with_the_plugins_own_words(faults, mount_plan, start):
    client = start(faults["none"])
    with pytest.raises(swap.SwapError, match="dial broker id 1: timeout"):
        swap.replay(client.channel, mount_plan, timeout=10.0, announce=lambda bid: None)


def test_a_file_replaced_between_verification_and_start_changes_nothing(faults, tmp_path):
    """A swap starts the new child from the sealed copy select_sealed hashed: replacing the
    file afterwards (here by another, validly built binary) does not change what runs."""
    import shutil
    import time

    from shim.launch.child import Child
    from shim.launch.environment import VaultEnvironment
    from tests.support import releases as R

    versions = tmp_path / "versions"
    versions.mkdir(mode=0o755)
    keys = R.new_keys()
    dst = versions / "myplugin-3.0.0"
    shutil.copyfile(faults["none"], dst)
    dst.chmod(0o755)
    R.release(keys, dst, version="3.0.0")
    cand, fd, _ = sealed.select_sealed(R.policy(versions, keys).replace(mode="proxy"), time.time(),
                                       tmpdir=str(tmp_path))
    tmp = versions / ".replacement"
    shutil.copyfile(faults["type"], tmp)
    tmp.chmod(0o755)
    os.replace(tmp, dst)
    child_dir = tmp_path / "c"
    child_dir.mkdir(mode=0o700)
    env = {hs.VAULT_BACKEND.cookie_key: hs.VAULT_BACKEND.cookie_value, hs.ENV_PROTOCOL_VERSIONS: "5",
           "PATH": os.environ.get("PATH", "/usr/bin:/bin")}
    child = Child(fd, [cand.path], VaultEnvironment.parse(env), str(child_dir), start_timeout=30)
    try:
        child.connect()
        assert child.channel.unary_unary(cap.TYPE)(b"", timeout=10) == b"\x08\x01"  # "type" would say 2
    finally:
        child.terminate()
        os.close(fd)


def test_a_release_still_being_copied_in_is_a_warning_in_a_rescan_and_an_error_at_launch(tmp_path, capfd):
    """Issue #17 case 12: a hot swap's rescan that meets a release whose binary is still being
    written (shorter than signed, changed a moment ago) says WARN and that the next rescan
    looks again; a launch, or a release that has not changed for a while, is an ERROR."""
    from tests.support.releases import new_keys, policy, release, script_plugin

    keys = new_keys()
    plugins = tmp_path / "versions"
    plugins.mkdir(mode=0o755)
    release(keys, script_plugin(plugins / "myplugin-1.0.0", "one"), version="1.0.0")
    v2 = script_plugin(plugins / "myplugin-2.0.0", "two")
    release(keys, v2, version="2.0.0")
    data = v2.read_bytes()
    v2.write_bytes(data[: len(data) // 2])  # half copied
    pol = policy(plugins, keys)

    def lines() -> list[dict]:
        return [json.loads(ln) for ln in capfd.readouterr().err.splitlines() if "rejected candidate" in ln]

    for rescan, level in ((True, "warn"), (False, "error")):
        cand, fd, _ = sealed.select_sealed(pol, time.time(), tmpdir=str(tmp_path), rescan=rescan)
        os.close(fd)
        assert str(cand.manifest.version) == "1.0.0"
        (line,) = lines()
        assert line["@level"] == level, line
        assert ("still being copied in" in line["@message"]) == rescan, line
    v2.write_bytes(data[:-1] + bytes([data[-1] ^ 1]))  # the signed size, other bytes: tampered, not growing
    cand, fd, _ = sealed.select_sealed(pol, time.time(), tmpdir=str(tmp_path), rescan=True)
    os.close(fd)
    (line,) = lines()
    assert line["@level"] == "error" and "still being copied" not in line["@message"], line
    v2.write_bytes(data[: len(data) // 2])
    old = time.time() - 60
    os.utime(v2, (old, old))
    for suffix in (".manifest.json", ".manifest.json.minisig"):
        os.utime(str(v2) + suffix, (old, old))
    cand, fd, _ = sealed.select_sealed(pol, time.time(), tmpdir=str(tmp_path), rescan=True)
    os.close(fd)
    (line,) = lines()
    assert line["@level"] == "error", "a release that stopped changing and is still wrong is an error"
