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

A native proxy-mode launcher (``native/nv_proxy.c``) carries the same meta and code after its
program and starts the interpreter the same way once it has selected, verified and sealed the
plugin; its context has the magic ``b"VPCTX\\x00\\x02\\x00"`` and, after the three fields above,
the verdict (:data:`VERDICT_KEYS`; :func:`read_launch_context`). Its select-only mode hands
the same verdict back over a socket (:data:`HANDBACK_KEYS`; :func:`parse_handback`).

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

# The native launchers (shim/launch/stubs/native/, built by build/build_stubs.sh), exec mode:
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
# A native proxy-mode launcher (native/nv_proxy.c) also carries the Python part, as the stub's
# payload does: ``[launcher][meta][code][policy][ext][trailer]``, trailer = ``b"VPNATV\x00\x02"``,
# policy_offset u64, policy_length u64 (the same shape as above), and right before it ext =
# meta_offset, meta_length, code_offset, code_length, flags (five little-endian u64). meta starts
# right after the launcher, code right after meta, the policy right after code and ends right at
# ext: every byte is accounted for. flags: NATIVE_FLAG_HOT_SWAP, nothing else.
NATIVE_PROXY_TRAILER_MAGIC = b"VPNATV\x00\x02"
NATIVE_PROXY_EXT = struct.Struct("<QQQQQ")  # 40 bytes
NATIVE_FLAG_HOT_SWAP = 1


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


def pack_native(stub: bytes, policy: bytes, argv_prefix: list[str] | None = None, code: bytes | None = None,
                hot_swap: bool = False) -> bytes:
    """``[native launcher][policy][trailer]``: the bytes of a native launcher. Deterministic.
    With ``argv_prefix`` and ``code`` (proxy mode): ``[native launcher][meta][code][policy][ext]
    [trailer]``, the Python part the launcher starts once it has decided (nv_proxy.c)."""
    if not stub.startswith(b"\x7fELF"):
        raise StubError("the native launcher is not an ELF file", fix="use stub_bytes(native=True)")
    if not policy or len(policy) > NATIVE_POLICY_MAX:
        raise StubError(f"the native policy is empty or larger than {NATIVE_POLICY_MAX} bytes",
                        fix="use build.native_policy()")
    if argv_prefix is None and code is None:
        if hot_swap:
            raise StubError("hot swap needs the Python part (proxy mode)", fix="pass argv_prefix and code")
        return b"".join((stub, policy, NATIVE_TRAILER.pack(NATIVE_TRAILER_MAGIC, len(stub), len(policy))))
    if argv_prefix is None or not code:
        raise StubError("a native proxy launcher needs the interpreter and the code archive",
                        fix="pass both argv_prefix and code")
    meta = _check_prefix(argv_prefix)
    meta_off = len(stub)
    code_off = meta_off + len(meta)
    policy_off = code_off + len(code)
    ext = NATIVE_PROXY_EXT.pack(meta_off, len(meta), code_off, len(code), NATIVE_FLAG_HOT_SWAP if hot_swap else 0)
    return b"".join((stub, meta, code, policy, ext,
                     NATIVE_TRAILER.pack(NATIVE_PROXY_TRAILER_MAGIC, policy_off, len(policy))))


def _native_layout(data: bytes):
    """None (not a native launcher), or (policy, argv_prefix or None, code or None, hot_swap),
    with the launcher's own checks (nv_launcher.c read_policy, nv_proxy.c nv_proxy_layout)."""
    if len(data) < NATIVE_TRAILER.size or not data.startswith(b"\x7fELF"):
        return None
    magic, off, length = NATIVE_TRAILER.unpack_from(data, len(data) - NATIVE_TRAILER.size)
    end = len(data) - NATIVE_TRAILER.size
    if magic == NATIVE_TRAILER_MAGIC:
        if off == 0 or off > end or length != end - off or not 0 < length <= NATIVE_POLICY_MAX:
            raise StubError("native trailer: the policy is not right before the trailer")
        return data[off:end], None, None, False
    if magic != NATIVE_PROXY_TRAILER_MAGIC:
        return None
    if end < NATIVE_PROXY_EXT.size:
        raise StubError("native proxy trailer: the file is shorter than its trailer")
    end -= NATIVE_PROXY_EXT.size
    meta_off, meta_len, code_off, code_len, flags = NATIVE_PROXY_EXT.unpack_from(data, end)
    if (meta_off == 0 or meta_off > end or not 3 <= meta_len <= META_MAX or meta_len > end - meta_off
            or code_off != meta_off + meta_len or code_len < 22 or code_len > end - code_off
            or off != code_off + code_len):
        raise StubError("native proxy trailer: meta, code and policy do not follow each other")
    if off > end or length != end - off or not 0 < length <= NATIVE_POLICY_MAX:
        raise StubError("native proxy trailer: the policy is not right before the trailer")
    if flags & ~NATIVE_FLAG_HOT_SWAP:
        raise StubError(f"native proxy trailer: unknown flags {flags:#x}")
    meta = data[meta_off:code_off]
    parts = meta[:-1].split(b"\x00")
    if (not meta.endswith(b"\x00") or any(not p for p in parts) or len(parts) > PREFIX_MAX
            or not parts[0].startswith(b"/")):
        raise StubError("native proxy trailer: meta is not the interpreter's absolute path and flags")
    code = data[code_off:off]
    if not (code.startswith(b"PK\x03\x04") and code[-22:-18] == b"PK\x05\x06"):
        raise StubError("native proxy trailer: code is not a zip archive")
    return data[off:end], [os.fsdecode(p) for p in parts], code, bool(flags & NATIVE_FLAG_HOT_SWAP)


