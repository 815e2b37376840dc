"""Which plugin version may run: the one verification path shared by launch, ``verify``,
``doctor`` and the demo.

Two layers:

* :func:`check_signed_manifest` is pure: (policy, manifest bytes, signature bytes, clock)
  to a manifest and the key that signed it, or one of our errors; so is :func:`rank`, the
  launch order of what passed (two builds tied on precedence and issue time refused).
* :class:`PluginDir` does the file system part carefully: the directory is opened once and
  every file is opened relative to it with ``O_NOFOLLOW``, then checked with ``fstat`` on
  the open descriptor (never by path, so a swap between check and use changes nothing),
  and the binary's bytes are hashed where they will be executed from.

The attack each check blocks is listed in README.md ("Threat model").
"""

from __future__ import annotations

import hashlib
import hmac
import mmap
import os
import stat
from collections.abc import Callable

from shim.errors import ShimError
from shim.trust.errors import (
    AmbiguousVersionError,
    DigestMismatchError,
    ExpiredError,
    FileTooLargeError,
    NoValidVersionError,
    RejectedError,
    RollbackError,
    UnsafeFileError,
    WrongPluginError,
)
from shim.trust import minisign
from shim.trust.manifest import MAX_MANIFEST_BYTES, Manifest, format_time
from shim.trust.policy import Policy

MANIFEST_SUFFIX = ".manifest.json"
SIGNATURE_SUFFIX = ".manifest.json.minisig"
CLOCK_SKEW = 300  # seconds a manifest's issue time may lie in the node's future
EXPIRY_WARNING = 30 * 86400  # a launch this close to a manifest's expiry warns (and doctor, verify)
_GOARCH = {"x86_64": "amd64", "amd64": "amd64", "aarch64": "arm64", "arm64": "arm64",
           "i686": "386", "i386": "386", "armv7l": "arm", "ppc64le": "ppc64le", "s390x": "s390x",
           "riscv64": "riscv64"}


def host_platform() -> tuple[str, str]:
    """GOOS/GOARCH names of the running node, as release CI writes them."""
    uname = os.uname()  # not ``platform``: 2.4 ms of imports on every plugin start
    machine = uname.machine.lower()
    return uname.sysname.lower(), _GOARCH.get(machine, machine)


def check_signed_manifest(policy: Policy, manifest_bytes: bytes, signature_bytes: bytes, *,
                          now: float, path: str, platform_: tuple[str, str] | None = None
                          ) -> tuple[Manifest, minisign.PublicKey]:
    """Verify the signature first, then parse: nothing unsigned is interpreted."""
    sig_path = path + ".minisig"
    sig = minisign.Signature.parse(signature_bytes, path=sig_path)
    key = minisign.verify(manifest_bytes, sig, policy.trusted_keys, path=sig_path)
    manifest = Manifest.parse(manifest_bytes, path=path)
    try:
        _check_manifest_against(policy, manifest, now, path, platform_)
    except RejectedError as exc:
        exc.manifest = manifest  # signed and parsed: its version still orders the verdicts
        raise
    return manifest, key


def _check_manifest_against(policy: Policy, manifest: Manifest, now: float, path: str,
                            platform_: tuple[str, str] | None) -> None:
    if manifest.name != policy.name or manifest.type != policy.type:
        raise WrongPluginError(
            f"manifest is for {manifest.type} plugin {manifest.name!r}, this launcher serves "
            f"{policy.type} plugin {policy.name!r}", path=path)
    goos, goarch = platform_ or host_platform()
    if (manifest.os, manifest.arch) != (goos, goarch):
        raise WrongPluginError(f"manifest is for {manifest.os}/{manifest.arch}, this node is {goos}/{goarch}",
                               path=path, fix="ship the build for this node's platform")
    if policy.min_version is not None and manifest.version < policy.min_version:
        raise RollbackError(f"version {manifest.version} is below the minimum version {policy.min_version}",
                            path=path)
    if manifest.expires_at is not None and now >= manifest.expires_at:
        raise ExpiredError(f"manifest for {manifest.version} expired at {format_time(manifest.expires_at)} "
                           f"(node clock: {format_time(now)})", path=path)
    if manifest.issued_at > now + CLOCK_SKEW:
        raise ExpiredError(f"manifest for {manifest.version} is issued at {format_time(manifest.issued_at)}, "
                           f"in the future of this node's clock ({format_time(now)})", path=path,
                           fix="fix the node's clock (NTP), or the signing machine's")
    if manifest.size > policy.max_size:
        raise FileTooLargeError(f"binary size {manifest.size} exceeds the policy's max_size {policy.max_size}",
                                path=path, fix="raise max_size in a new launcher build")


