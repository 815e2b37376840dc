"""``vault-plugin-shim demo --model``: the rolling upgrade replayed on a model of Vault, twice.

The model, for machines without OpenBao (``vault-plugin-shim demo`` replays it on a real
cluster: :mod:`shim.demo.replay`).

* **baseline**: the plugin is registered directly (sha256 of the plugin file), and every
  new pod's init container re-registers the checksum when its image's plugin differs;
* **shim**: the launcher is registered once; the same init container finds nothing to do.

Both runs replay the same :mod:`shim.demo.schedule` with real node processes
(:mod:`shim.demo.node`), a replicated catalog on local disk (written atomically), real
plugin processes built on :mod:`shim.goplugin.server`, and a load generator that sends
requests to whichever node is the leader.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

from shim.demo import results
from shim.demo import schedule as sched
from shim.trust.verify import digest_file

PLUGIN = "demo-kv"
OLD, NEW = "1.0.0", "2.0.0"
MARK = "VAULT_PLUGIN_SHIM_DEMO_RUN"

PLUGIN_SOURCE = '''\
#!{python} -I
# {plugin} {version}: a Vault-style plugin for the vault-plugin-shim demo, served with
# shim.goplugin.server (go-plugin handshake, AutoMTLS, gRPC health/controller/broker).
import time
from shim.goplugin import handshake as hs
from shim.goplugin.server import serve
from shim.goplugin.protos import grpctest_pb2 as pb, grpctest_pb2_grpc as rpc
VERSION = "{version}"
time.sleep({start_delay})


class Ping(rpc.PingPongServicer):
    def Ping(self, request, context):
        return pb.PongResponse(msg="version=" + VERSION)


raise SystemExit(serve(hs.VAULT_BACKEND, lambda ctx: rpc.add_PingPongServicer_to_server(Ping(), ctx.server)))
'''


@dataclass
class Request:
    id: int
    t: float
    node: int
    ok: bool | None = None
    version: str = ""
    error: str = ""
    t_done: float = 0.0
    category: str = "pending"   # ok | plugin-failure | no-leader | interrupted


@dataclass
class RunResult:
    name: str
    events: list
    settings: sched.Settings
    duration: float
    requests: list = field(default_factory=list)
    launches: list = field(default_factory=list)     # node events "launch"
    registrations: list = field(default_factory=list)  # (t, node, sha256)
    node_names: list = field(default_factory=list)

    @property
    def failures(self) -> list[Request]:
        return [r for r in self.requests if r.category == "plugin-failure"]

    def failure_windows(self) -> list[tuple[float, float]]:
        """From each first failed request to the next successful one (or the end)."""
        return results.failure_windows(self.requests, "plugin-failure", self.duration)

    @property
    def downtime(self) -> float:
        return sum(b - a for a, b in self.failure_windows())

    @property
    def versions_served(self) -> list[str]:
        return sorted({r.version for r in self.requests if r.category == "ok"})


class Workspace:
    """Two images (old, new) for each run, with the plugin, the launcher and signatures."""

    def __init__(self, root: Path, start_delay: float):
        from shim.demo.replay import run_cli  # the project's own CLI, as an operator runs it

        self.root = root
        # Unix socket paths are limited to 107 bytes: keep the plugins' TMPDIR short.
        base = None if len(tempfile.gettempdir()) < 40 else "/tmp"
        self.sockets = tempfile.mkdtemp(prefix="vps-demo-", dir=base)
        keys = root / "keys"
        keys.mkdir()
        run_cli("keygen", "--unencrypted", "--secret-key", str(keys / "k.key"), "--public-key", str(keys / "k.pub"))
        self.launcher = root / "launcher"
        run_cli("launcher", "build", "--trusted-key", str(keys / "k.pub"), "--name", PLUGIN, "--type", "secret",
                "--plugins-dir", f"versions/{PLUGIN}", "--min-version", OLD, "--output", str(self.launcher))
        self.images = {}
        for version in (OLD, NEW):
            image = root / "images" / version
            (image / "versions" / PLUGIN).mkdir(parents=True)
            plugin = image / f"{PLUGIN}-plugin"
            plugin.write_text(PLUGIN_SOURCE.format(python=os.path.abspath(sys.executable), plugin=PLUGIN,
                                                   version=version, start_delay=start_delay))
            plugin.chmod(0o755)
            versioned = image / "versions" / PLUGIN / f"{PLUGIN}-{version}"
            shutil.copy(plugin, versioned)
            run_cli("sign", "--secret-key", str(keys / "k.key"), "--name", PLUGIN, "--type", "secret",
                    "--version", version, str(versioned))
            shutil.copy(self.launcher, image / f"{PLUGIN}-shim")
            self.images[version] = image

    def sha256(self, version: str, command: str) -> str:
        return digest_file(str(self.images[version] / command))[0]


def write_catalog(path: Path, command: str, sha256: str) -> None:
    """Atomic, like a replicated write: readers see the old entry or the new one."""
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}")
    tmp.write_text(json.dumps({f"secret/{PLUGIN}": {"command": command, "sha256": sha256}}))
    os.replace(tmp, path)


class NodeProc:
    def __init__(self, index: int, name: str, plugin_dir: Path, catalog: Path, sink, env):
        self.index, self.name = index, name
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "shim.demo.node", "--name", name, "--plugin-dir", str(plugin_dir),
             "--catalog", str(catalog), "--plugin", PLUGIN],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, env=env)
        self.lock = threading.Lock()
        self.ready = threading.Event()
        self.reader = threading.Thread(target=self._read, args=(sink,), daemon=True)
        self.reader.start()

    def _read(self, sink) -> None:
        for line in self.proc.stdout:
            try:
                event = json.loads(line)
            except ValueError:
                continue
            if event.get("ev") == "ready":
                self.ready.set()
            sink(self, event)

    def send(self, **cmd) -> bool:
        with self.lock:
            try:
                self.proc.stdin.write(json.dumps(cmd) + "\n")
                self.proc.stdin.flush()
                return True
            except (BrokenPipeError, ValueError, OSError):
                return False

    def stop(self, timeout: float = 5.0) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()  # the pod's SIGTERM: the node stops its plugin and exits
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.reader.join(timeout)


class Run:
    def __init__(self, name: str, ws: Workspace, settings: sched.Settings, rate: float, log=print):
        self.name, self.ws, self.settings, self.rate, self.log = name, ws, settings, rate, log
        self.command = f"{PLUGIN}-plugin" if name == "baseline" else f"{PLUGIN}-shim"
        self.dir = ws.root / name
        self.catalog = self.dir / "catalog.json"
        self.names = [f"vault-{i}" for i in range(settings.nodes)]
        self.nodes: dict[int, NodeProc] = {}
        self.leader = -1
        self.lock = threading.Lock()
        self.requests: dict[int, Request] = {}
        self.launches: list = []
        self.registrations: list = []
        self.t0 = 0.0
        self.mark = f"{MARK}={uuid.uuid4().hex}"

    def _now(self) -> float:
        return time.time() - self.t0

    def _image(self, index: int, version: str) -> Path:
        d = self.dir / self.names[index]
        if d.exists():
            shutil.rmtree(d)
        shutil.copytree(self.ws.images[version], d, symlinks=True)
        os.chmod(d, 0o755)
        return d

    def _start_node(self, index: int, version: str) -> None:
        d = self._image(index, version)
        key, value = self.mark.split("=")
        # Sockets of plugins the demo SIGKILLs on purpose land in a directory of the run's own.
        env = dict(os.environ, TMPDIR=self.ws.sockets, **{key: value})
        self.nodes[index] = NodeProc(index, self.names[index], d, self.catalog, self._on_event, env)

    def _on_event(self, node: NodeProc, ev: dict) -> None:
        t = ev["t"] - self.t0
        if ev["ev"] == "resp":
            with self.lock:
                r = self.requests.get(ev["id"])
                if r is None or r.ok is not None:
                    return
                r.ok, r.t_done = ev["ok"], t
                r.version, r.error = ev.get("version", ""), ev.get("error", "")
                r.category = "ok" if r.ok else ("no-leader" if r.error == "standby node" else "plugin-failure")
        elif ev["ev"] == "launch":
            with self.lock:
                self.launches.append({"t": t, "node": node.index, **{k: ev.get(k) for k in
                                                                      ("ok", "version", "error", "why", "ms")}})

    def _load(self, stop: threading.Event) -> None:
        period, rid, next_t = 1.0 / self.rate, 0, time.time()
        while not stop.is_set():
            rid += 1
            with self.lock:
                leader = self.leader
                r = Request(rid, self._now(), leader)
                self.requests[rid] = r
                if leader < 0 or leader not in self.nodes:
                    r.ok, r.category, r.error = False, "no-leader", "no active node"
                    node = None
                else:
                    node = self.nodes[leader]
            if node is not None and not node.send(op="req", id=rid):
                with self.lock:
                    r.ok, r.category, r.error = False, "interrupted", "node stopped"
            next_t += period
            stop.wait(max(0.0, next_t - time.time()))

    def execute(self) -> RunResult:
        s = self.settings
        events = sched.build(s)
        self.dir.mkdir(parents=True)
        write_catalog(self.catalog, self.command, self.ws.sha256(OLD, self.command))
        stop = threading.Event()
        loader = threading.Thread(target=self._load, args=(stop,), daemon=True)
        started = False
        try:  # from the first node on: a Ctrl-C or a node that does not start stops every node
            for i in range(s.nodes):
                self._start_node(i, OLD)
            for node in self.nodes.values():
                if not node.ready.wait(30):
                    raise RuntimeError(f"{node.name} did not start")
            self.t0 = time.time()
            for ev in events:
                delay = ev.t - self._now()
                if delay > 0:
                    time.sleep(delay)  # the schedule's own clock, not a synchronisation
                self._apply(ev)
                if not started:
                    loader.start()
                    started = True
        finally:
            stop.set()
            if started:
                loader.join()
            self._drain(2.0)
            for node in list(self.nodes.values()):
                node.send(op="exit")
                node.stop()
            self._reap_marked()
        with self.lock:
            for r in self.requests.values():
                if r.ok is None:
                    r.ok, r.category, r.error = False, "interrupted", "node stopped before answering"
        return RunResult(self.name, events, s, events[-1].t, sorted(self.requests.values(), key=lambda r: r.id),
                         list(self.launches), list(self.registrations), self.names)

    def _drain(self, timeout: float) -> None:
        deadline = time.time() + timeout
        while time.time() < deadline:
            with self.lock:
                pending = [r for r in self.requests.values() if r.ok is None and r.node in self.nodes]
            if not pending:
                return
            time.sleep(0.05)

    def _apply(self, ev: sched.Event) -> None:
        if ev.kind == "leader":
            with self.lock:
                old, self.leader = self.leader, ev.node
            if old >= 0 and old in self.nodes and old != ev.node:
                self.nodes[old].send(op="standby")
            if ev.node >= 0:
                self.nodes[ev.node].send(op="active")
        elif ev.kind == "stop":
            node = self.nodes.pop(ev.node)
            node.stop()
            with self.lock:
                for r in self.requests.values():
                    if r.ok is None and r.node == ev.node:
                        r.ok, r.category, r.error = False, "interrupted", "node restarted"
        elif ev.kind == "init":
            if self.name == "baseline":
                sha = self.ws.sha256(NEW, self.command)
                current = json.loads(self.catalog.read_text())[f"secret/{PLUGIN}"]["sha256"]
                if sha != current:
                    write_catalog(self.catalog, self.command, sha)
                    self.registrations.append((ev.t, ev.node, sha))
        elif ev.kind == "start":
            self._start_node(ev.node, NEW)
            self.nodes[ev.node].ready.wait(30)
        elif ev.kind == "crash":
            with self.lock:
                leader = self.leader
            if leader in self.nodes:
                self.nodes[leader].send(op="crash")

    def _reap_marked(self) -> None:
        """Safety net: no process of this run may outlive it."""
        needle = self.mark.encode()
        for pid in os.listdir("/proc"):
            if not pid.isdigit() or int(pid) == os.getpid():
                continue
            try:
                with open(f"/proc/{pid}/environ", "rb") as fh:
                    if needle in fh.read().split(b"\0"):
                        os.kill(int(pid), signal.SIGKILL)
            except (OSError, ProcessLookupError):
                continue


def run_demo(settings: sched.Settings, *, rate: float = 40.0, start_delay: float = 0.0,
             runs=("baseline", "shim"), log=print) -> list[RunResult]:
    with tempfile.TemporaryDirectory(prefix="vault-plugin-shim-demo-") as tmp:
        ws = Workspace(Path(tmp), start_delay)
        try:
            results = []
            for name in runs:
                log(f"running {name} ...")
                results.append(Run(name, ws, settings, rate, log).execute())
            return results
        finally:
            shutil.rmtree(ws.sockets, ignore_errors=True)


# --- presenting a model run ------------------------------------------------------------------

def timeline(run: RunResult):
    """The model run as a :class:`shim.demo.render.Timeline`."""
    from shim.demo import render as R

    n = run.settings.nodes
    up, new, leader = [True] * n, [False] * n, -1
    states = [[] for _ in range(n)]

    def snapshot(t: float) -> None:
        for i in range(n):
            s = R.DOWN if not up[i] else R.LEADER if i == leader else R.STANDBY_NEW if new[i] else R.STANDBY_OLD
            if not states[i] or states[i][-1][1] != s:
                states[i].append((t, s))

    snapshot(0.0)
    for e in sorted(run.events, key=lambda e: e.t):
        if e.kind == "stop":
            up[e.node] = False
        elif e.kind == "start":
            up[e.node], new[e.node] = True, True
        elif e.kind == "leader":
            leader = e.node
        snapshot(e.t)
    requests = [(r.t, r.node, R.FAILED if r.category == "plugin-failure" else
                 (R.SERVED_NEW if r.version == NEW else R.SERVED_OLD))
                for r in run.requests if r.node >= 0 and r.category in ("ok", "plugin-failure")]
    marks = [(t, node, "catalog", f"catalog re-registered by {run.node_names[node]}")
             for t, node, _sha in run.registrations]
    leaders = [(e.t, e.node) for e in sorted(run.events, key=lambda e: e.t) if e.kind == "leader"]
    return R.Timeline(run.name, run.duration, run.node_names, states, requests, run.failure_windows(), marks,
                      leaders)


SUMMARY_HEAD = ("run", "requests", "failed", "plugin downtime s", "versions served", "catalog writes", "no leader*")
FOOTNOTE = ("* requests sent while no node was active (election) or whose node was restarting: "
            "Vault's own unavailability, the same in both runs, not counted as plugin failures.")


def summary_rows(runs: list[RunResult]) -> list[tuple]:
    rows = []
    for r in runs:
        total = sum(1 for q in r.requests if q.category in ("ok", "plugin-failure"))
        no_leader = sum(1 for q in r.requests if q.category in ("no-leader", "interrupted"))
        rows.append((r.name, total, len(r.failures), f"{r.downtime:.2f}", ", ".join(r.versions_served) or "-",
                     len(r.registrations), no_leader))
    return rows
