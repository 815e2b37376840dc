"""Issue 16, item 2: a refused newer release is never quiet. On a real OpenBao dev server, one
byte appended to v2.0.0 makes the launcher fall back to v1.0.0 at the next reload (that keeps
the plugin up), and `verify`, `doctor` and the Dockerfile's check stage all fail on it."""

from __future__ import annotations

import json
import re
import shlex
import subprocess
from pathlib import Path

import pytest

from tests.support import openbao

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def go_cache(tmp_path_factory):
    from tests.support import baoplugins

    return baoplugins.cache_dir(tmp_path_factory)


def version_served(server, mount: str) -> str:
    return json.loads(server.bao("read", "-format=json", f"{mount}/version").stdout)["data"]["version"]


def dockerfile_check_command() -> str:
    """The `RUN` of the Dockerfile's `check` stage, as one shell command."""
    text = (ROOT / "build" / "docker" / "Dockerfile").read_text()
    stage = text.split(" AS check\n", 1)[1].split("\nFROM ", 1)[0]
    run = re.search(r"^RUN (.*?)(?<!\\)$", stage.replace("\\\n", " "), re.M | re.S)
    assert run, stage
    return run.group(1)


def test_a_tampered_newest_version_falls_back_loudly(bao_dev, tmp_path, go_cache):
    rel = openbao.Release(bao_dev, tmp_path / "r", "fallback")
    rel.add(openbao.build_plugin("secret", "1.0.0", rel.versions, go_cache), "1.0.0")
    v2 = rel.add(openbao.build_plugin("secret", "2.0.0", rel.versions, go_cache), "2.0.0")
    done = rel.register("--mount", rel.name)
    assert done.returncode == 0, done.stderr
    assert version_served(bao_dev, rel.name) == "v2.0.0"
    ok = openbao.shim("verify", "--launcher", rel.launcher, "--expect-version", "2.0.0", env=rel.env)
    assert ok.returncode == 0, ok.stdout + ok.stderr

    with open(v2, "ab") as fh:                    # one byte appended to the newest release
        fh.write(b"\0")
    bao_dev.bao("plugin", "reload", f"-plugin={rel.name}")
    assert version_served(bao_dev, rel.name) == "v1.0.0"   # the launcher keeps the plugin up...

    verify = openbao.shim("verify", "--launcher", rel.launcher, env=rel.env)   # ...and is not quiet
    assert verify.returncode == 1, verify.stdout
    assert (f"FAIL: {v2.name} (version 2.0.0) is refused and the launcher falls back to the older 1.0.0"
            in verify.stdout)
    as_json = json.loads(openbao.shim("verify", "--launcher", rel.launcher, "--json", env=rel.env).stdout)
    assert as_json["ok"] is False and as_json["passed_over"] == [str(v2)] and as_json["version"] == "1.0.0"

    doctor = openbao.shim("doctor", "--launcher", rel.launcher, "--no-interpreter-check", env=rel.env)
    assert doctor.returncode == 1, doctor.stdout
    assert "[FAIL] fallback:" in doctor.stdout and "version 2.0.0 newer than 1.0.0 is present and refused" \
        in doctor.stdout

    # The Dockerfile's check stage, run as written on these files, fails the image build.
    command = dockerfile_check_command()
    assert "vault-plugin-shim verify --launcher /opt/vault-plugin-shim/vault-plugin-shim-launcher" in command
    command = (command.replace("/opt/vault-plugin-shim/vault-plugin-shim-launcher", shlex.quote(str(rel.launcher)))
               .replace("/tmp/versions", shlex.quote(str(rel.versions)))
               .replace("/tmp/verified", shlex.quote(str(tmp_path / "verified"))))
    env = {**rel.env, "PATH": f"{openbao._VENV_CLI.parent}:{rel.env.get('PATH', '/usr/bin:/bin')}"}
    check = subprocess.run(["sh", "-c", command], env=env, capture_output=True, text=True, timeout=120)
    assert check.returncode != 0, check.stdout + check.stderr
    env["PLUGIN_VERSION"] = "1.0.0"               # an image that means to ship 1.0.0 still fails: v2 is broken
    assert subprocess.run(["sh", "-c", command], env=env, capture_output=True, timeout=120).returncode != 0
    for path in rel.versions.glob(f"{v2.name}*"):  # without the broken release, the pinned version passes
        path.unlink()
    assert subprocess.run(["sh", "-c", command], env=env, capture_output=True, timeout=120).returncode == 0
    env["PLUGIN_VERSION"] = "2.0.0"
    assert subprocess.run(["sh", "-c", command], env=env, capture_output=True, timeout=120).returncode != 0
