"""Register the launcher in Vault's plugin catalog, once.

The catalog entry names the launcher, not a plugin release: its ``sha256`` is the
launcher's and never changes during routine plugin upgrades (the launcher picks and
verifies the real plugin on each pod). So this runs at first install, and again only when
the launcher itself changes (new trusted keys, new launcher release).

Steps; each refusal comes before anything is written:

1. ``GET sys/seal-status``: Vault or OpenBao, and which version (:func:`detect_server`).
2. With ``--mount``: what is mounted there (another plugin there: stop).
3. The probe (:func:`probe_version`): ``PUT sys/plugins/catalog/:type/:name`` asking for
   :data:`PROBE_VERSION`. The server runs the command once on its active node to learn the
   plugin's version; through the launcher that is the plugin currently on that node. A
   working launcher fails the write with ``plugin version mismatch`` naming the reported
   version. If the server could not run it (checksum, the launcher refused, no interpreter)
   it stores the entry anyway and only logs ``[WARN] core: Error determining plugin
   version``. A plugin that reports no version (most plugins written before plugin
   versioning) gets the same answer, so only running it tells the two apart: register
   enables the probe entry at a throwaway mount (:func:`trial_mount`, secret and auth
   plugins), where the server starts the plugin and a failure comes back with its reason.
   It serves: the plugin is unversioned, and an unversioned entry is registered. It fails:
   register fails naming the reason (checksum, the launcher refused). The probe entry is
   removed either way. A plugin that reports ``1.2.3`` instead of ``v1.2.3`` is refused
   here too: mounts could never find it.
4. ``GET sys/plugins/catalog``: an entry of the name, at any version, that names another
   sha256 (or command, args) belongs to another launcher, e.g. a re-run of an old Job after
   a key rotation; refused without ``--force``.
5. ``PUT`` the entry with that version (sudo).
6. ``--pin``: ``POST sys/plugins/pins/:type/:name`` on Vault 1.16+. OpenBao has no pins:
   each mount of the name is moved with ``POST sys/mounts/:path/tune`` (``plugin_version``;
   ``secrets tune -plugin-version``), which takes effect at the next plugin reload.
7. Enable a mount (``sys/mounts/:path`` for secret plugins, ``sys/auth/:path`` for auth
   plugins) if nothing is mounted there. Database plugins are not mounted: a connection of
   the ``database`` secrets engine names them (``plugin_name``), see :data:`DATABASE_NOTE`.

A failure after step 5 raises :class:`PartialRegistrationError`, which lists what was
written and what was not.

The request and its plan (what would be sent, with the equivalent ``vault`` commands, and
what ``--dry-run`` prints) are :mod:`shim.ops.registration`, pure; :func:`apply` sends it
through hvac.
"""

from __future__ import annotations

import re
import shlex
from dataclasses import asdict, dataclass, field, replace

from shim.errors import ShimError
from shim.ops.errors import (
    BareVersionError,
    CatalogOwnedError,
    LauncherDidNotRunError,
    MountConflictError,
    MountStepError,
    PartialRegistrationError,
    PluginVersionMismatchError,
    RegistrationError,
    UnversionedPluginError,
    VaultNotFoundError,
    VaultOpsError,
    VaultPermissionError,
    VaultServerError,
)
from shim.trust.manifest import strip_v
from shim.ops.registration import PROBE_VERSION, TRIAL_MOUNT, UNVERSIONED, Registration
from shim.ops.vaultenv import ServerInfo, call, detect_server

_MISMATCH = re.compile(r"reported version \((?P<reported>[^)]*)\) did not match requested version \((?P<requested>[^)]*)\)")


def _catalog_failure(reg: Registration):
    def classify(status: int, message: str):
        match = _MISMATCH.search(message)
        if status == 400 and match:
            return PluginVersionMismatchError(reg.name, match["reported"], match["requested"])
        where = f"PUT /v1/{reg.catalog_path} -> HTTP {status}: {message}"
        if "plugin directory is not configured" in message:
            return VaultServerError(f"registering {reg.name} failed ({where})",
                                    fix="set plugin_directory in the server configuration "
                                        "(the vault-helm values in build/helm do) and restart it")
        if "outside of configured plugin directory" in message:
            return VaultServerError(f"registering {reg.name} failed ({where})",
                                    fix=f"install the launcher as a regular file directly inside "
                                        f"plugin_directory, named {reg.command} (a symlink must "
                                        f"resolve inside that directory too)")
        if "validating the command path" in message or "no such file" in message:
            return VaultServerError(f"registering {reg.name} failed ({where})",
                                    fix=f"the active node has no file {reg.command} in its "
                                        f"plugin_directory: check the image or volume that ships "
                                        f"the launcher, and --command")
        return None
    return classify


