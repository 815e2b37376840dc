"""Run every benchmark and print one Markdown table of ratios against each baseline.

    python -m benchmarks.run [--quick]

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
]
OPTIONAL = [("benchmarks.proxy", {}, {"quick": True})]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="fewer repetitions (a smoke run, noisier)")
    a = ap.parse_args(argv)
    table = []
    todo = list(BENCHMARKS)
    for name, full, quick in OPTIONAL:
        try:
            importlib.import_module(name)
            todo.append((name, full, quick))
        except ImportError:
            pass
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
