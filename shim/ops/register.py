"""Register the launcher in Vault's plugin catalog, once.

The catalog entry names the launcher, not a plugin release: its ``sha256`` is the
launcher's and never changes during routine plugin upgrades (the launcher picks and
verifies the real plugin on each pod). So this runs at first install, and again only when
the launcher itself changes (new trusted keys, new launcher release).

Three steps, each optional after the first:

1. ``PUT sys/plugins/catalog/:type/:name`` with ``sha256``, ``command``, ``args``, ``env``
   and ``version`` (sudo required). Vault runs the command once on its active node to learn
   the plugin's type and self-reported version; through the launcher that is the plugin
   currently on that pod. With ``version`` empty Vault records the reported version; with
   one set, the two must match (``plugin version mismatch``).
2. ``POST sys/plugins/pins/:type/:name`` (Vault 1.16+) so every mount of the name runs
   this entry.
3. Enable a mount (``sys/mounts/:path`` for secret plugins, ``sys/auth/:path`` for auth
   plugins) if nothing is mounted there. Database plugins are not mounted: a connection of
   the ``database`` secrets engine names them (``plugin_name``), see :data:`DATABASE_NOTE`.

:func:`plan` is pure (what would be sent, with the equivalent ``vault`` commands) and is
what ``--dry-run`` prints; :func:`apply` sends it through hvac.
"""

from __future__ import annotations

import hashlib
import json
import re
import shlex
from dataclasses import dataclass, field
from pathlib import Path

from shim.errors import ShimError
from shim.ops.vaultenv import (
    VaultEnv,
    VaultOpsError,
    VaultRequestError,
    VaultServerError,
    call,
)

PLUGIN_TYPES = ("secret", "auth", "database")
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
_SEMVER = re.compile(r"^v?\d+\.\d+\.\d+(?:-[0-9A-Za-z.-]+)?(?:\+[0-9A-Za-z.-]+)?$")
_ENV_KEY = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
RECORDED = "<recorded version>"
_MISMATCH = re.compile(r"reported version \((?P<reported>[^)]*)\) did not match requested version \((?P<requested>[^)]*)\)")

DATABASE_NOTE = (
    "database plugins are not mounted: enable the database secrets engine once "
    "(`vault secrets enable database`) and name the plugin in a connection: "
    "`vault write database/config/<connection> plugin_name=<name> "
    "[plugin_version=<version>] allowed_roles=... <plugin-specific settings>`")


class RegistrationError(ShimError):
    """The registration request itself is inconsistent (caught before anything is sent)."""


class LauncherFileError(ShimError):
    """The launcher file to hash cannot be read."""

    default_fix = "pass the launcher file exactly as it is installed in Vault's plugin_directory"


class PluginVersionMismatchError(VaultRequestError):
    """Vault ran the launcher; the plugin it started reports another version."""

    def __init__(self, name: str, reported: str, requested: str):
        self.reported, self.requested = reported, requested
        super().__init__(
            f"Vault registered nothing: to learn the version it ran the launcher on its active "
            f"node, which started the plugin currently installed there; {name} reported "
            f"version {reported} but --version asked for {requested} (plugin version mismatch)",
            fix=(f"with the shim the catalog entry is the launcher, not a plugin release: leave "
                 f"--version out (Vault then records {reported}, the version the plugin reports), "
                 f"or pass --version {reported}"))


class MountConflictError(VaultOpsError):
    """The mount path is already used by something else."""


