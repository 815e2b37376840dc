"""Execute exactly the bytes that were verified.

The binary is copied into a sealed memfd (no writes, no resizes, no further seals), hashed
*there*, and that descriptor is executed with ``fexecve``. Whatever happens to the file on
disk after the copy cannot change what runs: this is the difference from Vault's own
"hash the path, then exec the path".

Where the kernel refuses to execute memfds (``vm.memfd_noexec`` = 2, or = 1 on kernels
that do not know ``MFD_EXEC``), the fallback is a private copy: an unnamed 0500 file
(``O_TMPFILE``) in ``TMPDIR``, written, reopened read-only through ``/proc/self/fd``, its
writable descriptor closed, hashed through the read-only descriptor, then executed through
that descriptor. It never has a path, so no other process can open it by name. (A named file,
even unlinked right after, can be opened while it exists and written again after the hash.)
This Python launcher stays dumpable, so a process of the Vault user could still reach it
through ``/proc/PID/fd``; the native launcher is not dumpable.

A sealed memfd is immutable for as long as it exists, so two processes of the same version
need not hold two copies: before copying, :func:`sealed_siblings` looks for a process of the
same user that already runs a memfd of the same name (``/proc/PID/exe`` is
``/memfd:NAME (deleted)``), opens that file through ``/proc/PID/exe``, and keeps it only if
it carries every seal and has the signed size. The caller then hashes it like its own copy,
and executes it only if it matches the signed manifest. A process that made a memfd of that
name with other bytes (or left it unsealed) gains nothing: it is ignored and a copy is made.
Ten mounts of a 60 MB plugin then pin 60 MB of shared memory, not 600 MB.
"""

from __future__ import annotations

import errno
import fcntl
import os

from shim.launch.errors import LaunchError

MFD_EXEC = 0x0010          # Linux 6.3+: ask for an executable memfd explicitly
SEALS = fcntl.F_SEAL_SEAL | fcntl.F_SEAL_SHRINK | fcntl.F_SEAL_GROW | fcntl.F_SEAL_WRITE
CHUNK = 8 * 1024 * 1024
F_GET_SEALS = getattr(fcntl, "F_GET_SEALS", 1034)
SIBLING_LIMIT = 8          # sealed memfds of one name looked at before making our own copy


MEMFD_NAME_MAX = 249       # the kernel's limit (NAME_MAX less "memfd:")


def _memfd_create(name: str) -> int:
    name = memfd_name(name)
    flags = os.MFD_CLOEXEC | os.MFD_ALLOW_SEALING
    try:
        return os.memfd_create(name, flags | MFD_EXEC)
    except OSError as exc:
        if exc.errno != errno.EINVAL:  # older kernels do not know MFD_EXEC
            raise
    return os.memfd_create(name, flags)


def _copy(src: int, dst: int, size: int) -> None:
    offset = 0
    while offset < size:
        try:
            sent = os.sendfile(dst, src, offset, min(CHUNK, size - offset))
        except OSError as exc:
            if exc.errno not in (errno.EINVAL, errno.ENOSYS):
                raise
            sent = _copy_slow(src, dst, offset, size)
        if sent == 0:
            raise LaunchError(f"the file shrank while being copied ({offset} of {size} bytes)")
        offset += sent


def _copy_slow(src: int, dst: int, offset: int, size: int) -> int:
    data = os.pread(src, min(CHUNK, size - offset), offset)
    view = memoryview(data)
    while view:
        view = view[os.write(dst, view):]
    return len(data)


def memfd_name(name: str) -> str:
    """The name a memfd made by :func:`to_memfd` gets (the kernel's limit applied)."""
    return name.encode("ascii", "replace")[:MEMFD_NAME_MAX].decode("ascii")


def to_memfd(src: int, size: int, name: str) -> int:
    """Copy ``size`` bytes of ``src`` into a new memfd and seal it. Returns the memfd.
    The source's pages are then dropped from the page cache (advice only): the sealed copy
    is what runs, and a second cached copy of a large plugin would only count against the
    pod's memory limit until reclaimed."""
    fd = _memfd_create(name)
    try:
        _copy(src, fd, size)
        fcntl.fcntl(fd, fcntl.F_ADD_SEALS, SEALS)
    except BaseException:
        os.close(fd)
        raise
    try:
        os.posix_fadvise(src, 0, size, os.POSIX_FADV_DONTNEED)
    except OSError:
        pass  # not every file system takes advice
    return fd


def running_from(name: str) -> list[int]:
    """The pids whose executable is a memfd called ``name`` (as far as this user may see)."""
    want = f"/memfd:{memfd_name(name)} (deleted)"
    out = []
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            try:
                if os.readlink(f"/proc/{entry.name}/exe") == want:
                    out.append(int(entry.name))
            except OSError:
                continue  # gone, a kernel thread, or another user's
    return out


def sealed_siblings(name: str, size: int) -> list[int]:
    """Read-only descriptors of the distinct, fully sealed memfds of ``size`` bytes that
    running processes execute under ``name`` (at most SIBLING_LIMIT). The caller owns them,
    and must still hash them: a name and a seal prove nothing about the bytes."""
    fds: list[int] = []
    seen: set[tuple[int, int]] = set()
    for pid in running_from(name):
        if len(fds) >= SIBLING_LIMIT:
            break
        try:
            fd = os.open(f"/proc/{pid}/exe", os.O_RDONLY | os.O_CLOEXEC)
        except OSError:
            continue
        try:
            st = os.fstat(fd)
            sealed = fcntl.fcntl(fd, F_GET_SEALS) & SEALS == SEALS
        except OSError:
            sealed = False
        if not sealed or st.st_size != size or (st.st_dev, st.st_ino) in seen:
            os.close(fd)
            continue
        seen.add((st.st_dev, st.st_ino))
        fds.append(fd)
    return fds


