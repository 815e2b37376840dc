"""minisign-compatible Ed25519 keys and signatures.

Byte-compatible with the ``minisign`` CLI (0.8+) in both directions:

* public key: ``untrusted comment: ...`` then base64(``Ed`` || key_id[8] || pk[32]);
* signature: ``untrusted comment: ...``, base64(``ED`` || key_id[8] || sig[64]) where
  ``sig`` is Ed25519 over BLAKE2b-512(data), ``trusted comment: ...``, then base64 of the
  global signature, Ed25519 over (sig || trusted comment bytes);
* secret key: base64(``Ed`` || kdf ``Sc``/``\\0\\0`` || ``B2`` || salt[32] || opslimit[8 LE]
  || memlimit[8 LE] || (key_id[8] || sk[64] || chk[32]) XOR scrypt-stream), where chk is
  BLAKE2b-256(``Ed`` || key_id || sk).

Parsing is pure (bytes in, value or our own error out) and strict: exact lengths, strict
base64, bounded sizes. Legacy ``Ed`` signatures (Ed25519 over the raw data) are refused
unless a caller opts in: they are what older minisign wrote, and accepting them by default
would let a verifier be steered onto the weaker path.
"""

from __future__ import annotations

import binascii
import hashlib
import os
from collections.abc import Callable, Iterable
from shim._record import Record
from shim.trust.errors import (
    BadSignatureError,
    KeyFormatError,
    KeyMemoryError,
    KeyPasswordError,
    LegacySignatureError,
    SignatureFormatError,
    UnknownKeyError,
)

ALG_ED25519 = b"Ed"
ALG_HASHED = b"ED"
KDF_SCRYPT = b"Sc"
KDF_NONE = b"\0\0"
CHK_BLAKE2B = b"B2"
KEY_ID_LEN = 8
UNTRUSTED = "untrusted comment: "
TRUSTED = "trusted comment: "
MAX_SIGNATURE_FILE = 16 * 1024       # minisign caps the trusted comment at 8 KiB
MAX_KEY_FILE = 4 * 1024
MAX_COMMENT = 1024
MAX_TRUSTED_COMMENT = 8192
# minisign's defaults (libsodium's *_SENSITIVE scrypt limits): N=2^20, r=8, p=1, 1 GiB.
SCRYPT_OPSLIMIT = 33554432
SCRYPT_MEMLIMIT = 1073741824
MAX_SCRYPT_MEMORY = 2 * 1024 ** 3 - 1  # hashlib's ceiling; refuse anything above


def blake2b_512(data: bytes) -> bytes:
    return hashlib.blake2b(data, digest_size=64).digest()


def key_id_hex(key_id: bytes) -> str:
    """minisign prints the key id as the little-endian uint64, upper-case hex."""
    return key_id[::-1].hex().upper()


def _b64decode(text: str, what: str, path: str | None, error: type) -> bytes:
    try:
        return binascii.a2b_base64(text.encode("ascii"), strict_mode=True)
    except (binascii.Error, UnicodeEncodeError, ValueError) as exc:
        raise error(f"{what} is not valid base64 ({exc})", path=path) from None


def _b64encode(data: bytes) -> str:
    return binascii.b2a_base64(data, newline=False).decode("ascii")


def _lines(data: bytes, limit: int, what: str, path: str | None, error: type) -> list[str]:
    if len(data) > limit:
        raise error(f"{what} is {len(data)} bytes, more than the {limit}-byte limit", path=path)
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise error(f"{what} is not UTF-8 text", path=path) from None
    lines = text.split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    return [line[:-1] if line.endswith("\r") else line for line in lines]


def _check_comment(comment: str, prefix: str, limit: int, what: str, path, error) -> str:
    if not comment.startswith(prefix):
        raise error(f"{what} must start with {prefix.strip()!r}", path=path)
    body = comment[len(prefix):]
    if len(body.encode("utf-8")) > limit:
        raise error(f"{what} is longer than {limit} bytes", path=path)
    if any(ord(ch) < 0x20 and ch != "\t" for ch in body):
        raise error(f"{what} contains control characters", path=path)
    return body


