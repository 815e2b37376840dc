"""`doctor` and `verify --launcher` on a real OpenBao setup: what they say matches what runs."""

from __future__ import annotations

import json

import pytest

from tests.support import openbao


@pytest.fixture(scope="module")
def go_cache(tmp_path_factory):
    from tests.support import baoplugins

    return baoplugins.cache_dir(tmp_path_factory)   # one Go build cache per session, shared


def catalog_args(release) -> list[str]:
    return [w.removeprefix("-args=") for w in release.build_output.split() if w.startswith("-args=")]


def test_doctor_names_the_running_version_that_secrets_list_does_not(bao_dev, tmp_path, go_cache):
    rel = openbao.Release(bao_dev, tmp_path / "r", "doctor-running")
    rel.add(openbao.build_plugin("secret", "1.0.0", rel.versions, go_cache), "1.0.0")
    assert rel.register("--mount", rel.name).returncode == 0
    offset = bao_dev.log_size()
    # v1.1.0 is signed in; after a reload the launcher runs it, while the mount still says v1.0.0.
    rel.add(openbao.build_plugin("secret", "1.1.0", rel.versions, go_cache), "1.1.0")
    bao_dev.bao("plugin", "reload", f"-plugin={rel.name}")
    answer = json.loads(bao_dev.bao("read", "-format=json", f"{rel.name}/version").stdout)["data"]
    assert answer["version"] == "v1.1.0"
    listed = json.loads(bao_dev.bao("secrets", "list", "-detailed", "-format=json").stdout)[f"{rel.name}/"]
    assert listed["running_plugin_version"] == "v1.0.0"              # what OpenBao shows: not what runs
    line = openbao.wait_for_log(bao_dev, f"vault-plugin-shim: starting secret plugin {rel.name} 1.1.0", offset)
    assert "version=1.1.0" in line

    entry = openbao.catalog_entries(bao_dev, "secret", rel.name)["v1.0.0"]
    doctor = openbao.shim("doctor", "--launcher", rel.launcher, "--sha256", entry["sha256"], env=rel.env)
    assert doctor.returncode == 0, doctor.stdout + doctor.stderr
    assert "sha256" in doctor.stdout and "matches the catalog" in doctor.stdout
    assert "version 1.1.0" in doctor.stdout.split("next-launch:")[1]
    assert (f"in the launcher's line `vault-plugin-shim: starting secret plugin {rel.name} <version>`"
            in doctor.stdout)
    assert "show the registered catalog version, not the running one" in doctor.stdout


def test_verify_launcher_takes_the_catalog_args_of_a_policy_in_args_launcher(bao_dev, tmp_path, go_cache):
    rel = openbao.Release(bao_dev, tmp_path / "r", "verify-args", extra_build=("--kind", "python", "--policy-in-args"))
    rel.add(openbao.build_plugin("secret", "1.0.0", rel.versions, go_cache), "1.0.0")
    [arg] = catalog_args(rel)
    done = rel.register(f"--arg={arg}", "--mount", rel.name)
    assert done.returncode == 0, done.stderr
    registered = json.loads(bao_dev.bao("read", "-format=json", f"sys/plugins/catalog/secret/{rel.name}",
                                        "version=v1.0.0").stdout)["data"]["args"]
    assert registered == [arg]

    without = openbao.shim("verify", "--launcher", rel.launcher, env=rel.env)
    assert without.returncode == 1 and "--arg" in without.stderr
    verified = openbao.shim("verify", "--launcher", rel.launcher, *(f"--arg={a}" for a in registered), env=rel.env)
    assert verified.returncode == 0, verified.stderr
    assert "[LAUNCH] bao-secret-1.0.0: version 1.0.0" in verified.stdout
    doctor = openbao.shim("doctor", "--launcher", rel.launcher, *(f"--arg={a}" for a in registered), env=rel.env)
    assert doctor.returncode == 0 and "catalog args policy" in doctor.stdout


def test_doctor_asks_the_server_for_the_catalog_entry(bao_dev, tmp_path, go_cache):
    """Issue 16, item 9: `doctor --catalog TYPE/NAME` reads the entry from the server (sha256 and
    args), instead of pointing at a `vault plugin info` that 404s on a versioned entry."""
    rel = openbao.Release(bao_dev, tmp_path / "r", "doctor-catalog", extra_build=("--kind", "python", "--policy-in-args"))
    rel.add(openbao.build_plugin("secret", "1.0.0", rel.versions, go_cache), "1.0.0")
    [arg] = catalog_args(rel)
    assert rel.register(f"--arg={arg}").returncode == 0
    plain = bao_dev.bao("plugin", "info", "secret", rel.name, check=False)
    assert plain.returncode == 2 and "404" in plain.stderr             # what the old hint sent people to

    doctor = openbao.shim("doctor", "--launcher", rel.launcher, "--catalog", f"secret/{rel.name}",
                          "--no-interpreter-check", env=rel.env)
    assert doctor.returncode == 0, doctor.stdout + doctor.stderr
    assert "matches the catalog" in doctor.stdout and "catalog args policy" in doctor.stdout

    with open(rel.launcher, "ab") as fh:                               # the node's file is not the registered one
        fh.write(b"\n")
    doctor = openbao.shim("doctor", "--launcher", rel.launcher, "--catalog", f"secret/{rel.name}",
                          "--no-interpreter-check", env=rel.env)
    assert doctor.returncode == 1 and "differs from the catalog's" in doctor.stdout
    missing = openbao.shim("doctor", "--launcher", rel.launcher, "--catalog", "secret/no-such-plugin", env=rel.env)
    assert missing.returncode == 2 and "the catalog has no entry of secret/no-such-plugin" in missing.stderr
