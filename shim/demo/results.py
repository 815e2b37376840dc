"""What one replay recorded (:class:`RunResult`): the cluster's events, every request of the
load, the catalog writes, the leaders and the nodes' own log lines; and what the report asks
of them (failure windows, versions served, causes)."""

from __future__ import annotations

from dataclasses import dataclass, field

from shim.demo import schedule as sched
from shim.demo.load import MOUNT, VIEWS, Request


def failure_windows(requests, failed: str, end: float) -> list[tuple[float, float]]:
    """From each first request in category ``failed`` to the next ``ok`` one (or ``end``),
    in the order the requests were sent; other categories neither open nor close a window."""
    windows, start = [], None
    for r in sorted((r for r in requests if r.category in ("ok", failed)), key=lambda r: r.t):
        if r.category == failed and start is None:
            start = r.t
        elif r.category == "ok" and start is not None:
            windows.append((start, r.t))
            start = None
    if start is not None:
        windows.append((start, end))
    return windows


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
        return sorted(w for v in ([view] if view else VIEWS)
                      for w in failure_windows(self.of(v), "plugin", self.duration))

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
