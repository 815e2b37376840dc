"""The problem and the fix, end to end on a real OpenBao node, for each plugin type and mode.

One persistent (Raft) node serves the module; each test uses its own plugin name, mounts and
directories, and removes its mounts at the end, so the tests share it without interfering.
Everything an operator would do goes through the project's CLI as a subprocess
(`keygen`, `sign`, `launcher build`, `register`, `verify`, `doctor`) and through `bao`.

Processes are found by a marker put in the catalog's env (`register --env`): OpenBao passes it
to the launcher, and the launcher to its child. The proxy janitor runs with an empty
environment, so it is found as a descendant of a marked process while it runs.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path

import pytest

from shim.demo.bao import descendants
from tests.support import baoplugins as bp
from tests.support import gopeer, openbao
from tests.support.procs import alive
from tests.support.wait import wait_until

MODES = ("exec", "proxy")
CASES = [(kind, mode) for kind in bp.KINDS for mode in MODES]
DEADLINE = 60.0


@pytest.fixture(scope="module")
def plugins(tmp_path_factory):
    return bp.build(tmp_path_factory)


# --- helpers -----------------------------------------------------------------------------------



def tree(marker: str) -> set[int]:
    """Marked processes and everything they started (the proxy's janitor has no env)."""
    marked = gopeer.find_marked_processes(marker)
    found = set(marked)
    for pid in marked:
        found.update(descendants(pid))
    return {p for p in found if alive(p)}




def assert_gone(pids: set[int], server, tmp_before: set[str], what: str) -> None:
    """None of `pids` is alive, and the server's TMPDIR holds nothing new (sockets, key dirs)."""
    try:
        wait_until(lambda: not any(alive(p) for p in pids), f"{sorted(pids)} to exit ({what})", deadline=DEADLINE)
        wait_until(lambda: set(os.listdir(server.tmpdir)) <= tmp_before,
                   f"{server.tmpdir} to be clean ({what})", deadline=15)
    except AssertionError as exc:
        left = {p: _cmdline(p) for p in pids if alive(p)}
        new = sorted(set(os.listdir(server.tmpdir)) - tmp_before)
        for p in left:
            os.kill(p, 9)
        raise AssertionError(f"{exc}: processes left {left}, new in TMPDIR {new}") from None


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return "?"


class Release:
    """One plugin name as an operator sets it up: a release key, a versions directory and a
    launcher in the server's plugin_directory, all made with the CLI (keygen("stranger") adds
    a key the launcher does not trust)."""

    def __init__(self, server, root: Path, name: str, kind: str, mode: str):
        self.server, self.name, self.kind, self.mode = server, name, kind, mode
        self.env = openbao.cli_env(server)
        self.root = root
        self.versions = root / "versions"
        self.versions.mkdir(mode=0o755)
        self.key_ids: dict[str, str] = {}
        self.keygen("release")
        self.launcher = server.plugin_dir / f"{name}-launcher"
        bp.cli("launcher", "build", "--trusted-key", root / "release.pub", "--name", name,
               "--type", kind, "--plugins-dir", self.versions, "--min-version", "1.0.0",
               "--mode", mode, "--output", self.launcher, env=self.env)
        self.sha256 = bp.sha256_file(self.launcher)

    def keygen(self, who: str) -> str:
        out = bp.cli("keygen", "--secret-key", self.root / f"{who}.sk", "--public-key",
                     self.root / f"{who}.pub", "--unencrypted", env=self.env).stdout
        self.key_ids[who] = out.split("key id ", 1)[1].split()[0]
        return self.key_ids[who]

    def add(self, binary: Path, version: str, *, key: str = "release", expires: str | None = None,
            issued_at: int | None = None) -> Path:
        """Copy `binary` into the versions directory as <kind>-<version> and sign it."""
        dest = self.versions / f"{self.kind}-{version}"
        shutil.copyfile(binary, dest)
        dest.chmod(0o755)
        args = ["sign", dest, "--secret-key", self.root / f"{key}.sk", "--name", self.name,
                "--type", self.kind, "--version", version]
        if expires:
            args += ["--expires", expires]
        env = dict(self.env)
        if issued_at is not None:
            env["SOURCE_DATE_EPOCH"] = str(issued_at)
        bp.cli(*args, env=env)
        return dest

    def catalog_sha256(self) -> str:
        return bp.plugin_info(self.server, self.kind, self.name, version="v1.0.0")["sha256"]


class Deployment:
    """What a test reads and writes through one mounted (or configured) plugin."""

    def __init__(self, server, kind: str, name: str, root: Path):
        self.server, self.kind, self.name = server, kind, name
        self.mount = f"m-{name}"
        self.users = root / "users"

    def setup(self) -> None:
        if self.kind == "database":
            self.users.mkdir()
            self.server.bao("secrets", "enable", f"-path={self.mount}", "database")
            self.server.bao("write", f"{self.mount}/config/conn", f"plugin_name={self.name}",
                            f"directory={self.users}", "allowed_roles=app")
            self.server.bao("write", f"{self.mount}/roles/app", "db_name=conn",
                            "creation_statements=GRANT ALL TO {{name}}", "default_ttl=1h")

    def running(self) -> tuple[str, int | None, dict]:
        """(version that answers, its pid if it says, the raw answer)."""
        if self.kind == "database":
            creds = json.loads(self.server.bao("read", "-format=json", f"{self.mount}/creds/app").stdout)
            user = creds["data"]["username"]  # e.g. v2-0-0-app-1a2b3c4d: made by v2.0.0
            major, minor, patch = user.split("-")[:3]
            return f"{major}.{minor}.{patch}", None, creds
        answer = bp.read(self.server, bp.api_path(self.kind, self.mount, "version"))
        assert answer is not None, "the version path answered 404"
        return answer["version"], answer["pid"], answer

    def reload(self) -> None:
        if self.kind == "database":  # database plugins are not reloadable by name: reset the connection
            self.server.bao("write", "-f", f"{self.mount}/reset/conn")
        else:
            self.server.bao("plugin", "reload", f"-plugin={self.name}")

    def reload_fails(self) -> bool:
        if self.kind == "database":
            res = self.server.bao("write", "-f", f"{self.mount}/reset/conn", check=False)
        else:
            res = self.server.bao("plugin", "reload", f"-plugin={self.name}", check=False)
        return res.returncode != 0

    def write_data(self) -> dict:
        if self.kind == "database":
            _, _, creds = self.running()
            return {"lease_id": creds["lease_id"], "username": creds["data"]["username"]}
        bp.write(self.server, bp.api_path(self.kind, self.mount, "kv/kept"), colour="green")
        data = {"kv": "kept"}
        if self.kind == "auth":
            data["logins"] = self.login()["data"]["logins"]
        return data

    def login(self) -> dict:
        env = {k: v for k, v in self.server.env(HOME=str(self.server.root)).items()
               if k not in ("VAULT_TOKEN", "BAO_TOKEN")}  # login is unauthenticated
        return json.loads(self.server.bao("write", "-format=json", f"auth/{self.mount}/login",
                                          "name=operator", env=env).stdout)

    def check_data(self, data: dict, serving: str) -> None:
        if self.kind == "database":
            record = json.loads((self.users / f"{data['username']}.json").read_text())
            assert record["created_by"] == "v1.0.0"
            return
        got = bp.read(self.server, bp.api_path(self.kind, self.mount, "kv/kept"))
        assert got == {"colour": "green", "written_by": "v1.0.0", "served_by": serving}
        if self.kind == "auth":
            answer = self.login()
            assert answer["auth"]["metadata"]["issued_by"] == serving
            assert answer["data"]["logins"] > data["logins"]  # the count lives in OpenBao's storage
            data["logins"] = answer["data"]["logins"]

    def teardown(self, data: dict | None, plugin_works: bool = True) -> None:
        if self.kind == "database":
            if data:  # revoking v1's user through whatever runs now deletes its file
                self.server.bao("lease", "revoke", "-sync", data["lease_id"])
                assert not (self.users / f"{data['username']}.json").exists()
            if not plugin_works:  # leases cannot be revoked through a plugin that cannot start
                self.server.bao("lease", "revoke", "-force", "-prefix", f"{self.mount}/")
            self.server.bao("secrets", "disable", self.mount)
        elif self.kind == "auth":
            self.server.bao("auth", "disable", self.mount)
        else:
            self.server.bao("secrets", "disable", self.mount)


def rejected(server, offset: int, binary: Path, level: str, *facts: str) -> str:
    """The launcher's line about `binary` in OpenBao's log since `offset`, at `level`, holding
    every fact. (It names the file that failed: the binary, its manifest or its signature.)"""
    line = openbao.wait_for_log(server, f"vault-plugin-shim: rejected candidate {binary}", offset)
    assert f"[{level}]" in line, line
    for fact in facts:
        assert fact in line, f"{fact!r} not in {line}"
    return line


# --- the problem ---------------------------------------------------------------------------------

@pytest.mark.parametrize("kind", bp.KINDS)
def test_direct_registration_breaks_when_the_catalog_moves_ahead_of_the_node(bao_raft, plugins, kind,
                                                                            tmp_path):
    """A plugin registered directly: the catalog gets v2's sha256 (a newer pod registered it)
    while this node's file is still v1. The next launch fails: `checksums did not match`."""
    name = f"direct-{kind}"
    command = f"{name}-plugin"
    bp.install(bao_raft, plugins[(kind, "1.0.0")], command)
    bp.register_direct(bao_raft, kind, name, command)
    dep = Deployment(bao_raft, kind, name, tmp_path)
    if kind != "database":
        bp.enable(bao_raft, kind, name, dep.mount)
    dep.setup()
    assert dep.running()[0] == "v1.0.0"

    v2_sha = bp.sha256_file(plugins[(kind, "2.0.0")])
    bao_raft.bao("plugin", "register", f"-sha256={v2_sha}", f"-command={command}",
                 "-version=v1.0.0", kind, name)
    try:
        if kind == "database":
            res = bao_raft.bao("write", "-f", f"{dep.mount}/reset/conn", check=False)
        else:
            res = bao_raft.bao("plugin", "reload", f"-plugin={name}", check=False)
        assert res.returncode != 0
        assert "checksums did not match" in res.stderr
        if kind == "database":
            res = bao_raft.bao("read", f"{dep.mount}/creds/app", check=False)
        else:
            res = bao_raft.bao("read", bp.api_path(kind, dep.mount, "version"), check=False)
        assert res.returncode != 0  # and the plugin stays down on this node
    finally:
        dep.teardown(None, plugin_works=False)


# --- the fix ----------------------------------------------------------------------------------

@pytest.mark.parametrize("kind,mode", CASES)
def test_upgrade_through_the_launcher_never_touches_the_catalog(bao_raft, plugins, kind, mode, tmp_path):
    server = bao_raft
    name = f"shim-{kind}-{mode}"
    marker = gopeer.new_marker("A1BAO")
    rel = Release(server, tmp_path, name, kind, mode)
    rel.add(plugins[(kind, "1.0.0")], "1.0.0")
    tmp_before = set(os.listdir(server.tmpdir))
    dep = Deployment(server, kind, name, tmp_path)
    data = None
    seen: set[int] = set()
    try:
        # register once, with the project's own `register` (hvac)
        args = ["register", kind, name, "--launcher", rel.launcher, "--env", marker]
        if kind != "database":
            args += ["--mount", dep.mount]
        done = bp.cli(*args, env=rel.env)
        assert "catalog version: v1.0.0" in done.stdout
        assert rel.catalog_sha256() == rel.sha256
        dep.setup()

        # v1 answers, from the sealed memfd, and data goes through OpenBao's Storage
        version, pid, answer = dep.running()
        assert version == "v1.0.0"
        if pid is not None:
            assert answer["exe"] == f"/memfd:{name}-1.0.0 (deleted)"
            assert answer["storage"] == "ok"
            assert answer["transport"] == ("automtls" if mode == "exec" else "plaintext")
        data = dep.write_data()
        dep.check_data(data, "v1.0.0")
        first = wait_until(lambda: tree(marker), "the plugin's processes", deadline=DEADLINE)
        seen |= first
        if pid is not None:
            assert pid in first
        if mode == "exec":  # the launcher became the plugin: one process
            assert len(gopeer.find_marked_processes(marker)) == 1

        # v2 is signed into the versions directory; a reload runs it; the catalog is untouched
        rel.add(plugins[(kind, "2.0.0")], "2.0.0")
        dep.reload()
        version, pid2, _ = dep.running()
        assert version == "v2.0.0"
        dep.check_data(data, "v2.0.0")
        assert rel.catalog_sha256() == rel.sha256
        assert set(openbao_catalog_versions(server, kind, name)) == {"v1.0.0"}
        wait_until(lambda: not any(alive(p) for p in first), "v1's processes to exit after the reload",
                   deadline=DEADLINE)
        second = wait_until(lambda: tree(marker), "v2's processes", deadline=DEADLINE)
        seen |= second
        if pid2 is not None:
            assert pid2 in second and pid2 != pid

        # the operator's view of the same node agrees
        verify = bp.cli("verify", "--launcher", rel.launcher, env=rel.env)
        assert f"[LAUNCH] {kind}-2.0.0: version 2.0.0" in verify.stdout
        doctor = bp.cli("doctor", "--launcher", rel.launcher, "--sha256", rel.catalog_sha256(),
                        env=rel.env)
        assert f"{kind}-2.0.0 version 2.0.0" in doctor.stdout

        # a restart of the server: still v2, still the data, still the launcher's sha256
        server.stop()
        assert_gone(seen, server, tmp_before, "server shutdown")
        server.start()
        assert dep.running()[0] == "v2.0.0"
        dep.check_data(data, "v2.0.0")
        assert rel.catalog_sha256() == rel.sha256
        seen |= wait_until(lambda: tree(marker), "v2's processes after the restart", deadline=DEADLINE)
    finally:
        seen |= tree(marker)
        dep.teardown(data)
    assert_gone(seen, server, tmp_before, "disable")
    assert gopeer.find_marked_processes(marker) == []


def openbao_catalog_versions(server, kind: str, name: str) -> list[str]:
    listing = json.loads(server.bao("read", "-format=json", "sys/plugins/catalog").stdout)
    return [d.get("version", "") for d in listing["data"]["detailed"]
            if d["type"] == kind and d["name"] == name]


# --- refusals -----------------------------------------------------------------------------------

@pytest.mark.parametrize("kind,mode", CASES)
def test_refused_versions_show_in_openbao_log_and_the_mount_keeps_working(bao_raft, plugins, kind,
                                                                          mode, tmp_path):
    server = bao_raft
    name = f"refuse-{kind}-{mode}"
    rel = Release(server, tmp_path, name, kind, mode)
    rel.add(plugins[(kind, "1.0.0")], "1.0.0")
    dep = Deployment(server, kind, name, tmp_path)
    args = ["register", kind, name, "--launcher", rel.launcher]
    if kind != "database":
        args += ["--mount", dep.mount]
    bp.cli(*args, env=rel.env)
    data = None
    try:
        dep.setup()
        assert dep.running()[0] == "v1.0.0"
        data = dep.write_data()

        # Candidates above and below the valid one, each wrong in its own way.
        v2 = plugins[(kind, "2.0.0")]
        tampered = rel.add(v2, "3.0.0")
        raw = bytearray(tampered.read_bytes())
        raw[-1] ^= 0xFF  # same size, other bytes: only the hash can tell
        tampered.write_bytes(bytes(raw))
        rel.keygen("stranger")
        untrusted = rel.add(v2, "4.0.0", key="stranger")
        expired = rel.add(v2, "5.0.0", expires="1h", issued_at=int(time.time()) - 7200)
        below = rel.add(plugins[(kind, "1.0.0")], "0.9.0")
        newer_refusals = [
            (tampered, ("sha256 is ", "the signed manifest says", 'fix="the binary differs')),
            (untrusted, (f"signed by key {rel.key_ids['stranger']}, which is not trusted", "fix=",
                         "--trusted-key")),
            (expired, ("manifest for 5.0.0 expired at", "fix=", "--expires")),
        ]
        floor_facts = ("version 0.9.0 is below the minimum version 1.0.0", "fix=")

        offset = server.log_size()
        dep.reload()
        assert dep.running()[0] == "v1.0.0"  # the remaining valid version
        dep.check_data(data, "v1.0.0")
        for binary, facts in newer_refusals:
            rejected(server, offset, binary, "ERROR", *facts)
        # An older version rightly skipped while a newer one runs is routine for the launcher:
        # it is logged, at debug.
        rejected(server, offset, below, "DEBUG", *floor_facts)
        # doctor, on the node, lists every one of them and what the next launch runs.
        doctor = bp.cli("doctor", "--launcher", rel.launcher, "--sha256", rel.sha256, env=rel.env,
                        check=False).stdout
        for binary in (tampered, untrusted, expired, below):
            assert any(ln.startswith("[FAIL] candidate: ") and str(binary) in ln
                       for ln in doctor.splitlines()), f"{binary} not refused by doctor:\n{doctor}"
        assert f"{kind}-1.0.0 version 1.0.0" in doctor

        # Without the valid version, nothing starts, and every refusal is an error.
        held = tmp_path / "held"
        held.mkdir()
        for f in rel.versions.glob(f"{kind}-1.0.0*"):
            f.rename(held / f.name)
        offset = server.log_size()
        assert dep.reload_fails()
        for binary, facts in newer_refusals + [(below, floor_facts)]:
            rejected(server, offset, binary, "ERROR", *facts)
        openbao.wait_for_log(server, "vault-plugin-shim: refusing to start", offset)

        # The valid version back: the mount works again, on the same data.
        for f in held.iterdir():
            f.rename(rel.versions / f.name)
        dep.reload()
        assert dep.running()[0] == "v1.0.0"
        dep.check_data(data, "v1.0.0")
        assert rel.catalog_sha256() == rel.sha256
    finally:
        dep.teardown(data)
