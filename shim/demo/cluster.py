"""A real OpenBao Raft cluster on loopback, the stage of ``vault-plugin-shim demo``.

N nodes (default 3) named ``vault-0``..``vault-N-1`` as in a StatefulSet. Each node has its own
data directory and its own ``plugin_directory``, which stands for its pod's image: the demo
copies the old image into it, then the new one when it restarts the node. Built on
:mod:`shim.demo.bao` (processes, config, health). Facts this module relies on, seen with
OpenBao 2.7.2 on a 2-core machine:

* Autopilot's server stabilization time is set to 1 s before the other nodes join (the
  default 10 s leaves a new node a non-voter for about 20 s). A node that restarts keeps its
  voter status; it is usable again once autopilot calls it healthy.
* The active node is the Raft leader that also holds the HA lock. ``sys/step-down`` moves
  leadership in under 2 s, but the node that stepped down does not take the lock again for
  10 s, *even when Raft makes it leader again*: a leadership change while a node is in that
  cool-down can leave the cluster with no active node for up to 10 s. :meth:`Cluster.stop`
  and :meth:`Cluster.hand_over` therefore wait out every up node's cool-down first.
* Stopping the active node with SIGTERM hands leadership to another node in well under 1 s;
  which one is Raft's choice, so :meth:`Cluster.hand_over` steps down until the wanted node
  leads. A step-down is a Raft leadership transfer to the most up-to-date voter, ties going
  to the first in Raft's configuration (:meth:`Cluster.raft_order`): with writes in flight
  (the demo's load) the choice varies; on an idle cluster it is the same node each time.

Everything the cluster started is stopped, and its directory removed, by :meth:`close` (also
from ``with``, so on errors and Ctrl-C). A monitor thread polls every node's health and records
state changes as :class:`Event`s, the raw material of the demo's timeline.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import shutil
import signal
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from shim.demo import bao

STEP_DOWN_COOLDOWN = 10.0      # OpenBao's manual step-down sleep (vault/ha.go), plus nothing
COOLDOWN_MARGIN = 0.5
STABILIZATION = "1s"
# autopilot looks at the servers every 10 s and 2 s by default: new voters would wait for it
RAFT_OPTIONS = {"autopilot_reconcile_interval": "1s", "autopilot_update_interval": "500ms"}
POLL = 0.1
KEEP_ENV = "VAULT_PLUGIN_SHIM_DEMO_KEEP"     # keep the demo's directories (nodes' logs) for a post-mortem
CRASH_WAIT = 30.0   # a crashed node the schedule wants as leader: its first restart is at once, the next after 10 s
# The kubelet's restart back-off (pkg/kubelet: flowcontrol.Backoff, 10 s doubling to 5 min): the
# first restart after a crash is at once (no back-off entry yet), then 10 s, 20 s, 40 s ... 300 s.
BACKOFF_FIRST, BACKOFF_CAP = 10.0, 300.0
# How long the rollout waits for a restarted pod to be Ready, or for an active node, before it
# goes on with a note (a real StatefulSet would wait for ever; a demo must end)
READY_WAIT = 75.0

# node states, as the monitor sees them through sys/health
DOWN, STARTING, STANDBY, ACTIVE = "down", "starting", "standby", "active"


def restart_delay(crashes: int) -> float:
    """The kubelet's wait before restarting a container after its ``crashes``-th crash."""
    return 0.0 if crashes <= 1 else min(BACKOFF_CAP, BACKOFF_FIRST * 2 ** (crashes - 2))


class ClusterError(bao.BaoError):
    """The cluster could not be brought up or steered; the message names the node."""


@dataclass
class Event:
    t: float                    # seconds since the cluster's clock started (Cluster.t0)
    kind: str                   # state | stop | start | step-down | image | note
    node: int = -1
    detail: str = ""
    data: dict = field(default_factory=dict)


