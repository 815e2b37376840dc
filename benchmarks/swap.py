"""Hot swap under load on a real OpenBao: how long a new version takes to serve, what fails,
and what the swap costs in latency.

A dev server mounts the demo secrets engine through a proxy launcher built with hot swap.
Six clients read and write ``kv/`` (reads record which version answered). Each round copies
a signed v2 into the plugins directory (manifest, signature, then the binary through a rename)
and later removes it again (a swap down). Per swap it records:

* land -> first call served by the new version (ms), and the launcher's own ``took_ms``
  (rescan to switch) from its INFO line;
* failed calls (must be 0);
* latency p50/p99 of calls that started in the swap window (landing to one second after the
  new version's first answer) against the steady state before it.

    python -m benchmarks.swap [--quick] [--rounds N]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from shim.demo import bao, gobuild  # noqa: E402
from shim.launch.build import write_launcher  # noqa: E402
from tests.support import releases as R  # noqa: E402
from tests.support import swap as S  # noqa: E402

NAME = "swapbench"


def _ship(keys, staging: Path, versions: Path, binary: Path, version: str) -> float:
    staged = staging / f"{NAME}-{version}"
    shutil.copyfile(binary, staged)
    staged.chmod(0o755)
    R.release(keys, staged, name=NAME, type="secret", version=version)
    dest = versions / staged.name
    for suffix in (".manifest.json", ".manifest.json.minisig"):
        shutil.copyfile(str(staged) + suffix, str(dest) + suffix)
    tmp = versions / f".{staged.name}.tmp"
    shutil.copyfile(staged, tmp)
    tmp.chmod(0o755)
    os.replace(tmp, dest)
    return time.monotonic()


def _unship(versions: Path, version: str) -> float:
    base = versions / f"{NAME}-{version}"
    for suffix in ("", ".manifest.json", ".manifest.json.minisig"):
        Path(str(base) + suffix).unlink()
    return time.monotonic()


def _window(samples, since, until):
    return [s for s in samples if since <= s.start < until]


def measure(quick: bool = False, rounds: int | None = None, clients: int = 6) -> dict:
    rounds = rounds or (1 if quick else 3)
    steady_s = 3.0 if quick else 5.0
    with tempfile.TemporaryDirectory(prefix="swb", dir="/tmp") as tmp:
        tmp = Path(tmp)
        cache = Path(os.environ.get("GOPEER_CACHE_DIR") or tmp / "cache")
        v1 = gobuild.build_bao_plugin("secret", "1.0.0", tmp / "bin", cache_dir=cache)
        v2 = gobuild.build_bao_plugin("secret", "2.0.0", tmp / "bin", cache_dir=cache)
        server = bao.DevServer(tmp / "bao").start()
        try:
            versions, staging = tmp / "versions", tmp / "staging"
            versions.mkdir(mode=0o755)
            staging.mkdir()
            keys = R.new_keys()
            policy = R.policy(versions, keys, name=NAME).replace(mode="proxy")
            launcher = server.plugin_dir / f"{NAME}-launcher"
            sha = write_launcher(policy, R.PYTHON, str(launcher), "proxy", hot_swap=True)
            _ship(keys, staging, versions, v1, "1.0.0")
            server.bao("plugin", "register", f"-sha256={sha}", f"-command={launcher.name}", "-version=v1.0.0",
                       "secret", NAME)
            server.bao("secrets", "enable", f"-path={NAME}", "-plugin-version=v1.0.0", NAME)
            server.bao("write", f"{NAME}/kv/seed", "text=seed")
            offset = server.log_size()
            load = S.Load(server.addr, server.token, f"{NAME}/kv/seed", f"{NAME}/kv", clients=clients).start()
            swaps = []
            try:
                time.sleep(1.0)  # warm-up (connections, caches)
                t0 = time.monotonic()
                time.sleep(steady_s)
                steady_window = (t0, time.monotonic())
                for _ in range(rounds):
                    for direction, target in (("up", "v2.0.0"), ("down", "v1.0.0")):
                        landed = (_ship(keys, staging, versions, v2, "2.0.0") if direction == "up"
                                  else _unship(versions, "2.0.0"))
                        first = load.wait_served_by(target, after=landed, deadline=60)
                        time.sleep(1.0)  # the window after the first answer, and a drain
                        swaps.append({"direction": direction, "landed": landed, "first": first,
                                      "window": (landed, first + 1.0)})
                        time.sleep(2.5)  # at least the watcher's minimum gap before the next change
            finally:
                load.stop()
            samples = load.snapshot()
            log = server.log_text(offset)
        finally:
            server.stop()
    took = [int(m) for m in re.findall(r"vault-plugin-shim: swapped secret plugin \S+ from \S+ to \S+:.*?took_ms=(\d+)",
                                        log)]
    steady = _window(samples, *steady_window)
    result = {
        "clients": clients,
        "requests": len(samples),
        "failed": sum(1 for s in samples if not s.ok),
        "failures": [s.error for s in samples if not s.ok][:5],
        "steady_rate": len(steady) / (steady_window[1] - steady_window[0]),
        "steady_p50_ms": S.latency_ms(steady, 0.50),
        "steady_p99_ms": S.latency_ms(steady, 0.99),
        "swaps": [],
    }
    for i, sw in enumerate(swaps):
        during = _window(samples, *sw["window"])
        result["swaps"].append({
            "direction": sw["direction"],
            "land_to_first_ms": round((sw["first"] - sw["landed"]) * 1000),
            "took_ms": took[i] if i < len(took) else None,
            "p50_ms": S.latency_ms(during, 0.50),
            "p99_ms": S.latency_ms(during, 0.99),
            "max_ms": S.latency_ms(during, 1.0),
            "calls": len(during),
        })
    return result


def rows(result: dict) -> list[tuple[str, str, str, str]]:
    out = []
    p50, p99 = result["steady_p50_ms"], result["steady_p99_ms"]
    for sw in result["swaps"]:
        out.append((f"hot swap {sw['direction']}: land -> first call on the new version", "-",
                    f"{sw['land_to_first_ms']} ms", "-"))
        out.append((f"hot swap {sw['direction']}: p50 / p99 latency during the swap", f"{p50:.1f} / {p99:.1f} ms",
                    f"{sw['p50_ms']:.1f} / {sw['p99_ms']:.1f} ms",
                    f"{sw['p50_ms'] / p50:.2f}x / {sw['p99_ms'] / p99:.2f}x" if p50 and p99 else "-"))
    out.append(("hot swap: failed calls", "0", str(result["failed"]), "-"))
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--rounds", type=int)
    ap.add_argument("--clients", type=int, default=6)
    ap.add_argument("--json", action="store_true")
    a = ap.parse_args(argv)
    result = measure(a.quick, a.rounds, a.clients)
    if a.json:
        print(json.dumps(result, indent=2))
        return 0
    print(f"{result['requests']} requests from {result['clients']} clients, {result['failed']} failed; "
          f"steady {result['steady_rate']:.0f} req/s, p50 {result['steady_p50_ms']:.1f} ms, "
          f"p99 {result['steady_p99_ms']:.1f} ms\n")
    print("| swap | land -> first call on new version | launcher took | p50 | p99 | max | calls in window |")
    print("|---|---|---|---|---|---|---|")
    for sw in result["swaps"]:
        print(f"| {sw['direction']} | {sw['land_to_first_ms']} ms | {sw['took_ms']} ms | {sw['p50_ms']:.1f} ms | "
              f"{sw['p99_ms']:.1f} ms | {sw['max_ms']:.1f} ms | {sw['calls']} |")
    return 0 if result["failed"] == 0 else 1


if __name__ == "__main__":
    raise SystemExit(main())
