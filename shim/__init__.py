"""vault-plugin-shim: run signed Vault/OpenBao plugin versions behind one stable launcher.

The few names an integrator needs::

    from shim import Policy, PublicKey, verify_directory
    policy = Policy(name="my-plugin", type="secret", plugins_dir="/vault/plugin-versions/my-plugin",
                                    trusted_keys=(PublicKey.parse(open("release.pub", "rb").read()),))
    selection = verify_directory(policy)      # the launcher's own decision
    selection.chosen                          # the candidate that would launch, or None
    [c.error for c in selection.candidates]   # each rejected one says why

Also :func:`read_manifest` (a release's signed manifest, verified) and :func:`sign_release`
(what ``vault-plugin-shim sign`` runs). The go-plugin wire protocol is :mod:`shim.goplugin`.

Names load on first use: the launcher imports ``shim`` on every plugin start, so nothing
may be imported here eagerly.
"""

from __future__ import annotations

__version__ = "0.1.0"
__all__ = ["Manifest", "Policy", "PublicKey", "SecretKey", "Selection", "ShimError", "Version",
           "read_manifest", "sign_release", "verify_directory"]

_HOMES = {
    "Manifest": "shim.trust.manifest", "Version": "shim.trust.manifest",
    "Policy": "shim.trust.policy",
    "PublicKey": "shim.trust.minisign", "SecretKey": "shim.trust.minisign",
    "Selection": "shim.trust.verify", "ShimError": "shim.errors",
    "sign_release": "shim.ops.release",
}


def verify_directory(policy, now: float | None = None):
    """Every candidate in ``policy.plugins_dir`` with its verdict, and the one a launcher
    with this policy would run (:class:`shim.trust.verify.Selection`). Hashes every valid
    binary; changes nothing."""
    import time

    from shim.trust.verify import report

    return report(policy, time.time() if now is None else now)


def read_manifest(binary: str, trusted_keys):
    """The signed manifest next to ``binary``, after its signature verified against one of
    ``trusted_keys``: ``(Manifest, PublicKey that signed it)``. Does not hash the binary
    (:func:`verify_directory` does)."""
    from shim.trust import minisign
    from shim.trust.manifest import Manifest, manifest_path, signature_path

    path = manifest_path(binary)
    with open(path, "rb") as fh:
        data = fh.read()
    with open(signature_path(binary), "rb") as fh:
        sig = minisign.Signature.parse(fh.read(), path=signature_path(binary))
    key = minisign.verify(data, sig, trusted_keys, path=signature_path(binary))
    return Manifest.parse(data, path=path), key


def __getattr__(name: str):
    home = _HOMES.get(name)
    if home is None:
        raise AttributeError(f"module 'shim' has no attribute {name!r}")
    import importlib

    return getattr(importlib.import_module(home), name)
