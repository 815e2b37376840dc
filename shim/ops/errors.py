"""The operator tools' errors, in one place: talking to Vault (or OpenBao), registering a
launcher, signing with Transit.

:class:`VaultOpsError` and its subclasses are the server's side (the CLI exits 2, as the
``vault`` CLI does for an error of the server); a local or usage error exits 1.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from shim.errors import ShimError

if TYPE_CHECKING:  # pragma: no cover
    from shim.ops.register import RegisterResult
    from shim.ops.registration import Registration


# --- talking to Vault ------------------------------------------------------------------

class VaultOpsError(ShimError):
    """Base for failures while talking to Vault (or OpenBao): the server refused or failed, could
    not be reached, or holds what stops the operation. The CLI exits 2 for these, as the
    ``vault`` CLI does for an error of the server; 1 for a local or usage error."""

    exit_status = 2


class VaultConfigError(VaultOpsError):
    """The environment does not say how to reach or authenticate to Vault."""

    exit_status = 1


class VaultUnreachableError(VaultOpsError):
    """No HTTP answer: wrong address, DNS, TLS verification, or Vault is down."""


class VaultPermissionError(VaultOpsError):
    """403: the token is invalid or its policies do not allow the call."""


class VaultRequestError(VaultOpsError):
    """400 (or another 4xx): Vault understood the call and refused its content."""


class VaultNotFoundError(VaultOpsError):
    """404: the path does not exist on this server (missing mount, or too old a Vault)."""


class VaultServerError(VaultOpsError):
    """5xx: Vault failed while carrying the call out, or is sealed / in standby."""


# --- registering a launcher ------------------------------------------------------------

class RegistrationError(ShimError):
    """The registration request itself is inconsistent (caught before anything is sent)."""


class LauncherFileError(ShimError):
    """The launcher file to hash cannot be read."""

    default_fix = "pass the launcher file exactly as it is installed in Vault's plugin_directory"


class PluginVersionMismatchError(VaultRequestError):
    """Vault ran the launcher; the plugin it started reports another version."""

    def __init__(self, name: str, reported: str, requested: str):
        self.reported, self.requested = reported, requested
        if reported.startswith("v"):
            fix = (f"with the shim the catalog entry is the launcher, not a plugin release: leave "
                   f"--version out (then {reported}, the version the plugin reports, is recorded), "
                   f"or pass --version {reported}")
        else:
            fix = (f"the plugin must report vX.Y.Z: make its version RPC return v{reported} "
                   f"(a bare {reported!r} never matches, since --version is always v-prefixed)")
        super().__init__(
            f"nothing was registered: to learn the version the server ran the launcher on its "
            f"active node, which started the plugin currently installed there; {name} reported "
            f"version {reported} but --version asked for {requested} (plugin version mismatch)",
            fix=fix)


class MountConflictError(VaultOpsError):
    """The mount path is already used by something else."""


class CatalogOwnedError(VaultOpsError):
    """The catalog entry this registration would write belongs to another launcher."""


class LauncherDidNotRunError(VaultOpsError):
    """The server could not run the launcher (a trial mount of the probe entry failed)."""


class UnversionedPluginError(VaultOpsError):
    """The plugin reports no version, and the request names one (--version, --pin)."""


class BareVersionError(VaultOpsError):
    """The plugin reports ``1.2.3``: registrable, but no mount can ever find it."""


class MountStepError(VaultOpsError):
    """Enabling the mount failed, for a reason named more precisely than the HTTP status."""


class PartialRegistrationError(VaultOpsError):
    """A step after the catalog write failed; the reason says what was and was not written."""

    def __init__(self, error: ShimError, result: RegisterResult, reg: Registration):
        self.error, self.result = error, result
        super().__init__(f"{error.reason}. Registration half-applied: {result.account(reg)}",
                         fix=error.fix, path=error.path)


# --- signing with Transit --------------------------------------------------------------

class TransitError(VaultOpsError):
    """The Transit key cannot serve minisign signatures, or Transit misbehaved."""


class TransitSignatureError(TransitError):
    """Transit answered with a signature that is malformed or does not verify."""

    default_fix = ("do not publish anything signed in this run; check that VAULT_ADDR reaches "
                   "the intended Vault and that the key is not being rotated or replaced")
