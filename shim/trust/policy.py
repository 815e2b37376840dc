"""The trust policy a launcher enforces.

A built launcher carries its policy inside itself, so the sha256 registered in Vault's
catalog covers it: changing a trusted key, the plugin directory or the rollback floor means
a new checksum and a new registration, which needs a Vault token with sudo on
``sys/plugins/catalog``. A launcher built without a policy takes it only from the catalog's
``args`` (stored under the same ACL as the checksum), never from a file on the pod and never
from environment variables, which on older Vault releases include the pod's own env.
"""

from __future__ import annotations

import base64
import binascii
import json
import os

from shim._record import Record
from shim.trust.errors import KeyFormatError, PolicyError
from shim.goplugin.vault import COOKIES, PLUGIN_TYPES
from shim.trust.manifest import MAX_BINARY_SIZE, NAME_RE, Version
from shim.trust.minisign import PublicKey

SCHEMA = "vault-plugin-shim/policy/v1"
MODES = ("exec", "proxy")
ARG_PREFIX = "--shim-policy="
MAX_POLICY_BYTES = 64 * 1024
# What a launcher does when a version newer than the one it would run is present and refused
# (tampered, untrusted key, expired...): run the older valid one and log the refusal at ERROR
# (the default, which keeps the plugin up), or refuse to start at all.
ON_REFUSED_NEWER = ("fallback", "refuse")


