"""The static launcher stubs and the file format they read.

A launcher is ``[stub][meta][code][trailer]``. The stub is a small static ELF built from
``stub.c`` with musl (``build/build_stubs.sh``; the prebuilt bytes ship here as package
data, so building a launcher needs no compiler). At start it reads the trailer of its own
file (``/proc/self/exe``), copies ``code`` into a sealed memfd, writes Vault's argv and
environment into a second sealed memfd (the *context*), and executes the interpreter named
in ``meta`` with a fixed environment (``LC_ALL=C.UTF-8`` only)::

    <interpreter> <flags...> /proc/self/fd/<code> --vault-plugin-shim-context-fd=<ctx>

Trailer, the file's last 40 bytes: ``b"VPSHIM\\x00\\x01"`` then four little-endian u64,
``meta_offset, meta_length, code_offset, code_length`` (from the start of the file). The
layout is strict: meta starts right after the stub, code right after meta, and the trailer
right after code. ``meta`` is NUL-terminated strings: the interpreter's absolute path, then
its flags. ``code`` is a zip archive the interpreter runs as a zipapp.

Context: ``b"VPCTX\\x00\\x01\\x00"``, u32 argc, argc times (u32 length, bytes), u32 envc,
envc times (u32 length, bytes ``KEY=VALUE`` as received), u32 length and the bytes of
``readlink("/proc/self/exe")`` (the launcher's real path). All integers little-endian.

This module is on the launch path (``read_context``): it imports ``os``, ``struct`` and our errors.
"""

from __future__ import annotations

import os
import struct

from shim.launch.errors import LaunchError

TRAILER_MAGIC = b"VPSHIM\x00\x01"
TRAILER = struct.Struct("<8sQQQQ")  # 40 bytes
CONTEXT_MAGIC = b"VPCTX\x00\x01\x00"
CONTEXT_FLAG = "--vault-plugin-shim-context-fd="
META_MAX = 4096     # stub.c: META_MAX
PREFIX_MAX = 16     # stub.c: PREFIX_MAX
CONTEXT_MAX = 64 << 20  # far above what execve accepts (argv + env share the stack limit)

# Architecture (Go's names, as in a manifest's "arch") -> prebuilt stub in this package.
# build/build_stubs.sh builds exactly these, with Debian 12's musl toolchains.
STUB_NAMES = {
    "amd64": "launcher-linux-amd64",
    "arm64": "launcher-linux-arm64",
}
_U32 = struct.Struct("<I")

# The native exec-mode launchers (shim/launch/stubs/native/, built by build/build_stubs.sh):
# ``[launcher][policy][trailer]``, trailer = ``b"VPNATV\x00\x01"``, policy_offset u64,
# policy_length u64 (little-endian); the policy is build.native_policy()'s text and runs
# right up to the trailer. The launcher verifies and executes the plugin itself.
NATIVE_STUB_NAMES = {
    "amd64": "launcher-native-linux-amd64",
    "arm64": "launcher-native-linux-arm64",
}
NATIVE_TRAILER_MAGIC = b"VPNATV\x00\x01"
NATIVE_TRAILER = struct.Struct("<8sQQ")  # 24 bytes
NATIVE_POLICY_MAX = 64 * 1024   # nv.h: NV_POLICY_MAX


class StubError(LaunchError):
    """A stub is missing, or a launcher's stub/trailer/meta/context is malformed."""

    default_fix = "rebuild the launcher with `vault-plugin-shim launcher build`"


