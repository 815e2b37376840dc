"""The native launcher's SHA-256 (shim/launch/stubs/native/nv_sha256.c: GNU Nettle, built fat by
build/build_nettle.sh), on every code path Nettle can choose, against FIPS 180-2's examples and
against hashlib on random inputs.

test_sha256.c, a small program on nv_sha256.c (not the launcher: it lets Nettle read
NETTLE_FAT_VERBOSE and NETTLE_FAT_OVERRIDE), is built the way the launcher is (static, musl,
the same libnettle.a) for amd64 and arm64, and hashes files by descriptor:

- amd64 here: the SHA-NI code where this CPU has the SHA extensions (Nettle says which it chose),
  and the portable code (NETTLE_FAT_OVERRIDE=none);
- amd64 under qemu-x86_64 with a CPU model without SHA-NI: Nettle's own detection says no;
- arm64 under qemu-aarch64 (-cpu max, -cpu cortex-a53): the ARMv8 SHA2 code, found with
  getauxval (build/nettle-arm64-musl-getauxval.patch), and the portable C code. qemu 7.2 has no
  arm64 model without SHA2, so that one is chosen with NETTLE_FAT_OVERRIDE=none;
- under ASan and UBSan (clang, glibc, Debian's nettle-dev: the same source, built fat too).

And nv_copy_sha256, the launcher's copy of a plugin hashed while it is made (the copy on a
second thread): every input copied into a memfd must hash as hashlib says and as the finished
copy does, on two threads, on one (no second thread can start: RLIMIT_NPROC), under qemu on
arm64, and under ThreadSanitizer. nv_sha256_fd, which checks the finished copy here, runs the
same pipeline without writing.

A missing tool fails the test (never skips).
"""

from __future__ import annotations

import hashlib
import random
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.support import native

REPO = Path(__file__).resolve().parents[2]
BUILD_NETTLE = REPO / "build" / "build_nettle.sh"
PROGRAM = native.NATIVE / "test_sha256.c"
TOOLCHAINS = {  # arch: compiler, musl's specs file, the packages that give them
    "amd64": ("x86_64-linux-gnu-gcc", "/usr/lib/x86_64-linux-musl/musl-gcc.specs", "musl-tools"),
    "arm64": ("aarch64-linux-gnu-gcc", "/usr/lib/aarch64-linux-musl/musl-gcc.specs",
              "gcc-aarch64-linux-gnu musl-dev:arm64"),
}
TIMEOUT = 600

# FIPS 180-2, appendix B (and the one-block message of length 0).
FIPS = {
    b"": "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",
    b"abc": "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad",
    b"abcdbcdecdefdefgefghfghighijhijkijkljklmklmnlmnomnopnopq":
        "248d6a61d20638b8e5c026930c3e6039a33ce45964ff2167f6ecedd419db06c1",
    b"abcdefghbcdefghicdefghijdefghijkefghijklfghijklmghijklmnhijklmnoijklmnopjklmnopqklmnopqrlmnopqrs"
    b"mnopqrstnopqrstu": "cf5b16a778af8380036ce59e7b0492370b249b11e8f07a51afac45037afee9d1",
    b"a" * 1_000_000: "cdc76e5c9914fb9281a1c7e284d73e67f1809a48a497200e046d39ccc7112cd0",
}
# What Nettle's fat setup prints (NETTLE_FAT_VERBOSE) when it picks each SHA-256 code.
SHA_NI, NO_SHA_NI = "libnettle: using sha_ni instructions.", "libnettle: not using sha_ni instructions."
ARM_SHA2 = "libnettle: enabling hardware-accelerated sha256 compress code."


def require(tool: str, how: str) -> str:
    path = shutil.which(tool)
    if path is None:
        pytest.fail(f"{tool} is missing: {how} (bash build/install.sh)", pytrace=False)
    return path


