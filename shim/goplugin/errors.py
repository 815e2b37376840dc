"""Errors of the go-plugin wire protocol library.

Each says what happened (``reason``), about which file or endpoint (``path``), why
(``cause``: the underlying error, kept from ``raise ... from exc``) and what to do about it
(``fix``), so a host log line is actionable on its own. :class:`Diagnostic` is that shape;
the rest of vault-plugin-shim builds its own errors on it (``shim.errors``), while this
package imports nothing else of ours. Kept free of grpc imports: the handshake code raises
these on the launch path.
"""

from __future__ import annotations


class Diagnostic(Exception):
    """An error that names the file, the reason, the cause and the fix."""

    default_fix = ""

    def __init__(self, reason: str, *, path: str | None = None, fix: str | None = None,
                 cause: BaseException | str | None = None):
        self.reason = reason
        self.path = None if path is None else str(path)
        self.fix = self.default_fix if fix is None else fix
        self._cause = cause
        super().__init__(reason)

    @property
    def cause(self) -> str:
        """The underlying error: given explicitly, or the one this was raised ``from``."""
        cause = self._cause if self._cause is not None else self.__cause__
        if cause is None or isinstance(cause, str):
            return cause or ""
        if isinstance(cause, OSError) and cause.strerror:
            where = f" ({cause.filename})" if cause.filename else ""
            return f"{type(cause).__name__}: {cause.strerror}{where}"
        return f"{type(cause).__name__}: {cause}" if str(cause) else type(cause).__name__

    def diagnostics(self) -> str:
        head = f"{self.path}: {self.reason}" if self.path else self.reason
        if self.cause:
            head = f"{head} (cause: {self.cause})"
        return f"{head}. Fix: {self.fix}" if self.fix else head

    def __str__(self) -> str:
        return self.diagnostics()

    def fields(self) -> dict[str, str]:
        """Key/value pairs for a structured (hclog) log line or a JSON report."""
        out = {"error": type(self).__name__, "reason": self.reason}
        if self.path:
            out["file"] = self.path
        if self.cause:
            out["cause"] = self.cause
        if self.fix:
            out["fix"] = self.fix
        return out


class GoPluginError(Diagnostic):
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


class H2RouteError(GoPluginError):
    """A peer sent something that is not HTTP/2 as the frame router needs it; the connection
    ends. The frame codec raises it as it is (it does not know the peer); the router raises one
    of the two below, which say whose fault it was."""


class HostProtocolError(H2RouteError):
    """The host (Vault) sent it: its connection is at fault."""


class PluginProtocolError(H2RouteError):
    """The plugin sent it: its connection is at fault, and the host's calls routed to it end."""
