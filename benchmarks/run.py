"""Run every benchmark and print one Markdown table of ratios against each baseline.

    python -m benchmarks.run [--quick] [--only NAME,...]

Each row compares the shim with its direct baseline *measured in the same run*, so the
ratio is what to read: machines are noisy, ratios much less so.
"""

from __future__ import annotations

import argparse
import importlib
import platform
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

BENCHMARKS = [
    ("benchmarks.launch", {"size_mb": 50, "rounds": 5, "iterations": 6}, {"rounds": 2, "iterations": 3}),
    ("benchmarks.verify", {"size_mb": 200, "repeat": 5}, {"size_mb": 50, "repeat": 2}),
    ("benchmarks.demo", {}, {}),
    # on a real OpenBao (2.7.2): direct, exec launcher and proxy launcher in one run each
    ("benchmarks.bao_launch", {"rounds": 21, "reads": 400}, {"quick": True}),  # 7 rounds: +-5% run to run
    ("benchmarks.bao_launch", {"rounds": 21, "reads": 0, "pad_mb": 50}, {"quick": True, "reads": 0, "pad_mb": 50}),
    ("benchmarks.bao_takeover", {"rounds": 3, "mounts": 10}, {"quick": True}),
    ("benchmarks.bao_memory", {"rounds": 2, "mounts": 10}, {"quick": True}),
]
OPTIONAL = [("benchmarks.proxy", {}, {"quick": True})]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="fewer repetitions (a smoke run, noisier)")
    ap.add_argument("--only", metavar="NAME,...",
                    help="run only these benchmarks (module names without 'benchmarks.', e.g. bao_launch)")
    a = ap.parse_args(argv)
    table = []
    todo = list(BENCHMARKS)
    for name, full, quick in OPTIONAL:
        try:
            importlib.import_module(name)
            todo.append((name, full, quick))
        except ImportError:
            pass
    if a.only:
        wanted = {f"benchmarks.{n.strip()}" for n in a.only.split(",") if n.strip()}
        unknown = wanted - {name for name, _, _ in todo}
        if unknown:
            ap.error(f"unknown benchmark(s): {', '.join(sorted(n.split('.', 1)[1] for n in unknown))}")
        todo = [t for t in todo if t[0] in wanted]
    for name, full, quick in todo:
        mod = importlib.import_module(name)
        t = time.monotonic()
        print(f"running {name} ...", file=sys.stderr, flush=True)
        result = mod.measure(**(quick if a.quick else full))
        table.extend(mod.rows(result))
        print(f"  done in {time.monotonic() - t:.0f}s", file=sys.stderr, flush=True)
    print(f"\n{platform.machine()}, {platform.system()} {platform.release()}, Python {platform.python_version()}\n")
    print("| benchmark | baseline | shim | ratio |")
    print("|---|---|---|---|")
    for row in table:
        print("| " + " | ".join(row) + " |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