def check_temp_parent(parent: str) -> None:
    """The private copy's directory (``TMPDIR``) must be private (writable only by its owner,
    root or us) or sticky. The copy itself has no name there; this keeps others from
    rearranging the directory under the launch (a noexec mount in its place fails it)."""
    import stat

    try:
        st = os.stat(parent)
    except OSError as exc:
        raise LaunchError("the temporary directory for the private copy is unusable", path=parent,
                          fix="set TMPDIR in the plugin's catalog env to a directory the Vault user owns") from exc
    if not stat.S_ISDIR(st.st_mode):
        raise LaunchError("the temporary directory for the private copy is not a directory", path=parent,
                          fix="set TMPDIR in the plugin's catalog env to a directory the Vault user owns")
    others_write = st.st_mode & 0o022
    if (others_write and not st.st_mode & stat.S_ISVTX) or st.st_uid not in (0, os.geteuid()):
        raise LaunchError(f"the temporary directory for the private copy is writable by others without the "
                          f"sticky bit, or owned by uid {st.st_uid} (mode {stat.S_IMODE(st.st_mode):04o})",
                          path=parent, fix="set TMPDIR in the plugin's catalog env to a directory the Vault "
                                           "user owns with mode 0700, or use a sticky /tmp")


def to_private_file(src: int, size: int, tmpdir: str | None = None) -> int:
    """The fallback: a read-only descriptor of a private copy, an unnamed file (``O_TMPFILE``)
    under ``tmpdir`` (Vault's ``TMPDIR`` for the plugin; else /tmp), whose writable descriptor
    is closed. A file system without ``O_TMPFILE`` (overlayfs before Linux 6.6) is refused."""
    parent = tmpdir or "/tmp"
    check_temp_parent(parent)
    try:
        out = os.open(parent, os.O_TMPFILE | os.O_RDWR | os.O_CLOEXEC, 0o500)
    except OSError as exc:
        if exc.errno not in (errno.EOPNOTSUPP, errno.EISDIR):
            raise
        raise LaunchError(f"cannot make the private copy in {parent}: its file system cannot make unnamed files "
                          f"(O_TMPFILE: {exc.strerror}), and a named copy could be rewritten after its hash",
                          path=parent, fix="set TMPDIR in the plugin's catalog env to a directory on tmpfs (an "
                                           "emptyDir with medium: Memory), ext4 or xfs that the Vault user owns",
                          cause=exc) from exc
    try:
        _copy(src, out, size)
        return os.open(f"/proc/self/fd/{out}", os.O_RDONLY | os.O_CLOEXEC)
    finally:
        os.close(out)


def describe_os_error(exc: OSError, what: str, tmpdir: str | None) -> LaunchError:
    """The named error for an ``OSError`` while making or running the verified copy."""
    where = tmpdir or "/tmp"
    if exc.errno in (errno.EMFILE, errno.ENFILE):
        reason, fix = "too many open files", "raise Vault's open-file limit (ulimit -n, systemd LimitNOFILE)"
    elif exc.errno in (errno.ENOSPC, errno.ENOMEM, errno.EDQUOT):
        reason, fix = ("no space or memory for the verified copy (a memfd counts against the pod's memory "
                       "limit)", f"raise the memory limit, or free space in {where}")
    elif exc.errno in (errno.EROFS, errno.EACCES, errno.EPERM, errno.ENOENT, errno.ENOTDIR):
        reason, fix = (f"no usable temporary directory for the private copy ({where})",
                       "set TMPDIR in the plugin's catalog env to a writable, executable directory the Vault "
                       "user owns (e.g. an emptyDir tmpfs)")
    else:
        reason, fix = "an operating system error", "see the cause; nothing unverified was run"
    return LaunchError(f"cannot {what}: {reason}", path=tmpdir if "temporary" in reason else None, fix=fix,
                       cause=exc)


def noexec_mount(path: str | None) -> bool:
    """Whether ``path`` (default /tmp) is on a file system mounted ``noexec``."""
    try:
        return bool(os.statvfs(path or "/tmp").f_flag & os.ST_NOEXEC)
    except OSError:
        return False


def materialize(src: int, size: int, name: str, *, method: str = "auto",
                tmpdir: str | None = None) -> tuple[int, str]:
    """Return (fd holding a private copy of the bytes, how it was made)."""
    if method in ("auto", "memfd"):
        try:
            return to_memfd(src, size, name), "memfd"
        except OSError as exc:
            if method == "memfd" or exc.errno not in (errno.EACCES, errno.EPERM, errno.ENOSYS):
                raise
    return to_private_file(src, size, tmpdir), "private-file"


def fexecve(fd: int, argv: list[str], env: dict[str, str], *, script: bool) -> None:
    """Replace this process with the program in ``fd``; returns only by raising.

    A ``#!`` script is re-opened by its interpreter through ``/dev/fd/N`` after exec, so
    for scripts the descriptor must stay open across exec.
    """
    if script:
        os.set_inheritable(fd, True)
    os.execve(fd, argv, env)