def stub_bytes(arch: str = "amd64", native: bool = False) -> bytes:
    """The prebuilt stub for ``arch`` (the native launcher's, if ``native``)."""
    names = NATIVE_STUB_NAMES if native else STUB_NAMES
    name = names.get(arch)
    if name is None:
        raise StubError(
            f"no launcher stub for linux/{arch}: stubs exist for "
            f"{', '.join('linux/' + a for a in names)} only, the architectures that "
            f"Debian's musl toolchains build and that CI rebuilds byte for byte",
            fix=f"build the launcher with --arch {' or --arch '.join(names)}")
    path = os.path.join(os.path.dirname(os.path.abspath(__file__)), name)
    try:
        with open(path, "rb") as fh:
            data = fh.read()
    except OSError as exc:
        raise StubError(f"the prebuilt stub {path} cannot be read: {exc.strerror}",
                        fix="reinstall vault-plugin-shim, or run build/build_stubs.sh") from exc
    if not data.startswith(b"\x7fELF"):
        raise StubError(f"the prebuilt stub {path} is not an ELF file",
                        fix="reinstall vault-plugin-shim, or run build/build_stubs.sh")
    return data


def _check_prefix(argv_prefix: list[str]) -> bytes:
    if not argv_prefix:
        raise StubError("the interpreter's argv prefix is empty", fix="pass the interpreter path")
    if len(argv_prefix) > PREFIX_MAX:
        raise StubError(f"more than {PREFIX_MAX} interpreter arguments", fix="pass fewer flags")
    parts = []
    for arg in argv_prefix:
        raw = os.fsencode(arg)
        if not raw or b"\x00" in raw:
            raise StubError(f"interpreter argument {arg!r} is empty or holds a NUL byte",
                            fix="pass non-empty arguments without NUL bytes")
        parts.append(raw + b"\x00")
    if not parts[0].startswith(b"/"):
        raise StubError(f"the interpreter {argv_prefix[0]!r} is not an absolute path",
                        fix="pass the interpreter's absolute path, e.g. /usr/bin/python3")
    meta = b"".join(parts)
    if len(meta) > META_MAX:
        raise StubError(f"the interpreter path and flags take {len(meta)} bytes, more than {META_MAX}",
                        fix="use a shorter interpreter path")
    return meta


def pack(stub: bytes, argv_prefix: list[str], code: bytes) -> bytes:
    """``[stub][meta][code][trailer]``: the bytes of a launcher. Deterministic."""
    if not stub.startswith(b"\x7fELF"):
        raise StubError("the stub is not an ELF file", fix="use stub_bytes()")
    if not code:
        raise StubError("the code archive is empty", fix="pass the launcher's zip archive")
    meta = _check_prefix(argv_prefix)
    meta_off = len(stub)
    code_off = meta_off + len(meta)
    trailer = TRAILER.pack(TRAILER_MAGIC, meta_off, len(meta), code_off, len(code))
    return b"".join((stub, meta, code, trailer))


def unpack(data: bytes) -> tuple[list[str], bytes, int]:
    """``(argv_prefix, code, stub_length)`` of a launcher, with the stub's own checks."""
    if len(data) < TRAILER.size:
        raise StubError("the file is shorter than its trailer")
    magic, meta_off, meta_len, code_off, code_len = TRAILER.unpack_from(data, len(data) - TRAILER.size)
    if magic != TRAILER_MAGIC:
        raise StubError("no launcher trailer at the end of the file (bad magic)")
    end = len(data) - TRAILER.size
    if meta_off == 0 or meta_off > end:
        raise StubError("trailer: meta_offset is outside the file")
    if meta_len > end - meta_off:
        raise StubError("trailer: meta runs past the trailer")
    if code_off != meta_off + meta_len:
        raise StubError("trailer: code does not start right after meta")
    if code_len != end - code_off:
        raise StubError("trailer: code does not end right at the trailer")
    if not 3 <= meta_len <= META_MAX:
        raise StubError(f"trailer: meta_length is not between 3 and {META_MAX}")
    if code_len == 0:
        raise StubError("trailer: code is empty")
    if not data.startswith(b"\x7fELF"):
        raise StubError("the file does not start with an ELF stub")
    meta = data[meta_off:code_off]
    if not meta.endswith(b"\x00"):
        raise StubError("meta: the last string is not NUL-terminated")
    parts = meta[:-1].split(b"\x00")
    if any(not p for p in parts):
        raise StubError("meta: an empty string")
    if len(parts) > PREFIX_MAX:
        raise StubError(f"meta: more than {PREFIX_MAX} strings")
    if not parts[0].startswith(b"/"):
        raise StubError("meta: the interpreter path is not absolute")
    return [os.fsdecode(p) for p in parts], data[code_off:end], meta_off


