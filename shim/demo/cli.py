"""``vault-plugin-shim demo``: its options and what it prints (the parser lives in shim.cli).

stdout carries the result (plan, timelines, tables, failure texts); stderr the progress.
"""

from __future__ import annotations

import signal
import sys
import time
from pathlib import Path


def add_arguments(p) -> None:
    p.add_argument("--model", action="store_true",
                   help="replay on the built-in model of Vault instead of a real OpenBao cluster "
                        "(for machines without OpenBao)")
    p.add_argument("--nodes", type=int, default=3, help="cluster size (default 3)")
    p.add_argument("--order", help="restart order, e.g. 2,1,0 (default: highest ordinal first)")
    p.add_argument("--election", default="worst", choices=("worst", "random"),
                   help="worst: leadership goes to old-image nodes, as in the report (default); "
                        "random: drawn with --seed")
    p.add_argument("--seed", type=int, default=1, help="seed for random elections (and the model's crashes)")
    p.add_argument("--rate", type=float, default=None,
                   help="requests per second per run, reads and writes, shared by the two client views "
                        "(default 50; the model: 40, to the leader)")
    p.add_argument("--only", choices=("baseline", "shim"), help="run just one of the two")
    p.add_argument("--sequential", action="store_true",
                   help="run the two clusters one after the other instead of at the same time")
    p.add_argument("--report", metavar="FILE", help="also write a self-contained HTML report")
    p.add_argument("--events", action="store_true", help="also print every event of each run")
    p.add_argument("--prepare", action="store_true",
                   help="only build and cache the demo's plugin (the first build compiles gRPC from source)")
    model = p.add_argument_group("model only (--model)")
    model.add_argument("--start-delay", type=float, default=0.0,
                       help="seconds each plugin sleeps before its handshake")
    model.add_argument("--restart-seconds", type=float, default=2.0, help="pod terminated -> Ready")
    model.add_argument("--crash-interval", type=float, default=0.0,
                       help="mean seconds between crashes of the active plugin (0: none)")


def _settings(args):
    from shim.errors import UsageError
    from shim.demo import schedule

    try:
        return schedule.Settings(
            nodes=args.nodes, election=args.election, seed=args.seed, restart=args.restart_seconds,
            crash_interval=args.crash_interval,
            order=tuple(int(x) for x in args.order.split(",")) if args.order else None)
    except ValueError as exc:
        raise UsageError(str(exc)) from None


def main(args) -> int:
    from shim.errors import UsageError

    settings = _settings(args)
    rate = args.rate if args.rate is not None else (40.0 if args.model else 50.0)
    if rate <= 0 or rate > 500:
        raise UsageError("--rate must be within (0, 500] requests per second")
    if args.model:
        return _model(args, settings, rate)
    if not 3 <= args.nodes <= 5:
        raise UsageError("a real cluster has 3 to 5 nodes (--model takes 2 to 9)")
    if args.restart_seconds != 2.0 or args.crash_interval or args.start_delay:
        raise UsageError("--restart-seconds, --crash-interval and --start-delay apply to --model only")
    return _real(args, settings, rate)


ENVIRONMENT_BROKEN = 2   # no bao, no Go, a cluster that cannot start; 1: the shim run had plugin failures


def _missing(what: str) -> int:
    print(f"vault-plugin-shim demo: {what}", file=sys.stderr)
    print("Without it, `vault-plugin-shim demo --model` replays the upgrade on a model of Vault.", file=sys.stderr)
    return ENVIRONMENT_BROKEN


