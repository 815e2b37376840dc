"""Draw a demo run: a terminal timeline, summary tables, and a self-contained HTML report.

Both the real replay (:mod:`shim.demo.replay`) and the model (:mod:`shim.demo.run`) are first
turned into a :class:`Timeline` (node states over time, requests by the node they were sent
to, and marks: catalog writes, crashes, step-downs); everything is drawn from that.
"""

from __future__ import annotations

import html
from dataclasses import dataclass, field

# cell states, in order of precedence inside one time bin
DOWN, STARTING, STANDBY_OLD, STANDBY_NEW, LEADER, SERVED_OLD, SERVED_NEW, FAILED = range(8)
CHARS = {DOWN: " ", STARTING: ".", STANDBY_OLD: "-", STANDBY_NEW: "=", LEADER: "L", SERVED_OLD: "1",
         SERVED_NEW: "2", FAILED: "X"}
ANSI = {SERVED_OLD: "\033[33m", SERVED_NEW: "\033[32m", FAILED: "\033[41;97m", LEADER: "\033[36m",
        STANDBY_NEW: "\033[2m", STANDBY_OLD: "\033[2m", STARTING: "\033[2m"}
COLORS = {DOWN: "#f4f4f4", STARTING: "#e6e6e6", STANDBY_OLD: "#d9e3f0", STANDBY_NEW: "#cfe8cf",
          LEADER: "#8aa4c8", SERVED_OLD: "#f0a030", SERVED_NEW: "#2e9e44", FAILED: "#d0021b"}
LABELS = {DOWN: "pod restarting (node down)", STARTING: "node starting", STANDBY_OLD: "standby, old image",
          STANDBY_NEW: "standby, new image", LEADER: "active, no request in this slot",
          SERVED_OLD: "a read served by the old version", SERVED_NEW: "a read served by the new version",
          FAILED: "plugin failure"}
MARK_CHARS = {"catalog": "R", "crash": "!", "step-down": "v"}


@dataclass
class Timeline:
    name: str
    duration: float
    node_names: list
    states: list                     # per node: [(t, state)] with state one of the cell states
    requests: list                   # (t, node, state[, op]) with state SERVED_OLD | SERVED_NEW | FAILED,
                                     # op "read" (the default) or "write"
    windows: list                    # (t0, t1) plugin failure windows
    marks: list = field(default_factory=list)   # (t, node, kind, text), kind one of MARKS
    leaders: list = field(default_factory=list) # (t, node or -1): who was active from then on
    causes: list = field(default_factory=list)  # (t0, t1, text): why the requests in t0..t1 failed
    subtitle: str = ""                          # what this run is, in a few words


def _state_at(changes: list, t: float) -> int:
    state = changes[0][1] if changes else DOWN
    for when, s in changes:
        if when > t:
            break
        state = s
    return state


def grid(tl: Timeline, cols: int) -> list[list[int]]:
    """State of each node in each of ``cols`` equal time bins; a request outcome beats the
    node state, a failure beats a success."""
    width = tl.duration / cols
    cells = [[_state_at(tl.states[i], (c + 0.5) * width) for c in range(cols)]
             for i in range(len(tl.node_names))]
    for t, node, state, *op in tl.requests:
        if node < 0 or t < 0 or t > tl.duration or (op and op[0] == "write" and state != FAILED):
            continue  # a cell shows reads and failures; writes that succeeded are in the report only
        c = min(cols - 1, int(t / width))
        cells[node][c] = max(cells[node][c], state)
    return cells


