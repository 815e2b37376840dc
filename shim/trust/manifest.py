"""The signed release manifest: which bytes are plugin NAME of TYPE at VERSION.

``FILE.manifest.json`` sits next to the binary ``FILE`` and is signed, byte for byte, as
``FILE.manifest.json.minisig``. Parsing is strict, because everything the launcher decides
follows from these fields: one schema id, no unknown or duplicate keys, exact types,
bounded sizes. A manifest we cannot fully understand is a manifest we refuse.
"""

from __future__ import annotations

import json
import re
import time

from shim._record import Record
from shim.goplugin.vault import PLUGIN_TYPES
from shim.trust.errors import ManifestError

SCHEMA = "vault-plugin-shim/manifest/v1"
MAX_MANIFEST_BYTES = 64 * 1024
MAX_BINARY_SIZE = 2 * 1024 ** 3
NAME_RE = re.compile(r"\A[A-Za-z0-9][A-Za-z0-9._-]{0,127}\Z", re.ASCII)
SHA256_RE = re.compile(r"\A[0-9a-f]{64}\Z", re.ASCII)
TOKEN_RE = re.compile(r"\A[a-z0-9_]{1,32}\Z", re.ASCII)
TIME_RE = re.compile(r"\A\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}Z\Z", re.ASCII)
SEMVER_RE = re.compile(
    r"\A(0|[1-9]\d{0,8})\.(0|[1-9]\d{0,8})\.(0|[1-9]\d{0,8})"
    r"(?:-((?:0|[1-9]\d*|\d*[A-Za-z-][0-9A-Za-z-]*)(?:\.(?:0|[1-9]\d*|\d*[A-Za-z-][0-9A-Za-z-]*))*))?"
    r"(?:\+([0-9A-Za-z-]+(?:\.[0-9A-Za-z-]+)*))?\Z", re.ASCII)
FIELDS = {"schema": str, "name": str, "type": str, "version": str, "sha256": str, "size": int,
          "os": str, "arch": str, "issued_at": str, "expires_at": (str, type(None))}


class Version(Record):
    """A semantic version (semver.org 2.0.0), ordered by its precedence rules."""

    __slots__ = _fields = ("major", "minor", "patch", "prerelease", "build")
    _defaults = {"prerelease": (), "build": ""}

    @classmethod
    def parse(cls, text: str) -> "Version":
        m = SEMVER_RE.match(text) if isinstance(text, str) and len(text) <= 128 else None
        if not m:
            raise ValueError(f"{text!r} is not a semantic version (MAJOR.MINOR.PATCH[-pre][+build])")
        pre = tuple(int(p) if p.isdigit() else p for p in m.group(4).split(".")) if m.group(4) else ()
        return cls(int(m.group(1)), int(m.group(2)), int(m.group(3)), pre, m.group(5) or "")

    @classmethod
    def parse_tag(cls, text: str) -> "Version":
        """A version as people, git tags and Vault's catalog write it: ``1.2.3`` or ``v1.2.3``
        (:func:`strip_v`; ``vv1.2.3`` is refused)."""
        try:
            return cls.parse(strip_v(text))
        except ValueError:
            raise ValueError(f"{text!r} is not a semantic version ([v]MAJOR.MINOR.PATCH[-pre][+build])") from None

    @property
    def precedence(self) -> tuple:
        """Sort key by semver precedence: build metadata is ignored, a release sorts after
        its prereleases, numeric identifiers before textual ones. (``==`` compares the
        build too: ``2.0.0+a != 2.0.0+b``, though neither precedes the other.)"""
        pre = tuple((0, p, "") if isinstance(p, int) else (1, 0, p) for p in self.prerelease)
        return (self.major, self.minor, self.patch, 0 if self.prerelease else 1, pre)

    def __lt__(self, other): return self.precedence < other.precedence
    def __le__(self, other): return self.precedence <= other.precedence
    def __gt__(self, other): return self.precedence > other.precedence
    def __ge__(self, other): return self.precedence >= other.precedence

    def __str__(self):
        out = f"{self.major}.{self.minor}.{self.patch}"
        if self.prerelease:
            out += "-" + ".".join(str(p) for p in self.prerelease)
        return out + (f"+{self.build}" if self.build else "")


def strip_v(text: str) -> str:
    """``text`` without the one leading ``v`` of Vault's form (``v1.2.3``); only one, so
    that ``vv1.2.3`` stays what it is: no version."""
    return text[1:] if text.startswith("v") else text


def parse_time(text: str) -> int:
    """``YYYY-MM-DDTHH:MM:SSZ`` (UTC only) to a Unix timestamp."""
    if not isinstance(text, str) or not TIME_RE.match(text):
        raise ValueError(f"{text!r} is not a UTC time of the form YYYY-MM-DDTHH:MM:SSZ")
    # Not time.strptime: it imports _strptime, calendar, datetime and locale (12 ms on
    # every plugin start). A real calendar time survives the round trip through gmtime.
    y, mo, d, h, mi, sec = (int(text[a:b]) for a, b in ((0, 4), (5, 7), (8, 10), (11, 13), (14, 16), (17, 19)))
    ts = _days_from_civil(y, mo, d) * 86400 + h * 3600 + mi * 60 + sec
    if not (1 <= mo <= 12 and 1 <= d <= 31 and h < 24 and mi < 60 and sec < 60) or format_time(ts) != text:
        raise ValueError(f"{text!r} is not a valid calendar time")
    return ts


