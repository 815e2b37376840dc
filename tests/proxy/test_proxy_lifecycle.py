"""Proxy mode's life cycle under the real go-plugin host (HashiCorp go-plugin 1.0.1):
how it ends (normally, when the plugin dies mid-call, when the host itself is SIGKILLed),
what the child holds and is called, and that no key file ever exists.

Processes are found by a marker in the plugin's environment (the child carries Vault's
environment) and as descendants of the launcher (the launcher's interpreter runs with the
stub's fixed environment and the janitor with an empty one).
"""

from __future__ import annotations

import os
import re
import select
import shutil
import signal
import stat
import threading
import time
from pathlib import Path

import pytest

from shim.demo.bao import descendants
from tests.support.procs import alive
from tests.support.wait import wait_until
from tests.support import gopeer
from tests.interop.test_proxy_interop import Node

pytestmark = pytest.mark.interop

# What a clean stderr never holds (Python's own failure texts).
DIRT = ("Traceback", "never retrieved", "has no attribute", "did not stop cleanly", "Exception in callback")
# How long after the host's SIGKILL the launcher, its janitor and its child may still exist.
# Measured on 2 vCPU: see test_host_sigkill_leaves_no_process_or_socket (README "Proxy mode").
VAULT_GONE_BOUND = 5.0


@pytest.fixture(scope="module")
def peer(go_build, go_host, tmp_path_factory):
    import sys

    from tests.goplugin.test_goplugin_e2e import PLUGIN_SOURCE

    py = tmp_path_factory.mktemp("pyplugin") / "py-plugin"
    py.write_text(f"#!{sys.executable}\n" + PLUGIN_SOURCE)
    py.chmod(0o755)
    return {"host": go_host, "go": go_build.plugin("1.0.0", 2), "py": py}


@pytest.fixture(params=["python", "native"])
def node(peer, tmp_path, request):
    """A proxy-mode node; "native": the native launcher decides and starts the proxy with its verdict."""
    n = Node(peer, tmp_path, "proxy", native=request.param == "native")
    yield n
    n.close()




def cpu_ticks(pid: int) -> int:
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0
    return int(fields[11]) + int(fields[12])  # utime + stime


def dirt(res) -> list[str]:
    return [line for line in res.stderr.splitlines() if any(d in line for d in DIRT)]


def launcher_lines(res, level: str) -> list[dict]:
    """The launcher's own hclog lines at ``level`` (not the plugin's)."""
    return [line for line in res.logs(level=level) if line.get("@module") == "vault-plugin-shim"
            or str(line.get("@message", "")).startswith("vault-plugin-shim")]




# --- ending ------------------------------------------------------------------------------

def test_normal_runs_end_cleanly(node):
    """20 normal life cycles in one host (launch, handshake, first call, Kill = Shutdown then
    SIGKILL after 2 s), then calls, broker and streams: the launcher ends each one without
    a warning, an error or a traceback of its own."""
    runs = [node.host("bench", iterations=20)]
    runs += [node.host("broker", "host-dials"), node.host("stream", "1", "2")]
    for res in runs:
        assert res.ok, res.describe()
        assert dirt(res) == [], "\n".join(dirt(res))
        assert launcher_lines(res, "warn") == [] and launcher_lines(res, "error") == [], res.describe()
    assert len(runs[0].results) == 20
    assert len(launcher_lines(runs[0], "info")) >= 20  # one "starting" line per launch
    assert node.leftovers() == []


def runs_sealed_copy(pid: int) -> bool:
    try:
        return os.readlink(f"/proc/{pid}/exe").startswith("/memfd:")
    except OSError:
        return False


