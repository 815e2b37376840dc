"""Test-side helpers around shim.demo.bao (the real OpenBao process layer).

API:
    require_bao()                         -> Path of the real binary, or pytest.fail with how to install it
    started(server)                       -> context manager: start, yield, stop, check nothing is left
    assert_nothing_left(server, timeout)  -> fails naming the PIDs still running (and kills them)
    wait_for_log(server, text, offset=0, timeout=60) -> the first log line holding ``text``
    cli_env(server, **extra)              -> environment for `vault-plugin-shim` aimed at ``server``
"""

from __future__ import annotations

import contextlib
import os
import signal
import time
from typing import Iterator

import pytest

from shim.demo import bao


def require_bao():
    try:
        return bao.find_bao()
    except bao.BaoMissing as exc:
        pytest.fail(str(exc), pytrace=False)


def _wait_gone(server: bao.Server, timeout: float) -> list[int]:
    end = time.monotonic() + timeout
    left = server.leftover_processes()
    while left and time.monotonic() < end:
        time.sleep(0.1)
        left = server.leftover_processes()
    return left


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
    end = time.monotonic() + timeout
    while True:
        for line in server.log_text(offset).splitlines():
            if text in line:
                return line
        if time.monotonic() > end:
            raise AssertionError(f"{text!r} not in {server.log_path} within {timeout:.0f} s; "
                                 f"it ends:\n{server.log_tail()}")
        time.sleep(0.1)


def cli_env(server: bao.Server, **extra: str) -> dict[str, str]:
    """Environment for the project's CLI: the server's address and root token; HOME points at
    the server's directory so no operator ~/.vault-token leaks in."""
    return server.env(HOME=str(server.root), **extra)
