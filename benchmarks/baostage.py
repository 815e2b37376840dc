"""The stage shared by the real-OpenBao benchmarks (bao_launch, bao_takeover, bao_memory).

One *image* directory holds what a node's ``plugin_directory`` would: the demo secrets
engine (shim/demo/baoplugin, a real go-plugin 1.0.1 plugin of ~12 MB) registered directly by
its own sha256, and two launchers made with the project's CLI (``keygen``, ``sign``,
``launcher build``), one per mode, that verify and run the very same binary from
``versions/``. The three are registered under their own catalog names, so one server runs
all three and every round can interleave them:

    direct   bench-direct  -> bench-direct           (OpenBao hashes 12 MB, execs it)
    exec     bench-exec    -> bench-exec-launcher    (stub + Python, memfd, fexecve)
    proxy    bench-proxy   -> bench-proxy-launcher   (stub + Python relay + the child)

The launchers' ``--plugins-dir`` is relative (``versions``), so the image can be copied into
several nodes' plugin directories (the takeover benchmark). Only loopback is used.
"""

from __future__ import annotations

import atexit
import http.client
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from shim.demo import bao, gobuild  # noqa: E402
from shim.trust.verify import digest_file  # noqa: E402
from tests.support.procs import alive  # noqa: E402

TARGETS = ("direct", "exec", "proxy")
PLUGIN_NAME = "bench"          # the name in the manifests and both launchers' policies
VERSION = "1.0.0"
COMMANDS = {"direct": "bench-direct", "exec": "bench-exec-launcher", "proxy": "bench-proxy-launcher"}
CATALOG = {t: f"bench-{t}" for t in TARGETS}
CLI = Path(sys.executable).with_name("vault-plugin-shim")


class StageError(RuntimeError):
    """The stage could not be built or the server did not do what a benchmark needs."""


def _cli(*args, cwd: Path) -> str:
    argv = [str(CLI)] if CLI.exists() else [sys.executable, "-m", "shim.cli"]
    env = {k: v for k, v in os.environ.items() if not k.startswith(("VAULT_", "BAO_"))}
    env["HOME"] = str(cwd)
    done = subprocess.run([*argv, *map(str, args)], capture_output=True, text=True, env=env, cwd=cwd,
                          stdin=subprocess.DEVNULL, timeout=300)
    if done.returncode != 0:
        raise StageError(f"vault-plugin-shim {' '.join(map(str, args))} failed ({done.returncode}):\n"
                         f"{done.stdout}{done.stderr}")
    return done.stdout


_SHARED: dict[int, "Image"] = {}


def shared_image(pad_mb: int = 0) -> "Image":
    """One image per process (the benchmarks of one run share it: building it runs the CLI
    five times); its directory is removed when the process exits."""
    if pad_mb not in _SHARED:
        tmp = tempfile.TemporaryDirectory(prefix="vps-image-")
        atexit.register(tmp.cleanup)
        _SHARED[pad_mb] = Image(Path(tmp.name), pad_mb)
    return _SHARED[pad_mb]


class Image:
    """The plugin directory contents described in the module docstring, built under ``root``."""

    def __init__(self, root: Path, pad_mb: int = 0):
        self.root = Path(root)
        self.dir = self.root / "image"
        versions = self.dir / "versions"
        versions.mkdir(parents=True, mode=0o755)
        work = self.root / "work"
        work.mkdir()
        gobuild.require_go(what="the demo OpenBao plugin the benchmarks mount")
        built = gobuild.build_bao_plugin("secret", VERSION, work / "bin", cache_dir=work / "cache")
        binary = versions / f"{PLUGIN_NAME}-{VERSION}"
        shutil.copyfile(built, binary)
        if pad_mb:  # a bigger plugin: random bytes appended (as benchmarks.launch), still a valid ELF
            with open(binary, "ab") as f:
                left = pad_mb * 1024 * 1024 - os.path.getsize(binary)
                while left > 0:
                    f.write(os.urandom(min(left, 1 << 20)))
                    left -= 1 << 20
        binary.chmod(0o755)
        shutil.copyfile(binary, self.dir / COMMANDS["direct"])
        (self.dir / COMMANDS["direct"]).chmod(0o755)
        self.binary = binary
        self.size = binary.stat().st_size
        sk, pk = work / "key.sk", work / "key.pub"
        _cli("keygen", "--secret-key", sk, "--public-key", pk, "--unencrypted", cwd=work)
        _cli("sign", binary, "--secret-key", sk, "--name", PLUGIN_NAME, "--type", "secret",
             "--version", VERSION, cwd=work)
        for mode in ("exec", "proxy"):
            _cli("launcher", "build", "--trusted-key", pk, "--name", PLUGIN_NAME, "--type", "secret",
                 "--plugins-dir", "versions", "--mode", mode, "--output", self.dir / COMMANDS[mode], cwd=work)
        self.sha256 = {t: digest_file(str(self.dir / COMMANDS[t]))[0] for t in TARGETS}
        self.files = {t: self.dir / COMMANDS[t] for t in TARGETS}


