"""Draw a demo run: a terminal timeline, a summary table, and a self-contained HTML report."""

from __future__ import annotations

import html

from shim.demo.run import NEW, OLD, RunResult

# cell states, in order of precedence inside one time bin
DOWN, STANDBY_OLD, STANDBY_NEW, LEADER, SERVED_OLD, SERVED_NEW, FAILED = range(7)
CHARS = {DOWN: " ", STANDBY_OLD: "-", STANDBY_NEW: "=", LEADER: "L", SERVED_OLD: "1", SERVED_NEW: "2",
         FAILED: "X"}
ANSI = {SERVED_OLD: "\033[33m", SERVED_NEW: "\033[32m", FAILED: "\033[41;97m", LEADER: "\033[36m",
        STANDBY_NEW: "\033[2m", STANDBY_OLD: "\033[2m"}
COLORS = {DOWN: "#f4f4f4", STANDBY_OLD: "#d9e3f0", STANDBY_NEW: "#cfe8cf", LEADER: "#8aa4c8",
          SERVED_OLD: "#f0a030", SERVED_NEW: "#2e9e44", FAILED: "#d0021b"}
LABELS = {DOWN: "pod restarting", STANDBY_OLD: "standby, old image", STANDBY_NEW: "standby, new image",
          LEADER: "leader (no answer yet)", SERVED_OLD: f"leader, served {OLD}", SERVED_NEW: f"leader, served {NEW}",
          FAILED: "leader, plugin failed"}


def grid(run: RunResult, cols: int) -> list[list[int]]:
    """State of each node in each of ``cols`` equal time bins."""
    n = run.settings.nodes
    width = run.duration / cols
    cells = [[STANDBY_OLD] * cols for _ in range(n)]
    up = [True] * n
    new = [False] * n
    leader = -1
    events = sorted(run.events, key=lambda e: e.t)
    ei = 0
    for c in range(cols):
        t_end = (c + 1) * width
        while ei < len(events) and events[ei].t < t_end:
            e = events[ei]
            if e.kind == "stop":
                up[e.node] = False
            elif e.kind == "start":
                up[e.node], new[e.node] = True, True
            elif e.kind == "leader":
                leader = e.node
            ei += 1
        for i in range(n):
            if not up[i]:
                cells[i][c] = DOWN
            elif i == leader:
                cells[i][c] = LEADER
            else:
                cells[i][c] = STANDBY_NEW if new[i] else STANDBY_OLD
    for r in run.requests:
        if r.node < 0 or r.category not in ("ok", "plugin-failure"):
            continue
        c = min(cols - 1, int(r.t / width))
        state = FAILED if r.category == "plugin-failure" else (SERVED_NEW if r.version == NEW else SERVED_OLD)
        cells[r.node][c] = max(cells[r.node][c], state)
    return cells


def terminal(run: RunResult, cols: int = 64, color: bool = False) -> str:
    cells = grid(run, cols)
    width = run.duration / cols
    paint = (lambda s: f"{ANSI.get(s, '')}{CHARS[s]}\033[0m" if s in ANSI else CHARS[s]) if color \
        else (lambda s: CHARS[s])
    lines = [f"{run.name}: {run.duration:.1f}s, one column = {width * 1000:.0f} ms"]
    scale = "".join("|" if c % 10 == 0 else " " for c in range(cols))
    lines.append(f"{'':9}{scale}")
    lines.append(f"{'':9}" + "".join(f"{c * width:<10.1f}"[:10] for c in range(0, cols, 10)))
    for i, row in enumerate(cells):
        lines.append(f"{run.node_names[i]:<8} " + "".join(paint(s) for s in row))
    fail = [" "] * cols
    for a, b in run.failure_windows():
        for c in range(int(a / width), min(cols, int(b / width) + 1)):
            fail[c] = "^"
    lines.append(f"{'failing':<8} " + "".join(fail))
    cat = [" "] * cols
    for t, node, _sha in run.registrations:
        cat[min(cols - 1, int(t / width))] = "R"
    lines.append(f"{'catalog':<8} " + "".join(cat))
    return "\n".join(lines)


LEGEND = ("legend: 1/2 leader served v1/v2   X plugin failed   L leader, no answer yet   "
          "-/= standby old/new image   blank: pod restarting   ^ failure window   R catalog re-registered")


def summary_rows(runs: list[RunResult]) -> list[tuple]:
    rows = []
    for r in runs:
        total = sum(1 for q in r.requests if q.category in ("ok", "plugin-failure"))
        no_leader = sum(1 for q in r.requests if q.category in ("no-leader", "interrupted"))
        rows.append((r.name, total, len(r.failures), f"{r.downtime:.2f}", ", ".join(r.versions_served) or "-",
                     len(r.registrations), no_leader))
    return rows


HEAD = ("run", "requests", "failed", "plugin downtime s", "versions served", "catalog writes", "no leader*")