class PinAmbiguousError(VaultOpsError):
    """--pin without --version, and the catalog does not say which version to pin."""


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
        if not _NAME.match(self.name) or ".." in self.name:
            raise RegistrationError(f"plugin name {self.name!r} is not a valid catalog name",
                                    fix="use letters, digits, '.', '_' and '-' only")
        if not _NAME.match(self.command) or ".." in self.command:
            raise RegistrationError(
                f"command {self.command!r} must be a bare file name",
                fix="Vault resolves the command inside its plugin_directory and splits it on "
                    "spaces: give the launcher's file name there (arguments go in --arg)")
        if not re.fullmatch(r"[0-9a-f]{64}", self.sha256):
            raise RegistrationError(f"sha256 {self.sha256!r} is not 64 lower-case hex digits",
                                    fix="pass the launcher file (--launcher) or its hex SHA-256 (--sha256)")
        for item in self.env:
            key, sep, _ = item.partition("=")
            if not sep or not _ENV_KEY.match(key):
                raise RegistrationError(f"environment entry {item!r} is not KEY=VALUE",
                                        fix="write each --env as NAME=value")
        if self.version and not _SEMVER.match(self.version):
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
        body: dict = {"type": self.name}
        if self.description:
            body["description"] = self.description
        if version or self.version:
            body["plugin_version"] = version or self.version
        return body


