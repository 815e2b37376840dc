"""Select and start: the one path from the plugins directory to a started, verified copy.

Exec mode, proxy mode and hot swap all run it:

* :func:`select_sealed` picks the version (:func:`shim.trust.verify.select`, the one decision)
  and makes the copy that will run: a running process's sealed memfd of the same version when
  one hashes to the signed manifest (:func:`shared_copy`), else a new sealed memfd (or the
  private-file fallback of :mod:`shim.launch.memexec`), hashed *there*. It logs each rejected
  candidate at the level it deserves (:func:`log_rejections`) and refuses to fall back past a
  refused newer version when the policy says so (:func:`no_quiet_fallback`).
* :func:`start_verified` starts that copy with the caller's ``start`` (``fexecve``, the
  proxy, a hot swap's new child); where executing a memfd is refused, it starts a private copy
  of the verified bytes instead (:func:`private_copy`), once.

:mod:`shim.launch.memexec` is imported only where a copy is made here: a native launcher
made its own, and its Python part never imports it.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable

from shim.goplugin import hclog
from shim.launch.errors import ExecRefusedError, LaunchError
from shim.trust.errors import DigestMismatchError, NewerVersionRefusedError, RejectedError
from shim.trust.manifest import format_time
from shim.trust.policy import Policy
from shim.trust.verify import (MANIFEST_SUFFIX, SIGNATURE_SUFFIX, Candidate, PluginDir, check_digest, expires_soon,
                               select)

MAX_REJECTION_LINES = 10  # per launch; the rest are counted in one line (doctor lists them all)
STILL_WRITTEN = 10.0      # a hot swap's rescan: files changed this recently may still be being copied in
QUIET_WHEN_NEWER_RUNS = ("ExpiredError", "RollbackError")


# --- selecting: which version, and its sealed copy -------------------------------------------

def select_sealed(policy: Policy, now: float, *, tmpdir: str | None = None,
                  skip=None, rescan: bool = False) -> tuple[Candidate, int, str]:
    """The one selection path of both modes: the highest candidate whose binary, copied
    into a sealed memfd (or the private-copy fallback), hashes to its signed manifest.
    Returns (candidate, fd of the verified copy, how it was made). ``skip(candidate)``
    (hot swap) may return why a candidate is not to be tried (it failed to take over
    before): it is then rejected with that reason, before its bytes are read. ``rescan``: a
    hot swap's look at the directory, where a release still being copied in is expected."""
    from shim.launch import memexec

    def seal(pdir: PluginDir, cand: Candidate) -> tuple[int, str]:
        why = skip(cand) if skip is not None else None
        if why:
            raise RejectedError(why, path=cand.path, fix="replace or remove this release; a changed file is tried "
                                                         "again")
        name = f"{policy.name}-{cand.manifest.version}"
        src = pdir.open_binary(cand)
        shared = shared_copy(cand, name)
        if shared is not None:
            os.close(src)
            return shared, "memfd-shared"
        try:
            fd, how = memexec.materialize(src, cand.manifest.size, name, tmpdir=tmpdir)
        except OSError as exc:
            raise memexec.describe_os_error(exc, "copy the binary for verification", tmpdir) from exc
        finally:
            os.close(src)
        try:
            check_digest(fd, cand)  # hash the sealed copy: the bytes that will run
        except BaseException:
            os.close(fd)
            raise
        return fd, how

    selection = select(policy, now, seal)
    log_rejections(selection, policy, rescan_at=time.time() if rescan else None)
    if selection.chosen is None:
        raise selection.refusal(policy)
    fd, how = selection.value
    try:
        no_quiet_fallback(selection, policy, now)
    except BaseException:
        os.close(fd)
        raise
    return selection.chosen, fd, how


