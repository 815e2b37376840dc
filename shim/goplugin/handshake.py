"""The go-plugin handshake, sans-I/O: cookie, version negotiation, the handshake line.

A host starts a plugin with a magic cookie and ``PLUGIN_PROTOCOL_VERSIONS`` in its
environment; the plugin answers with one stdout line

    CORE|APP|NETWORK|ADDRESS|PROTOCOL|SERVERCERT[|MULTIPLEX]

e.g. ``1|5|unix|/tmp/plugin123|grpc|MIIB...``. SERVERCERT is the DER leaf certificate
in base64, standard alphabet, *without* padding (Go's ``RawStdEncoding``); it is empty
when the plugin serves plaintext. The 7th field ``true`` appears only when the plugin
accepted ``PLUGIN_MULTIPLEX_GRPC``.

Everything here is a pure function of its arguments: no environment reads, no
sockets. Anything malformed raises a :class:`~shim.goplugin.errors.HandshakeError`.
"""

from __future__ import annotations

import binascii
import base64
import re
from dataclasses import dataclass
from typing import Iterable, Mapping

from .errors import CookieError, HandshakeError, VersionError
from .vault import BACKEND_COOKIE, DATABASE_COOKIE

CORE_PROTOCOL_VERSION = 1

ENV_PROTOCOL_VERSIONS = "PLUGIN_PROTOCOL_VERSIONS"
ENV_MIN_PORT = "PLUGIN_MIN_PORT"
ENV_MAX_PORT = "PLUGIN_MAX_PORT"
ENV_CLIENT_CERT = "PLUGIN_CLIENT_CERT"
ENV_UNIX_SOCKET_DIR = "PLUGIN_UNIX_SOCKET_DIR"
ENV_UNIX_SOCKET_GROUP = "PLUGIN_UNIX_SOCKET_GROUP"
ENV_MULTIPLEX_GRPC = "PLUGIN_MULTIPLEX_GRPC"

NETWORKS = ("unix", "tcp")
PROTOCOLS = ("grpc", "netrpc")

# Go's bufio.Scanner gives up on longer lines; a P-521 cert needs about 1 KiB.
MAX_LINE = 64 * 1024
_MAX_VERSION_DIGITS = 9

_DIGITS = re.compile(r"[0-9]+")
_B64_RAW_STD = re.compile(r"[A-Za-z0-9+/]*")
_PORT = re.compile(r"[1-9][0-9]{0,4}")


@dataclass(frozen=True)
class HandshakeConfig:
    """What host and plugin must agree on: the cookie and the app protocol versions."""

    cookie_key: str
    cookie_value: str
    versions: tuple[int, ...]

    def __post_init__(self):
        if not self.cookie_key or not self.cookie_value:
            raise ValueError("HandshakeConfig needs a non-empty magic cookie key and value "
                             "(go-plugin refuses to serve without one)")
        if "=" in self.cookie_key or "\0" in self.cookie_key + self.cookie_value:
            raise ValueError(f"invalid magic cookie key {self.cookie_key!r}")
        if not self.versions or any(type(v) is not int or v < 0 for v in self.versions):
            raise ValueError(f"protocol versions must be non-negative ints, got {self.versions!r}")
        object.__setattr__(self, "versions", tuple(sorted(set(self.versions))))


VAULT_BACKEND = HandshakeConfig(*BACKEND_COOKIE, (4, 5))
VAULT_DATABASE = HandshakeConfig(*DATABASE_COOKIE, (5, 6))


# --- plugin side -----------------------------------------------------------------------

def check_cookie(environ: Mapping[str, str], config: HandshakeConfig) -> CookieError | None:
    """None when the host's cookie is present and right, else the error to report.

    A go-plugin server prints ``CookieError.human_message`` on stderr and exits 1.
    """
    got = environ.get(config.cookie_key)
    if got == config.cookie_value:
        return None
    what = "missing" if got is None else "wrong"
    return CookieError(f"magic cookie {config.cookie_key} is {what}: this binary is a plugin "
                       "and must be started by its host")