@pytest.fixture(scope="module")
def nettle() -> dict[str, Path]:
    """build_nettle.sh (cached after its first run): the musl libnettle.a the launcher links."""
    proc = subprocess.run(["bash", str(BUILD_NETTLE)], capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr
    prefixes = {}
    for arch in TOOLCHAINS:
        out = subprocess.run(["bash", str(BUILD_NETTLE), "--prefix", arch], capture_output=True, text=True,
                             check=True).stdout.strip()
        prefixes[arch] = Path(out)
        assert (prefixes[arch] / "lib" / "libnettle.a").is_file(), proc.stderr
    return prefixes


def build(out: Path, arch: str, prefix: Path) -> Path:
    cc, specs, packages = TOOLCHAINS[arch]
    require(cc, f"apt-get install {packages}")
    if not Path(specs).is_file():
        pytest.fail(f"{specs} is missing: apt-get install {packages} (bash build/install.sh)", pytrace=False)
    cmd = [cc, "-specs", specs, "-std=gnu11", "-O2", "-Wall", "-Wextra", "-Werror", "-static",
           f"-I{native.NATIVE}", f"-I{prefix / 'include'}", "-o", str(out), str(PROGRAM),
           str(native.NATIVE / "nv_sha256.c"), str(prefix / "lib" / "libnettle.a")]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=TIMEOUT, env={"PATH": "/usr/bin:/bin"})
    if proc.returncode != 0:
        pytest.fail(f"building {out.name} failed:\n{proc.stderr}", pytrace=False)
    return out


@pytest.fixture(scope="module")
def inputs(tmp_path_factory) -> dict[Path, str]:
    """Files and their hashlib digests: FIPS's messages, random ones of every length 0..200,
    around the 64-byte block size, the 64 KiB read size, nv_copy_sha256's 256 KiB pieces, its
    1 MiB threshold for a second thread and its eight buffers' 2 MiB (where the first is used
    again), and a few of several MB."""
    d = tmp_path_factory.mktemp("sha256-inputs")
    rng = random.Random(20)
    lengths = set(range(201))
    lengths |= {64 * k + e for k in range(1, 40) for e in (-1, 0, 1)}
    lengths |= {65536 * k + e for k in (1, 2, 3) for e in (-65, -64, -1, 0, 1, 63, 64)}
    lengths |= {2**18 * k + e for k in (1, 4, 8, 9) for e in (-1, 0, 1)}
    lengths |= {3 * 2**20 + 17, 8 * 2**20, 16 * 2**20 + 1}
    files = {}
    for n, (message, expected) in enumerate(FIPS.items()):
        assert hashlib.sha256(message).hexdigest() == expected
        path = d / f"fips-{n}"
        path.write_bytes(message)
        files[path] = expected
    for n in sorted(lengths):
        data = rng.randbytes(n)
        path = d / f"random-{n}"
        path.write_bytes(data)
        files[path] = hashlib.sha256(data).hexdigest()
    return files


def run(cmd: list[str], files: dict[Path, str], env: dict[str, str]) -> str:
    """Runs the program on every file; checks each digest; returns its stderr."""
    proc = subprocess.run([*cmd, *map(str, files)], capture_output=True, text=True, timeout=TIMEOUT,
                          env={"PATH": "/usr/bin:/bin", **env})
    assert proc.returncode == 0, proc.stderr
    got = dict(line.split(" ", 1)[::-1] for line in proc.stdout.splitlines())
    assert len(got) == len(files)
    wrong = [(p.name, got[str(p)], want) for p, want in files.items() if got[str(p)] != want]
    assert not wrong, wrong[:5]
    return proc.stderr


def cpu_has_sha_ni() -> bool:
    flags = next(line for line in Path("/proc/cpuinfo").read_text().splitlines() if line.startswith("flags"))
    return "sha_ni" in flags.split()