class Policy(Record):
    __slots__ = _fields = ("name", "type", "plugins_dir", "trusted_keys", "min_version", "mode", "max_size",
                           "on_refused_newer", "source")
    _defaults = {"min_version": None, "mode": "exec", "max_size": MAX_BINARY_SIZE, "on_refused_newer": "fallback",
                 "source": "embedded"}
    _uncompared = ("source",)

    def _validate(self):
        if not NAME_RE.match(self.name):
            raise PolicyError(f"plugin name {self.name!r} is not a valid Vault plugin name")
        if self.type not in PLUGIN_TYPES:
            raise PolicyError(f"plugin type {self.type!r} is not one of {', '.join(PLUGIN_TYPES)}")
        d = self.plugins_dir
        if not d or "\0" in d or (not os.path.isabs(d) and (".." in d.split("/") or d.startswith("~"))):
            raise PolicyError(f"plugins_dir {d!r} must be an absolute path, or a path below the "
                              "launcher's own directory without '..'")
        if not self.trusted_keys:
            raise PolicyError("a policy needs at least one trusted public key")
        ids = [k.key_id for k in self.trusted_keys]
        for key_id in sorted({i for i in ids if ids.count(i) > 1}):
            same = [k for k in self.trusted_keys if k.key_id == key_id]
            if len(set(same)) > 1:
                # minisign picks the key by id: releases signed by the second key would then
                # fail as "modified after signing". Refuse the policy instead.
                raise PolicyError(f"two different trusted keys share the key id {same[0].key_id_hex}",
                                  fix="give each signing key its own key id (generate a new key pair)")
        if self.mode not in MODES:
            raise PolicyError(f"mode {self.mode!r} is not one of {', '.join(MODES)}")
        if not 0 < self.max_size <= MAX_BINARY_SIZE:
            raise PolicyError(f"max_size must be within 1..{MAX_BINARY_SIZE}")
        if self.on_refused_newer not in ON_REFUSED_NEWER:
            raise PolicyError(f"on_refused_newer {self.on_refused_newer!r} is not one of {', '.join(ON_REFUSED_NEWER)}")

    def resolved(self, launcher_path: str) -> "Policy":
        """A relative plugins_dir is relative to the directory Vault ran the launcher from
        (inside Vault's plugin_directory, which Vault itself enforces). ``realpath`` also
        turns ``/dev/fd/N``, which a host that executes by descriptor hands to the
        interpreter, into the launcher's real location."""
        if os.path.isabs(self.plugins_dir):
            return self
        base = os.path.dirname(os.path.realpath(launcher_path))
        return self.replace(plugins_dir=os.path.normpath(os.path.join(base, self.plugins_dir)))

    @property
    def cookie(self) -> tuple[str, str]:
        return COOKIES[self.type]

    def to_json(self) -> str:
        doc = {
            "schema": SCHEMA,
            "name": self.name,
            "type": self.type,
            "plugins_dir": self.plugins_dir,
            "trusted_keys": [k.to_text().splitlines()[1] for k in self.trusted_keys],
            "min_version": None if self.min_version is None else str(self.min_version),
            "mode": self.mode,
            "max_size": self.max_size,
        }
        if self.on_refused_newer != "fallback":  # absent by default: older launchers' bytes stay the same
            doc["on_refused_newer"] = self.on_refused_newer
        return json.dumps(doc, indent=2, sort_keys=True) + "\n"

    @classmethod
    def from_json(cls, text: str | bytes, source: str = "embedded") -> "Policy":
        if isinstance(text, str):
            text = text.encode("utf-8")
        if not isinstance(text, bytes):  # only a hand-made launcher file embeds anything else
            raise PolicyError(f"policy is a {type(text).__name__}, not JSON text")
        if len(text) > MAX_POLICY_BYTES:
            raise PolicyError(f"policy is larger than {MAX_POLICY_BYTES} bytes")
        try:
            doc = json.loads(text)
        except (UnicodeDecodeError, ValueError, RecursionError) as exc:
            raise PolicyError("policy is not valid JSON", cause=exc) from None
        if not isinstance(doc, dict) or doc.get("schema") != SCHEMA:
            raise PolicyError(f"policy schema must be {SCHEMA!r}")
        allowed = {"schema", "name", "type", "plugins_dir", "trusted_keys", "min_version", "mode", "max_size",
                   "on_refused_newer"}
        if set(doc) - allowed:
            raise PolicyError(f"unknown policy field(s): {', '.join(sorted(set(doc) - allowed))}")
        keys = doc.get("trusted_keys")
        if not isinstance(keys, list) or not all(isinstance(k, str) for k in keys):
            raise PolicyError("trusted_keys must be a list of minisign public keys (base64 lines)")
        max_size = doc.get("max_size", MAX_BINARY_SIZE)
        if type(max_size) is not int:
            raise PolicyError("policy field 'max_size' must be an integer")
        try:
            parsed = tuple(PublicKey.parse(k.encode("ascii")) for k in keys)
            floor = doc.get("min_version")
            return cls(
                name=_str(doc, "name"), type=_str(doc, "type"), plugins_dir=_str(doc, "plugins_dir"),
                trusted_keys=parsed,
                min_version=None if floor is None else Version.parse(_str(doc, "min_version")),
                mode=_str(doc, "mode"),
                max_size=max_size,
                on_refused_newer=_str(doc, "on_refused_newer") if "on_refused_newer" in doc else "fallback",
                source=source)
        except (KeyFormatError, UnicodeEncodeError, ValueError) as exc:
            raise PolicyError(f"invalid policy: {exc}") from None


def _str(doc: dict, key: str) -> str:
    value = doc.get(key)
    if not isinstance(value, str):
        raise PolicyError(f"policy field {key!r} must be a string")
    return value


def encode_arg(policy: Policy) -> str:
    """The catalog ``args`` entry for a launcher built without an embedded policy."""
    raw = json.dumps(json.loads(policy.to_json()), separators=(",", ":")).encode()
    return ARG_PREFIX + base64.urlsafe_b64encode(raw).decode("ascii")


def split_args(args: list[str]) -> tuple[Policy | None, list[str]]:
    """Take our ``--shim-policy=`` argument out of Vault's args; the rest go to the plugin."""
    found = [a for a in args if a.startswith(ARG_PREFIX)]
    rest = [a for a in args if not a.startswith(ARG_PREFIX)]
    if not found:
        return None, rest
    if len(found) > 1:
        raise PolicyError("more than one --shim-policy argument in the catalog entry")
    try:
        raw = base64.urlsafe_b64decode(found[0][len(ARG_PREFIX):].encode("ascii"))
    except (binascii.Error, UnicodeEncodeError, ValueError):
        raise PolicyError("--shim-policy is not base64url") from None
    return Policy.from_json(raw, source="catalog args"), rest
