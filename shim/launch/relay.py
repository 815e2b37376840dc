"""Proxy mode's relay: one Vault connection spliced onto one connection to the plugin child,
the I/O shell around the sans-I/O frame router (:class:`~shim.goplugin.h2route.Router`).

The router decides what each frame becomes; this module reads the sockets, feeds it, acts on
the events it returns (each ConnInfo bridged and answered, Vault's Shutdown, the set-up calls
handed to the capture, the broker messages it could not read logged), writes what it returns
(once per batch of frames read), passes back-pressure from one side to the other, and ends
the connection: Vault's open calls get UNAVAILABLE with a reason when the plugin's side ends,
a swap retires the child, or the launcher stops. A fault in either side's HTTP/2 closes both
connections, and the warning says whose it was (the router's error type tells).
"""

from __future__ import annotations

import asyncio
import logging

from shim.goplugin.broker import ConnInfo
from shim.goplugin.errors import GoPluginError, HostProtocolError, PluginProtocolError
from shim.goplugin.h2events import ConnInfoSeen, Event, Shutdown, UnreadBrokerMessage
from shim.goplugin.h2route import Router
from shim.goplugin.tlsfront import spawn

log = logging.getLogger(__name__)

CLOSE_GRACE = 0.5        # flushing the last frames to Vault when we end its connections


class _Side(asyncio.Protocol):
    def __init__(self, link: "RoutedConnection", vault: bool):
        self.link, self.vault = link, vault

    def data_received(self, data):
        self.link.received(self.vault, data)

    def eof_received(self):
        self.link.lost(self.vault)
        return False

    def connection_lost(self, exc):
        self.link.lost(self.vault)

    def pause_writing(self):
        other = self.link.child if self.vault else self.link.vault
        if other is not None:
            other.pause_reading()

    def resume_writing(self):
        other = self.link.child if self.vault else self.link.vault
        if other is not None:
            other.resume_reading()