def terminal(tl: Timeline, cols: int = 72, color: bool = False) -> str:
    cells = grid(tl, cols)
    width = tl.duration / cols
    paint = (lambda s: f"{ANSI[s]}{CHARS[s]}\033[0m" if s in ANSI else CHARS[s]) if color else (lambda s: CHARS[s])
    lines = [f"{tl.name}: {tl.duration:.1f}s, one column = {width * 1000:.0f} ms"]
    lines.append(f"{'':9}" + "".join("|" if c % 10 == 0 else " " for c in range(cols)))
    lines.append(f"{'':9}" + "".join(f"{c * width:<10.1f}"[:10] for c in range(0, cols, 10)))
    for i, row in enumerate(cells):
        lines.append(f"{tl.node_names[i]:<8} " + "".join(paint(s) for s in row))
    fail = [" "] * cols
    for a, b in tl.windows:
        for c in range(int(a / width), min(cols, int(b / width) + 1)):
            fail[c] = "^"
    if tl.leaders:
        lines.append(f"{'active':<8} " + "".join(
            (lambda a: "-" if a < 0 else str(a)[-1])(_state_at(tl.leaders, (c + 0.5) * width)) for c in range(cols)))
    lines.append(f"{'failing':<8} " + "".join(fail))
    marks = [" "] * cols
    for t, _node, kind, _text in tl.marks:
        if kind in MARK_CHARS and 0 <= t <= tl.duration:
            c = min(cols - 1, int(t / width))
            if marks[c] == " " or kind == "catalog":
                marks[c] = MARK_CHARS.get(kind, "*")
    lines.append(f"{'events':<8} " + "".join(marks))
    return "\n".join(lines)


LEGEND = ("legend: 1/2 a read served by v1/v2   X plugin failure   L active   -/= standby on the old/new image   "
          ". starting   blank: down\n        active: the active node's ordinal (- none)   ^ failure window   "
          "events: R catalog written, v step-down, ! node crashed")


