"""The proxy's side of a hot swap: what :class:`shim.launch.swap.Swapper` asks of a running
:class:`~shim.launch.proxy.Proxy` (the :class:`shim.launch.swap.Host` protocol).

Start a verified version next to the running one, make Vault's broker ids dialable for it,
switch new Vault connections to it, drain the old one's calls, and retire the old one as
Vault would end a mount. The swap itself (when, which version, the replay and its checks)
is :mod:`shim.launch.swap`; imported only when the launcher was built with hot swap.
"""

from __future__ import annotations

import asyncio
import logging
import selectors
import shutil
import tempfile

from shim.goplugin.broker import ConnInfo
from shim.goplugin.errors import GoPluginError
from shim.goplugin.tlsfront import run_in_loop
from shim.launch import capture as cap
from shim.launch.child import Child
from shim.launch.errors import SwapError
from shim.launch.generations import Generation
from shim.launch.relay import finish_all

log = logging.getLogger(__name__)

def _no_stdio_warning(record: logging.LogRecord) -> bool:
    """A swapped-in child's stdout and stderr are read from its pipes (and GRPCStdio when it
    has it), so a go-plugin < 1.1 child without GRPCStdio loses nothing: no warning."""
    return not record.getMessage().startswith("plugin does not support GRPCStdio")


def _late_conninfo(info: ConnInfo) -> None:
    log.warning("a swapped-in plugin announced broker id %d; Vault cannot be told after a swap, ignored",
                info.service_id)


class SwapHost:
    """:class:`shim.launch.swap.Host` over a running proxy."""

    def __init__(self, proxy):
        self.proxy = proxy

    @property
    def capture(self) -> cap.SetupCapture:
        return self.proxy.capture

    @property
    def current(self) -> Generation:
        return self.proxy.current

    @property
    def base(self) -> str:
        """The launcher's private directory: the swap's status for ``doctor`` goes there."""
        return self.proxy.base

    def start_generation(self, fd: int, argv: list[str], label: str, start_timeout: float) -> Generation:
        """Start a verified version next to the running one (not routed to yet): its own
        directory, its group on the janitor's ledger, our own connection to it, its broker
        stream (we are its host) and its stdio read. Raises what the start raises."""
        proxy = self.proxy
        if proxy.stopping:
            raise GoPluginError("the launcher is stopping")
        child_dir = tempfile.mkdtemp(prefix="c", dir=proxy.base)
        logging.getLogger("shim.goplugin.client").addFilter(_no_stdio_warning)
        child = Child(fd, argv, proxy.vault, child_dir, start_timeout=start_timeout,
                      on_spawn=lambda pid: proxy.janitor.add("pgid", pid), name=proxy.name, exe_dir=proxy.base,
                      on_conninfo=_late_conninfo)
        try:
            child.connect()
        except BaseException:
            child.terminate()
            if child.pid is not None:
                proxy.janitor.remove("pgid", child.pid)
            shutil.rmtree(child_dir, ignore_errors=True)
            raise
        gen = Generation(child, child.line, label, child_dir)
        gen.channel, gen.own_channel = child.channel, False
        proxy.adopt(gen)
        return gen

    def announce_vault_broker(self, gen: Generation, broker_id: int) -> None:
        """Make Vault's broker id ``broker_id`` (Storage, SystemView of Setup) dialable for
        ``gen``: announce our front to Vault's listener on its broker stream."""
        front = self.proxy.bridge.vault_ids.get(broker_id)
        if front is None:
            raise SwapError(f"Vault's broker id {broker_id} (from its Setup) was never announced to this launcher")
        gen.child.broker.announce(ConnInfo(broker_id, "unix", front.path))

    def switch(self, gen: Generation, generation: int) -> Generation | None:
        """Route new Vault connections to ``gen`` and ask the old ones to move; None (and
        nothing changed) when Vault started a set-up call since ``generation``."""
        return run_in_loop(self._switch(gen, generation), timeout=10)

    async def _switch(self, gen: Generation, generation: int) -> Generation | None:
        capture = self.proxy.capture
        if capture is not None and (capture.generation != generation or capture.in_flight):
            return None
        if self.proxy.stopping:
            return None
        old = self.proxy.make_current(gen)
        for conn in list(old.routed):
            conn.goaway()
        return old

    def drain(self, old: Generation, timeout: float, reason: str) -> tuple[int, int]:
        """Wait until ``old`` has no call open (at most ``timeout``), then end what is left
        on its connections with UNAVAILABLE and ``reason``: (calls drained, calls cut)."""
        return run_in_loop(self._drain(old, timeout, reason), timeout=timeout + 15)

    async def _drain(self, old: Generation, timeout: float, reason: str) -> tuple[int, int]:
        loop = asyncio.get_running_loop()
        _, done_before = old.calls()
        deadline = loop.time() + timeout
        while old.calls()[0] and loop.time() < deadline and not old.child.exited():
            await asyncio.sleep(0.02)
        cut, done = old.calls()
        message = reason if not cut else f"{reason}; the call was still open {timeout:g} s after the switch"
        await finish_all([conn for conn in list(old.routed) if not conn.hold_broker()], message)
        return done - done_before, cut

    def retire(self, old: Generation, plan: cap.Plan) -> None:
        """End a drained generation as Vault would end a mount: Cleanup (or the database's
        Close) for each set-up it had, GRPCController/Shutdown, then its group is killed."""
        import grpc

        from shim.goplugin.protos import grpc_controller_pb2, grpc_controller_pb2_grpc

        grace = self.proxy.child_grace
        teardown = {cap.SETUP: cap.CLEANUP, cap.DB_INITIALIZE: cap.DB_CLOSE}
        if old.channel is not None and not old.child.exited():
            for call in plan.replay:
                path = teardown.get(call.path)
                if path is None:
                    continue
                try:
                    old.channel.unary_unary(path)(b"", timeout=grace, metadata=call.metadata or None)
                except grpc.RpcError as exc:
                    log.debug("%s on the retired plugin ended with %s", path, exc.code().name)
            try:
                grpc_controller_pb2_grpc.GRPCControllerStub(old.channel).Shutdown(
                    grpc_controller_pb2.Empty(), timeout=grace)
            except grpc.RpcError as exc:
                log.debug("Shutdown of the retired plugin ended with %s", exc.code().name)
            with selectors.DefaultSelector() as sel:
                sel.register(old.child.pidfd, selectors.EVENT_READ)
                sel.select(grace)
        self.proxy.discard(old)

    def discard(self, gen: Generation) -> None:
        """Kill a generation that is not current (a refused version, or a retired one)."""
        self.proxy.discard(gen)