def shared_copy(cand: Candidate, name: str) -> int | None:
    """A sealed memfd of this version that a running process already executes, if one
    hashes to the signed manifest (shim.launch.memexec.sealed_siblings); else None."""
    from shim.launch import memexec

    found = None
    for fd in memexec.sealed_siblings(name, cand.manifest.size):
        if found is not None:
            os.close(fd)
            continue
        try:
            check_digest(fd, cand)
        except DigestMismatchError as exc:
            os.close(fd)
            hclog.warn(f"vault-plugin-shim: a running process's sealed memfd named {name} does not match the "
                       "signed manifest; ignored, making our own copy", file=cand.path, reason=exc.reason,
                       fix="find the process that runs it (doctor lists them) and why it has that name")
            continue
        except BaseException:
            os.close(fd)
            raise
        found = fd
    return found


def no_quiet_fallback(selection, policy: Policy, now: float) -> None:
    """Issue 16, the launch side: refuse to fall back past a refused newer version when the
    policy says so (``on_refused_newer: refuse``; the default runs the older one, and the
    refusal was logged at ERROR by :func:`log_rejections`), and warn at each launch within
    :data:`~shim.trust.verify.EXPIRY_WARNING` of the chosen manifest's expiry."""
    chosen = selection.chosen
    passed_over = selection.passed_over()
    if passed_over and policy.on_refused_newer == "refuse":
        first = passed_over[0]
        raise NewerVersionRefusedError(
            f"{len(passed_over)} version(s) newer than {chosen.manifest.version} are present and refused, "
            f"and this launcher's policy refuses to fall back (on_refused_newer: refuse)",
            path=first.path)
    left = expires_soon(chosen.manifest, now)
    if left is not None:
        hclog.warn(f"vault-plugin-shim: {policy.type} plugin {policy.name} {chosen.manifest.version} expires at "
                   f"{format_time(chosen.manifest.expires_at)}, in {left / 86400:.1f} days: after that no launcher "
                   f"starts it", plugin=policy.name, file=chosen.path,
                   fix="re-sign the same binary with a later --expires (or none) and ship the new manifest "
                       "and .minisig")


# --- what a selection logs -------------------------------------------------------------------

def still_written(binary: str, signed_size: int, now: float) -> float | None:
    """For a binary shorter than its signed size (a release is copied in as three files, a
    large binary slowly): seconds since the newest change to any of its files, if that is
    within STILL_WRITTEN; else None. A binary of the signed size or longer with other bytes
    is not being written: it is wrong. (Hot swap's native rescans learn the path and the
    signed size from the launcher's rejection line.)"""
    try:
        if os.lstat(binary).st_size >= signed_size:
            return None
    except OSError:
        return None
    newest = 0.0
    for path in (binary, binary + MANIFEST_SUFFIX, binary + SIGNATURE_SUFFIX):
        try:
            newest = max(newest, os.lstat(path).st_mtime)
        except OSError:
            continue
    age = now - newest
    return age if newest and age < STILL_WRITTEN else None


def log_rejections(selection, policy: Policy, rescan_at: float | None = None) -> None:
    """One line per rejected candidate, at the level it deserves, at most
    ``MAX_REJECTION_LINES`` of them. An older version that is rightly skipped (expired, below
    the floor) while a newer one runs is routine: debug. Anything else that was refused is
    an error: a tampered or untrusted newer version is exactly what an operator must see.
    In a hot swap's rescan (``rescan_at``: its wall-clock time) a binary shorter than signed
    whose files changed moments ago is most likely still being copied in: a WARN, and the next
    rescan looks again."""
    chosen = selection.chosen
    loud = 0
    for cand in selection.candidates:
        exc = cand.error
        if exc is None:
            continue
        older = (chosen is not None and cand.manifest is not None
                 and cand.manifest.version < chosen.manifest.version)
        level = "debug" if older and type(exc).__name__ in QUIET_WHEN_NEWER_RUNS else "warn" if older else "error"
        note = ""
        if level == "error" and rescan_at is not None and cand.manifest is not None:
            age = still_written(cand.path, cand.manifest.size, rescan_at)
            if age is not None:
                level = "warn"
                note = (f" (its files changed {age:.1f} s ago: still being copied in? the next rescan, once the "
                        "directory is quiet, looks again)")
        if level != "debug":
            loud += 1
            if loud > MAX_REJECTION_LINES:
                continue
        hclog.log(level, f"vault-plugin-shim: rejected candidate {exc.path or cand.path}: {exc.reason}{note}",
                  candidate=cand.binary, **exc.fields())
    if loud > MAX_REJECTION_LINES:
        hclog.error(f"vault-plugin-shim: {loud - MAX_REJECTION_LINES} more rejected candidates in "
                    f"{policy.plugins_dir} not logged", plugin=policy.name,
                    fix="run `vault-plugin-shim doctor --launcher <launcher>` on this node to list them all, "
                        "and remove what does not belong in the plugins directory")