def sha256_file(path: str | Path) -> str:
    """Hex SHA-256 of the file, as go-plugin's SecureConfig computes it before each launch."""
    digest = hashlib.sha256()
    try:
        with open(path, "rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                digest.update(chunk)
    except FileNotFoundError:
        raise LauncherFileError("the launcher file does not exist", path=str(path)) from None
    except IsADirectoryError:
        raise LauncherFileError("the launcher path is a directory, not a file", path=str(path)) from None
    except OSError as exc:
        raise LauncherFileError(f"cannot read the launcher: {exc.strerror}", path=str(path)) from None
    return digest.hexdigest()


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


def _q(*words: str) -> str:
    return " ".join(shlex.quote(w) for w in words)


def plan(reg: Registration) -> list[ApiCall]:
    """The calls :func:`apply` makes, in its order (the mount check first, so a conflicting
    mount stops everything before a change)."""
    calls: list[ApiCall] = []
    kind = "auth" if reg.plugin_type == "auth" else "secrets"
    if reg.mount_path is not None:
        calls.append(ApiCall(f"check what is mounted at {reg.mount_path}/", "GET", reg.mounts_path, None,
                             _q("vault", kind, "list", "-format=json"),
                             "first, so a conflicting mount stops everything before a change"))
    cli = ["vault", "plugin", "register", f"-sha256={reg.sha256}", f"-command={reg.command}"]
    cli += [f"-args={a}" for a in reg.args]
    cli += [f"-env={e}" for e in reg.env]
    if reg.version:
        cli.append(f"-version={reg.version}")
    cli += [reg.plugin_type, reg.name]
    version_note = (f"Vault runs the launcher once; the plugin it starts must report {reg.version}"
                    if reg.version else
                    "Vault runs the launcher once and records the version the plugin reports")
    calls.append(ApiCall("register the launcher in the plugin catalog (sudo)", "PUT",
                         reg.catalog_path, reg.catalog_body(), _q(*cli), version_note))
    recorded = reg.version or RECORDED
    if reg.pin:
        calls.append(ApiCall("pin every mount of this plugin to that entry (Vault 1.16+)", "POST",
                             reg.pin_path, {"version": recorded},
                             _q("vault", "write", reg.pin_path, f"version={recorded}"),
                             "" if reg.version else f"{RECORDED}: the one version Vault recorded for "
                             "this launcher, read back with GET /v1/sys/plugins/catalog"))
    if reg.mount_path is not None:
        enable = ["vault", kind, "enable", f"-path={reg.mount_path}", f"-plugin-version={recorded}"]
        if reg.description:
            enable.append(f"-description={reg.description}")
        enable.append(reg.name)
        calls.append(ApiCall(f"enable the plugin at {reg.mount_path}/", "POST",
                             f"{reg.mounts_path}/{reg.mount_path}", reg.mount_body(recorded), _q(*enable),
                             "only if nothing is mounted there"
                             + ("" if reg.version else f"; {RECORDED} as above, left out when "
                                "the plugin reports no version"), conditional=True))
    return calls


def render_dry_run(reg: Registration, env: VaultEnv | None = None) -> str:
    """The text ``register --dry-run`` prints: CLI commands and HTTP calls, nothing sent."""
    out = ["# vault-plugin-shim register --dry-run: nothing was sent to Vault."]
    if env is not None:
        who = f"token from {env.token_source}" if env.token_source else "no token found"
        out.append(f"# Vault address: {env.addr} ({who}; the token is never printed)")
        if env.namespace:
            out.append(f"# Namespace: {env.namespace} (every request carries "
                       f"X-Vault-Namespace: {env.namespace}; `vault` reads VAULT_NAMESPACE)")
    for n, c in enumerate(plan(reg), 1):
        out.append("")
        out.append(f"# {n}. {c.step}")
        if c.note:
            out.append(f"#    {c.note}")
        out.append(c.cli)
        out.append(f"{c.method} /v1/{c.path}")
        if c.body is not None:
            out.append(json.dumps(c.body, sort_keys=True))
    if reg.plugin_type == "database":
        out += ["", "# Note: " + DATABASE_NOTE]
    return "\n".join(out) + "\n"


# --- applying it ---------------------------------------------------------------------

@dataclass
class RegisterResult:
    registered: bool = False
    pinned: bool = False
    pinned_version: str = ""
    mount: str | None = None          # "created" | "present" | None
    recorded_versions: list[str] = field(default_factory=list)

    def summary(self, reg: Registration) -> str:
        lines = [f"registered {reg.plugin_type} plugin {reg.name!r}: command={reg.command} "
                 f"sha256={reg.sha256}"]
        if reg.version:
            lines.append(f"  catalog version: {reg.version}")
        elif self.recorded_versions:
            lines.append("  catalog version as reported by the plugin on the active node: "
                         + ", ".join(self.recorded_versions))
        else:
            lines.append("  catalog version: none (the plugin reports no version)")
        if self.pinned:
            lines.append(f"pinned {reg.plugin_type}/{reg.name} to {self.pinned_version}")
        if self.mount == "created":
            lines.append(f"enabled {reg.name} at {reg.mount_path}/")
        elif self.mount == "present":
            lines.append(f"{reg.mount_path}/ already runs {reg.name}: left unchanged")
        return "\n".join(lines)


def _catalog_failure(reg: Registration):
    def classify(status: int, message: str):
        match = _MISMATCH.search(message)
        if status == 400 and match:
            return PluginVersionMismatchError(reg.name, match["reported"], match["requested"])
        where = f"PUT /v1/{reg.catalog_path} -> HTTP {status}: {message}"
        if "plugin directory is not configured" in message:
            return VaultServerError(f"registering {reg.name} failed ({where})",
                                    fix="set plugin_directory in Vault's server configuration "
                                        "(the vault-helm values in build/helm do) and restart Vault")
        if "outside of configured plugin directory" in message:
            return VaultServerError(f"registering {reg.name} failed ({where})",
                                    fix=f"install the launcher as a regular file directly inside "
                                        f"plugin_directory, named {reg.command} (a symlink must "
                                        f"resolve inside that directory too)")
        if "validating the command path" in message or "no such file" in message:
            return VaultServerError(f"registering {reg.name} failed ({where})",
                                    fix=f"the active Vault node has no file {reg.command} in its "
                                        f"plugin_directory: check the image or volume that ships "
                                        f"the launcher, and --command")
        if "checksums did not match" in message:
            return VaultServerError(f"registering {reg.name} failed ({where})",
                                    fix="the launcher on the active node is not the file hashed "
                                        "here: hash the launcher from the same image/release "
                                        "(or pass its published --sha256)")
        if status >= 500 and ("unable to run plugin" in message or "exited before we could connect"
                              in message or "Unrecognized remote plugin message" in message):
            return VaultServerError(f"registering {reg.name} failed: Vault could not run the launcher ({where})",
                                    fix="the launcher started but refused or failed to start the "
                                        "plugin: read its reason in Vault's server log and run "
                                        "`vault-plugin-shim doctor` in the Vault pod")
        return None
    return classify


def _policy(path: str) -> str:
    return f'path "{path}" {{ capabilities = ["create", "update", "sudo"] }}'


def apply(client, reg: Registration) -> RegisterResult:
    """Send the plan through ``client`` (an ``hvac.Client``). Checks the mount first, so a
    conflicting mount fails before anything is changed."""
    result = RegisterResult()
    adapter = client.adapter

    existing = None
    if reg.mount_path is not None:
        mounts = call(f"listing {reg.mounts_path}", "GET", reg.mounts_path,
                      lambda: adapter.get(f"/v1/{reg.mounts_path}"),
                      fixes={403: f"the token needs read on {reg.mounts_path}: "
                                  f'path "{reg.mounts_path}" {{ capabilities = ["read"] }}'})
        table = mounts.get("data", mounts) if isinstance(mounts, dict) else {}
        existing = table.get(f"{reg.mount_path}/")
        if existing is not None and existing.get("type") != reg.name:
            raise MountConflictError(
                f"{reg.mount_path}/ is already enabled with type {existing.get('type')!r}, not {reg.name!r}",
                fix=f"pick another --mount path, or disable {reg.mount_path}/ first if it is unused")

    call(f"registering {reg.plugin_type} plugin {reg.name} in the catalog", "PUT", reg.catalog_path,
         lambda: adapter.put(f"/v1/{reg.catalog_path}", json=reg.catalog_body()),
         fixes={403: ("the token lacks sudo on the plugin catalog; grant "
                      + _policy(reg.catalog_path) + " (or run this as an admin)")},
         classify=_catalog_failure(reg))
    result.registered = True
    version = reg.version
    if not version:
        result.recorded_versions = _recorded_versions(adapter, reg)
        if len(result.recorded_versions) == 1:
            version = result.recorded_versions[0]
        elif reg.pin:
            found = ", ".join(result.recorded_versions) or "none (the plugin reports no version)"
            raise PinAmbiguousError(
                f"registered, but cannot tell which catalog version of {reg.name} to pin: "
                f"versions pointing at this launcher: {found}",
                fix="pin explicitly: re-run with --version set to the version the plugin on the "
                    "active node reports, or `vault write " + reg.pin_path + " version=<version>`")

    if reg.pin:
        call(f"pinning {reg.plugin_type}/{reg.name} to {version}", "POST", reg.pin_path,
             lambda: adapter.post(f"/v1/{reg.pin_path}", json={"version": version}),
             fixes={403: "the token cannot write pins; grant " + _policy(reg.pin_path),
                    404: "this server has no sys/plugins/pins (it needs Vault 1.16 or newer): "
                         "drop --pin and pass --version so the mount names the version",
                    400: "pin a version that is registered: check `vault plugin list "
                         f"{reg.plugin_type}`"})
        result.pinned = True
        result.pinned_version = version

    if reg.mount_path is not None:
        if existing is not None:
            result.mount = "present"
        else:
            target = f"{reg.mounts_path}/{reg.mount_path}"
            call(f"enabling {reg.name} at {reg.mount_path}/", "POST", target,
                 lambda: adapter.post(f"/v1/{target}", json=reg.mount_body(version)),
                 fixes={403: "the token cannot enable mounts; grant " + _policy(f"{reg.mounts_path}/*"),
                        400: "see Vault's message: the path may be taken or reserved"})
            result.mount = "created"
    return result


def _recorded_versions(adapter, reg: Registration) -> list[str]:
    """Which catalog versions of this name point at our launcher (best effort, read only)."""
    try:
        listing = call("listing the plugin catalog", "GET", "sys/plugins/catalog",
                       lambda: adapter.get("/v1/sys/plugins/catalog"))
    except VaultOpsError:
        return []
    detailed = (listing.get("data") or {}).get("detailed") or [] if isinstance(listing, dict) else []
    return sorted({d.get("version", "") for d in detailed
                   if d.get("type") == reg.plugin_type and d.get("name") == reg.name
                   and d.get("sha256") == reg.sha256 and d.get("version")})


__all__ = [
    "ApiCall", "DATABASE_NOTE", "LauncherFileError", "MountConflictError", "PLUGIN_TYPES", "PinAmbiguousError",
    "PluginVersionMismatchError", "RegisterResult", "Registration", "RegistrationError",
    "apply", "plan", "render_dry_run", "sha256_file",
]
