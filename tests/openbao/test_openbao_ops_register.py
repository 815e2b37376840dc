"""`vault-plugin-shim register` against a real OpenBao dev server (one per module).

Each test uses its own plugin name, so they share the server without interfering. Launchers,
keys and signatures are made with the CLI; plugins are the demo OpenBao plugins built from
Debian's go-plugin (shim.demo.gobuild).
"""

from __future__ import annotations

import json

import pytest

from shim.ops.errors import BareVersionError, MountStepError
from shim.ops.register import enable_mount
from shim.ops.registration import PROBE_VERSION, Registration, sha256_file
from shim.ops.vaultenv import VaultEnv, detect_server
from tests.support import openbao


@pytest.fixture(scope="module")
def go_cache(tmp_path_factory):
    from tests.support import baoplugins

    return baoplugins.cache_dir(tmp_path_factory)   # one Go build cache per session, shared


@pytest.fixture
def release(bao_dev, tmp_path, go_cache, request):
    """A launcher for a plugin named after the test, with v1.0.0 of the secret plugin signed."""
    import hashlib
    import re

    slug = re.sub(r"[^a-z0-9]+", "-", request.node.name.removeprefix("test_"))[:30].strip("-")
    name = f"{slug}-{hashlib.sha256(request.node.nodeid.encode()).hexdigest()[:6]}"
    rel = openbao.Release(bao_dev, tmp_path / "release", name)
    rel.add(openbao.build_plugin("secret", "1.0.0", rel.versions, go_cache), "1.0.0")
    return rel


def client_for(server, token=None):
    env = VaultEnv.from_environ({"VAULT_ADDR": server.addr, "VAULT_TOKEN": token or server.token},
                                home=server.root)
    return env.client()


def mounts(server) -> dict:
    return json.loads(server.bao("secrets", "list", "-detailed", "-format=json").stdout)


# --- success ----------------------------------------------------------------------------------

def test_register_and_mount_then_the_plugin_answers(bao_dev, release):
    done = release.register("--mount", release.name)
    assert done.returncode == 0, done.stderr
    assert f"on OpenBao {bao_dev.health()[1]['version']}" in done.stdout
    assert "catalog version: v1.0.0" in done.stdout
    assert f"enabled {release.name} at {release.name}/" in done.stdout
    entries = openbao.catalog_entries(bao_dev, "secret", release.name)
    assert set(entries) == {"v1.0.0"}                       # the probe left nothing behind
    assert entries["v1.0.0"]["sha256"] == release.sha256
    answer = json.loads(bao_dev.bao("read", "-format=json", f"{release.name}/version").stdout)["data"]
    assert answer["version"] == "v1.0.0"
    assert mounts(bao_dev)[f"{release.name}/"]["plugin_version"] == "v1.0.0"


def test_dry_run_sends_nothing_and_its_commands_work_on_openbao(bao_dev, release):
    done = release.register("--mount", release.name, "--dry-run")
    assert done.returncode == 0, done.stderr
    assert openbao.catalog_entries(bao_dev, "secret", release.name) == {}
    assert f"{release.name}/" not in mounts(bao_dev)
    lines = done.stdout.splitlines()
    assert "# First (no token): GET /v1/sys/seal-status tells Vault from OpenBao (pins or tune)." in lines
    probe = next(x for x in lines if x.startswith("vault plugin register") and PROBE_VERSION in x)
    # The probe line, run with bao, does what the plan says: a mismatch naming the real version.
    ran = bao_dev.bao(*probe.split()[1:], check=False)
    assert ran.returncode != 0 and "reported version (v1.0.0)" in ran.stderr
    register = next(x for x in lines if x.startswith("vault plugin register") and "<reported version>" in x)
    ran = bao_dev.bao(*register.replace("'-version=<reported version>'", "-version=v1.0.0").split()[1:])
    assert set(openbao.catalog_entries(bao_dev, "secret", release.name)) == {"v1.0.0"}


# --- item 4: the launcher could not run --------------------------------------------------------

