"""The real-OpenBao benchmarks run and report numbers (benchmarks/bao_*.py, in quick mode).

Performance is measured, not asserted: this only checks that one quick run of each of them
completes against the real server and prints a table row with numbers for both modes.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from shim.demo import bao, gobuild

ROOT = Path(__file__).resolve().parents[2]
BENCHMARKS = ("bao_launch", "bao_takeover", "bao_memory")
ROW = re.compile(r"^\| (exec|proxy) mode: OpenBao (.+?) \| (-?[0-9.]+) \| (-?[0-9.]+) \| (-?[0-9.]+|nan)(x| ?%)")


def test_openbao_benchmarks_run_and_report_numbers():
    try:
        bao.find_bao()
        gobuild.require_go(what="the demo OpenBao plugin the benchmarks mount")
    except (bao.BaoMissing, gobuild.GoUnavailable) as exc:
        pytest.fail(str(exc), pytrace=False)
    done = subprocess.run([sys.executable, "-m", "benchmarks.run", "--quick", "--only", ",".join(BENCHMARKS)],
                          cwd=ROOT, capture_output=True, text=True, timeout=900, stdin=subprocess.DEVNULL)
    assert done.returncode == 0, f"benchmarks.run failed ({done.returncode}):\n{done.stdout}\n{done.stderr[-4000:]}"
    rows = [m.groups() for m in map(ROW.match, done.stdout.splitlines()) if m]
    for what in ("mount -> first read", "storage read over HTTP, p50", "storage read over HTTP, p99",
                 "takeover", "memory per plugin process, 1 mount", "memory per plugin process, 3 mounts",
                 "memory per mount, multiplexed SDK plugin, 1 mount",
                 "memory per mount, multiplexed SDK plugin, 3 mounts"):
        modes = {mode for mode, label, *_ in rows if label.startswith(what)}
        assert modes == {"exec", "proxy"}, f"no {what!r} rows for both modes in:\n{done.stdout}"
    for mode, label, direct, shim, ratio, _ in rows:
        if "ms" in label:  # times; memory rows are differences of two readings
            assert float(direct) > 0 and float(shim) > 0, f"{mode} {label}: not a measurement ({direct}, {shim})"
    for name in BENCHMARKS:
        assert f"running benchmarks.{name}" in done.stderr