def unpack_native(data: bytes) -> bytes | None:
    """The policy of a native launcher, or None if ``data`` is not one (the checks are the
    launcher's own)."""
    layout = _native_layout(data)
    return None if layout is None else layout[0]


def unpack_native_python(data: bytes) -> tuple[list[str], bytes, bool] | None:
    """``(argv_prefix, code, hot_swap)`` of a native proxy-mode launcher; None for a native
    exec-mode launcher or a file that is not a native launcher."""
    layout = _native_layout(data)
    return None if layout is None or layout[1] is None else (layout[1], layout[2], layout[3])


def read_context(fd: int) -> tuple[list[bytes], list[bytes], bytes]:
    """``(argv, env, exe)`` from the stub's context memfd: Vault's argv and environment
    (``KEY=VALUE`` entries) exactly as the stub received them, and the launcher's real path.
    Reads with ``pread`` from offset 0; leaves ``fd`` open and its offset unchanged."""
    argv, env, exe, verdict = read_launch_context(fd)
    if verdict is not None:
        raise StubError(f"fd {fd} holds a native launcher's context (with its verdict), not a stub's")
    return argv, env, exe


# A native proxy-mode launcher's context (nv_proxy.c): CONTEXT_MAGIC's layout under its own
# magic, then the verdict: u32 count, count times (u32 length, bytes "key=value"), every key of
# VERDICT_KEYS exactly once, in any order.
NATIVE_CONTEXT_MAGIC = b"VPCTX\x00\x02\x00"
# What the native launcher decided, as text: the sealed copy's descriptor (``fd``), how it was
# made (``how``: memfd, memfd-shared, private-file), the candidate (``binary``, ``file``), its
# signed manifest's fields, the trusted key's id, and (hot swap) a descriptor of the launcher's
# own bytes for select-only mode (``self_fd``, empty when there is none).
VERDICT_KEYS = ("fd", "self_fd", "how", "binary", "file", "name", "type", "version", "sha256", "size", "os",
                "arch", "issued_at", "expires_at", "key_id")
# What select-only mode hands back over its socket: the same, without the descriptors (the
# sealed copy travels as SCM_RIGHTS).
HANDBACK_KEYS = tuple(k for k in VERDICT_KEYS if k not in ("fd", "self_fd"))
VERDICT_MAX = 64 << 10


def read_launch_context(fd: int) -> tuple[list[bytes], list[bytes], bytes, dict[str, str] | None]:
    """``(argv, env, exe, verdict)``: :func:`read_context`'s three, and the native launcher's
    verdict (None in a stub's context)."""
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
    native = data.startswith(NATIVE_CONTEXT_MAGIC)
    if not native and not data.startswith(CONTEXT_MAGIC):
        raise StubError(f"fd {fd} does not hold a launch context (bad magic)")
    reader = _Reader(data, len(CONTEXT_MAGIC), "the launch context")
    argv = reader.strings(reader.u32())
    env = reader.strings(reader.u32())
    (exe,) = reader.strings(1)
    verdict = _verdict(reader, VERDICT_KEYS) if native else None
    reader.end()
    return argv, env, exe, verdict


def parse_handback(data: bytes) -> dict[str, str]:
    """The verdict select-only mode sends with its sealed copy (u32 count, then the strings)."""
    reader = _Reader(data, 0, "select-only mode's verdict")
    verdict = _verdict(reader, HANDBACK_KEYS)
    reader.end()
    return verdict


class _Reader:
    def __init__(self, data: bytes, pos: int, what: str):
        self.data, self.pos, self.what = data, pos, what

    def u32(self) -> int:
        if self.pos + 4 > len(self.data):
            raise StubError(f"{self.what} is truncated")
        (value,) = _U32.unpack_from(self.data, self.pos)
        self.pos += 4
        return value

    def strings(self, count: int) -> list[bytes]:
        out = []
        for _ in range(count):
            n = self.u32()
            if self.pos + n > len(self.data):
                raise StubError(f"{self.what} is truncated")
            out.append(self.data[self.pos:self.pos + n])
            self.pos += n
        return out

    def end(self) -> None:
        if self.pos != len(self.data):
            raise StubError(f"{self.what} has {len(self.data) - self.pos} trailing bytes")


def _verdict(reader: _Reader, keys: tuple[str, ...]) -> dict[str, str]:
    count = reader.u32()
    if count != len(keys):
        raise StubError(f"{reader.what}: the verdict has {count} entries, not {len(keys)}")
    out: dict[str, str] = {}
    for raw in reader.strings(count):
        key, sep, value = raw.partition(b"=")
        name = key.decode("ascii", "replace")
        if not sep or name not in keys or name in out or b"\x00" in value:
            raise StubError(f"{reader.what}: unexpected verdict entry {raw[:80]!r}")
        out[name] = os.fsdecode(value)
    return out


__all__ = ["STUB_NAMES", "NATIVE_STUB_NAMES", "StubError", "stub_bytes", "pack", "unpack", "pack_native",
           "unpack_native", "unpack_native_python", "read_context", "read_launch_context", "parse_handback",
           "CONTEXT_FLAG", "TRAILER_MAGIC", "CONTEXT_MAGIC", "NATIVE_TRAILER_MAGIC", "NATIVE_PROXY_TRAILER_MAGIC",
           "NATIVE_CONTEXT_MAGIC", "VERDICT_KEYS", "HANDBACK_KEYS"]