def test_plugin_killed_mid_call_ends_cleanly(node):
    """The child is SIGKILLed while four callers keep calling: one ERROR naming the exit,
    no traceback, no asyncio task error, nothing left."""
    for run in range(3):
        marker = gopeer.new_marker()
        with gopeer.start_host(node.peer["host"], node.launcher, "unary-bench", sha256=node.sha256,
                               env=[marker], iterations=10**7, concurrency=4, method="double",
                               host_env={"TMPDIR": str(node.sock)}) as h:
            # The plugin is the marked process that runs the sealed copy: a native launcher has
            # Vault's environment too, until it has decided and started the proxy's interpreter.
            child = wait_until(lambda: [p for p in gopeer.find_marked_processes(marker) if runs_sealed_copy(p)],
                               "the plugin to start")
            # the point is to die *during* calls: wait until the plugin has spent CPU on them
            wait_until(lambda: cpu_ticks(child[0]) >= 10, "the plugin to serve calls")
            for pid in child:
                os.kill(pid, signal.SIGKILL)
            h.wait_holding(60)
            res = h.release()
        assert not res.ok, res.describe()
        assert dirt(res) == [], f"run {run}:\n" + "\n".join(dirt(res))
        errors = launcher_lines(res, "error")
        assert len(errors) == 1 and "exited unexpectedly" in errors[0]["@message"], res.describe()
        assert errors[0]["status"] == "killed by signal SIGKILL"
        assert gopeer.find_marked_processes(marker) == []
        assert node.leftovers() == []


# --- what the child is ---------------------------------------------------------------------

LONG_NAME = "a-long-plugin-name"  # comm keeps 15 bytes: "a-long-plugin-n"


def fd_links(pid: int) -> dict[int, str]:
    out = {}
    for n in os.listdir(f"/proc/{pid}/fd"):
        try:
            out[int(n)] = os.readlink(f"/proc/{pid}/fd/{n}")
        except OSError:
            pass
    return out


def memfds(pid: int) -> set[tuple[int, int]]:
    """(st_dev, st_ino) of the memfds ``pid`` holds."""
    found = set()
    for n, link in fd_links(pid).items():
        if link.startswith("/memfd:"):
            st = os.stat(f"/proc/{pid}/fd/{n}")
            found.add((st.st_dev, st.st_ino))
    return found


def comm(pid: int) -> str:
    return Path(f"/proc/{pid}/comm").read_text().rstrip("\n")


def parent(pid: int) -> int:
    return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])


def test_child_runs_the_sealed_copy_without_holding_it_and_is_named_after_the_plugin(peer, tmp_path):
    """The Go plugin behind the launcher: /proc/<child>/exe is the launcher's sealed memfd,
    yet the child holds no memfd of the launcher's, and its comm is the plugin's name."""
    n = Node(peer, tmp_path, "proxy", name=LONG_NAME)
    marker = gopeer.new_marker()
    try:
        with gopeer.start_host(peer["host"], n.launcher, "ping", sha256=n.sha256, env=[marker],
                               host_env={"TMPDIR": str(n.sock)}) as h:
            launcher = h.wait_holding()
            [child] = gopeer.find_marked_processes(marker)
            assert parent(child) == launcher
            sealed = memfds(launcher)
            exe = os.stat(f"/proc/{child}/exe")
            assert (exe.st_dev, exe.st_ino) in sealed, "the child runs the verified, sealed copy"
            held = fd_links(child)
            assert not [link for link in held.values() if link.startswith("/memfd:")], held
            assert comm(child) == LONG_NAME[:15]
            res = h.release()
        assert res.ok and res.results == ["version=1.0.0"], res.describe()
        assert n.leftovers() == []
    finally:
        gopeer.kill_marked_processes(marker)
        n.close()


def test_script_child_holds_no_memfd_and_is_named_after_the_plugin(tmp_path):
    """A #! plugin: its interpreter re-opens the script by path after exec, which works
    although the child holds no descriptor of it."""
    from tests.proxy.test_proxy_faults import UNARY, Vault

    v = Vault(tmp_path, name=LONG_NAME)
    try:
        v.client.connect()
        launcher = v.client.proc.pid
        [child] = gopeer.find_marked_processes(v.marker)
        assert parent(child) == launcher
        assert v.call(UNARY, b"hello", timeout=10) == b"hello"
        held = fd_links(child)
        assert not [link for link in held.values() if link.startswith("/memfd:")], held
        assert comm(child) == LONG_NAME[:15]
        # nothing of the way it was started is left on disk
        assert [p.name for p in v.tmpdir.rglob("exe*")] == []
        v.client.kill()
        v.assert_clean()
    finally:
        v.close()


# --- no key on disk ------------------------------------------------------------------------

