"""Ed25519 signing with a Vault Transit key, so release CI never holds the private key.

minisign's ``ED`` signatures are Ed25519 over BLAKE2b-512(file), and its global signature
is Ed25519 over (signature || trusted comment). Both messages are computed here and handed
to Transit as raw bytes: for ``ed25519`` keys Transit signs its ``input`` as is (no
``hash_algorithm``, no ``prehashed``; those select other algorithms), which is exactly
PureEdDSA over the bytes minisign expects.

Every signature Transit returns is verified locally against the public key read before
signing, and the request names that key version: a rotation between the two reads, a
derived key, or a confused proxy cannot yield a .minisig that does not verify.

Key id: minisign needs an 8-byte key id next to the key. Transit has none, so it is derived
from the public key: the first 8 bytes of BLAKE2b-512 over the 32 raw public-key bytes.
Reproduce it with ``vault read -field=public_key ...`` | ``base64 -d | b2sum | cut -c1-16``
(that hex is the key id's bytes in order; minisign prints the same 8 bytes reversed,
upper-case). Each Transit key version therefore has its own key id, so rotating the
Transit key is a minisign key rotation: publish the new public key first.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import re

from shim.ops.errors import TransitError, TransitSignatureError
from shim.ops.vaultenv import VaultEnv, call

_SIGNATURE = re.compile(r"^vault:v(?P<version>\d+):(?P<sig>[A-Za-z0-9+/=]+)$")


def key_id_for(public_key_raw: bytes) -> bytes:
    """The minisign key id used for a Transit Ed25519 key: BLAKE2b-512(pk)[:8]."""
    if len(public_key_raw) != 32:
        raise ValueError("an Ed25519 public key is 32 bytes")
    return hashlib.blake2b(public_key_raw, digest_size=64).digest()[:8]


class TransitSigner:
    """Sign raw messages with ``<mount>/keys/<key_name>`` (type ``ed25519``)."""

    def __init__(self, client, key_name: str, mount: str = "transit", *,
                 key_version: int | None = None):
        if not key_name or "/" in key_name:
            raise TransitError(f"Transit key name {key_name!r} is not usable",
                               fix="give the key's name as in `vault list transit/keys`")
        self.client = client
        self.key_name = key_name
        self.mount = mount.strip("/") or "transit"
        self._wanted_version = key_version
        self._version: int | None = None
        self._public: bytes | None = None

    # -- key ----------------------------------------------------------------------------

    @property
    def key_path(self) -> str:
        return f"{self.mount}/keys/{self.key_name}"

    def _load(self) -> None:
        if self._public is not None:
            return
        resp = call(f"reading Transit key {self.key_name}", "GET", self.key_path,
                    lambda: self.client.adapter.get(f"/v1/{self.key_path}"),
                    fixes={403: f'the token needs read on {self.key_path}: '
                                f'path "{self.key_path}" {{ capabilities = ["read"] }}',
                           404: f"no Transit key {self.key_name} at {self.mount}/: create one with "
                                f"`vault write -f {self.mount}/keys/{self.key_name} type=ed25519` "
                                f"(or fix --transit-mount)"})
        data = resp.get("data") if isinstance(resp, dict) else None
        if not isinstance(data, dict):
            raise TransitError(f"Vault's answer for {self.key_path} has no data",
                               fix="check that VAULT_ADDR points at Vault and the mount is Transit")
        if data.get("type") != "ed25519":
            raise TransitError(
                f"Transit key {self.key_name} is of type {data.get('type')!r}; minisign needs ed25519",
                fix=f"create an Ed25519 key: `vault write -f {self.mount}/keys/<name> type=ed25519`")
        if data.get("derived"):
            raise TransitError(
                f"Transit key {self.key_name} is a derived key: each context signs with another key",
                fix=f"create a non-derived key: `vault write -f {self.mount}/keys/<name> type=ed25519`")
        keys = data.get("keys") or {}
        version = self._wanted_version or data.get("latest_version")
        if not isinstance(version, int) or str(version) not in keys:
            raise TransitError(f"Transit key {self.key_name} has no version {version!r}",
                               fix="use an existing key version (see `vault read "
                                   f"{self.key_path}`)")
        min_enc = data.get("min_encryption_version") or 0
        if isinstance(min_enc, int) and version < min_enc:
            raise TransitError(f"Transit key {self.key_name} version {version} is below its "
                               f"min_encryption_version {min_enc}, so Transit will not sign with it",
                               fix="sign with the latest key version")
        entry = keys[str(version)]
        encoded = entry.get("public_key") if isinstance(entry, dict) else None
        try:
            raw = binascii.a2b_base64((encoded or "").encode("ascii"), strict_mode=True)
        except (binascii.Error, UnicodeEncodeError, ValueError):
            raw = b""
        if len(raw) != 32:
            raise TransitError(f"Transit key {self.key_name} v{version} has no usable Ed25519 public key",
                               fix="check the key with `vault read " + self.key_path + "`")
        self._version, self._public = version, raw

    @property
    def key_version(self) -> int:
        self._load()
        assert self._version is not None
        return self._version

    def public_key_raw(self) -> bytes:
        """The 32-byte Ed25519 public key of the version this signer signs with."""
        self._load()
        assert self._public is not None
        return self._public

    @property
    def key_id(self) -> bytes:
        return key_id_for(self.public_key_raw())

    def minisign_public_key(self):
        """The key as a ``shim.trust.minisign.PublicKey`` (for ``keygen --from-transit``)."""
        from shim.trust.minisign import PublicKey

        return PublicKey(self.key_id, self.public_key_raw())

    def require_trusted(self, trusted) -> None:
        """Refuse to sign with a key version launchers do not trust: ``trusted`` are the
        minisign public keys they were built with (key id and key bytes must both match).
        After ``rotate`` the latest version is a new key; signing with it before its public
        key is rolled out would publish a release every launcher refuses."""
        from shim.trust.minisign import key_id_hex

        if not trusted or any(k.key_id == self.key_id and k.raw == self.public_key_raw() for k in trusted):
            return
        ids = ", ".join(k.key_id_hex for k in trusted)
        raise TransitError(
            f"Transit key {self.key_name} version {self.key_version} is key id "
            f"{key_id_hex(self.key_id)}, not one of the trusted keys ({ids}): launchers trusting "
            f"those would refuse this signature; nothing was signed",
            fix=(f"sign with a trusted version (--transit-key-version N), or first publish this "
                 f"version's public key (`vault-plugin-shim keygen --from-transit {self.key_name} "
                 f"--transit-key-version {self.key_version} --public-key NEW.pub`), roll out launchers "
                 f"that trust it, and add it to --trusted-key"))

    # -- signing ------------------------------------------------------------------------

    def sign(self, message: bytes) -> bytes:
        """Ed25519 signature (64 bytes) over ``message`` exactly, verified before return."""
        from cryptography.exceptions import InvalidSignature
        from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

        public, version = self.public_key_raw(), self.key_version
        path = f"{self.mount}/sign/{self.key_name}"
        body = {"input": base64.b64encode(message).decode("ascii"), "key_version": version}
        resp = call(f"signing with Transit key {self.key_name}", "POST", path,
                    lambda: self.client.adapter.post(f"/v1/{path}", json=body),
                    fixes={403: f'the token needs update on {path}: '
                                f'path "{path}" {{ capabilities = ["update"] }}',
                           400: "see Vault's message (a derived key or a key type that cannot sign?)"})
        text = ((resp.get("data") or {}).get("signature") if isinstance(resp, dict) else None) or ""
        match = _SIGNATURE.match(text)
        if not match:
            raise TransitSignatureError(f"Transit returned no signature in the form vault:vN:<base64> "
                                        f"(got {text[:40]!r})")
        if int(match["version"]) != version:
            raise TransitSignatureError(f"Transit signed with key version {match['version']}, "
                                        f"not the requested {version}")
        try:
            signature = binascii.a2b_base64(match["sig"].encode("ascii"), strict_mode=True)
        except binascii.Error:
            raise TransitSignatureError("Transit's signature is not valid base64") from None
        if len(signature) != 64:
            raise TransitSignatureError(f"Transit's signature is {len(signature)} bytes, not 64")
        try:
            Ed25519PublicKey.from_public_bytes(public).verify(signature, message)
        except InvalidSignature:
            raise TransitSignatureError(
                f"the signature from Transit key {self.key_name} v{version} does not verify "
                f"against its public key (refusing to use it)") from None
        return signature


def transit_signer_from_env(key_name: str, mount: str = "transit",
                            key_version: int | None = None) -> TransitSigner:
    """A signer for ``key_name`` (``key_version``, default the latest) using
    VAULT_ADDR/VAULT_TOKEN/... like the vault CLI."""
    return TransitSigner(VaultEnv.from_environ().client(), key_name, mount, key_version=key_version)
