"""Verification throughput: `vault-plugin-shim verify` of a large signed plugin versus the
plain baseline of hashing the same file with coreutils `sha256sum`, in one run.

    python -m benchmarks.verify [--size-mb 200] [--repeat 5]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.support import releases as R  # noqa: E402


def _time(cmd) -> float:
    t = time.perf_counter()
    subprocess.run(cmd, check=True, capture_output=True)
    return time.perf_counter() - t


def measure(size_mb: int = 200, repeat: int = 5) -> dict:
    with tempfile.TemporaryDirectory(prefix="shim-bench-verify-") as tmp:
        tmp = Path(tmp)
        d = tmp / "v"
        d.mkdir(mode=0o755)
        plugin = d / "myplugin-1.0.0"
        with open(plugin, "wb") as fh:
            for _ in range(size_mb):
                fh.write(os.urandom(1 << 20))
        keys = R.new_keys()
        R.release(keys, plugin, version="1.0.0")
        pk = tmp / "pk"
        pk.write_text(keys.public.to_text())
        verify = [sys.executable, "-m", "shim.cli", "verify", "--trusted-key", str(pk), "--name", "myplugin",
                  str(plugin)]
        base, ours = [], []
        for _ in range(repeat):
            base.append(_time(["sha256sum", str(plugin)]))
            ours.append(_time(verify))
    b, o = statistics.median(base), statistics.median(ours)
    return {"size_mb": size_mb, "sha256sum_s": b, "verify_s": o,
            "sha256sum_mb_s": size_mb / b, "verify_mb_s": size_mb / o, "ratio": o / b}


def rows(r: dict) -> list[tuple[str, str, str, str]]:
    return [(f"verify a {r['size_mb']} MB plugin vs sha256sum (MB/s)", f"{r['sha256sum_mb_s']:.0f}",
             f"{r['verify_mb_s']:.0f}", f"{r['ratio']:.2f}x time")]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size-mb", type=int, default=200)
    ap.add_argument("--repeat", type=int, default=5)
    a = ap.parse_args(argv)
    for row in rows(measure(a.size_mb, a.repeat)):
        print(" | ".join(row))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
