"""What Vault tells a proxy-mode launcher through its environment, read once.

Vault (or OpenBao) starts the launcher with the plugin's environment: the magic cookie,
go-plugin's variables and the catalog's own env. :meth:`VaultEnvironment.parse` reads the
handful the proxy and its child act on into one frozen value, and keeps the whole of it for
the child, which gets all of it but what the launcher owns (:meth:`~VaultEnvironment.for_child`).
Pure: no I/O, nothing raised; what is missing is for the caller to refuse.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Mapping

from shim.goplugin import handshake as hs
from shim.goplugin.vault import COOKIES

# Owned by the launcher, never passed on: the child talks plaintext to us on a private
# socket (no PLUGIN_CLIENT_CERT), in our directory, and without go-plugin multiplexing.
OWNED_ENV = (hs.ENV_CLIENT_CERT, hs.ENV_UNIX_SOCKET_DIR, hs.ENV_UNIX_SOCKET_GROUP, hs.ENV_MULTIPLEX_GRPC)

COOKIE_KEYS = tuple(dict.fromkeys(key for key, _ in COOKIES.values()))   # backend's first


@dataclass(frozen=True)
class VaultEnvironment:
    """The launcher's environment as Vault set it, and what the proxy reads of it."""

    variables: Mapping[str, str] = field(repr=False)   # all of it, in Vault's order (read-only)
    client_cert: str | None        # PLUGIN_CLIENT_CERT: Vault's AutoMTLS certificate (PEM)
    socket_dir: str | None         # PLUGIN_UNIX_SOCKET_DIR: where Vault wants the sockets it dials
    socket_group: str | None       # PLUGIN_UNIX_SOCKET_GROUP: their group
    tmpdir: str | None             # TMPDIR: where the launcher's private directory goes
    cookie: tuple[str, str]        # the magic cookie (key, value) the child must see
    protocol_versions: tuple[int, ...]   # PLUGIN_PROTOCOL_VERSIONS, the usable entries

    @classmethod
    def parse(cls, env: Mapping[str, str]) -> "VaultEnvironment":
        """Empty values count as unset. Without a cookie, the backend's key with the value
        "unset": the child's go-plugin then refuses to start, and says so."""
        key = next((k for k in COOKIE_KEYS if k in env), COOKIE_KEYS[0])
        return cls(variables=MappingProxyType(dict(env)),
                   client_cert=env.get(hs.ENV_CLIENT_CERT) or None,
                   socket_dir=env.get(hs.ENV_UNIX_SOCKET_DIR) or None,
                   socket_group=env.get(hs.ENV_UNIX_SOCKET_GROUP) or None,
                   tmpdir=env.get("TMPDIR") or None,
                   cookie=(key, env.get(key) or "unset"),
                   protocol_versions=hs.parse_protocol_versions(env.get(hs.ENV_PROTOCOL_VERSIONS)).versions)

    def for_child(self, socket_dir: str) -> dict[str, str]:
        """Vault's env minus what the launcher owns; the child's sockets (and temp files)
        go to ``socket_dir``: go-plugin before 1.5 puts its socket in ``$TMPDIR``."""
        env = {k: v for k, v in self.variables.items() if k not in OWNED_ENV}
        env[hs.ENV_UNIX_SOCKET_DIR] = socket_dir
        env["TMPDIR"] = socket_dir
        return env
