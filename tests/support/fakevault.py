"""A small stand-in for Vault's HTTP API, for the endpoints vault-plugin-shim uses.

It follows Vault's documented API for exactly these paths (under ``/v1/``):

* ``sys/plugins/catalog`` (GET, detailed list) and ``sys/plugins/catalog/:type/:name``
  (PUT/POST register, GET read with ``?version=``). Registration behaves like Vault's:
  the version is canonicalised to ``vX.Y.Z``; the "plugin" is run to learn its reported
  version (here: ``reported_versions[(type, name)]``); a requested version that differs
  fails with ``plugin version mismatch``; an empty one adopts the reported version. With
  ``plugin_directory`` set, the command must exist directly inside it.
* ``sys/plugins/pins/:type/:name`` (POST/PUT, GET), 404 when ``supports_pins`` is off
  (Vault before 1.16).
* ``sys/mounts`` / ``sys/auth`` (GET tables) and ``sys/mounts/:path`` / ``sys/auth/:path``
  (POST enable), kept per namespace (``X-Vault-Namespace``).
* Transit: ``:mount/keys/:name`` (POST create, GET read), ``:mount/keys/:name/rotate``,
  ``:mount/sign/:name[/:hash_algorithm]``. Ed25519 keys are real (cryptography); ``GET``
  returns ``keys {"1": {"public_key": base64(raw 32 bytes), ...}}`` as Vault does, and
  ``sign`` returns ``vault:vN:base64(sig)`` over the raw ``input`` bytes.

Auth is ``X-Vault-Token``: a token maps to ``None`` (root) or a policy ``{path-glob:
[capabilities]}``; unknown tokens and missing capabilities get 403 ``permission denied``,
paths Vault protects with sudo need ``sudo``. Errors use Vault's ``{"errors": [...]}``.

Every request is recorded (method, path, query, token, namespace, JSON body) so tests
assert on what the client actually sent. Threaded, bound to 127.0.0.1 on an ephemeral port.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
import threading
import uuid
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

ROOT_TOKEN = "root-token"
PLUGIN_TYPES = ("secret", "auth", "database")
BUILTIN_SECRET = {"kv", "transit", "pki", "database", "ssh", "totp", "cubbyhole", "system", "identity"}
BUILTIN_AUTH = {"token", "userpass", "approle", "kubernetes", "jwt", "oidc", "ldap", "cert"}
SUDO_WRITE = ("sys/plugins/catalog/", "sys/plugins/pins/", "sys/auth/")
_SEMVER = re.compile(r"^v?(\d+)\.(\d+)\.(\d+)(-[0-9A-Za-z.-]+)?(\+[0-9A-Za-z.-]+)?$")


class VaultHTTPError(Exception):
    def __init__(self, status: int, *errors: str):
        self.status, self.errors = status, list(errors)


def _multierror(message: str) -> str:
    """How Vault renders an internal error: go-multierror's text."""
    return f"1 error occurred:\n\t* {message}\n\n"


def canonical_version(version: str) -> str:
    match = _SEMVER.match(version)
    if not match:
        raise VaultHTTPError(400, f'version "{version}" is not a valid semantic version: Malformed version: {version}')
    return "v" + version.lstrip("v")


@dataclass
class Recorded:
    method: str
    path: str
    query: dict[str, list[str]]
    token: str | None
    namespace: str | None
    body: Any
    status: int = 0


@dataclass
class TransitKey:
    type: str
    derived: bool = False
    versions: list[Any] = field(default_factory=list)   # private keys, index 0 = version 1
    min_encryption_version: int = 0

    def rotate(self) -> None:
        if self.type == "ed25519":
            self.versions.append(Ed25519PrivateKey.generate())
        elif self.type == "ecdsa-p256":
            self.versions.append(ec.generate_private_key(ec.SECP256R1()))
        else:
            self.versions.append(None)

    def public_key(self, version: int) -> str:
        key = self.versions[version - 1]
        if self.type == "ed25519":
            if self.derived:
                return ""
            raw = key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
            return base64.b64encode(raw).decode()
        if self.type == "ecdsa-p256":
            return key.public_key().public_bytes(serialization.Encoding.PEM,
                                                 serialization.PublicFormat.SubjectPublicKeyInfo).decode()
        return ""


