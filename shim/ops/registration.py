"""What ``register`` asks of Vault, before anything is sent: the request
(:class:`Registration`, checked as it is made) and the plan (:func:`plan`, pure), which is
what ``register --dry-run`` prints (:func:`render_dry_run`) and what
:func:`shim.ops.register.apply` sends, call by call, through hvac."""

from __future__ import annotations

import json
import re
import shlex
from dataclasses import dataclass
from pathlib import Path

from shim.goplugin.vault import PLUGIN_TYPES
from shim.ops.errors import LauncherFileError, RegistrationError
from shim.ops.vaultenv import ServerInfo, VaultEnv
from shim.trust.manifest import NAME_RE, SEMVER_RE, SHA256_RE, strip_v
from shim.trust.verify import digest_file

_ENV_KEY = re.compile(r"\A[A-Za-z_][A-Za-z0-9_]*\Z", re.ASCII)
RECORDED = "<reported version>"
# Requested in the probe write; no plugin reports it, so a working launcher gets a mismatch.
PROBE_VERSION = "v0.0.0-vault-plugin-shim.probe"
# Where the probe entry is enabled for a moment when the plugin reported no version.
TRIAL_MOUNT = "vault-plugin-shim-probe-{name}"
UNVERSIONED = "(unversioned)"

DATABASE_NOTE = (
    "database plugins are not mounted: enable the database secrets engine once "
    "(`vault secrets enable database`) and name the plugin in a connection: "
    "`vault write database/config/<connection> plugin_name=<name> "
    "[plugin_version=<version>] allowed_roles=... <plugin-specific settings>`")


# --- the request -----------------------------------------------------------------------

@dataclass(frozen=True)
class Registration:
    """What to put in the catalog (and optionally pin and mount)."""

    plugin_type: str
    name: str
    command: str
    sha256: str
    args: tuple[str, ...] = ()
    env: tuple[str, ...] = ()
    version: str = ""
    pin: bool = False
    mount_path: str | None = None
    description: str = ""

    def __post_init__(self):
        if self.plugin_type not in PLUGIN_TYPES:
            raise RegistrationError(f"unknown plugin type {self.plugin_type!r}",
                                    fix="use one of: " + ", ".join(PLUGIN_TYPES))
        if not NAME_RE.match(self.name) or ".." in self.name:
            raise RegistrationError(f"plugin name {self.name!r} is not a valid catalog name",
                                    fix="use letters, digits, '.', '_' and '-' only")
        if not NAME_RE.match(self.command) or ".." in self.command:
            raise RegistrationError(
                f"command {self.command!r} must be a bare file name",
                fix="Vault resolves the command inside its plugin_directory and splits it on "
                    "spaces: give the launcher's file name there (arguments go in --arg)")
        if not SHA256_RE.match(self.sha256):
            raise RegistrationError(f"sha256 {self.sha256!r} is not 64 lower-case hex digits",
                                    fix="pass the launcher file (--launcher) or its hex SHA-256 (--sha256)")
        for item in self.env:
            key, sep, _ = item.partition("=")
            if not sep or not _ENV_KEY.match(key):
                raise RegistrationError(f"environment entry {item!r} is not KEY=VALUE",
                                        fix="write each --env as NAME=value")
        if self.version and not SEMVER_RE.match(strip_v(self.version)):
            raise RegistrationError(f"version {self.version!r} is not a semantic version",
                                    fix="use the form v1.2.3 (or leave --version out)")
        if self.version and not self.version.startswith("v"):
            object.__setattr__(self, "version", "v" + self.version)   # Vault's canonical form
        if self.version.endswith("+builtin") or "+builtin." in self.version:
            raise RegistrationError(f"version {self.version!r} uses the reserved 'builtin' metadata",
                                    fix="drop the +builtin suffix")
        if self.mount_path is not None:
            if self.plugin_type == "database":
                raise RegistrationError("--mount does not apply to database plugins", fix=DATABASE_NOTE)
            path = self.mount_path.strip("/")
            if not path or ".." in path.split("/") or any(c.isspace() for c in path):
                raise RegistrationError(f"mount path {self.mount_path!r} is not usable",
                                        fix="give a path such as my-plugin or team/my-plugin")
            object.__setattr__(self, "mount_path", path)

    @property
    def catalog_path(self) -> str:
        return f"sys/plugins/catalog/{self.plugin_type}/{self.name}"

    @property
    def pin_path(self) -> str:
        return f"sys/plugins/pins/{self.plugin_type}/{self.name}"

    @property
    def mounts_path(self) -> str:
        return "sys/auth" if self.plugin_type == "auth" else "sys/mounts"

    def catalog_body(self) -> dict:
        body: dict = {"sha256": self.sha256, "command": self.command,
                      "args": list(self.args), "env": list(self.env)}
        if self.version:
            body["version"] = self.version
        return body

    def mount_body(self, version: str | None = None) -> dict:
        """The enable request. The version goes in ``config.plugin_version`` (what OpenBao
        2.x reads; it ignores a top-level one and picks an entry itself) and top-level too
        (Vault's documented field; both equal is accepted)."""
        body: dict = {"type": self.name}
        if self.description:
            body["description"] = self.description
        if version or self.version:
            body["plugin_version"] = version or self.version
            body["config"] = {"plugin_version": version or self.version}
        return body


