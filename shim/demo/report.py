"""The demo's report: one run of :mod:`shim.demo.replay` as a timeline, tables and texts (the
terminal's and the HTML report's), and the progress line while it runs."""

from __future__ import annotations

import sys
import threading
import time

from shim.demo import cluster as cl
from shim.demo.load import VIEWS
from shim.demo.replay import ENTRY_VERSION
from shim.demo.results import RunResult

def timeline(run: RunResult):
    """The run as a :class:`shim.demo.render.Timeline` (t = 0 is when the load started)."""
    from shim.demo import render as R

    image = {i: "old" for i in range(len(run.node_names))}
    raw = {i: [] for i in range(len(run.node_names))}
    for e in sorted(run.events, key=lambda e: e.t):
        if e.node < 0:
            continue
        if e.kind == "image":
            image[e.node] = e.detail
        elif e.kind == "state":
            img = e.data.get("image", image[e.node])
            raw[e.node].append((e.t, {cl.DOWN: R.DOWN, cl.STARTING: R.STARTING, cl.ACTIVE: R.LEADER}.get(
                e.detail, R.STANDBY_NEW if img == "new" else R.STANDBY_OLD)))
        elif e.kind in ("stopped", "crash"):
            raw[e.node].append((e.t, R.DOWN))
    states = []
    for i in range(len(run.node_names)):
        changes = sorted(raw[i])
        before = [s for t, s in changes if t <= 0]
        states.append([(0.0, before[-1] if before else R.DOWN)] + [(t, s) for t, s in changes if t > 0])
    # a node's row: the version that answered the reads it served itself (standbys too), and
    # every request sent to it that met a plugin failure (writes included: a standby runs them
    # through its own plugin, then forwards them to the active node)
    requests = [(r.t, r.answered_by, R.FAILED, r.op) for r in run.requests if r.category == "plugin"]
    requests += [(r.t, r.answered_by, R.SERVED_OLD if r.version == ENTRY_VERSION else R.SERVED_NEW, r.op)
                 for r in run.requests if r.category == "ok" and r.version]
    marks = [(w.t, w.node, "catalog", f"catalog written by {run.node_names[w.node]}'s init container "
                                      f"({w.detail})") for w in run.catalog_writes]
    for e in run.events:
        kind = "kubelet" if e.kind == "start" and "kubelet" in e.detail else e.kind
        if kind in ("crash", "step-down", "stop", "kubelet") and e.node >= 0:
            marks.append((e.t, e.node, kind, f"{run.node_names[e.node]}: {e.kind} {e.detail}".strip()))
    return R.Timeline(run.name, run.duration, run.node_names, states, requests, run.failure_windows(), marks,
                      [(t, n) for t, n in run.leaders], causes=failure_causes(run), subtitle=SUBTITLES.get(run.name, ""))


SUBTITLES = {"baseline": "plugin registered by its sha256", "shim": "launcher registered once"}


def short_cause(text: str) -> tuple[str, str]:
    """A failure's cause in a few words, for a label on the timeline, and the node whose log
    gave it ('' when the answer itself said it)."""
    node, _, rest = text.partition(": ") if text.startswith("vault-") else ("", "", text)
    for known in ("checksums did not match", "error verifying checksum", "backend is nil"):
        if known in rest:
            return known + (" (mount set-up failed)" if "mount set-up failed" in rest else ""), node
    return rest[:90], node


def failure_causes(run: RunResult) -> list[tuple[float, float, str]]:
    """Each band of plugin failures (overlapping windows of both views merged) with the most
    common cause of the failures in it and the nodes whose logs say so."""
    from shim.demo.render import merge_windows

    out = []
    for a, b in merge_windows(run.failure_windows()):
        counts: dict[str, int] = {}
        nodes: dict[str, set] = {}
        for r in run.failures:
            if a <= r.t <= b:
                cause, node = short_cause(run.cause(r))
                counts[cause] = counts.get(cause, 0) + 1
                nodes.setdefault(cause, set()).update([node] if node else [])
        if counts:
            text, n = max(counts.items(), key=lambda kv: kv[1])
            where = " and ".join(sorted(nodes[text]))
            out.append((a, b, f"{n} failures from {a:.1f} s: {text}" + (f", in the log of {where}" if where else "")))
    return out


SUMMARY_HEAD = ("run", "view", "requests", "ok", "plugin failures", "longest window s", "no active*", "other",
                "versions served")
RUN_HEAD = ("run", "catalog writes", "node crashes", "step-downs", "cool-down waits s", "versions per node (reads)")


def summary_rows(runs: list[RunResult]) -> list[tuple]:
    rows = []
    for run in runs:
        for view in VIEWS:
            reqs = run.of(view)
            versions = sorted({r.version for r in reqs if r.category == "ok" and r.version})
            rows.append((run.name, view, len(reqs), len(run.of(view, "ok")), len(run.of(view, "plugin")),
                         f"{run.longest_window(view):.2f}", len(run.of(view, "no-active")),
                         len(run.of(view, "other")), ", ".join(versions) or "-"))
    return rows


def run_rows(runs: list[RunResult]) -> list[tuple]:
    return [(run.name, len(run.catalog_writes), sum(1 for e in run.events if e.kind == "crash"),
             sum(1 for e in run.events if e.kind == "step-down"), f"{run.waited_cooldown:.1f}",
             "; ".join(f"{n}: {', '.join(v) or '-'}" for n, v in run.versions_by_node().items()))
            for run in runs]