def log_start(policy: Policy, cand: Candidate, how: str, **extra) -> None:
    manifest = cand.manifest
    hclog.info(f"vault-plugin-shim: starting {policy.type} plugin {policy.name} {manifest.version}",
               plugin=policy.name, version=str(manifest.version), sha256=manifest.sha256,
               key_id=cand.key.key_id_hex, file=cand.path, exec_via=how, **extra)


# --- starting: the sealed copy, or a private copy where memfd exec is refused ----------------

def start_verified(cand: Candidate, fd: int, how: str, tmpdir: str | None, start: Callable[[int, str], object], *,
                   explain: bool = True):
    """``start(fd, how)`` the verified copy (``how``: how it was made, as :func:`select_sealed`
    says). Where that raises :class:`ExecRefusedError` for a memfd (``vm.memfd_noexec``, an
    LSM), ``start(copy, "private-file")`` once, with a private copy of the verified bytes.
    ``fd`` is given over: closed once copied, or when ``start`` returns or raises (an exec
    that succeeds never comes back). ``explain``: a refusal that stays is raised as
    :func:`cannot_execute`'s error, with what to do (a launch's last word); without it (hot
    swap, which refuses the version and keeps the running one) as the refusal itself."""
    try:
        try:
            return start(fd, how)
        except ExecRefusedError as exc:
            if not how.startswith("memfd"):
                raise
            refused = exc
        copy = private_copy(cand, fd, tmpdir, refused.reason)
        os.close(fd)
        fd, how = copy, "private-file"
        return start(fd, how)
    except ExecRefusedError as exc:
        if not explain:
            raise
        raise cannot_execute(cand, exc.reason, tmpdir, how, cause=exc.__cause__) from exc
    finally:
        try:
            os.close(fd)
        except OSError:
            pass


def private_copy(cand: Candidate, fd: int, tmpdir: str | None, refused: str) -> int:
    """The kernel or an LSM refused to execute the memfd: copy the *verified* bytes (not
    the file again: no second selection) into a private file, hash that copy, return it.
    ``fd`` stays the caller's."""
    from shim.launch import memexec

    hclog.warn("vault-plugin-shim: executing from a memfd was refused; using a private copy of the verified "
               "bytes", reason=refused, file=cand.path)
    try:
        copy = memexec.to_private_file(fd, cand.manifest.size, tmpdir)
    except OSError as exc:
        raise memexec.describe_os_error(exc, "make the private copy", tmpdir) from exc
    try:
        check_digest(copy, cand)
    except BaseException:
        os.close(copy)
        raise
    return copy


def cannot_execute(cand: Candidate, reason: str, tmpdir: str | None, how: str,
                   cause: BaseException | None = None) -> LaunchError:
    """The launch's error for a verified copy that cannot be executed (``reason``: the
    kernel's), with the fix for where the copy lives."""
    from shim.launch import memexec

    if how == "private-file" and memexec.noexec_mount(tmpdir):
        fix = (f"the private copy lives under {tmpdir or '/tmp'}, which is mounted noexec: set TMPDIR in the "
               "plugin's catalog env to an executable directory the Vault user owns (an emptyDir tmpfs)")
    else:
        fix = "check that the binary is built for this node (ELF, right architecture)"
    return LaunchError(f"cannot execute the verified copy ({reason})", path=cand.path, fix=fix, cause=cause)