@pytest.fixture(scope="module")
def unversioned_plugin(tmp_path_factory, go_cache):
    """The demo secret plugin built to report no version at all (an empty string), as most
    plugins written before plugin versioning do."""
    from shim.demo import gobuild

    try:
        return gobuild.go_build("bao-secret", f"{gobuild.BAOPLUGIN_IMPORT}/cmd/secret",
                                ldflags="-X main.version=", dest_dir=tmp_path_factory.mktemp("unversioned"),
                                name="bao-secret-unversioned", cache_dir=go_cache,
                                trees={gobuild.BAOPLUGIN_IMPORT: gobuild.BAOPLUGIN_DIR},
                                patch_go_plugin=True)
    except gobuild.GoUnavailable as exc:
        pytest.fail(str(exc), pytrace=False)


def test_an_unversioned_plugin_registers_as_an_unversioned_entry_and_serves(bao_dev, tmp_path,
                                                                           unversioned_plugin):
    """Issue 16, item 1: the probe's answer is the same for "reports no version" and "did not
    run"; the trial mount tells them apart, and the unversioned plugin is registered."""
    import shutil

    rel = openbao.Release(bao_dev, tmp_path / "r", "unversioned")
    rel.add(shutil.copy(unversioned_plugin, rel.versions / "nv-1.0.0"), "1.0.0")
    done = rel.register("--mount", "nv")
    assert done.returncode == 0, done.stderr
    assert "catalog version: (unversioned)" in done.stdout and "a trial mount ran it" in done.stdout
    entries = openbao.catalog_entries(bao_dev, "secret", rel.name)
    assert set(entries) == {""} and entries[""]["sha256"] == rel.sha256      # no probe entry left
    listed = mounts(bao_dev)
    assert "nv/" in listed and f"vault-plugin-shim-probe-{rel.name}/" not in listed
    answer = json.loads(bao_dev.bao("read", "-format=json", "nv/version").stdout)["data"]
    assert answer["version"] == ""                       # it serves, and reports no version
    again = rel.register("--mount", "nv")                # idempotent, as for a versioned plugin
    assert again.returncode == 0, again.stderr
    assert "nv/ already runs unversioned: left unchanged" in again.stdout
    pinned = rel.register("--pin")
    assert pinned.returncode == 2 and "--pin: the plugin reports no version" in pinned.stderr


@pytest.mark.parametrize("broken", ["no-valid-version", "not-a-plugin", "checksum"])
def test_register_fails_when_openbao_could_not_run_the_launcher(bao_dev, tmp_path, broken):
    name = f"cannot-run-{broken}"
    rel = openbao.Release(bao_dev, tmp_path / "r", name)      # its versions dir stays empty
    args = ["--mount", name]
    if broken == "not-a-plugin":
        rel.launcher.write_text("#!/bin/sh\necho 'not a plugin' >&2\nexit 3\n")
    elif broken == "checksum":
        args += ["--sha256", "0" * 64, "--command", rel.command]
    offset = bao_dev.log_size()
    if broken == "checksum":
        done = openbao.shim("register", "secret", name, *args, env=rel.env)
    else:
        done = rel.register(*args)
    assert done.returncode == 2, done.stdout
    assert done.stdout == ""
    assert "could not run the launcher" in done.stderr
    assert "Error determining plugin version" in done.stderr
    assert f"the active node ({bao_dev.addr})" in done.stderr and "vault-plugin-shim doctor" in done.stderr
    # ... and the server's own reason, from the trial mount (an unversioned plugin would serve there)
    assert "a trial mount that makes it start the plugin failed" in done.stderr
    assert ("checksums did not match" if broken == "checksum" else "HTTP 400") in done.stderr
    assert openbao.catalog_entries(bao_dev, "secret", name) == {}      # probe entry removed
    assert f"{name}/" not in mounts(bao_dev) and f"vault-plugin-shim-probe-{name}/" not in mounts(bao_dev)
    openbao.wait_for_log(bao_dev, "Error determining plugin version", offset)
    # OpenBao drops the launcher's stderr at registration; the trial mount's launch logs it.
    if broken == "no-valid-version":
        openbao.wait_for_log(bao_dev, "no version of secret plugin", offset)
    if broken != "checksum":
        doctor = openbao.shim("doctor", "--launcher", rel.launcher, "--no-interpreter-check", env=rel.env)
        assert doctor.returncode == 1


