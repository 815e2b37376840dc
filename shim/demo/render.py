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
    requests: list                   # (t, node, state) with state SERVED_OLD | SERVED_NEW | FAILED
    windows: list                    # (t0, t1) plugin failure windows
    marks: list = field(default_factory=list)   # (t, node, kind, text)
    leaders: list = field(default_factory=list) # (t, node or -1): who was active from then on


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
    for t, node, state in tl.requests:
        if node < 0 or t < 0 or t > tl.duration:
            continue
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
        if 0 <= t <= tl.duration:
            c = min(cols - 1, int(t / width))
            if marks[c] == " " or kind == "catalog":
                marks[c] = MARK_CHARS.get(kind, "*")
    lines.append(f"{'events':<8} " + "".join(marks))
    return "\n".join(lines)


LEGEND = ("legend: 1/2 a read served by v1/v2   X plugin failure   L active   -/= standby on the old/new image   "
          ". starting   blank: down\n        active: the active node's ordinal (- none)   ^ failure window   "
          "events: R catalog written, v step-down, ! node crashed")


def _svg(tl: Timeline, width: int = 960) -> str:
    cols = 320
    cells = grid(tl, cols)
    left, row_h, top = 80, 26, 30
    plot_w = width - left - 10
    cw = plot_w / cols
    n = len(cells)
    height = top + n * row_h + 60
    x_of = (lambda t: left + t / tl.duration * plot_w) if tl.duration > 0 else (lambda t: left)
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
             f'viewBox="0 0 {width} {height}" role="img" aria-label="{html.escape(tl.name)} timeline">']
    for a, b in tl.windows:
        w = max(2.0, (b - a) / tl.duration * plot_w) if tl.duration else 2.0
        parts.append(f'<rect x="{x_of(a):.1f}" y="{top - 6}" width="{w:.1f}" height="{n * row_h + 8}" '
                     f'fill="#d0021b" opacity="0.15"/>')
    for i, row in enumerate(cells):
        y = top + i * row_h
        parts.append(f'<text x="4" y="{y + 17}" font-size="13" font-family="monospace">'
                     f'{html.escape(tl.node_names[i])}</text>')
        c = 0
        while c < cols:
            s = row[c]
            e = c
            while e < cols and row[e] == s:
                e += 1
            parts.append(f'<rect x="{left + c * cw:.1f}" y="{y + 3}" width="{(e - c) * cw:.1f}" height="{row_h - 6}" '
                         f'fill="{COLORS[s]}"><title>{html.escape(tl.node_names[i])}: {html.escape(LABELS[s])}'
                         f'</title></rect>')
            c = e
    for t, node, kind, text in tl.marks:
        if not 0 <= t <= tl.duration:
            continue
        x = x_of(t)
        if kind == "catalog":
            parts.append(f'<line x1="{x:.1f}" y1="{top - 8}" x2="{x:.1f}" y2="{top + n * row_h}" stroke="#000" '
                         f'stroke-dasharray="4 3"><title>{html.escape(text)}</title></line>'
                         f'<text x="{x + 3:.1f}" y="{top - 12}" font-size="11" font-family="sans-serif">'
                         f'{html.escape(text)}</text>')
        elif node >= 0:
            y = top + node * row_h + row_h / 2
            glyph = "!" if kind == "crash" else "v"
            parts.append(f'<text x="{x:.1f}" y="{y + 5:.1f}" font-size="14" font-weight="bold" text-anchor="middle" '
                         f'font-family="sans-serif" fill="#000"><title>{html.escape(text)}</title>{glyph}</text>')
    axis_y = top + n * row_h + 14
    step = 1 if tl.duration <= 20 else 5
    t = 0
    while t <= tl.duration:
        x = x_of(t)
        parts.append(f'<line x1="{x:.1f}" y1="{axis_y - 8}" x2="{x:.1f}" y2="{axis_y - 4}" stroke="#555"/>'
                     f'<text x="{x:.1f}" y="{axis_y + 8}" font-size="10" text-anchor="middle" '
                     f'font-family="sans-serif">{t}s</text>')
        t += step
    parts.append("</svg>")
    return "".join(parts)


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


def html_report(timelines: list[Timeline], title: str, intro: str, tables: list[tuple[str, tuple, list]],
                details: list[tuple[str, str]] = ()) -> str:
    """A self-contained page: ``intro`` (plain text), tables as (caption, head, rows), one
    timeline per run, then ``details`` sections as (summary, preformatted text)."""
    legend = "".join(f'<span class="key"><i style="background:{COLORS[s]}"></i>{html.escape(LABELS[s])}</span>'
                     for s in (SERVED_OLD, SERVED_NEW, FAILED, LEADER, STANDBY_OLD, STANDBY_NEW, STARTING, DOWN))
    body = "".join(f"<h3>{html.escape(cap)}</h3>{html_table(head, rows)}" for cap, head, rows in tables)
    sections = "".join(
        f'<section><h2>{html.escape(tl.name)}: {sum(1 for r in tl.requests if r[2] == FAILED)} plugin failures, '
        f'longest window {max((b - a for a, b in tl.windows), default=0.0):.2f} s</h2>{_svg(tl)}</section>'
        for tl in timelines)
    more = "".join(f"<details><summary>{html.escape(s)}</summary><pre>{html.escape(t)}</pre></details>"
                   for s, t in details)
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title>
<style>
body {{ font-family: sans-serif; margin: 24px; color: #222; }}
table {{ border-collapse: collapse; margin: 8px 0 16px; }}
td, th {{ border: 1px solid #bbb; padding: 4px 10px; text-align: left; vertical-align: top; }}
.key {{ margin-right: 14px; font-size: 13px; white-space: nowrap; }}
.key i {{ display: inline-block; width: 14px; height: 14px; margin-right: 4px; vertical-align: -2px;
          border: 1px solid #999; }}
section {{ margin: 18px 0; }}
pre {{ background: #f6f6f6; padding: 8px; overflow-x: auto; font-size: 12px; }}
</style></head><body>
<h1>{html.escape(title)}</h1>
<p>{html.escape(intro)}</p>
{body}
<p>{legend}</p>
<p>Red bands: plugin failure windows (a first failed request to the next successful one in the same
view). Dashed lines: catalog writes. <b>v</b>: a step-down; <b>!</b>: a node process crashed.</p>
{sections}
{more}
</body></html>
"""
