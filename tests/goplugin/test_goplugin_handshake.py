"""Handshake: cookie, version negotiation, and the handshake line (pure, no I/O)."""

from __future__ import annotations

import base64

import pytest
from hypothesis import example, given, settings, strategies as st

from shim.goplugin import handshake as hs
from shim.goplugin.errors import CookieError, HandshakeError, VersionError

CFG = hs.HandshakeConfig("TEST_COOKIE", "s3cret", (3, 4, 5))


def _der(body_len: int) -> bytes:
    """A syntactically valid DER SEQUENCE of the given body length."""
    body = bytes(range(256)) * (body_len // 256 + 1)
    body = body[:body_len]
    if body_len < 0x80:
        return b"\x30" + bytes([body_len]) + body
    n = (body_len.bit_length() + 7) // 8
    return b"\x30" + bytes([0x80 | n]) + body_len.to_bytes(n, "big") + body


# --- cookie ------------------------------------------------------------------------

def test_cookie_ok():
    assert hs.check_cookie({"TEST_COOKIE": "s3cret"}, CFG) is None


@pytest.mark.parametrize("env", [{}, {"TEST_COOKIE": ""}, {"TEST_COOKIE": "s3cret "}])
def test_cookie_missing_or_wrong(env):
    err = hs.check_cookie(env, CFG)
    assert isinstance(err, CookieError)
    assert "TEST_COOKIE" in str(err)
    assert err.human_message.startswith("This binary is a plugin. These are not meant to be executed directly.\n")


def test_config_rejects_empty_cookie():
    with pytest.raises(ValueError):
        hs.HandshakeConfig("", "x", (1,))
    with pytest.raises(ValueError):
        hs.HandshakeConfig("K", "v", ())


# --- versions ------------------------------------------------------------------------

@pytest.mark.parametrize("env,expected", [
    ("5", 5), ("3,4", 4), ("4,3", 4), ("5,6", 5), ("1,2", 3), ("", 3), (None, 3), ("x,4", 4), ("6", 3),
])
def test_negotiate(env, expected):
    offered = hs.parse_protocol_versions(env)
    assert hs.negotiate_version(CFG.versions, offered.versions) == expected


def test_parse_versions_collects_bad_entries():
    assert hs.parse_protocol_versions("3,x,,+4, 5,6") == hs.OfferedVersions((3, 6), ("x", "", "+4", " 5"))


@given(st.lists(st.integers(0, 50), min_size=1), st.lists(st.integers(0, 50)))
def test_negotiate_properties(supported, offered):
    v = hs.negotiate_version(supported, offered)
    common = set(supported) & set(offered)
    assert v == (max(common) if common else min(supported))


def test_check_app_version():
    line = hs.HandshakeLine(app_version=5, network="unix", address="/tmp/p")
    assert hs.check_app_version(line, [4, 5]) == 5
    with pytest.raises(VersionError, match=r"Plugin version: 5, Client versions: \[3, 4\]"):
        hs.check_app_version(line, [4, 3])


# --- handshake line ------------------------------------------------------------------

def test_parse_go_plaintext_line():
    # go-plugin prints an empty SERVERCERT field when it serves plaintext.
    line = hs.parse_handshake_line(b"1|5|unix|/tmp/plugin123|grpc|\n")
    assert line == hs.HandshakeLine(app_version=5, network="unix", address="/tmp/plugin123")


def test_parse_legacy_five_fields_and_tcp():
    line = hs.parse_handshake_line("1|4|tcp|127.0.0.1:10000|netrpc")
    assert (line.network, line.address, line.protocol, line.server_cert) == ("tcp", "127.0.0.1:10000", "netrpc", None)


def test_parse_cert_and_multiplex():
    der = _der(700)
    text = f"1|6|unix|/run/p.sock|grpc|{base64.b64encode(der).decode().rstrip('=')}|true\n"
    line = hs.parse_handshake_line(text.encode())
    assert line.server_cert == der and line.multiplex and line.app_version == 6
    assert line.format() + "\n" == text


@pytest.mark.parametrize("body_len", [700, 701, 702])
def test_padding_is_refused_and_unpadded_accepted(body_len):
    der = _der(body_len)
    padded = base64.b64encode(der).decode()
    raw = padded.rstrip("=")
    assert hs.decode_cert(raw) == der
    assert hs.encode_cert(der) == raw
    if padded != raw:
        with pytest.raises(HandshakeError, match="padding"):
            hs.parse_handshake_line(f"1|5|unix|/p|grpc|{padded}")


@pytest.mark.parametrize("text,match", [
    ("hello world", "Unrecognized remote plugin message: hello world"),
    ("1|5|unix", "Unrecognized remote plugin message"),
    ("2|5|unix|/p|grpc|", "Incompatible core API version"),
    ("1|x|unix|/p|grpc|", "app protocol"),
    ("1|05|unix|/p|grpc|", "app protocol"),
    ("1|5|udp|/p|grpc|", "Unknown address type"),
    ("1|5|unix||grpc|", "invalid unix address"),
    ("1|5|tcp|localhost|grpc|", "HOST:PORT"),
    ("1|5|tcp|::1:80|grpc|", "brackets"),
    ("1|5|tcp|h:0|grpc|", "HOST:PORT"),
    ("1|5|unix|/p|http|", "Unsupported plugin protocol"),
    ("1|5|unix|/p|grpc|MIIB", "not a DER certificate"),
    ("1|5|unix|/p|grpc|a-b_", "not valid unpadded"),
    ("1|5|unix|/p|grpc||false", "multiplex"),
    ("1|5|unix|/p|grpc||true|x", "Unrecognized"),
    ("1|5|unix|/p|grpc|\r\n", "not valid unpadded"),
    ("1|5|unix|/p|grpc|\n\n", "more than one line"),
])
def test_parse_rejects(text, match):
    with pytest.raises(HandshakeError, match=match):
        hs.parse_handshake_line(text)


def test_parse_rejects_bad_utf8_and_long_lines():
    with pytest.raises(HandshakeError, match="Unrecognized"):
        hs.parse_handshake_line(b"1|5|unix|/p\xff|grpc|")
    with pytest.raises(HandshakeError, match="longer"):
        hs.parse_handshake_line(b"1|5|unix|/" + b"a" * hs.MAX_LINE + b"|grpc|")


def test_format_refuses_unsafe_values():
    with pytest.raises(HandshakeError):
        hs.HandshakeLine(app_version=5, network="unix", address="/a|b")
    with pytest.raises(HandshakeError):
        hs.HandshakeLine(app_version=5, network="unix", address="/a\nb")
    with pytest.raises(HandshakeError):
        hs.HandshakeLine(app_version=5, network="unix", address="/a", server_cert=b"\x30\x05ab")


@settings(max_examples=500)
@given(st.binary(max_size=300))
@example(b"1|5|unix|/p|grpc|")
@example(b"1|5|tcp|[::1]:9|grpc||true\n")
def test_any_bytes_give_a_value_or_our_error(data):
    try:
        line = hs.parse_handshake_line(data)
    except HandshakeError:
        return
    assert hs.parse_handshake_line(line.format()) == line


_addr_chars = st.characters(min_codepoint=0x20, max_codepoint=0x10FFFF, blacklist_characters="|\x7f",
                            blacklist_categories=("Cs",))


@st.composite
def handshake_lines(draw):
    network = draw(st.sampled_from(hs.NETWORKS))
    if network == "unix":
        address = draw(st.text(_addr_chars, min_size=1, max_size=60))
    else:
        host = draw(st.sampled_from(["127.0.0.1", "localhost", "[::1]"]))
        address = f"{host}:{draw(st.integers(1, 65535))}"
    cert = draw(st.one_of(st.none(), st.integers(0, 2000).map(_der)))
    return hs.HandshakeLine(app_version=draw(st.integers(0, 99)), network=network, address=address,
                            protocol=draw(st.sampled_from(hs.PROTOCOLS)), server_cert=cert,
                            multiplex=draw(st.booleans()))


@given(handshake_lines(), st.booleans())
def test_roundtrip(line, as_bytes):
    text = line.format() + "\n"
    assert "\n" not in line.format() and "=" not in text.split("|")[5]
    assert hs.parse_handshake_line(text.encode() if as_bytes else text) == line


@given(handshake_lines())
def test_mutations_of_valid_lines_never_crash(line):
    text = line.format()
    for cut in range(0, len(text), max(1, len(text) // 7)):
        for mutated in (text[:cut], text[:cut] + "=" + text[cut:], text[:cut] + "|" + text[cut:]):
            try:
                hs.parse_handshake_line(mutated)
            except HandshakeError:
                pass
