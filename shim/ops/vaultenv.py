"""Talking to Vault the way the `vault` CLI does, and failing in words an operator can use.

The environment is read explicitly (not through hvac's import-time defaults) so the rules
are ours, testable, and match the CLI's:

* ``VAULT_ADDR`` (default ``https://127.0.0.1:8200``);
* ``VAULT_TOKEN``, else the token helper's file ``~/.vault-token`` (what ``vault login``
  writes); a custom ``token_helper`` from ``~/.vault`` is not run;
* ``VAULT_CACERT`` / ``VAULT_CAPATH`` for the server's CA, ``VAULT_CLIENT_CERT`` +
  ``VAULT_CLIENT_KEY`` for mTLS, ``VAULT_SKIP_VERIFY`` (a Go ``ParseBool`` value; it wins
  over a CA, as in the CLI);
* ``VAULT_NAMESPACE``, sent as ``X-Vault-Namespace`` on every request.

OpenBao's ``BAO_*`` names are read when the ``VAULT_*`` one is unset.

:func:`detect_server` tells Vault from OpenBao (they differ in what register may use).

Every failure becomes a :class:`VaultOpsError` subclass whose ``reason`` names the call that
failed and whose ``fix`` says what to change.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Mapping, TypeVar

from shim.ops.errors import (
    VaultConfigError,
    VaultNotFoundError,
    VaultOpsError,
    VaultPermissionError,
    VaultRequestError,
    VaultServerError,
    VaultUnreachableError,
)
from shim.trust.manifest import strip_v

DEFAULT_ADDR = "https://127.0.0.1:8200"
TOKEN_FILE = ".vault-token"

T = TypeVar("T")


# --- environment ---------------------------------------------------------------------

_TRUE = {"1", "t", "T", "TRUE", "true", "True"}
_FALSE = {"0", "f", "F", "FALSE", "false", "False"}


def parse_go_bool(value: str, name: str) -> bool:
    """Go's ``strconv.ParseBool``, which is what the vault CLI uses for these variables."""
    if value in _TRUE:
        return True
    if value in _FALSE:
        return False
    raise VaultConfigError(f"{name}={value!r} is not a boolean",
                           fix=f"set {name} to true or false (or 1/0), or unset it")


def _get(environ: Mapping[str, str], name: str) -> str | None:
    return _named(environ, name)[1]


def _named(environ: Mapping[str, str], name: str) -> tuple[str, str | None]:
    """(the variable that gives ``name``, its value): ``VAULT_<name>``, else ``BAO_<name>``."""
    for key in (f"VAULT_{name}", f"BAO_{name}"):
        value = environ.get(key)
        if value:
            return key, value
    return f"VAULT_{name}", None


@dataclass(frozen=True)
class VaultEnv:
    """Where Vault is and who we are to it, as the vault CLI would work it out."""

    addr: str
    token: str | None
    token_source: str | None
    namespace: str | None
    verify: bool | str
    client_cert: tuple[str, str] | None = None

    @classmethod
    def from_environ(cls, environ: Mapping[str, str] | None = None,
                     home: str | os.PathLike | None = None) -> "VaultEnv":
        environ = os.environ if environ is None else environ
        addr = (_get(environ, "ADDR") or DEFAULT_ADDR).rstrip("/")

        source, token = _named(environ, "TOKEN")
        if not token:
            source = None
            base = Path(home) if home is not None else Path(environ.get("HOME") or Path.home())
            token_file = base / TOKEN_FILE
            try:
                token = token_file.read_text(encoding="utf-8").strip() or None
            except FileNotFoundError:
                token = None
            except OSError as exc:
                raise VaultConfigError(f"cannot read the token file {token_file}: {exc.strerror}",
                                       fix="fix its permissions, or set VAULT_TOKEN") from None
            if token:
                source = str(token_file)

        verify: bool | str = True
        ca = _get(environ, "CACERT") or _get(environ, "CAPATH")
        if ca:
            if not Path(ca).exists():
                raise VaultConfigError(f"the CA named by VAULT_CACERT/VAULT_CAPATH ({ca}) does not exist",
                                       fix="point VAULT_CACERT at the PEM file of the CA that signed Vault's certificate")
            verify = ca
        skip = _get(environ, "SKIP_VERIFY")
        if skip and parse_go_bool(skip, "VAULT_SKIP_VERIFY"):
            verify = False

        cert, key = _get(environ, "CLIENT_CERT"), _get(environ, "CLIENT_KEY")
        if bool(cert) != bool(key):
            raise VaultConfigError("only one of VAULT_CLIENT_CERT and VAULT_CLIENT_KEY is set",
                                   fix="set both (client certificate and its key) or neither")
        return cls(addr=addr, token=token, token_source=source,
                   namespace=_get(environ, "NAMESPACE"), verify=verify,
                   client_cert=(cert, key) if cert and key else None)

    def client(self, *, require_token: bool = True):
        """An ``hvac.Client`` for this environment (hvac is imported only here: it is slow)."""
        if require_token and not self.token:
            raise VaultConfigError(
                "no Vault token: VAULT_TOKEN is unset and ~/.vault-token does not exist",
                fix="run `vault login`, or export VAULT_TOKEN (in Kubernetes: mount a token "
                    "from a Secret, or log in with the kubernetes auth method first)")
        import hvac

        return hvac.Client(url=self.addr, token=self.token or "", verify=self.verify,
                           cert=self.client_cert, namespace=self.namespace)


# --- calls ---------------------------------------------------------------------------