DIRECTORY_FIX = ("make the plugins directory owned by root (or the Vault user) and writable only by its owner: "
                 "chmod 0755 it (a umask such as 002 makes 0775)")


def check_file_stat(st: os.stat_result, path: str, *, directory: bool = False, uid: int | None = None) -> None:
    """A file the launcher trusts must be a regular file (or directory) that only its
    owner can write, owned by root or by the user Vault runs as (``uid``: this process's
    effective uid, unless ``doctor`` checks on Vault's behalf)."""
    uid = os.geteuid() if uid is None else uid
    want = stat.S_ISDIR if directory else stat.S_ISREG
    if not want(st.st_mode):
        kind = "a directory" if directory else "a regular file"
        raise UnsafeFileError(f"is not {kind}", path=path)
    fix = DIRECTORY_FIX if directory else None
    if st.st_uid not in (0, uid):
        raise UnsafeFileError(f"is owned by uid {st.st_uid}, not by root or the Vault user (uid {uid})",
                              path=path, fix=fix)
    if st.st_mode & 0o022:
        raise UnsafeFileError(f"is writable by group or others (mode {stat.S_IMODE(st.st_mode):04o})", path=path,
                              fix=fix)


class Candidate:
    """One version in the plugins directory and what we learned about it."""

    __slots__ = ("binary", "path", "manifest", "key", "error")

    def __init__(self, binary: str, path: str):
        self.binary = binary             # file name inside the plugins directory
        self.path = path                 # full path, for messages
        self.manifest: Manifest | None = None
        self.key: minisign.PublicKey | None = None
        self.error: ShimError | None = None

    def __repr__(self):
        return f"Candidate({self.path!r}, error={self.error!r})"

    @property
    def manifest_path(self) -> str:
        return self.path + MANIFEST_SUFFIX


class PluginDir:
    """The plugins directory, opened once; files are opened relative to it."""

    def __init__(self, policy: Policy, uid: int | None = None):
        self.policy = policy
        self.uid = uid
        self.path = policy.plugins_dir
        try:
            self.fd = os.open(self.path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        except FileNotFoundError:
            raise NoValidVersionError("the plugins directory does not exist", path=self.path,
                                      fix="ship the plugin versions in the image at this path, or rebuild "
                                          "the launcher with the right --plugins-dir") from None
        except OSError as exc:
            raise NoValidVersionError(f"cannot open the plugins directory ({exc.strerror})", path=self.path,
                                      fix="make it readable by the Vault user") from None
        try:
            check_file_stat(os.fstat(self.fd), self.path, directory=True, uid=uid)
        except ShimError:
            self.close()
            raise

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def _open(self, name: str) -> int:
        path = os.path.join(self.path, name)
        try:
            return os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NOCTTY | os.O_NONBLOCK,
                           dir_fd=self.fd)
        except FileNotFoundError:
            raise RejectedError("is missing", path=path,
                                fix="ship the binary, its manifest and the .minisig side by side") from None
        except OSError as exc:
            if exc.errno == 40:  # ELOOP: the name is a symlink
                raise UnsafeFileError("is a symbolic link; the launcher does not follow links", path=path,
                                      fix="copy the real file into the plugins directory") from None
            raise RejectedError(f"cannot be opened ({exc.strerror})", path=path,
                                fix="make it readable by the Vault user") from None

    def read_small(self, name: str, limit: int) -> bytes:
        path = os.path.join(self.path, name)
        fd = self._open(name)
        try:
            st = os.fstat(fd)
            check_file_stat(st, path, uid=self.uid)
            if st.st_size > limit:
                raise FileTooLargeError(f"is {st.st_size} bytes, more than the {limit}-byte limit", path=path,
                                        fix="this is not a manifest or signature written by vault-plugin-shim")
            data = os.read(fd, limit + 1)
            if len(data) > limit:
                raise FileTooLargeError(f"grew past the {limit}-byte limit while being read", path=path)
            return data
        finally:
            os.close(fd)

    def open_binary(self, cand: Candidate) -> int:
        """Open the binary for copying; the caller closes the fd."""
        fd = self._open(cand.binary)
        try:
            st = os.fstat(fd)
            check_file_stat(st, cand.path, uid=self.uid)
            if st.st_size != cand.manifest.size:
                raise DigestMismatchError(f"is {st.st_size} bytes, the signed manifest says {cand.manifest.size}",
                                          path=cand.path)
            os.set_blocking(fd, True)
            return fd
        except BaseException:
            os.close(fd)
            raise

    def candidates(self) -> list[Candidate]:
        names = sorted(n[: -len(MANIFEST_SUFFIX)] for n in os.listdir(self.fd) if n.endswith(MANIFEST_SUFFIX))
        return [Candidate(n, os.path.join(self.path, n)) for n in names]

    def check_manifest(self, cand: Candidate, now: float) -> Candidate:
        try:
            data = self.read_small(cand.binary + MANIFEST_SUFFIX, MAX_MANIFEST_BYTES)
            sig = self.read_small(cand.binary + SIGNATURE_SUFFIX, minisign.MAX_SIGNATURE_FILE)
            cand.manifest, cand.key = check_signed_manifest(self.policy, data, sig, now=now,
                                                            path=cand.manifest_path)
        except ShimError as exc:
            cand.error = exc
            cand.manifest = getattr(exc, "manifest", None)
        return cand

    def ranked(self, now: float) -> tuple[list[Candidate], list[Candidate]]:
        """(candidates whose signed manifest passed, in launch order; rejected ones): every
        candidate's manifest checked at ``now``, then :func:`rank`."""
        return rank([self.check_manifest(c, now) for c in self.candidates()])


