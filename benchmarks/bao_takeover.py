"""Leadership takeover with many mounts on a real 3-node OpenBao Raft cluster (loopback):
direct, exec launcher and proxy launcher of the same ~12 MB Go secrets engine, one run.

    python -m benchmarks.bao_takeover [--rounds 3] [--mounts 10] [--trigger stop|step-down] [--quick]

For each target in turn (rounds interleave them): mount it ``--mounts`` times, wait until
every node runs a plugin process for every mount (standbys set up mounts too, for their
reads), then take leadership away from the active node and time

* ``active``: until another node answers ``sys/health`` as active;
* ``all serve``: until every mount answers ``GET <mount>/version`` with 200 *on that node*.

``stop`` (default) SIGTERMs the active node, as a rolling update does to its pod, and starts it
again afterwards (it rejoins as a standby); ``step-down`` calls ``sys/step-down`` (each
takeover then waits out OpenBao's 10 s step-down cool-down first, see shim/demo/cluster.py).
A node that becomes active tears down its standby mounts and launches every plugin again,
and it reports itself active only once its mounts are set up: so ``active`` already holds
the launches, and the control target ``none`` (no mounts) shows the election alone.

After each target its mounts are removed; a node that keeps a plugin process of a removed
mount (OpenBao 2.7.2 does: a standby now and then after a leadership change, and the stopped
node when it rejoins after the mounts were removed) is reported and that process killed, so
every target starts from the same cluster.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from benchmarks import baostage as S  # noqa: E402

DEADLINE = 120.0
LEAK_WAIT = 30.0
QUICK_LEAK_WAIT = 5.0
STANDBY_WAIT = 30.0


def server_children(server) -> list[int]:
    """The server's own children: one per running plugin (a launcher, or the plugin)."""
    pid = server.pid
    if not pid:
        return []
    out = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            fields = stat.rsplit(")", 1)[1].split()
            if int(fields[1]) == pid and fields[0] != "Z":
                out.append(int(entry.name))
    return out


def wait_running(cluster, count: int, short: list[dict], target: str) -> None:
    """Every node up runs a plugin process for each of ``count`` mounts. The active node must
    (its first reads launched them); a standby sets its mounts up on its own, and OpenBao
    2.7.2 now and then leaves one unstarted until a request needs it, or keeps one more (a
    process of a removed mount, or a second start). A standby still off after STANDBY_WAIT is
    recorded in ``short`` instead of failing the run: the takeover is timed on the new active
    node either way."""
    for n in cluster.nodes:
        if not n.up:
            continue
        state = cluster.health(n.index)
        wait = DEADLINE if state == "active" else STANDBY_WAIT
        try:
            S.wait_until(lambda: len(server_children(n.server)) == count,
                         f"{n.name} to run {count} plugin processes", wait, poll=0.05)
        except S.StageError as exc:
            kids = {p: _cmdline(p) for p in server_children(n.server)}
            if state != "active":
                short.append({"target": target, "node": n.name, "state": state, "running": len(kids),
                              "mounts": count})
                continue
            raise S.StageError(f"{exc}; it runs {len(kids)}: {kids}; node states: "
                               f"{[cluster.health(m.index) for m in cluster.nodes]}") from None


def wait_unmounted(cluster, leaks: list[dict], target: str, leak_wait: float = LEAK_WAIT) -> None:
    """After the unmounts: every node's plugin processes end. A standby that still runs one
    after ``leak_wait`` (seen with OpenBao 2.7.2 after a leadership change: the mount is gone,
    its process stays) is recorded in ``leaks`` and its process killed, so the next target
    starts from a clean cluster."""
    for n in cluster.nodes:
        if not n.up:
            continue
        try:
            S.wait_until(lambda: not server_children(n.server), f"{n.name} to stop its plugins", leak_wait,
                         poll=0.05)
        except S.StageError:
            kids = server_children(n.server)
            leaks.append({"target": target, "node": n.name, "state": cluster.health(n.index),
                          "processes": {p: _cmdline(p) for p in kids}})
            for p in kids:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(p, signal.SIGKILL)
            S.wait_until(lambda: not server_children(n.server), f"{n.name}'s leaked plugins to die", 30, poll=0.05)


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")[:120]
    except OSError:
        return "?"


def restart_stopped(cluster, leaks: list[dict], target: str, leak_wait: float = LEAK_WAIT) -> None:
    """Start the node an earlier takeover stopped (it rejoins as a standby). It was down
    while that target's mounts were removed; once it has caught up it must run none of
    their plugins (see :func:`wait_unmounted`)."""
    for n in cluster.nodes:
        if not n.up:
            cluster.start_node(n.index)
            cluster.wait_voter(n.index, DEADLINE)
            wait_unmounted(cluster, leaks, f"{target}, after {n.name} restarted", leak_wait)


