"""Sign a plugin release: write ``FILE.manifest.json`` and its ``.minisig``.

What release CI runs (through ``vault-plugin-shim sign`` or this function). The manifest is
parsed back before it is signed, so what gets signed is exactly what a launcher accepts.
"""

from __future__ import annotations

from collections.abc import Callable

from shim._files import write_atomic
from shim.trust import minisign
from shim.trust.manifest import Manifest, Version, manifest_path, signature_path
from shim.trust.verify import digest_file, host_platform


def sign_release(binary: str, *, name: str, type: str, version: str | Version, key_id: bytes,
                 sign: Callable[[bytes], bytes], issued_at: int, expires_at: int | None = None,
                 os_: str | None = None, arch: str | None = None) -> Manifest:
    """Bind ``binary``'s sha256 and size to a signed manifest next to it; return the manifest.

    ``sign`` is an Ed25519 signer over raw bytes (a :class:`~shim.trust.minisign.SecretKey`'s
    ``sign``, or Vault Transit's), ``key_id`` its minisign key id.
    """
    if not isinstance(version, Version):
        version = Version.parse_tag(version)
    sha256, size = digest_file(binary)
    goos, goarch = host_platform()
    manifest = Manifest(name=name, type=type, version=version, sha256=sha256, size=size,
                        os=os_ or goos, arch=arch or goarch, issued_at=issued_at, expires_at=expires_at)
    data = manifest.to_bytes()
    Manifest.parse(data, path=manifest_path(binary))  # what we sign must be what launch accepts
    sig = minisign.sign_detached(data, key_id, sign, trusted_comment=manifest.trusted_comment())
    write_atomic(manifest_path(binary), data, 0o644)
    write_atomic(signature_path(binary), sig, 0o644)
    return manifest
