"""Is the demo reliable? Run ``vault-plugin-shim demo`` N times in a row, exactly as a new user
runs it (a fresh process each time, no flag), and count the runs that pass.

    python -m benchmarks.demo_runs [--runs 10] [--limit 90] [--keep DIR]

A run passes when the command exits 0 within ``--limit`` seconds, its baseline shows plugin
failures caused by ``checksums did not match``, and its shim run has none. Each run's line
gives its time, both runs' plugin failures, the node crashes each run met (OpenBao 2.7.2 can
panic when a mount has no backend; the demo's kubelet restarts the node), and, for a run that
failed, the last lines it printed. ``--keep DIR`` keeps every run's stdout and stderr there.
Exits 1 if any run failed.
"""

from __future__ import annotations

import argparse
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


@dataclass
class Outcome:
    status: int
    seconds: float
    stdout: str
    stderr: str
    limit: float

    def _run_row(self, name: str) -> list[str]:
        m = re.search(rf"^{name}\s+(\d+)\s+(\d+)\s+(\d+)\s", self.stdout, re.M)
        return list(m.groups()) if m else []

    def failures(self, name: str) -> int:
        m = re.search(rf"^{name}: (\d+) plugin failures", self.stdout, re.M)
        return int(m.group(1)) if m else 0

    def crashes(self, name: str) -> int:
        row = self._run_row(name)
        return int(row[1]) if row else 0

    @property
    def baseline_checksum(self) -> bool:
        """The baseline's failures, as the demo prints them with their causes, name the checksum."""
        m = re.search(r"^baseline: \d+ plugin failures.*?(?=^shim: |\Z)", self.stdout, re.M | re.S)
        return bool(m) and "checksums did not match" in m.group(0)

    @property
    def problems(self) -> list[str]:
        out = []
        if self.status != 0:
            out.append(f"exit {self.status}")
        if self.seconds > self.limit:
            out.append(f"took {self.seconds:.0f} s > {self.limit:.0f} s")
        if self.status == 0 and not self.baseline_checksum:
            out.append("no `checksums did not match` failure in the baseline")
        if self.status == 0 and "shim: no plugin failures" not in self.stdout:
            out.append("the shim run had plugin failures")
        return out


def run_once(timeout: float, limit: float) -> Outcome:
    # short: the plugins' unix sockets live under TMPDIR
    tmp = tempfile.mkdtemp(prefix="vdr-", dir="/tmp")
    started = time.monotonic()
    try:
        proc = subprocess.run([sys.executable, "-m", "shim.cli", "demo"], cwd=ROOT, capture_output=True,
                              text=True, timeout=timeout, stdin=subprocess.DEVNULL,
                              env={**os.environ, "TMPDIR": tmp})
        status, out, err = proc.returncode, proc.stdout, proc.stderr
    except subprocess.TimeoutExpired as exc:
        status, out, err = -1, exc.stdout or "", (exc.stderr or "") + f"\n(killed after {timeout:.0f} s)"
        out = out.decode() if isinstance(out, bytes) else out
        err = err.decode() if isinstance(err, bytes) else err
    finally:
        took = time.monotonic() - started
        subprocess.run(["rm", "-rf", tmp], check=False)
    return Outcome(status, took, out, err, limit)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=int, default=10)
    ap.add_argument("--limit", type=float, default=90.0, help="seconds a run may take to count as passed")
    ap.add_argument("--keep", metavar="DIR", help="keep each run's stdout and stderr in DIR")
    a = ap.parse_args(argv)
    keep = Path(a.keep) if a.keep else None
    if keep:
        keep.mkdir(parents=True, exist_ok=True)
    outcomes = []
    print(f"{'run':>3}  {'result':6}  {'time s':>6}  {'baseline failures':>17}  {'shim failures':>13}  "
          f"{'crashes (baseline/shim)':>23}", flush=True)
    for i in range(1, a.runs + 1):
        o = run_once(timeout=max(300.0, 3 * a.limit), limit=a.limit)
        outcomes.append(o)
        if keep:
            (keep / f"run{i}.out").write_text(o.stdout)
            (keep / f"run{i}.err").write_text(o.stderr)
        verdict = "pass" if not o.problems else "FAIL"
        print(f"{i:>3}  {verdict:6}  {o.seconds:6.1f}  {o.failures('baseline'):>17}  {o.failures('shim'):>13}  "
              f"{o.crashes('baseline'):>11}/{o.crashes('shim'):<11}", flush=True)
        if o.problems:
            print("     " + "; ".join(o.problems), flush=True)
            tail = (o.stderr.strip().splitlines() or ["(nothing on stderr)"])[-5:]
            print("\n".join("     | " + line for line in tail), flush=True)
    passed = sum(1 for o in outcomes if not o.problems)
    times = [o.seconds for o in outcomes]
    print(f"\n{passed} of {len(outcomes)} runs passed; time per run: min {min(times):.0f} s, "
          f"median {statistics.median(times):.0f} s, max {max(times):.0f} s; "
          f"node crashes met: baseline {sum(o.crashes('baseline') for o in outcomes)}, "
          f"shim {sum(o.crashes('shim') for o in outcomes)}")
    return 0 if passed == len(outcomes) else 1


if __name__ == "__main__":
    raise SystemExit(main())