class Creations:
    """Everything created under ``root`` (recursively) while it runs, with its type when
    it could still be seen: inotify on each directory as soon as it appears, plus a listing
    of the new directory right after its watch is added (for what came before)."""

    IN_CREATE, IN_MOVED_TO, IN_ISDIR, IN_NONBLOCK, IN_CLOEXEC = 0x100, 0x80, 0x40000000, 0o4000, 0o2000000

    def __init__(self, root: Path):
        import ctypes
        import struct

        self._libc = ctypes.CDLL(None, use_errno=True)
        self._struct = struct.Struct("iIII")
        self.fd = self._libc.inotify_init1(self.IN_NONBLOCK | self.IN_CLOEXEC)
        assert self.fd >= 0, "inotify_init1 failed"
        self.dirs: dict[int, str] = {}
        self.seen: dict[str, str] = {}   # path -> "dir", "sock", "link", "file" or "gone"
        self._stop = threading.Event()
        self._watch(str(root))
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _watch(self, path: str) -> None:
        wd = self._libc.inotify_add_watch(self.fd, os.fsencode(path), self.IN_CREATE | self.IN_MOVED_TO)
        if wd < 0:
            return  # gone already
        self.dirs[wd] = path
        try:
            names = os.listdir(path)
        except OSError:
            return
        for name in names:
            self._saw(os.path.join(path, name))

    def _saw(self, path: str) -> None:
        if path in self.seen:
            return
        try:
            mode = os.lstat(path).st_mode
        except OSError:
            self.seen[path] = "gone"
            return
        kind = ("dir" if stat.S_ISDIR(mode) else "sock" if stat.S_ISSOCK(mode)
                else "link" if stat.S_ISLNK(mode) else "file")
        self.seen[path] = kind
        if kind == "dir":
            self._watch(path)

    def _run(self) -> None:
        import select

        while not self._stop.is_set():
            select.select([self.fd], [], [], 0.05)
            try:
                data = os.read(self.fd, 65536)
            except BlockingIOError:
                continue
            offset = 0
            while offset < len(data):
                wd, _mask, _cookie, size = self._struct.unpack_from(data, offset)
                name = data[offset + 16:offset + 16 + size].rstrip(b"\0")
                offset += 16 + size
                if wd in self.dirs and name:
                    self._saw(os.path.join(self.dirs[wd], os.fsdecode(name)))

    def stop(self) -> dict[str, str]:
        self._stop.set()
        self._thread.join(5)
        os.close(self.fd)
        return self.seen


def test_no_key_file_ever_exists_during_a_proxy_run(node):
    """The launcher loads its AutoMTLS key (several ssl contexts: Vault's socket, broker ids
    both ways) while TMPDIR is watched: nothing but directories, sockets and the child's
    exec link is ever created there, and the run works."""
    watch = Creations(node.sock)
    try:
        res = node.host("broker", "host-dials", "plugin-dials")
    finally:
        seen = watch.stop()
    assert res.ok, res.describe()
    assert any(kind == "sock" for kind in seen.values()), seen  # the watch did see the run
    # go-plugin's own trick (host and plugin): ioutil.TempFile("", "plugin"), removed, then a
    # unix socket bound at that path. Anything else that is a regular file is ours.
    files = {path: kind for path, kind in seen.items()
             if kind == "file" and not re.fullmatch(r"plugin\d+", os.path.basename(path))}
    assert files == {}, "files created during a proxy run (keys must stay in memory)"
    keyish = [p for p in seen if re.search(r"tls|\.pem$|key", os.path.basename(p))]
    assert keyish == [], seen
    assert node.leftovers() == []


# --- the host itself is SIGKILLed ------------------------------------------------------------

def ours(launcher: int) -> set[int]:
    """The launcher and everything it started (janitor, plugin, the plugin's children)."""
    return {p for p in {launcher, *descendants(launcher)} if alive(p)}


def wait_gone(pids: set[int], deadline: float) -> float:
    """Seconds until none of ``pids`` is alive; fails naming the survivors at ``deadline``
    (and SIGKILLs them, so that no test leaves them behind)."""
    started = time.monotonic()

    def survivors() -> dict[int, bytes]:
        return {p: Path(f"/proc/{p}/cmdline").read_bytes().replace(b"\0", b" ")[:120] for p in pids if alive(p)}

    try:
        wait_until(lambda: not any(alive(p) for p in pids), "every process of the launcher to exit after the "
                   "host's SIGKILL", deadline=deadline, poll=0.01, detail=lambda: f"still alive: {survivors()}")
    except AssertionError:
        for p in pids:
            if alive(p):
                os.kill(p, signal.SIGKILL)
        raise
    return time.monotonic() - started


