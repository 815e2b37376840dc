"""Errors of the go-plugin wire protocol library.

Each says what happened (``reason``) and what to do about it (``fix``): they are
:class:`shim.errors.ShimError` subclasses, so a host log line is actionable on its own. Kept free
of grpc imports: the handshake code raises these on the launch path.
"""

from __future__ import annotations

from ..errors import ShimError


class GoPluginError(ShimError):
    """Base class for everything this package raises on purpose."""


class CookieError(GoPluginError):
    """The magic cookie is missing or wrong: the binary was not started by its host.

    ``human_message`` is the text a go-plugin server prints on stderr before exiting 1.
    """

    human_message = (
        "This binary is a plugin. These are not meant to be executed directly.\n"
        "Please execute the program that consumes these plugins, which will\n"
        "load any plugins automatically\n"
    )
    default_fix = "let Vault/OpenBao start this plugin; do not run it by hand"


class HandshakeError(GoPluginError):
    """The handshake line (or a value that goes into it) is malformed."""

    default_fix = ("the plugin must print exactly one line "
                   "CORE|APP|NETWORK|ADDRESS|PROTOCOL|SERVERCERT as its first stdout output; "
                   "make sure nothing else writes to stdout before it")


class VersionError(HandshakeError):
    """Host and plugin share no protocol version (core or application)."""

    default_fix = "use a plugin build that supports one of the protocol versions the host offers"


class ChecksumError(GoPluginError):
    """The plugin file does not have the sha256 the host was configured with."""

    default_fix = "register the plugin again with the sha256 of the file that is installed"


class StartError(GoPluginError):
    """The plugin process could not be started or did not complete the handshake."""

    default_fix = "check the plugin's stderr lines logged above"


class TLSSetupError(GoPluginError):
    """AutoMTLS certificates or TLS connections could not be set up."""

    default_fix = "both sides must use go-plugin AutoMTLS (PLUGIN_CLIENT_CERT and the handshake cert)"


class ConnectError(GoPluginError):
    """The plugin's gRPC server could not be reached or is not healthy."""

    default_fix = "check the plugin's stderr lines logged above"


class BrokerError(GoPluginError):
    """A GRPCBroker stream, ConnInfo message or brokered connection failed."""

    default_fix = "the peer must call AcceptAndServe for the id within 5 seconds of Dial"
