"""`vault-plugin-shim demo` on real OpenBao clusters: the user-facing command on the report's
worst case, its HTML report in a real browser, and a shorter replay with a node that is slow
to stop, after which no process, port or directory is left."""

from __future__ import annotations

import html
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from tests.support import openbao
from tests.support.procs import gone
from tests.support.wait import wait_until

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def cli_run(tmp_path_factory):
    """`vault-plugin-shim demo --report FILE` with no other flag, in a TMPDIR of its own."""
    openbao.require_bao()
    tmp = Path(tempfile.mkdtemp(prefix="vd-", dir="/tmp"))  # short: unix socket paths
    report = tmp_path_factory.mktemp("report") / "demo.html"
    started = time.monotonic()
    proc = subprocess.run([sys.executable, "-m", "shim.cli", "demo", "--report", str(report)], cwd=ROOT,
                          capture_output=True, text=True, timeout=300,
                          env={**os.environ, "TMPDIR": str(tmp),
                               "VAULT_PLUGIN_SHIM_DEMO_CACHE": str(tmp_path_factory.getbasetemp() / "demo-go")})
    took = time.monotonic() - started
    try:
        yield proc, report, took, tmp
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _rows(stdout: str) -> dict[tuple[str, str], list[str]]:
    out = {}
    for line in stdout.splitlines():
        m = re.match(r"(baseline|shim)\s+(active|any)\s+(.*)$", line)
        if m:
            out[(m.group(1), m.group(2))] = re.split(r"\s{2,}", m.group(3).strip())
    return out


def test_worst_case_baseline_fails_and_shim_does_not(cli_run):
    proc, report, took, tmp = cli_run
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    rows = _rows(proc.stdout)
    assert set(rows) == {("baseline", "active"), ("baseline", "any"), ("shim", "active"), ("shim", "any")}
    # columns: requests ok plugin-failures longest-window no-active other versions
    for view in ("active", "any"):
        assert int(rows[("baseline", view)][2]) > 0, rows
        assert int(rows[("shim", view)][2]) == 0, rows
        assert float(rows[("shim", view)][3]) == 0.0
        assert rows[("shim", view)][6] == "v1.0.0, v2.0.0", "both versions served during the rollout"
        assert int(rows[("shim", view)][0]) > 100
    runs = {m.group(1): int(m.group(2)) for m in re.finditer(r"^(baseline|shim)\s+(\d+)\s+\d+\s+\d+", proc.stdout, re.M)}
    assert runs == {"baseline": 1, "shim": 0}, "catalog writes: the baseline's init container, none for the shim"
    failures = proc.stdout[proc.stdout.index("baseline: ") :]
    assert "checksums did not match" in failures and "mount set-up failed" in failures
    assert "shim: no plugin failures" in proc.stdout
    assert "starting 3 OpenBao nodes" in proc.stderr, "progress goes to stderr"
    assert took < 150, f"the demo took {took:.0f} s"
    assert list(tmp.iterdir()) == [], "the demo's directories are removed"
    assert gone(tmp) == [], "no process of the demo is left"