def takeover(cluster, paths: list[str], trigger: str) -> dict:
    old = cluster.wait_active(DEADLINE)
    if trigger == "step-down":
        cluster.wait_cooldowns(exclude={old})
    stopper = None
    stopped: list[float] = []
    t0 = time.monotonic()
    if trigger == "stop":
        def stop() -> None:
            cluster.stop(old)
            stopped.append(time.monotonic())

        stopper = threading.Thread(target=stop, daemon=True)
        stopper.start()
    else:
        cluster.step_down(old)
    new = cluster.wait_active(DEADLINE, exclude={old})
    t_active = time.monotonic()
    client = S.Client(cluster.nodes[new].server.addr, cluster.token, timeout=10)
    pending = list(paths)
    end = t0 + DEADLINE
    while pending:
        if time.monotonic() > end:
            raise S.StageError(f"mounts {pending} did not answer on the new active node within {DEADLINE:.0f} s")
        still = []
        for p in pending:
            status, _ = client.request("GET", f"{p}/version")
            if status != 200:
                still.append(p)
        pending = still
        if pending:
            time.sleep(0.01)
    t_all = time.monotonic()
    if stopper is not None:
        stopper.join(DEADLINE)
        if not stopped:
            raise S.StageError(f"{cluster.nodes[old].name} did not stop within {DEADLINE:.0f} s")
    return {"active_ms": (t_active - t0) * 1000, "all_ms": (t_all - t0) * 1000, "new": new, "client": client,
            "old_exit_ms": (stopped[0] - t0) * 1000 if stopped else float("nan")}


def measure(rounds: int = 3, mounts: int = 10, trigger: str = "stop", quick: bool = False) -> dict:
    from shim.demo import cluster as cl  # a 3-node OpenBao Raft cluster on loopback

    leak_wait = LEAK_WAIT
    if quick:  # a smoke run: a process that lingers 5 s counts as kept (the full run waits 30 s)
        rounds, mounts, leak_wait = 1, 3, QUICK_LEAK_WAIT
    targets = S.TARGETS if quick else ("none",) + S.TARGETS
    samples: dict[str, list[dict]] = {t: [] for t in targets}
    leaks: list[dict] = []
    short: list[dict] = []
    with tempfile.TemporaryDirectory(prefix="vps-bt-") as tmp:
        tmp = Path(tmp)
        image = S.shared_image()
        with cl.Cluster(tmp / "cluster", {"image": image.dir}, size=3, log_level="warn") as cluster:
            cluster.start("image")
            active = cluster.wait_active(DEADLINE)
            client = S.Client(cluster.nodes[active].server.addr, cluster.token)
            S.register(client, image)
            prev = "-"
            for r in range(rounds):
                for t in targets:
                    restart_stopped(cluster, leaks, prev, leak_wait)
                    paths = [] if t == "none" else [f"tk-{t}-{r}-{i}" for i in range(mounts)]
                    for p in paths:
                        S.mount(client, t, p)
                    for p in paths:
                        S.first_read(client, p)
                    wait_running(cluster, len(paths), short, t)
                    res = takeover(cluster, paths, trigger)
                    client = res.pop("client")
                    samples[t].append(res)
                    for p in paths:
                        S.unmount(client, p)
                    wait_unmounted(cluster, leaks, t, leak_wait)
                    prev = t
            client.close()
        left = cluster.leftovers()  # by the TMPDIR marker the nodes gave their plugins
        if left:
            raise S.StageError(f"processes left by the cluster after it closed: {left}")
    out = {"rounds": rounds, "mounts": mounts, "trigger": trigger, "plugin_mb": image.size / 1e6, "leaks": leaks,
           "standbys_short": short}
    for t in targets:
        out[f"{t}_active_ms"] = S.median([s["active_ms"] for s in samples[t]])
        out[f"{t}_all_ms"] = S.median([s["all_ms"] for s in samples[t]])
        out[f"{t}_all_each"] = [round(s["all_ms"]) for s in samples[t]]
        out[f"{t}_old_exit_ms"] = S.median([s["old_exit_ms"] for s in samples[t]])
    return out


def rows(r: dict) -> list[tuple[str, str, str, str]]:
    how = "stop active" if r["trigger"] == "stop" else "step-down"
    label = f"OpenBao takeover ({how}), {r['mounts']} mounts: until all serve on the new active"
    out = S.ratio_rows(label, "median ms", {t: r[f"{t}_all_ms"] for t in S.TARGETS}, "{:.0f}")
    if "none_all_ms" in r:
        out.append(("control: the same takeover with no mounts (median ms)", f"{r['none_all_ms']:.0f}", "", ""))
    leaked = {}
    for leak in r["leaks"]:
        kind = leak["target"].split(",")[0]
        leaked[kind] = leaked.get(kind, 0) + len(leak["processes"])
    if leaked:
        out.append(("takeover: plugin processes OpenBao kept after their mounts were removed (killed)",
                    str(leaked.get("direct", 0)), ", ".join(f"{k} {v}" for k, v in sorted(leaked.items())
                                                           if k != "direct") or "0", ""))
    short: dict[tuple, int] = {}     # one row per finding, with the rounds it was seen in
    for miss in r.get("standbys_short", []):
        key = (miss["target"], miss["node"], miss["running"], miss["mounts"])
        short[key] = short.get(key, 0) + 1
    for (target, node, running, mounts), rounds in short.items():
        out.append((f"takeover ({target}): a standby's plugin processes before the takeover, not one per mount",
                    "", f"{node} ran {running} of {mounts}" + (f" (in {rounds} rounds)" if rounds > 1 else ""), ""))
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--mounts", type=int, default=10)
    ap.add_argument("--trigger", choices=("stop", "step-down"), default="stop")
    ap.add_argument("--quick", action="store_true")
    a = ap.parse_args(argv)
    res = measure(a.rounds, a.mounts, a.trigger, quick=a.quick)
    for row in rows(res):
        print(" | ".join(row))
    for k, v in res.items():
        if k.endswith(("_each", "_active_ms", "_old_exit_ms")):
            print(f"{k}: {v}")
    for leak in res["leaks"]:
        print(f"leaked after unmount ({leak['target']}): {leak['node']} ({leak['state']}) still ran "
              f"{leak['processes']}; killed")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
