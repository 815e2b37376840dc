"""Test-side helpers around shim.demo.bao (the real OpenBao process layer).

API:
    require_bao()                         -> Path of the real binary, or pytest.fail with how to install it
    started(server)                       -> context manager: start, yield, stop, check nothing is left
    assert_nothing_left(server, timeout)  -> fails naming the PIDs still running (and kills them)
    wait_for_log(server, text, offset=0, timeout=60) -> the first log line holding ``text``
    cli_env(server, **extra)              -> environment for `vault-plugin-shim` aimed at ``server``
    shim(*args, env=...)                  -> run the installed `vault-plugin-shim` CLI
    build_plugin(kind, version, dest, cache_dir) -> a demo OpenBao plugin (fails when Go is missing)
    Release(server, root, name)           -> keys, versions dir and launcher made with the CLI
    catalog_entries(server, kind, name)   -> {version: detailed catalog entry}
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Iterator

import pytest

from shim.demo import bao
from tests.support.wait import wait_until


def require_bao():
    try:
        return bao.find_bao()
    except bao.BaoMissing as exc:
        pytest.fail(str(exc), pytrace=False)


def _wait_gone(server: bao.Server, timeout: float) -> list[int]:
    """The server's processes still alive once they had ``timeout`` seconds to exit."""
    try:
        wait_until(lambda: not server.leftover_processes(), f"the processes of {server.root} to exit",
                   deadline=timeout, poll=0.1)
    except AssertionError:
        pass
    return server.leftover_processes()


def assert_nothing_left(server: bao.Server, timeout: float = 30.0) -> None:
    """After a stop: no process that the server started is still alive (polled, since
    plugins exit a moment after the server tells them to). Any found are killed, then named."""
    left = _wait_gone(server, timeout)
    if left:
        described = {pid: _cmdline(pid) for pid in left}
        for pid in left:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        pytest.fail(f"processes left by the OpenBao server in {server.root}: {described}",
                    pytrace=False)


def _cmdline(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read().replace(b"\0", b" ").decode(errors="replace").strip()
    except OSError:
        return "?"


@contextlib.contextmanager
def started(server: bao.Server) -> Iterator[bao.Server]:
    require_bao()
    try:
        server.start()
    except bao.BaoError as exc:
        server.stop()
        pytest.fail(str(exc), pytrace=False)
    try:
        yield server
    finally:
        server.stop()
        assert_nothing_left(server)


def wait_for_log(server: bao.Server, text: str, offset: int = 0, timeout: float = 60.0) -> str:
    def line() -> str | None:
        return next((ln for ln in server.log_text(offset).splitlines() if text in ln), None)

    return wait_until(line, f"{text!r} in {server.log_path}", deadline=timeout, poll=0.1,
                      detail=lambda: f"it ends:\n{server.log_tail()}")


def cli_env(server: bao.Server, **extra: str) -> dict[str, str]:
    """Environment for the project's CLI: the server's address and root token; HOME points at
    the server's directory so no operator ~/.vault-token leaks in."""
    return server.env(HOME=str(server.root), **extra)


# --- the project's CLI against a real server ---------------------------------------------

_VENV_CLI = Path(sys.executable).with_name("vault-plugin-shim")


def shim(*args, env: dict[str, str], timeout: float = 120.0, check: bool = False) -> subprocess.CompletedProcess:
    """Run ``vault-plugin-shim ARGS`` (the installed console script) as an operator would."""
    argv = [str(_VENV_CLI)] if _VENV_CLI.exists() else [sys.executable, "-m", "shim.cli"]
    done = subprocess.run([*argv, *map(str, args)], capture_output=True, text=True, env=env,
                          timeout=timeout, stdin=subprocess.DEVNULL)
    if check and done.returncode != 0:
        raise AssertionError(f"vault-plugin-shim {' '.join(map(str, args))} failed ({done.returncode}):\n"
                             f"{done.stdout}{done.stderr}")
    return done


def build_plugin(kind: str, version: str, dest: Path, cache_dir: Path, name: str | None = None) -> Path:
    """One of the demo OpenBao plugins (shim.demo.gobuild); fails the test when Go is missing."""
    from shim.demo import gobuild

    try:
        return gobuild.build_bao_plugin(kind, version, dest, cache_dir=cache_dir, name=name)
    except gobuild.GoUnavailable as exc:
        pytest.fail(str(exc), pytrace=False)


class Release:
    """A signing key, a versions directory and a launcher for one plugin name, made with the
    CLI (keygen, sign, launcher build) exactly as an operator would; the launcher is written
    into the server's plugin_directory under ``command``."""

    def __init__(self, server: bao.Server, root: Path, name: str, *, kind: str = "secret",
                 command: str | None = None, extra_build: tuple[str, ...] = ()):
        self.server, self.name, self.kind = server, name, kind
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self.versions = self.root / "versions"
        self.versions.mkdir(mode=0o755, exist_ok=True)
        self.env = cli_env(server)
        self.secret_key, self.public_key = self.root / "key.sk", self.root / "key.pub"
        shim("keygen", "--secret-key", self.secret_key, "--public-key", self.public_key, "--unencrypted",
             env=self.env, check=True)
        self.command = command or f"{name}-launcher"
        self.launcher = server.plugin_dir / self.command
        built = shim("launcher", "build", "--trusted-key", self.public_key, "--name", name, "--type", kind,
                     "--plugins-dir", self.versions, "--output", self.launcher, *extra_build,
                     env=self.env, check=True)
        self.build_output = built.stdout

    def add(self, binary: Path, version: str) -> Path:
        """Sign ``binary`` (already in the versions directory) as ``version``."""
        shim("sign", binary, "--secret-key", self.secret_key, "--name", self.name, "--type", self.kind,
             "--version", version, env=self.env, check=True)
        return binary

    def register(self, *extra, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
        return shim("register", self.kind, self.name, "--launcher", self.launcher, *extra,
                    env=env or self.env)

    @property
    def sha256(self) -> str:
        from shim.trust.verify import digest_file

        return digest_file(str(self.launcher))[0]


def catalog_entries(server: bao.Server, kind: str, name: str) -> dict[str, dict]:
    """{version: detailed entry} of the catalog for (kind, name)."""
    import json

    listing = json.loads(server.bao("read", "-format=json", "sys/plugins/catalog").stdout)
    return {d.get("version", ""): d for d in listing["data"]["detailed"]
            if d["type"] == kind and d["name"] == name}