class PublicKey(Record):
    __slots__ = _fields = ("key_id", "raw")

    def _validate(self):
        if len(self.key_id) != KEY_ID_LEN or len(self.raw) != 32:
            raise KeyFormatError("a public key is an 8-byte key id and a 32-byte Ed25519 key")

    @property
    def key_id_hex(self) -> str:
        return key_id_hex(self.key_id)

    @classmethod
    def parse(cls, data: bytes, path: str | None = None) -> "PublicKey":
        """Parse a minisign public key file, or the bare base64 line (``minisign -P``)."""
        lines = [ln for ln in _lines(data, MAX_KEY_FILE, "public key", path, KeyFormatError) if ln.strip()]
        if len(lines) == 2:
            _check_comment(lines[0], UNTRUSTED, MAX_COMMENT, "the public key's first line", path, KeyFormatError)
            encoded = lines[1]
        elif len(lines) == 1:
            encoded = lines[0]
        else:
            raise KeyFormatError("a public key has one comment line and one base64 line", path=path)
        blob = _b64decode(encoded.strip(), "the public key", path, KeyFormatError)
        if len(blob) != 42:
            raise KeyFormatError(f"the public key decodes to {len(blob)} bytes, expected 42", path=path)
        if blob[:2] != ALG_ED25519:
            raise KeyFormatError(f"unsupported public key algorithm {blob[:2]!r}", path=path)
        return cls(blob[2:10], blob[10:])

    def to_text(self, untrusted_comment: str | None = None) -> str:
        comment = untrusted_comment or f"minisign public key {self.key_id_hex}"
        return f"{UNTRUSTED}{comment}\n{_b64encode(ALG_ED25519 + self.key_id + self.raw)}\n"

    def verify_raw(self, signature: bytes, message: bytes) -> bool:
        from cryptography.exceptions import InvalidSignature
        from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

        try:
            Ed25519PublicKey.from_public_bytes(self.raw).verify(signature, message)
        except InvalidSignature:
            return False
        return True


class Signature(Record):
    __slots__ = _fields = ("algorithm", "key_id", "signature", "trusted_comment", "global_signature",
                           "untrusted_comment")
    _defaults = {"untrusted_comment": ""}

    @classmethod
    def parse(cls, data: bytes, path: str | None = None) -> "Signature":
        err = SignatureFormatError
        lines = _lines(data, MAX_SIGNATURE_FILE, "signature file", path, err)
        if len(lines) != 4:
            raise err(f"a minisign signature has 4 lines, this one has {len(lines)}", path=path)
        untrusted = _check_comment(lines[0], UNTRUSTED, MAX_COMMENT, "line 1", path, err)
        blob = _b64decode(lines[1], "the signature line", path, err)
        if len(blob) != 74:
            raise err(f"the signature decodes to {len(blob)} bytes, expected 74", path=path)
        trusted = _check_comment(lines[2], TRUSTED, MAX_TRUSTED_COMMENT, "line 3", path, err)
        global_sig = _b64decode(lines[3], "the global signature", path, err)
        if len(global_sig) != 64:
            raise err(f"the global signature decodes to {len(global_sig)} bytes, expected 64", path=path)
        if blob[:2] not in (ALG_HASHED, ALG_ED25519):
            raise err(f"unsupported signature algorithm {blob[:2]!r}", path=path)
        return cls(blob[:2], blob[2:10], blob[10:], trusted, global_sig, untrusted)

    def to_text(self) -> str:
        comment = self.untrusted_comment or "signature from vault-plugin-shim"
        return (f"{UNTRUSTED}{comment}\n"
                f"{_b64encode(self.algorithm + self.key_id + self.signature)}\n"
                f"{TRUSTED}{self.trusted_comment}\n"
                f"{_b64encode(self.global_signature)}\n")


def verify(data: bytes, sig: Signature, trusted: Iterable[PublicKey], *,
           allow_legacy: bool = False, path: str | None = None) -> PublicKey:
    """Check ``sig`` over ``data`` against the trusted keys; return the key that signed.

    Both signatures must hold: the one over the data and the global one that binds the
    trusted comment, so neither the file nor the comment can be swapped.
    """
    if sig.algorithm == ALG_ED25519 and not allow_legacy:
        raise LegacySignatureError("legacy non-prehashed `Ed` signature refused", path=path)
    key = next((k for k in trusted if k.key_id == sig.key_id), None)
    if key is None:
        raise UnknownKeyError(f"signed by key {key_id_hex(sig.key_id)}, which is not trusted", path=path)
    message = blake2b_512(data) if sig.algorithm == ALG_HASHED else data
    if not key.verify_raw(sig.signature, message):
        raise BadSignatureError(
            f"signature by key {key.key_id_hex} does not match the file's contents", path=path)
    if not key.verify_raw(sig.global_signature, sig.signature + sig.trusted_comment.encode("utf-8")):
        raise BadSignatureError(
            f"the trusted comment's signature by key {key.key_id_hex} is invalid", path=path)
    return key