def test_register_with_version_also_fails_when_the_launcher_could_not_run(bao_dev, tmp_path):
    """With --version, OpenBao would silently record the requested version."""
    rel = openbao.Release(bao_dev, tmp_path / "r", "cannot-run-versioned")
    done = rel.register("--version", "1.0.0")
    assert done.returncode == 2 and "could not run the launcher" in done.stderr
    assert openbao.catalog_entries(bao_dev, "secret", rel.name) == {}


# --- item 4: a bare version -----------------------------------------------------------------

@pytest.fixture(scope="module")
def bare_plugin(tmp_path_factory, go_cache):
    """The demo secret plugin built to report "1.0.0" (no v): what OpenBao accepts at
    registration and then never finds."""
    from shim.demo import gobuild

    try:
        return gobuild.go_build("bao-secret", f"{gobuild.BAOPLUGIN_IMPORT}/cmd/secret",
                                ldflags="-X main.version=1.0.0", dest_dir=tmp_path_factory.mktemp("bare"),
                                name="bao-secret-bare", cache_dir=go_cache,
                                trees={gobuild.BAOPLUGIN_IMPORT: gobuild.BAOPLUGIN_DIR},
                                patch_go_plugin=True)
    except gobuild.GoUnavailable as exc:
        pytest.fail(str(exc), pytrace=False)


@pytest.mark.parametrize("version_flag", [(), ("--version", "1.0.0")])
def test_plugin_reporting_a_bare_version_is_refused_with_the_real_fix(bao_dev, tmp_path, bare_plugin,
                                                                      version_flag):
    import shutil

    name = "bare" + ("-flag" if version_flag else "")
    rel = openbao.Release(bao_dev, tmp_path / "r", name)
    rel.add(shutil.copy(bare_plugin, rel.versions / "bare-1.0.0"), "1.0.0")
    done = rel.register("--mount", name, *version_flag)
    assert done.returncode == 2, done.stdout
    assert "reports version '1.0.0' without the leading 'v'" in done.stderr
    assert "the plugin must report vX.Y.Z" in done.stderr and "return v1.0.0" in done.stderr
    assert "pass --version 1.0.0" not in done.stderr
    assert openbao.catalog_entries(bao_dev, "secret", name) == {}


def test_bare_version_error_type(bao_dev, tmp_path, bare_plugin):
    import shutil

    from shim.ops.register import apply

    rel = openbao.Release(bao_dev, tmp_path / "r", "bare-api")
    rel.add(shutil.copy(bare_plugin, rel.versions / "bare-1.0.0"), "1.0.0")
    reg = Registration(plugin_type="secret", name=rel.name, command=rel.command, sha256=rel.sha256)
    with pytest.raises(BareVersionError):
        apply(client_for(bao_dev), reg)


# --- item 4: each 400 of the mount step has its own message --------------------------------------

def test_mount_step_400s_are_told_apart(bao_dev, release):
    done = release.register()
    assert done.returncode == 0, done.stderr
    server = detect_server(client_for(bao_dev))
    reg = Registration(plugin_type="secret", name=release.name, command=release.command,
                       sha256=release.sha256, mount_path="m-notfound")

    with pytest.raises(MountStepError) as info:           # no such catalog version
        enable_mount(client_for(bao_dev), reg, "v9.9.9", server)
    assert "plugin not found in the catalog" in info.value.reason
    assert "has no entry secret/" in info.value.fix and "taken or reserved" not in info.value.fix

    for binary in release.versions.iterdir():             # the launcher now refuses: no versions
        binary.rename(release.root / binary.name)
    with pytest.raises(MountStepError) as info:
        enable_mount(client_for(bao_dev), reg.__class__(**{**reg.__dict__, "mount_path": "m-refused"}),
                     "v1.0.0", server)
    assert "refused or failed to start the plugin" in info.value.fix
    assert f"the active node ({bao_dev.addr})" in info.value.fix

    registered = release.sha256
    with open(release.launcher, "ab") as fh:              # the file on the node is not the registered one
        fh.write(b"\n")
    with pytest.raises(MountStepError) as info:
        enable_mount(client_for(bao_dev), reg.__class__(**{**reg.__dict__, "mount_path": "m-checksum"}),
                     "v1.0.0", server)
    assert "checksums did not match" in info.value.reason and f"is not sha256 {registered}" in info.value.fix