def summary(runs: list[RunResult]) -> str:
    rows = [HEAD] + [tuple(str(x) for x in row) for row in summary_rows(runs)]
    widths = [max(len(r[i]) for r in rows) for i in range(len(HEAD))]
    out = ["  ".join(c.ljust(w) for c, w in zip(row, widths)) for row in rows]
    out.insert(1, "  ".join("-" * w for w in widths))
    out.append("* requests sent while no node was active (election) or whose node was restarting: "
               "Vault's own unavailability, the same in both runs, not counted as plugin failures.")
    return "\n".join(out)


def _svg(run: RunResult, width: int = 900) -> str:
    cols = 240
    cells = grid(run, cols)
    left, row_h, top = 80, 26, 24
    plot_w = width - left - 10
    cw = plot_w / cols
    n = len(cells)
    height = top + n * row_h + 60
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
             f'viewBox="0 0 {width} {height}" role="img" aria-label="{html.escape(run.name)} timeline">']
    for a, b in run.failure_windows():
        x = left + a / run.duration * plot_w
        w = max(2.0, (b - a) / run.duration * plot_w)
        parts.append(f'<rect x="{x:.1f}" y="{top - 6}" width="{w:.1f}" height="{n * row_h + 8}" '
                     f'fill="#d0021b" opacity="0.15"/>')
    for i, row in enumerate(cells):
        y = top + i * row_h
        parts.append(f'<text x="4" y="{y + 17}" font-size="13" font-family="monospace">'
                     f'{html.escape(run.node_names[i])}</text>')
        c = 0
        while c < cols:
            s = row[c]
            e = c
            while e < cols and row[e] == s:
                e += 1
            parts.append(f'<rect x="{left + c * cw:.1f}" y="{y + 3}" width="{(e - c) * cw:.1f}" height="{row_h - 6}" '
                         f'fill="{COLORS[s]}"><title>{html.escape(LABELS[s])}</title></rect>')
            c = e
    for t, node, _ in run.registrations:
        x = left + t / run.duration * plot_w
        parts.append(f'<line x1="{x:.1f}" y1="{top - 8}" x2="{x:.1f}" y2="{top + n * row_h}" stroke="#000" '
                     f'stroke-dasharray="4 3"/><text x="{x + 3:.1f}" y="{top - 10}" font-size="11" '
                     f'font-family="sans-serif">catalog re-registered by {html.escape(run.node_names[node])}</text>')
    axis_y = top + n * row_h + 14
    step = 1 if run.duration <= 20 else 5
    t = 0
    while t <= run.duration:
        x = left + t / run.duration * plot_w
        parts.append(f'<line x1="{x:.1f}" y1="{axis_y - 8}" x2="{x:.1f}" y2="{axis_y - 4}" stroke="#555"/>'
                     f'<text x="{x:.1f}" y="{axis_y + 8}" font-size="10" text-anchor="middle" '
                     f'font-family="sans-serif">{t}s</text>')
        t += step
    parts.append("</svg>")
    return "".join(parts)


def html_report(runs: list[RunResult], title: str = "vault-plugin-shim demo: rolling upgrade") -> str:
    legend = "".join(f'<span class="key"><i style="background:{COLORS[s]}"></i>{html.escape(LABELS[s])}</span>'
                     for s in (SERVED_OLD, SERVED_NEW, FAILED, LEADER, STANDBY_OLD, STANDBY_NEW, DOWN))
    rows = "".join("<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in row) + "</tr>"
                   for row in summary_rows(runs))
    sections = "".join(
        f'<section><h2>{html.escape(r.name)}: {len(r.failures)} failed requests, '
        f'{r.downtime:.2f} s plugin downtime</h2>{_svg(r)}</section>' for r in runs)
    s = runs[0].settings
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title>
<style>
body {{ font-family: sans-serif; margin: 24px; color: #222; }}
table {{ border-collapse: collapse; margin: 12px 0; }}
td, th {{ border: 1px solid #bbb; padding: 4px 10px; text-align: left; }}
.key {{ margin-right: 14px; font-size: 13px; white-space: nowrap; }}
.key i {{ display: inline-block; width: 14px; height: 14px; margin-right: 4px; vertical-align: -2px;
          border: 1px solid #999; }}
section {{ margin: 18px 0; }}
</style></head><body>
<h1>{html.escape(title)}</h1>
<p>{s.nodes} nodes, restart order {", ".join(f"vault-{n}" for n in s.restart_order)},
{html.escape(s.election)} elections. Red bands: plugin failure windows (first failed request to the
next successful one). Dashed lines: the baseline's init container re-registering the plugin's sha256.</p>
<table><tr>{"".join(f"<th>{html.escape(h)}</th>" for h in HEAD)}</tr>{rows}</table>
<p>{legend}</p>
{sections}
</body></html>
"""
