"""Plugin downtime during the demo's rolling upgrade: baseline (direct registration plus
the init container's re-registration) versus the shim, same schedule, one run each.

    python -m benchmarks.demo
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from shim.demo import schedule  # noqa: E402
from shim.demo.run import run_demo  # noqa: E402


def measure(rate: float = 40.0) -> dict:
    base, shim = run_demo(schedule.Settings(), rate=rate, log=lambda m: None)
    return {"baseline_downtime_s": base.downtime, "shim_downtime_s": shim.downtime,
            "baseline_failed": len(base.failures), "shim_failed": len(shim.failures),
            "requests": len(base.requests)}


def rows(r: dict) -> list[tuple[str, str, str, str]]:
    return [("demo rollout: plugin downtime (s)", f"{r['baseline_downtime_s']:.2f}", f"{r['shim_downtime_s']:.2f}",
             "-" if not r["baseline_downtime_s"] else f"{r['shim_downtime_s'] / r['baseline_downtime_s']:.2f}x"),
            ("demo rollout: failed requests", str(r["baseline_failed"]), str(r["shim_failed"]), "")]


def main() -> int:
    for row in rows(measure()):
        print(" | ".join(row))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
