"""Why verified bytes could not be started, or a new version could not take over.

Every error of the launch room is a :class:`LaunchError`, so ``except ShimError`` (the
CLI's) catches them all."""

from __future__ import annotations

from shim.errors import ShimError


class LaunchError(ShimError):
    """The verified bytes could not be executed."""


class ExecRefusedError(LaunchError):
    """The kernel or an LSM refused to execute the sealed copy (e.g. vm.memfd_noexec=2)."""

    default_fix = "the launcher retries with a private copy of the file; check TMPDIR is not noexec"


class VaultGoneError(LaunchError):
    """The process that started us (Vault) has exited."""

    default_fix = ("nothing to do here: Vault starts the plugin again when it comes back; this "
                   "launcher stopped its plugin and removed its sockets")


class SwapError(LaunchError):
    """The new version cannot take over; the running one keeps serving."""


class NeedsReload(SwapError):
    """The new version answers what Vault cached at mount differently."""

    default_fix = ("run `vault plugin reload` (OpenBao: `bao plugin reload`) for this plugin's mounts to start "
                   "this version with fresh mount metadata")


class NativeRefusal(LaunchError):
    """Select-only mode chose nothing: the native launcher's refusal line, its fields as they were."""

    def __init__(self, fields: dict):
        super().__init__(str(fields.get("reason") or "the native launcher chose nothing"), path=fields.get("file"),
                         fix=fields.get("fix"), cause=fields.get("cause") or None)
        self._fields = {k: v for k, v in fields.items() if k in ("error", "reason", "file", "cause", "fix")}

    def fields(self) -> dict[str, str]:
        return dict(self._fields) or super().fields()