def vault_messages(exc: BaseException) -> str:
    """The ``errors`` Vault sent, joined and with Go's multierror wrapping removed."""
    errors = getattr(exc, "errors", None) or []
    text = "; ".join(str(e) for e in errors) if errors else str(exc.args[0] if exc.args else exc)
    text = text.replace("1 error occurred:", "").replace("\n\t* ", " ").replace("\t* ", "")
    return " ".join(text.split()) or "(no error text)"


def call(what: str, method: str, api_path: str, fn: Callable[[], T], *,
         fixes: Mapping[int, str] | None = None,
         classify: Callable[[int, str], VaultOpsError | None] | None = None) -> T:
    """Run one hvac call; turn any failure into our own error naming ``what`` failed.

    ``fixes`` gives the fix text per HTTP status for this call; ``classify`` may return a
    more specific error from (status, Vault's message) before the generic mapping runs.
    """
    import hvac.exceptions
    import requests

    fixes = fixes or {}
    where = f"{method} /v1/{api_path}"
    try:
        return fn()
    except hvac.exceptions.VaultError as exc:
        status = _status_of(exc)
        message = vault_messages(exc)
        if classify is not None:
            special = classify(status, message)
            if special is not None:
                raise special from None
        reason = f"{what} failed ({where} -> HTTP {status or '?'}): {message}"
        if status == 403:
            raise VaultPermissionError(reason, fix=fixes.get(403, (
                "the token is invalid, expired, or its policy lacks this path; check "
                "`vault token lookup` and the policy"))) from None
        if status == 404:
            raise VaultNotFoundError(reason, fix=fixes.get(404, "check the path and that the mount exists")) from None
        if status == 401:
            raise VaultPermissionError(reason, fix="log in again (`vault login`) or refresh VAULT_TOKEN") from None
        if 400 <= status < 500:
            raise VaultRequestError(reason, fix=fixes.get(400, "correct the request as Vault's message says")) from None
        if status in (501, 503):
            raise VaultServerError(reason, fix=fixes.get(503, (
                "Vault is sealed, uninitialized or in standby without request forwarding: "
                "unseal it, or point VAULT_ADDR at the active node"))) from None
        raise VaultServerError(reason, fix=fixes.get(500, (
            "Vault failed while doing this; its server log has the details"))) from None
    except requests.exceptions.SSLError as exc:
        raise VaultUnreachableError(
            f"{what}: TLS to {where} failed: {exc.__class__.__name__}",
            fix="set VAULT_CACERT to the CA that signed Vault's certificate "
                "(VAULT_SKIP_VERIFY=true only for throwaway test servers)") from None
    except requests.exceptions.RequestException as exc:
        raise VaultUnreachableError(
            f"{what}: no answer from Vault for {where} ({exc.__class__.__name__})",
            fix="check VAULT_ADDR (scheme, host, port) and that Vault is running and reachable from here") from None


def _status_of(exc: BaseException) -> int:
    import hvac.exceptions as e

    table = {e.InvalidRequest: 400, e.Unauthorized: 401, e.Forbidden: 403, e.InvalidPath: 404,
             e.RateLimitExceeded: 429, e.InternalServerError: 500, e.VaultNotInitialized: 501,
             e.BadGateway: 502, e.VaultDown: 503}
    for cls, status in table.items():
        if isinstance(exc, cls):
            return status
    return 0


# --- which server ----------------------------------------------------------------------

@dataclass(frozen=True)
class ServerInfo:
    """Which Vault-family server answers, from the unauthenticated ``sys/seal-status``.

    Vault's answer has ``build_date``; OpenBao's (2.x) has ``commit_date`` instead, and its
    versions start at 2 (Vault's are 1.x). ``product`` is ``"vault"``, ``"openbao"`` or
    ``"unknown"`` (no answer, or neither marker).
    """

    product: str
    version: str = ""

    @property
    def label(self) -> str:
        names = {"vault": "Vault", "openbao": "OpenBao"}
        name = names.get(self.product, "the server")
        return f"{name} {self.version}".strip() if self.product in names else name

    @property
    def version_tuple(self) -> tuple[int, ...]:
        head = strip_v(self.version).split("+")[0].split("-")[0]
        try:
            return tuple(int(p) for p in head.split("."))
        except ValueError:
            return ()

    @property
    def has_plugin_pins(self) -> bool | None:
        """``sys/plugins/pins`` exists on Vault 1.16+ and never on OpenBao; None: unknown."""
        if self.product == "openbao":
            return False
        if self.product == "vault" and self.version_tuple:
            return self.version_tuple >= (1, 16)
        return None


def server_info_from(status: Mapping) -> ServerInfo:
    """Pure: the :class:`ServerInfo` for a ``sys/seal-status`` (or ``sys/health``) body."""
    data = status.get("data") if isinstance(status.get("data"), Mapping) else status
    version = str(data.get("version") or "")
    if "build_date" in data or "enterprise" in data:
        return ServerInfo("vault", version)
    if "commit_date" in data:
        return ServerInfo("openbao", version)
    major = strip_v(version).split(".")[0]
    if major.isdigit():
        return ServerInfo("openbao" if int(major) >= 2 else "vault", version)
    return ServerInfo("unknown", version)


def detect_server(client) -> ServerInfo:
    """Ask ``sys/seal-status`` (no token needed); ``unknown`` when it cannot be read."""
    try:
        status = call("reading sys/seal-status", "GET", "sys/seal-status",
                      lambda: client.adapter.get("/v1/sys/seal-status"))
    except VaultOpsError:
        return ServerInfo("unknown")
    return server_info_from(status) if isinstance(status, Mapping) else ServerInfo("unknown")
