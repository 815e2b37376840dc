"""The relay (shim.launch.relay): the frame router's I/O shell, on real sockets, with a stand-in
for the proxy. Malformed HTTP/2 from either side closes the routed connection, and the warning
names the side at fault (the router's HostProtocolError or PluginProtocolError): "closing a
connection from Vault" is said only when Vault sent it. The relay acts on the router's events.
"""

from __future__ import annotations

import asyncio
import logging
import socket
from types import SimpleNamespace

from shim.goplugin.broker import ConnInfo, conninfo_to_message
from shim.goplugin.errors import GoPluginError
from shim.goplugin.h2frame import (DATA, END_HEADERS, HEADERS, PING, PREFACE, SETTINGS, FrameReader, encode_literal,
                                   frame, length_prefixed)
from shim.goplugin.h2route import BROKER_PATH, SHUTDOWN_PATH
from shim.launch.relay import RoutedConnection

BAD_PING = frame(PING, 0, 0, b"1234")   # a PING carries 8 bytes


class StandIn:
    """What a routed connection asks of the proxy, with nothing behind it."""

    def __init__(self, path: str, bridge=None):
        self.current = SimpleNamespace(address=("unix", path), routed=set(), calls_done=0)
        self.bridge = bridge or SimpleNamespace(from_vault=lambda info: info, from_child=lambda info: info)
        self.capture = None
        self.routed: set = set()
        self.shutdowns = 0

    def vault_shutdown(self) -> None:
        self.shutdowns += 1

    def vault_conninfo(self, info) -> None:
        pass

    async def explain(self, gen=None) -> str:
        return "vault-plugin-shim: the plugin closed its connection"


async def route(tmp_path, from_vault: bytes, from_child: bytes, *, bridge=None,
                child_closes: bool = False) -> tuple[RoutedConnection, bytes]:
    """One routed connection: Vault's end a socket pair, the child a unix server that answers
    the router's preface with ``from_child`` (and then closes, if ``child_closes``). Returns,
    once the relay has ended it, the connection and what Vault received."""
    loop = asyncio.get_running_loop()
    path = str(tmp_path / "child.sock")

    async def child(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            await reader.readexactly(len(PREFACE))
            writer.write(from_child)
            await writer.drain()
            if not child_closes:
                await reader.read()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        writer.close()

    server = await asyncio.start_unix_server(child, path)
    ours, vaults = socket.socketpair()
    vaults.setblocking(False)
    try:
        vault, _ = await loop.create_connection(asyncio.Protocol, sock=ours)
        conn = RoutedConnection(StandIn(path, bridge), vault, b"", set())
        await loop.sock_sendall(vaults, PREFACE + from_vault)
        await asyncio.wait_for(asyncio.shield(conn.closed), 10)
        got = bytearray()
        while chunk := await loop.sock_recv(vaults, 65536):
            got += chunk
        return conn, bytes(got)
    finally:
        vaults.close()
        server.close()
        await server.wait_closed()


def warnings_of(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == "shim.launch.relay" and r.levelno == logging.WARNING]


def test_malformed_http2_from_the_plugin_is_not_blamed_on_vault(tmp_path, caplog):
    caplog.set_level(logging.WARNING, logger="shim.launch.relay")
    asyncio.run(route(tmp_path, frame(SETTINGS, 0, 0), BAD_PING))
    [line] = warnings_of(caplog)
    assert "the plugin sent malformed HTTP/2" in line
    assert "HTTP/2 frame type 6 with length 4, not 8" in line
    assert "from Vault" not in line and "Vault sent" not in line


def test_malformed_http2_from_vault_is_said_to_be_vaults(tmp_path, caplog):
    caplog.set_level(logging.WARNING, logger="shim.launch.relay")
    asyncio.run(route(tmp_path, BAD_PING, b""))
    [line] = warnings_of(caplog)
    assert line.startswith("closing a connection from Vault: Vault sent malformed HTTP/2")
    assert "HTTP/2 frame type 6 with length 4, not 8" in line
    assert "plugin sent" not in line


def _conninfo(service_id: int, address: str) -> bytes:
    return length_prefixed(conninfo_to_message(ConnInfo(service_id, "unix", address)).SerializeToString())


def test_the_relay_bridges_each_conninfo_and_passes_vaults_shutdown_on(tmp_path, caplog):
    """A ConnInfo from the plugin reaches Vault as the bridge rewrote it; one the bridge cannot
    relay is dropped, with a warning; Vault's GRPCController/Shutdown reaches the proxy."""
    caplog.set_level(logging.WARNING, logger="shim.launch.relay")

    def from_child(info: ConnInfo) -> ConnInfo:
        if info.service_id == 2:
            raise GoPluginError("the plugin announced broker id 2 on tcp; only unix sockets are relayed")
        return info.rewrite("unix", "/front/broker1")

    def request(sid: int, path: bytes) -> bytes:
        return frame(HEADERS, END_HEADERS, sid, encode_literal([(b":method", b"POST"), (b":path", path)]))

    bridge = SimpleNamespace(from_vault=lambda info: info, from_child=from_child)
    conn, got = asyncio.run(route(tmp_path, frame(SETTINGS, 0, 0) + request(1, BROKER_PATH) + request(3, SHUTDOWN_PATH),
                                  frame(DATA, 0, 1, _conninfo(1, "/child/1") + _conninfo(2, "/child/2")),
                                  bridge=bridge, child_closes=True))
    broker = b"".join(f.payload for f in FrameReader().feed(got) if f.type == DATA and f.stream_id == 1)
    assert broker == _conninfo(1, "/front/broker1")
    assert conn.proxy.shutdowns == 1
    assert warnings_of(caplog) == ["dropping a broker message that cannot be relayed: "
                                   "the plugin announced broker id 2 on tcp; only unix sockets are relayed"]