# --- applying it ---------------------------------------------------------------------

@dataclass(frozen=True)
class CatalogEntry:
    """What the catalog holds for one (type, name, version)."""

    version: str
    sha256: str
    command: str
    args: tuple[str, ...] = ()

    @classmethod
    def from_api(cls, data: dict) -> "CatalogEntry":
        return cls(version=data.get("version") or "", sha256=data.get("sha256") or "",
                   command=data.get("command") or "", args=tuple(data.get("args") or ()))

    def describe(self) -> str:
        args = f" args={list(self.args)}" if self.args else ""
        return f"sha256 {self.sha256} (command {self.command}{args})"

    def same_launcher(self, other: "CatalogEntry") -> bool:
        return (self.sha256, self.command, self.args) == (other.sha256, other.command, other.args)


@dataclass
class RegisterResult:
    """What :func:`apply` did, step by step (also the account given when a step fails)."""

    server: ServerInfo = field(default_factory=lambda: ServerInfo("unknown"))
    reported_version: str = ""
    version: str = ""                 # the catalog version written
    registered: bool = False
    replaced: CatalogEntry | None = None
    other_launchers: list[CatalogEntry] = field(default_factory=list)   # left in place (--force)
    mount_version: str | None = None  # the version a present --mount names
    pinned: bool = False              # sys/plugins/pins written (Vault 1.16+)
    pinned_version: str = ""
    tuned: list[str] = field(default_factory=list)        # mounts moved with tune (OpenBao)
    untuned: list[str] = field(default_factory=list)      # mounts a failed step left as they were
    mount: str | None = None          # "created" | "present" | None

    def written(self, reg: Registration) -> list[str]:
        out = []
        if self.registered:
            out.append(f"catalog entry {reg.plugin_type}/{reg.name} {self.version or UNVERSIONED} -> "
                       f"sha256 {reg.sha256}")
        if self.pinned:
            out.append(f"pin {reg.plugin_type}/{reg.name} -> {self.pinned_version}")
        out += [f"mount {m} tuned to plugin_version {self.version}" for m in self.tuned]
        if self.mount == "created":
            out.append(f"mount {reg.mount_path}/ enabled")
        return out

    def not_written(self, reg: Registration) -> list[str]:
        out = []
        if not self.registered:
            out.append(f"catalog entry {reg.plugin_type}/{reg.name}")
        if reg.pin and self.server.has_plugin_pins is not False and not self.pinned:
            out.append(f"pin {reg.plugin_type}/{reg.name}")
        if self.untuned:
            out.append(f"tune of {', '.join(self.untuned)} (still on the version they had)")
        if reg.mount_path is not None and self.mount is None:
            out.append(f"mount {reg.mount_path}/")
        return out

    def account(self, reg: Registration) -> str:
        done = "; ".join(self.written(reg)) or "nothing"
        left = "; ".join(self.not_written(reg)) or "nothing"
        return f"written: {done}. Not written: {left}"

    def to_json(self, reg: Registration) -> dict:
        """``register --json``: what was written, in the words of :meth:`summary`."""
        return {"server": {"product": self.server.product, "version": self.server.version},
                "type": reg.plugin_type, "name": reg.name, "command": reg.command, "sha256": reg.sha256,
                "args": list(reg.args), "version": self.version, "reported_version": self.reported_version,
                "registered": self.registered,
                "replaced": None if self.replaced is None else asdict(self.replaced),
                "other_launchers": [asdict(e) for e in self.other_launchers],
                "pinned": self.pinned_version if self.pinned else None, "tuned": list(self.tuned),
                "mount": None if reg.mount_path is None else
                {"path": f"{reg.mount_path}/", "state": self.mount, "version": self.mount_version}}

    def summary(self, reg: Registration) -> str:
        lines = [f"registered {reg.plugin_type} plugin {reg.name!r} on {self.server.label}: "
                 f"command={reg.command} sha256={reg.sha256}"]
        if self.version:
            lines.append(f"  catalog version: {self.version} (the plugin the launcher started on the "
                         f"active node reported {self.reported_version})")
        else:
            lines.append(f"  catalog version: {UNVERSIONED} (the plugin the launcher started reports no version; "
                         + ("a trial mount ran it and it served; " if reg.plugin_type != "database" else
                            "database plugins have no trial mount: run `vault-plugin-shim doctor` on a node; ")
                         + "mount it without -plugin-version)")
        if self.replaced is not None:
            lines.append(f"  replaced the entry {self.version or UNVERSIONED} that named "
                         f"{self.replaced.describe()} (--force)")
        for e in self.other_launchers:
            lines.append(f"  left the entry {e.version or UNVERSIONED} that names {e.describe()} (--force): "
                         + ("--pin moved the mounts of the name off it; deregister it once no node needs it"
                            if reg.pin else "mounts naming it still run that launcher; --pin moves them"))
        if self.pinned:
            lines.append(f"pinned {reg.plugin_type}/{reg.name} to {self.pinned_version}")
        for m in self.tuned:
            lines.append(f"tuned {m} to plugin_version {self.version} ({self.server.label} has no "
                         f"plugin pins); it runs the new entry after `plugin reload` or a restart")
        if reg.pin and not self.pinned and not self.tuned:
            lines.append(f"no mounts of {reg.name} to move to {self.version}")
        if self.mount == "created":
            lines.append(f"enabled {reg.name} at {reg.mount_path}/")
        elif self.mount == "present" and (self.mount_version or "") != self.version:
            lines.append(f"{reg.mount_path}/ already runs {reg.name} {self.mount_version or UNVERSIONED}, "
                         f"not this entry: left unchanged (--pin moves it)")
        elif self.mount == "present":
            lines.append(f"{reg.mount_path}/ already runs {reg.name}: left unchanged")
        return "\n".join(lines)