def launch_order(cand: Candidate) -> tuple:
    """Sort key of the launch order (highest first): version precedence, then the signed
    ``issued_at``."""
    return cand.manifest.version.precedence, cand.manifest.issued_at


def rank(checked: list[Candidate]) -> tuple[list[Candidate], list[Candidate]]:
    """Pure: candidates whose manifests were checked (an ``error`` each, or none) to (the ones
    that may launch, in launch order; the rejected ones, in the order given).

    Launch order is by version precedence, highest first. Versions of equal precedence
    (``2.0.0+build1`` and ``2.0.0+build2``: semver ignores build metadata) are ordered by
    the signed ``issued_at``, newest first; when that is equal too, nothing tells which
    is newer, so both are refused (:class:`AmbiguousVersionError`, set on each) rather than
    decided by file name.
    """
    good = sorted((c for c in checked if c.error is None), key=launch_order, reverse=True)
    for a, b in zip(good, good[1:]):
        if launch_order(a) == launch_order(b):
            for c, other in ((a, b), (b, a)):
                c.error = AmbiguousVersionError(
                    f"version {c.manifest.version} has the same precedence and issue time as "
                    f"{other.binary} ({other.manifest.version}); the launcher cannot tell which is newer",
                    path=c.path)
    return [c for c in good if c.error is None], [c for c in checked if c.error is not None]


def expires_soon(manifest: Manifest, now: float, window: float = EXPIRY_WARNING) -> float | None:
    """Seconds until ``manifest`` expires when that is within ``window`` (a launch then warns);
    None for a manifest without expiry or further away."""
    if manifest.expires_at is None or manifest.expires_at - now >= window:
        return None
    return manifest.expires_at - now


def digest_bytes(data: bytes) -> str:
    """sha256 hex of bytes already in memory (a launcher just built or read whole)."""
    return hashlib.sha256(data).hexdigest()


def digest_of(fd: int, size: int) -> str:
    """sha256 of the first ``size`` bytes of ``fd`` (a sealed memfd or a file)."""
    if size == 0:
        return digest_bytes(b"")
    with mmap.mmap(fd, size, prot=mmap.PROT_READ, flags=mmap.MAP_SHARED) as view:
        return digest_bytes(view)


def digest_file(path: str) -> tuple[str, int]:
    """(sha256 hex, size) of a file: what a manifest binds, and what go-plugin's
    SecureConfig compares before each launch."""
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        st = os.fstat(fd)
        if stat.S_ISDIR(st.st_mode):
            raise IsADirectoryError(21, "Is a directory", path)
        if not stat.S_ISREG(st.st_mode):
            raise OSError(22, "Not a regular file", path)
        return digest_of(fd, st.st_size), st.st_size
    finally:
        os.close(fd)


