"""The launcher holds exactly what its launch path imports, and nothing else.

A real launch of each mode (under HashiCorp go-plugin 1.0.1 as the host) runs the launcher's
own code with ``-X importtime``; the ``shim`` modules it imported must be exactly the modules
in the archive. Editing the CLI or ``ops/`` must not change a launcher's bytes, so it must not
change the sha256 that Vault pins.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from shim.launch.build import MODULES, build_bytes
from tests.support import gopeer
from tests.support import releases as R

ROOT = Path(__file__).resolve().parents[2]
# Modules (of any package) the exec path may import before it execs the plugin: the
# interpreter's own start-up, the stdlib pieces we use, cryptography's Ed25519 and our own
# modules (116 since the select-and-start path left entry.py for shim.launch.sealed: one
# module more of ours, no new import of anyone else's).
EXEC_IMPORT_BUDGET = 116


def imported(log: str) -> list[str]:
    """Module names from ``-X importtime`` output, in import order."""
    out = []
    for line in log.splitlines():
        if line.startswith("import time:") and "|" in line:
            name = line.rsplit("|", 1)[1].strip()
            if name != "imported package":
                out.append(name)
    return out


def archived(mode: str) -> set[str]:
    mods = set()
    for rel in MODULES[mode]:
        name = rel[:-3].replace("/", ".")
        mods.add(name[: -len(".__init__")] if name.endswith(".__init__") else name)
    return mods


@pytest.fixture(scope="module")
def go_plugin(go_build):
    return go_build.plugin("1.0.0", 2)


# The native proxy launcher's Python part imports the proxy's modules but memexec: the native
# part made the sealed copy (memexec is in the archive for the private-copy fallback only).
NATIVE_PROXY_UNUSED = {"shim.launch.memexec"}


@pytest.mark.parametrize("mode", ["exec", "proxy", "native-proxy"])
def test_a_real_launch_imports_exactly_the_archived_modules(mode, go_host, go_plugin, tmp_path):
    versions = tmp_path / "versions"
    versions.mkdir(mode=0o755)
    vault_plugins = tmp_path / "vault-plugins"
    vault_plugins.mkdir()
    keys = R.new_keys()
    native, mode = mode == "native-proxy", "proxy" if mode == "native-proxy" else mode
    pol = R.policy(versions, keys).replace(mode=mode)
    # The launcher as `launcher build` makes it, plus -X importtime among the interpreter's
    # flags (they are part of the launcher's bytes): a real launch through the stub that
    # leaves its import log. A wrapper keeps that log apart from the host's stderr.
    launcher = vault_plugins / "myplugin-shim"
    if native:
        from shim.launch.build import build_native_bytes

        launcher.write_bytes(build_native_bytes(pol, python=R.PYTHON, flags=("-I", "-X", "importtime")))
    else:
        launcher.write_bytes(build_bytes(pol, R.PYTHON, flags=("-I", "-X", "importtime")))
    launcher.chmod(0o755)
    dst = versions / "myplugin-1.0.0"
    shutil.copy(go_plugin, dst)
    dst.chmod(0o755)
    R.release(keys, dst, version="1.0.0")
    log = tmp_path / "importtime.log"
    wrapper = vault_plugins / "importtime-wrapper"
    wrapper.write_text(f'#!/bin/sh\nexec {launcher} "$@" 2>>{log}\n')
    wrapper.chmod(0o755)
    sock = Path(tempfile.mkdtemp(prefix="lc", dir="/tmp"))
    try:
        # proxy mode: a broker call too, so the lazily imported broker code is used
        action = ("double", "21") if mode == "exec" else ("broker", "host-dials")
        res = gopeer.run_host(go_host, wrapper, *action, sha256=gopeer.sha256_file(wrapper),
                              host_env={"TMPDIR": str(sock)}, timeout=60)
    finally:
        shutil.rmtree(sock, ignore_errors=True)
    assert res.ok and res.results, res.describe()
    if mode == "exec":
        assert res.results == [42], res.describe()
    names = imported(log.read_text())
    ours = {n for n in names if n == "shim" or n.startswith("shim.")}
    want = archived(mode) - (NATIVE_PROXY_UNUSED if native else set())
    assert ours == want, (sorted(ours - want), sorted(want - ours))
    if mode == "exec":
        assert len(names) <= EXEC_IMPORT_BUDGET, (len(names), names)


def test_the_launcher_carries_no_cli_ops_demo_or_test_code():
    for mode, modules in MODULES.items():
        for rel in modules:
            assert not rel.startswith(("shim/ops/", "shim/demo/", "shim/cli.py")), (mode, rel)
            assert "grpctest" not in rel, (mode, rel)


@pytest.mark.parametrize("mode", ["exec", "proxy"])
def test_editing_the_cli_or_ops_does_not_change_a_launchers_bytes(mode, tmp_path):
    keys = R.new_keys()
    pol = R.policy(tmp_path, keys).replace(mode=mode)
    before = build_bytes(pol, R.PYTHON)
    copy = tmp_path / "src"
    shutil.copytree(ROOT / "shim", copy / "shim", ignore=shutil.ignore_patterns("__pycache__"))
    for rel in ("shim/cli.py", "shim/ops/register.py", "shim/ops/doctor.py", "shim/demo/run.py"):
        with open(copy / rel, "a") as fh:
            fh.write("\n# an edit that must not reach the launcher\n")
    script = ("import sys; from shim.launch.build import build_bytes; from shim.trust.policy import Policy; "
              "sys.stdout.buffer.write(build_bytes(Policy.from_json(sys.argv[1]), sys.argv[2]))")
    done = subprocess.run([sys.executable, "-I", "-c", f"import sys; sys.path.insert(0, {str(copy)!r}); " + script,
                           pol.to_json(), R.PYTHON], capture_output=True, timeout=60, cwd="/")
    assert done.returncode == 0, done.stderr.decode()
    assert done.stdout == before
    with open(copy / "shim/launch/entry.py", "a") as fh:
        fh.write("\n# an edit to the launch path must change the launcher\n")
    done = subprocess.run([sys.executable, "-I", "-c", f"import sys; sys.path.insert(0, {str(copy)!r}); " + script,
                           pol.to_json(), R.PYTHON], capture_output=True, timeout=60, cwd="/")
    assert done.returncode == 0 and done.stdout != before