def _where_to_look(client) -> str:
    """The active node (from sys/leader) whose log holds the launcher's reasons; without HA
    (one node) that is the server at the address we talk to."""
    try:
        leader = call("reading sys/leader", "GET", "sys/leader", lambda: client.adapter.get("/v1/sys/leader"))
    except VaultOpsError:
        leader = None
    data = (leader.get("data", leader) if isinstance(leader, dict) else None) or {}
    address = data.get("leader_address") or ("" if data.get("ha_enabled", True) else getattr(client, "url", ""))
    return f"the active node ({address})" if address else "the active node"


def _doctor_command(reg: Registration) -> str:
    return (f"vault-plugin-shim doctor --launcher <plugin_directory>/{reg.command} --sha256 {reg.sha256}"
            + "".join(f" --arg={shlex.quote(a)}" for a in reg.args))


def _did_not_run(reg: Registration, server: ServerInfo, node: str, answer: str, fix: str) -> LauncherDidNotRunError:
    return LauncherDidNotRunError(
        f"{server.label} could not run the launcher: registering it learned no version (the server "
        f"accepts that and only logs `[WARN] core: Error determining plugin version` on {node}, "
        f"without the launcher's reason), and a trial mount that makes it start the plugin "
        f"failed: {answer}; nothing was registered",
        fix=fix if "vault-plugin-shim doctor" in fix else f"{fix}; `{_doctor_command(reg)}` on that node names the cause")


def _server_answer(reason: str) -> str:
    """The gist of a failed mount's reason: the request and the server's first words, without
    go-plugin's repeated paragraph of guesses."""
    head = reason.split("failed (", 1)[-1]
    head = head.split(" This usually means", 1)[0].split(" Additional notes", 1)[0]
    return head.removesuffix(")").replace("2 errors occurred: ", "")


def _bare_version(reg: Registration, reported: str, server: ServerInfo) -> BareVersionError:
    return BareVersionError(
        f"the plugin that the launcher started reports version {reported!r} without the leading "
        f"'v': {server.label} would record it as such, but mounts look versions up as "
        f"v{reported} and fail with `plugin not found in the catalog: {reg.name}, "
        f"version=v{reported}`; nothing was registered",
        fix=(f"the plugin must report vX.Y.Z: make its version RPC (logical.PluginVersion) "
             f"return v{reported}, ship that build, then register again"))