class FakeVault:
    """Start with ``with FakeVault() as vault:``; ``vault.url`` is the address."""

    def __init__(self, *, plugin_directory: str | Path | None = None, supports_pins: bool = True):
        self.lock = threading.Lock()
        self.requests: list[Recorded] = []
        self.tokens: dict[str, dict[str, list[str]] | None] = {ROOT_TOKEN: None}
        self.plugin_directory = Path(plugin_directory) if plugin_directory else None
        self.supports_pins = supports_pins
        self.reported_versions: dict[tuple[str, str], str] = {}
        self.catalog: dict[tuple[str, str, str], dict] = {}
        self.pins: dict[tuple[str, str], str] = {}
        self.mounts: dict[str, dict[str, dict]] = {}
        self.auth: dict[str, dict[str, dict]] = {}
        self.transit_keys: dict[tuple[str, str], TransitKey] = {}
        self.tamper_signatures = False
        self.sign_with_version: int | None = None   # make `sign` answer with another version
        self.injected: list[tuple[str, str, int, list[str]]] = []
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    # -- lifecycle ----------------------------------------------------------------------

    def start(self) -> "FakeVault":
        fake = self

        class Handler(_Handler):
            vault = fake

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        # A short poll interval only bounds how long shutdown() waits for the loop to notice.
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.02},
                                        name="fakevault", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            assert self._thread is not None
            self._thread.join()
            self._server = None

    def __enter__(self) -> "FakeVault":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    @property
    def url(self) -> str:
        assert self._server is not None, "FakeVault is not started"
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    # -- test set-up --------------------------------------------------------------------

    def add_token(self, token: str, policy: dict[str, list[str]] | None) -> None:
        self.tokens[token] = policy

    def mount_table(self, namespace: str = "") -> dict[str, dict]:
        return self.mounts.setdefault(namespace, {
            "sys/": {"type": "system", "description": "system endpoints"},
            "cubbyhole/": {"type": "cubbyhole", "description": "per-token private secret storage"},
            "identity/": {"type": "identity", "description": "identity store"},
            "transit/": {"type": "transit", "description": ""},
        })

    def auth_table(self, namespace: str = "") -> dict[str, dict]:
        return self.auth.setdefault(namespace, {"token/": {"type": "token", "description": "token based credentials"}})

    def create_transit_key(self, name: str, *, mount: str = "transit", type: str = "ed25519",
                           derived: bool = False) -> TransitKey:
        key = TransitKey(type=type, derived=derived)
        key.rotate()
        self.transit_keys[(mount, name)] = key
        return key

    def inject_error(self, method: str, path: str, status: int, *errors: str) -> None:
        """The next ``method path`` request fails with this status and errors."""
        self.injected.append((method, path, status, list(errors)))

    def calls(self, method: str | None = None, path: str | None = None) -> list[Recorded]:
        with self.lock:
            return [r for r in self.requests
                    if (method is None or r.method == method) and (path is None or r.path == path)]

    # -- request handling ---------------------------------------------------------------

    def handle(self, rec: Recorded) -> tuple[int, Any]:
        with self.lock:
            self.requests.append(rec)
            try:
                for i, (m, p, status, errors) in enumerate(self.injected):
                    if m == rec.method and p == rec.path:
                        del self.injected[i]
                        raise VaultHTTPError(status, *errors)
                self._authorize(rec)
                status, body = self._route(rec)
            except VaultHTTPError as exc:
                status, body = exc.status, {"errors": exc.errors}
            rec.status = status
            return status, body

    def _authorize(self, rec: Recorded) -> None:
        if rec.token is None or rec.token not in self.tokens:
            raise VaultHTTPError(403, _multierror("permission denied"))
        policy = self.tokens[rec.token]
        if policy is None:
            return
        if rec.method == "GET":
            needed = {"list"} if rec.query.get("list") == ["true"] else {"read"}
        elif rec.method in ("PUT", "POST"):
            needed = {"create", "update"}
        elif rec.method == "DELETE":
            needed = {"delete"}
        else:
            needed = {rec.method.lower()}
        caps = _capabilities(policy, rec.path)
        sudo = rec.method in ("PUT", "POST", "DELETE") and rec.path.startswith(SUDO_WRITE)
        if not (caps & needed) or (sudo and "sudo" not in caps) or "deny" in caps:
            raise VaultHTTPError(403, _multierror("permission denied"))

    def _route(self, rec: Recorded) -> tuple[int, Any]:
        parts = rec.path.split("/")
        m = rec.method
        ns = (rec.namespace or "").strip("/")
        if rec.path == "sys/plugins/catalog" and m == "GET":
            return 200, _envelope(self._catalog_list())
        if len(parts) == 5 and parts[:3] == ["sys", "plugins", "catalog"]:
            typ, name = parts[3], parts[4]
            if m in ("PUT", "POST"):
                return self._register(typ, name, rec.body or {})
            if m == "GET":
                return self._catalog_read(typ, name, (rec.query.get("version") or [""])[0])
        if parts[:3] == ["sys", "plugins", "pins"] and len(parts) == 5:
            if not self.supports_pins:
                raise VaultHTTPError(404, _multierror("unsupported path"))
            key = (parts[3], parts[4])
            if m in ("PUT", "POST"):
                return self._pin(key, rec.body or {})
            if m == "GET":
                if key not in self.pins:
                    raise VaultHTTPError(404)
                return 200, _envelope({"type": key[0], "name": key[1], "version": self.pins[key]})
        if rec.path in ("sys/mounts", "sys/auth") and m == "GET":
            table = self.mount_table(ns) if rec.path == "sys/mounts" else self.auth_table(ns)
            data = {k: dict(v) for k, v in table.items()}
            return 200, {**data, **_envelope(data)}
        if parts[0] == "sys" and len(parts) >= 3 and parts[1] in ("mounts", "auth") and m in ("PUT", "POST"):
            return self._enable(parts[1], "/".join(parts[2:]), ns, rec.body or {})
        transit = self._transit(rec, parts)
        if transit is not None:
            return transit
        raise VaultHTTPError(404, _multierror("unsupported path"))

    # -- catalog ------------------------------------------------------------------------

    def _catalog_list(self) -> dict:
        out: dict[str, Any] = {t: sorted({n for (tt, n, _) in self.catalog if tt == t}) for t in PLUGIN_TYPES}
        out["detailed"] = [
            {"type": t, "name": n, "version": v, "builtin": False, "sha256": e["sha256"]}
            for (t, n, v), e in sorted(self.catalog.items())]
        return out

    def _catalog_read(self, typ: str, name: str, version: str) -> tuple[int, Any]:
        version = canonical_version(version) if version else ""
        entry = self.catalog.get((typ, name, version))
        if entry is None:
            raise VaultHTTPError(404)
        return 200, _envelope({k: entry[k] for k in ("name", "command", "args", "sha256", "builtin", "version")})

    def _register(self, typ: str, name: str, body: dict) -> tuple[int, Any]:
        if typ not in PLUGIN_TYPES:
            raise VaultHTTPError(400, f'"{typ}" is not a supported plugin type')
        version = canonical_version(body["version"]) if body.get("version") else ""
        if "+builtin" in version:
            raise VaultHTTPError(400, f"version \"{version}\" is not allowed because 'builtin' is a reserved metadata identifier")
        sha = body.get("sha256") or body.get("sha_256") or ""
        if not sha:
            raise VaultHTTPError(400, "missing SHA-256 value")
        command = body.get("command") or ""
        if not command:
            raise VaultHTTPError(400, "missing command value")
        args = list(body.get("args") or [])
        words = command.split(" ")
        if len(words) > 1 and args:
            raise VaultHTTPError(400, "must not specify args in command and args field")
        command, args = words[0], (words[1:] or args)
        try:
            bytes.fromhex(sha)
        except ValueError:
            raise VaultHTTPError(400, f"Could not decode SHA256 value from Hex {sha}: encoding/hex: invalid byte")
        if ".." in name or ".." in command:
            raise VaultHTTPError(500, _multierror("path cannot contain parent references"))
        if self.plugin_directory is not None:
            target = self.plugin_directory / command
            if not target.exists():
                raise VaultHTTPError(500, _multierror(
                    f"error while validating the command path: lstat {target}: no such file or directory"))
            if target.resolve().parent != self.plugin_directory.resolve():
                raise VaultHTTPError(500, _multierror("cannot execute files outside of configured plugin directory"))
        reported = self.reported_versions.get((typ, name), "")
        if version and reported and version != reported:
            raise VaultHTTPError(400, f"plugin version mismatch: {name} reported version ({reported}) "
                                      f"did not match requested version ({version})")
        if not version and reported:
            version = reported
        self.catalog[(typ, name, version)] = {
            "name": name, "type": typ, "version": version, "command": command, "args": args,
            "env": list(body.get("env") or []), "sha256": sha, "builtin": False}
        return 204, None

    def _pin(self, key: tuple[str, str], body: dict) -> tuple[int, Any]:
        if not body.get("version"):
            raise VaultHTTPError(400, "missing version")
        version = canonical_version(body["version"])
        if (key[0], key[1], version) not in self.catalog:
            raise VaultHTTPError(400, f"plugin not found in the catalog: {key[1]} {version}")
        self.pins[key] = version
        return 204, None

    # -- mounts -------------------------------------------------------------------------

    def _enable(self, kind: str, path: str, ns: str, body: dict) -> tuple[int, Any]:
        path = path.strip("/") + "/"
        table = self.mount_table(ns) if kind == "mounts" else self.auth_table(ns)
        typ = body.get("type") or ""
        if not typ:
            raise VaultHTTPError(400, "backend type must be specified as a string")
        if path in table or any(path.startswith(p) or p.startswith(path) for p in table):
            raise VaultHTTPError(400, f"path is already in use at {path}")
        plugin_type = "secret" if kind == "mounts" else "auth"
        builtins = BUILTIN_SECRET if kind == "mounts" else BUILTIN_AUTH
        version = canonical_version(body["plugin_version"]) if body.get("plugin_version") else ""
        if typ not in builtins:
            versions = [v for (t, n, v) in self.catalog if t == plugin_type and n == typ]
            if not versions or (version and version not in versions):
                raise VaultHTTPError(400, _multierror(f"plugin not found in the catalog: {typ}"))
            if not version and "" not in versions:
                version = sorted(versions)[-1]
        entry = {"type": typ, "description": body.get("description", ""), "accessor": f"{typ}_{uuid.uuid4().hex[:8]}",
                 "plugin_version": version,
                 "running_plugin_version": self.reported_versions.get((plugin_type, typ), "")}
        table[path] = entry
        return 204, None

    # -- transit ------------------------------------------------------------------------

    def _transit(self, rec: Recorded, parts: list[str]) -> tuple[int, Any] | None:
        if len(parts) < 3 or f"{parts[0]}/" not in self.mount_table((rec.namespace or "").strip("/")):
            return None
        mount, op, name = parts[0], parts[1], parts[2]
        if self.mount_table((rec.namespace or "").strip("/"))[f"{mount}/"]["type"] != "transit":
            return None
        body = rec.body or {}
        if op == "keys" and len(parts) == 3 and rec.method in ("PUT", "POST"):
            if (mount, name) not in self.transit_keys:
                self.create_transit_key(name, mount=mount, type=body.get("type", "aes256-gcm96"),
                                        derived=bool(body.get("derived")))
            return 204, None
        if op == "keys" and len(parts) == 4 and parts[3] == "rotate" and rec.method in ("PUT", "POST"):
            self._key(mount, name).rotate()
            return 204, None
        if op == "keys" and len(parts) == 3 and rec.method == "GET":
            key = self._key(mount, name, missing=404)
            keys = {str(i): {"name": key.type, "public_key": key.public_key(i),
                             "creation_time": "2026-01-01T00:00:00.000000000Z"}
                    for i in range(1, len(key.versions) + 1)}
            return 200, _envelope({
                "name": name, "type": key.type, "derived": key.derived, "exportable": False,
                "deletion_allowed": False, "latest_version": len(key.versions),
                "min_available_version": 0, "min_decryption_version": 1,
                "min_encryption_version": key.min_encryption_version,
                "supports_signing": key.type in ("ed25519", "ecdsa-p256"),
                "supports_encryption": key.type == "aes256-gcm96",
                "supports_decryption": key.type == "aes256-gcm96",
                "supports_derivation": key.type in ("ed25519", "aes256-gcm96"),
                "keys": keys})
        if op == "sign" and len(parts) in (3, 4) and rec.method in ("PUT", "POST"):
            return self._sign(self._key(mount, name), body)
        return None

    def _key(self, mount: str, name: str, *, missing: int = 400) -> TransitKey:
        key = self.transit_keys.get((mount, name))
        if key is None:
            # Vault: a read of a missing key is a bare 404; sign/rotate answer 400.
            raise VaultHTTPError(missing) if missing == 404 else VaultHTTPError(400, "signing key not found")
        return key

    def _sign(self, key: TransitKey, body: dict) -> tuple[int, Any]:
        if key.type not in ("ed25519", "ecdsa-p256"):
            raise VaultHTTPError(400, f"key type {key.type} does not support signing")
        try:
            message = binascii.a2b_base64(str(body.get("input", "")).encode(), strict_mode=True)
        except binascii.Error:
            raise VaultHTTPError(400, "unable to decode input as base64: illegal base64 data")
        if key.derived and not body.get("context"):
            raise VaultHTTPError(400, "signing key requires derivation but no context was provided")
        version = int(body.get("key_version") or len(key.versions))
        if version > len(key.versions) or version < max(1, key.min_encryption_version):
            raise VaultHTTPError(400, "requested version for signing is less than the minimum encryption key version"
                                 if version < key.min_encryption_version else "invalid key version")
        private = key.versions[version - 1]
        if key.type == "ed25519":
            signature = private.sign(message)
        else:
            from cryptography.hazmat.primitives import hashes
            signature = private.sign(message, ec.ECDSA(hashes.SHA256()))
        if self.tamper_signatures:
            signature = bytes([signature[0] ^ 1]) + signature[1:]
        shown = self.sign_with_version or version
        return 200, _envelope({"signature": f"vault:v{shown}:{base64.b64encode(signature).decode()}",
                               "key_version": shown})


