"""AutoMTLS certificates and ssl contexts, exercised over in-memory BIOs (no sockets)."""

from __future__ import annotations

import datetime
import os
import ssl

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from shim.goplugin import mtls
from shim.goplugin.errors import TLSSetupError


@pytest.fixture(scope="module")
def host():
    return mtls.generate_identity()


@pytest.fixture(scope="module")
def plugin():
    return mtls.generate_identity()


def test_certificate_shape_matches_go_plugin(host):
    cert = x509.load_der_x509_certificate(host.cert_der)
    assert isinstance(cert.public_key(), ec.EllipticCurvePublicKey)
    assert cert.public_key().curve.name == "secp521r1"
    assert cert.subject == cert.issuer
    assert cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == "localhost"
    assert cert.subject.get_attributes_for_oid(NameOID.ORGANIZATION_NAME)[0].value == "HashiCorp"
    assert cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value.get_values_for_type(
        x509.DNSName) == ["localhost"]
    bc = cert.extensions.get_extension_for_class(x509.BasicConstraints)
    assert bc.critical and bc.value.ca
    ku = cert.extensions.get_extension_for_class(x509.KeyUsage).value
    assert (ku.digital_signature, ku.key_encipherment, ku.key_agreement, ku.key_cert_sign) == (True,) * 4
    assert not (ku.content_commitment or ku.data_encipherment or ku.crl_sign)
    eku = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert set(eku) == {ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH}
    assert 0 < cert.serial_number < 2 ** 128
    now = datetime.datetime.now(datetime.timezone.utc)
    assert datetime.timedelta(seconds=25) < now - cert.not_valid_before_utc < datetime.timedelta(seconds=40)
    assert abs((cert.not_valid_after_utc - now) - datetime.timedelta(hours=262980)) < datetime.timedelta(minutes=1)
    assert host.key_pem.startswith(b"-----BEGIN EC PRIVATE KEY-----\n")
    assert host.cert_pem.startswith(b"-----BEGIN CERTIFICATE-----\n")
    assert "PRIVATE" not in repr(host)


def test_pem_der_conversions(host):
    assert mtls.cert_der_from_pem(host.cert_pem) == host.cert_der
    assert mtls.cert_der_from_pem(host.cert_pem.decode()) == host.cert_der
    assert mtls.cert_pem_from_der(host.cert_der) == host.cert_pem
    with pytest.raises(TLSSetupError, match="exactly one"):
        mtls.cert_der_from_pem(host.cert_pem * 2)
    with pytest.raises(TLSSetupError, match="exactly one"):
        mtls.cert_der_from_pem(b"")
    with pytest.raises(TLSSetupError, match="not valid DER"):
        mtls.cert_pem_from_der(b"\x30\x03abc")


def _handshake(server_ctx, client_ctx, server_hostname="localhost"):
    """Drive both ends of a TLS handshake through memory BIOs; return both SSLObjects."""
    s_in, s_out, c_in, c_out = (ssl.MemoryBIO() for _ in range(4))
    server = server_ctx.wrap_bio(s_in, s_out, server_side=True)
    client = client_ctx.wrap_bio(c_in, c_out, server_hostname=server_hostname)
    done = {"s": False, "c": False}
    for _ in range(20):
        for name, obj in (("c", client), ("s", server)):
            if not done[name]:
                try:
                    obj.do_handshake()
                    done[name] = True
                except ssl.SSLWantReadError:
                    pass
        s_in.write(c_out.read())
        c_in.write(s_out.read())
        if all(done.values()):
            # TLS 1.3: the server verifies the client cert when it reads the client Finished.
            client.write(b"ping")
            s_in.write(c_out.read())
            assert server.read(4) == b"ping"
            return server, client
    raise AssertionError("handshake did not finish")


def test_mutual_tls_works_and_pins(host, plugin):
    server, client = _handshake(mtls.server_context(plugin, host.cert_der),
                                mtls.client_context(host, plugin.cert_der))
    assert server.version() == "TLSv1.3" and server.selected_alpn_protocol() == "h2"
    mtls.check_peer(server, host.cert_der)
    mtls.check_peer(client, plugin.cert_der)
    with pytest.raises(TLSSetupError, match="other than the one announced"):
        mtls.check_peer(client, host.cert_der)
    with pytest.raises(TLSSetupError):
        mtls.check_peer(None, host.cert_der)


def test_server_refuses_an_unannounced_client(host, plugin):
    stranger = mtls.generate_identity()
    with pytest.raises(ssl.SSLError):
        _handshake(mtls.server_context(plugin, host.cert_der), mtls.client_context(stranger, plugin.cert_der))


def test_client_refuses_an_unannounced_server(host, plugin):
    stranger = mtls.generate_identity()
    with pytest.raises(ssl.SSLCertVerificationError):
        _handshake(mtls.server_context(stranger, host.cert_der), mtls.client_context(host, plugin.cert_der))


def test_client_checks_server_name(host, plugin):
    with pytest.raises(ssl.SSLCertVerificationError):
        _handshake(mtls.server_context(plugin, host.cert_der), mtls.client_context(host, plugin.cert_der),
                   server_hostname="unused")


def test_keys_are_loaded_from_memory_never_from_a_file(tmp_path, monkeypatch, host, plugin):
    """ssl loads by path: the paths handed to it are in-memory files (/proc/self/fd/N of a
    memfd), not files in any directory; nothing is created in TMPDIR or the cwd."""
    monkeypatch.setenv("TMPDIR", str(tmp_path))
    monkeypatch.chdir(tmp_path)
    seen = []
    original = ssl.SSLContext.load_cert_chain

    def spy(self, certfile, keyfile=None, *args, **kwargs):
        for path in (certfile, keyfile):
            assert path is not None and path.startswith("/proc/self/fd/"), path
            target = os.readlink(path)
            seen.append(target)
            assert target.startswith(("/memfd:", "pipe:")), target  # on no file system
        return original(self, certfile, keyfile, *args, **kwargs)

    monkeypatch.setattr(ssl.SSLContext, "load_cert_chain", spy)
    before = set(os.listdir("/proc/self/fd"))
    mtls.server_context(plugin, host.cert_der)
    mtls.client_context(host, plugin.cert_der)
    assert len(seen) == 4
    assert os.listdir(tmp_path) == []
    assert set(os.listdir("/proc/self/fd")) == before, "the in-memory files are closed again"


def test_keys_load_from_a_pipe_where_memfd_create_is_refused(monkeypatch, host, plugin):
    def refuse(*a, **k):
        raise PermissionError(1, "memfd_create blocked by seccomp")

    monkeypatch.setattr(os, "memfd_create", refuse)
    server, client = _handshake(mtls.server_context(plugin, host.cert_der),
                                mtls.client_context(host, plugin.cert_der))
    mtls.check_peer(server, host.cert_der)
    mtls.check_peer(client, plugin.cert_der)


def test_a_broken_key_is_a_named_error_and_leaves_nothing_open(host):
    broken = mtls.Identity(host.cert_pem, b"-----BEGIN EC PRIVATE KEY-----\nAAAA\n-----END EC PRIVATE KEY-----\n",
                           host.cert_der)
    before = set(os.listdir("/proc/self/fd"))
    with pytest.raises(TLSSetupError, match="could not load") as ei:
        mtls.server_context(broken, host.cert_der)
    assert ei.value.cause.startswith("SSLError")
    assert set(os.listdir("/proc/self/fd")) == before
