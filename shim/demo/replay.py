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

The load and its categories: :mod:`shim.demo.load`; what a run recorded:
:mod:`shim.demo.results`.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Callable

from shim.demo import cluster as cl
from shim.demo import nodelog
from shim.demo import schedule as sched
from shim.demo.load import KEYS, MOUNT, Load, explain_internal_errors
from shim.demo.results import CatalogWrite, RunResult
from shim.trust.verify import digest_file

PLUGIN = "demo-kv"
OLD, NEW = "1.0.0", "2.0.0"
ENTRY_VERSION = "v" + OLD          # the catalog entry the mount runs
SETTLE_WAIT = 15.0                 # a stepped-down node's mount set-up, at most


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
                if any(k in ("launch", "mount-failed") for _, k, _ in nodelog.log_events(server.log_text(e.data["log_offset"]))):
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
                              for n in self.c.nodes for when, kind, detail in nodelog.log_events(n.server.log_text()))
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
