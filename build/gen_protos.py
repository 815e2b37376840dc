#!/usr/bin/env python3
"""Generate shim/goplugin/protos/ from proto/*.proto with grpc_tools.protoc.

The output is committed, so it must be byte-for-byte reproducible: protoc runs
in-process on relative paths in a fixed order, and the only post-processing is
turning protoc's top-level imports of sibling modules into package-relative ones
(``import x_pb2`` -> ``from . import x_pb2``), so the modules work from inside
the ``shim.goplugin.protos`` package without touching sys.path.

    python build/gen_protos.py            # regenerate in place
    python build/gen_protos.py --out DIR  # write elsewhere (the staleness test)
"""

from __future__ import annotations

import argparse
import os
import re
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PROTO_DIR = ROOT / "proto"
DEFAULT_OUT = ROOT / "shim" / "goplugin" / "protos"

INIT_TEXT = '''"""Generated gRPC/protobuf modules (build/gen_protos.py). Do not edit by hand.

Importing this package imports nothing; import the ``*_pb2``/``*_pb2_grpc``
module you need.
"""
'''

# protoc writes sibling imports as top-level modules; we live in a package.
_SIBLING_IMPORT = re.compile(r"^import (\w+_pb2) as (\w+)$", re.MULTILINE)
_SIBLING_FROM = re.compile(r"^from (\w+_pb2) import ", re.MULTILINE)


class GenerationError(Exception):
    pass


def proto_files(proto_dir: Path = PROTO_DIR) -> list[str]:
    return sorted(p.name for p in proto_dir.glob("*.proto"))


def _fix_imports(text: str, siblings: set[str]) -> str:
    def sub_import(m: re.Match) -> str:
        if m.group(1) in siblings:
            return f"from . import {m.group(1)} as {m.group(2)}"
        return m.group(0)

    def sub_from(m: re.Match) -> str:
        if m.group(1) in siblings:
            return f"from .{m.group(1)} import "
        return m.group(0)

    return _SIBLING_FROM.sub(sub_from, _SIBLING_IMPORT.sub(sub_import, text))


def generate(out_dir: Path, proto_dir: Path = PROTO_DIR) -> list[Path]:
    """Write the generated package into out_dir; return the files written, sorted."""
    from grpc_tools import protoc
    import grpc_tools

    files = proto_files(proto_dir)
    if not files:
        raise GenerationError(f"{proto_dir}: no .proto files found")
    include = Path(grpc_tools.__file__).resolve().parent / "_proto"
    out_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="gen_protos.") as raw:
        cwd = os.getcwd()
        os.chdir(proto_dir)
        try:
            rc = protoc.main([
                "grpc_tools.protoc", "-I.", f"-I{include}",
                f"--python_out={raw}", f"--pyi_out={raw}", f"--grpc_python_out={raw}",
                *files,
            ])
        finally:
            os.chdir(cwd)
        if rc != 0:
            raise GenerationError(f"protoc failed with exit code {rc} on {', '.join(files)}")
        generated = sorted(Path(raw).iterdir())
        siblings = {p.name[:-3] for p in generated if p.name.endswith("_pb2.py")}
        written = []
        for src in generated:
            text = _fix_imports(src.read_text(encoding="utf-8"), siblings)
            dest = out_dir / src.name
            dest.write_bytes(text.encode("utf-8"))
            written.append(dest)
    init = out_dir / "__init__.py"
    init.write_bytes(INIT_TEXT.encode("utf-8"))
    written.append(init)
    return sorted(written)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = parser.parse_args(argv)
    try:
        for path in generate(args.out):
            print(path)
    except GenerationError as exc:
        print(f"gen_protos: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