@pytest.mark.parametrize("path", ["sys/taken", "kv-occupied/below"])
def test_reserved_or_taken_mount_path_says_so_and_what_was_written(bao_dev, release, path):
    bao_dev.bao("secrets", "enable", "-path=kv-occupied", "kv", check=False)
    done = release.register("--mount", path)
    assert done.returncode == 2
    assert "is taken (or inside/around another mount) or reserved" in done.stderr
    assert (f"Registration half-applied: written: catalog entry secret/{release.name} v1.0.0 -> "
            f"sha256 {release.sha256}. Not written: mount {path}/") in done.stderr


# --- item 4: another launcher's entry --------------------------------------------------------------

def test_reregistering_refuses_to_replace_another_launchers_entry(bao_dev, release, tmp_path, go_cache):
    assert release.register().returncode == 0
    owner = release.sha256
    # A second launcher (other keys, so another sha256) beside it, running the same v1.0.0.
    other = openbao.Release(bao_dev, tmp_path / "other", release.name, command=release.command + "-old")
    other.add(openbao.build_plugin("secret", "1.0.0", other.versions, go_cache), "1.0.0")
    assert other.sha256 != owner

    done = other.register()
    assert done.returncode == 2
    assert f"names sha256 {owner}" in done.stderr and f"replace it with sha256 {other.sha256}" in done.stderr
    assert "--force" in done.stderr
    assert openbao.catalog_entries(bao_dev, "secret", release.name)["v1.0.0"]["sha256"] == owner

    done = other.register("--force")
    assert done.returncode == 0, done.stderr
    assert f"replaced the entry v1.0.0 that named sha256 {owner}" in done.stdout
    assert openbao.catalog_entries(bao_dev, "secret", release.name)["v1.0.0"]["sha256"] == other.sha256


def test_a_new_launcher_whose_plugin_reports_a_new_version_is_refused_without_force(bao_dev, release,
                                                                                     tmp_path, go_cache):
    """Issue 16, item 4: the new launcher's plugin reports v2.0.0, so the entry it would write
    is not the old one's; it used to be added beside it, silently, with the mount left on the
    old launcher."""
    assert release.register("--mount", release.name).returncode == 0
    owner = release.sha256
    other = openbao.Release(bao_dev, tmp_path / "other", release.name, command=release.command + "-new")
    other.add(openbao.build_plugin("secret", "2.0.0", other.versions, go_cache), "2.0.0")

    done = other.register("--mount", release.name)
    assert done.returncode == 2, done.stdout
    assert f"v1.0.0 names sha256 {owner}" in done.stderr and "(another launcher)" in done.stderr
    assert f"add sha256 {other.sha256}" in done.stderr and "--force --pin" in done.stderr
    assert set(openbao.catalog_entries(bao_dev, "secret", release.name)) == {"v1.0.0"}

    done = other.register("--mount", release.name, "--force")   # forced, not pinned: said, not silent
    assert done.returncode == 0, done.stderr
    assert f"left the entry v1.0.0 that names sha256 {owner}" in done.stdout
    assert f"{release.name}/ already runs {release.name} v1.0.0, not this entry" in done.stdout

    done = other.register("--mount", release.name, "--force", "--pin")
    assert done.returncode == 0, done.stderr
    assert mounts(bao_dev)[f"{release.name}/"]["plugin_version"] == "v2.0.0"
    bao_dev.bao("plugin", "reload", f"-plugin={release.name}")
    answer = json.loads(bao_dev.bao("read", "-format=json", f"{release.name}/version").stdout)["data"]
    assert answer["version"] == "v2.0.0"


def test_same_launcher_again_is_idempotent(bao_dev, release):
    assert release.register().returncode == 0
    again = release.register()
    assert again.returncode == 0, again.stderr
    assert "replaced" not in again.stdout