def sha256_file(path: str | Path) -> str:
    """Hex SHA-256 of the file, as go-plugin's SecureConfig computes it before each launch."""
    try:
        return digest_file(str(path))[0]
    except FileNotFoundError:
        raise LauncherFileError("the launcher file does not exist", path=str(path)) from None
    except IsADirectoryError:
        raise LauncherFileError("the launcher path is a directory, not a file", path=str(path)) from None
    except OSError as exc:
        raise LauncherFileError(f"cannot read the launcher: {exc.strerror}", path=str(path)) from exc


# --- the plan (pure) -----------------------------------------------------------------

@dataclass(frozen=True)
class ApiCall:
    """One HTTP call and the vault CLI command that does the same."""

    step: str
    method: str
    path: str
    body: dict | None
    cli: str
    note: str = ""
    conditional: bool = False
    query: str = ""

    @property
    def target(self) -> str:
        return f"/v1/{self.path}" + (f"?{self.query}" if self.query else "")


def _q(*words: str) -> str:
    return " ".join(shlex.quote(w) for w in words)


def plan(reg: Registration, server: ServerInfo | None = None) -> list[ApiCall]:
    """The calls :func:`apply` makes with the token, in its order: every check that can
    refuse comes before the catalog write. (Not listed: the unauthenticated reads of
    ``sys/seal-status``, which tells Vault from OpenBao, and ``sys/leader``.) ``server``
    decides how ``--pin`` is done; unknown, both ways are described."""
    calls: list[ApiCall] = []
    kind = "auth" if reg.plugin_type == "auth" else "secrets"
    if reg.mount_path is not None:
        calls.append(ApiCall(f"check what is mounted at {reg.mount_path}/", "GET", reg.mounts_path, None,
                             _q("vault", kind, "list", "-format=json"),
                             "first, so a conflicting mount stops everything before a change"))

    def register_cli(version: str) -> str:
        cli = ["vault", "plugin", "register", f"-sha256={reg.sha256}", f"-command={reg.command}"]
        cli += [f"-args={a}" for a in reg.args]
        cli += [f"-env={e}" for e in reg.env]
        return _q(*cli, f"-version={version}", reg.plugin_type, reg.name)

    probe_body = {**reg.catalog_body(), "version": PROBE_VERSION}
    calls.append(ApiCall("learn the version the plugin reports, writing nothing (sudo)", "PUT",
                         reg.catalog_path, probe_body, register_cli(PROBE_VERSION),
                         "the server runs the launcher on its active node; a working one answers "
                         "`plugin version mismatch: ... reported version (vX.Y.Z)` and nothing is "
                         "stored" + (f"; it must report {reg.version}" if reg.version else "")))
    if reg.plugin_type != "database":
        trial = TRIAL_MOUNT.format(name=reg.name)
        calls.append(ApiCall(f"only if the probe entry was stored (the plugin reports no version, or the "
                             f"launcher did not run): run it by enabling it at {trial}/", "POST",
                             f"{reg.mounts_path}/{trial}",
                             {"type": reg.name, "plugin_version": PROBE_VERSION,
                              "config": {"plugin_version": PROBE_VERSION}},
                             _q("vault", kind, "enable", f"-path={trial}", f"-plugin-version={PROBE_VERSION}",
                                reg.name),
                             "it serves: an unversioned plugin, registered without a version; it fails: "
                             "the server's reason is reported and nothing is registered", conditional=True))
        calls.append(ApiCall(f"then disable {trial}/ again", "DELETE", f"{reg.mounts_path}/{trial}", None,
                             _q("vault", kind, "disable", trial), conditional=True))
    calls.append(ApiCall("only if the probe entry was stored: remove it", "DELETE", reg.catalog_path, None,
                         _q("vault", "plugin", "deregister", f"-version={PROBE_VERSION}",
                            reg.plugin_type, reg.name), conditional=True, query=f"version={PROBE_VERSION}"))
    version = reg.version or RECORDED
    calls.append(ApiCall("compare with every entry of the name", "GET", "sys/plugins/catalog", None,
                         _q("vault", "plugin", "list", "-detailed", "-format=json"),
                         "another launcher's sha256 (or args) at any version: refuse unless --force; "
                         "each entry of the name is then read (`vault plugin info -version=V "
                         f"{reg.plugin_type} {reg.name}`)"))
    calls.append(ApiCall("register the launcher in the plugin catalog (sudo)", "PUT",
                         reg.catalog_path, {**reg.catalog_body(), "version": version},
                         register_cli(version),
                         "" if reg.version else f"{RECORDED}: what the probe learned"))
    if reg.pin:
        if server is None or server.has_plugin_pins is not False:
            calls.append(ApiCall("pin every mount of this plugin to that entry (Vault 1.16+)", "POST",
                                 reg.pin_path, {"version": version},
                                 _q("vault", "write", reg.pin_path, f"version={version}"),
                                 "" if server is not None else
                                 "OpenBao has no pins: there each mount of the name is moved with "
                                 f"`bao {kind} tune -plugin-version={version} <path>` instead"))
        else:
            calls.append(ApiCall(f"move each mount of {reg.name} to that entry ({server.label} has no "
                                 f"plugin pins)", "POST", f"{reg.mounts_path}/<each mount of {reg.name}>/tune",
                                 {"plugin_version": version},
                                 _q("vault", kind, "tune", f"-plugin-version={version}", "<path>"),
                                 "the mounts found in the listing; each runs it after `plugin reload`"))
    if reg.mount_path is not None:
        enable = ["vault", kind, "enable", f"-path={reg.mount_path}", f"-plugin-version={version}"]
        if reg.description:
            enable.append(f"-description={reg.description}")
        enable.append(reg.name)
        calls.append(ApiCall(f"enable the plugin at {reg.mount_path}/", "POST",
                             f"{reg.mounts_path}/{reg.mount_path}", reg.mount_body(version), _q(*enable),
                             "only if nothing is mounted there", conditional=True))
    return calls