@pytest.mark.parametrize("native", [False, True], ids=["python", "native"])
@pytest.mark.parametrize("plugin", ["go", "py-ignoring-shutdown"])
def test_host_sigkill_leaves_no_process_or_socket(peer, tmp_path, plugin, native):
    """The go-plugin host (Vault's role) is SIGKILLed while the plugin serves: the launcher
    notices (a pidfd on its parent), stops the plugin as Vault's Kill would and removes its
    sockets, within VAULT_GONE_BOUND. The Go plugin exits on Shutdown; the Python plugin
    ignores it (and has a child and a janitor of its own), so it shows the worst case:
    CHILD_GRACE, then SIGKILL of its group. Three trials each."""
    node = Node(peer, tmp_path, "proxy", plugin="go" if plugin == "go" else "py", native=native)
    env = [f"{k}={v}" for k, v in node.env.items()]
    if plugin != "go":
        env.append("PYPLUGIN_IGNORE_SHUTDOWN=1")
    action = ("broker", "host-dials") if plugin == "go" else ("printkv", "spawn", "GRANDCHILD")
    took = []
    try:
        for trial in range(3):
            marker = gopeer.new_marker()
            try:
                with gopeer.start_host(node.peer["host"], node.launcher, *action, sha256=node.sha256,
                                       env=[*env, marker], host_env={"TMPDIR": str(node.sock)}) as h:
                    launcher = h.wait_holding()
                    pids = ours(launcher)
                    assert len(pids) >= (3 if plugin == "go" else 5), pids  # + the plugin's child and janitor
                    assert node.leftovers(), "the launcher's socket directory exists while it runs"
                    os.kill(h.proc.pid, signal.SIGKILL)
                    h.proc.wait(10)
                    took.append(wait_gone(pids, deadline=max(20.0, 4 * VAULT_GONE_BOUND)))
                    assert gopeer.find_marked_processes(marker) == []
                    wait_until(lambda: node.leftovers() == [], "the socket directories to be removed", 5)
            finally:
                gopeer.kill_marked_processes(marker)
    finally:
        node.close()
    print(f"{plugin}: host SIGKILL -> nothing left after at most {max(took):.2f} s "
          f"(trials: {', '.join(f'{t:.2f}' for t in took)})")
    assert max(took) < VAULT_GONE_BOUND, took


def test_exec_mode_plugin_outlives_a_sigkilled_host_like_a_plugin_run_directly(peer, tmp_path):
    """The documented exec-mode decision (README "Exec details"): after exec the launcher
    IS the plugin and adds nothing, so a SIGKILLed host orphans it exactly as it orphans a
    go-plugin plugin it ran directly. (No PR_SET_PDEATHSIG: it follows the host thread that
    forked, and Go may end that thread while Vault runs on, killing a healthy plugin.)"""
    node = Node(peer, tmp_path, "exec")
    direct = tmp_path / "direct-plugin"
    shutil.copy(peer["go"], direct)
    orphans = []
    try:
        for path, sha256 in ((node.launcher, node.sha256), (direct, None)):
            with gopeer.start_host(peer["host"], path, "ping", sha256=sha256,
                                   host_env={"TMPDIR": str(node.sock)}) as h:
                pid = h.wait_holding()
                pidfd = os.pidfd_open(pid)
                orphans.append(pidfd)
                os.kill(h.proc.pid, signal.SIGKILL)
                h.proc.wait(10)
                # a deadline, not a synchronisation: the plugin must NOT exit within it
                assert select.select([pidfd], [], [], 3.0)[0] == [], f"{path.name} exited with its host"
                assert alive(pid) and parent(pid) != h.proc.pid
                signal.pidfd_send_signal(pidfd, signal.SIGKILL)
    finally:
        for pidfd in orphans:
            try:
                signal.pidfd_send_signal(pidfd, signal.SIGKILL)
            except ProcessLookupError:
                pass
            os.close(pidfd)
        node.close()
