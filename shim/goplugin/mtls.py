"""go-plugin AutoMTLS: one-time certificates and stdlib ``ssl`` contexts.

Each side of a go-plugin connection generates a throwaway self-signed ECDSA P-521
certificate. The host passes its PEM in ``PLUGIN_CLIENT_CERT``; the plugin answers with
its DER in the handshake line. Each side then trusts exactly the other's certificate.
We additionally pin it: after the TLS handshake :func:`check_peer` requires the peer's
leaf to be byte-identical to the one announced.

grpcio (BoringSSL) cannot complete this handshake with Go (it offers no P-521
signature algorithm in TLS 1.3), so these contexts are used by the TLS fronts in
:mod:`shim.goplugin.tlsfront`, not by grpcio.
"""

from __future__ import annotations

import datetime
import os
import secrets
import ssl
from dataclasses import dataclass

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from .errors import TLSSetupError

SERVER_NAME = "localhost"
ALPN = ["h2"]
# go-plugin: NotBefore now-30s, NotAfter now+262980h (30 years).
_BACKDATE = datetime.timedelta(seconds=30)
_LIFETIME = datetime.timedelta(hours=262980)


@dataclass(frozen=True, repr=False)
class Identity:
    """Our one-time certificate and key. ``repr`` never shows the key."""

    cert_pem: bytes
    key_pem: bytes
    cert_der: bytes

    def __repr__(self) -> str:
        return f"Identity(cert_sha256={self.fingerprint()})"

    def fingerprint(self) -> str:
        import hashlib
        return hashlib.sha256(self.cert_der).hexdigest()


def generate_identity(now: datetime.datetime | None = None) -> Identity:
    """A certificate shaped like go-plugin's ``generateCert``."""
    now = now or datetime.datetime.now(datetime.timezone.utc)
    key = ec.generate_private_key(ec.SECP521R1())
    name = x509.Name([
        x509.NameAttribute(NameOID.ORGANIZATION_NAME, "HashiCorp"),
        x509.NameAttribute(NameOID.COMMON_NAME, SERVER_NAME),
    ])
    serial = 0
    while serial == 0:
        serial = secrets.randbits(128)
    public = key.public_key()
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(public)
        .serial_number(serial)
        .not_valid_before(now - _BACKDATE)
        .not_valid_after(now + _LIFETIME)
        .add_extension(x509.KeyUsage(
            digital_signature=True, content_commitment=False, key_encipherment=True,
            data_encipherment=False, key_agreement=True, key_cert_sign=True, crl_sign=False,
            encipher_only=False, decipher_only=False), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH,
                                              ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public), critical=False)
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(SERVER_NAME)]), critical=False)
        .sign(key, hashes.SHA512())
    )
    key_pem = key.private_bytes(serialization.Encoding.PEM,
                                serialization.PrivateFormat.TraditionalOpenSSL,
                                serialization.NoEncryption())
    return Identity(cert.public_bytes(serialization.Encoding.PEM), key_pem,
                    cert.public_bytes(serialization.Encoding.DER))


def cert_der_from_pem(pem: bytes | str, *, source: str = "PLUGIN_CLIENT_CERT") -> bytes:
    """The DER of exactly one PEM certificate; anything else is a TLSSetupError."""
    data = pem.encode("ascii", "replace") if isinstance(pem, str) else bytes(pem)
    if data.count(b"-----BEGIN CERTIFICATE-----") != 1:
        raise TLSSetupError(f"{source} must hold exactly one PEM certificate")
    try:
        cert = x509.load_pem_x509_certificate(data)
    except ValueError as exc:
        raise TLSSetupError(f"{source} is not a valid PEM certificate: {exc}") from None
    return cert.public_bytes(serialization.Encoding.DER)


def cert_pem_from_der(der: bytes, *, source: str = "handshake line") -> bytes:
    try:
        cert = x509.load_der_x509_certificate(der)
    except ValueError as exc:
        raise TLSSetupError(f"the certificate in the {source} is not valid DER: {exc}") from None
    return cert.public_bytes(serialization.Encoding.PEM)


def _anonymous_file(data: bytes) -> int:
    """A readable descriptor holding ``data`` that no file system has: a memfd, or where
    memfd_create is refused (seccomp), a pipe (``data`` must fit its 64 KiB buffer)."""
    try:
        fd = os.memfd_create("goplugin-tls", os.MFD_CLOEXEC)
    except OSError:
        r, w = os.pipe2(os.O_CLOEXEC)
        try:
            _write_all(w, data)
        finally:
            os.close(w)
        return r
    try:
        _write_all(fd, data)
    except BaseException:
        os.close(fd)
        raise
    return fd


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


def _load_identity(ctx: ssl.SSLContext, identity: Identity) -> None:
    """``ssl`` loads keys only by path: give it ``/proc/self/fd/N`` of in-memory files, so
    the private key is never written to any disk or directory. Certificate and key come
    from separate descriptors (OpenSSL opens the path once for each)."""
    fds: list[int] = []
    try:
        fds.append(_anonymous_file(identity.cert_pem))
        fds.append(_anonymous_file(identity.key_pem))
        ctx.load_cert_chain(f"/proc/self/fd/{fds[0]}", f"/proc/self/fd/{fds[1]}")
    except (OSError, ssl.SSLError) as exc:
        raise TLSSetupError("could not load our AutoMTLS certificate",
                            fix="mount /proc: the key is loaded from an in-memory file through "
                                "its /proc/self/fd path") from exc
    finally:
        for fd in fds:
            os.close(fd)


def _context(purpose: int, identity: Identity, peer_der: bytes) -> ssl.SSLContext:
    ctx = ssl.SSLContext(purpose)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.verify_mode = ssl.CERT_REQUIRED
    try:
        ctx.load_verify_locations(cadata=peer_der)
    except ssl.SSLError as exc:
        raise TLSSetupError(f"the peer's AutoMTLS certificate cannot be used as a trust anchor: {exc}") from None
    _load_identity(ctx, identity)
    ctx.set_alpn_protocols(ALPN)
    return ctx


def server_context(identity: Identity, peer_der: bytes) -> ssl.SSLContext:
    """For accepting: present ``identity``, require a client cert issued by ``peer_der``."""
    return _context(ssl.PROTOCOL_TLS_SERVER, identity, peer_der)


def client_context(identity: Identity, peer_der: bytes) -> ssl.SSLContext:
    """For dialing: present ``identity``, verify the server against ``peer_der`` as localhost."""
    ctx = _context(ssl.PROTOCOL_TLS_CLIENT, identity, peer_der)
    ctx.check_hostname = True
    return ctx


def check_peer(ssl_object: ssl.SSLObject | ssl.SSLSocket | None, expected_der: bytes) -> None:
    """Pin: the peer's leaf must be exactly the announced certificate."""
    got = ssl_object.getpeercert(binary_form=True) if ssl_object is not None else None
    if got != expected_der:
        raise TLSSetupError("the TLS peer presented a certificate other than the one announced "
                            "in the go-plugin handshake",
                            fix="another process may be listening on the plugin socket; restart the plugin")


@dataclass(frozen=True)
class MTLSPair:
    """Our identity plus the peer's certificate: everything both TLS directions need."""

    identity: Identity
    peer_der: bytes

    def server_context(self) -> ssl.SSLContext:
        return server_context(self.identity, self.peer_der)

    def client_context(self) -> ssl.SSLContext:
        return client_context(self.identity, self.peer_der)
