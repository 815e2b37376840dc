"""Proxy mode: what the relay forwards, and how faults end. Our PluginClient plays Vault
(AutoMTLS, Kill = Shutdown then SIGKILL) against a launcher in proxy mode whose plugin is a
Python script with raw-bytes test methods. Each fault must give a clear error and no hang,
and leave no process, socket or key file behind.
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import sys
import tempfile
import textwrap
import threading
import time
from pathlib import Path

import grpc
import pytest

from shim.goplugin import handshake as hs, mtls
from shim.goplugin.client import PluginClient
from shim.goplugin.errors import StartError
from tests.support import gopeer
from tests.support import releases as R
from tests.support.wait import wait_until

ROOT = Path(__file__).resolve().parents[2]
CONFIG = hs.HandshakeConfig(hs.VAULT_BACKEND.cookie_key, hs.VAULT_BACKEND.cookie_value, (5,))
UNARY, HANG = "/proxytest.Echo/Unary", "/proxytest.Echo/Hang"

PLUGIN = textwrap.dedent(f'''\
    import os, signal, sys, threading
    sys.path.insert(0, {str(ROOT)!r})
    import grpc
    from shim.goplugin import hclog
    from shim.goplugin import handshake as hs
    from shim.goplugin.server import serve

    def unary(request, context):
        md = dict(context.invocation_metadata())
        if request == b"crash":
            hclog.error("crashing on request")
            os._exit(7)
        if request == b"fail":
            context.set_trailing_metadata((("trailer-key", "on-error"),
                                           ("grpc-status-details-bin", b"\\x08\\x03\\x12\\x04nope")))
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, "nope")
        if request == b"deadline":
            return repr(context.time_remaining()).encode()
        if request.startswith(b"big:"):
            return b"x" * int(request[4:])
        context.send_initial_metadata((("echo-multiplex-id", md.get("multiplex_id", "-")),))
        context.set_trailing_metadata((("trailer-key", "ok"),))
        return request

    def hang(request_iterator, context):
        ended = threading.Event()
        def on_end():
            hclog.warn("hang stream ended", cancelled=str(context.is_active() is False))
            ended.set()
        context.add_callback(on_end)
        yield b"first"
        ended.wait()

    class Handler(grpc.GenericRpcHandler):
        def service(self, details):
            if details.method == {UNARY!r}:
                return grpc.unary_unary_rpc_method_handler(unary)
            if details.method == {HANG!r}:
                return grpc.stream_stream_rpc_method_handler(hang)
            return None

    mode = os.environ.get("PROXYTEST_MODE", "")
    if mode == "silent":
        signal.pause()
    if mode == "garbage":
        print("hello, I am not a handshake", flush=True)

    def shutdown():
        hclog.info("child got Shutdown")
        os.kill(os.getpid(), signal.SIGTERM)  # serve() stops gracefully on SIGTERM

    config = hs.HandshakeConfig(hs.VAULT_BACKEND.cookie_key, hs.VAULT_BACKEND.cookie_value, (5,))
    sys.exit(serve(config, None, handlers=[Handler()], on_shutdown=shutdown))
''')


class Waiter(logging.Handler):
    """Lets a test wait for a plugin log line instead of sleeping."""

    def __init__(self):
        super().__init__(logging.DEBUG)
        self.messages: list[str] = []

    def emit(self, record):
        self.messages.append(record.getMessage())

    def wait_for(self, text: str, timeout: float = 15) -> str:
        return wait_until(lambda: next((m for m in list(self.messages) if text in m), None),
                          f"a log line with {text!r}", deadline=timeout,
                          detail=lambda: f"last lines: {self.messages[-10:]}")


class Vault:
    """A launcher in proxy mode with the test plugin, started by our client as Vault would."""

    def __init__(self, tmp: Path, mode: str = "", name: str = "myplugin"):
        versions = tmp / "versions"
        versions.mkdir(mode=0o755)
        plugin = versions / f"{name}-1.0.0"
        plugin.write_text(f"#!{sys.executable}\n" + PLUGIN)
        plugin.chmod(0o755)
        keys = R.new_keys()
        R.release(keys, plugin, name=name, version="1.0.0")
        (tmp / "vault-plugins").mkdir()
        self.launcher = R.launcher(tmp / "vault-plugins", R.policy(versions, keys, name=name).replace(mode="proxy"))
        self.tmpdir = Path(tempfile.mkdtemp(prefix="pxf", dir="/tmp"))
        self.marker = gopeer.new_marker("PROXYTEST")
        self.log = Waiter()
        logger = logging.getLogger(f"proxytest.{id(self)}")
        logger.setLevel(logging.DEBUG)
        logger.addHandler(self.log)
        key, _ = self.marker.split("=")
        env = {"PATH": "/usr/bin:/bin", "TMPDIR": str(self.tmpdir), key: "1", "PROXYTEST_MODE": mode}
        self.client = PluginClient([str(self.launcher)], CONFIG, env=env, skip_host_env=True, logger=logger,
                                   sha256=hashlib.sha256(self.launcher.read_bytes()).hexdigest())

    def call(self, method: str, data: bytes, **kw):
        return self.client.channel.unary_unary(method)(data, **kw)

    def assert_clean(self):
        assert gopeer.find_marked_processes(self.marker) == []
        assert list(self.tmpdir.iterdir()) == []

    def close(self):
        self.client.kill()
        gopeer.kill_marked_processes(self.marker)
        shutil.rmtree(self.tmpdir, ignore_errors=True)


@pytest.fixture
def vault(tmp_path):
    v = Vault(tmp_path)
    v.client.connect()
    yield v
    v.close()


def test_metadata_status_details_trailers_deadline_and_size(vault):
    value, call = vault.client.channel.unary_unary(UNARY).with_call(
        b"hello", metadata=(("multiplex_id", "backend-42"),), timeout=10)
    assert value == b"hello"
    assert ("echo-multiplex-id", "backend-42") in call.initial_metadata()
    assert ("trailer-key", "ok") in call.trailing_metadata()

    with pytest.raises(grpc.RpcError) as ei:
        vault.call(UNARY, b"fail", timeout=10)
    err = ei.value
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT and err.details() == "nope"
    trailers = dict(err.trailing_metadata())
    assert trailers["trailer-key"] == "on-error"
    assert trailers["grpc-status-details-bin"] == b"\x08\x03\x12\x04nope"

    remaining = float(vault.call(UNARY, b"deadline", timeout=5))
    assert 3 < remaining < 5.5, "the caller's deadline reaches the plugin (grpc-timeout rounds up)"

    # go-plugin has no message size limit; neither does the relay (grpcio's default is 4 MiB)
    assert len(vault.call(UNARY, b"big:%d" % (16 << 20), timeout=30)) == 16 << 20
    blob = os.urandom(9 << 20)
    assert vault.call(UNARY, blob, timeout=30) == blob


def test_vault_cancels_a_long_stream(vault):
    release = threading.Event()

    def requests():
        yield b"go"
        release.wait(30)

    try:
        call = vault.client.channel.stream_stream(HANG)(requests(), timeout=30)
        assert next(call) == b"first"
        call.cancel()
        line = vault.log.wait_for("hang stream ended")
        assert "cancelled=True" in line
        assert call.code() == grpc.StatusCode.CANCELLED
    finally:
        release.set()
    assert vault.call(UNARY, b"still serving", timeout=10) == b"still serving"


def test_vault_shutdown_during_in_flight_calls(vault):
    release = threading.Event()

    def requests():
        yield b"go"
        release.wait(30)

    calls = [vault.client.channel.stream_stream(HANG)(requests(), timeout=30) for _ in range(3)]
    try:
        for call in calls:
            assert next(call) == b"first"
        shim = vault.client.proc
        started = time.monotonic()
        vault.client.kill()
        took = time.monotonic() - started
    finally:
        release.set()
    for call in calls:
        with pytest.raises(grpc.RpcError) as ei:
            next(call)
        assert ei.value.code() in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.CANCELLED), ei.value
    vault.log.wait_for("child got Shutdown")
    assert shim.returncode == 0, "the launcher stopped by itself, before the host's SIGKILL"
    assert took < 2.5
    vault.assert_clean()


def test_child_crash_mid_call(vault):
    shim = vault.client.proc
    with pytest.raises(grpc.RpcError) as ei:
        vault.call(UNARY, b"crash", timeout=10)
    assert ei.value.code() == grpc.StatusCode.UNAVAILABLE
    assert "vault-plugin-shim: the plugin process exited during the call (exit status 7)" in ei.value.details()
    assert shim.wait(timeout=10) == 1, "the launcher exits at once, so Vault reloads the plugin"
    vault.log.wait_for("the plugin process exited unexpectedly")
    assert vault.client.exited()
    vault.client.kill()
    vault.assert_clean()


def test_child_prints_garbage_on_stdout(tmp_path):
    v = Vault(tmp_path, mode="garbage")
    try:
        with pytest.raises(StartError) as ei:
            v.client.start()
        text = str(ei.value)
        assert "plugin exited before we could connect" in text
        assert "Unrecognized remote plugin message: hello, I am not a handshake" in text
        v.assert_clean()
    finally:
        v.close()


def test_child_never_handshakes(tmp_path, capfd):
    """The launcher's own start timeout (in process, shortened): a clear error, the child
    killed, nothing left. (Vault's own 1-minute timeout is longer than the launcher's.)"""
    from shim.launch import proxy
    from shim.launch import memexec

    script = tmp_path / "silent-plugin"
    script.write_text(f"#!{sys.executable}\n" + PLUGIN)
    src = os.open(script, os.O_RDONLY)
    fd = memexec.to_memfd(src, os.fstat(src).st_size, "silent")
    os.close(src)
    tmpdir = Path(tempfile.mkdtemp(prefix="pxf", dir="/tmp"))
    marker = gopeer.new_marker("PROXYTEST")
    key, _ = marker.split("=")
    env = {"PATH": "/usr/bin:/bin", "TMPDIR": str(tmpdir), key: "1", "PROXYTEST_MODE": "silent",
           CONFIG.cookie_key: CONFIG.cookie_value, hs.ENV_PROTOCOL_VERSIONS: "5",
           hs.ENV_CLIENT_CERT: mtls.generate_identity().cert_pem.decode()}
    try:
        started = time.monotonic()
        rc = proxy.run(fd, [str(script)], env, start_timeout=1.0, signals=False)
        took = time.monotonic() - started
        assert rc == 1 and took < 10
        err = capfd.readouterr()
        assert err.out == "", "nothing on stdout: no handshake line for Vault"
        assert "timeout while waiting for plugin to start" in err.err
        assert gopeer.find_marked_processes(marker) == []
        assert list(tmpdir.iterdir()) == []
    finally:
        os.close(fd)
        gopeer.kill_marked_processes(marker)
        shutil.rmtree(tmpdir, ignore_errors=True)


def test_refuses_to_run_without_automtls(tmp_path, capfd):
    from shim.launch import proxy

    rc = proxy.run(0, ["unused"], {CONFIG.cookie_key: CONFIG.cookie_value}, signals=False)
    assert rc == 1
    assert "proxy mode needs Vault's AutoMTLS certificate" in capfd.readouterr().err
