"""Would uvloop pay in the proxy relay? The benchmarks.proxy measurement (go-plugin 1.0.1 host
calling PingPong.Ping on the same Go plugin) for direct, the proxy launcher as built, and the
same launcher whose ``__main__`` first installs uvloop's event loop policy (the relay's loop
thread calls ``asyncio.new_event_loop()``, so it gets a uvloop loop; nothing else changes).

    python -m benchmarks.proxy_loop [--rounds 3] [--uvloop-dir DIR] [--quick]

uvloop is not a dependency of the project: without ``--uvloop-dir`` (a ``pip install
--target`` directory) the benchmark installs the wheel into its temp directory with pip.
"""

from __future__ import annotations

import argparse
import io
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from benchmarks.launch_profile import _zip  # noqa: E402
from benchmarks.proxy import _bench  # noqa: E402
from shim.launch import stubs  # noqa: E402
from tests.support import gopeer  # noqa: E402
from tests.support import releases as R  # noqa: E402

TARGETS = ("direct", "proxy", "proxy-uvloop")
RETRIES = 4
UVLOOP_MAIN = ("import sys as _sys\n_sys.path.append({site!r})\nimport asyncio as _asyncio\nimport uvloop as _uvloop\n"
               "_asyncio.set_event_loop_policy(_uvloop.EventLoopPolicy())\n")


def uvloop_site(tmp: Path, given: str | None) -> Path:
    if given:
        return Path(given)
    site = tmp / "uvloop-site"
    done = subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--only-binary=:all:", "--no-deps",
                           "--target", str(site), "uvloop"], capture_output=True, text=True)
    if done.returncode:
        raise RuntimeError(f"cannot install uvloop for the comparison: {done.stderr.strip()[-500:]}")
    return site


def with_main_prefix(src: Path, dest: Path, prefix: str) -> Path:
    """A copy of the launcher ``src`` whose generated ``__main__`` runs ``prefix`` first."""
    data = src.read_bytes()
    argv_prefix, code, stub_len = stubs.unpack(data)
    with zipfile.ZipFile(io.BytesIO(code)) as zf:
        files = [(n, zf.read(n)) for n in zf.namelist()]
    files = [(n, (prefix.encode() + d) if n == "__main__.py" else d) for n, d in files]
    dest.write_bytes(stubs.pack(data[:stub_len], argv_prefix, _zip(files)))
    dest.chmod(0o755)
    return dest


def measure(rounds: int = 3, quick: bool = False, uvloop_dir: str | None = None) -> dict:
    gopeer.require_go()
    rounds, calls1, calls8 = (1, 1000, 2000) if quick else (rounds, 3000, 8000)
    with tempfile.TemporaryDirectory(prefix="pxl", dir="/tmp") as tmp:
        tmp = Path(tmp)
        site = uvloop_site(tmp, uvloop_dir)
        host = gopeer.build_host(tmp / "bin", cache_dir=tmp / "cache")
        plugin = gopeer.build_plugin(tmp / "bin", "1.0.0", 2, cache_dir=tmp / "cache")
        versions = tmp / "v"
        versions.mkdir(mode=0o755)
        shutil.copy(plugin, versions / "myplugin-1.0.0")
        os.chmod(versions / "myplugin-1.0.0", 0o755)
        keys = R.new_keys()
        R.release(keys, versions / "myplugin-1.0.0", version="1.0.0")
        d = tmp / "proxy"
        d.mkdir()
        proxy = R.launcher(d, R.policy(versions, keys).replace(mode="proxy"))
        targets = {"direct": plugin, "proxy": proxy,
                   "proxy-uvloop": with_main_prefix(proxy, d / "launcher-uvloop", UVLOOP_MAIN.format(site=str(site)))}
        sock = tmp / "s"
        sock.mkdir()
        samples = {t: {"p50": [], "p99": [], "cps": []} for t in TARGETS}
        errors: dict[str, list[str]] = {t: [] for t in TARGETS}

        def bench(name: str, calls: int, concurrency: int) -> dict | None:
            for _ in range(RETRIES):
                try:
                    return _bench(host, targets[name], sock, calls, concurrency)
                except RuntimeError as exc:  # a variant that breaks is a result too: count it
                    lines = str(exc).splitlines()
                    errors[name].append((lines[1] if len(lines) > 1 else lines[0])[:300])
            return None

        for _ in range(rounds):
            for name in TARGETS:
                one = bench(name, calls1, 1)
                if one:
                    samples[name]["p50"].append(one["p50_us"])
                    samples[name]["p99"].append(one["p99_us"])
                eight = bench(name, calls8, 8)
                if eight:
                    samples[name]["cps"].append(eight["calls_per_s"])
    out = {"rounds": rounds, "errors": {k: v for k, v in errors.items() if v},
           "runs": {t: len(samples[t]["p50"]) + len(samples[t]["cps"]) for t in TARGETS}}
    for name, by_key in samples.items():
        for key, values in by_key.items():
            out[f"{name}_{key}"] = statistics.median(values) if values else float("nan")
    return out


def rows(r: dict) -> list[tuple[str, str, str, str]]:
    out = []
    for name in ("proxy", "proxy-uvloop"):
        out += [(f"{name}: unary call p50, 1 caller (us)", f"{r['direct_p50']:.0f}", f"{r[f'{name}_p50']:.0f}",
                 f"{r[f'{name}_p50'] / r['direct_p50']:.2f}x"),
                (f"{name}: unary call p99, 1 caller (us)", f"{r['direct_p99']:.0f}", f"{r[f'{name}_p99']:.0f}",
                 f"{r[f'{name}_p99'] / r['direct_p99']:.2f}x"),
                (f"{name}: throughput, 8 callers (calls/s)", f"{r['direct_cps']:.0f}", f"{r[f'{name}_cps']:.0f}",
                 f"{r[f'{name}_cps'] / r['direct_cps']:.0%} of direct")]
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--uvloop-dir")
    ap.add_argument("--quick", action="store_true")
    a = ap.parse_args(argv)
    res = measure(a.rounds, a.quick, a.uvloop_dir)
    for row in rows(res):
        print(" | ".join(row))
    for name, errs in res["errors"].items():
        print(f"{name}: {len(errs)} failed runs (retried), {res['runs'][name]} succeeded; first: {errs[0]}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
