"""The rolling upgrade on a real OpenBao cluster, twice: ``baseline`` and ``shim``.

Both runs replay the same :class:`shim.demo.schedule.Plan` on a fresh 3-node Raft cluster
(:mod:`shim.demo.cluster`), with the demo's Go secrets engine (``shim/demo/sdkplugin``, on
OpenBao's SDK, built by :mod:`shim.demo.gomod`) mounted at ``demo/``:

* **baseline**: the plugin binary is registered directly by its sha256. The mount runs the
  catalog entry ``demo-kv`` ``v1.0.0``. Each new pod's "init container" compares the sha256 of
  its own ``demo-kv`` file with that entry and, when they differ, re-registers the entry with
  its own file's sha256 (``bao plugin register -sha256=<own> -version=v1.0.0 ...``): the one
  catalog entry every node reads now names the new binary.
* **shim**: the launcher is registered once (built with the project's own CLI: ``keygen``,
  ``sign``, ``launcher build``); each image holds the same launcher plus its signed version.
  The same init container finds nothing to change.

Load: reads and writes of ``demo/kv/<key>`` with an application token (a policy, not root), at
a fixed rate, in two views at once, as two kinds of client would send them:

* ``active``: to the node the cluster reports active (a Service that selects the active pod);
* ``any``: round robin over every node that is up (a Service over all Ready pods). OpenBao
  2.7 standbys serve reads from their own plugin process, and run a write through their own
  plugin before forwarding it to the active node.

Every answer is kept with its exact error text and put in one of four categories: ``ok``,
``plugin`` (the plugin could not serve: its error names a checksum, a plugin or a nil
backend), ``no-active`` (the cluster's own failover noise: no active node, a node that is
stopping or down; the same in both runs), ``other`` (anything else, shown as is).
"""

from __future__ import annotations

import http.client
import itertools
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from shim.demo import cluster as cl
from shim.demo import schedule as sched
from shim.trust.verify import digest_file

PLUGIN = "demo-kv"
MOUNT = "demo"
OLD, NEW = "1.0.0", "2.0.0"
ENTRY_VERSION = "v" + OLD          # the catalog entry the mount runs
KEYS = 8
VIEWS = ("active", "any")
REQUEST_TIMEOUT = 10.0
SETTLE_WAIT = 15.0                 # a stepped-down node's mount set-up, at most

PLUGIN_SIGNS = ("checksums did not match", "backend is nil", "invalid backend version",
                "existence check", "plugin", "error verifying checksum",
                "rpc error: code = unavailable")  # the plugin's socket is gone: it died
# a request cut off by its node's shutdown ("rpc error: code = Canceled desc = context canceled")
NO_ACTIVE_FIRST = ("context canceled",)
NO_ACTIVE_SIGNS = ("local node not active", "active cluster node not found", "node not active",
                   "is sealed", "standby", "connection refused", "connectionrefused",
                   "remotedisconnected", "connection reset", "broken pipe", "timed out",
                   "forwarding", "forwarded", "no active", "context canceled", "shutting down",
                   "not ready", "leadership", "cannot find peer", "node is not the leader")


def classify(status: int, error: str) -> str:
    """The category of a failed answer, from its HTTP status and exact error text."""
    low = error.lower()
    if "checksum" not in low and any(s in low for s in NO_ACTIVE_FIRST):
        return "no-active"
    if any(s in low for s in PLUGIN_SIGNS):
        return "plugin"
    if status == 0 or status in (429, 503) or any(s in low for s in NO_ACTIVE_SIGNS):
        return "no-active"
    return "other"


@dataclass
class Request:
    id: int
    view: str
    op: str                 # read | write
    key: str
    t: float = 0.0          # sent, seconds since the run's clock started
    node: int = -1          # where it was sent
    status: int = 0
    version: str = ""       # the plugin version that answered (served_by / written_by)
    error: str = ""
    redirected: int = -1    # a standby answered 307: the node the client followed it to
    category: str = "pending"
    t_done: float = 0.0

    @property
    def answered_by(self) -> int:
        """The node that answered: where it was sent, or where that node redirected it."""
        return self.redirected if self.redirected >= 0 else self.node


