"""The relay (shim.launch.relay): the frame router's I/O shell, on real sockets, with a stand-in
for the proxy. Malformed HTTP/2 from either side closes the routed connection, and the warning
names the side at fault: "closing a connection from Vault" is said only when Vault sent it.
"""

from __future__ import annotations

import asyncio
import logging
import socket
from types import SimpleNamespace

from shim.goplugin.h2route import PING, PREFACE, SETTINGS, frame
from shim.launch.relay import RoutedConnection

BAD_PING = frame(PING, 0, 0, b"1234")   # a PING carries 8 bytes


class StandIn:
    """What a routed connection asks of the proxy, with nothing behind it."""

    def __init__(self, path: str):
        self.current = SimpleNamespace(address=("unix", path), routed=set(), calls_done=0)
        self.bridge = SimpleNamespace(from_vault=lambda info: info, from_child=lambda info: info)
        self.capture = None
        self.routed: set = set()

    def vault_shutdown(self) -> None:
        pass

    def vault_conninfo(self, info) -> None:
        pass

    async def explain(self, gen=None) -> str:
        return "vault-plugin-shim: the plugin closed its connection"


async def route(tmp_path, from_vault: bytes, from_child: bytes) -> RoutedConnection:
    """One routed connection: Vault's end a socket pair, the child a unix server that answers
    the router's preface with ``from_child``. Returns once the relay has ended it."""
    loop = asyncio.get_running_loop()
    path = str(tmp_path / "child.sock")

    async def child(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            await reader.readexactly(len(PREFACE))
            writer.write(from_child)
            await writer.drain()
            await reader.read()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        writer.close()

    server = await asyncio.start_unix_server(child, path)
    ours, vaults = socket.socketpair()
    vaults.setblocking(False)
    try:
        vault, _ = await loop.create_connection(asyncio.Protocol, sock=ours)
        conn = RoutedConnection(StandIn(path), vault, b"", set())
        await loop.sock_sendall(vaults, PREFACE + from_vault)
        await asyncio.wait_for(asyncio.shield(conn.closed), 10)
        return conn
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