@dataclass(frozen=True)
class OfferedVersions:
    """``PLUGIN_PROTOCOL_VERSIONS`` split into usable versions and rejected entries."""

    versions: tuple[int, ...]
    invalid: tuple[str, ...]


def parse_protocol_versions(value: str | None) -> OfferedVersions:
    """Parse the host's comma list. Bad entries are collected, not fatal (as in go-plugin)."""
    if not value:
        return OfferedVersions((), ())
    good, bad = [], []
    for item in value.split(","):
        if _DIGITS.fullmatch(item) and len(item) <= _MAX_VERSION_DIGITS:
            good.append(int(item))
        else:
            bad.append(item)
    return OfferedVersions(tuple(good), tuple(bad))


def negotiate_version(supported: Iterable[int], offered: Iterable[int]) -> int:
    """The highest version we support that the host offers, else our lowest.

    The fallback lets a legacy host (no list) talk to our oldest version; a host that
    cannot use it reports the incompatibility itself.
    """
    ours = sorted(set(supported))
    if not ours:
        raise ValueError("no supported protocol versions")
    common = set(ours) & set(offered)
    return max(common) if common else ours[0]


# --- host side -------------------------------------------------------------------------

def protocol_versions_env(versions: Iterable[int]) -> str:
    return ",".join(str(v) for v in sorted(set(versions)))


def check_app_version(line: "HandshakeLine", host_versions: Iterable[int]) -> int:
    """The negotiated version, or VersionError when the plugin picked one we don't speak."""
    ours = sorted(set(host_versions))
    if line.app_version not in ours:
        raise VersionError(f"Incompatible API version with plugin. Plugin version: "
                           f"{line.app_version}, Client versions: {ours}")
    return line.app_version


# --- the handshake line ----------------------------------------------------------------

def encode_cert(der: bytes) -> str:
    """Go's base64.RawStdEncoding: standard alphabet, no padding."""
    return base64.b64encode(der).decode("ascii").rstrip("=")


def decode_cert(text: str) -> bytes:
    """Inverse of :func:`encode_cert`; strict about alphabet, padding and DER framing."""
    if "=" in text:
        raise HandshakeError("server certificate in the handshake line is base64 with padding; "
                             "go-plugin uses the standard alphabet without padding (RawStdEncoding)",
                             fix="strip the trailing '=' characters when formatting the line")
    if not _B64_RAW_STD.fullmatch(text) or len(text) % 4 == 1:
        raise HandshakeError("server certificate in the handshake line is not valid unpadded "
                             "standard base64")
    try:
        der = base64.b64decode(text + "=" * (-len(text) % 4), validate=True)
    except binascii.Error as exc:  # pragma: no cover - excluded by the checks above
        raise HandshakeError(f"server certificate is not valid base64: {exc}") from None
    _check_der_sequence(der)
    return der


def _check_der_sequence(der: bytes) -> None:
    """A certificate is one DER SEQUENCE spanning exactly the whole buffer."""
    bad = HandshakeError("server certificate in the handshake line is not a DER certificate")
    if len(der) < 2 or der[0] != 0x30:
        raise bad
    first = der[1]
    if first < 0x80:
        length, header = first, 2
    else:
        n = first & 0x7F
        if n == 0 or n > 4 or len(der) < 2 + n or der[2] == 0:
            raise bad
        length, header = int.from_bytes(der[2:2 + n], "big"), 2 + n
        if length < 0x80:
            raise bad  # long form for a short length is not DER
    if header + length != len(der):
        raise bad


def _check_address(network: str, address: str) -> None:
    if network not in NETWORKS:
        raise HandshakeError(f"Unknown address type: {network!r} (expected unix or tcp)")
    if not address or "|" in address or any(ord(c) < 0x20 or ord(c) == 0x7F for c in address):
        raise HandshakeError(f"invalid {network} address {address!r} in the handshake line")
    if network == "tcp":
        host, sep, port = address.rpartition(":")
        if not sep or not host or not _PORT.fullmatch(port) or int(port) > 65535:
            raise HandshakeError(f"invalid tcp address {address!r}: expected HOST:PORT")
        if host.startswith("[") != host.endswith("]") or (":" in host and not host.startswith("[")):
            raise HandshakeError(f"invalid tcp address {address!r}: IPv6 hosts need brackets")


