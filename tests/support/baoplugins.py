"""Test-side helpers for the demo OpenBao plugins (shim/demo/baoplugin, built by shim/demo/gobuild).

API:
    build(tmp_path_factory, kinds=KINDS, versions=VERSIONS, broker_fix=True)
                                        -> {(kind, version): Path}; pytest.fail if Go is missing
    install(server, binary, command)    -> Path of the copy in the server's plugin_directory
    register_direct(server, kind, name, command, version=None) -> sha256 registered
    plugin_info(server, kind, name)     -> the catalog entry (dict)
    api_path(kind, mount, path)         -> "auth/<mount>/<path>" for auth, else "<mount>/<path>"
    enable(server, kind, name, mount)   -> None (secrets enable / auth enable)
    read(server, path, token=None)      -> the response's "data" (dict), or None on 404
    write(server, path, **data)         -> the whole JSON response (dict, {} if none)
    sha256_file(path)                   -> hex
    cli(*args, env, check=True)         -> run `vault-plugin-shim ARGS` (fails the test on error)
"""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest

from shim.demo import bao, gobuild
from tests.support import openbao
from tests.support.gopeer import sha256_file

KINDS = gobuild.BAO_PLUGIN_KINDS
VERSIONS = ("1.0.0", "2.0.0")


def cache_dir(tmp_path_factory) -> Path:
    # The same cache as tests/conftest.py's go_build fixture: one per session.
    return tmp_path_factory.getbasetemp() / "gopeer-cache"


def build(tmp_path_factory, kinds=KINDS, versions=VERSIONS, broker_fix: bool = True) -> dict:
    try:
        gobuild.require_go(what="the demo OpenBao plugins")
    except gobuild.GoUnavailable as exc:
        pytest.fail(str(exc), pytrace=False)
    out = tmp_path_factory.mktemp("bao-plugins")
    return {(k, v): gobuild.build_bao_plugin(k, v, out, cache_dir=cache_dir(tmp_path_factory),
                                             broker_fix=broker_fix)
            for k in kinds for v in versions}


def install(server: bao.Server, binary: Path, command: str) -> Path:
    dest = server.plugin_dir / command
    tmp = dest.with_name(f".{command}.tmp")
    shutil.copyfile(binary, tmp)
    tmp.chmod(0o755)
    tmp.replace(dest)
    return dest


def register_direct(server: bao.Server, kind: str, name: str, command: str,
                    version: str | None = None) -> str:
    sha = sha256_file(server.plugin_dir / command)
    args = ["plugin", "register", f"-sha256={sha}", f"-command={command}"]
    if version:
        args.append(f"-version={version}")
    server.bao(*args, kind, name)
    return sha


def plugin_info(server: bao.Server, kind: str, name: str, version: str | None = None) -> dict:
    args = ["plugin", "info", "-format=json"]
    if version:
        args.append(f"-version={version}")
    return json.loads(server.bao(*args, kind, name).stdout)  # the CLI prints the data itself


def api_path(kind: str, mount: str, path: str) -> str:
    return f"auth/{mount}/{path}" if kind == "auth" else f"{mount}/{path}"


def enable(server: bao.Server, kind: str, name: str, mount: str) -> None:
    if kind == "auth":
        server.bao("auth", "enable", f"-path={mount}", name)
    else:
        server.bao("secrets", "enable", f"-path={mount}", name)


def read(server: bao.Server, path: str, token: str | None = None) -> dict | None:
    env = server.env(**({"VAULT_TOKEN": token, "BAO_TOKEN": token} if token else {}))
    res = server.bao("read", "-format=json", path, check=False, env=env)
    if res.returncode != 0:
        if "Code: 404" in res.stderr or "No value found" in res.stderr:
            return None
        raise bao.BaoError(f"`bao read {path}` failed ({res.returncode}): {res.stderr.strip()}")
    return json.loads(res.stdout)["data"]


def write(server: bao.Server, path: str, **data: str) -> dict:
    res = server.bao("write", "-format=json", path, *[f"{k}={v}" for k, v in data.items()])
    return json.loads(res.stdout) if res.stdout.strip() else {}


def cli(*args, env: dict[str, str], check: bool = True,
        timeout: float = 120.0) -> subprocess.CompletedProcess:
    """Run the project's CLI as an operator would (tests.support.openbao.shim; checked by default)."""
    return openbao.shim(*args, env=env, check=check, timeout=timeout)