def probe_version(client, reg: Registration, server: ServerInfo, namespace: str = "") -> str:
    """The version the plugin reports through the launcher, learned without keeping an entry;
    ``""`` for a plugin that reports none.

    The catalog write runs the command on the active node and compares the plugin's reported
    version with the requested one. Asking for :data:`PROBE_VERSION`, which no plugin reports,
    makes a working launcher fail with ``plugin version mismatch`` naming the reported
    version, and nothing is stored. The server stores the probe entry instead in two cases
    it does not tell apart: the plugin reports no version, or the launcher did not run. Then
    :func:`trial_mount` runs it: it serves (``""``), or :class:`LauncherDidNotRunError` names
    why it did not. The probe entry is deleted again in both cases.
    """
    probe = Registration(plugin_type=reg.plugin_type, name=reg.name, command=reg.command,
                         sha256=reg.sha256, args=reg.args, env=reg.env, version=PROBE_VERSION)
    reported: list[str] = []

    def classify(status: int, message: str):
        match = _MISMATCH.search(message)
        if status == 400 and match:
            reported.append(match["reported"])
            return _Reported()
        return _catalog_failure(reg)(status, message)

    try:
        call(f"running the launcher for {reg.name} (catalog write with a probe version)", "PUT",
             reg.catalog_path, lambda: client.adapter.put(f"/v1/{reg.catalog_path}", json=probe.catalog_body()),
             fixes={403: _CATALOG_403.format(path=reg.catalog_path)}, classify=classify)
    except _Reported:
        return reported[0]
    error: ShimError | None = None
    try:
        trial_mount(client, reg, server, namespace)
    except ShimError as exc:
        error = exc
    try:
        call("removing the probe entry", "DELETE", reg.catalog_path,
             lambda: client.adapter.delete(f"/v1/{reg.catalog_path}", params={"version": PROBE_VERSION}))
    except VaultOpsError as exc:
        first = error or VaultOpsError("the plugin reports no version", fix="")
        raise type(first)(
            f"{first.reason}. The probe entry {reg.name} {PROBE_VERSION} it stored could not be "
            f"removed ({exc.reason})",
            fix=f"{first.fix}; remove the probe: `vault plugin deregister -version={PROBE_VERSION} "
                f"{reg.plugin_type} {reg.name}`".lstrip("; ")) from exc
    if error is not None:
        raise error
    return ""


def _token_is_invalid(client) -> bool:
    """A 403 has two causes the server words alike (``permission denied``): a token that is not
    valid at all, or one whose policy lacks the path. ``auth/token/lookup-self``, which every
    token's default policy allows, tells them apart."""
    try:
        call("looking the token up", "GET", "auth/token/lookup-self",
             lambda: client.adapter.get("/v1/auth/token/lookup-self"))
    except VaultPermissionError:
        return True
    except VaultOpsError:
        return False
    return False


def trial_mount(client, reg: Registration, server: ServerInfo, namespace: str = "") -> None:
    """Make the server run the stored probe entry: enable it at :data:`TRIAL_MOUNT`, then
    disable that again. Enabling a secret or auth plugin starts it on the server (and a
    failure comes back with the server's reason), which the catalog write alone never says.
    Database plugins have no mount: nothing is run, and doctor on the node has the last word."""
    if reg.plugin_type == "database":
        return
    trial = replace(reg, mount_path=TRIAL_MOUNT.format(name=reg.name),
                    description="vault-plugin-shim register: trial of an unversioned plugin (removed again)")
    target = _in(namespace, f"{trial.mounts_path}/{trial.mount_path}")
    node = _where_to_look(client)
    try:
        enable_mount(client, trial, PROBE_VERSION, server, namespace)
    except (MountStepError, MountConflictError) as exc:
        if "already in use" in exc.reason:
            raise MountConflictError(
                f"{trial.mount_path}/ is already mounted (left by an interrupted register?): {exc.reason}",
                fix=f"disable it (`vault secrets disable {trial.mount_path}`) and run register again") from None
        raise _did_not_run(reg, server, node, _server_answer(exc.reason), exc.fix) from None
    except VaultPermissionError as exc:
        raise VaultPermissionError(
            f"the plugin reported no version, or the launcher did not run; to tell which, register "
            f"enables it once at {trial.mount_path}/ and disables it again, and that failed: {exc.reason}",
            fix=f"grant {_trial_policy(trial)} (build/k8s/register-policy.hcl has it)") from None
    call(f"disabling the trial mount {trial.mount_path}/", "DELETE", target,
         lambda: client.adapter.delete(f"/v1/{target}"),
         fixes={403: f"grant {_trial_policy(trial)}, and disable {trial.mount_path}/ by hand"})


