"""Where a proxied call's time goes: CPU and system calls per unary call, per process, and
the proxy launcher's CPU by shared object. The go-plugin 1.0.1 host (tests/gopeer) calls
PingPong.Ping on the Go plugin, directly and through the proxy launcher, one caller.

    python -m benchmarks.relay_profile [--calls 3000] [--quick]

* CPU per call: the host runs N1 and then N2 calls and holds (``--hold-stdin``); at the hold
  the CPU time of every task of each process is read (``/proc/*/task/*/schedstat``);
  (CPU(N2) - CPU(N1)) / (N2 - N1) is the cost of one call, start-up cancelled out.
* system calls per call: the same two runs with the target started under ``strace -f -ff``
  (one trace file per thread); each thread is put in the process it belongs to (launcher,
  janitor, plugin child) by following clone() and execve(); the difference per call again.
  strace slows everything; the counts are what is read here, not the times.
* CPU by shared object: ``perf record`` of the launcher's threads during a long run, shares by
  DSO (the interpreter, libssl/libcrypto, the kernel, ...).
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from shim.demo.bao import descendants  # noqa: E402
from tests.support import gopeer  # noqa: E402
from tests.support import releases as R  # noqa: E402

CONTEXT_FLAG = b"--vault-plugin-shim-context-fd="


def _children(pid: int) -> list[int]:
    out = []
    for p in descendants(pid):
        try:
            if int(Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()[1]) == pid:
                out.append(p)
        except (OSError, ValueError, IndexError):
            pass
    return out


def _cmd(pid: int) -> bytes:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return b""


def _cpu_ns(pid: int) -> int:
    total = 0
    try:
        tasks = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return 0
    for t in tasks:
        try:
            total += int(Path(f"/proc/{pid}/task/{t}/schedstat").read_text().split()[0])
        except (OSError, ValueError, IndexError):
            pass
    return total


def roles(host_pid: int) -> dict[str, int]:
    """pid of each process: host, and plugin (direct) or launcher, janitor, child."""
    out = {"host": host_pid}
    for kid in _children(host_pid):
        cmd = _cmd(kid)
        if b"strace" in cmd.split(b"\0")[0]:
            for k in _children(kid):
                cmd, kid = _cmd(k), k
                break
        if CONTEXT_FLAG in cmd:
            out["launcher"] = kid
            for k in _children(kid):
                out["janitor" if b"shim.goplugin.janitor" in _cmd(k) else "child"] = k
        else:
            out["plugin"] = kid
    return out


def held_cpu(host, target: Path, sock: Path, calls: int) -> dict[str, float]:
    """CPU ms of each process once the host has made ``calls`` calls and holds."""
    with gopeer.start_host(host, target, "unary-bench", iterations=calls, concurrency=1,
                           sha256=gopeer.sha256_file(target), host_env={"TMPDIR": str(sock)}) as run:
        run.wait_holding(timeout=300)
        pids = roles(run.proc.pid)
        cpu = {role: _cpu_ns(pid) / 1e6 for role, pid in pids.items()}
        res = run.release(timeout=120)
    if not res.ok:
        raise RuntimeError(res.describe())
    return cpu


# --- system calls -------------------------------------------------------------------------

CLONE = re.compile(r"^(?:clone3?|fork|vfork)\(.*\)\s+=\s+(\d+)")
EXECVE = re.compile(r'^execve\("([^"]*)"')


def strace_wrapper(target: Path, out_dir: Path) -> Path:
    """A script that runs ``target`` under ``strace -f -ff`` (one file per thread)."""
    script = out_dir / f"strace-{target.name}"
    script.write_text(f"#!/bin/sh\nexec {shutil.which('strace')} -f -ff -qq -o {out_dir}/t {target} \"$@\"\n")
    script.chmod(0o755)
    return script


def count_syscalls(out_dir: Path) -> dict[str, int]:
    """Syscalls per process role from the per-thread trace files of one run."""
    files = {int(p.name.split(".")[1]): p for p in out_dir.glob("t.*")}
    parent: dict[int, int] = {}
    exe: dict[int, list[str]] = {}
    count: dict[int, int] = {}
    for tid, path in files.items():
        n = 0
        for line in path.read_text(errors="replace").splitlines():
            if line.startswith(("+++", "---")):
                continue
            n += 1
            m = CLONE.match(line)
            if m:
                parent[int(m.group(1))] = tid
            m = EXECVE.match(line)
            if m and line.rstrip().endswith("= 0"):
                exe.setdefault(tid, []).append(m.group(1))
        count[tid] = n
    root = next(t for t in files if t not in parent)

    def role(tid: int) -> str:
        while True:
            for path in reversed(exe.get(tid, [])):
                if path.startswith("/proc/self/fd/") or "versions" in path or "myplugin" in path:
                    return "child" if tid != root else "plugin"
                if tid != root:
                    return "janitor"
            if tid == root:
                return "launcher" if any("python" in p for p in exe.get(root, [])) else "plugin"
            tid = parent.get(tid, root)

    out: dict[str, int] = {}
    for tid, n in count.items():
        r = role(tid)
        out[r] = out.get(r, 0) + n
    return out


def traced_syscalls(host, target: Path, sock: Path, tmp: Path, calls: int) -> dict[str, int]:
    out_dir = Path(tempfile.mkdtemp(prefix="st", dir=tmp))
    wrapper = strace_wrapper(target, out_dir)
    res = gopeer.run_host(host, wrapper, "unary-bench", iterations=calls, concurrency=1,
                          sha256=gopeer.sha256_file(wrapper), host_env={"TMPDIR": str(sock)}, timeout=600)
    if not res.ok:
        raise RuntimeError(res.describe())
    counts = count_syscalls(out_dir)
    shutil.rmtree(out_dir)
    return counts


# --- perf -----------------------------------------------------------------------------------

def perf_dso(host, target: Path, sock: Path, tmp: Path, seconds: float = 3.0) -> dict[str, float]:
    """Shares (percent) of the launcher's CPU samples by shared object, mid-run."""
    data = tmp / "perf.data"
    with gopeer.start_host(host, target, "unary-bench", iterations=10**6, concurrency=1,
                           sha256=gopeer.sha256_file(target), host_env={"TMPDIR": str(sock)},
                           call_timeout="600s") as run:
        end = time.monotonic() + 60
        pid = None
        while pid is None and time.monotonic() < end:
            pid = roles(run.proc.pid).get("launcher")
            time.sleep(0.05)
        time.sleep(1.5)  # past the start: calls are flowing
        subprocess.run(["perf", "record", "-q", "-F", "1999", "-p", str(pid), "-o", str(data), "--", "sleep",
                        str(seconds)], capture_output=True, check=True)
        run.kill()
    rep = subprocess.run(["perf", "report", "-i", str(data), "--stdio", "--sort", "dso", "--percent-limit", "0.5"],
                         capture_output=True, text=True)
    shares = {}
    for line in rep.stdout.splitlines():
        m = re.match(r"^\s+([0-9.]+)%\s+(\S.*)$", line)
        if m:
            shares[m.group(2).strip()] = float(m.group(1))
    return shares


