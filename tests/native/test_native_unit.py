"""The native verifier's C unit tests (shim/launch/stubs/native/test_native.c), built with
clang, -Wall -Wextra -Werror, under ASan and UBSan, and run: base64 exactly as Python's
strict decoder (texts of its errors included), Python-style quoting, semver precedence,
manifest times, the minisign signature and global signature with libsodium on fixed
vectors, manifest error texts, and the embedded policy refusing every truncation."""

from __future__ import annotations

import re
import subprocess

from tests.support import native


def test_the_c_unit_tests_pass_under_asan_and_ubsan(tmp_path):
    exe = native.build(tmp_path / "test_native", "test_native.c")
    proc = subprocess.run([str(exe)], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-4000:] + proc.stdout
    m = re.search(r"^(\d+) passed, (\d+) failed$", proc.stdout, re.M)
    assert m and int(m.group(2)) == 0 and int(m.group(1)) > 500, proc.stdout


def test_the_verifier_builds_warning_free_with_gcc_too(tmp_path):
    """A second compiler's warnings (gcc 12, -Wall -Wextra -Werror -O2: its flow analysis
    differs from clang's)."""
    sources = [str(native.NATIVE / s) for s in (*native.SOURCES, "nv_explain.c")]
    proc = subprocess.run(["nice", "-n", "10", "gcc", *native.WARNINGS, "-O2", "-o", str(tmp_path / "nv"),
                           *sources, *native.LIBS], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