def _capabilities(policy: dict[str, list[str]], path: str) -> set[str]:
    """Exact match wins, else the longest ``prefix*`` glob (Vault's rule without ``+``)."""
    if path in policy:
        return set(policy[path])
    best: tuple[int, set[str]] = (-1, set())
    for pattern, caps in policy.items():
        if pattern.endswith("*") and path.startswith(pattern[:-1]) and len(pattern) > best[0]:
            best = (len(pattern), set(caps))
    return best[1]


def _envelope(data: Any) -> dict:
    return {"request_id": str(uuid.uuid4()), "lease_id": "", "renewable": False, "lease_duration": 0,
            "data": data, "wrap_info": None, "warnings": None, "auth": None}


class _Handler(BaseHTTPRequestHandler):
    vault: FakeVault
    server_version = "FakeVault/1"

    def log_message(self, format, *args):  # noqa: A002 - silence the per-request log
        pass

    def _serve(self):
        url = urlsplit(self.path)
        if not url.path.startswith("/v1/"):
            self._reply(404, {"errors": []})
            return
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length) if length else b""
        try:
            body = json.loads(raw) if raw else None
        except ValueError:
            self._reply(400, {"errors": ["failed to parse JSON input: invalid character"]})
            return
        rec = Recorded(method=self.command, path=url.path[len("/v1/"):].strip("/"),
                       query=parse_qs(url.query), token=self.headers.get("X-Vault-Token"),
                       namespace=self.headers.get("X-Vault-Namespace"), body=body)
        status, payload = self.vault.handle(rec)
        self._reply(status, payload)

    def _reply(self, status: int, payload: Any):
        self.send_response(status)
        if status == 204 or payload is None:
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        data = json.dumps(payload).encode()
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    do_GET = do_PUT = do_POST = do_DELETE = do_LIST = _serve
