"""Why a key, signature, manifest, policy or plugin candidate is refused.

The pure trust decisions raise only these. Each names the file and the fix.
"""

from __future__ import annotations

from shim.errors import ShimError


class TrustError(ShimError):
    """Base class: something the trust decisions refuse."""


# --- keys and signatures (minisign format) -------------------------------------------

class KeyFormatError(TrustError):
    """A public or secret key file is not in minisign format."""

    default_fix = "use a key written by `vault-plugin-shim keygen` or `minisign -G`"


class KeyPasswordError(TrustError):
    """The secret key could not be decrypted with the password given."""

    default_fix = "check the password (prompt, or the environment variable named by --password-env)"


class KeyMemoryError(TrustError):
    """Decrypting (or encrypting) a secret key needs more memory than this process may use."""


class SignatureFormatError(TrustError):
    """A .minisig file cannot be parsed."""

    default_fix = "re-sign the manifest with `vault-plugin-shim sign` or `minisign -S`"


class UnknownKeyError(TrustError):
    """The signature was made by a key the policy does not trust."""

    default_fix = ("sign with a trusted key, or add its public key to the launcher policy "
                   "(`vault-plugin-shim launcher build --trusted-key ...`) and roll it out first")


class BadSignatureError(TrustError):
    """The signature does not verify: the signed bytes were changed, or it is forged."""

    default_fix = "the manifest or its trusted comment was modified after signing; re-sign it in release CI"


class LegacySignatureError(TrustError):
    """A legacy (non-prehashed ``Ed``) signature, refused by default."""

    default_fix = "re-sign with a current minisign (prehashed `ED` signatures are the default since 0.8)"


# --- manifests -----------------------------------------------------------------------

class ManifestError(TrustError):
    """The manifest's bytes are not a valid manifest of the supported schema."""

    default_fix = "regenerate it with `vault-plugin-shim sign`"


# --- policy --------------------------------------------------------------------------

class PolicyError(TrustError):
    """The trust policy itself is missing or invalid."""

    default_fix = "rebuild the launcher with `vault-plugin-shim launcher build`"


# --- candidate verdicts --------------------------------------------------------------

class RejectedError(TrustError):
    """Base for reasons a candidate plugin version is refused."""


class UnsafeFileError(RejectedError):
    """A file is a symlink, not regular, writable by others, or owned by a stranger."""

    default_fix = ("ship the file as a regular file owned by root (or the Vault user) "
                   "with mode 0755 or stricter (0644 for manifests)")


class FileTooLargeError(RejectedError):
    """A file is larger than the limit for its kind."""


class DigestMismatchError(RejectedError):
    """The binary's bytes do not match the sha256/size the signed manifest binds."""

    default_fix = ("the binary differs from the one that was signed: ship the binary and "
                   "manifest from the same release")


class WrongPluginError(RejectedError):
    """The manifest is for another plugin name, type, OS or architecture."""

    default_fix = "ship the manifest that belongs to this plugin, or rebuild the launcher for it"


class ExpiredError(RejectedError):
    """The manifest is past its expiry (or not yet valid)."""

    default_fix = "re-sign the release with a later --expires, and check the node's clock"


class RollbackError(RejectedError):
    """The version is below the launcher's minimum version (rollback floor)."""

    default_fix = ("ship a version at or above the floor; lowering the floor needs a new "
                   "launcher build and registration")


class AmbiguousVersionError(RejectedError):
    """Two valid versions of equal precedence, issued at the same second."""

    default_fix = ("ship one build per version (or give each its own version number); semver ignores "
                   "+build metadata when ordering")


class NoValidVersionError(TrustError):
    """No candidate in the plugins directory passed every check."""

    default_fix = "see the errors logged above for each candidate"


class NewerVersionRefusedError(TrustError):
    """A newer version is present and refused, and the policy says not to fall back past it
    (``on_refused_newer: refuse``)."""

    default_fix = ("ship the newer release intact (binary, manifest and .minisig from the same release), or "
                   "remove it if the older version is meant to run")
