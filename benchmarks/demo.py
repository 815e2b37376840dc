"""Plugin failures during the demo's rolling upgrade on a real 3-node OpenBao cluster: baseline
(direct registration, the init container re-registers the sha256) versus the shim, same plan
(the report's worst case), both runs at the same time.

    python -m benchmarks.demo [--model]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from shim.demo import schedule  # noqa: E402


def measure(rate: float = 50.0, model: bool = False) -> dict:
    started = time.monotonic()
    if model:
        from shim.demo.run import run_demo

        base, shim = run_demo(schedule.Settings(), rate=40.0, log=lambda m: None)
        return {"kind": "model", "baseline_downtime_s": base.downtime, "shim_downtime_s": shim.downtime,
                "baseline_failed": len(base.failures), "shim_failed": len(shim.failures),
                "requests": len(base.requests), "seconds": time.monotonic() - started}
    from shim.demo.replay import run_demo

    base, shim = run_demo(schedule.Settings(), rate=rate)
    out = {"kind": "real", "requests": len(base.requests) + len(shim.requests), "seconds": time.monotonic() - started}
    for run in (base, shim):
        out[f"{run.name}_failed"] = len(run.failures)
        out[f"{run.name}_window_active_s"] = run.longest_window("active")
        out[f"{run.name}_window_any_s"] = run.longest_window("any")
        out[f"{run.name}_no_active"] = len(run.of(category="no-active"))
        out[f"{run.name}_catalog_writes"] = len(run.catalog_writes)
        out[f"{run.name}_duration_s"] = run.duration
    return out


def rows(r: dict) -> list[tuple[str, str, str, str]]:
    if r["kind"] == "model":
        return [("demo --model rollout: plugin downtime (s)", f"{r['baseline_downtime_s']:.2f}",
                 f"{r['shim_downtime_s']:.2f}", ""),
                ("demo --model rollout: failed requests", str(r["baseline_failed"]), str(r["shim_failed"]), "")]
    return [("demo rollout (real cluster): plugin failures", str(r["baseline_failed"]), str(r["shim_failed"]), ""),
            ("demo rollout: longest failure window, active view (s)", f"{r['baseline_window_active_s']:.2f}",
             f"{r['shim_window_active_s']:.2f}", ""),
            ("demo rollout: longest failure window, any-node view (s)", f"{r['baseline_window_any_s']:.2f}",
             f"{r['shim_window_any_s']:.2f}", ""),
            ("demo rollout: failover noise, requests (no active node)", str(r["baseline_no_active"]),
             str(r["shim_no_active"]), ""),
            ("demo rollout: catalog writes", str(r["baseline_catalog_writes"]), str(r["shim_catalog_writes"]), ""),
            ("demo rollout: replay time (s)", f"{r['baseline_duration_s']:.1f}", f"{r['shim_duration_s']:.1f}", "")]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", action="store_true", help="measure the model instead of a real cluster")
    a = ap.parse_args(argv)
    for row in rows(measure(model=a.model)):
        print(" | ".join(row))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