def api(addr: str, method: str, path: str, body=None, token: str | None = None,
        timeout: float = 5.0, follow: bool = True) -> tuple[int, dict]:
    """One HTTP call to OpenBao's API: (status, decoded JSON body or {}). Status 0 with
    ``{"error": ...}`` when nothing answered. A standby that cannot forward a request answers
    307 to the active node; like OpenBao's own client, this follows it once."""
    host, port = addr.removeprefix("http://").rsplit(":", 1)
    conn = http.client.HTTPConnection(host, int(port), timeout=timeout)
    headers = {"X-Vault-Request": "true"}
    if token:
        headers["X-Vault-Token"] = token
    data = None if body is None else json.dumps(body).encode()
    try:
        conn.request(method, f"/v1/{path}", body=data, headers=headers)
        resp = conn.getresponse()
        raw = resp.read()
        location = resp.getheader("Location") or ""
        if resp.status == 307 and follow and location.startswith("http://"):
            return api(location.split("/v1/", 1)[0], method, path, body, token, timeout, follow=False)
        try:
            decoded = json.loads(raw) if raw else {}
        except ValueError:
            decoded = {"errors": [raw.decode("utf-8", "replace")[:500]]}
        return resp.status, decoded
    except (OSError, http.client.HTTPException) as exc:
        return 0, {"error": f"{type(exc).__name__}: {exc}"}
    finally:
        conn.close()


class Node:
    """One cluster member: a :class:`bao.RaftNode` plus the image it runs."""

    def __init__(self, index: int, server: bao.RaftNode):
        self.index = index
        self.name = f"vault-{index}"
        self.server = server
        self.image = ""            # name of the image in plugin_directory
        self.stepped_down = -1e9   # monotonic time of its last step-down
        self.state = DOWN
        self.lock = threading.RLock()  # one life-cycle change at a time (runner or kubelet)
        self.wanted_up = False     # False while the runner keeps it stopped
        self.crashes = 0
        self.restarting = False

    @property
    def plugin_dir(self) -> Path:
        return self.server.plugin_dir

    @property
    def up(self) -> bool:
        return self.server.pid is not None

    def cooldown_left(self) -> float:
        return max(0.0, self.stepped_down + STEP_DOWN_COOLDOWN + COOLDOWN_MARGIN - time.monotonic())