PROBLEM = ("Vault and OpenBao start an external plugin only if the SHA-256 of its file matches the one plugin "
           "catalog every node shares. In a rolling upgrade the first pod on the new image registers the new "
           "binary's checksum, and from then on every node still on the old image fails whenever it has to start "
           "its plugin (checksums did not match) until it is upgraded too.")
FIX = ("With vault-plugin-shim the catalog names a small launcher whose checksum never changes. On each node it "
       "checks the plugin in that node's own image against a signed manifest and runs it, so old and new pods "
       "keep serving side by side and the catalog is not written during the rollout.")
PS_TITLE = "PS: why does a request to a node on the old image sometimes succeed?"
PS = (
    "Only a launch checks the SHA-256. A plugin process that a node started before the catalog entry changed "
    "keeps serving its reads and writes, with the same PID, whether the node is active or a standby.",
    "Anything that makes a node start the plugin again afterwards fails on an old image. Becoming active (a "
    "failover or a step-down), and stepping back to standby, set the mounts up again: the launch fails, the mount "
    "has no backend, and every request there answers 404 'route entry found, but backend is nil'; the cause, "
    "'checksums did not match', is only in that node's log, which is where this report reads it. A crashed plugin "
    "is relaunched by the next request, which answers 500 'checksums did not match', and so does every later one; "
    "'plugin reload' answers 400 and leaves the mount without a backend.",
    "OpenBao 2.7 starts every node's plugin at mount set-up (no lazy start), standbys included. A write sent to a "
    "standby runs through the standby's own plugin and then the active node's, so it fails if either of the two "
    "had to launch the old binary.",
    "A standby restarted on the old image after the catalog changed has a mount without a backend; OpenBao 2.7.2 "
    "then panics in Router.Invalidate at the next write to that mount. Those are the crashes marked on the "
    "baseline's timeline: the kubelet restarts the node with its back-off, and it panics again until it is upgraded.",
)
FOOTNOTE = ("* no active: sent while no node was active, to a node that was stopping or down, or cut off by "
            "its node's shutdown: the cluster's own failover, not the plugin (same in both runs).")


def failure_text(runs: list[RunResult]) -> str:
    """Each run's plugin failures by exact error text, and their causes in the nodes' logs."""
    out = []
    for run in runs:
        if not run.failures:
            out.append(f"{run.name}: no plugin failures")
            continue
        out.append(f"{run.name}: {len(run.failures)} plugin failures; the answers were:")
        out += [f"  {n:5d} x {text}" for text, n in run.error_texts().items()]
        out.append("  cause, from the node's own log:")
        out += [f"  {n:5d} x {text}" for text, n in run.causes().items()]
    other = [(run.name, t, n) for run in runs for t, n in run.error_texts("other").items()]
    if other:
        out.append("other errors (neither the plugin nor failover):")
        out += [f"  {name}: {n} x {text}" for name, text, n in other]
    return "\n".join(out)


def timeline_events(run: RunResult) -> str:
    """Every event of the run, one per line: the cluster, the init containers, the logs."""
    lines = []
    for e in run.events:
        if e.kind in ("image",) or e.t < -60:
            continue
        who = run.node_names[e.node] if e.node >= 0 else ""
        lines.append((e.t, f"{who:8} {e.kind:10} {e.detail}"))
    for w in run.catalog_writes:
        lines.append((w.t, f"{run.node_names[w.node]:8} {'catalog':10} init container wrote {w.detail}"))
    for t, node, kind in run.init_checks:
        if kind == "unchanged":
            lines.append((t, f"{run.node_names[node]:8} {'init':10} init container: catalog already right"))
    for t, node, kind, detail in run.node_log:
        lines.append((t, f"{run.node_names[node]:8} {'log:' + kind:10} {detail}"))
    return "\n".join(f"{t:8.2f}s  {text}" for t, text in sorted(lines))


def failed_requests_text(run: RunResult, limit: int = 2000) -> str:
    lines = [f"{r.t:8.2f}s  {r.view:6} {r.op:5} {run.node_names[r.node] if r.node >= 0 else '-':8} "
             f"HTTP {r.status}  {r.error.strip()}" for r in run.failures[:limit]]
    if len(run.failures) > limit:
        lines.append(f"... and {len(run.failures) - limit} more")
    return "\n".join(lines) or "(none)"


class Progress:
    """The run's progress on stderr while it runs: one refreshed line on a terminal, else
    one line per step (no per-second ticks)."""

    def __init__(self, stream=None):
        self.stream = stream or sys.stderr
        self.tty = self.stream.isatty()
        self.last: dict[str, str] = {}
        self.lock = threading.Lock()
        self.t0 = time.monotonic()

    def __call__(self, run: str, msg: str) -> None:
        with self.lock:
            tick = msg.startswith("t=")
            if self.tty:
                if not tick:
                    self.last[run or "demo"] = msg
                elif run:
                    self.last[run] = msg
                line = " | ".join(f"{k}: {v}" for k, v in self.last.items())
                self.stream.write("\r\033[K" + line[: 200])
            elif not tick:
                self.stream.write(f"{time.monotonic() - self.t0:6.1f}s  {('[' + run + '] ') if run else ''}{msg}\n")
            self.stream.flush()

    def done(self) -> None:
        if self.tty:
            self.stream.write("\r\033[K")
            self.stream.flush()