def pack_native(stub: bytes, policy: bytes) -> bytes:
    """``[native launcher][policy][trailer]``: the bytes of a native launcher. Deterministic."""
    if not stub.startswith(b"\x7fELF"):
        raise StubError("the native launcher is not an ELF file", fix="use stub_bytes(native=True)")
    if not policy or len(policy) > NATIVE_POLICY_MAX:
        raise StubError(f"the native policy is empty or larger than {NATIVE_POLICY_MAX} bytes",
                        fix="use build.native_policy()")
    return b"".join((stub, policy, NATIVE_TRAILER.pack(NATIVE_TRAILER_MAGIC, len(stub), len(policy))))


def unpack_native(data: bytes) -> bytes | None:
    """The policy of a native launcher, or None if ``data`` is not one (the checks are the
    launcher's own)."""
    if len(data) < NATIVE_TRAILER.size or not data.startswith(b"\x7fELF"):
        return None
    magic, off, length = NATIVE_TRAILER.unpack_from(data, len(data) - NATIVE_TRAILER.size)
    end = len(data) - NATIVE_TRAILER.size
    if magic != NATIVE_TRAILER_MAGIC:
        return None
    if off == 0 or off > end or length != end - off or not 0 < length <= NATIVE_POLICY_MAX:
        raise StubError("native trailer: the policy is not right before the trailer")
    return data[off:end]


def read_context(fd: int) -> tuple[list[bytes], list[bytes], bytes]:
    """``(argv, env, exe)`` from the stub's context memfd: Vault's argv and environment
    (``KEY=VALUE`` entries) exactly as the stub received them, and the launcher's real path.
    Reads with ``pread`` from offset 0; leaves ``fd`` open and its offset unchanged."""
    try:
        size = os.fstat(fd).st_size
        if size > CONTEXT_MAX:
            raise StubError(f"the launch context is {size} bytes, more than {CONTEXT_MAX}")
        chunks, pos = [], 0
        while pos < size:
            chunk = os.pread(fd, size - pos, pos)
            if not chunk:
                break
            chunks.append(chunk)
            pos += len(chunk)
        data = b"".join(chunks)
    except OSError as exc:
        raise StubError(f"cannot read the launch context from fd {fd}: {exc.strerror}",
                        fix="start the launcher through its stub (the registered file)") from exc
    if not data.startswith(CONTEXT_MAGIC):
        raise StubError(f"fd {fd} does not hold a launch context (bad magic)")
    pos = len(CONTEXT_MAGIC)

    def u32() -> int:
        nonlocal pos
        if pos + 4 > len(data):
            raise StubError("the launch context is truncated")
        (value,) = _U32.unpack_from(data, pos)
        pos += 4
        return value

    def strings(count: int) -> list[bytes]:
        nonlocal pos
        out = []
        for _ in range(count):
            n = u32()
            if pos + n > len(data):
                raise StubError("the launch context is truncated")
            out.append(data[pos:pos + n])
            pos += n
        return out

    argv = strings(u32())
    env = strings(u32())
    (exe,) = strings(1)
    if pos != len(data):
        raise StubError(f"the launch context has {len(data) - pos} trailing bytes")
    return argv, env, exe


__all__ = ["STUB_NAMES", "NATIVE_STUB_NAMES", "StubError", "stub_bytes", "pack", "unpack", "pack_native",
           "unpack_native", "read_context", "CONTEXT_FLAG", "TRAILER_MAGIC", "CONTEXT_MAGIC",
           "NATIVE_TRAILER_MAGIC"]