def _days_from_civil(y: int, m: int, d: int) -> int:
    """Days since 1970-01-01 in the proleptic Gregorian calendar (``calendar.timegm``
    without importing ``calendar`` on the launch path)."""
    y -= m <= 2
    era = y // 400
    yoe = y - era * 400
    doy = (153 * (m + (-3 if m > 2 else 9)) + 2) // 5 + d - 1
    doe = yoe * 365 + yoe // 4 - yoe // 100 + doy
    return era * 146097 + doe - 719468


def format_time(ts: float) -> str:
    """A Unix timestamp as ``YYYY-MM-DDTHH:MM:SSZ``, the manifest's form (:func:`parse_time`)."""
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(int(ts)))


def format_time_or_none(ts: float | None) -> str | None:
    """:func:`format_time`, or None for no time (a manifest without expiry)."""
    return None if ts is None else format_time(ts)


def _reject_duplicates(pairs):
    out = {}
    for key, value in pairs:
        if key in out:
            raise ValueError(f"duplicate key {key!r}")
        out[key] = value
    return out


def _reject_constant(name):
    raise ValueError(f"{name} is not allowed in a manifest")


class Manifest(Record):
    __slots__ = _fields = ("name", "type", "version", "sha256", "size", "os", "arch", "issued_at", "expires_at")
    _defaults = {"expires_at": None}

    @classmethod
    def parse(cls, data: bytes, path: str | None = None) -> "Manifest":
        if len(data) > MAX_MANIFEST_BYTES:
            raise ManifestError(f"manifest is {len(data)} bytes, more than {MAX_MANIFEST_BYTES}", path=path)
        try:
            doc = json.loads(data.decode("utf-8"), object_pairs_hook=_reject_duplicates,
                             parse_constant=_reject_constant)
        except (UnicodeDecodeError, ValueError, RecursionError) as exc:
            raise ManifestError(f"manifest is not valid JSON ({exc})", path=path) from None
        if not isinstance(doc, dict):
            raise ManifestError("manifest must be a JSON object", path=path)
        if doc.get("schema") != SCHEMA:
            raise ManifestError(f"unsupported manifest schema {doc.get('schema')!r} (this shim reads {SCHEMA!r})",
                                path=path, fix="upgrade vault-plugin-shim, or sign with the schema it reads")
        unknown = sorted(set(doc) - set(FIELDS))
        if unknown:
            raise ManifestError(f"unknown manifest field(s) {', '.join(map(repr, unknown))}", path=path)
        for key, kind in FIELDS.items():
            if key not in doc and key != "expires_at":
                raise ManifestError(f"manifest field {key!r} is missing", path=path)
            value = doc.get(key)
            if not isinstance(value, kind) or isinstance(value, bool):
                raise ManifestError(f"manifest field {key!r} has the wrong type ({type(value).__name__})", path=path)
        try:
            return cls._from_fields(doc)
        except ValueError as exc:
            raise ManifestError(str(exc), path=path) from None

    @classmethod
    def _from_fields(cls, doc: dict) -> "Manifest":
        if not NAME_RE.match(doc["name"]):
            raise ValueError(f"plugin name {doc['name']!r} is not a valid Vault plugin name")
        if doc["type"] not in PLUGIN_TYPES:
            raise ValueError(f"plugin type {doc['type']!r} is not one of {', '.join(PLUGIN_TYPES)}")
        if not SHA256_RE.match(doc["sha256"]):
            raise ValueError("sha256 must be 64 lower-case hex digits")
        if not 0 < doc["size"] <= MAX_BINARY_SIZE:
            raise ValueError(f"size {doc['size']} is outside 1..{MAX_BINARY_SIZE} bytes")
        for key in ("os", "arch"):
            if not TOKEN_RE.match(doc[key]):
                raise ValueError(f"{key} {doc[key]!r} is not a GOOS/GOARCH-style name")
        issued = parse_time(doc["issued_at"])
        expires = None if doc.get("expires_at") is None else parse_time(doc["expires_at"])
        if expires is not None and expires <= issued:
            raise ValueError("expires_at is not after issued_at")
        return cls(doc["name"], doc["type"], Version.parse(doc["version"]), doc["sha256"], doc["size"],
                   doc["os"], doc["arch"], issued, expires)

    def to_bytes(self) -> bytes:
        doc = {"schema": SCHEMA, "name": self.name, "type": self.type, "version": str(self.version),
               "sha256": self.sha256, "size": self.size, "os": self.os, "arch": self.arch,
               "issued_at": format_time(self.issued_at),
               "expires_at": format_time_or_none(self.expires_at)}
        return (json.dumps(doc, indent=2) + "\n").encode("utf-8")

    def trusted_comment(self) -> str:
        """What ``minisign -V`` shows: the manifest's identity, under the global signature."""
        return (f"vault-plugin-shim manifest name={self.name} type={self.type} "
                f"version={self.version} sha256={self.sha256}")


def manifest_path(binary_path: str) -> str:
    return f"{binary_path}.manifest.json"


def signature_path(binary_path: str) -> str:
    return f"{binary_path}.manifest.json.minisig"
