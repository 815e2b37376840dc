"""A native launcher's own decision, asked and read: ``L explain --json`` (its dry mode, run by
hand: no go-plugin cookie, so nothing is executed), its verdicts as the objects ``doctor`` and
``verify --launcher`` read from :mod:`shim.trust.verify`, and where they differ from
vault-plugin-shim's own selection."""

from __future__ import annotations

import json
import os
import subprocess

from shim.errors import ShimError

EXPLAIN_SCHEMA = "vault-plugin-shim/explain/v1"
EXPLAIN_TIMEOUT = 300   # s: it hashes every valid candidate


def native_explain(launcher: str, uid: int | None = None) -> dict:
    """What a native launcher's own code decides for its next launch on this node: ``L explain
    --json`` (its dry mode), run by hand (an empty environment: no go-plugin cookie, so nothing
    is executed), as ``uid`` when that is not ours (root only: ``doctor --vault-uid``), with
    that user's groups. Raises ShimError when it gives no such answer. The launcher's own hclog
    lines at warn or error on stderr (e.g. no second thread could start to hash a candidate:
    the pids limit) are kept under ``"launcher_log"``, which is not part of the schema."""
    import pwd

    kw: dict = {}
    if uid is not None and uid != os.geteuid():
        if os.geteuid() != 0:
            raise ShimError(f"cannot run the launcher as uid {uid}: only root can switch to another uid", path=launcher,
                            fix="run doctor as root (with --vault-uid), or as the Vault user itself")
        try:
            user = pwd.getpwuid(uid)
            kw = {"user": uid, "group": user.pw_gid, "extra_groups": os.getgrouplist(user.pw_name, user.pw_gid)}
        except KeyError:
            kw = {"user": uid, "group": uid, "extra_groups": []}
    who = f" as uid {uid}" if kw else ""
    try:
        proc = subprocess.run([launcher, "explain", "--json"], env={}, cwd="/", capture_output=True,
                              timeout=EXPLAIN_TIMEOUT, **kw)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise ShimError(f"cannot run `{launcher} explain --json`{who}: "
                        f"{exc.strerror if isinstance(exc, OSError) and exc.strerror else exc}", path=launcher,
                        fix="make the launcher and its directories executable by the Vault user (Vault runs it "
                            "as that user too)") from None
    try:
        doc = json.loads(proc.stdout.decode("utf-8"))
    except ValueError:
        doc = None
    if not isinstance(doc, dict) or doc.get("schema") != EXPLAIN_SCHEMA:
        said = (proc.stderr.decode(errors="replace").strip().splitlines() or ["nothing on stderr"])[-1][:200]
        raise ShimError(f"`{launcher} explain --json`{who} gave no decision (exit status {proc.returncode}: {said})",
                        path=launcher, fix="rebuild the launcher with this vault-plugin-shim (`launcher build`): "
                                           "a native launcher built before its dry mode cannot be asked")
    doc["launcher_log"] = _loud_lines(proc.stderr)
    return doc


def _loud_lines(stderr: bytes) -> list[dict]:
    """The hclog JSON lines at warn or error in a launcher's stderr."""
    out = []
    for line in stderr.decode("utf-8", errors="replace").splitlines():
        try:
            entry = json.loads(line)
        except ValueError:
            continue
        if isinstance(entry, dict) and entry.get("@level") in ("warn", "error"):
            out.append(entry)
    return out


def _diagnostic(fields: dict) -> ShimError:
    """The error of a verdict in ``explain --json`` (Diagnostic.fields()), as its own class."""
    from shim.launch import errors as launch_errors
    from shim.trust import errors as trust_errors

    name = fields.get("error", "")
    cls = getattr(trust_errors, name, None) or getattr(launch_errors, name, None)
    if not (isinstance(cls, type) and issubclass(cls, ShimError)):
        cls = ShimError
    return cls(fields.get("reason", ""), path=fields.get("file"), fix=fields.get("fix", ""),
               cause=fields.get("cause") or None)


class NativeCandidate:
    """A candidate as a native launcher's ``explain --json`` gives it, with the attributes that
    doctor and verify read from :class:`shim.trust.verify.Candidate`."""

    def __init__(self, doc: dict):
        from types import SimpleNamespace

        from shim.trust.manifest import Version, parse_time

        self.binary, self.path = doc["binary"], doc["file"]
        self.manifest_path = self.path + ".manifest.json"
        self.manifest = None if doc.get("version") is None else SimpleNamespace(
            version=Version.parse(doc["version"]), sha256=doc["sha256"], size=doc["size"],
            issued_at=parse_time(doc["issued_at"]),
            expires_at=None if doc["expires_at"] is None else parse_time(doc["expires_at"]))
        self.key = None if doc.get("key_id") is None else SimpleNamespace(key_id_hex=doc["key_id"])
        self.error = None if doc.get("error") is None else _diagnostic(doc["error"])
        self.is_passed_over = bool(doc.get("passed_over"))


class NativeSelection:
    """:class:`shim.trust.verify.Selection`'s face over ``explain --json``: what the launcher's
    own code decides, plus the launch's own refusal (``refusal``: NoValidVersionError, or
    NewerVersionRefusedError under on_refused_newer refuse) and its expiry warning."""

    def __init__(self, doc: dict):
        self.doc = doc
        self.candidates = [NativeCandidate(c) for c in doc["candidates"]]
        self.chosen = next((c for c, d in zip(self.candidates, doc["candidates"]) if d["chosen"]), None)
        self.value = None
        self.refusal = None if doc.get("refusal") is None else _diagnostic(doc["refusal"])
        self.expiry_warning = doc.get("expiry_warning")
        self.log = doc.get("launcher_log", [])    # what it said on stderr while deciding (warn, error)
        self.plugins_dir = doc["policy"]["plugins_dir"]

    def passed_over(self) -> list:
        return [c for c in self.candidates if c.is_passed_over]


def native_differences(python, native: NativeSelection, plugins_dir: str | None = None) -> list[str]:
    """Where vault-plugin-shim's own selection and the launcher's differ: each candidate's
    verdict (ok, or refused with its error class) and which one runs, one sentence each naming
    both. Reasons are not compared (strerror texts differ between musl and glibc)."""
    def view(sel) -> dict:
        return {c.binary: ("ok" if c.error is None else type(c.error).__name__, c is sel.chosen)
                for c in sel.candidates}

    def say(v) -> str:
        if v is None:
            return "no such candidate"
        return ("ok" if v[0] == "ok" else f"refused ({v[0]})") + (", runs" if v[1] else "")

    out = []
    if plugins_dir is not None and native.plugins_dir != plugins_dir:
        out.append(f"plugins dir: the launcher reads {native.plugins_dir}, vault-plugin-shim's selection {plugins_dir}")
    py, nat = view(python), view(native)
    for name in sorted(set(py) | set(nat)):
        if py.get(name) != nat.get(name):
            out.append(f"{name}: the launcher says {say(nat.get(name))}, vault-plugin-shim's selection says "
                       f"{say(py.get(name))}")
    return out