def _trial_policy(trial: Registration) -> str:
    return (f'path "{trial.mounts_path}/{trial.mount_path}" '
            '{ capabilities = ["create", "update", "delete", "sudo"] }')


class _Reported(Exception):
    """Internal: the probe learned the reported version."""

    reason = fix = path = ""


def _read_entry(client, reg: Registration, version: str) -> CatalogEntry | None:
    try:
        resp = call(f"reading the catalog entry {reg.plugin_type}/{reg.name} {version}", "GET",
                    reg.catalog_path, lambda: client.adapter.get(f"/v1/{reg.catalog_path}",
                                                                 params={"version": version}),
                    fixes={403: _CATALOG_403.format(path=reg.catalog_path)})
    except VaultNotFoundError:
        return None
    data = resp.get("data") if isinstance(resp, dict) else None
    return CatalogEntry.from_api(data) if isinstance(data, dict) else None


def _entries_of(client, reg: Registration) -> list[CatalogEntry]:
    """Every catalog entry of ``reg``'s type and name, at any version (the probe's aside)."""
    listing = call("listing the plugin catalog", "GET", "sys/plugins/catalog",
                   lambda: client.adapter.get("/v1/sys/plugins/catalog"),
                   fixes={403: 'the token needs read on the catalog listing: path "sys/plugins/catalog" '
                               '{ capabilities = ["read"] }'})
    data = listing.get("data") if isinstance(listing, dict) else None
    detailed = (data or {}).get("detailed") or []
    versions = sorted({d.get("version") or "" for d in detailed
                       if isinstance(d, dict) and d.get("type") == reg.plugin_type and d.get("name") == reg.name
                       and not d.get("builtin") and d.get("version") != PROBE_VERSION})
    return [e for e in (_read_entry(client, reg, v) for v in versions) if e is not None]


def catalog_entries(client, plugin_type: str, name: str) -> list[CatalogEntry]:
    """Every catalog entry of (type, name), at any version: what ``doctor --catalog`` compares
    a node's launcher with."""
    reg = Registration(plugin_type=plugin_type, name=name, command="x", sha256="0" * 64)
    original = getattr(client.adapter, "namespace", None)
    client.adapter.namespace = None   # the catalog exists only in the root namespace
    try:
        return _entries_of(client, reg)
    finally:
        client.adapter.namespace = original


def _in(namespace: str, path: str) -> str:
    """``path`` inside ``namespace`` (a path prefix, as the X-Vault-Namespace header would)."""
    return f"{namespace}/{path}" if namespace else path


def _mounts_of(client, reg: Registration, namespace: str = "") -> dict[str, dict]:
    where = _in(namespace, reg.mounts_path)
    mounts = call(f"listing {where}", "GET", where,
                  lambda: client.adapter.get(f"/v1/{where}"),
                  fixes={403: f"the token needs read on {reg.mounts_path}: "
                              f'path "{reg.mounts_path}" {{ capabilities = ["read"] }}'})
    table = mounts.get("data", mounts) if isinstance(mounts, dict) else {}
    return {k: v for k, v in table.items() if isinstance(v, dict)}


def _mount_failure(reg: Registration, version: str, server: ServerInfo, node: str, namespace: str = ""):
    """Each 400 of the mount step has its own cause and fix (a mount runs the plugin)."""
    def classify(status: int, message: str):
        target = _in(namespace, f"{reg.mounts_path}/{reg.mount_path}")
        where = f"enabling {reg.name} at {reg.mount_path}/ failed (POST /v1/{target} -> HTTP {status}: {message})"
        if status != 400:
            return None
        if "checksums did not match" in message:
            return MountStepError(where, fix=(
                f"the launcher file {reg.command} on {node} is not sha256 {reg.sha256}: install "
                f"the launcher that was hashed here in every node's plugin_directory (or register "
                f"the one that is installed)"))
        if "plugin not found in the catalog" in message:
            bare = strip_v(version)
            return MountStepError(where, fix=(
                f"the catalog has no entry {reg.plugin_type}/{reg.name} {version}: it was removed "
                f"or never written; check `vault plugin list {reg.plugin_type}` (a plugin must "
                f"report vX.Y.Z: an entry recorded as {bare} is never found)"))
        if ("Unrecognized remote plugin message" in message or "exited before we could connect" in message
                or "invalid backend version" in message or "unable to run plugin" in message):
            return MountStepError(where, fix=(
                f"{server.label} started the launcher, which refused or failed to start the "
                f"plugin: its reason is in {node}'s server log ([ERROR] lines from the launcher); "
                f"run `vault-plugin-shim doctor --launcher <plugin_directory>/{reg.command}` there"))
        if "already in use" in message or "cannot mount" in message or "reserved" in message:
            return MountConflictError(where, fix=(
                f"the path {reg.mount_path}/ is taken (or inside/around another mount) or "
                f"reserved: pick another --mount"))
        return None
    return classify