def check_digest(fd: int, cand: Candidate) -> None:
    """Compare the bytes at ``fd`` with the signed manifest; raise on any difference."""
    size = os.fstat(fd).st_size
    if size != cand.manifest.size:
        raise DigestMismatchError(f"copied {size} bytes, the signed manifest says {cand.manifest.size}",
                                  path=cand.path)
    actual = digest_of(fd, size)
    if not hmac.compare_digest(actual, cand.manifest.sha256):
        raise DigestMismatchError(f"sha256 is {actual}, the signed manifest says {cand.manifest.sha256}",
                                  path=cand.path)


class Selection:
    """The verdict on a plugins directory: every candidate looked at, and the one that runs."""

    __slots__ = ("chosen", "value", "candidates")

    def __init__(self, chosen: Candidate | None, value: object, candidates: list[Candidate]):
        self.chosen = chosen          # the version that launches, or None
        self.value = value            # what ``accept`` returned for it (e.g. the sealed fd)
        self.candidates = candidates  # all of them, by file name, each with its verdict

    def passed_over(self) -> list[Candidate]:
        """The refused candidates that would have run before the chosen one: a newer version, or
        one whose version is unknown (its manifest did not verify, so it cannot be shown to be
        older). Non-empty means the launcher falls back past a release that was shipped to run
        (or refuses, if its policy says ``on_refused_newer: refuse``); ``verify`` and ``doctor``
        fail on it. An older version refused (expired, below the floor) is not passed over."""
        refused = [c for c in self.candidates if c.error is not None]
        if self.chosen is None:
            return refused
        return [c for c in refused if c.manifest is None or launch_order(c) > launch_order(self.chosen)]

    def refusal(self, policy: Policy) -> NoValidVersionError:
        total = len(self.candidates)
        return NoValidVersionError(
            f"no version of {policy.type} plugin {policy.name!r} passed verification "
            f"({total} candidate{'s' if total != 1 else ''} found)", path=policy.plugins_dir,
            fix=("ship a signed version: BINARY, BINARY.manifest.json and BINARY.manifest.json.minisig"
                 if total == 0 else "see the error logged above for each candidate"))


def select(policy: Policy, now: float, accept: Callable[[PluginDir, Candidate], object], *,
           on_reject: Callable[[Candidate], None] | None = None, exhaustive: bool = False,
           uid: int | None = None) -> Selection:
    """Which version runs: the one decision that launch, ``verify``, ``doctor`` and the demo
    share. Candidates whose signed manifest passes are tried in launch order
    (:meth:`PluginDir.ranked`); the first whose binary ``accept`` takes (it copies or
    hashes the bytes and calls :func:`check_digest`) is chosen. ``exhaustive`` goes on to
    give every other candidate its verdict too, without changing the choice."""
    with PluginDir(policy, uid) as pdir:
        good, bad = pdir.ranked(now)
        for cand in bad:
            if on_reject is not None:
                on_reject(cand)
        chosen, value = None, None
        for cand in good:
            if chosen is not None and not exhaustive:
                break
            try:
                result = accept(pdir, cand)
            except ShimError as exc:
                cand.error = exc
            except Exception as exc:  # fail closed for this candidate, and go on to the next
                cand.error = RejectedError("could not be checked (an unexpected error)", path=cand.path,
                                           fix="nothing of it was run; report this as a vault-plugin-shim bug",
                                           cause=exc)
            if cand.error is not None:
                if on_reject is not None:
                    on_reject(cand)
                continue
            if chosen is None:
                chosen, value = cand, result
        return Selection(chosen, value, sorted(good + bad, key=lambda c: c.binary))


def hash_only(pdir: PluginDir, cand: Candidate) -> str:
    fd = pdir.open_binary(cand)
    try:
        check_digest(fd, cand)
        return cand.manifest.sha256
    finally:
        os.close(fd)


def report(policy: Policy, now: float, uid: int | None = None) -> Selection:
    """Every candidate with its full verdict, and the one that would launch: for ``verify``
    and ``doctor``, by the launcher's own decision (as Vault's ``uid`` would see it)."""
    return select(policy, now, hash_only, exhaustive=True, uid=uid)