def _real(args, settings, rate: float) -> int:
    from shim.demo import bao, cluster, gobuild, gomod, render, replay, schedule
    from shim.demo import report as demo_report

    try:
        bao.find_bao()
    except bao.BaoMissing as exc:
        return _missing(str(exc))
    try:
        gomod.find_go(gomod.SDK_PLUGINS["secret"][0])  # the demo's plugin is a Go module on OpenBao's SDK
    except gobuild.GoUnavailable as exc:
        return _missing(str(exc))
    if args.prepare:
        started = time.monotonic()
        try:
            cache = replay.prepare()
        except gobuild.GoBuildError as exc:
            return _build_failed(exc)
        print(f"vault-plugin-shim demo: plugin built and cached in {cache} ({time.monotonic() - started:.0f} s)")
        return 0
    plan = schedule.plan(settings)
    names = [f"vault-{i}" for i in range(settings.nodes)]
    color = sys.stdout.isatty()
    print("vault-plugin-shim demo: a StatefulSet rolling upgrade of a custom plugin on a real "
          f"{settings.nodes}-node OpenBao Raft cluster, twice.")
    print("baseline: plugin registered by sha256; each new pod's init container re-registers its own file's sha256;")
    print("shim:     launcher registered once; each image holds it plus its own signed version.\n")
    print("\n".join(plan.describe(names)) + "\n")
    progress = demo_report.Progress()
    started = time.monotonic()
    previous = signal.signal(signal.SIGTERM, _interrupt)  # stop the clusters on SIGTERM too
    try:
        runs = replay.run_demo(settings, rate=rate, runs=("baseline", "shim") if args.only is None else (args.only,),
                               parallel=not args.sequential, progress=progress)
    except KeyboardInterrupt:
        progress.done()
        print("vault-plugin-shim demo: interrupted; every node was stopped and its directory removed",
              file=sys.stderr)
        return 130
    except gobuild.GoBuildError as exc:
        progress.done()
        return _build_failed(exc)
    except bao.BaoError as exc:  # the environment: a cluster that cannot start, a port
        progress.done()
        first, *rest = str(exc).splitlines()
        print(f"vault-plugin-shim demo: the replay could not go on (every node was stopped and its directory "
              f"removed; run with {cluster.KEEP_ENV}=1 to keep the nodes' logs): {first}", file=sys.stderr)
        if rest:  # the node's log tail: the cause is there (a panic, a port already in use)
            print("\n".join("  " + ln for ln in rest[-15:]), file=sys.stderr)
        return ENVIRONMENT_BROKEN
    finally:
        signal.signal(signal.SIGTERM, previous)
    progress.done()
    for run in runs:
        print()
        print(render.terminal(demo_report.timeline(run), color=color))
    print("\n" + render.LEGEND + "\n")
    print(render.text_table(demo_report.SUMMARY_HEAD, demo_report.summary_rows(runs)))
    print(demo_report.FOOTNOTE + "\n")
    print(render.text_table(demo_report.RUN_HEAD, demo_report.run_rows(runs)) + "\n")
    print(demo_report.failure_text(runs))
    if args.events:
        for run in runs:
            print(f"\n{run.name}: events\n" + demo_report.timeline_events(run))
    print(f"\n{sum(len(r.requests) for r in runs)} requests in {time.monotonic() - started:.0f} s")
    if args.report:
        Path(args.report).write_text(report_html(runs, settings))
        print(f"report written to {args.report}")
    if any(r.failures for r in runs if r.name == "shim"):
        print("\nFAIL: the shim run had plugin failures", file=sys.stderr)
        return 1
    return 0


def _build_failed(exc: Exception) -> int:
    """The demo's plugin did not build (no module proxy, a broken Go cache): one line, exit 2."""
    lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
    print(f"vault-plugin-shim demo: the demo's plugin could not be built: {lines[0] if lines else exc}"
          + (f" ({lines[-1]})" if len(lines) > 1 else ""), file=sys.stderr)
    return ENVIRONMENT_BROKEN


def _interrupt(signum, frame):
    raise KeyboardInterrupt