def sign_detached(data: bytes, key_id: bytes, sign: Callable[[bytes], bytes], *,
                  trusted_comment: str, untrusted_comment: str = "signature from vault-plugin-shim") -> bytes:
    """Produce the text of a prehashed (``ED``) .minisig file.

    ``sign`` is any Ed25519 signing function (a local key, or Vault Transit), so the
    private key need not live in this process.
    """
    for text, limit, what in ((trusted_comment, MAX_TRUSTED_COMMENT, "trusted comment"),
                              (untrusted_comment, MAX_COMMENT, "untrusted comment")):
        if "\n" in text or "\r" in text or len(text.encode("utf-8")) > limit:
            raise ValueError(f"{what} must be one line of at most {limit} bytes")
    signature = sign(blake2b_512(data))
    global_signature = sign(signature + trusted_comment.encode("utf-8"))
    sig = Signature(ALG_HASHED, key_id, signature, trusted_comment, global_signature, untrusted_comment)
    return sig.to_text().encode("utf-8")


# --- secret keys ---------------------------------------------------------------------

def _scrypt_params(opslimit: int, memlimit: int) -> tuple[int, int, int]:
    """libsodium's pickparams() for crypto_pwhash_scryptsalsa208sha256: (N_log2, r, p)."""
    opslimit = max(opslimit, 32768)
    r = 8
    if opslimit < memlimit // 32:
        p = 1
        max_n = opslimit // (r * 4)
        n_log2 = 1
        while n_log2 < 63 and (1 << n_log2) <= max_n // 2:
            n_log2 += 1
    else:
        max_n = memlimit // (r * 128)
        n_log2 = 1
        while n_log2 < 63 and (1 << n_log2) <= max_n // 2:
            n_log2 += 1
        max_rp = min((opslimit // 4) // (1 << n_log2), 0x3FFFFFFF)
        p = max_rp // r
    return n_log2, r, p


def _scrypt_stream(password: bytes, salt: bytes, opslimit: int, memlimit: int, length: int, path,
                   *, encrypting: bool = False) -> bytes:
    n_log2, r, p = _scrypt_params(opslimit, memlimit)
    need = 128 * r * ((1 << n_log2) + p + 2)
    if n_log2 > 24 or p < 1 or need > MAX_SCRYPT_MEMORY:
        raise KeyFormatError(
            f"scrypt parameters (N=2^{n_log2}, r={r}, p={p}) are outside the supported range", path=path)
    try:
        return hashlib.scrypt(password, salt=salt, n=1 << n_log2, r=r, p=p, maxmem=need + (1 << 20), dklen=length)
    except (MemoryError, ValueError) as exc:  # OpenSSL reports a refused allocation as "malloc failure"
        if not isinstance(exc, MemoryError) and "malloc" not in str(exc):
            raise
        if encrypting:
            raise KeyMemoryError(
                f"encrypting the new secret key needs {need >> 20} MiB of memory for its scrypt key derivation "
                f"(N=2^{n_log2}, r={r}, as by minisign -G), and this process could not allocate it (a memory "
                f"limit: ulimit -v, a container or CI runner limit)", path=path, cause=exc,
                fix=f"give this step at least {(need >> 20) + 256} MiB (signing with the key needs as much); or "
                    f"write the key with --unencrypted and keep it in a secret store; or keep it in Vault "
                    f"Transit (keygen --from-transit)") from None
        raise KeyMemoryError(
            f"the secret key is scrypt-encrypted (N=2^{n_log2}, r={r}, as by minisign -G), which needs "
            f"{need >> 20} MiB of memory to decrypt, and this process could not allocate it (a memory "
            f"limit: ulimit -v, a container or CI runner limit)", path=path, cause=exc,
            fix=f"give this step at least {(need >> 20) + 256} MiB; or sign with Vault Transit "
                f"(--transit-key: the key never leaves Vault); or keep an unencrypted key (keygen "
                f"--unencrypted) in the CI secret store, as a file that exists only for the sign step") from None


def _checksum(key_id: bytes, sk: bytes) -> bytes:
    return hashlib.blake2b(ALG_ED25519 + key_id + sk, digest_size=32).digest()


class SecretKey(Record):
    __slots__ = _fields = ("key_id", "seed")

    def __repr__(self):
        return f"SecretKey(key_id={self.key_id.hex()}, seed=<hidden>)"

    @classmethod
    def generate(cls) -> "SecretKey":
        return cls(os.urandom(KEY_ID_LEN), os.urandom(32))

    def _private(self):
        from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

        return Ed25519PrivateKey.from_private_bytes(self.seed)

    def public_key(self) -> PublicKey:
        from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

        raw = self._private().public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
        return PublicKey(self.key_id, raw)

    def sign(self, message: bytes) -> bytes:
        return self._private().sign(message)

    def to_text(self, password: bytes | None, *, opslimit: int = SCRYPT_OPSLIMIT,
                memlimit: int = SCRYPT_MEMLIMIT) -> str:
        sk = self.seed + self.public_key().raw
        keynum_sk = self.key_id + sk + _checksum(self.key_id, sk)
        salt = os.urandom(32)
        if password is None:
            kdf, body = KDF_NONE, keynum_sk
            comment = "minisign secret key"
        else:
            stream = _scrypt_stream(password, salt, opslimit, memlimit, len(keynum_sk), None, encrypting=True)
            kdf, body = KDF_SCRYPT, bytes(a ^ b for a, b in zip(keynum_sk, stream))
            comment = "minisign encrypted secret key"
        blob = (ALG_ED25519 + kdf + CHK_BLAKE2B + salt + opslimit.to_bytes(8, "little")
                + memlimit.to_bytes(8, "little") + body)
        return f"{UNTRUSTED}{comment}\n{_b64encode(blob)}\n"

    @staticmethod
    def is_encrypted(data: bytes, path: str | None = None) -> bool:
        return SecretKey._parse_blob(data, path)[1] == KDF_SCRYPT

    @staticmethod
    def _parse_blob(data: bytes, path):
        lines = [ln for ln in _lines(data, MAX_KEY_FILE, "secret key", path, KeyFormatError) if ln.strip()]
        if len(lines) != 2:
            raise KeyFormatError("a secret key has one comment line and one base64 line", path=path)
        _check_comment(lines[0], UNTRUSTED, MAX_COMMENT, "the secret key's first line", path, KeyFormatError)
        blob = _b64decode(lines[1].strip(), "the secret key", path, KeyFormatError)
        if len(blob) != 158:
            raise KeyFormatError(f"the secret key decodes to {len(blob)} bytes, expected 158", path=path)
        if blob[:2] != ALG_ED25519 or blob[4:6] != CHK_BLAKE2B:
            raise KeyFormatError("unsupported secret key algorithm", path=path)
        if blob[2:4] not in (KDF_SCRYPT, KDF_NONE):
            raise KeyFormatError(f"unsupported key derivation {blob[2:4]!r}", path=path)
        return blob, blob[2:4]

    @classmethod
    def parse(cls, data: bytes, password: bytes | None = None, path: str | None = None) -> "SecretKey":
        blob, kdf = cls._parse_blob(data, path)
        salt = blob[6:38]
        opslimit = int.from_bytes(blob[38:46], "little")
        memlimit = int.from_bytes(blob[46:54], "little")
        body = blob[54:]
        if kdf == KDF_SCRYPT:
            if password is None:
                raise KeyPasswordError("the secret key is encrypted and no password was given", path=path)
            stream = _scrypt_stream(password, salt, opslimit, memlimit, len(body), path)
            body = bytes(a ^ b for a, b in zip(body, stream))
        key_id, sk, chk = body[:8], body[8:72], body[72:]
        # minisign -W (0.11) leaves the checksum of an unencrypted key all zero.
        unchecked = kdf == KDF_NONE and chk == bytes(32)
        if not unchecked and _checksum(key_id, sk) != chk:
            if kdf == KDF_SCRYPT:
                raise KeyPasswordError("wrong password for the secret key", path=path)
            raise KeyFormatError("the secret key's checksum does not match (corrupted file)", path=path)
        key = cls(key_id, sk[:32])
        if key.public_key().raw != sk[32:]:
            raise KeyFormatError("the secret key's public half does not match its seed", path=path)
        return key