def test_report_renders_in_headless_chromium(cli_run, tmp_path):
    """The real run's HTML report, read as a stranger would: the problem and the fix in one
    sentence each, the headline numbers, both runs on one time axis with every mark, reads and
    writes told apart, failures per second, the cause at the failure band, a legend for every
    colour and mark, and the PS. Then opened in a real browser (Debian's chromium), which must
    draw it: its pixels hold the failures, both versions and the active node's colour."""
    from shim.demo import render
    from shim.demo import report as demo_report

    _proc, report, _took, _tmp = cli_run
    text = report.read_text()
    assert text.startswith("<!DOCTYPE html>")
    assert "<script" not in text and "http://" not in text.replace('xmlns="http://www.w3.org/2000/svg"', "")
    assert f"<b>The problem:</b> {html.escape(demo_report.PROBLEM)}" in text
    assert f"<b>The fix:</b> {html.escape(demo_report.FIX)}" in text
    headline = text[text.index('<table class="headline">'):]
    headline = headline[:headline.index("</table>")]
    for what in ("failed requests (reads / writes)", "longest failure window", "node crashes", "catalog writes"):
        assert what in headline, headline
    assert re.search(r"<td>failed requests \(reads / writes\)</td><td>[1-9]\d* \(\d+ / \d+\)</td><td>0 \(0 / 0\)</td>",
                     headline), headline
    assert text.count('aria-label="timeline of every run on one time axis"') == 1, "both runs share one axis"
    figure = text[text.index('aria-label="timeline of every run'):]
    figure = figure[:figure.index("</svg>")]
    assert "baseline</text>" in figure and "shim</text>" in figure
    assert "one axis for every run" in figure and ">active node</text>" in figure and ">failures/s</text>" in figure
    assert re.search(r"failures from [\d.]+ s: checksums did not match", figure), "the cause labels the band"
    assert "catalog write</text>" in figure and "stop SIGTERM" in figure
    assert render.FAILED_WRITE in figure, "failed writes are drawn apart from failed reads"
    legend = text[text.index('<ul class="legend">'):]
    legend = legend[:legend.index("</ul>")]
    for words in ("read answered by the old version", "write answered by v2", "write failed", "read failed",
                  "plugin failure window", *render.MARKS.values(), "node: active", "standby, old image"):
        assert html.escape(words) in legend, words
    assert html.escape(demo_report.PS_TITLE) in text and html.escape(demo_report.PS[0]) in text, "the PS is in the report"
    chromium = shutil.which("chromium")
    if chromium is None:
        pytest.fail("chromium is missing: apt-get install -y chromium (build/install.sh installs it)")
    shot = tmp_path / "shot.png"
    proc = subprocess.run(
        [chromium, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         f"--user-data-dir={tmp_path / 'profile'}", f"--screenshot={shot}", "--window-size=1180,1300",
         report.as_uri()], capture_output=True, timeout=120)
    assert shot.exists(), proc.stderr.decode()[-2000:]
    from tests.support.png import pixels

    width, height, px = pixels(shot.read_bytes())
    assert (width, height) == (1180, 1300)
    colours = set(px)
    assert (0xd0, 0x02, 0x1b) in colours, "plugin failures are drawn in red"
    assert (0x7a, 0x00, 0x10) in colours, "failed writes in dark red"
    assert (0xf0, 0xa0, 0x30) in colours, "answers by v1 are drawn in orange"
    assert (0x2e, 0x9e, 0x44) in colours, "answers by v2 are drawn in green"
    assert (0x8a, 0xa4, 0xc8) in colours, "the active node is drawn"


def test_short_replay_with_a_slow_stop_leaves_nothing_behind(tmp_path_factory):
    """The shim run alone with short pauses, vault-1 frozen for 4 s when it is told to stop:
    the replay waits for it, still has no plugin failure, serves both versions; afterwards no
    process, listening port or directory of it is left."""
    from shim.demo import replay, schedule

    openbao.require_bao()
    work = Path(tempfile.mkdtemp(prefix="vs-", dir="/tmp"))
    try:
        (run,) = replay.run_demo(schedule.Settings(), rate=30, runs=("shim",),
                                 timing=schedule.Timing(lead_in=0.5, settle=0.3, tail=0.5), slow_stop={1: 4.0},
                                 workdir=work, cache_dir=tmp_path_factory.getbasetemp() / "demo-go")
        assert run.failures == [], run.error_texts()
        assert run.versions_served == ["v1.0.0", "v2.0.0"]
        assert run.catalog_writes == [] and [k for _, _, k in run.init_checks] == ["unchanged"] * 3
        stops = {e.node: e.data["seconds"] for e in run.events if e.kind == "stopped"}
        assert stops[1] >= 4.0 and stops[0] < 4.0 and stops[2] < 4.0, stops
        assert len(run.ports) == 6
        assert list(work.iterdir()) == [], "the replay's directory is removed"
        assert gone(work) == [], "no process of the replay is left"
        for port in run.ports:
            with socket.socket() as s, pytest.raises(ConnectionRefusedError):
                s.settimeout(2)
                s.connect(("127.0.0.1", port))
    finally:
        shutil.rmtree(work, ignore_errors=True)