def render_dry_run(reg: Registration, env: VaultEnv | None = None) -> str:
    """The text ``register --dry-run`` prints: CLI commands and HTTP calls, nothing sent."""
    out = ["# vault-plugin-shim register --dry-run: nothing was sent to Vault.",
           "# First (no token): GET /v1/sys/seal-status tells Vault from OpenBao (pins or tune)."]
    if env is not None:
        who = f"token from {env.token_source}" if env.token_source else "no token found"
        out.append(f"# Vault address: {env.addr} ({who}; the token is never printed)")
        if env.namespace:
            out.append(f"# Namespace: {env.namespace}: the mount calls go to {env.namespace}/ (as with "
                       f"X-Vault-Namespace: {env.namespace}); the catalog and pins exist only in the "
                       f"root namespace, so those calls carry no namespace (run those `vault` "
                       f"commands with VAULT_NAMESPACE unset)")
    for n, c in enumerate(plan(reg), 1):
        out.append("")
        out.append(f"# {n}. {c.step}")
        if c.note:
            out.append(f"#    {c.note}")
        out.append(c.cli)
        out.append(f"{c.method} {c.target}")
        if c.body is not None:
            out.append(json.dumps(c.body, sort_keys=True))
    if reg.plugin_type == "database":
        out += ["", "# Note: " + DATABASE_NOTE]
    return "\n".join(out) + "\n"


__all__ = ["ApiCall", "DATABASE_NOTE", "PROBE_VERSION", "RECORDED", "Registration", "TRIAL_MOUNT",
           "UNVERSIONED", "plan", "render_dry_run", "sha256_file"]
