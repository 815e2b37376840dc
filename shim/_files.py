"""Writing a file whole or not at all: the one way the CLI writes keys, manifests, signatures
and launchers."""

from __future__ import annotations

import os
from pathlib import Path


def write_atomic(path: str | os.PathLike, data: bytes, mode: int) -> None:
    """Write ``path`` whole or not at all, with exactly ``mode`` (the umask does not apply: a
    umask of 002 must not make a manifest group-writable, which the launcher refuses). A new
    file beside it, then a rename over it (a symlink there is replaced, never followed). Any
    error, or a Ctrl-C, removes the new file and leaves ``path`` as it was; an error names
    ``path``, not the new file."""
    path = os.fspath(path)
    tmp = os.path.join(os.path.dirname(path), f".{os.path.basename(path)}.tmp-{os.getpid()}")
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, mode)
    except OSError as exc:
        raise OSError(exc.errno, exc.strerror, path) from None
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fchmod(fh.fileno(), mode)
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