def measure(calls: int = 3000, quick: bool = False) -> dict:
    gopeer.require_go()
    n1, n2 = (100, 600) if quick else (calls // 6, calls)
    with tempfile.TemporaryDirectory(prefix="rlp", dir="/tmp") as tmp:
        tmp = Path(tmp)
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
        sock = tmp / "s"
        sock.mkdir()
        out: dict = {"calls": (n1, n2)}
        for name, target in (("direct", plugin), ("proxy", proxy)):
            a = held_cpu(host, target, sock, n1)
            b = held_cpu(host, target, sock, n2)
            out[f"{name}_cpu_us_per_call"] = {k: (b[k] - a.get(k, 0)) * 1000 / (n2 - n1) for k in b}
            a = traced_syscalls(host, target, sock, tmp, n1)
            b = traced_syscalls(host, target, sock, tmp, n2)
            out[f"{name}_syscalls_per_call"] = {k: (b[k] - a.get(k, 0)) / (n2 - n1) for k in b}
        out["proxy_launcher_dso"] = perf_dso(host, proxy, sock, tmp, 2.0 if quick else 4.0)
    return out


def report(r: dict) -> str:
    lines = [f"per call, from runs of {r['calls'][0]} and {r['calls'][1]} calls (1 caller)", "",
             "| process | CPU us/call | syscalls/call |", "|---|---|---|"]
    for name in ("direct", "proxy"):
        for role, v in sorted(r[f"{name}_cpu_us_per_call"].items()):
            sc = r[f"{name}_syscalls_per_call"].get(role)
            lines.append(f"| {name}: {role} | {v:.0f} | {'' if sc is None else f'{sc:.1f}'} |")
    lines += ["", "| proxy launcher CPU by shared object | share |", "|---|---|"]
    for dso, pct in sorted(r["proxy_launcher_dso"].items(), key=lambda kv: -kv[1]):
        lines.append(f"| {dso} | {pct:.1f}% |")
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--calls", type=int, default=3000)
    ap.add_argument("--quick", action="store_true")
    a = ap.parse_args(argv)
    print(report(measure(a.calls, a.quick)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
