"""Launch cost and per-request cost on a real OpenBao (2.7.2 dev server, loopback): direct,
exec launcher and proxy launcher of the same ~12 MB Go secrets engine, in one run.

    python -m benchmarks.bao_launch [--rounds 7] [--reads 400] [--pad-mb 50] [--quick]

* mount -> first read: ``POST sys/mounts/<path>`` until the first ``200`` of
  ``GET <path>/version`` (the plugin is launched, handshaken and set up in between). Each
  round mounts every target once, in turn, then unmounts it and waits until its processes
  have exited; one warm-up round is not counted. Median over the rounds. Two kinds of round:
  *relaunch* (as they come: a direct launch leaves the file in the page cache, where Vault's
  hash read it; the launcher drops its file's pages once copied, so its next launch reads the
  file again), and *first launch on a pod* (every file of the image evicted from the page cache
  before each mount, as on a standby that becomes active).
* storage read: on a warm mount of each target, ``GET <path>/kv/<key>`` over one kept-alive
  HTTP connection: OpenBao -> plugin (HandleRequest) -> OpenBao's Storage over the go-plugin
  broker -> back. Rounds interleave the targets, ``--reads`` reads each; p50 and p99 of
  all reads of a target. ``--reads 0`` measures launches only.
* ``--pad-mb N``: the same engine padded with random bytes to N MB (still a valid ELF), for
  the launch cost of a large plugin: Vault hashes all of it at each direct launch; the
  launcher copies it into a sealed memfd and hashes the bytes it copies.

The HTTP client is Python's http.client on the same machine; its cost is in every target's
numbers alike (see the direct column), so compare the ratios.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from benchmarks import baostage as S  # noqa: E402


def mount_to_read(client: S.Client, server, target: str, path: str) -> dict:
    t0 = time.monotonic()
    S.mount(client, target, path)
    t_mounted = time.monotonic()
    t_read = S.first_read(client, path)
    S.unmount(client, path)
    t_unmounted = time.monotonic()
    S.wait_plugins_gone(server)
    t_gone = time.monotonic()
    return {"first_read_ms": (t_read - t0) * 1000, "post_ms": (t_mounted - t0) * 1000,
            "unmount_ms": (t_unmounted - t_read) * 1000, "gone_ms": (t_gone - t_read) * 1000}


def storage_reads(client: S.Client, path: str, n: int) -> list[float]:
    out = []
    for _ in range(n):
        t = time.perf_counter()
        status, answer = client.request("GET", f"{path}/kv/bench")
        out.append((time.perf_counter() - t) * 1000)
        if status != 200 or (answer.get("data") or {}).get("value") != "x":
            raise S.StageError(f"GET {path}/kv/bench answered {status}: {answer}")
    return out


def image_files(image: S.Image) -> list[Path]:
    return [p for p in image.dir.rglob("*") if p.is_file()]


def measure(rounds: int = 7, reads: int = 400, read_rounds: int = 3, quick: bool = False, pad_mb: int = 0) -> dict:
    if quick:
        rounds, reads, read_rounds = 1, min(reads, 60), 1
    with tempfile.TemporaryDirectory(prefix="vps-bl-") as tmp:
        tmp = Path(tmp)
        image = S.shared_image(pad_mb)
        server = S.dev_server(tmp / "bao", image)
        server.start()
        try:
            client = S.Client(server.addr, server.token)
            S.register(client, image)
            launch = {t: [] for t in S.TARGETS}
            cold = {t: [] for t in S.TARGETS}
            for r in range(rounds + 1):
                for t in S.TARGETS:
                    res = mount_to_read(client, server, t, f"ml-{t}-{r}")
                    if r:  # round 0 warms up the page cache and the server
                        launch[t].append(res)
            for r in range(rounds):
                for t in S.TARGETS:
                    S.drop_cache(image_files(image))
                    cold[t].append(mount_to_read(client, server, t, f"mc-{t}-{r}"))
            for t in S.TARGETS if reads else ():
                S.mount(client, t, f"st-{t}")
                S.first_read(client, f"st-{t}")
                client.ok("PUT", f"st-{t}/kv/bench", {"value": "x"})
                storage_reads(client, f"st-{t}", 20)  # warm: broker connection, caches
            lat = {t: [] for t in S.TARGETS}
            for _ in range(read_rounds if reads else 0):
                for t in S.TARGETS:
                    lat[t] += storage_reads(client, f"st-{t}", reads)
            for t in S.TARGETS if reads else ():
                S.unmount(client, f"st-{t}")
            S.wait_plugins_gone(server)
            client.close()
        finally:
            server.stop()
            left = server.leftover_processes()
        if left:
            raise S.StageError(f"processes left by the benchmark's OpenBao server: {left}")
    out = {"rounds": rounds, "reads": reads * read_rounds, "plugin_mb": image.size / 1e6}
    for t in S.TARGETS:
        out[f"{t}_first_read_ms"] = S.median([x["first_read_ms"] for x in launch[t]])
        for key in ("post_ms", "unmount_ms", "gone_ms"):
            out[f"{t}_{key}"] = S.median([x[key] for x in launch[t]])
        out[f"{t}_first_read_all"] = [round(x["first_read_ms"], 1) for x in launch[t]]
        out[f"{t}_cold_first_read_ms"] = S.median([x["first_read_ms"] for x in cold[t]])
        out[f"{t}_cold_first_read_all"] = [round(x["first_read_ms"], 1) for x in cold[t]]
        if reads:
            out[f"{t}_read_p50_ms"] = S.percentile(lat[t], 50)
            out[f"{t}_read_p99_ms"] = S.percentile(lat[t], 99)
    return out


def rows(r: dict) -> list[tuple[str, str, str, str]]:
    mb = f"{r['plugin_mb']:.1f} MB plugin"
    launch = (S.ratio_rows(f"OpenBao mount -> first read (relaunch), {mb}", "median ms",
                           {t: r[f"{t}_first_read_ms"] for t in S.TARGETS}, "{:.0f}")
              + S.ratio_rows(f"OpenBao mount -> first read (first launch on a pod), {mb}", "median ms",
                             {t: r[f"{t}_cold_first_read_ms"] for t in S.TARGETS}, "{:.0f}"))
    if not r["reads"]:
        return launch
    return (launch
            + S.ratio_rows("OpenBao storage read over HTTP, p50", "ms",
                           {t: r[f"{t}_read_p50_ms"] for t in S.TARGETS}, "{:.2f}")
            + S.ratio_rows("OpenBao storage read over HTTP, p99", "ms",
                           {t: r[f"{t}_read_p99_ms"] for t in S.TARGETS}, "{:.2f}"))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--reads", type=int, default=400)
    ap.add_argument("--pad-mb", type=int, default=0, help="pad the plugin to this many MB")
    ap.add_argument("--quick", action="store_true")
    a = ap.parse_args(argv)
    res = measure(a.rounds, a.reads, quick=a.quick, pad_mb=a.pad_mb)
    for row in rows(res):
        print(" | ".join(row))
    for t in S.TARGETS:
        print(f"{t}: mount -> first read, first launch on a pod, every round (ms): {res[f'{t}_cold_first_read_all']}")
        print(f"{t}: mount -> first read, relaunch, every round (ms): {res[f'{t}_first_read_all']}; median POST "
              f"sys/mounts {res[f'{t}_post_ms']:.0f} ms; DELETE sys/mounts {res[f'{t}_unmount_ms']:.0f} ms, "
              f"processes gone after {res[f'{t}_gone_ms']:.0f} ms")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