def test_ctrl_c_stops_every_node_and_removes_the_demo_directory(tmp_path_factory):
    """Ctrl-C while the cluster runs: exit 130, nothing left behind (SIGTERM takes the same
    path: the demo turns it into the same interruption)."""
    openbao.require_bao()
    tmp = Path(tempfile.mkdtemp(prefix="vi-", dir="/tmp"))
    proc = subprocess.Popen([sys.executable, "-m", "shim.cli", "demo", "--only", "shim"], cwd=ROOT,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "TMPDIR": str(tmp),
                                 "VAULT_PLUGIN_SHIM_DEMO_CACHE": str(tmp_path_factory.getbasetemp() / "demo-go")})
    try:
        seen = []
        for line in proc.stderr:  # the progress lines: interrupt once the load runs
            seen.append(line)
            if "stop vault-2" in line:
                break
        assert any("stop vault-2" in ln for ln in seen), "".join(seen)
        proc.send_signal(signal.SIGINT)
        rest = proc.stderr.read()
        assert proc.wait(120) == 130, rest
        assert "interrupted; every node was stopped" in rest
        assert gone(tmp) == [], "no process of the demo is left"
        assert list(tmp.iterdir()) == []
    finally:
        if proc.poll() is None:
            proc.kill()
        shutil.rmtree(tmp, ignore_errors=True)


def test_a_replay_goes_on_through_a_pod_that_crashes_before_it_serves(tmp_path_factory, monkeypatch):
    """The first pod the rollout restarts cannot bind its API port at its first start (a real
    OpenBao start-up failure, exit 1 before it serves): the kubelet restarts it, the rollout
    waits for it as for any pod, and the replay completes. The crash is in the run's events,
    its table row and its report; the shim run still has no plugin failure."""
    from shim.demo import cli as demo_cli
    from shim.demo import cluster as cl
    from shim.demo import replay, schedule
    from shim.demo import report as demo_report

    openbao.require_bao()
    original = cl.Cluster.start_node
    blocked: list[int] = []

    def start_node(self, index: int) -> None:
        if blocked:
            return original(self, index)
        node = self.nodes[index]
        blocked.append(index)
        with socket.socket() as s:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            s.bind(("127.0.0.1", node.server.port))
            s.listen()
            crashes = node.crashes
            original(self, index)
            wait_until(lambda: node.crashes > crashes, f"{node.name} to crash before serving", deadline=60)

    monkeypatch.setattr(cl.Cluster, "start_node", start_node)
    work = Path(tempfile.mkdtemp(prefix="vc-", dir="/tmp"))
    try:
        (run,) = replay.run_demo(schedule.Settings(), rate=30, runs=("shim",),
                                 timing=schedule.Timing(lead_in=0.5, settle=0.3, tail=0.5),
                                 workdir=work, cache_dir=tmp_path_factory.getbasetemp() / "demo-go")
    finally:
        shutil.rmtree(work, ignore_errors=True)
    crashes = [e for e in run.events if e.kind == "crash"]
    assert crashes and {e.node for e in crashes} == set(blocked), crashes
    assert all("exit status 1" in e.detail for e in crashes), crashes
    assert any(e.kind == "start" and "kubelet" in e.detail and e.node == blocked[0] for e in run.events)
    assert not [e for e in run.events if e.kind == "note" and "not Ready" in e.detail], "it was Ready in time"
    assert run.failures == [], run.error_texts()
    assert run.versions_served == ["v1.0.0", "v2.0.0"]
    (row,) = demo_report.run_rows([run])
    assert row[2] == len(crashes), row
    page = demo_cli.report_html([run], schedule.Settings())
    assert f"{run.node_names[blocked[0]]}: crash exit status 1" in page