def test_policy_in_args_launcher_with_other_args_is_another_owner(bao_dev, tmp_path, go_cache):
    """Same launcher file (no embedded policy), other trusted keys in the args."""
    rel = openbao.Release(bao_dev, tmp_path / "a", "args-owner", extra_build=("--kind", "python", "--policy-in-args"))
    rel.add(openbao.build_plugin("secret", "1.0.0", rel.versions, go_cache), "1.0.0")
    [args_a] = [w.removeprefix("-args=") for w in rel.build_output.split() if w.startswith("-args=")]
    assert rel.register(f"--arg={args_a}").returncode == 0
    other = openbao.Release(bao_dev, tmp_path / "b", "args-owner", command=rel.command,
                            extra_build=("--kind", "python", "--policy-in-args"))
    other.add(openbao.build_plugin("secret", "1.0.0", other.versions, go_cache), "1.0.0")
    assert other.sha256 == rel.sha256
    [args_b] = [w.removeprefix("-args=") for w in other.build_output.split() if w.startswith("-args=")]
    done = other.register(f"--arg={args_b}")
    assert done.returncode == 2 and "args=" in done.stderr and "--force" in done.stderr


# --- item 4: --pin on OpenBao -----------------------------------------------------------------------

def test_pin_on_openbao_tunes_every_mount_of_the_name(bao_dev, release, go_cache):
    assert release.register("--mount", f"{release.name}-a").returncode == 0
    bao_dev.bao("secrets", "enable", f"-path={release.name}-b", "-plugin-version=v1.0.0", release.name)
    release.add(openbao.build_plugin("secret", "1.1.0", release.versions, go_cache), "1.1.0")

    done = release.register("--pin")
    assert done.returncode == 0, done.stderr
    assert "catalog version: v1.1.0" in done.stdout
    for suffix in ("a", "b"):
        path = f"{release.name}-{suffix}/"
        assert f"tuned {path} to plugin_version v1.1.0 (OpenBao 2.7.2 has no plugin pins)" in done.stdout
        assert mounts(bao_dev)[path]["plugin_version"] == "v1.1.0"
    bao_dev.bao("plugin", "reload", f"-plugin={release.name}")
    answer = json.loads(bao_dev.bao("read", "-format=json", f"{release.name}-a/version").stdout)["data"]
    assert answer["version"] == "v1.1.0"


def test_pin_that_cannot_tune_says_exactly_what_was_written(bao_dev, release, go_cache):
    assert release.register("--mount", release.name).returncode == 0
    release.add(openbao.build_plugin("secret", "1.1.0", release.versions, go_cache), "1.1.0")
    policy = (f'path "sys/plugins/catalog/secret/{release.name}" '
              '{ capabilities = ["create", "read", "update", "delete", "sudo"] }\n'
              'path "sys/plugins/catalog" { capabilities = ["read"] }\n'
              'path "sys/mounts" { capabilities = ["read"] }\n')
    policy_file = release.root / "policy.hcl"
    policy_file.write_text(policy)
    bao_dev.bao("policy", "write", f"{release.name}-p", str(policy_file))
    token = bao_dev.bao("token", "create", f"-policy={release.name}-p", "-field=token").stdout.strip()
    done = release.register("--pin", env=openbao.cli_env(bao_dev, VAULT_TOKEN=token, BAO_TOKEN=token))
    assert done.returncode == 2
    assert "HTTP 403" in done.stderr and f"sys/mounts/{release.name}/tune" in done.stderr
    assert (f"written: catalog entry secret/{release.name} v1.1.0 -> sha256 {release.sha256}. "
            f"Not written: tune of {release.name}/ (still on the version they had)") in done.stderr
    assert mounts(bao_dev)[f"{release.name}/"]["plugin_version"] == "v1.0.0"


def test_server_is_detected_as_openbao(bao_dev):
    info = detect_server(client_for(bao_dev))
    assert info.product == "openbao" and info.version == bao_dev.health()[1]["version"]
    assert info.has_plugin_pins is False
    # and indeed there are no pins here
    missing = bao_dev.bao("write", "sys/plugins/pins/secret/x", "version=v1.0.0", check=False)
    assert "Code: 404" in missing.stderr


# --- real 403 / sealed (formerly only against the fake) ---------------------------------------------

def test_403_without_sudo_names_sudo_on_the_catalog_path(bao_dev, release):
    policy_file = release.root / "nosudo.hcl"
    policy_file.write_text(f'path "sys/plugins/catalog/secret/{release.name}" '
                           '{ capabilities = ["create", "update", "read"] }\n')
    bao_dev.bao("policy", "write", "nosudo", str(policy_file))
    token = bao_dev.bao("token", "create", "-policy=nosudo", "-field=token").stdout.strip()
    done = release.register(env=openbao.cli_env(bao_dev, VAULT_TOKEN=token, BAO_TOKEN=token))
    assert done.returncode == 2 and done.stdout == ""
    assert "HTTP 403" in done.stderr and "permission denied" in done.stderr
    assert "sudo" in done.stderr and f"sys/plugins/catalog/secret/{release.name}" in done.stderr