class Cluster:
    """``Cluster(root, images)`` then ``start(image)``; ``images`` maps an image name to a
    directory whose files are copied into a node's plugin_directory. ``bootstrap`` is the node
    that initialises the cluster (and so is active first). ``slow_stop`` maps a node index to
    seconds its process stays frozen (SIGSTOP) when it is told to stop, to stand for a pod whose
    shutdown takes longer than usual."""

    def __init__(self, root: Path | None, images: dict[str, Path], size: int = 3,
                 bootstrap: int | None = None, log_level: str = "info",
                 slow_stop: dict[int, float] | None = None,
                 on_event: Callable[[Event], None] | None = None):
        if size < 1:
            raise ValueError("a cluster has at least one node")
        self._own_root = root is None
        self.root = Path(tempfile.mkdtemp(prefix="vps-cluster-")) if root is None else Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self.images = {k: Path(v) for k, v in images.items()}
        self.bootstrap = size - 1 if bootstrap is None else bootstrap
        self.slow_stop = dict(slow_stop or {})
        self.on_event = on_event
        self.keep = bool(os.environ.get(KEEP_ENV))  # for post-mortems
        self.t0 = time.monotonic()
        self.events: list[Event] = []
        self._lock = threading.Lock()
        self._monitors: list[threading.Thread] = []
        self._stop_monitor = threading.Event()
        self._timers: list[threading.Timer] = []
        seal = self.root / "seal.key"
        seal.write_bytes(os.urandom(32))
        seal.chmod(0o600)
        self.nodes = [Node(i, bao.RaftNode(self.root / f"vault-{i}", node_id=f"vault-{i}",
                                           seal_key=seal, log_level=log_level, raft_options=RAFT_OPTIONS))
                      for i in range(size)]
        for n in self.nodes:
            n.server.pick_ports()

    # --- clock and events ----------------------------------------------------------------
    def now(self) -> float:
        return time.monotonic() - self.t0

    def record(self, kind: str, node: int = -1, detail: str = "", **data) -> Event:
        ev = Event(round(self.now(), 3), kind, node, detail, data)
        with self._lock:
            self.events.append(ev)
        if self.on_event:
            self.on_event(ev)
        return ev

    @property
    def token(self) -> str | None:
        return next((n.server.token for n in self.nodes if n.server.token), None)

    def call(self, index: int, method: str, path: str, body=None, timeout: float = 5.0):
        return api(self.nodes[index].server.addr, method, path, body, self.token, timeout)

    # --- life cycle ----------------------------------------------------------------------
    def install_image(self, index: int, image: str, first: bool = False) -> None:
        """Put ``image`` in the node's plugin_directory. The node must be stopped, unless
        ``first``: the first image may arrive while a node runs, as long as no plugin has been
        registered yet (OpenBao does not look into plugin_directory before that)."""
        node = self.nodes[index]
        if node.up and not first:
            raise ClusterError(f"{node.name} must be stopped before its image changes")
        shutil.rmtree(node.plugin_dir, ignore_errors=True)
        shutil.copytree(self.images[image], node.plugin_dir, symlinks=False)
        node.image = image
        self.record("image", index, image)

    def start(self, image: str | None) -> "Cluster":
        """Bring every node up on ``image``: the bootstrap node initialises the cluster, the
        others join it (concurrently); returns once all are healthy voters. ``image=None``:
        with empty plugin directories (install the first image later, ``first=True``)."""
        for n in self.nodes:
            if image is None:
                n.plugin_dir.mkdir(parents=True, exist_ok=True)
            else:
                self.install_image(n.index, image)
        boot = self.nodes[self.bootstrap]
        boot.server.peers = []
        self._start_server(boot)
        status, body = self.call(boot.index, "POST", "sys/storage/raft/autopilot/configuration",
                                 {"server_stabilization_time": STABILIZATION,
                                  "cleanup_dead_servers": False})
        if status not in (200, 204):
            raise ClusterError(f"autopilot configuration on {boot.name} failed ({status}): {body}")
        for n in self.nodes:
            n.server.peers = [m.server for m in self.nodes if m is not n]
        errors: list[BaseException] = []

        def join(n: Node) -> None:
            try:
                self._start_server(n)
            except BaseException as exc:  # reported below, from the caller's thread
                errors.append(exc)

        threads = [threading.Thread(target=join, args=(n,), daemon=True)
                   for n in self.nodes if n is not boot]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        if errors:
            raise errors[0]
        for n in self.nodes:
            self.wait_voter(n.index)
        self._start_monitor()
        return self

    def _start_server(self, node: Node, wait: bool = True) -> None:
        """Start the node's process; ``wait``: until it serves (the cluster's first start, where
        a failure is the environment's). Without ``wait`` (a pod restarted during the rollout)
        a process that dies, before serving or after, is the kubelet's to restart."""
        with node.lock:
            if self._stop_monitor.is_set():
                raise ClusterError(f"the cluster is closed: {node.name} is not started again")
            node.wanted_up = True
            self.record("start", node.index, node.image)
            if wait:
                node.server.start()
            else:
                node.server.spawn()
            node.state = STARTING

    def start_node(self, index: int) -> None:
        """Start a stopped node on the image in its plugin_directory (it rejoins as a standby).
        Returns at once: :meth:`wait_ready` waits for it as a rollout would."""
        self._start_server(self.nodes[index], wait=False)

    def wait_ready(self, index: int, deadline: float = READY_WAIT) -> bool:
        """Until the node is a healthy voter (a Ready pod), through any crash and back-off on the
        way; False, with a note, if it is not within ``deadline`` (the rollout then goes on)."""
        try:
            self.wait_voter(index, deadline)
            return True
        except ClusterError:
            node = self.nodes[index]
            self.record("note", index, f"not Ready within {deadline:.0f} s ({node.crashes} crashes so far); "
                                       "the rollout goes on")
            return False

    def stop(self, index: int, grace: float = bao.STOP_GRACE) -> float:
        """SIGTERM the node (by PID) and wait until it has exited; returns how long that took.
        Waits out the other up nodes' step-down cool-down first if this node is active."""
        node = self.nodes[index]
        if self.active_now() == index:
            self.wait_cooldowns(exclude={index})
        with node.lock:
            node.wanted_up = False
            if not node.up:
                return 0.0
            delay = self.slow_stop.get(index, 0.0)
            started = time.monotonic()
            self.record("stop", index, f"SIGTERM pid {node.server.pid}"
                        + (f" (frozen {delay:.1f} s first)" if delay else ""))
            if delay and node.server.pid:
                pid = node.server.pid
                os.kill(pid, signal.SIGSTOP)
                timer = threading.Timer(delay, _signal_quietly, args=(pid, signal.SIGCONT))
                timer.daemon = True
                self._timers.append(timer)
                timer.start()
            node.server.stop(grace=grace + delay)
            took = time.monotonic() - started
            node.state = DOWN
        self.record("stopped", index, f"exited after {took:.2f} s", seconds=took)
        return took

    def restart(self, index: int, image: str, before_start: Callable[[], None] | None = None) -> None:
        """Stop the node, put ``image`` in its plugin_directory, run ``before_start`` (the pod's
        init container), start it, and wait until it is a healthy voter."""
        self.stop(index)
        self.install_image(index, image)
        if before_start is not None:
            before_start()
        self.start_node(index)
        self.wait_voter(index)

    def close(self) -> None:
        """Stop every node (SIGTERM, then SIGKILL after the grace), kill anything they left
        (their plugins), and remove the cluster's directory. Safe to call twice."""
        self._stop_monitor.set()
        for t in self._monitors:
            t.join(5)
        for n in self.nodes:
            n.wanted_up = False
        for timer in self._timers:
            timer.cancel()
        for n in self.nodes:
            pid = n.server.pid
            if pid:
                _signal_quietly(pid, signal.SIGCONT)  # a frozen node must be able to stop
        self._stop_all()
        end = time.monotonic() + bao.START_DEADLINE + 10
        while any(n.restarting for n in self.nodes) and time.monotonic() < end:
            time.sleep(POLL)  # a kubelet restart under way: let it finish, then stop it too
        self._stop_all()
        for n in self.nodes:
            for pid in _wait_gone(n.server, 10.0):
                _signal_quietly(pid, signal.SIGKILL)
        if not self.keep:
            shutil.rmtree(self.root, ignore_errors=True)

    def _stop_all(self) -> None:
        def stop(n: Node) -> None:
            with n.lock:
                n.server.stop(grace=15)

        threads = [threading.Thread(target=stop, args=(n,), daemon=True) for n in self.nodes]
        for t in threads:
            t.start()
        for t in threads:
            t.join()

    def leftovers(self) -> list[int]:
        return sorted({p for n in self.nodes for p in n.server.leftover_processes()})

    def ports(self) -> list[int]:
        return [p for n in self.nodes for p in (n.server.port, n.server.cluster_port)]

    def __enter__(self) -> "Cluster":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # --- observing and steering ---------------------------------------------------------
    def health(self, index: int, timeout: float = 1.0) -> str:
        node = self.nodes[index]
        if not node.up:
            return DOWN
        status, _ = node.server.health(timeout=timeout)
        return {200: ACTIVE, 429: STANDBY}.get(status, STARTING)

    def active_now(self) -> int:
        """The node that answers sys/health as active right now, or -1."""
        for n in self.nodes:
            if self.health(n.index) == ACTIVE:
                return n.index
        return -1

    def wait_active(self, deadline: float = 60.0, exclude: set[int] = frozenset()) -> int:
        end = time.monotonic() + deadline
        while time.monotonic() < end:
            a = self.active_now()
            if a >= 0 and a not in exclude:
                return a
            time.sleep(POLL)
        raise ClusterError(f"no active node (other than {sorted(exclude)}) within {deadline:.0f} s; "
                           + self._states())

    def wait_voter(self, index: int, deadline: float = 60.0) -> None:
        """Until the node's own process serves and autopilot reports it as a healthy voter (or
        the leader). Autopilot alone lags: it still calls a node healthy for seconds after its
        process died. Before the monitor runs (the cluster's first start), this loop restarts a
        node whose process exited, as the kubelet would: a node that served once and then died
        (a CI run saw one, cause unknown) costs a restart, not the replay."""
        name = self.nodes[index].name
        end = time.monotonic() + deadline
        last = ""
        while time.monotonic() < end:
            if not self._monitors:  # the first start: no monitor thread plays the kubelet yet
                for n in self.nodes:
                    self._kubelet(n)
            if self.health(index) not in (STANDBY, ACTIVE):
                last = f"its own sys/health: {self.health(index)}"
                time.sleep(POLL)
                continue
            for n in self.nodes:
                if not n.up:
                    continue
                status, body = self.call(n.index, "GET", "sys/storage/raft/autopilot/state", timeout=2)
                if status != 200:
                    continue
                server = (body.get("data") or {}).get("servers", {}).get(name, {})
                last = f"{server.get('status')}, healthy={server.get('healthy')}"
                if server.get("status") in ("voter", "leader") and server.get("healthy"):
                    return
                break
            time.sleep(POLL)
        raise ClusterError(f"{name} is not a healthy voter within {deadline:.0f} s (last: {last or 'no answer'}); "
                           + self._states() + f"; its log ends:\n{self.nodes[index].server.log_tail(15)}")

    def wait_all_ready(self, deadline: float = READY_WAIT) -> bool:
        """Until every node that should be up serves (a StatefulSet with OrderedReady pod
        management terminates the next pod only when every pod is Running and Ready); False,
        with a note, if that is not so within ``deadline`` (a crash loop), and the rollout goes
        on."""
        end = time.monotonic() + deadline
        while time.monotonic() < end:
            waiting = [n for n in self.nodes if n.wanted_up and self.health(n.index) not in (STANDBY, ACTIVE)]
            if not waiting:
                return True
            time.sleep(POLL)
        self.record("note", -1, f"not every pod is Ready within {deadline:.0f} s ({', '.join(n.name for n in waiting)} "
                                "is not); the rollout goes on")
        return False

    def wait_applied(self, deadline: float = 30.0) -> int:
        """Until every up node has applied the active node's committed Raft index (a standby
        reads the catalog from its own copy of the data); returns that index."""
        a = self.wait_active(deadline)
        _, body = self.call(a, "GET", "sys/leader")
        target = int(body.get("raft_committed_index") or 0)
        end = time.monotonic() + deadline
        for n in self.nodes:
            while n.up:
                _, body = self.call(n.index, "GET", "sys/leader", timeout=2)
                if int(body.get("raft_applied_index") or 0) >= target:
                    break
                if time.monotonic() > end:
                    raise ClusterError(f"{n.name} has not applied Raft index {target} within {deadline:.0f} s")
                time.sleep(POLL / 2)
        return target

    def wait_cooldowns(self, exclude: set[int] = frozenset()) -> float:
        """Sleep until no up node (outside ``exclude``) is in its step-down cool-down; returns
        the time waited. The wait is the point: see the module docstring."""
        left = max((n.cooldown_left() for n in self.nodes if n.up and n.index not in exclude), default=0.0)
        if left > 0:
            self.record("note", -1, f"waiting {left:.1f} s for a step-down cool-down to end")
            time.sleep(left)
        return left

    def step_down(self, index: int) -> bool:
        """``sys/step-down`` on the node; False if it was no longer active to do so."""
        status, body = self.call(index, "PUT", "sys/step-down")
        if status not in (200, 204):
            self.record("note", index, f"step-down refused ({status}): {'; '.join(body.get('errors') or [])}")
            return False
        self.nodes[index].stepped_down = time.monotonic()
        self.record("step-down", index, log_offset=self.nodes[index].server.log_size())
        return True

    def hand_over(self, wanted: int | None, deadline: float = 90.0) -> int:
        """Wait for an active node; if it is not ``wanted``, step it down until ``wanted``
        leads. Returns the active node. ``wanted=None``: whichever.

        The schedule cannot always be had: ``wanted`` may have crashed (OpenBao 2.7.2 can
        panic when its plugin fails) and be in the kubelet's back-off, or Raft may keep
        electing another node. Then leadership stays where it is, a note says so, and the
        rollout goes on, as a real one would. No active node at all within ``deadline`` (a
        crash-looping node and a stopped one leave no quorum) is the same: a note, and -1.
        Only a node the runner stopped is an error."""
        end = time.monotonic() + deadline
        node = None if wanted is None else self.nodes[wanted]
        while True:
            try:
                active = self.wait_active(max(1.0, end - time.monotonic()))
            except ClusterError as exc:
                self.record("note", -1, f"{exc}; the rollout goes on without an active node")
                return -1
            if node is None or active == wanted:
                return active
            if not node.up:
                if not node.wanted_up:
                    raise ClusterError(f"cannot hand leadership to {node.name}: it is stopped")
                self.record("note", wanted, "down after a crash; leadership goes to it once the kubelet has "
                                            "restarted it")
                back = min(end, time.monotonic() + CRASH_WAIT)
                while not node.up and time.monotonic() < back:
                    time.sleep(POLL)
                try:
                    if not node.up:
                        raise ClusterError("still down")
                    self.wait_voter(wanted, max(1.0, back - time.monotonic()))
                except ClusterError:
                    # a crash loop: a rollout does not wait for it; the caller goes on (and
                    # there may be no active node until the stopped one is back)
                    self.record("note", wanted, f"not back as a healthy voter within {CRASH_WAIT:.0f} s (crash "
                                                "loop); the rollout goes on without handing leadership to it")
                    return self.active_now()
                continue
            if time.monotonic() > end:
                order = ", ".join(self.nodes[i].name for i in self.raft_order())
                self.record("note", wanted, f"leadership did not reach it within {deadline:.0f} s; it stays "
                                            f"with {self.nodes[active].name}; " + self._states()
                            + (f"; Raft's configuration order: {order} (a step-down hands leadership to the first "
                               "up-to-date voter in it)" if order else ""))
                return active
            self.wait_cooldowns(exclude={active})
            if self.step_down(active):
                with contextlib.suppress(ClusterError):  # the loop's next wait_active says it
                    self.wait_active(max(1.0, end - time.monotonic()), exclude={active})
            else:
                time.sleep(POLL)

    def raft_order(self) -> list[int]:
        """The nodes in the order of Raft's configuration (join order; [] if no up node
        answers). A step-down hands leadership to the most up-to-date voter, and among equals
        to the first in this order: with no write in flight, that is the same node each time
        (hashicorp/raft's pickServer), so some nodes cannot be reached by step-downs alone."""
        for n in self.nodes:
            if not n.up:
                continue
            status, body = self.call(n.index, "GET", "sys/storage/raft/configuration", timeout=2)
            if status == 200:
                by_name = {m.name: m.index for m in self.nodes}
                return [by_name[s["node_id"]] for s in ((body.get("data") or {}).get("config") or {}).get("servers", [])
                        if s.get("node_id") in by_name]
        return []

    def _states(self) -> str:
        return "node states: " + ", ".join(f"{n.name}={self.health(n.index)}" for n in self.nodes)

    # --- the monitor ---------------------------------------------------------------------
    def _start_monitor(self) -> None:
        for n in self.nodes:
            n.state = self.health(n.index)
            self.record("state", n.index, n.state, image=n.image)
        self._monitors = [threading.Thread(target=self._watch, args=(n,), name=f"monitor-{n.name}", daemon=True)
                          for n in self.nodes]
        for t in self._monitors:
            t.start()

    def _watch(self, n: Node) -> None:
        """One thread per node, so a slow node does not make the others' states stale."""
        while not self._stop_monitor.wait(POLL):
            self._kubelet(n)
            state = self.health(n.index, timeout=2.0)
            if state == STARTING and n.state in (ACTIVE, STANDBY) and n.up:
                # no answer in time from a busy node is not a state change; a sealed or
                # uninitialised answer (503, 501) is, and so is a process that has exited
                status, _ = n.server.health(timeout=2.0)
                if status == 0:
                    continue
            if state != n.state:
                n.state = state
                self.record("state", n.index, state, image=n.image)

    def _kubelet(self, n: Node) -> None:
        """A node process that exited on its own, before serving or after (a crash: OpenBao
        2.7.2 can panic in start-up or later), is restarted as the kubelet restarts a pod's
        container: at once the first time, then after 10 s, 20 s, ... (CrashLoopBackOff), in a
        thread of its own."""
        proc = n.server.proc
        if not n.wanted_up or proc is None or proc.poll() is None or n.restarting:
            return
        n.crashes += 1
        panic = next((ln for ln in n.server.log_tail(80).splitlines() if ln.startswith("panic:")), "")
        self.record("crash", n.index, f"exit status {proc.returncode}" + (f": {panic}" if panic else ""),
                    exit=proc.returncode, panic=panic)
        delay = restart_delay(n.crashes)
        n.restarting = True

        def restart() -> None:
            try:
                if delay and self._stop_monitor.wait(delay):
                    return
                with n.lock:
                    if n.wanted_up and not self._stop_monitor.is_set():
                        n.server.proc = None
                        self.record("start", n.index, f"{n.image} (restarted by the kubelet after a crash"
                                                      + (f", back-off {delay:.0f} s)" if delay else ")"),
                                    backoff=delay)
                        try:
                            n.server.spawn()  # a crash before serving comes back here, with back-off
                            n.state = STARTING
                        except OSError as exc:
                            self.record("note", n.index, f"restart failed: {exc}")
            finally:
                n.restarting = False

        threading.Thread(target=restart, daemon=True, name=f"kubelet-{n.name}").start()

    def states(self) -> dict[int, str]:
        """The monitor's latest view: node index -> state."""
        return {n.index: n.state for n in self.nodes}


def _signal_quietly(pid: int, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.kill(pid, sig)


def _wait_gone(server: bao.Server, timeout: float) -> list[int]:
    end = time.monotonic() + timeout
    left = server.leftover_processes()
    while left and time.monotonic() < end:
        time.sleep(POLL)
        left = server.leftover_processes()
    return left
