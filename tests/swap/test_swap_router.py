"""What the router does for a hot swap (sans-I/O): a graceful GOAWAY toward Vault that never
breaks a header block and refuses nothing, and the count of calls left to drain (the broker
and stdio streams live as long as Vault's plugin client and are not calls). Plus the launcher
build flag that turns hot swap on."""

from __future__ import annotations

import hpack
import pytest

from shim.goplugin.h2frame import (CONTINUATION, DATA, END_HEADERS, END_STREAM, GOAWAY, HEADERS, PREFACE,
                                   FrameReader, frame)
from shim.goplugin.h2route import Router
from shim.launch import build
from shim.trust.errors import PolicyError
from tests.support import releases as R


def request(enc: hpack.Encoder, sid: int, path: str) -> bytes:
    block = enc.encode([(":method", "POST"), (":path", path), (":scheme", "http"), (":authority", "x"),
                        ("content-type", "application/grpc"), ("te", "trailers")])
    return frame(HEADERS, END_HEADERS, sid, block)


def frames_to_vault(router: Router):
    return FrameReader().feed(router.data_to_vault())


def test_goaway_moves_vault_on_and_refuses_nothing():
    router, enc = Router(), hpack.Encoder()
    router.receive_vault(PREFACE + request(enc, 1, "/pb.Backend/HandleRequest"))
    router.goaway()
    out = frames_to_vault(router)
    assert [(f.type, f.payload) for f in out] == [(GOAWAY, (0x7FFFFFFF).to_bytes(4, "big") + b"\x00" * 4)]
    router.goaway()  # once only
    assert router.data_to_vault() == b""
    # A stream Vault opened before it read the GOAWAY is still routed to the child.
    router.receive_vault(request(enc, 3, "/pb.Backend/HandleRequest"))
    assert any(f.type == HEADERS and f.stream_id == 3 for f in FrameReader().feed(router.data_to_child()[24:]))
    assert router.open_calls() == 2


def test_goaway_waits_for_the_childs_header_block_to_end():
    router, enc = Router(), hpack.Encoder()
    router.receive_vault(PREFACE + request(enc, 1, "/pb.Backend/HandleRequest"))
    block = hpack.Encoder().encode([(":status", "200"), ("content-type", "application/grpc")])
    router.receive_child(frame(HEADERS, 0, 1, block[:3]))
    router.data_to_vault()
    router.goaway()
    assert router.data_to_vault() == b""           # not inside the block
    router.receive_child(frame(CONTINUATION, END_HEADERS, 1, block[3:]))
    out = frames_to_vault(router)
    assert [f.type for f in out] == [CONTINUATION, GOAWAY]


def test_open_calls_leave_out_the_broker_and_stdio_streams():
    router, enc = Router(), hpack.Encoder()
    router.receive_vault(PREFACE + request(enc, 1, "/plugin.GRPCStdio/StreamStdio")
                         + request(enc, 3, "/plugin.GRPCBroker/StartStream")
                         + request(enc, 5, "/pb.Backend/HandleRequest"))
    assert router.open_calls() == 1
    resp = hpack.Encoder()
    router.receive_child(frame(HEADERS, END_HEADERS, 5, resp.encode([(":status", "200")]))
                         + frame(DATA, 0, 5, b"\x00\x00\x00\x00\x00")
                         + frame(HEADERS, END_HEADERS | END_STREAM, 5, resp.encode([("grpc-status", "0")])))
    assert (router.open_calls(), router.calls_done) == (0, 1)
    assert len(router.streams) == 2                # the long-lived ones stay open


def test_the_build_flag(tmp_path):
    keys = R.new_keys()
    pol = R.policy(tmp_path, keys).replace(mode="proxy")
    plain = build.write_launcher(pol, R.PYTHON, str(tmp_path / "plain"), "proxy")
    swapping = build.write_launcher(pol, R.PYTHON, str(tmp_path / "swapping"), "proxy", hot_swap=True)
    assert plain != swapping
    assert build.write_launcher(pol, R.PYTHON, str(tmp_path / "again"), "proxy") == plain  # off: unchanged
    info, off = build.inspect(str(tmp_path / "swapping")), build.inspect(str(tmp_path / "plain"))
    assert (info.hot_swap, off.hot_swap) == (True, False)
    import io
    import zipfile
    names = set(zipfile.ZipFile(io.BytesIO(build.launcher_code((tmp_path / "swapping").read_bytes()))).namelist())
    assert set(build.HOT_SWAP_MODULES) <= names
    names = set(zipfile.ZipFile(io.BytesIO(build.launcher_code((tmp_path / "plain").read_bytes()))).namelist())
    assert not set(build.HOT_SWAP_MODULES) & names
    with pytest.raises(PolicyError, match="hot swap needs proxy mode"):
        build.build_bytes(pol.replace(mode="exec"), R.PYTHON, "exec", hot_swap=True)
