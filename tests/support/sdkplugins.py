"""Test-side helpers for the SDK plugins (shim/demo/sdkplugin, built by shim/demo/gomod).

API:
    build(tmp_path_factory, kinds=KINDS, versions=VERSIONS, mux=(False, True))
                                     -> {(kind, version, mux): Path}; pytest.fail if Go is missing
    plugin_type(kind)                -> OpenBao's plugin type ("secret", "auth", "database")
    Engine(server, kind, name, mount) -> a backend mount's paths (version, kv) as OpenBao serves them
    Database(server, engine, users)  -> a database secrets engine with connections to a plugin
    plugin_processes(server, name)   -> PIDs under the server whose exe is a build of ``name``
                                        (its file in plugin_directory, or a launcher's sealed copy)
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from shim.demo import bao, gobuild, gomod
from tests.support import baoplugins as bp

KINDS = tuple(gomod.SDK_PLUGINS)
BACKEND_KINDS = ("secret", "auth", "vaultsdk")
VERSIONS = ("1.0.0", "2.0.0")


def cache_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.getbasetemp() / "gopeer-cache"


def build(tmp_path_factory, kinds=KINDS, versions=VERSIONS, mux=(False, True)) -> dict:
    out = tmp_path_factory.mktemp("sdk-plugins")
    try:
        return {(k, v, m): gomod.build_sdk_plugin(k, v, out, multiplex=m, cache_dir=cache_dir(tmp_path_factory))
                for k in kinds for v in versions for m in mux}
    except gobuild.GoUnavailable as exc:
        pytest.fail(str(exc), pytrace=False)


def plugin_type(kind: str) -> str:
    return gomod.SDK_PLUGINS[kind][2]


def plugin_processes(server: bao.Server, name: str) -> list[int]:
    """Plugin processes of ``name`` (direct: exe in plugin_directory named ``name``...; through a
    launcher: exe /memfd:<name>-<version>)."""
    out = []
    for pid in bao.descendants(server.pid):
        try:
            exe = os.readlink(f"/proc/{pid}/exe")
        except OSError:
            continue
        base = os.path.basename(exe).removeprefix("memfd:")
        if base.startswith(name) and not base.startswith(f"{name}-launcher"):
            out.append(pid)
    return sorted(out)


class Engine:
    """A mount of a backend plugin (secrets engine or auth method)."""

    def __init__(self, server: bao.Server, kind: str, name: str, mount: str):
        self.server, self.kind, self.name, self.mount = server, kind, name, mount
        self.type = plugin_type(kind)

    def enable(self) -> "Engine":
        bp.enable(self.server, self.type, self.name, self.mount)
        return self

    def disable(self) -> None:
        what = "auth" if self.type == "auth" else "secrets"
        self.server.bao(what, "disable", self.mount, check=False)

    def path(self, rest: str) -> str:
        return bp.api_path(self.type, self.mount, rest)

    def version(self) -> dict:
        return bp.read(self.server, self.path("version")) or {}

    def write(self, key: str, value: str) -> dict:
        return bp.write(self.server, self.path(f"kv/{key}"), value=value)["data"]

    def read(self, key: str) -> dict | None:
        return bp.read(self.server, self.path(f"kv/{key}"))

    def keys(self) -> list[str]:
        res = self.server.bao("list", "-format=json", self.path("kv/"), check=False)
        return json.loads(res.stdout) if res.returncode == 0 else []


class Database:
    """A database secrets engine at ``engine`` whose connections use the plugin ``name``."""

    def __init__(self, server: bao.Server, engine: str, users: Path):
        self.server, self.engine, self.users = server, engine, users
        users.mkdir(parents=True, exist_ok=True)
        server.bao("secrets", "enable", f"-path={engine}", "database")

    def connect(self, conn: str, name: str) -> None:
        d = self.users / conn
        d.mkdir(exist_ok=True)
        self.server.bao("write", f"{self.engine}/config/{conn}", f"plugin_name={name}", f"directory={d}",
                        f"allowed_roles={conn}-r")
        self.server.bao("write", f"{self.engine}/roles/{conn}-r", f"db_name={conn}", "creation_statements=GRANT",
                        "default_ttl=1h")

    def creds(self, conn: str) -> dict:
        return json.loads(self.server.bao("read", "-format=json", f"{self.engine}/creds/{conn}-r").stdout)

    def user_file(self, conn: str, username: str) -> Path:
        return self.users / conn / f"{username}.json"

    def disable(self) -> None:
        self.server.bao("secrets", "disable", self.engine, check=False)