_CATALOG_403 = ("the token lacks sudo on the plugin catalog; grant "
                'path "{path}" {{ capabilities = ["create", "read", "update", "delete", "sudo"] }} '
                "(or run this as an admin)")


def apply(client, reg: Registration, *, force: bool = False) -> RegisterResult:
    """Send the plan through ``client`` (an ``hvac.Client``).

    Everything that can refuse runs before the catalog write: the mount check, the probe of
    the version the plugin reports (:func:`probe_version`), the comparison with the entry
    that would be replaced (refused unless ``force``). A step failing after the write raises
    :class:`PartialRegistrationError`, which says what was written and what was not.

    The catalog (and pins) exist only in the root namespace: with a namespace on the client,
    those calls go to the root and the mount calls into the namespace (as a path prefix).
    """
    original = getattr(client.adapter, "namespace", None)
    client.adapter.namespace = None
    try:
        return _apply(client, reg, force, (original or "").strip("/"))
    except VaultPermissionError as exc:
        if not _token_is_invalid(client):
            raise
        raise VaultPermissionError(
            f"{exc.reason}: the token itself is not valid (expired, revoked, mistyped, or from another "
            f"server: auth/token/lookup-self, which the default policy allows, is refused too)",
            fix="log in again (`vault login`) or set VAULT_TOKEN (BAO_TOKEN) to a current token") from None
    finally:
        client.adapter.namespace = original