class Client:
    """A keep-alive HTTP/1.1 client for one OpenBao API address (loopback), as root."""

    def __init__(self, addr: str, token: str | None, timeout: float = 30.0):
        host, port = addr.removeprefix("http://").rsplit(":", 1)
        self.host, self.port, self.token, self.timeout = host, int(port), token, timeout
        self.conn: http.client.HTTPConnection | None = None

    def request(self, method: str, path: str, body=None) -> tuple[int, dict]:
        """(status, decoded body); status 0 when nothing answered (the connection is reset)."""
        headers = {"X-Vault-Request": "true"}
        if self.token:
            headers["X-Vault-Token"] = self.token
        data = None if body is None else json.dumps(body).encode()
        for attempt in (0, 1):
            if self.conn is None:
                self.conn = http.client.HTTPConnection(self.host, self.port, timeout=self.timeout)
            try:
                self.conn.request(method, f"/v1/{path}", body=data, headers=headers)
                resp = self.conn.getresponse()
                raw = resp.read()
            except (OSError, http.client.HTTPException) as exc:
                self.close()
                if attempt:
                    return 0, {"error": f"{type(exc).__name__}: {exc}"}
                continue  # a kept-alive connection the server closed: once more on a new one
            try:
                return resp.status, (json.loads(raw) if raw else {})
            except ValueError:
                return resp.status, {"errors": [raw.decode("utf-8", "replace")[:300]]}
        raise AssertionError("unreachable")

    def ok(self, method: str, path: str, body=None) -> dict:
        status, answer = self.request(method, path, body)
        if status not in (200, 204):
            raise StageError(f"{method} {path} answered {status}: {answer}")
        return answer

    def close(self) -> None:
        if self.conn is not None:
            self.conn.close()
            self.conn = None


def register(client: Client, image: Image) -> None:
    """Catalog entries for the three targets, each pinned to its own file's sha256."""
    for t in TARGETS:
        client.ok("PUT", f"sys/plugins/catalog/secret/{CATALOG[t]}",
                  {"sha256": image.sha256[t], "command": COMMANDS[t], "version": f"v{VERSION}"})


def mount(client: Client, target: str, path: str) -> None:
    client.ok("POST", f"sys/mounts/{path}", {"type": CATALOG[target],
                                             "config": {"plugin_version": f"v{VERSION}"}})


def unmount(client: Client, path: str) -> None:
    client.ok("DELETE", f"sys/mounts/{path}")


def wait_until(condition, what: str, deadline: float = 60.0, poll: float = 0.02):
    end = time.monotonic() + deadline
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > end:
            raise StageError(f"timed out after {deadline:.0f} s waiting for {what}")
        time.sleep(poll)


def first_read(client: Client, path: str, deadline: float = 60.0) -> float:
    """Poll ``GET <path>/version`` until it answers 200; returns when it did (monotonic)."""
    end = time.monotonic() + deadline
    last = None
    while time.monotonic() < end:
        status, answer = client.request("GET", f"{path}/version")
        if status == 200:
            return time.monotonic()
        last = (status, answer)
        time.sleep(0.002)
    raise StageError(f"{path}/version did not answer within {deadline:.0f} s (last {last})")


def plugin_pids(server: bao.Server) -> list[int]:
    """The live processes the server started (plugins, their children)."""
    return [p for p in bao.descendants(server.pid) if alive(p)] if server.pid else []




def wait_plugins_gone(server: bao.Server, deadline: float = 30.0) -> None:
    wait_until(lambda: not plugin_pids(server), f"the plugins of {server.addr} to exit", deadline, poll=0.05)


def drop_cache(paths) -> None:
    """Evict these files' pages (written back first: DONTNEED skips dirty pages)."""
    for p in paths:
        fd = os.open(p, os.O_RDONLY)
        try:
            os.fsync(fd)
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)


def percentile(values: list[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..100) of a non-empty list."""
    ordered = sorted(values)
    k = max(0, min(len(ordered) - 1, int(round(q / 100 * len(ordered) + 0.5)) - 1))
    return ordered[k]


def median(values: list[float]) -> float:
    return statistics.median(values)


def dev_server(root: Path, image: Image) -> bao.DevServer:
    """A dev server whose plugin_directory is the image (log level warn: the benchmarks
    should not time the server's debug logging)."""
    return bao.DevServer(root, plugin_dir=image.dir, log_level="warn")


def ratio_rows(label: str, unit: str, values: dict[str, float], fmt: str = "{:.1f}",
               share: bool = False) -> list[tuple[str, str, str, str]]:
    """One row per shim mode against direct: (benchmark, baseline, shim, ratio)."""
    rows = []
    for mode in ("exec", "proxy"):
        r = values[mode] / values["direct"] if values["direct"] else float("nan")
        rows.append((f"{mode} mode: {label} ({unit})", fmt.format(values["direct"]), fmt.format(values[mode]),
                     f"{r:.0%} of direct" if share else f"{r:.2f}x"))
    return rows
