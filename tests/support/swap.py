"""Test-side helpers for hot swap (tests/swap/, tests/openbao/test_*swap*.py, benchmarks/swap.py).

API:
    fault_plugin(cache_dir, dest_dir, fault, version) -> Path of tests/swapplugin built with a fault
    Load(addr, token, paths, clients=6)   -> steady reads and writes against OpenBao, every
                                             request recorded (start, end, ok, served_by, error)
    launcher_pids(server)                 -> PIDs of the launchers the server runs
    launcher_of(name)                     -> the launcher whose child runs a version of ``name``
    tree_of(pid)                          -> pid and all its descendants that are alive
"""

from __future__ import annotations

import os
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from tests.support.procs import alive
from tests.support.wait import wait_until

SWAPPLUGIN_DIR = Path(__file__).resolve().parent.parent / "swapplugin"
FAULTS = ("none", "exit-at-start", "exit-in-setup", "hang-in-setup", "setup-error", "special-paths", "type")


def fault_plugin(cache_dir: Path, dest_dir: Path, fault: str, version: str) -> Path:
    """tests/swapplugin (a secrets engine on the demo plugins' protos) with ``fault``."""
    import pytest

    from shim.demo import gobuild

    if fault not in FAULTS:
        raise ValueError(f"fault must be one of {FAULTS}")
    try:
        return gobuild.go_build(
            f"vps-fault-{fault}-{version}", "vpsswaptest", dest_dir=dest_dir, name=f"fault-{fault}-{version}",
            ldflags=f"-X main.version=v{version} -X main.fault={fault}", cache_dir=cache_dir,
            trees={gobuild.BAOPLUGIN_IMPORT: gobuild.BAOPLUGIN_DIR, "vpsswaptest": SWAPPLUGIN_DIR},
            patch_go_plugin=True, what="the hot swap test plugin")
    except gobuild.GoUnavailable as exc:
        pytest.fail(str(exc), pytrace=False)


# --- load -----------------------------------------------------------------------------------

@dataclass
class Sample:
    start: float
    end: float
    ok: bool
    kind: str                 # "read" or "write"
    served_by: str = ""
    error: str = ""


@dataclass
class Load:
    """``clients`` threads, each on its own keep-alive HTTP session, alternating a read of
    ``read_path`` and a write under ``write_prefix``/<client>; runs until stop()."""

    addr: str
    token: str
    read_path: str
    write_prefix: str
    clients: int = 6
    reads_only: bool = False
    read_field: str = "served_by"     # the field of a read's data recorded as ``served_by``
    samples: list = field(default_factory=list)

    def __post_init__(self):
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._lock = threading.Lock()

    def start(self) -> "Load":
        for i in range(self.clients):
            t = threading.Thread(target=self._run, args=(i,), daemon=True, name=f"load-{i}")
            t.start()
            self._threads.append(t)
        return self

    def _run(self, i: int) -> None:
        import requests

        s = requests.Session()
        headers = {"X-Vault-Token": self.token}
        n = 0
        while not self._stop.is_set():
            n += 1
            kind = "read" if n % 2 or self.reads_only else "write"
            t0 = time.monotonic()
            try:
                if kind == "read":
                    r = s.get(f"{self.addr}/v1/{self.read_path}", headers=headers, timeout=60)
                else:
                    r = s.put(f"{self.addr}/v1/{self.write_prefix}/c{i}", json={"n": str(n)}, headers=headers,
                              timeout=60)
                ok = r.status_code < 300
                served = ""
                if ok and kind == "read":
                    served = str((r.json().get("data") or {}).get(self.read_field, ""))
                sample = Sample(t0, time.monotonic(), ok, kind, served, "" if ok else f"{r.status_code} {r.text[:300]}")
            except Exception as exc:  # noqa: BLE001 - every failure is a sample
                sample = Sample(t0, time.monotonic(), False, kind, error=repr(exc)[:300])
            with self._lock:
                self.samples.append(sample)

    def stop(self) -> "Load":
        self._stop.set()
        for t in self._threads:
            t.join(90)
        return self

    def snapshot(self) -> list[Sample]:
        with self._lock:
            return list(self.samples)

    @property
    def failures(self) -> list[Sample]:
        return [s for s in self.snapshot() if not s.ok]

    def rate(self, since: float | None = None, until: float | None = None) -> float:
        got = [s for s in self.snapshot() if (since is None or s.start >= since) and (until is None or s.end <= until)]
        if not got:
            return 0.0
        span = (until or max(s.end for s in got)) - (since or min(s.start for s in got))
        return len(got) / span if span > 0 else 0.0

    def first(self, match, after: float = 0.0) -> float | None:
        """When the first read started after ``after`` whose recorded field matches ended."""
        times = [s.end for s in self.snapshot() if s.start >= after and s.served_by and match(s.served_by)]
        return min(times) if times else None

    def wait_for(self, match, what: str, after: float, deadline: float) -> float:
        def seen() -> str:
            return f"seen: {sorted({s.served_by for s in self.snapshot() if s.start >= after})[:10]}"

        return wait_until(lambda: self.first(match, after), f"a read {what}", deadline=deadline, detail=seen)

    def wait_served_by(self, version: str, after: float, deadline: float) -> float:
        return self.wait_for(lambda v: v == version, f"answered by {version}", after, deadline)

    def wait_prefix(self, prefix: str, after: float, deadline: float) -> float:
        return self.wait_for(lambda v: v.startswith(prefix), f"giving {prefix}...", after, deadline)


def latency_ms(samples, q: float) -> float:
    xs = sorted((s.end - s.start) * 1000 for s in samples)
    if not xs:
        return 0.0
    return xs[min(len(xs) - 1, int(q * len(xs)))]


# --- processes ------------------------------------------------------------------------------

def launcher_pids(server) -> list[int]:
    from shim.demo.bao import descendants

    out = []
    for pid in descendants(server.pid):
        try:
            if b"--vault-plugin-shim-context-fd" in Path(f"/proc/{pid}/cmdline").read_bytes():
                out.append(pid)
        except OSError:
            pass
    return out




def launcher_of(name: str) -> int:
    """The launcher whose plugin child runs a version of ``name`` (its exe is /memfd:NAME-...)."""
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            if os.readlink(f"/proc/{pid}/exe").startswith(f"/memfd:{name}-"):
                return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
    raise AssertionError(f"no plugin process of {name} found")


def tree_of(pid: int) -> set[int]:
    from shim.demo.bao import descendants

    return {p for p in [pid, *descendants(pid)] if alive(p)}
