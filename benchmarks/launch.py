"""Launch overhead of exec mode: time from launch to handshake for a 50 MB plugin,
direct (Vault hashes the 50 MB file, execs it) versus through the launcher (Vault hashes
the small launcher; the launcher verifies the manifest, copies the 50 MB into a sealed memfd,
hashes the bytes it copies, and fexecve()s it): the native launcher (exec mode's default) and the
interpreter-backed one (``--kind python``). Same go-plugin host, same run, interleaved rounds.

    python -m benchmarks.launch [--size-mb 50] [--rounds 5] [--iterations 6]
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.support import gopeer  # noqa: E402
from shim.launch.build import write_launcher  # noqa: E402
from tests.support import releases as R  # noqa: E402


def measure(size_mb: int = 50, rounds: int = 5, iterations: int = 6) -> dict:
    gopeer.require_go()
    with tempfile.TemporaryDirectory(prefix="shim-bench-") as tmp:
        tmp = Path(tmp)
        host = gopeer.build_host(tmp / "bin", cache_dir=tmp / "cache")
        versions = tmp / "versions"
        versions.mkdir(mode=0o755)
        plugin = versions / "myplugin-1.0.0"
        shutil.copy(gopeer.build_plugin(tmp / "bin", "1.0.0", 2, cache_dir=tmp / "cache"), plugin)
        gopeer.pad(plugin, size_mb * 1024 * 1024, fill="random")
        os.chmod(plugin, 0o755)
        keys = R.new_keys()
        R.release(keys, plugin, version="1.0.0")
        pol = R.policy(versions, keys)
        native = tmp / "launcher-native"
        write_launcher(pol, None, str(native), native=True)
        targets = (("direct", plugin), ("native", native), ("python", R.launcher(tmp, pol)))
        sock = tmp / "sock"
        sock.mkdir()
        samples = {name: {"handshake_ms": [], "first_call_ms": []} for name, _ in targets}
        for _ in range(rounds):
            for name, target in targets:
                res = gopeer.run_host(host, target, "bench", iterations=iterations,
                                      sha256=gopeer.sha256_file(target), host_env={"TMPDIR": str(sock)},
                                      timeout=300)
                if not res.ok:
                    raise RuntimeError(res.describe())
                for it in res.results:
                    for key in samples[name]:
                        samples[name][key].append(it[key])
    out = {"size_mb": size_mb, "runs": rounds * iterations}
    for name, by_key in samples.items():
        for key, values in by_key.items():
            out[f"{name}_{key}_p50"] = statistics.median(values)
    for name in ("native", "python"):
        for key in ("handshake", "first_call"):
            out[f"{name}_ratio_{key}"] = out[f"{name}_{key}_ms_p50"] / out[f"direct_{key}_ms_p50"]
    return out


def rows(result: dict) -> list[tuple[str, str, str, str]]:
    """(benchmark, baseline, shim, ratio) rows for the combined table."""
    n = f"{result['size_mb']} MB plugin"
    out = []
    for name, label in (("native", "native launcher"), ("python", "Python launcher")):
        for key, what in (("handshake", "handshake"), ("first_call", "first call")):
            out.append((f"exec mode ({label}): launch -> {what}, {n} (p50 ms)",
                        f"{result[f'direct_{key}_ms_p50']:.1f}", f"{result[f'{name}_{key}_ms_p50']:.1f}",
                        f"{result[f'{name}_ratio_{key}']:.2f}x"))
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size-mb", type=int, default=50)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--iterations", type=int, default=6)
    a = ap.parse_args(argv)
    res = measure(a.size_mb, a.rounds, a.iterations)
    for row in rows(res):
        print(" | ".join(row))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