def test_launcher_file_missing_on_the_node(bao_dev, release):
    release.launcher.unlink()
    reg_file = release.root / release.command
    reg_file.write_bytes(b"#!/bin/sh\n")
    done = openbao.shim("register", "secret", release.name, "--launcher", reg_file, env=release.env)
    assert done.returncode == 2
    assert f"has no file {release.command} in its plugin_directory" in done.stderr, done.stderr


def test_sha256_file_matches_what_openbao_checks(release):
    assert sha256_file(release.launcher) == release.sha256


def test_sealed_server_says_unseal(tmp_path, release):
    from shim.demo import bao

    with openbao.started(bao.DevServer(tmp_path / "sealed")) as server:
        server.bao("operator", "seal")
        done = openbao.shim("register", "secret", release.name, "--launcher", release.launcher,
                            "--command", release.command, env=openbao.cli_env(server))
        assert done.returncode == 2
        assert "HTTP 503" in done.stderr and "unseal" in done.stderr, done.stderr


def test_token_file_and_namespace(bao_dev, release, tmp_path):
    """~/.vault-token is used when VAULT_TOKEN is unset, and VAULT_NAMESPACE reaches every call:
    the mount lands in the namespace, not in the root."""
    home = tmp_path / "home"
    home.mkdir()
    (home / ".vault-token").write_text(bao_dev.token + "\n")
    bao_dev.bao("namespace", "create", "team-a", check=False)
    env = {k: v for k, v in openbao.cli_env(bao_dev).items() if not k.endswith("_TOKEN")}
    env.update(HOME=str(home), VAULT_NAMESPACE="team-a")
    done = release.register("--mount", release.name, env=env)
    assert done.returncode == 0, done.stderr
    in_ns = json.loads(bao_dev.bao("secrets", "list", "-format=json",
                                   env=bao_dev.env(BAO_NAMESPACE="team-a", VAULT_NAMESPACE="team-a")).stdout)
    assert f"{release.name}/" in in_ns and f"{release.name}/" not in mounts(bao_dev)


def test_the_recipes_policy_is_enough_on_a_real_server(bao_dev, release):
    """build/k8s/register-policy.hcl, loaded into OpenBao as it stands (the plugin name put
    in), gives a token that can register, pin and mount, and nothing here needs root."""
    from pathlib import Path

    recipe = (Path(__file__).resolve().parents[2] / "build" / "k8s" / "register-policy.hcl").read_text()
    policy_file = release.root / "register-policy.hcl"
    policy_file.write_text(recipe.replace("myplugin", release.name))
    bao_dev.bao("policy", "write", f"register-{release.name}", str(policy_file))
    token = bao_dev.bao("token", "create", f"-policy=register-{release.name}", "-ttl=15m",
                        "-field=token").stdout.strip()
    env = openbao.cli_env(bao_dev, VAULT_TOKEN=token, BAO_TOKEN=token)
    done = release.register("--mount", release.name, env=env)
    assert done.returncode == 0, done.stderr
    done = release.register("--mount", release.name, "--pin", env=env)  # again, with --pin: tunes
    assert done.returncode == 0, done.stderr
    answer = json.loads(bao_dev.bao("read", "-format=json", f"{release.name}/version").stdout)["data"]
    assert answer["version"] == "v1.0.0"


def _recipe_token(bao_dev, name: str, root) -> str:
    from pathlib import Path

    recipe = (Path(__file__).resolve().parents[2] / "build" / "k8s" / "register-policy.hcl").read_text()
    policy_file = Path(root) / "register-policy.hcl"
    policy_file.write_text(recipe.replace("myplugin", name))
    bao_dev.bao("policy", "write", f"register-{name}", str(policy_file))
    return bao_dev.bao("token", "create", f"-policy=register-{name}", "-ttl=15m", "-field=token").stdout.strip()