def test_amd64_sha_ni_and_portable_code_agree_with_hashlib(nettle, inputs, tmp_path):
    exe = build(tmp_path / "test_sha256", "amd64", nettle["amd64"])
    err = run([str(exe)], inputs, {"NETTLE_FAT_VERBOSE": "1"})
    # Nettle chose the code this CPU has: SHA-NI on this machine (the x86 SHA extensions).
    assert (SHA_NI if cpu_has_sha_ni() else NO_SHA_NI) in err.splitlines(), err
    err = run([str(exe)], inputs, {"NETTLE_FAT_VERBOSE": "1", "NETTLE_FAT_OVERRIDE": "none"})
    assert NO_SHA_NI in err.splitlines(), err


def test_amd64_copy_hashed_while_it_is_made_agrees_with_hashlib(nettle, inputs, tmp_path):
    exe = build(tmp_path / "test_sha256", "amd64", nettle["amd64"])
    run([str(exe), "--copy"], inputs, {})


def test_where_no_second_thread_can_start_the_copy_is_made_then_hashed(nettle, inputs, tmp_path):
    """A pids limit reached: pthread_create fails, nv_copy_sha256 says it worked on one thread, and
    nv_sha256_fd (which checks the finished copy) reads and hashes on one thread too."""
    exe = build(tmp_path / "test_sha256", "amd64", nettle["amd64"])
    run([str(exe), "--copy-one-thread"], inputs, {})


def test_the_threaded_copy_under_thread_sanitizer(inputs, tmp_path):
    exe = native.build(tmp_path / "test_sha256_tsan", PROGRAM, sanitize=native.TSAN)
    run([str(exe), "--copy"], inputs, {"TSAN_OPTIONS": "halt_on_error=1:exitcode=99"})


def test_amd64_on_a_cpu_without_sha_ni_nettle_detects_it(nettle, inputs, tmp_path):
    qemu = require("qemu-x86_64-static", "apt-get install qemu-user-static")
    exe = build(tmp_path / "test_sha256", "amd64", nettle["amd64"])
    err = run([qemu, "-cpu", "qemu64", str(exe)], inputs, {"NETTLE_FAT_VERBOSE": "1"})
    assert NO_SHA_NI in err.splitlines(), err


@pytest.mark.parametrize("cpu", ["max", "cortex-a53"])
def test_arm64_sha2_instructions_under_qemu_agree_with_hashlib(cpu, nettle, inputs, tmp_path):
    qemu = require("qemu-aarch64-static", "apt-get install qemu-user-static")
    exe = build(tmp_path / "test_sha256", "arm64", nettle["arm64"])
    err = run([qemu, "-cpu", cpu, str(exe)], inputs, {"NETTLE_FAT_VERBOSE": "1"})
    assert ARM_SHA2 in err.splitlines(), err     # found by getauxval(AT_HWCAP), under musl
    run([qemu, "-cpu", cpu, str(exe), "--copy"], inputs, {})


def test_arm64_portable_code_under_qemu_agrees_with_hashlib(nettle, inputs, tmp_path):
    qemu = require("qemu-aarch64-static", "apt-get install qemu-user-static")
    exe = build(tmp_path / "test_sha256", "arm64", nettle["arm64"])
    err = run([qemu, "-cpu", "max", str(exe)], inputs, {"NETTLE_FAT_VERBOSE": "1", "NETTLE_FAT_OVERRIDE": "none"})
    assert "libnettle: cpu features:" in err and ARM_SHA2 not in err, err


def test_under_asan_and_ubsan_with_debians_nettle(inputs, tmp_path):
    exe = native.build(tmp_path / "test_sha256_asan", PROGRAM)
    asan = {"ASAN_OPTIONS": "detect_leaks=0:abort_on_error=0:exitcode=99",
            "UBSAN_OPTIONS": "halt_on_error=1:exitcode=99"}
    run([str(exe)], inputs, asan)
    run([str(exe)], inputs, {**asan, "NETTLE_FAT_OVERRIDE": "none"})
    run([str(exe), "--copy"], inputs, asan)
