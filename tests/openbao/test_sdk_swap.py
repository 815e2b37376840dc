"""Hot swap of multiplexed SDK plugins on a real OpenBao: one plugin process serves several
mounts (database: several connections), and a signed v2 takes over all of them under load:
the secrets engine and the auth method on OpenBao's SDK, the secrets engine on HashiCorp's,
and the dbplugin v5 database plugin.

A multiplexed process holds one backend per mount, each built by its own ``Setup`` (its own
``multiplex_id`` and Storage broker id). The swap replays every one of them into the new
process; a mount enabled after the swap is set up on the new process through Vault's broker
stream, which the launcher keeps across the switch; a disabled mount's ``Cleanup`` ends its
state, so it is not replayed by a later swap.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path

import pytest

from shim.launch.build import write_launcher
from shim.launch.swapstatus import find_status
from tests.support import baoplugins as bp
from tests.support import openbao
from tests.support import releases as R
from tests.support import sdkplugins as sdk
from tests.support import swap as S
from tests.support.wait import wait_until

SWAP_DEADLINE = 10.0


@pytest.fixture(scope="module")
def plugins(tmp_path_factory):
    built = sdk.build(tmp_path_factory, kinds=("secret", "database"), versions=("1.0.0", "2.0.0", "3.0.0"),
                      mux=(True,))
    built.update(sdk.build(tmp_path_factory, kinds=("secret",), versions=("2.0.0",), mux=(False,)))
    built.update(sdk.build(tmp_path_factory, kinds=("vaultsdk", "auth"), versions=("1.0.0", "2.0.0"), mux=(True,)))
    return built


class Plugin:
    """One plugin name: its versions directory and its hot-swapping proxy-mode launcher."""

    def __init__(self, server, root: Path, name: str, kind: str):
        self.server, self.name, self.kind = server, name, kind
        self.versions = root / "versions"
        self.versions.mkdir(mode=0o755, parents=True)
        self.staging = root / "staging"
        self.staging.mkdir()
        self.keys = R.new_keys()
        policy = R.policy(self.versions, self.keys, name=name, type=kind).replace(mode="proxy")
        self.launcher = server.plugin_dir / f"{name}-launcher"
        write_launcher(policy, R.PYTHON, str(self.launcher), "proxy", hot_swap=True)
        self.env = openbao.cli_env(server)
        self.log_offset = server.log_size()

    def ship(self, binary: Path, version: str) -> float:
        """Sign and copy a release in as an operator would (binary last, through a rename)."""
        staged = self.staging / f"{self.name}-{version}"
        shutil.copyfile(binary, staged)
        staged.chmod(0o755)
        R.release(self.keys, staged, name=self.name, type=self.kind, version=version)
        dest = self.versions / staged.name
        for suffix in (".manifest.json", ".manifest.json.minisig"):
            shutil.copyfile(str(staged) + suffix, str(dest) + suffix)
        tmp = self.versions / f".{staged.name}.tmp"
        shutil.copyfile(staged, tmp)
        tmp.chmod(0o755)
        os.replace(tmp, dest)
        return time.monotonic()

    def register(self) -> None:
        bp.cli("register", self.kind, self.name, "--launcher", self.launcher, env=self.env)

    def wait_log(self, text: str, timeout: float = 60.0) -> str:
        try:
            return openbao.wait_for_log(self.server, text, self.log_offset, timeout)
        except AssertionError as exc:
            ours = [ln for ln in self.server.log_text(self.log_offset).splitlines() if "vault-plugin-shim" in ln]
            status = find_status(self.name, str(self.server.tmpdir))
            raise AssertionError(f"{exc}\n--- the launcher's lines:\n" + "\n".join(ours[-40:])
                                 + f"\n--- swap status: {json.dumps(status, indent=1)}") from None

    def swapped(self, frm: str, to: str) -> str:
        return self.wait_log(f"vault-plugin-shim: swapped {self.kind} plugin {self.name} from {frm} to {to}")

    def processes(self) -> list[int]:
        return sdk.plugin_processes(self.server, self.name)

    def launchers(self) -> set[int]:
        return {_parent(p) for p in self.processes()}

    def one_process_of(self, version: str, deadline: float = 60.0) -> int:
        """Exactly one plugin process is left, running ``version``, under one launcher."""
        want = f"/memfd:{self.name}-{version} (deleted)"

        def only():
            pids = self.processes()
            exes = [_exe(p) for p in pids]
            return pids[0] if exes == [want] else None
        return wait_until(only, f"one plugin process of {self.name} {version}", deadline=deadline,
                          detail=lambda: f"seen {[_exe(p) for p in self.processes()]}")


def _parent(pid: int) -> int:
    return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])


def _exe(pid: int) -> str:
    try:
        return os.readlink(f"/proc/{pid}/exe")
    except OSError:
        return "?"


class MultiLoad:
    """Per mount: reads of the seed and writes under kv/ (``clients`` threads), and reads of
    ``slow`` that take SLOW_MS each (2 threads), so that calls on every mount are in flight
    when a swap switches processes. Started and stopped together."""

    SLOW_MS = 1500   # wide enough that a call in flight at the switch ends after v2's first answer, on a busy machine

    def __init__(self, server, mounts: list[str], clients: int = 3, slow: bool = True):
        self.loads = {m: S.Load(server.addr, server.token, f"{m}/kv/seed", f"{m}/kv", clients=clients)
                      for m in mounts}
        self.slow = {m: S.Load(server.addr, server.token, f"{m}/slow?ms={self.SLOW_MS}", "", clients=2,
                               reads_only=True) for m in mounts} if slow else {}

    def __enter__(self) -> "MultiLoad":
        for load in [*self.loads.values(), *self.slow.values()]:
            load.start()
        return self

    def __exit__(self, *exc) -> None:
        for load in [*self.loads.values(), *self.slow.values()]:
            load.stop()

    def failures(self) -> dict[str, list]:
        every = {**{m: l.failures for m, l in self.loads.items()},
                 **{f"{m} (slow)": l.failures for m, l in self.slow.items()}}
        return {m: f[:3] for m, f in every.items() if f}

    def wait_served_by(self, version: str, after: float, deadline: float) -> float:
        return max(load.wait_served_by(version, after, deadline) for load in self.loads.values())

    def count(self) -> int:
        return sum(len(load.snapshot()) for load in self.loads.values())

    def in_flight_across(self, old: str, new: str) -> dict[str, bool]:
        """Per mount: did a slow call answered by ``old`` end after ``new`` had first answered
        (a call in flight on the old process when the switch happened, finished there)? One
        process serves every mount, so the switch is one moment for all of them: the first
        answer by ``new`` on any mount."""
        firsts = [t for load in self.loads.values() if (t := load.first(lambda v: v == new)) is not None]
        switched = min(firsts) if firsts else None
        return {m: switched is not None and any(s.served_by == old and s.end > switched for s in slow.snapshot())
                for m, slow in self.slow.items()}


def _seed(server, mount: str, version: str) -> None:
    bp.write(server, f"{mount}/kv/seed", value=f"seeded under {version} in {mount}")


def _seeded(server, mount: str, written: str, served: str) -> None:
    assert bp.read(server, f"{mount}/kv/seed") == {
        "value": f"seeded under {written} in {mount}", "written_by": written, "served_by": served}


def test_a_multiplexed_engine_swaps_every_mount_under_load(bao_dev, plugins, tmp_path):
    tmp_before = set(os.listdir(bao_dev.tmpdir))
    p = Plugin(bao_dev, tmp_path / "muxswap", "muxswap", "secret")
    p.ship(plugins[("secret", "1.0.0", True)], "1.0.0")
    p.register()
    mounts = ["muxswap-a", "muxswap-b", "muxswap-c"]
    for m in mounts:
        bao_dev.bao("secrets", "enable", f"-path={m}", p.name)
        _seed(bao_dev, m, "v1.0.0")
    try:
        pid1 = p.one_process_of("1.0.0")
        assert {bp.read(bao_dev, f"{m}/version")["pid"] for m in mounts} == {pid1}
        [launcher] = p.launchers()
        with MultiLoad(bao_dev, mounts) as load:
            wait_until(lambda: load.count() > 100, "the load to run")
            landed = p.ship(plugins[("secret", "2.0.0", True)], "2.0.0")
            first = load.wait_served_by("v2.0.0", after=landed, deadline=30)
            after = load.count()
            wait_until(lambda: load.count() > after + 100, "the load to go on after the swap")
        assert load.failures() == {}
        assert first - landed <= SWAP_DEADLINE, f"every mount answered v2 {first - landed:.1f} s after it landed"
        assert load.in_flight_across("v1.0.0", "v2.0.0") == {m: True for m in mounts}
        line = p.swapped("1.0.0", "2.0.0")
        assert "calls_cut=0" in line and f"calls_replayed={2 * len(mounts)}" in line  # Setup and Initialize of each mount
        assert "calls_drained=0 " not in line
        pid2 = p.one_process_of("2.0.0")
        assert p.launchers() == {launcher}
        for m in mounts:
            assert bp.read(bao_dev, f"{m}/version")["pid"] == pid2
            _seeded(bao_dev, m, "v1.0.0", "v2.0.0")

        # A mount enabled after the swap is set up on the new process (through Vault's broker
        # stream, which outlived the old process), and a disabled one is not replayed again.
        bao_dev.bao("secrets", "enable", "-path=muxswap-d", p.name)
        _seed(bao_dev, "muxswap-d", "v2.0.0")
        assert bp.read(bao_dev, "muxswap-d/version")["pid"] == pid2
        bao_dev.bao("secrets", "disable", "muxswap-a")
        mounts = ["muxswap-b", "muxswap-c", "muxswap-d"]
        with MultiLoad(bao_dev, mounts) as load:
            wait_until(lambda: load.count() > 60, "the load to run")
            landed = p.ship(plugins[("secret", "3.0.0", True)], "3.0.0")
            load.wait_served_by("v3.0.0", after=landed, deadline=30)
        assert load.failures() == {}
        line = p.swapped("2.0.0", "3.0.0")
        assert f"calls_replayed={2 * len(mounts)}" in line  # Setup and Initialize of each mount
        pid3 = p.one_process_of("3.0.0")
        _seeded(bao_dev, "muxswap-b", "v1.0.0", "v3.0.0")
        _seeded(bao_dev, "muxswap-d", "v2.0.0", "v3.0.0")
        assert {bp.read(bao_dev, f"{m}/version")["pid"] for m in mounts} == {pid3}
        assert p.launchers() == {launcher}
    finally:
        for m in mounts:
            bao_dev.bao("secrets", "disable", m, check=False)
    wait_until(lambda: not p.processes() and not S.tree_of(launcher), "the launcher and its plugin to exit")
    wait_until(lambda: set(os.listdir(bao_dev.tmpdir)) <= tmp_before, "the launcher's sockets and keys to go")


def test_a_multiplexed_database_plugin_swaps_every_connection_under_load(bao_dev, plugins, tmp_path):
    p = Plugin(bao_dev, tmp_path / "muxdb", "muxdb", "database")
    p.ship(plugins[("database", "1.0.0", True)], "1.0.0")
    p.register()
    db = sdk.Database(bao_dev, "muxdb-engine", tmp_path / "users")
    conns = ["a", "b"]
    try:
        for conn in conns:
            db.connect(conn, p.name)
        loads = {c: S.Load(bao_dev.addr, bao_dev.token, f"muxdb-engine/creds/{c}-r", "", clients=2,
                           reads_only=True, read_field="username") for c in conns}
        for load in loads.values():
            load.start()
        try:
            for c, load in loads.items():
                load.wait_prefix(f"v1-0-0-{c}-r-", after=0.0, deadline=30)
            pid1 = p.one_process_of("1.0.0")
            landed = p.ship(plugins[("database", "2.0.0", True)], "2.0.0")
            for c, load in loads.items():
                load.wait_prefix(f"v2-0-0-{c}-r-", after=landed, deadline=30)
        finally:
            for load in loads.values():
                load.stop()
        assert {c: load.failures[:3] for c, load in loads.items() if load.failures} == {}
        line = p.swapped("1.0.0", "2.0.0")
        assert "calls_cut=0" in line and f"calls_replayed={len(conns)}" in line
        pid2 = p.one_process_of("2.0.0")
        assert pid2 != pid1
        for c, load in loads.items():
            made = [s.served_by for s in load.snapshot()]
            assert made and all(u.startswith((f"v1-0-0-{c}-r-", f"v2-0-0-{c}-r-")) for u in made)
            assert db.user_file(c, made[-1]).exists()
        # A connection configured after the swap runs on the new process.
        db.connect("c", p.name)
        assert db.creds("c")["data"]["username"].startswith("v2-0-0-c-r-")
        assert p.one_process_of("2.0.0") == pid2
    finally:
        db.disable()
    wait_until(lambda: not p.processes(), "the plugin to exit")


def test_a_version_that_stops_multiplexing_needs_a_reload_and_is_not_swapped(bao_dev, plugins, tmp_path):
    """v2 built with plugin.Serve under a v1 built with ServeMultiplex: Vault runs one process
    for every mount because v1 said so; the new answer would be stale metadata."""
    p = Plugin(bao_dev, tmp_path / "muxoff", "muxoff", "secret")
    p.ship(plugins[("secret", "1.0.0", True)], "1.0.0")
    p.register()
    mounts = ["muxoff-a", "muxoff-b"]
    for m in mounts:
        bao_dev.bao("secrets", "enable", f"-path={m}", p.name)
    try:
        pid = p.one_process_of("1.0.0")
        p.ship(plugins[("secret", "2.0.0", False)], "2.0.0")
        line = p.wait_log("needs a plugin reload")
        assert "[WARN]" in line and "MultiplexingSupport" in line and "not supported" in line
        for m in mounts:
            assert bp.read(bao_dev, f"{m}/version")["version"] == "v1.0.0"
        assert p.one_process_of("1.0.0") == pid
    finally:
        for m in mounts:
            bao_dev.bao("secrets", "disable", m, check=False)
    wait_until(lambda: not p.processes(), "the plugin to exit")


@pytest.mark.parametrize("kind", ["vaultsdk", "auth"])
def test_a_multiplexed_backend_swaps_every_mount(bao_dev, plugins, tmp_path, kind):
    """The secrets engine on HashiCorp's vault/sdk, and the auth method on OpenBao's: every
    mount moves to v2 under load, with its data."""
    name = f"bswap{kind}"
    plugin_type = sdk.plugin_type(kind)
    p = Plugin(bao_dev, tmp_path / name, name, plugin_type)
    p.ship(plugins[(kind, "1.0.0", True)], "1.0.0")
    p.register()
    mounts = [f"{name}-a", f"{name}-b"]
    paths = [f"auth/{m}" if plugin_type == "auth" else m for m in mounts]
    for m, path in zip(mounts, paths):
        bp.enable(bao_dev, plugin_type, name, m)
        _seed(bao_dev, path, "v1.0.0")
    try:
        p.one_process_of("1.0.0")
        with MultiLoad(bao_dev, paths, slow=False) as load:
            wait_until(lambda: load.count() > 60, "the load to run")
            landed = p.ship(plugins[(kind, "2.0.0", True)], "2.0.0")
            load.wait_served_by("v2.0.0", after=landed, deadline=30)
        assert load.failures() == {}
        assert f"calls_replayed={2 * len(mounts)}" in p.swapped("1.0.0", "2.0.0")
        pid = p.one_process_of("2.0.0")
        for path in paths:
            _seeded(bao_dev, path, "v1.0.0", "v2.0.0")
            assert bp.read(bao_dev, f"{path}/version")["pid"] == pid
    finally:
        for m in mounts:
            bao_dev.bao("auth" if plugin_type == "auth" else "secrets", "disable", m, check=False)
    wait_until(lambda: not p.processes(), "the plugin to exit")
