"""The HashiCorp go-plugin wire protocol, as Vault and OpenBao speak it.

Import-light on purpose (the exec-mode launch path imports ``shim``): importing this
package, ``handshake``, ``errors`` or ``logrelay`` pulls in neither grpc nor
cryptography. The modules, pure ones first:

* ``handshake``  cookie check, protocol version negotiation, the handshake line
* ``logrelay``   plugin stderr lines -> host log records (hclog JSON)
* ``broker``     GRPCBroker: ConnInfo rules (pure) and the threaded broker
* ``mtls``       AutoMTLS certificates and stdlib ``ssl`` contexts
* ``tlsfront``   stdlib-ssl TLS in front of plaintext grpcio on private sockets
* ``server``     the plugin side (``PluginServer``, ``serve``)
* ``client``     the host side (``PluginClient``)
* ``protos``     generated code for proto/*.proto (build/gen_protos.py)
* ``vault``      Vault's plugin types and magic cookies
* ``hclog``      hclog JSON lines on stderr, which hosts re-log at their level

Serving a plugin from Python takes :func:`serve` and a :class:`HandshakeConfig` (Vault's
are ``VAULT_BACKEND`` and ``VAULT_DATABASE``)::

    from shim.goplugin import VAULT_BACKEND, serve

    def register(ctx):  # ctx.server: the grpc.Server; ctx.broker: the GRPCBroker
        my_pb2_grpc.add_MyServicer_to_server(MyServicer(ctx.broker), ctx.server)

    raise SystemExit(serve(VAULT_BACKEND, register))

This package imports nothing else of vault-plugin-shim. Names load on first use.
"""

from __future__ import annotations

__all__ = ["Broker", "Diagnostic", "GoPluginError", "HandshakeConfig", "PluginClient", "PluginServer",
           "ServeContext", "VAULT_BACKEND", "VAULT_DATABASE", "serve"]

_HOMES = {
    "Broker": "broker", "Diagnostic": "errors", "GoPluginError": "errors",
    "HandshakeConfig": "handshake", "VAULT_BACKEND": "handshake", "VAULT_DATABASE": "handshake",
    "PluginClient": "client", "PluginServer": "server", "ServeContext": "server", "serve": "server",
}


def __getattr__(name: str):
    home = _HOMES.get(name)
    if home is None:
        raise AttributeError(f"module 'shim.goplugin' has no attribute {name!r}")
    import importlib

    return getattr(importlib.import_module(f"{__name__}.{home}"), name)
