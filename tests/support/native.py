"""Building the native verifier's test programs (shim/launch/stubs/native/) for the tests.

They are built for this machine (glibc, Debian's libsodium-dev and nettle-dev) with clang,
warnings as errors, under AddressSanitizer and UndefinedBehaviorSanitizer: the tests then
also prove that the runs they make touch no memory out of bounds and hit no undefined
behaviour. The static musl launcher itself is built by build/build_stubs.sh from the same
sources.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent.parent
NATIVE = REPO / "shim" / "launch" / "stubs" / "native"
FUZZ = NATIVE / "fuzz"
# The verifier proper: what a launcher links (besides its main).
SOURCES = ("nv_text.c", "nv_minisign.c", "nv_manifest.c", "nv_policy.c", "nv_select.c", "nv_sha256.c", "nv_hclog.c",
           "nv_proxy.c")
# libsodium (Ed25519, BLAKE2b) and Nettle (SHA-256); Debian's nettle is the same 3.8.1 source,
# built fat too. (nv_noenv.c is the launcher's alone: the sanitizers read their options with
# getenv.)
LIBS = ("-lsodium", "-lnettle")
WARNINGS = ("-std=gnu11", "-Wall", "-Wextra", "-Werror", "-Wshadow", "-Wformat=2", "-Wvla")
SANITIZE = ("-fsanitize=address,undefined", "-fno-sanitize-recover=all", "-fno-omit-frame-pointer")
TSAN = ("-fsanitize=thread", "-fno-omit-frame-pointer")
TIMEOUT = 300


def require_toolchain() -> str:
    """clang and libsodium's and Nettle's headers; fails (never skips) when missing."""
    clang = shutil.which("clang")
    if clang is None:
        pytest.fail("clang is missing: apt-get install clang libclang-rt-14-dev (bash build/install.sh)",
                    pytrace=False)
    if not Path("/usr/include/sodium.h").exists():
        pytest.fail("libsodium's headers are missing: apt-get install libsodium-dev (bash build/install.sh)",
                    pytrace=False)
    if not Path("/usr/include/nettle/sha2.h").exists():
        pytest.fail("Nettle's headers are missing: apt-get install nettle-dev (bash build/install.sh)",
                    pytrace=False)
    return clang


def build(out: Path, main: str | Path, *, extra: tuple[str, ...] = (), fuzzer: bool = False,
          sanitize: tuple[str, ...] = SANITIZE) -> Path:
    """Compile the verifier with ``main`` (a file in NATIVE, or a path) into ``out``; under ASan and
    UBSan unless ``sanitize`` says otherwise (TSAN for the threaded copy)."""
    clang = require_toolchain()
    main_path = Path(main) if Path(main).is_absolute() else NATIVE / main
    if fuzzer:
        sanitize = ("-fsanitize=fuzzer,address,undefined", "-fno-sanitize-recover=all")
    cmd = [clang, *WARNINGS, "-g", "-O1", *sanitize, f"-I{NATIVE}", *extra, "-o", str(out),
           *(str(NATIVE / s) for s in SOURCES), str(main_path), *LIBS]
    proc = subprocess.run(["nice", "-n", "10", *cmd], capture_output=True, text=True, timeout=TIMEOUT)
    if proc.returncode != 0:
        pytest.fail(f"building {out.name} failed:\n{proc.stderr}", pytrace=False)
    return out