def report_html(runs, settings) -> str:
    from shim.demo import render
    from shim.demo import report as demo_report

    names = runs[0].node_names
    by = {r.name: r for r in runs}

    def each(f) -> list:
        return [f(by[n]) if n in by else "-" for n in ("baseline", "shim") if n in by]

    headline = [
        ("failed requests (reads / writes)", *each(lambda r: f"{len(r.failures)} ({sum(1 for q in r.failures if q.op == 'read')}"
                                                              f" / {sum(1 for q in r.failures if q.op == 'write')})")),
        ("longest failure window", *each(lambda r: f"{r.longest_window():.1f} s")),
        ("node crashes (OpenBao restarted by the kubelet)", *each(lambda r: sum(1 for e in r.events if e.kind == "crash"))),
        ("catalog writes during the rollout", *each(lambda r: len(r.catalog_writes))),
        ("plugin versions that answered", *each(lambda r: ", ".join(r.versions_served) or "-")),
    ]
    setup = (f"Each run is a fresh {settings.nodes}-node OpenBao Raft cluster on loopback, both at once on one "
             "machine. " + "; ".join(runs[0].plan.describe(names)) + ". "
             f"Load: {runs[0].rate:g} requests/s per run (reads and writes of demo/kv/<key> with an application "
             "token), half to the active node, half round robin over every node that is up. " + demo_report.FOOTNOTE)
    report = render.Report(
        title="vault-plugin-shim demo: a rolling upgrade of a custom plugin on a real OpenBao cluster",
        problem=demo_report.PROBLEM, fix=demo_report.FIX, headline=headline, setup=setup,
        tables=[("Requests by client view", demo_report.SUMMARY_HEAD, demo_report.summary_rows(runs)),
                ("Runs", demo_report.RUN_HEAD, demo_report.run_rows(runs))],
        notes=[(demo_report.PS_TITLE, list(demo_report.PS))],
        details=[("Plugin failures: exact answers and causes", demo_report.failure_text(runs))]
        + [d for run in runs for d in ((f"{run.name}: every event", demo_report.timeline_events(run)),
                                       (f"{run.name}: every failed request", demo_report.failed_requests_text(run)))])
    return render.html_report([demo_report.timeline(r) for r in runs], report)


def _model(args, settings, rate: float) -> int:
    from shim.demo import render, run as model, schedule

    color = sys.stdout.isatty()
    print("vault-plugin-shim demo --model: a StatefulSet rolling upgrade of a custom plugin, replayed twice on a "
          "model of Vault.")
    print("baseline: plugin registered directly, init containers re-register its sha256;")
    print("shim:     launcher registered once, each pod runs the signed version in its image.\n")
    print("\n".join(schedule.describe(schedule.build(settings))) + "\n")
    runs = model.run_demo(settings, rate=rate, start_delay=args.start_delay,
                          runs=("baseline", "shim") if args.only is None else (args.only,),
                          log=lambda m: print(m, file=sys.stderr, flush=True))
    for run in runs:
        print()
        print(render.terminal(model.timeline(run), color=color))
    print("\n" + render.LEGEND + "\n")
    print(render.text_table(model.SUMMARY_HEAD, model.summary_rows(runs)))
    print(model.FOOTNOTE)
    if args.report:
        from shim.demo import report as demo_report

        report = render.Report(
            title="vault-plugin-shim demo --model: a rolling upgrade on a model of Vault", problem=demo_report.PROBLEM,
            fix=demo_report.FIX, headline=[("failed requests", *[len(r.failures) for r in runs]),
                                      ("plugin downtime", *[f"{r.downtime:.1f} s" for r in runs])],
            setup=f"{settings.nodes} modelled nodes, restart order "
                  f"{', '.join(f'vault-{n}' for n in settings.restart_order)}, {settings.election} elections. "
                  + model.FOOTNOTE,
            tables=[("Runs", model.SUMMARY_HEAD, model.summary_rows(runs))])
        Path(args.report).write_text(render.html_report([model.timeline(r) for r in runs], report))
        print(f"\nreport written to {args.report}")
    if any(r.failures for r in runs if r.name == "shim"):
        print("\nFAIL: the shim run had plugin failures", file=sys.stderr)
        return 1
    return 0
