"""Proxy mode's GRPCBroker bridge: ConnInfo rewritten between Vault and the child, and the
connections relayed.

Vault dials the child's broker ids, and the child dials Vault's, only through the launcher:
Vault's side speaks AutoMTLS against the certificate we announced, the child's side is
plaintext on private unix sockets (README "Proxy mode").
"""

from __future__ import annotations

import logging
import os
import secrets
import threading
from typing import Callable

from shim.goplugin import mtls
from shim.goplugin.broker import ConnInfo
from shim.goplugin.errors import GoPluginError
from shim.goplugin.tlsfront import ClientFront, ServerFront

log = logging.getLogger(__name__)


class BrokerBridge:
    """Rewrites ConnInfo between Vault and the child and relays the connections.

    * Vault serves an id (Storage, SystemView in Setup): its listener speaks mTLS and
      trusts only the certificate we announced. A :class:`ClientFront` gives the child a
      private plaintext socket whose connections we carry over that mTLS to Vault.
    * The child serves an id: Vault must dial it with mTLS against our certificate. A
      :class:`ServerFront` terminates that and relays to the child's plaintext socket.

    Both return the ConnInfo to pass on, or None to drop the message.
    """

    def __init__(self, identity: mtls.Identity, vault_der: bytes, *, private: str, public: str,
                 on_public_socket: Callable[[str], None]):
        self.vault_der = vault_der
        self.private, self.public = private, public
        self.on_public_socket = on_public_socket
        self.server_ctx = mtls.server_context(identity, vault_der)
        self.client_ctx = mtls.client_context(identity, vault_der)
        self._fronts: list = []
        self.vault_ids: dict[int, ClientFront] = {}   # Vault's broker ids, for a swap's Setup
        self._lock = threading.Lock()
        self._closed = False

    def _keep(self, front) -> bool:
        with self._lock:
            if self._closed:
                front.close()
                return False
            self._fronts.append(front)
            return True

    def from_vault(self, info: ConnInfo) -> ConnInfo | None:
        if info.knock is not None and (info.knock.knock or info.knock.ack):
            log.warning("ignoring a multiplexing knock from Vault for broker id %d", info.service_id)
            return None
        front = ClientFront(info.network, info.address, self.client_ctx, self.vault_der, base=self.private)
        if not self._keep(front):
            return None
        with self._lock:
            self.vault_ids[info.service_id] = front
        return info.rewrite("unix", front.path)

    def from_child(self, info: ConnInfo) -> ConnInfo | None:
        if info.knock is not None and (info.knock.knock or info.knock.ack):
            log.warning("ignoring a multiplexing knock from the plugin for broker id %d", info.service_id)
            return None
        if info.network != "unix":
            raise GoPluginError(f"the plugin announced broker id {info.service_id} on {info.network}; "
                                "only unix sockets are relayed")
        path = os.path.join(self.public, f"broker{info.service_id}-{secrets.randbelow(10**9):09d}")
        self.on_public_socket(path)
        front = ServerFront(path, info.address, self.server_ctx, self.vault_der)
        if not self._keep(front):
            return None
        return info.rewrite("unix", path)

    def close(self) -> None:
        with self._lock:
            self._closed = True
            fronts, self._fronts = self._fronts, []
        for front in fronts:
            front.close()

