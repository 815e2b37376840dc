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
* ``_proto``     generated code for proto/*.proto (build/gen_protos.py)
"""
