"""The committed generated code is fresh, and the wire names/numbers match go-plugin."""

from __future__ import annotations

import importlib.util
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
COMMITTED = ROOT / "shim" / "goplugin" / "protos"


def _gen_module():
    spec = importlib.util.spec_from_file_location("gen_protos", ROOT / "build" / "gen_protos.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _tree(path: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(path.iterdir())
            if p.is_file() and p.suffix in (".py", ".pyi")}


def test_committed_generated_code_is_fresh(tmp_path):
    _gen_module().generate(tmp_path)
    fresh, committed = _tree(tmp_path), _tree(COMMITTED)
    assert sorted(fresh) == sorted(committed), (
        "shim/goplugin/protos has stale or missing files; run `python build/gen_protos.py`")
    stale = [name for name in fresh if fresh[name] != committed[name]]
    assert not stale, (f"generated files differ from proto/*.proto: {stale}; run "
                       "`python build/gen_protos.py` (with the grpcio-tools version pinned for the "
                       "project) and commit the result")


def test_generation_is_reproducible(tmp_path):
    gen = _gen_module()
    gen.generate(tmp_path / "a")
    gen.generate(tmp_path / "b")
    assert _tree(tmp_path / "a") == _tree(tmp_path / "b")


def test_generated_imports_are_package_relative():
    for path in COMMITTED.glob("*_pb2_grpc.py"):
        text = path.read_text()
        assert "\nimport grpc_" not in text and "\nimport grpctest_" not in text, path


def _fields(message) -> dict[str, tuple[int, int]]:
    return {f.name: (f.number, f.type) for f in message.DESCRIPTOR.fields}


def test_wire_names_and_numbers_match_go_plugin():
    from google.protobuf.descriptor import FieldDescriptor as F

    from shim.goplugin.protos import grpc_broker_pb2, grpc_controller_pb2, grpc_stdio_pb2

    conninfo = grpc_broker_pb2.ConnInfo
    assert conninfo.DESCRIPTOR.full_name == "plugin.ConnInfo"
    assert _fields(conninfo) == {"service_id": (1, F.TYPE_UINT32), "network": (2, F.TYPE_STRING),
                                 "address": (3, F.TYPE_STRING), "knock": (4, F.TYPE_MESSAGE)}
    assert _fields(conninfo.Knock) == {"knock": (1, F.TYPE_BOOL), "ack": (2, F.TYPE_BOOL),
                                       "error": (3, F.TYPE_STRING)}
    assert _fields(grpc_stdio_pb2.StdioData) == {"channel": (1, F.TYPE_ENUM), "data": (2, F.TYPE_BYTES)}
    assert dict(grpc_stdio_pb2.StdioData.Channel.items()) == {"INVALID": 0, "STDOUT": 1, "STDERR": 2}
    assert grpc_controller_pb2.Empty.DESCRIPTOR.full_name == "plugin.Empty"

    services = {
        grpc_broker_pb2.DESCRIPTOR.services_by_name["GRPCBroker"]: ("StartStream", True, True),
        grpc_controller_pb2.DESCRIPTOR.services_by_name["GRPCController"]: ("Shutdown", False, False),
        grpc_stdio_pb2.DESCRIPTOR.services_by_name["GRPCStdio"]: ("StreamStdio", False, True),
    }
    for service, (name, client_streaming, server_streaming) in services.items():
        assert service.full_name.startswith("plugin.")
        method = service.methods_by_name[name]
        assert (method.client_streaming, method.server_streaming) == (client_streaming, server_streaming)
    stdio = grpc_stdio_pb2.DESCRIPTOR.services_by_name["GRPCStdio"].methods_by_name["StreamStdio"]
    assert stdio.input_type.full_name == "google.protobuf.Empty"


def test_known_conninfo_bytes():
    """Bytes as Go's proto.Marshal writes them for ConnInfo{ServiceId: 3, Network: "unix", ...}."""
    from shim.goplugin.protos import grpc_broker_pb2

    msg = grpc_broker_pb2.ConnInfo(service_id=3, network="unix", address="/s")
    assert msg.SerializeToString() == b"\x08\x03\x12\x04unix\x1a\x02/s"
