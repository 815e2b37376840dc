"""The demo: schedule logic (pure) and one short end-to-end run with real processes."""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from shim.demo import render, schedule as S

ROOT = Path(__file__).resolve().parent.parent


def kinds(events, kind):
    return [(e.t, e.node) for e in events if e.kind == kind]


def test_worst_case_replays_the_reported_incident():
    ev = S.build(S.Settings())
    leaders = [n for _, n in kinds(ev, "leader")]
    # vault-2 leads; vault-1 takes over; vault-0 (still old) next; finally vault-2 (new)
    assert leaders == [2, -1, 1, -1, 0, -1, 2]
    assert [n for _, n in kinds(ev, "stop")] == [2, 1, 0]
    assert [n for _, n in kinds(ev, "start")] == [2, 1, 0]
    # vault-2's init container runs before vault-0 becomes leader: the failure window exists
    assert kinds(ev, "init")[0][0] < [t for t, n in kinds(ev, "leader") if n == 0][0]
    assert ev[-1].kind == "end" and ev == sorted(ev, key=lambda e: e.t)


def test_leader_is_always_an_up_node():
    for seed in range(30):
        for election in S.ELECTIONS:
            s = S.Settings(nodes=4, election=election, seed=seed, order=(1, 3, 0, 2))
            up = set(range(4))
            for e in S.build(s):
                if e.kind == "stop":
                    up.discard(e.node)
                elif e.kind == "start":
                    up.add(e.node)
                elif e.kind == "leader" and e.node >= 0:
                    assert e.node in up, (seed, election, e)


def test_worst_case_prefers_old_images_random_is_seeded():
    ev = S.build(S.Settings(nodes=5))
    upgraded, t_old = set(), []
    for e in ev:
        if e.kind == "start":
            upgraded.add(e.node)
        if e.kind == "leader" and e.node >= 0 and len(upgraded) < 5:
            t_old.append(e.node not in upgraded)
    assert all(t_old[:-1])
    a = S.build(S.Settings(election="random", seed=7, crash_interval=2))
    assert a == S.build(S.Settings(election="random", seed=7, crash_interval=2))
    assert any(e.kind == "crash" for e in a)
    assert S.leader_at(a, 0.0) >= 0


@pytest.mark.parametrize("kw", [dict(nodes=1), dict(order=(0, 0, 1)), dict(election="best"),
                                dict(restart=0), dict(init_at=5), dict(crash_interval=-1)])
def test_settings_are_validated(kw):
    with pytest.raises(ValueError):
        S.Settings(**kw)


def test_short_demo_end_to_end(tmp_path):
    """The user-facing command: the baseline fails during the rollout, the shim run does not
    (even with plugin crashes injected: reload and retry through the launcher), and both
    versions are served. No process or socket of the run outlives it."""
    report = tmp_path / "report.html"
    import tempfile

    tmp = Path(tempfile.mkdtemp(prefix="t-", dir="/tmp"))  # short: socket paths are length-limited
    proc = subprocess.run(
        [sys.executable, "-m", "shim.cli", "demo", "--restart-seconds", "1.5", "--rate", "25",
         "--crash-interval", "2", "--report", str(report)], cwd=ROOT, capture_output=True, text=True,
        timeout=180, env={**os.environ, "TMPDIR": str(tmp)})
    assert proc.returncode == 0, proc.stdout + proc.stderr
    rows = {ln.split()[0]: ln.split() for ln in proc.stdout.splitlines()
            if ln.startswith(("baseline ", "shim "))}
    assert int(rows["baseline"][2]) > 0 and float(rows["baseline"][3]) > 0
    assert rows["shim"][2] == "0" and rows["shim"][3] == "0.00"
    assert "1.0.0," in proc.stdout and rows["shim"][4:6] == ["1.0.0,", "2.0.0"]
    text = report.read_text()
    assert text.startswith("<!DOCTYPE html>") and text.count("<svg") == 2
    leftovers = subprocess.run(["pgrep", "-f", "shim.demo.node"], capture_output=True, text=True).stdout
    assert leftovers.strip() == ""
    assert list(tmp.iterdir()) == [], "crashed plugins' sockets are removed with the demo's workspace"
    tmp.rmdir()


def test_report_renders_in_headless_chromium(tmp_path):
    """Open the HTML report in a real browser (Debian's chromium) and look at the pixels."""
    from shim.demo.run import Request, RunResult

    chromium = shutil.which("chromium")
    if chromium is None:
        pytest.fail("chromium is missing: apt-get install -y chromium (build/install.sh installs it)")
    s = S.Settings()
    ev = S.build(s)
    reqs = [Request(i, i * 0.1, S.leader_at(ev, i * 0.1), ok=True, version="1.0.0", category="ok")
            for i in range(1, 100) if S.leader_at(ev, i * 0.1) >= 0]
    for r in reqs[40:60]:
        r.ok, r.category = False, "plugin-failure"
    run = RunResult("baseline", ev, s, ev[-1].t, reqs, [], [(2.3, 2, "x")], ["vault-0", "vault-1", "vault-2"])
    page = tmp_path / "r.html"
    page.write_text(render.html_report([run]))
    shot = tmp_path / "shot.png"
    proc = subprocess.run(
        [chromium, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         f"--user-data-dir={tmp_path / 'profile'}", f"--screenshot={shot}", "--window-size=1000,700",
         page.as_uri()], capture_output=True, timeout=120)
    assert shot.exists(), proc.stderr.decode()[-2000:]
    from tests.support.png import pixels

    width, height, px = pixels(shot.read_bytes())
    assert (width, height) == (1000, 700)
    colours = set(px)
    assert (0xd0, 0x02, 0x1b) in colours, "failed requests are drawn in red"
    assert (0xf0, 0xa0, 0x30) in colours, "v1 service is drawn in orange"