def _apply(client, reg: Registration, force: bool, namespace: str) -> RegisterResult:
    result = RegisterResult(server=detect_server(client))
    server = result.server
    adapter = client.adapter
    if reg.pin and reg.plugin_type == "database" and server.has_plugin_pins is False:
        raise RegistrationError(
            f"--pin: {server.label} has no sys/plugins/pins, and database plugins have no mount "
            f"to tune; nothing was written",
            fix="leave --pin out and name the version in each connection: `vault write "
                f"database/config/<connection> plugin_name={reg.name} plugin_version=<version> ...`")

    existing = None
    if reg.mount_path is not None:
        existing = _mounts_of(client, reg, namespace).get(f"{reg.mount_path}/")
        if existing is not None and existing.get("type") != reg.name:
            raise MountConflictError(
                f"{reg.mount_path}/ is already enabled with type {existing.get('type')!r}, not {reg.name!r}",
                fix=f"pick another --mount path, or disable {reg.mount_path}/ first if it is unused")

    reported = probe_version(client, reg, server, namespace)
    result.reported_version = reported
    if reported and not reported.startswith("v"):
        raise _bare_version(reg, reported, server)
    if not reported and reg.version:
        raise UnversionedPluginError(
            f"the plugin that the launcher started on the active node reports no version, so "
            f"--version {reg.version} would name an entry the plugin contradicts; nothing was written",
            fix="leave --version out: an unversioned entry is registered, and mounts of it need no "
                "-plugin-version")
    if not reported and reg.pin:
        raise UnversionedPluginError(
            "--pin: the plugin reports no version, and a pin or a tune names a version; nothing was written",
            fix="leave --pin out: mounts without -plugin-version run the unversioned entry")
    if reg.version and reported != reg.version:
        raise PluginVersionMismatchError(reg.name, reported, reg.version)
    version = result.version = reg.version or reported

    ours = CatalogEntry(version, reg.sha256, reg.command, reg.args)
    others = [e for e in _entries_of(client, reg) if not e.same_launcher(ours)]
    if others and not force:
        same = next((e for e in others if e.version == version), None)
        what = (f"replace it with {ours.describe()}" if same is not None else
                f"add {ours.describe()} as {version or UNVERSIONED} beside them, while mounts of "
                f"{reg.name} keep running the version they name")
        raise CatalogOwnedError(
            f"the catalog entr{'y' if len(others) == 1 else 'ies'} {reg.plugin_type}/{reg.name} "
            + "; ".join(f"{e.version or UNVERSIONED} names {e.describe()}" for e in others)
            + f" (another launcher); this registration would {what}; nothing was written",
            fix="if this is a deliberate launcher rotation, re-run with --force --pin (--pin moves the "
                "mounts to the new entry); if it is a re-run of an old Job or an old image, register the "
                "launcher the nodes now run (`vault plugin info " + f"{reg.plugin_type} {reg.name} "
                f"-version={others[0].version}` shows it)")
    result.replaced = next((e for e in others if e.version == version), None)
    result.other_launchers = [e for e in others if e.version != version]

    pin_mounts: list[str] = []
    if reg.pin and not server.has_plugin_pins and reg.plugin_type != "database":
        pin_mounts = sorted(p for p, m in _mounts_of(client, reg, namespace).items()
                            if m.get("type") == reg.name and m.get("plugin_version") != version
                            and not (existing is None and p == f"{reg.mount_path}/"))

    write = reg.catalog_body()
    write["version"] = version
    call(f"registering {reg.plugin_type} plugin {reg.name} in the catalog", "PUT", reg.catalog_path,
         lambda: adapter.put(f"/v1/{reg.catalog_path}", json=write),
         fixes={403: _CATALOG_403.format(path=reg.catalog_path)}, classify=_catalog_failure(reg))
    result.registered = True

    try:
        if reg.pin and server.has_plugin_pins is not False:
            call(f"pinning {reg.plugin_type}/{reg.name} to {version}", "POST", reg.pin_path,
                 lambda: adapter.post(f"/v1/{reg.pin_path}", json={"version": version}),
                 fixes={403: "the token cannot write pins; grant " + _policy(reg.pin_path),
                        404: f"{server.label} has no sys/plugins/pins (Vault 1.16+ has): move each "
                             f"mount with `vault secrets tune -plugin-version={version} <path>`",
                        400: "pin a version that is registered: check `vault plugin list "
                             f"{reg.plugin_type}`"})
            result.pinned, result.pinned_version = True, version
        result.untuned = list(pin_mounts)
        for path in pin_mounts:
            tune = _in(namespace, f"{reg.mounts_path}/{path}tune")
            call(f"moving {path} to {reg.name} {version} (secrets tune -plugin-version)", "POST", tune,
                 lambda: adapter.post(f"/v1/{tune}", json={"plugin_version": version}),
                 fixes={403: "the token cannot tune mounts; grant " + _policy(f"{reg.mounts_path}/+/tune")})
            result.tuned.append(path)
            result.untuned.remove(path)

        if reg.mount_path is not None:
            if existing is not None:
                result.mount = "present"
                result.mount_version = (version if f"{reg.mount_path}/" in result.tuned
                                        else existing.get("plugin_version") or "")
            else:
                enable_mount(client, reg, version, server, namespace)
                result.mount = "created"
    except ShimError as exc:
        raise PartialRegistrationError(exc, result, reg) from exc
    return result


def enable_mount(client, reg: Registration, version: str, server: ServerInfo, namespace: str = "") -> None:
    """Enable ``reg.mount_path`` (in ``namespace``) at catalog ``version``. The server runs the
    plugin for it, so a 400 here has several causes, each named (see :func:`_mount_failure`)."""
    target = _in(namespace, f"{reg.mounts_path}/{reg.mount_path}")
    node = _where_to_look(client)
    call(f"enabling {reg.name} at {reg.mount_path}/", "POST", target,
         lambda: client.adapter.post(f"/v1/{target}", json=reg.mount_body(version)),
         fixes={403: "the token cannot enable mounts; grant " + _policy(f"{reg.mounts_path}/*")},
         classify=_mount_failure(reg, version, server, node, namespace))


def _policy(path: str) -> str:
    return f'path "{path}" {{ capabilities = ["create", "update", "sudo"] }}'


__all__ = ["CatalogEntry", "RegisterResult", "apply", "catalog_entries", "enable_mount", "probe_version",
           "trial_mount"]