@dataclass
class CatalogWrite:
    t: float
    node: int               # the pod whose init container wrote
    sha256: str
    detail: str = ""


@dataclass
class RunResult:
    name: str
    plan: sched.Plan
    duration: float
    node_names: list
    events: list = field(default_factory=list)          # cluster.Event
    requests: list = field(default_factory=list)
    catalog_writes: list = field(default_factory=list)
    init_checks: list = field(default_factory=list)     # (t, node, "unchanged" | "rewrote")
    leaders: list = field(default_factory=list)         # (t, node) as the monitor saw them
    node_log: list = field(default_factory=list)        # (t, node, kind, detail) from server logs
    ports: list = field(default_factory=list)           # every TCP port the cluster listened on
    rate: float = 0.0
    waited_cooldown: float = 0.0

    def of(self, view: str | None = None, category: str | None = None) -> list[Request]:
        return [r for r in self.requests if (view is None or r.view == view)
                and (category is None or r.category == category)]

    @property
    def failures(self) -> list[Request]:
        return self.of(category="plugin")

    def failure_windows(self, view: str | None = None) -> list[tuple[float, float]]:
        """Per view: from a first plugin failure to the next success (or the end)."""
        out = []
        for v in ([view] if view else VIEWS):
            start = None
            for r in sorted(self.of(v), key=lambda r: r.t):
                if r.category == "plugin" and start is None:
                    start = r.t
                elif r.category == "ok" and start is not None:
                    out.append((start, r.t))
                    start = None
            if start is not None:
                out.append((start, self.duration))
        return sorted(out)

    def longest_window(self, view: str | None = None) -> float:
        return max((b - a for a, b in self.failure_windows(view)), default=0.0)

    def versions_by_node(self) -> dict[str, list[str]]:
        """Plugin versions that answered reads sent to each node (a node serves its reads
        from its own plugin process, active or standby)."""
        out: dict[str, set] = {n: set() for n in self.node_names}
        for r in self.requests:
            if r.category == "ok" and r.op == "read" and r.version and r.answered_by >= 0:
                out[self.node_names[r.answered_by]].add(r.version)
        return {k: sorted(v) for k, v in out.items()}

    @property
    def versions_served(self) -> list[str]:
        return sorted({r.version for r in self.requests if r.category == "ok" and r.version})

    def error_texts(self, category: str = "plugin") -> dict[str, int]:
        """Exact error texts and how often each came back (the key in a path shown as <key>)."""
        counts: dict[str, int] = {}
        for r in self.of(category=category):
            text = r.error.replace(f"{MOUNT}/kv/{r.key}", f"{MOUNT}/kv/<key>").strip()
            counts[text] = counts.get(text, 0) + 1
        return dict(sorted(counts.items(), key=lambda kv: -kv[1]))

    def cause(self, r: Request) -> str:
        """Why a plugin failure happened, in OpenBao's words: the error itself when it names
        the cause, else the node's last failed mount set-up before the request."""
        if "backend is nil" not in r.error:
            return r.error.strip()
        where = r.redirected if r.redirected >= 0 else r.node
        # a write through a standby is forwarded: the nil backend may be the active node's
        for node in [where] + [n for n in range(len(self.node_names)) if n != where]:
            last = [d for t, n, k, d in self.node_log if n == node and k == "mount-failed" and t <= r.t_done + 1.0]
            if last:
                return f"{self.node_names[node]}: mount set-up failed: {last[-1]}"
        return "(no failed mount set-up in any node's log) " + r.error.strip()

    def causes(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        for r in self.failures:
            c = self.cause(r)
            c = c.split(": ", 1)[1] if c.startswith("vault-") else c
            counts[c] = counts.get(c, 0) + 1
        return dict(sorted(counts.items(), key=lambda kv: -kv[1]))


# --- images ---------------------------------------------------------------------------------

def run_cli(*args: str) -> str:
    """The project's own CLI, as an operator would run it."""
    proc = subprocess.run([sys.executable, "-m", "shim.cli", *args], capture_output=True, text=True,
                          timeout=120, stdin=subprocess.DEVNULL)
    if proc.returncode != 0:
        raise RuntimeError(f"`vault-plugin-shim {' '.join(args)}` failed ({proc.returncode}): "
                           f"{proc.stderr.strip() or proc.stdout.strip()}")
    return proc.stdout


class Images:
    """The two images (old and new) of each run, built once per demo in ``root``:
    ``root/<run>/<version>/`` is copied into a node's plugin_directory."""

    def __init__(self, root: Path, cache_dir: Path | None = None):
        from shim.demo import gomod

        self.root = Path(root)
        bins = self.root / "bin"
        # the secrets engine of shim/demo/sdkplugin, on OpenBao's SDK and served as users serve
        # theirs (plugin.ServeMultiplex); the two versions differ by what they report
        self.plugins = {v: gomod.build_sdk_plugin("secret", v, bins, multiplex=True, cache_dir=cache_dir,
                                                  name=f"{PLUGIN}-{v}") for v in (OLD, NEW)}
        keys = self.root / "keys"
        keys.mkdir()
        run_cli("keygen", "--unencrypted", "--secret-key", str(keys / "release.key"),
                "--public-key", str(keys / "release.pub"))
        self.launcher = self.root / "launcher"
        run_cli("launcher", "build", "--trusted-key", str(keys / "release.pub"), "--name", PLUGIN,
                "--type", "secret", "--plugins-dir", "versions", "--min-version", OLD,
                "--output", str(self.launcher))
        self.dirs: dict[str, dict[str, Path]] = {"baseline": {}, "shim": {}}
        for v in (OLD, NEW):
            base = self.root / "baseline" / v
            base.mkdir(parents=True)
            shutil.copy2(self.plugins[v], base / PLUGIN)
            self.dirs["baseline"][v] = base
            shim = self.root / "shim" / v
            versions = shim / "versions"
            versions.mkdir(parents=True)
            shutil.copy2(self.launcher, shim / PLUGIN)
            signed = versions / f"{PLUGIN}-{v}"
            shutil.copy2(self.plugins[v], signed)
            run_cli("sign", "--secret-key", str(keys / "release.key"), "--name", PLUGIN, "--type", "secret",
                    "--version", v, str(signed))
            self.dirs["shim"][v] = shim

    def command_sha256(self, run: str, version: str) -> str:
        return digest_file(str(self.dirs[run][version] / PLUGIN))[0]


# --- load -----------------------------------------------------------------------------------

class Load:
    """Fixed-rate reads and writes in both views, from a thread pool; every request is kept."""

    def __init__(self, c: cl.Cluster, token: str, rate: float, clock: Callable[[], float]):
        self.c, self.token, self.rate, self.clock = c, token, rate, clock
        self.requests: list[Request] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._ids = itertools.count(1)
        self._pool = ThreadPoolExecutor(max_workers=48, thread_name_prefix="load")
        self._local = threading.local()
        self._threads = [threading.Thread(target=self._pace, args=(v,), daemon=True, name=f"pace-{v}")
                         for v in VIEWS]
        self._rr = itertools.count()

    def start(self) -> None:
        for t in self._threads:
            t.start()

    def stop(self, drain: float = REQUEST_TIMEOUT + 2) -> None:
        self._stop.set()
        for t in self._threads:
            t.join()
        self._pool.shutdown(wait=True, cancel_futures=False)

    def counts(self) -> dict[str, int]:
        with self._lock:
            reqs = list(self.requests)
        out = {"sent": len(reqs)}
        for r in reqs:
            out[r.category] = out.get(r.category, 0) + 1
        return out

    def _pace(self, view: str) -> None:
        period = len(VIEWS) / self.rate  # the rate is per run, shared by the views
        ops = itertools.cycle(("read", "write"))
        next_t = time.monotonic()
        n = 0
        while not self._stop.is_set():
            op = next(ops)
            r = Request(next(self._ids), view, op, f"k{n % KEYS}")
            n += 1
            with self._lock:
                self.requests.append(r)
            self._pool.submit(self._send, r)
            next_t += period
            self._stop.wait(max(0.0, next_t - time.monotonic()))

    def _target(self, view: str) -> int:
        states = self.c.states()
        if view == "active":
            return next((i for i, s in states.items() if s == cl.ACTIVE), -1)
        up = [i for i, s in sorted(states.items()) if s in (cl.ACTIVE, cl.STANDBY)]
        return up[next(self._rr) % len(up)] if up else -1

    def _conn(self, index: int) -> http.client.HTTPConnection:
        conns = self._local.__dict__.setdefault("conns", {})
        port = self.c.nodes[index].server.port
        conn = conns.get(port)
        if conn is None:
            conn = conns[port] = http.client.HTTPConnection("127.0.0.1", port, timeout=REQUEST_TIMEOUT)
        return conn

    def _drop(self, index: int) -> None:
        conns = self._local.__dict__.setdefault("conns", {})
        conn = conns.pop(self.c.nodes[index].server.port, None)
        if conn is not None:
            conn.close()

    def _http(self, node: int, method: str, path: str, body, headers) -> tuple[int, dict, str]:
        try:
            conn = self._conn(node)
            conn.request(method, path, body=body, headers=headers)
            resp = conn.getresponse()
            raw = resp.read()
            try:
                doc = json.loads(raw) if raw else {}
            except ValueError:
                doc = {"errors": [raw.decode("utf-8", "replace")[:300]]}
            return resp.status, doc, resp.getheader("Location") or ""
        except (OSError, http.client.HTTPException) as exc:
            self._drop(node)
            return 0, {"errors": [f"{type(exc).__name__}: {exc}"]}, ""

    def _send(self, r: Request) -> None:
        r.t = self.clock()
        r.node = self._target(r.view)
        if r.node < 0:
            r.category, r.error, r.t_done = "no-active", "no node to send to (none active/up)", r.t
            return
        path = f"/v1/{MOUNT}/kv/{r.key}"
        headers = {"X-Vault-Token": self.token, "X-Vault-Request": "true"}
        body = None
        method = "GET"
        if r.op == "write":
            method, body = "PUT", json.dumps({"n": r.id}).encode()
            headers["Content-Type"] = "application/json"
        r.status, doc, location = self._http(r.node, method, path, body, headers)
        if r.status == 307 and location:
            # a standby that cannot forward redirects the client to the active node; the
            # Vault/OpenBao clients follow it, so does this one (once)
            port = int(location.split("://", 1)[-1].split("/", 1)[0].rsplit(":", 1)[1])
            r.redirected = next((n.index for n in self.c.nodes if n.server.port == port), -1)
            if r.redirected >= 0:
                r.status, doc, _ = self._http(r.redirected, method, path, body, headers)
        r.t_done = self.clock()
        if 200 <= r.status < 300:
            data = doc.get("data") or {}
            r.version = data.get("served_by") or data.get("written_by") or ""
            r.category = "ok"
        else:
            r.error = "; ".join(str(e) for e in doc.get("errors") or [f"HTTP {r.status}"])
            r.category = classify(r.status, r.error)


# --- one run --------------------------------------------------------------------------------

APP_POLICY = f'path "{MOUNT}/*" {{ capabilities = ["create", "read", "update", "delete", "list"] }}'


class Replay:
    def __init__(self, name: str, images: Callable[[], Images], plan: sched.Plan, root: Path, rate: float,
                 progress: Callable[[str, str], None] = lambda run, msg: None,
                 slow_stop: dict[int, float] | None = None, timing: sched.Timing | None = None):
        """``images`` returns the built images (it may wait for a build that runs meanwhile)."""
        self.name, self.get_images, self.plan, self.rate = name, images, plan, rate
        self.images: Images | None = None
        self.timing = timing or sched.Timing()
        self.progress = progress
        self.c = cl.Cluster(root, {}, size=plan.nodes, bootstrap=plan.initial, slow_stop=slow_stop,
                            on_event=self._on_event)
        self.t_run = None
        self.catalog_writes: list[CatalogWrite] = []
        self.init_checks: list = []
        self.leaders: list = []
        self._last_active = -2

    def clock(self) -> float:
        return self.c.now() - (self.t_run or 0.0)

    def _on_event(self, ev: cl.Event) -> None:
        if ev.kind == "state" and self.t_run is not None:
            active = next((n.index for n in self.c.nodes if n.state == cl.ACTIVE), -1)
            if active != self._last_active:
                self._last_active = active
                self.leaders.append((round(self.clock(), 3), active))
        if ev.kind in ("stop", "step-down", "start", "note"):
            who = self.c.nodes[ev.node].name if ev.node >= 0 else ""
            self.progress(self.name, f"{ev.kind} {who} {ev.detail}".strip())

    def _admin(self, method: str, path: str, body=None, wait: float = 30.0) -> dict:
        """A call to the active node as the operator (root token), waiting up to ``wait``
        seconds for there to be one."""
        for _ in range(50):
            a = self.c.wait_active(wait)
            status, doc = self.c.call(a, method, path, body, timeout=30)
            if status in (200, 204):
                return doc
            if status not in (0, 500, 503):
                break
            time.sleep(0.2)
        raise cl.ClusterError(f"{method} {path} failed ({status}): {doc}")

    def _setup(self) -> str:
        run_sha = self.images.command_sha256(self.name, OLD)
        self._admin("POST", f"sys/plugins/catalog/secret/{PLUGIN}",
                    {"sha256": run_sha, "command": PLUGIN, "version": ENTRY_VERSION})
        self._admin("POST", f"sys/mounts/{MOUNT}", {"type": PLUGIN, "config": {"plugin_version": ENTRY_VERSION}})
        self._admin("PUT", "sys/policies/acl/app", {"policy": APP_POLICY})
        token = self._admin("POST", "auth/token/create", {"policies": ["app"], "ttl": "1h"})["auth"]["client_token"]
        for k in range(KEYS):
            self._admin("PUT", f"{MOUNT}/kv/k{k}", {"n": 0})
        # every node (standbys too) serves the mount before the load starts
        end = time.monotonic() + 60
        pending = set(range(self.plan.nodes))
        while pending and time.monotonic() < end:
            for i in sorted(pending):
                status, _ = cl.api(self.c.nodes[i].server.addr, "GET", f"{MOUNT}/kv/k0", token=token, timeout=5)
                if status == 200:
                    pending.discard(i)
            time.sleep(cl.POLL)
        if pending:
            raise cl.ClusterError(f"the mount is not served by {[self.c.nodes[i].name for i in pending]}")
        return token

    def _settle_step_downs(self, since: int) -> None:
        """A node that steps down sets its mounts up again, a moment later. The step-downs
        exist only to steer the schedule (a real rollout has none), so the pod's init container
        waits until that set-up is done: otherwise an old-image node could meet the new
        checksum there, a failure (and a crash loop) of the runner's making."""
        for e in [e for e in self.c.events[since:] if e.kind == "step-down"]:
            server = self.c.nodes[e.node].server
            end = time.monotonic() + SETTLE_WAIT
            while time.monotonic() < end and server.pid is not None:
                if any(k in ("launch", "mount-failed") for _, k, _ in cl.log_events(server.log_text(e.data["log_offset"]))):
                    break
                time.sleep(cl.POLL)

    def _init_container(self, index: int) -> None:
        """The new pod's init container: re-register the catalog entry the mount runs with the
        sha256 of this image's own file, if it differs. It waits for an active node as long as
        a rollout waits for a pod (a crash-looping node and this stopped one can leave the
        cluster without quorum); then it gives up with a note and the pod starts anyway."""
        try:
            self._write_catalog_if_needed(index)
        except cl.ClusterError as exc:
            self.c.record("note", index, f"init container gave up: {str(exc).splitlines()[0]}; the pod starts "
                                         "without it")

    def _write_catalog_if_needed(self, index: int) -> None:
        own = self.images.command_sha256(self.name, NEW)
        entry = self._admin("GET", f"sys/plugins/catalog/secret/{PLUGIN}/{ENTRY_VERSION}",
                            wait=cl.READY_WAIT).get("data") or {}
        t = round(self.clock(), 3)
        if entry.get("sha256") == own:
            self.init_checks.append((t, index, "unchanged"))
            self.progress(self.name, f"init container of {self.c.nodes[index].name}: catalog unchanged")
            return
        self._admin("POST", f"sys/plugins/catalog/secret/{PLUGIN}",
                    {"sha256": own, "command": PLUGIN, "version": ENTRY_VERSION}, wait=cl.READY_WAIT)
        self.catalog_writes.append(CatalogWrite(t, index, own, f"{PLUGIN} {ENTRY_VERSION} sha256 {own[:12]}"))
        self.init_checks.append((t, index, "rewrote"))
        self.progress(self.name, f"init container of {self.c.nodes[index].name}: catalog sha256 -> {own[:12]}")

    def execute(self) -> RunResult:
        tm = self.timing
        with self.c:
            self.progress(self.name, f"starting {self.plan.nodes} OpenBao nodes")
            self.c.start(None)  # the images are being built meanwhile
            self.images = self.get_images()
            self.c.images = {"old": self.images.dirs[self.name][OLD], "new": self.images.dirs[self.name][NEW]}
            for n in self.c.nodes:
                self.c.install_image(n.index, "old", first=True)
            self.progress(self.name, "registering the plugin, mounting demo/")
            token = self._setup()
            load = Load(self.c, token, self.rate, self.clock)
            self.t_run = self.c.now()
            self._last_active = -2
            self._on_event(cl.Event(0, "state"))
            load.start()
            threading.Thread(target=self._ticker, args=(load,), daemon=True).start()
            try:
                time.sleep(tm.lead_in)  # steady state before the rollout: the plan's own clock
                for step in self.plan.steps:
                    self.c.wait_all_ready()
                    was_active = self.c.active_now() == step.node
                    self.c.stop(step.node)
                    if was_active:
                        before = len(self.c.events)
                        self.c.hand_over(step.leader_after)
                        self._settle_step_downs(before)
                    self.c.install_image(step.node, "new")
                    self._init_container(step.node)
                    self.c.start_node(step.node)
                    self.c.wait_ready(step.node)
                    time.sleep(tm.settle)
                time.sleep(tm.tail)
            finally:
                self._ticking = False
                load.stop()
            duration = self.clock()
            events = [cl.Event(round(e.t - self.t_run, 3), e.kind, e.node, e.detail, e.data)
                      for e in self.c.events]
            offset = time.time() - self.clock()   # unix time of the run's t = 0
            node_log = sorted((round(when - offset, 3), n.index, kind, detail)
                              for n in self.c.nodes for when, kind, detail in cl.log_events(n.server.log_text()))
            explain_internal_errors(load.requests, node_log)
            waited = sum(float(e.detail.split()[1]) for e in self.c.events
                         if e.kind == "note" and e.detail.startswith("waiting"))
        return RunResult(self.name, self.plan, duration, [n.name for n in self.c.nodes], events,
                         sorted(load.requests, key=lambda r: r.id), self.catalog_writes, self.init_checks,
                         self.leaders, node_log, self.c.ports(), self.rate, waited)

    _ticking = True

    def _ticker(self, load: Load) -> None:
        while self._ticking:
            c = load.counts()
            self.progress(self.name, f"t={self.clock():5.1f}s sent {c['sent']}, ok {c.get('ok', 0)}, "
                                     f"plugin failures {c.get('plugin', 0)}, no active {c.get('no-active', 0)}")
            time.sleep(1.0)


def explain_internal_errors(requests: list[Request], node_log: list) -> None:
    """OpenBao answers a write whose existence check failed with a bare ``internal error`` and
    logs the cause (``failed to run existence check: error=...``). Put that cause next to the
    answer, and classify the request by it."""
    for r in requests:
        if r.category != "other" or "internal error" not in r.error:
            continue
        # a write through a standby runs on the active node too: look at every node's log
        near = [(abs(t - r.t_done), d) for t, n, k, d in node_log
                if k == "existence-check-failed" and r.t - 1.0 <= t <= r.t_done + 1.0]
        if near:
            cause = min(near)[1]
            r.error = f"{r.error.strip()} (server log: failed to run existence check: {cause})"
            r.category = classify(500, cause)


def run_demo(settings: sched.Settings, *, rate: float = 50.0, runs=("baseline", "shim"),
             parallel: bool = True, progress: Callable[[str, str], None] = lambda run, msg: None,
             slow_stop: dict[int, float] | None = None, timing: sched.Timing | None = None,
             cache_dir: Path | None = None, workdir: Path | None = None) -> list[RunResult]:
    """Build the images once, then replay the plan in each run (at the same time, by default:
    two clusters of three nodes fit on two cores). Every process and directory is gone on
    return, on errors and on Ctrl-C too."""
    plan = sched.plan(settings)
    base = None if len(tempfile.gettempdir()) < 40 else "/tmp"  # unix socket paths are short
    root = Path(tempfile.mkdtemp(prefix="vps-demo-", dir=workdir or base))
    try:
        progress("", "building the plugin (2 versions) and the launcher, while the nodes start")
        built: list = []
        done = threading.Event()

        def build() -> None:
            try:
                built.append(Images(root / "images", cache_dir=cache_dir or _default_cache()))
            except BaseException as exc:  # handed to whoever waits for the images
                built.append(exc)
            finally:
                done.set()

        def images() -> Images:
            done.wait()
            if isinstance(built[0], BaseException):
                raise built[0]
            return built[0]

        threading.Thread(target=build, daemon=True, name="build-images").start()
        replays = [Replay(name, images, plan, root / name, rate, progress, slow_stop, timing) for name in runs]
        if not parallel or len(replays) == 1:
            return [r.execute() for r in replays]
        results: dict[str, RunResult] = {}
        errors: list[BaseException] = []

        def go(r: Replay) -> None:
            try:
                results[r.name] = r.execute()
            except BaseException as exc:  # re-raised in the caller's thread below
                errors.append(exc)

        threads = [threading.Thread(target=go, args=(r,), daemon=True, name=f"run-{r.name}") for r in replays]
        for t in threads:
            t.start()
        try:
            for t in threads:
                while t.is_alive():
                    t.join(0.2)
        except BaseException:
            for r in replays:  # Ctrl-C: stop every cluster now, from this thread
                r.c.close()
            raise
        if errors:
            raise errors[0]
        return [results[name] for name in runs]
    finally:
        if not os.environ.get(cl.KEEP_ENV):
            shutil.rmtree(root, ignore_errors=True)


CACHE_ENV = "VAULT_PLUGIN_SHIM_DEMO_CACHE"


def _default_cache() -> Path:
    """Where the demo keeps its built plugin binaries: $VAULT_PLUGIN_SHIM_DEMO_CACHE, else
    ~/.cache/vault-plugin-shim/demo-go (Go's own build cache is separate: ``go env GOCACHE``)."""
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV])
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "vault-plugin-shim" / "demo-go"


def prepare(cache_dir: Path | None = None) -> Path:
    """Build and cache the demo's plugin binaries (a first build compiles gRPC and friends
    from source: minutes on 2 cores, once)."""
    cache = cache_dir or _default_cache()
    with tempfile.TemporaryDirectory(prefix="vps-demo-prepare-") as tmp:
        Images(Path(tmp) / "images", cache_dir=cache)
    return cache