class RoutedConnection:
    """Vault's TLS connection and our plaintext connection to the child, spliced by a
    :class:`Router`. Output is written once per batch of frames read."""

    def __init__(self, proxy, vault: asyncio.Transport, early: bytes, conns: set):
        """``proxy`` is the :class:`~shim.launch.proxy.Proxy`. ``conns`` is the front's set
        (it aborts what is left when it closes); the proxy keeps its own set of routed
        connections, to end their calls gracefully first. The connection goes to the
        generation current now, for its whole life."""
        self.proxy = proxy
        self.gen = proxy.current
        self.tap = None if proxy.capture is None else proxy.capture.tap()
        self.router = Router(watch=() if self.tap is None else self.tap.watched)
        self.vault: asyncio.Transport | None = vault
        self.child: asyncio.Transport | None = None
        self.conns = conns
        self.closed = asyncio.get_running_loop().create_future()
        self._ending = False
        conns.add(self)
        proxy.routed.add(self)
        self.gen.routed.add(self)
        vault.set_protocol(_Side(self, True))
        vault.pause_reading()
        spawn(self._open(early), "connecting a Vault connection to the plugin")

    async def _open(self, early: bytes) -> None:
        loop = asyncio.get_running_loop()
        network, address = self.gen.address
        try:
            if network == "unix":
                child, _ = await loop.create_unix_connection(lambda: _Side(self, False), address)
            else:
                host, _, port = address.rpartition(":")
                child, _ = await loop.create_connection(lambda: _Side(self, False), host.strip("[]"), int(port))
        except OSError as exc:
            log.warning("cannot connect to the plugin at %s: %s", address, exc)
            await self.finish()
            return
        if self._ending:
            child.abort()
            return
        self.child = child
        if early:
            self.received(True, early)
        if self.vault is not None:
            self.vault.resume_reading()

    def _bridged(self, seen: ConnInfoSeen) -> ConnInfo | None:
        """The ConnInfo to pass on for one on the broker stream, bridged (None: drop it).
        Between a swap's switch and the end of its drain, the broker stream still runs to the
        old child: the current one must hear Vault's too (a mount enabled in that window sets
        up there); on a held connection only the current one hears it."""
        bridge = self.proxy.bridge
        try:
            new = (bridge.from_vault if seen.from_vault else bridge.from_child)(seen.info)
            if new is not None and seen.from_vault and (not seen.relayed or self.gen is not self.proxy.current):
                self.proxy.vault_conninfo(new)
        except (GoPluginError, OSError) as exc:
            log.warning("dropping a broker message that cannot be relayed: %s", exc)
            return None
        return new

    def _act(self, events: list[Event]) -> list[Event]:
        """Act on the router's events; returns those its answer to a ConnInfo brings (a
        relayed ConnInfoSeen, always the last of its list, waits for that answer)."""
        for event in events:
            if isinstance(event, ConnInfoSeen):
                new = self._bridged(event)
                if event.relayed:
                    return self.router.answer(new)
            elif isinstance(event, Shutdown):
                self.proxy.vault_shutdown()
            elif isinstance(event, UnreadBrokerMessage):
                if event.dropped:
                    log.warning("dropping a broker message that cannot be relayed: %s", event.reason)
                else:
                    log.warning("broker message is %s; passed on without rewriting", event.reason)
            elif self.tap is not None:
                self.tap.see(event)
        return []

    def received(self, from_vault: bool, data: bytes) -> None:
        if self._ending:  # Vault's open calls have their answer already
            return
        if not from_vault and self.router.held:  # the retired child's last bytes
            return
        router = self.router
        try:
            events = router.receive_vault(data) if from_vault else router.receive_child(data)
            while events:
                events = self._act(events)
        except HostProtocolError as exc:
            log.warning("closing a connection from Vault: Vault sent malformed HTTP/2: %s", exc)
            self.abort()
            return
        except PluginProtocolError as exc:
            log.warning("closing a connection to the plugin and the Vault connection routed to it: "
                        "the plugin sent malformed HTTP/2: %s", exc)
            self.abort()
            return
        self.flush()

    def flush(self) -> None:
        router = self.router
        out = router.data_to_child()
        if out and self.child is not None:
            self.child.write(out)
        out = router.data_to_vault()
        if out and self.vault is not None:
            self.vault.write(out)

    def goaway(self) -> None:
        """A swap: Vault's next calls go to a new connection (to the new child)."""
        if not self._ending:
            self.router.goaway()
            self.flush()

    def hold_broker(self) -> bool:
        """A swap retires this connection's child, but Vault's broker stream runs here (Vault
        opens it once per plugin client; a multiplexed plugin's later mounts announce their
        Storage on it): keep the connection to Vault, answered by the router alone, and close
        the one to the child. False when Vault's broker stream is not here."""
        if self._ending or not self.router.hold_broker():
            return False
        child, self.child = self.child, None
        if child is not None:
            child.close()
        if self in self.gen.routed:
            self.gen.routed.discard(self)
            self.gen.calls_done += self.router.calls_done
        self.flush()
        return True

    def lost(self, vault: bool) -> None:
        if vault:
            self.abort()
        elif not self._ending and not self.router.held:
            spawn(self.finish(), "ending Vault's open calls")

    async def finish(self, reason: str | None = None) -> None:
        """The child's side ended (or we stop, or a swap retires it): end Vault's open
        calls with a reason."""
        if self._ending:
            return
        self._ending = True
        if self.child is not None:
            self.child.close()
        # a held broker stream outlived its child: it ends with the current one
        message = reason or await self.proxy.explain(None if self.router.held else self.gen)
        self._act(self.router.fail_streams(message))
        out = self.router.data_to_vault()
        if self.vault is not None and not self.vault.is_closing():
            if out:
                self.vault.write(out)
            self.vault.close()   # flushes what is buffered first
        else:
            self._done()

    def abort(self) -> None:
        self._ending = True
        for t in (self.vault, self.child):
            if t is not None:
                t.abort()
        self._done()

    def _done(self) -> None:
        self.conns.discard(self)
        self.proxy.routed.discard(self)
        if self in self.gen.routed:
            self.gen.routed.discard(self)
            self.gen.calls_done += self.router.calls_done
        if self.tap is not None:
            self.tap.close()
        if not self.closed.done():
            self.closed.set_result(None)


async def finish_all(conns: list[RoutedConnection], reason: str | None = None) -> None:
    """End Vault's open calls on ``conns`` (with ``reason``, else :meth:`RoutedConnection.finish`'s),
    and give their last frames ``CLOSE_GRACE`` to reach Vault."""
    for conn in conns:
        await conn.finish(reason)
    if conns:
        await asyncio.wait([conn.closed for conn in conns], timeout=CLOSE_GRACE)
