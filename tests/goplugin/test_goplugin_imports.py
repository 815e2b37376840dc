"""shim.goplugin stays import-light: the launch path must not pay for grpc."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_pure_modules_do_not_import_grpc_or_cryptography():
    code = ("import sys; import shim.goplugin, shim.goplugin.handshake, shim.goplugin.errors, "
            "shim.goplugin.logrelay, shim.goplugin.broker; "
            "heavy = sorted(m for m in sys.modules if m.split('.')[0] in ('grpc', 'cryptography', 'google')); "
            "print(heavy)")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"
