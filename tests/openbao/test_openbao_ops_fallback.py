"""Issue 16, item 2: a refused newer release is never quiet. On a real OpenBao dev server, one
byte appended to v2.0.0 makes the launcher fall back to v1.0.0 at the next reload (that keeps
the plugin up), and `verify`, `doctor` and the Dockerfile's check stage all fail on it.

Issue 20, item 4: the exec-mode images' layout (the native launcher github-image.yml builds,
with its versions in versions/<name> next to it, as the Dockerfile lays them out) serves a real
OpenBao, and the check stage runs on that layout."""

from __future__ import annotations

import hashlib
import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.support import openbao
from tests.ops.test_ops_recipes import IMAGE, LAUNCHER, SAMPLE, SELF_ARCH, Replay, _by_hand, _commands

ROOT = Path(__file__).resolve().parents[2]


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

    # The Dockerfile's check stage, run as written on the tree the images ship (the launcher
    # built as github-image.yml builds it, the versions in versions/<name> next to it), fails
    # the image build.
    image_tmp = tmp_path / "image-tmp"                 # the check stage's /tmp
    launcher = recipe_launcher(rel, image_tmp / "plugins")
    tree = image_tmp / "plugins" / "versions" / rel.name
    tree.mkdir(parents=True, mode=0o755)
    for path in rel.versions.iterdir():
        shutil.copy2(path, tree / path.name)
    command = dockerfile_check_command()
    assert command.startswith(f"vault-plugin-shim verify --launcher /tmp/plugins/{LAUNCHER} ")
    assert launcher == image_tmp / "plugins" / LAUNCHER
    command = re.sub(r"(?<![\w/])/tmp/", f"{image_tmp}/", command)
    env = {**rel.env, "PATH": f"{openbao._VENV_CLI.parent}:{rel.env.get('PATH', '/usr/bin:/bin')}"}
    check = subprocess.run(["sh", "-c", command], env=env, capture_output=True, text=True, timeout=120)
    assert check.returncode != 0, check.stdout + check.stderr
    assert f"FAIL: {v2.name} (version 2.0.0) is refused" in (image_tmp / "verified").read_text()
    env["PLUGIN_VERSION"] = "1.0.0"               # an image that means to ship 1.0.0 still fails: v2 is broken
    assert subprocess.run(["sh", "-c", command], env=env, capture_output=True, timeout=120).returncode != 0
    for path in tree.glob(f"{v2.name}*"):          # without the broken release, the pinned version passes
        path.unlink()
    assert subprocess.run(["sh", "-c", command], env=env, capture_output=True, timeout=120).returncode == 0
    assert "[LAUNCH] bao-secret-1.0.0: version 1.0.0" in (image_tmp / "verified").read_text()
    env["PLUGIN_VERSION"] = "2.0.0"
    assert subprocess.run(["sh", "-c", command], env=env, capture_output=True, timeout=120).returncode != 0


def recipe_launcher(rel: openbao.Release, directory: Path) -> Path:
    """The exec-mode launcher built by build/ci/github-image.yml's own command (its flags, with
    this release's key and name), written into ``directory``; it must be the native one."""
    values = {**SAMPLE, "PLUGIN_NAME": rel.name, "SHIM_PUBLIC_KEY": str(rel.public_key), "ARCH": SELF_ARCH}
    [argv] = [a for a in _commands(IMAGE.read_text(), "vault-plugin-shim", values)
              if a[:2] == ["launcher", "build"] and "--mode" not in a]
    out = argv.index("--output") + 1
    assert argv[out] == f"dist/launcher/{SELF_ARCH}/{LAUNCHER}" and f"versions/{rel.name}" in argv
    directory.mkdir(parents=True, exist_ok=True, mode=0o755)
    argv[out] = str(directory / LAUNCHER)
    openbao.shim(*argv, env=rel.env, check=True)
    info = json.loads(openbao.shim("launcher", "inspect", "--json", argv[out], env=rel.env, check=True).stdout)
    assert info["kind"] == "native" and info["interpreter"] is None, info
    return Path(argv[out])


def test_the_images_layout_serves_a_real_openbao(bao_dev, tmp_path, go_cache):
    """Issue 20, item 4: what an exec-mode image holds, on a real OpenBao. The launcher built as
    github-image.yml builds it and the signed versions, laid out by replaying the Dockerfile's
    plugin-directory and plugin-bundle stages, in the server's plugin_directory: registered
    once, it serves v1.0.0; v2.0.0 shipped beside it (a new image) runs after a reload, with
    the same catalog entry; run by hand (no Python needed), the launcher says so."""
    rel = openbao.Release(bao_dev, tmp_path / "keys", "recipe")
    context = tmp_path / "context"
    dist = context / "dist" / "plugins" / SELF_ARCH
    dist.mkdir(parents=True)
    built = recipe_launcher(rel, context / "dist" / "launcher" / SELF_ARCH)

    def ship(version: str) -> None:
        binary = openbao.build_plugin("secret", version, dist, go_cache, name=f"recipe-{version}")
        rel.add(binary, version)
        replay = Replay(context, tmp_path / f"replay-{version}", {"TARGETARCH": SELF_ARCH, "PLUGIN_NAME": rel.name})
        layout = replay.root("plugin-directory")
        assert sorted(str(p.relative_to(layout)) for p in layout.rglob("*")) == [
            LAUNCHER, "versions", f"versions/{rel.name}"]
        for src in [layout / LAUNCHER, *replay.root("plugin-bundle").iterdir()]:
            dest = bao_dev.plugin_dir / (src.name if src.name == LAUNCHER else f"versions/{rel.name}/{src.name}")
            dest.parent.mkdir(parents=True, exist_ok=True, mode=0o755)
            shutil.copy2(src, dest)

    ship("1.0.0")
    launcher = bao_dev.plugin_dir / LAUNCHER
    assert launcher.read_bytes() == built.read_bytes()
    done = openbao.shim("register", "secret", rel.name, "--launcher", launcher, "--mount", rel.name, env=rel.env)
    assert done.returncode == 0, done.stdout + done.stderr
    assert version_served(bao_dev, rel.name) == "v1.0.0"
    [entry] = openbao.catalog_entries(bao_dev, "secret", rel.name).values()
    assert entry["sha256"] == hashlib.sha256(built.read_bytes()).hexdigest()

    ship("2.0.0")
    bao_dev.bao("plugin", "reload", f"-plugin={rel.name}")
    assert version_served(bao_dev, rel.name) == "v2.0.0"
    assert list(openbao.catalog_entries(bao_dev, "secret", rel.name).values()) == [entry]
    explained = _by_hand(launcher)
    assert explained.returncode == 0, explained.stderr
    next_launch = f"next launch runs: {bao_dev.plugin_dir}/versions/{rel.name}/recipe-2.0.0"
    assert next_launch in explained.stdout + explained.stderr
