"""One simulated Vault node: a real process that launches its plugin the way Vault does.

Modelled (see PROTOCOL-NOTES.md): every launch re-reads the replicated catalog and checks
the sha256 of ``plugin_directory/<command>`` against it before exec (go-plugin's
SecureConfig, via :class:`shim.goplugin.client.PluginClient`), then does the go-plugin
handshake with AutoMTLS and talks gRPC. The active node launches its plugin when it
becomes leader (mount set-up), lazily on a request if none is running, and after a crash
(reload, then one retry of the request, like ``reloadBackend``). Standbys run no plugin.
Not modelled: Vault's HTTP layer, request forwarding from standbys, Raft itself.

Protocol with the demo driver: JSON lines. stdin takes ``{"op": "active"|"standby"|
"crash"|"exit"}`` and ``{"op": "req", "id": N}``; stdout carries events:
``launch`` (ok, version or error, ms), ``resp`` (id, ok, version or error), ``ready``.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import threading
import time


class Node:
    def __init__(self, name: str, plugin_dir: str, catalog: str, plugin: str):
        self.name, self.plugin_dir, self.catalog, self.plugin = name, plugin_dir, catalog, plugin
        self.active = False
        self.client = None
        self.stub = None
        self.out_lock = threading.Lock()

    def emit(self, **event) -> None:
        event["node"] = self.name
        event["t"] = time.time()
        with self.out_lock:
            sys.stdout.write(json.dumps(event) + "\n")
            sys.stdout.flush()

    def _catalog_entry(self) -> dict:
        with open(self.catalog) as fh:
            return json.load(fh)[f"secret/{self.plugin}"]

    def launch(self, why: str) -> bool:
        from shim.goplugin import handshake as hs
        from shim.goplugin.client import PluginClient
        from shim.goplugin.protos import grpctest_pb2, grpctest_pb2_grpc
        from shim.errors import ShimError

        self.stop_plugin()
        started = time.monotonic()
        entry = self._catalog_entry()
        path = os.path.join(self.plugin_dir, entry["command"])
        client = PluginClient([path], hs.VAULT_BACKEND, sha256=entry["sha256"], skip_host_env=True,
                              env={"PATH": os.environ.get("PATH", "/usr/bin:/bin"),
                                   "VAULT_PLUGIN_AUTOMTLS_ENABLED": "true",
                                   "TMPDIR": os.environ.get("TMPDIR", "/tmp"),
                                   **{k: v for k, v in os.environ.items() if k.startswith("VAULT_PLUGIN_SHIM_DEMO")}},
                              start_timeout=20)
        try:
            client.start()
            channel = client.connect()
            stub = grpctest_pb2_grpc.PingPongStub(channel)
            version = stub.Ping(grpctest_pb2.PingRequest(), timeout=5).msg
        except (ShimError, Exception) as exc:  # any launch failure is reported, not fatal
            reason = exc.reason if isinstance(exc, ShimError) else f"{type(exc).__name__}: {exc}"
            client.kill(grace=0.2)
            self.emit(ev="launch", why=why, ok=False, error=reason,
                      ms=round((time.monotonic() - started) * 1000, 1))
            return False
        self.client, self.stub = client, stub
        self.emit(ev="launch", why=why, ok=True, version=version.removeprefix("version="),
                  ms=round((time.monotonic() - started) * 1000, 1))
        return True

    def stop_plugin(self) -> None:
        if self.client is not None:
            self.client.kill(grace=0.5)
        self.client = self.stub = None

    def request(self, rid: int) -> None:
        from shim.goplugin.protos import grpctest_pb2

        if not self.active:
            self.emit(ev="resp", id=rid, ok=False, error="standby node")
            return
        for attempt in (1, 2):
            if self.stub is None and not self.launch("request" if attempt == 1 else "reload"):
                self.emit(ev="resp", id=rid, ok=False, error="plugin could not be started")
                return
            try:
                msg = self.stub.Ping(grpctest_pb2.PingRequest(), timeout=5).msg
            except Exception as exc:  # the plugin died: reloadBackend, then one retry
                self.emit(ev="plugin_error", error=type(exc).__name__)
                self.stop_plugin()
                continue
            self.emit(ev="resp", id=rid, ok=True, version=msg.removeprefix("version="))
            return
        self.emit(ev="resp", id=rid, ok=False, error="plugin failed after reload")

    def crash(self) -> None:
        if self.client is not None and self.client.proc is not None:
            try:
                os.kill(self.client.proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass

    def serve(self) -> None:
        self.emit(ev="ready")
        for line in sys.stdin:
            cmd = json.loads(line)
            op = cmd["op"]
            if op == "active":
                self.active = True
                self.launch("leader")
            elif op == "standby":
                self.active = False
                self.stop_plugin()
            elif op == "req":
                self.request(cmd["id"])
            elif op == "crash":
                self.crash()
            elif op == "exit":
                break
        self.stop_plugin()


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description="one simulated Vault node (run by `vault-plugin-shim demo`)")
    ap.add_argument("--name", required=True)
    ap.add_argument("--plugin-dir", required=True)
    ap.add_argument("--catalog", required=True)
    ap.add_argument("--plugin", required=True)
    a = ap.parse_args(argv)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    node = Node(a.name, a.plugin_dir, a.catalog, a.plugin)
    try:
        node.serve()
    finally:
        node.stop_plugin()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