def _parse_version(field: str, what: str) -> int:
    if not _DIGITS.fullmatch(field) or len(field) > _MAX_VERSION_DIGITS or (
            len(field) > 1 and field[0] == "0"):
        raise HandshakeError(f"Error parsing {what} version {field!r} in the handshake line")
    return int(field)


@dataclass(frozen=True)
class HandshakeLine:
    """One parsed handshake line. ``server_cert`` is DER, or None for plaintext."""

    app_version: int
    network: str
    address: str
    protocol: str = "grpc"
    server_cert: bytes | None = None
    multiplex: bool = False
    core_version: int = CORE_PROTOCOL_VERSION

    def __post_init__(self):
        if self.core_version != CORE_PROTOCOL_VERSION:
            raise VersionError(
                f"Incompatible core API version with plugin. Plugin version: {self.core_version}, "
                f"Core version: {CORE_PROTOCOL_VERSION}",
                fix="the plugin usually only needs to be recompiled; report this to the plugin author")
        if type(self.app_version) is not int or not 0 <= self.app_version < 10 ** _MAX_VERSION_DIGITS:
            raise HandshakeError(f"invalid app protocol version {self.app_version!r}")
        _check_address(self.network, self.address)
        if self.protocol not in PROTOCOLS:
            raise HandshakeError(f"Unsupported plugin protocol {self.protocol!r}. "
                                 f"Supported: {list(PROTOCOLS)}")
        if self.server_cert is not None:
            _check_der_sequence(self.server_cert)

    def format(self) -> str:
        """The line, without the trailing newline, exactly as a go-plugin server prints it."""
        cert = "" if self.server_cert is None else encode_cert(self.server_cert)
        fields = [str(self.core_version), str(self.app_version), self.network, self.address,
                  self.protocol, cert]
        if self.multiplex:
            fields.append("true")
        return "|".join(fields)


_UNRECOGNIZED = ("Unrecognized remote plugin message: {line}\n\n"
                 "This usually means that the plugin is either invalid or simply\n"
                 "needs to be recompiled to support the latest protocol.")


def parse_handshake_line(data: bytes | str) -> HandshakeLine:
    """Parse one handshake line (an optional single trailing ``\\n`` is allowed)."""
    if isinstance(data, (bytes, bytearray, memoryview)):
        raw = bytes(data)
        if len(raw) > MAX_LINE:
            raise HandshakeError(f"handshake line is longer than {MAX_LINE} bytes")
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError:
            raise HandshakeError(_UNRECOGNIZED.format(line=repr(raw[:200])[2:-1])) from None
    elif isinstance(data, str):
        text = data
        if len(text) > MAX_LINE:
            raise HandshakeError(f"handshake line is longer than {MAX_LINE} bytes")
    else:
        raise TypeError(f"handshake line must be bytes or str, not {type(data).__name__}")
    if text.endswith("\n"):
        text = text[:-1]
    if "\n" in text:
        raise HandshakeError("handshake line contains more than one line")
    parts = text.split("|")
    if len(parts) < 5 or len(parts) > 7:
        shown = text if len(text) <= 200 else text[:200] + "..."
        raise HandshakeError(_UNRECOGNIZED.format(line=shown))
    core = _parse_version(parts[0], "core protocol")
    app = _parse_version(parts[1], "app protocol")
    cert = decode_cert(parts[5]) if len(parts) > 5 and parts[5] else None
    multiplex = False
    if len(parts) == 7:
        if parts[6] != "true":
            raise HandshakeError(f"invalid multiplex field {parts[6]!r} in the handshake line "
                                 "(go-plugin only ever writes 'true')")
        multiplex = True
    return HandshakeLine(core_version=core, app_version=app, network=parts[2], address=parts[3],
                         protocol=parts[4], server_cert=cert, multiplex=multiplex)
