"""Memory per plugin process on a real OpenBao (2.7.2 dev server, loopback): direct, exec
launcher and proxy launcher of the same ~12 MB Go secrets engine, for 1 and for N mounts; and
memory per mount of a multiplexed plugin, direct, exec and proxy, for 1 and for N mounts.

    python -m benchmarks.bao_memory [--rounds 2] [--mounts 10] [--quick]

The multiplexed plugin is the OpenBao-SDK secrets engine (shim/demo/sdkplugin, built by
shim.demo.gomod with ``plugin.ServeMultiplex``, ~23 MB): OpenBao starts one plugin process for
every mount of a catalog entry, so through a proxy launcher one launcher (and its one child)
serves all N mounts. Its three targets are added to the same image directory under names of
their own (``benchmux-*``, versions in ``versions-mux/``) and measured in the same run, the
same way, interleaved with the three above; their ratios are against the direct registration
of that same multiplexed plugin. For them the numbers are per *mount* (the server's growth, or
the plugin trees' total, divided by the mounts); for the one-process-per-mount targets above,
per process and per mount are the same thing.

Two accountings, both printed:

* **cgroup** (what a pod's memory limit sees): the server runs in a fresh memory cgroup of its
  own, a child of this process's (cgroup v1 ``memory`` controller, or v2 with ``memory``
  enabled). Before each target, the image's files are dropped from the page cache
  (``posix_fadvise(DONTNEED)``, these files only) so their pages are charged anew; the
  server's charge is read before the first mount, after the first, and after the N-th. Per
  process = growth / mounts. ``charged`` is ``memory.usage_in_bytes`` (v1) or
  ``memory.current`` (v2); ``unreclaimable`` is anonymous + shmem (``rss + shmem`` in
  memory.stat), the part no reclaim can take back without swap, which is what a sealed memfd
  is.
* **/proc** (per process tree, when no cgroup can be made): for each plugin process and its
  descendants, ``RssAnon`` plus its share of the memfds the trees execute from (each distinct
  ``/proc/<pid>/exe`` memfd counted once, whole file: processes of one version share one
  sealed copy, see shim.launch.memexec), and ``Pss`` from ``smaps_rollup``.

Interpreter libraries (libpython, grpcio's and cryptography's shared objects) are already in
the page cache from earlier runs and are charged to whoever read them first: once per pod, not
per process, so they are not in these numbers.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from benchmarks import baostage as S  # noqa: E402
from shim.demo import gomod  # noqa: E402
from shim.demo.bao import descendants  # noqa: E402
from shim.trust.verify import digest_file  # noqa: E402

MB = 1024 * 1024
MUX_NAME = "benchmux"            # the multiplexed plugin's name in its manifest and launchers' policies
MUX_VERSIONS = "versions-mux"    # its launchers' (relative) plugins dir, beside the image's versions/
MUX = {t: f"mux_{t}" for t in S.TARGETS}   # target -> result key of the multiplexed plugin's target


class MuxStage:
    """The multiplexed SDK secrets engine, registered directly and through an exec and a proxy
    launcher, its files added to ``image``'s directory (the server's plugin_directory)."""

    def __init__(self, image: S.Image):
        work = image.root / "mux-work"
        work.mkdir()
        versions = image.dir / MUX_VERSIONS
        versions.mkdir(mode=0o755)
        built = gomod.build_sdk_plugin("secret", S.VERSION, work / "bin", multiplex=True)
        binary = versions / f"{MUX_NAME}-{S.VERSION}"
        shutil.copyfile(built, binary)
        binary.chmod(0o755)
        self.commands = {"direct": f"{MUX_NAME}-direct", "exec": f"{MUX_NAME}-exec-launcher",
                         "proxy": f"{MUX_NAME}-proxy-launcher"}
        self.catalog = {t: f"{MUX_NAME}-{t}" for t in S.TARGETS}
        shutil.copyfile(binary, image.dir / self.commands["direct"])
        (image.dir / self.commands["direct"]).chmod(0o755)
        sk, pk = work / "key.sk", work / "key.pub"
        S._cli("keygen", "--secret-key", sk, "--public-key", pk, "--unencrypted", cwd=work)
        S._cli("sign", binary, "--secret-key", sk, "--name", MUX_NAME, "--type", "secret",
               "--version", S.VERSION, cwd=work)
        for mode in ("exec", "proxy"):
            S._cli("launcher", "build", "--trusted-key", pk, "--name", MUX_NAME, "--type", "secret",
                   "--plugins-dir", MUX_VERSIONS, "--mode", mode, "--output", image.dir / self.commands[mode],
                   cwd=work)
        self.binary = binary
        self.size = binary.stat().st_size
        self.files = {t: image.dir / self.commands[t] for t in S.TARGETS}
        self.sha256 = {t: digest_file(str(f))[0] for t, f in self.files.items()}

    def register(self, client: S.Client) -> None:
        for t in S.TARGETS:
            client.ok("PUT", f"sys/plugins/catalog/secret/{self.catalog[t]}",
                      {"sha256": self.sha256[t], "command": self.commands[t], "version": f"v{S.VERSION}"})


_MUX: dict[Path, MuxStage] = {}


def mux_stage(image: S.Image) -> MuxStage:
    """One per image (its files are added once; the image is shared by the run's benchmarks)."""
    if image.dir not in _MUX:
        _MUX[image.dir] = MuxStage(image)
    return _MUX[image.dir]


def mount(client: S.Client, catalog: str, path: str) -> None:
    """As baostage.mount, by catalog name."""
    client.ok("POST", f"sys/mounts/{path}", {"type": catalog, "config": {"plugin_version": f"v{S.VERSION}"}})


class Cgroup:
    """A memory cgroup below our own (v1 memory controller or v2), removed by :meth:`close`."""

    def __init__(self, label: str):
        self.path: Path | None = None
        self.version = 0
        self.why_not = ""
        lines = Path("/proc/self/cgroup").read_text().splitlines()
        v1 = next((ln.split(":", 2)[2] for ln in lines if ln.split(":")[1] == "memory"), None)
        v2 = next((ln.split(":", 2)[2] for ln in lines if ln.startswith("0::")), None)
        tries = []
        if v1 is not None:
            tries.append((1, Path("/sys/fs/cgroup/memory") / v1.lstrip("/")))
        if v2 is not None:
            for base in (Path("/sys/fs/cgroup"), Path("/sys/fs/cgroup/unified")):
                if (base / "cgroup.controllers").exists():
                    tries.append((2, base / v2.lstrip("/")))
        for version, parent in tries:
            if version == 2:
                try:
                    if "memory" not in (parent / "cgroup.subtree_control").read_text().split():
                        self.why_not += f"{parent}: memory is not enabled for children; "
                        continue
                except OSError as exc:
                    self.why_not += f"{parent}: {exc.strerror}; "
                    continue
            path = parent / f"vps-bench-{label}-{os.getpid()}"
            try:
                path.mkdir()
            except OSError as exc:
                self.why_not += f"cannot create {path}: {exc.strerror}; "
                continue
            self.path, self.version = path, version
            return
        if not tries:
            self.why_not = "no memory cgroup hierarchy in /proc/self/cgroup"

    def add(self, pid: int) -> None:
        (self.path / "cgroup.procs").write_text(str(pid))

    def usage(self) -> dict[str, int]:
        stat = {}
        for line in (self.path / "memory.stat").read_text().splitlines():
            k, v = line.split()
            stat[k] = int(v)
        if self.version == 1:
            charged = int((self.path / "memory.usage_in_bytes").read_text())
            unreclaimable = stat["total_rss"] + stat["total_shmem"]
            shmem = stat["total_shmem"]
        else:
            charged = int((self.path / "memory.current").read_text())
            unreclaimable = stat["anon"] + stat["shmem"]
            shmem = stat["shmem"]
        return {"charged": charged, "unreclaimable": unreclaimable, "shmem": shmem}

    def close(self) -> None:
        if self.path is None:
            return
        end = time.monotonic() + 30
        while True:
            try:
                self.path.rmdir()
                return
            except OSError:
                if time.monotonic() > end:
                    raise
                for pid in (self.path / "cgroup.procs").read_text().split():
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(int(pid), 9)
                time.sleep(0.1)


def _status(pid: int) -> dict[str, int]:
    out = {}
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            k, _, v = line.partition(":")
            if k in ("RssAnon", "RssFile", "RssShmem"):
                out[k] = int(v.split()[0]) * 1024
        for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
            k, _, v = line.partition(":")
            if k in ("Pss", "Pss_Anon", "Pss_File", "Pss_Shmem"):
                out[k] = int(v.split()[0]) * 1024
    except OSError:
        pass
    return out


def _memfd(pid: int) -> tuple[tuple[int, int], int] | None:
    """((dev, inode), size) of the memfd ``pid`` executes from, or None."""
    try:
        if os.readlink(f"/proc/{pid}/exe").startswith("/memfd:"):
            st = os.stat(f"/proc/{pid}/exe")
            return (st.st_dev, st.st_ino), st.st_size
    except OSError:
        pass
    return None


def _role(pid: int) -> str:
    """launcher (the Python the stub started), janitor (its cleanup helper), plugin (Go)."""
    try:
        cmd = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return "gone"
    if b"shim.goplugin.janitor" in cmd:
        return "janitor"
    if b"--vault-plugin-shim-context-fd=" in cmd:
        return "launcher"
    return "plugin"


def proc_view(server) -> dict[str, float]:
    """Per plugin (one child of the server and its tree): mean bytes of each field, and
    ``RssAnon`` of each role in the tree (``anon:<role>``)."""
    kids = [p for p in descendants(server.pid) if _parent(p) == server.pid]
    totals: dict[str, float] = {}
    memfds: dict[tuple[int, int], int] = {}   # each sealed copy once, however many run it
    for kid in kids:
        for pid in [kid, *descendants(kid)]:
            status = _status(pid)
            found = _memfd(pid)
            if found is not None:
                memfds[found[0]] = found[1]
            for k, v in status.items():
                totals[k] = totals.get(k, 0) + v
            role = f"anon:{_role(pid)}"
            totals[role] = totals.get(role, 0) + status.get("RssAnon", 0)
    n = max(1, len(kids))
    totals["memfd"] = sum(memfds.values())
    view = {k: v / n for k, v in totals.items()}
    view["memfd_copies"] = len(memfds)
    view["anon+memfd"] = view.get("RssAnon", 0) + view.get("memfd", 0)
    view["processes"] = len(kids)
    view["tree_processes"] = sum(1 + len(descendants(kid)) for kid in kids)
    return view


def per_mount(view: dict[str, float], mounts: int) -> dict[str, float]:
    """``proc_view``'s per-process means as per-mount shares (the trees' total / mounts)."""
    scale = view.get("processes", 0) / mounts
    return {k: (v if k in ("processes", "tree_processes", "memfd_copies") else v * scale)
            for k, v in view.items()}


def _parent(pid: int) -> int:
    try:
        return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
    except (OSError, IndexError, ValueError):
        return -1


def settle(read, deadline: float = 10.0) -> dict:
    """Read until two readings 0.5 s apart agree within 1% (the Go runtime and OpenBao
    allocate for a moment after a mount), or the deadline passes."""
    end = time.monotonic() + deadline
    last = read()
    while time.monotonic() < end:
        time.sleep(0.5)
        now = read()
        if abs(now["charged"] - last["charged"]) <= 0.01 * max(1, last["charged"]):
            return now
        last = now
    return last


def measure(rounds: int = 2, mounts: int = 10, quick: bool = False) -> dict:
    if quick:
        rounds, mounts = 1, 3
    cg = Cgroup("memory")
    keys = [*S.TARGETS, *MUX.values()]
    samples: dict[str, list[dict]] = {k: [] for k in keys}
    try:
        with tempfile.TemporaryDirectory(prefix="vps-bm-") as tmp:
            tmp = Path(tmp)
            image = S.shared_image()
            mux = mux_stage(image)
            catalog = {**S.CATALOG, **{MUX[t]: mux.catalog[t] for t in S.TARGETS}}
            server = S.dev_server(tmp / "bao", image)
            server.start()
            try:
                if cg.path is not None:
                    cg.add(server.pid)  # its plugins are born in the cgroup
                client = S.Client(server.addr, server.token)
                S.register(client, image)
                mux.register(client)
                files = [image.binary, *image.files.values(), mux.binary, *mux.files.values()]
                for r in range(rounds):
                    for t in keys:
                        S.wait_plugins_gone(server)
                        S.drop_cache(files)
                        read = cg.usage if cg.path is not None else (lambda: {"charged": 0})
                        base = settle(read)
                        paths = [f"mm-{t.replace('_', '-')}-{r}-{i}" for i in range(mounts)]
                        mount(client, catalog[t], paths[0])
                        S.first_read(client, paths[0])
                        one = settle(read)
                        proc_one = proc_view(server)
                        for p in paths[1:]:
                            mount(client, catalog[t], p)
                        for p in paths[1:]:
                            S.first_read(client, p)
                        many = settle(read)
                        proc_many = proc_view(server)
                        if t not in S.TARGETS:  # multiplexed: per mount, not per (the one) process
                            if proc_many["processes"] != 1:
                                raise S.StageError(f"{catalog[t]}: OpenBao ran {proc_many['processes']} plugin "
                                                   f"processes for {mounts} mounts of a multiplexed plugin, not 1")
                            proc_one, proc_many = per_mount(proc_one, 1), per_mount(proc_many, mounts)
                        samples[t].append({"base": base, "one": one, "many": many,
                                           "proc_one": proc_one, "proc_many": proc_many})
                        for p in paths:
                            S.unmount(client, p)
                S.wait_plugins_gone(server)
                client.close()
            finally:
                server.stop()
                left = server.leftover_processes()
            if left:
                raise S.StageError(f"processes left by the benchmark's OpenBao server: {left}")
    finally:
        cg.close()
    out = {"rounds": rounds, "mounts": mounts, "plugin_mb": image.size / 1e6, "mux_plugin_mb": mux.size / 1e6,
           "accounting": f"cgroup v{cg.version}" if cg.path is not None else "/proc",
           "why_no_cgroup": cg.why_not}
    for t in keys:
        if cg.path is not None:
            for key in ("charged", "unreclaimable", "shmem"):
                out[f"{t}_one_{key}_mb"] = S.median([(s["one"][key] - s["base"][key]) / MB for s in samples[t]])
                out[f"{t}_many_{key}_mb"] = S.median([(s["many"][key] - s["base"][key]) / MB / mounts
                                                      for s in samples[t]])
        for key in ("anon+memfd", "RssAnon", "memfd", "RssFile", "Pss", "anon:launcher", "anon:janitor",
                    "anon:plugin"):
            out[f"{t}_proc_one_{key}_mb"] = S.median([s["proc_one"].get(key, 0) / MB for s in samples[t]])
            out[f"{t}_proc_many_{key}_mb"] = S.median([s["proc_many"].get(key, 0) / MB for s in samples[t]])
        for key in ("processes", "tree_processes", "memfd_copies"):
            out[f"{t}_proc_many_{key}"] = max(s["proc_many"].get(key, 0) for s in samples[t])
    return out


def rows(r: dict) -> list[tuple[str, str, str, str]]:
    n = r["mounts"]
    out = []
    if r["accounting"].startswith("cgroup"):
        acct = r["accounting"]
        for key, what in (("charged", "charged"), ("unreclaimable", "unreclaimable (anon + shmem)")):
            out += S.ratio_rows(f"OpenBao memory per plugin process, 1 mount, {acct} {what}", "MB",
                                {t: r[f"{t}_one_{key}_mb"] for t in S.TARGETS})
            out += S.ratio_rows(f"OpenBao memory per plugin process, {n} mounts, {acct} {what}", "MB",
                                {t: r[f"{t}_many_{key}_mb"] for t in S.TARGETS})
    out += S.ratio_rows("OpenBao memory per plugin process, 1 mount, /proc RssAnon + memfd", "MB",
                        {t: r[f"{t}_proc_one_anon+memfd_mb"] for t in S.TARGETS})
    out += S.ratio_rows(f"OpenBao memory per plugin process, {n} mounts, /proc RssAnon + memfd", "MB",
                        {t: r[f"{t}_proc_many_anon+memfd_mb"] for t in S.TARGETS})
    mux = "OpenBao memory per mount, multiplexed SDK plugin"   # against its own direct registration
    if r["accounting"].startswith("cgroup"):
        for key, what in (("charged", "charged"), ("unreclaimable", "unreclaimable (anon + shmem)")):
            out += S.ratio_rows(f"{mux}, 1 mount, {acct} {what}", "MB",
                                {t: r[f"{MUX[t]}_one_{key}_mb"] for t in S.TARGETS})
            out += S.ratio_rows(f"{mux}, {n} mounts, {acct} {what}", "MB",
                                {t: r[f"{MUX[t]}_many_{key}_mb"] for t in S.TARGETS})
    out += S.ratio_rows(f"{mux}, 1 mount, /proc RssAnon + memfd", "MB",
                        {t: r[f"{MUX[t]}_proc_one_anon+memfd_mb"] for t in S.TARGETS})
    out += S.ratio_rows(f"{mux}, {n} mounts, /proc RssAnon + memfd", "MB",
                        {t: r[f"{MUX[t]}_proc_many_anon+memfd_mb"] for t in S.TARGETS})
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--mounts", type=int, default=10)
    ap.add_argument("--quick", action="store_true")
    a = ap.parse_args(argv)
    res = measure(a.rounds, a.mounts, quick=a.quick)
    for row in rows(res):
        print(" | ".join(row))
    print(f"accounting: {res['accounting']} {res['why_no_cgroup']}")
    print(f"plugins: {res['plugin_mb']:.1f} MB (one process per mount), {res['mux_plugin_mb']:.1f} MB (multiplexed)")
    for k, v in res.items():
        if "_proc_" in k:
            print(f"{k}: {v:.2f}" if isinstance(v, float) else f"{k}: {v}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
