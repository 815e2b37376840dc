"""The demo's load, and what each answer means.

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
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Callable

from shim.demo import cluster as cl

MOUNT = "demo"
KEYS = 8
VIEWS = ("active", "any")
REQUEST_TIMEOUT = 10.0

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
    # 307 as the last answer: the node it was sent to, or the one that node named as active, is
    # a standby that redirects (followed once, as OpenBao's client does): no node was active there
    if status == 0 or status in (307, 429, 503) or any(s in low for s in NO_ACTIVE_SIGNS):
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
