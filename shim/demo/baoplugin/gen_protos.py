#!/usr/bin/env python3
"""Generate the Go protobuf code of the demo OpenBao plugins from proto/*.proto.

The output is committed, so builds and tests need no protoc. It uses grpcio-tools'
protoc (the [test] extra) with Debian's protoc-gen-go 1.3.5 (package protoc-gen-go-1-3,
pulled in by golang-goprotobuf-dev) in its `plugins=grpc` mode, which matches the
golang-goprotobuf 1.3.5 and grpc 1.33 runtime that go-plugin 1.0.1 builds against.

    python shim/demo/baoplugin/gen_protos.py            # regenerate in place
    python shim/demo/baoplugin/gen_protos.py --out DIR  # write elsewhere (staleness test)
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
PROTO_DIR = HERE / "proto"
PROTOC_GEN_GO = Path("/usr/bin/protoc-gen-go")
IMPORT_ROOT = "vaultpluginshim/baoplugin"
# proto file -> Go package directory (relative to this folder), as in each go_package.
OUTPUTS = {
    "backend.proto": "pb",
    "version.proto": "logicalpb",
    "database.proto": "dbpb",
}
# grpcio-tools' copies of the well-known types name the newer google.golang.org/protobuf
# packages; Debian's golang-goprotobuf 1.3.5 has them under github.com/golang/protobuf.
WELL_KNOWN_GO = {
    "google/protobuf/struct.proto": "github.com/golang/protobuf/ptypes/struct",
    "google/protobuf/timestamp.proto": "github.com/golang/protobuf/ptypes/timestamp",
}


class GenerationError(Exception):
    pass


def generate(out_dir: Path) -> list[Path]:
    """Write <out_dir>/<pkg>/<name>.pb.go for every proto; return the files written."""
    try:
        import grpc_tools
        from grpc_tools import protoc
    except ImportError as exc:
        raise GenerationError("grpcio-tools is missing: pip install grpcio-tools "
                              "(it is in the [test] extra)") from exc
    if not PROTOC_GEN_GO.exists():
        raise GenerationError(f"{PROTOC_GEN_GO} is missing: apt-get install protoc-gen-go-1-3 "
                              "(a dependency of golang-goprotobuf-dev)")
    well_known = Path(grpc_tools.__file__).resolve().parent / "_proto"
    mapping = ",".join(f"M{proto}={pkg}" for proto, pkg in WELL_KNOWN_GO.items())
    written = []
    with tempfile.TemporaryDirectory(prefix="baoplugin-gen-") as tmp:
        for name, pkg in OUTPUTS.items():
            # One protoc run per file: each is its own Go package.
            rc = protoc.main([
                "protoc", f"--plugin=protoc-gen-go={PROTOC_GEN_GO}",
                f"-I{PROTO_DIR}", f"-I{well_known}",
                f"--go_out=plugins=grpc,{mapping}:{tmp}", name,
            ])
            if rc != 0:
                raise GenerationError(f"protoc failed on {name} (exit {rc})")
            produced = Path(tmp) / IMPORT_ROOT / pkg / name.replace(".proto", ".pb.go")
            if not produced.exists():
                raise GenerationError(f"protoc-gen-go wrote no {produced}")
            dest = out_dir / pkg / produced.name
            dest.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(produced, dest)
            written.append(dest)
    return written


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=HERE)
    args = ap.parse_args(argv)
    try:
        for path in generate(args.out):
            print(path)
    except GenerationError as exc:
        print(f"gen_protos: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