def text_table(head: tuple, rows: list[tuple]) -> str:
    rows = [tuple(str(c) for c in head)] + [tuple(str(c) for c in r) for r in rows]
    widths = [max(len(r[i]) for r in rows) for i in range(len(head))]
    out = ["  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip() for row in rows]
    out.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(out)


def html_table(head: tuple, rows: list[tuple]) -> str:
    return ("<table><tr>" + "".join(f"<th>{html.escape(str(h))}</th>" for h in head) + "</tr>"
            + "".join("<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in row) + "</tr>" for row in rows)
            + "</table>")


# --- the HTML report ---------------------------------------------------------------------

# marks on the timeline, drawn as shapes (no font needed): kind -> legend text
MARKS = {"stop": "pod terminated by the rollout", "crash": "node process crashed (the kubelet restarts it)",
         "kubelet": "restarted by the kubelet", "step-down": "step-down (leadership moved)",
         "catalog": "catalog entry written (dashed line)"}
FAILED_WRITE = "#7a0010"


@dataclass
class Report:
    """What a report says besides the timelines: plain sentences first, numbers next."""
    title: str
    problem: str
    fix: str
    headline: list                                  # (what, baseline, shim)
    setup: str = ""                                 # how the runs were made
    tables: list = field(default_factory=list)      # (caption, head, rows)
    notes: list = field(default_factory=list)       # (heading, [paragraph, ...])
    details: list = field(default_factory=list)     # (summary, preformatted text)


def _mark_svg(kind: str, x: float, y: float, text: str) -> str:
    tip = f"<title>{html.escape(text)}</title>" if text else ""
    if kind == "stop":
        return f'<polygon points="{x - 5:.1f},{y:.1f} {x + 5:.1f},{y:.1f} {x:.1f},{y + 8:.1f}" fill="#111">{tip}</polygon>'
    if kind == "crash":
        return (f'<g>{tip}<circle cx="{x:.1f}" cy="{y + 6:.1f}" r="6.5" fill="#d0021b" stroke="#fff"/>'
                f'<rect x="{x - 1:.1f}" y="{y + 1.5:.1f}" width="2" height="6" fill="#fff"/>'
                f'<rect x="{x - 1:.1f}" y="{y + 8.5:.1f}" width="2" height="2" fill="#fff"/></g>')
    if kind == "kubelet":
        return f'<circle cx="{x:.1f}" cy="{y + 6:.1f}" r="4.5" fill="none" stroke="#111" stroke-width="2">{tip}</circle>'
    if kind == "step-down":
        return (f'<polyline points="{x - 5:.1f},{y + 1:.1f} {x:.1f},{y + 9:.1f} {x + 5:.1f},{y + 1:.1f}" fill="none" '
                f'stroke="#111" stroke-width="2.5">{tip}</polyline>')
    return f'<line x1="{x:.1f}" y1="{y - 2:.1f}" x2="{x:.1f}" y2="{y + 14:.1f}" stroke="#000" stroke-dasharray="4 3">{tip}</line>'


def merge_windows(windows: list) -> list:
    """Overlapping (t0, t1) windows merged, in order."""
    out: list = []
    for a, b in sorted(windows):
        if out and a <= out[-1][1]:
            out[-1] = (out[-1][0], max(out[-1][1], b))
        else:
            out.append((a, b))
    return out


def figure(timelines: list[Timeline], width: int = 1100) -> str:
    """Every run on one shared time axis, one block per run: a row per node (its state as the
    background; reads in the upper half, writes in the lower half, each tick coloured by the
    outcome), the marks, the plugin failure bands with their cause, and failures per second."""
    span = max((tl.duration for tl in timelines), default=1.0) or 1.0
    left, right, row_h, lane, plot_h = 84, 16, 30, 18, 44
    plot_w = width - left - right

    def x_of(t: float) -> float:
        return left + max(0.0, min(t, span)) / span * plot_w

    parts, y = [], 8
    for tl in timelines:
        n = len(tl.node_names)
        failed = sum(1 for r in tl.requests if r[2] == FAILED)
        parts.append(f'<text x="4" y="{y + 14}" font-size="15" font-weight="bold" font-family="sans-serif">'
                     f'{html.escape(tl.name)}</text><text x="{left}" y="{y + 14}" font-size="13" '
                     f'font-family="sans-serif">{html.escape(tl.subtitle)}{" - " if tl.subtitle else ""}{failed} '
                     f'failed requests, longest failure window {max((b - a for a, b in tl.windows), default=0.0):.1f} s'
                     f'</text>')
        y += 22
        top = y + lane                      # the lane above the rows holds catalog-write labels
        rows_bottom = top + n * row_h
        active_top = rows_bottom + 4
        plot_top = active_top + 20 + 6
        bottom = plot_top + plot_h
        for a, b in merge_windows(tl.windows):
            parts.append(f'<rect x="{x_of(a):.1f}" y="{top - 4}" width="{max(2.0, x_of(b) - x_of(a)):.1f}" '
                         f'height="{bottom - top + 4}" fill="#d0021b" opacity="0.13"><title>plugin failure window '
                         f'{a:.1f}-{b:.1f} s</title></rect>')
        for i, name in enumerate(tl.node_names):
            ry = top + i * row_h
            parts.append(f'<text x="4" y="{ry + 19}" font-size="13" font-family="monospace">{html.escape(name)}</text>')
            changes = tl.states[i] or [(0.0, DOWN)]
            for k, (t0, st) in enumerate(changes):
                t1 = changes[k + 1][0] if k + 1 < len(changes) else tl.duration
                if t1 <= t0:
                    continue
                parts.append(f'<rect x="{x_of(t0):.1f}" y="{ry + 2}" width="{max(0.5, x_of(t1) - x_of(t0)):.1f}" '
                             f'height="{row_h - 4}" fill="{COLORS[st]}"><title>{html.escape(name)}: '
                             f'{html.escape(LABELS[st])} from {t0:.1f} s</title></rect>')
        for t, node, state, *op in tl.requests:
            if node < 0 or not 0 <= t <= tl.duration:
                continue
            ry = top + node * row_h
            write = bool(op) and op[0] == "write"
            y0, y1 = (ry + row_h / 2 + 1, ry + row_h - 3) if write else (ry + 3, ry + row_h / 2 - 1)
            colour = FAILED_WRITE if (write and state == FAILED) else COLORS[state]
            parts.append(f'<line x1="{x_of(t):.1f}" y1="{y0:.1f}" x2="{x_of(t):.1f}" y2="{y1:.1f}" '
                         f'stroke="{colour}" stroke-width="1.3"/>')
        for t, node, kind, text in sorted(tl.marks, key=lambda m: m[2] == "crash"):
            if not 0 <= t <= tl.duration:
                continue
            x = x_of(t)
            if kind == "catalog":
                parts.append(f'<line x1="{x:.1f}" y1="{top - 6}" x2="{x:.1f}" y2="{rows_bottom}" stroke="#000" '
                             f'stroke-width="1.5" stroke-dasharray="5 3"><title>{html.escape(text)}</title></line>'
                             f'<text x="{x + 4:.1f}" y="{top - 6}" font-size="11" font-family="sans-serif">'
                             f'catalog write</text>')
            elif node >= 0:
                parts.append(_mark_svg(kind, x, top + node * row_h + 2, text))
        # which node is active, as the cluster's monitor saw it
        parts.append(f'<text x="4" y="{active_top + 14}" font-size="11" font-family="sans-serif">active node</text>')
        leaders = [(t, a) for t, a in tl.leaders if t <= tl.duration] or [(0.0, -1)]
        for k, (t0, who) in enumerate(leaders):
            t1 = leaders[k + 1][0] if k + 1 < len(leaders) else tl.duration
            x0, x1 = x_of(max(0.0, t0)), x_of(t1)
            if x1 - x0 < 0.5:
                continue
            label = tl.node_names[who] if who >= 0 else "none"
            parts.append(f'<rect x="{x0:.1f}" y="{active_top}" width="{x1 - x0:.1f}" height="20" '
                         f'fill="{COLORS[LEADER] if who >= 0 else "#fff"}" stroke="#fff"><title>active: {label} from '
                         f'{t0:.1f} s</title></rect>')
            if x1 - x0 > 52:
                parts.append(f'<text x="{(x0 + x1) / 2:.1f}" y="{active_top + 14}" font-size="11" text-anchor="middle" '
                             f'font-family="monospace" fill="{"#fff" if who >= 0 else "#999"}">{label}</text>')
        # failures per second, failed reads below failed writes
        bins = max(1, int(tl.duration) + 1)
        reads, writes = [0] * bins, [0] * bins
        for t, node, state, *op in tl.requests:
            if state == FAILED and 0 <= t <= tl.duration:
                (writes if op and op[0] == "write" else reads)[min(bins - 1, int(t))] += 1
        peak = max((r + w for r, w in zip(reads, writes)), default=0)
        scale = (plot_h - 4) / max(1, peak)
        parts.append(f'<rect x="{left}" y="{plot_top}" width="{plot_w}" height="{plot_h}" fill="none" stroke="#ccc"/>'
                     f'<text x="4" y="{plot_top + 16}" font-size="11" font-family="sans-serif">failures/s</text>'
                     f'<text x="4" y="{plot_top + 30}" font-size="11" font-family="sans-serif" fill="#555">'
                     f'max {peak}</text>')
        for b in range(bins):
            x, w = x_of(b), max(1.0, x_of(min(b + 1, tl.duration)) - x_of(b) - 1)
            base = plot_top + plot_h
            for count, colour, what in ((reads[b], COLORS[FAILED], "failed reads"), (writes[b], FAILED_WRITE, "failed writes")):
                if count:
                    h = count * scale
                    base -= h
                    parts.append(f'<rect x="{x:.1f}" y="{base:.1f}" width="{w:.1f}" height="{h:.1f}" fill="{colour}">'
                                 f'<title>{b}-{b + 1} s: {count} {what}</title></rect>')
        y = bottom + 4
        for t0, _t1, text in tl.causes:
            y += 16
            parts.append(f'<text x="{x_of(t0):.1f}" y="{y}" font-size="12" font-family="sans-serif" fill="#a00010" '
                         f'text-anchor="{"end" if x_of(t0) > left + plot_w * 0.6 else "start"}">'
                         f'&#9650; {html.escape(text)}</text>')
        y += 22
    step = 1 if span <= 12 else 2 if span <= 30 else 5
    axis = y
    for k in range(0, int(span) + 1, step):
        x = x_of(k)
        parts.append(f'<line x1="{x:.1f}" y1="{axis - 6}" x2="{x:.1f}" y2="{axis}" stroke="#555"/>'
                     f'<text x="{x:.1f}" y="{axis + 12}" font-size="11" text-anchor="middle" '
                     f'font-family="sans-serif">{k} s</text>')
    parts.append(f'<line x1="{left}" y1="{axis}" x2="{left + plot_w}" y2="{axis}" stroke="#555"/>'
                 f'<text x="{left + plot_w}" y="{axis + 26}" font-size="11" text-anchor="end" font-family="sans-serif">'
                 f'seconds since the load started (one axis for every run)</text>')
    height = axis + 34
    return (f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" viewBox="0 0 {width} {height}" '
            f'role="img" aria-label="timeline of every run on one time axis">' + "".join(parts) + "</svg>")


def legend_html() -> str:
    """Every colour and mark of :func:`figure`, each with its meaning."""
    def swatch(colour: str) -> str:
        return f'<svg width="16" height="14" aria-hidden="true"><rect x="1" y="1" width="14" height="12" fill="{colour}" stroke="#999"/></svg>'

    def tick(colour: str, write: bool) -> str:
        y0, y1 = (8, 13) if write else (1, 6)
        return (f'<svg width="16" height="14" aria-hidden="true"><rect x="1" y="0" width="14" height="14" fill="#eee"/>'
                f'<line x1="8" y1="{y0}" x2="8" y2="{y1}" stroke="{colour}" stroke-width="3"/></svg>')

    def mark(kind: str) -> str:
        return f'<svg width="16" height="16" aria-hidden="true">{_mark_svg(kind, 8, 2, "")}</svg>'

    items = [(swatch(COLORS[LEADER]), "node: active (it serves the writes); the 'active node' row names it")]
    items += [(swatch(COLORS[s]), "node: " + LABELS[s]) for s in (STANDBY_OLD, STANDBY_NEW, STARTING, DOWN)]
    items += [(tick(COLORS[SERVED_OLD], False), "read answered by the old version (v1)"),
              (tick(COLORS[SERVED_NEW], False), "read answered by the new version (v2)"),
              (tick(COLORS[FAILED], False), "read failed: the plugin could not serve"),
              (tick(COLORS[SERVED_OLD], True), "write answered by v1 (lower half of a row)"),
              (tick(COLORS[SERVED_NEW], True), "write answered by v2"),
              (tick(FAILED_WRITE, True), "write failed: the plugin could not serve"),
              (swatch("#f5c9cf"), "plugin failure window (from a failed request to the next success)")]
    items += [(mark(k), v) for k, v in MARKS.items()]
    return '<ul class="legend">' + "".join(f"<li>{icon} {html.escape(text)}</li>" for icon, text in items) + "</ul>"


def html_report(timelines: list[Timeline], report: Report) -> str:
    """A self-contained page (no script, no external resource): the problem and the fix in a
    sentence each, the headline numbers, every run on one time axis with its legend, the
    tables, notes (the PS), then ``details`` sections as preformatted text."""
    names = [tl.name for tl in timelines]
    headline = ("<table class=\"headline\"><tr><th></th>" + "".join(f"<th>{html.escape(n)}</th>" for n in names)
                + "</tr>" + "".join("<tr><td>" + html.escape(what) + "</td>" + "".join(
                    f"<td>{html.escape(str(v))}</td>" for v in values) + "</tr>" for what, *values in report.headline)
                + "</table>")
    tables = "".join(f"<h3>{html.escape(cap)}</h3>{html_table(head, rows)}" for cap, head, rows in report.tables)
    notes = "".join(f"<section><h2>{html.escape(h)}</h2>" + "".join(f"<p>{html.escape(p)}</p>" for p in paras)
                    + "</section>" for h, paras in report.notes)
    more = "".join(f"<details><summary>{html.escape(s)}</summary><pre>{html.escape(t)}</pre></details>"
                   for s, t in report.details)
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>{html.escape(report.title)}</title>
<style>
body {{ font-family: sans-serif; margin: 24px; color: #222; max-width: 1120px; }}
p.lead {{ font-size: 17px; margin: 6px 0; }}
table {{ border-collapse: collapse; margin: 8px 0 16px; }}
td, th {{ border: 1px solid #bbb; padding: 4px 10px; text-align: left; vertical-align: top; }}
table.headline td, table.headline th {{ font-size: 16px; padding: 6px 14px; }}
ul.legend {{ columns: 2; list-style: none; padding: 0; font-size: 13px; }}
ul.legend li {{ margin: 2px 0; }} ul.legend svg {{ vertical-align: -3px; margin-right: 4px; }}
section {{ margin: 18px 0; }}
pre {{ background: #f6f6f6; padding: 8px; overflow-x: auto; font-size: 12px; }}
</style></head><body>
<h1>{html.escape(report.title)}</h1>
<p class="lead" id="problem"><b>The problem:</b> {html.escape(report.problem)}</p>
<p class="lead" id="fix"><b>The fix:</b> {html.escape(report.fix)}</p>
{headline}
<p>{html.escape(report.setup)}</p>
<h2>Both runs, one time axis</h2>
{figure(timelines)}
<h3>Legend</h3>
{legend_html()}
{tables}
{notes}
{more}
</body></html>
"""