def test_the_recipes_policy_tunes_only_the_plugins_mount(bao_dev, release):
    """Issue 16, item 6: `token capabilities`, asked of OpenBao itself, for the recipe's token."""
    token = _recipe_token(bao_dev, release.name, release.root)

    def caps(path: str) -> set[str]:
        done = bao_dev.bao("token", "capabilities", token, path)
        return set(done.stdout.strip().split(", "))

    for other in ("sys/mounts/secret/tune", "sys/mounts/kv/tune", "sys/mounts/sys/tune", "sys/auth/token/tune",
                  f"sys/mounts/{release.name}-other/tune", "sys/mounts/other", "sys/plugins/catalog/secret/other"):
        assert caps(other) == {"deny"}, other
    assert caps(f"sys/mounts/{release.name}/tune") == {"update"}
    assert "sudo" in caps(f"sys/plugins/catalog/secret/{release.name}")


def test_the_recipes_policy_registers_an_unversioned_plugin(bao_dev, tmp_path, unversioned_plugin):
    import shutil

    rel = openbao.Release(bao_dev, tmp_path / "r", "nv-recipe")
    rel.add(shutil.copy(unversioned_plugin, rel.versions / "nv-1.0.0"), "1.0.0")
    token = _recipe_token(bao_dev, rel.name, rel.root)
    done = rel.register("--mount", rel.name, env=openbao.cli_env(bao_dev, VAULT_TOKEN=token, BAO_TOKEN=token))
    assert done.returncode == 0, done.stderr
    assert f"vault-plugin-shim-probe-{rel.name}/" not in mounts(bao_dev)


# --- issue 16, item 9: conventions: exit codes as the vault CLI's, --json, which token -------------

def test_exit_codes_are_the_vault_clis(bao_dev, release):
    """bao (like vault) exits 1 for a usage or local error and 2 for an error of the server; so
    does every command here, checked side by side with the real `bao`."""
    down = openbao.cli_env(bao_dev, VAULT_ADDR="http://127.0.0.1:1", BAO_ADDR="http://127.0.0.1:1")
    assert bao_dev.bao("read", "sys/plugins/catalog", env=down, check=False).returncode == 2
    assert bao_dev.bao("read", check=False).returncode == 1
    assert release.register(env=down).returncode == 2                       # the server: unreachable
    assert openbao.shim("register", "secret", env=release.env).returncode == 1   # usage
    missing = openbao.shim("register", "secret", release.name, "--launcher", "/nonexistent", env=release.env)
    assert missing.returncode == 1 and "does not exist" in missing.stderr      # local
    assert openbao.shim("verify", "--bogus", env=release.env).returncode == 1
    assert openbao.shim("launcher", "inspect", "/nonexistent", env=release.env).returncode == 1


def test_a_bad_token_is_not_reported_as_lacking_sudo(bao_dev, release):
    env = openbao.cli_env(bao_dev, VAULT_TOKEN="s.not-a-token", BAO_TOKEN="s.not-a-token")
    for extra in ((), ("--mount", release.name)):       # the first call refused: the catalog, or sys/mounts
        done = release.register(*extra, env=env)
        assert done.returncode == 2
        assert "the token itself is not valid" in done.stderr and "lacks sudo" not in done.stderr
        assert "vault login" in done.stderr and "needs read on sys/mounts" not in done.stderr


def test_dry_run_names_the_variable_the_token_came_from(bao_dev, release):
    env = {k: v for k, v in release.env.items() if k != "VAULT_TOKEN"}
    env["BAO_TOKEN"] = bao_dev.token
    done = release.register("--dry-run", env=env)
    assert done.returncode == 0 and "token from BAO_TOKEN" in done.stdout and "VAULT_TOKEN" not in done.stdout
    plan = json.loads(release.register("--dry-run", "--json", env=env).stdout)
    assert [c["method"] for c in plan][:2] == ["PUT", "POST"] and plan[1]["conditional"] is True


def test_register_json(bao_dev, release):
    done = release.register("--mount", release.name, "--json")
    assert done.returncode == 0, done.stderr
    doc = json.loads(done.stdout)
    assert doc["version"] == doc["reported_version"] == "v1.0.0" and doc["sha256"] == release.sha256
    assert doc["server"] == {"product": "openbao", "version": bao_dev.health()[1]["version"]}
    assert doc["mount"] == {"path": f"{release.name}/", "state": "created", "version": None}
