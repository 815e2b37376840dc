"""``vault-plugin-shim``: one argparse CLI over the same library calls users import."""

from __future__ import annotations

import argparse
import getpass
import json
import os
import re
import sys
import time
from pathlib import Path

from shim import __version__
from shim.command import Parser, exit_status
from shim.errors import ShimError, UsageError
from shim.goplugin.vault import PLUGIN_TYPES
from shim.trust.errors import KeyFormatError, KeyPasswordError

PASSWORD_ENV = "VAULT_PLUGIN_SHIM_PASSWORD"
DURATION_RE = re.compile(r"\A(\d{1,6})([smhdw])\Z", re.ASCII)
UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}

DESCRIPTION = (
    "Run HashiCorp Vault or OpenBao external plugins through one stable, signed launcher. Register the "
    "launcher in the plugin catalog once; at each launch it starts the newest version in its plugins "
    "directory whose signed manifest verifies against your trusted keys, so a plugin upgrade is a new "
    "signed file in the image, not a catalog change. The usual order: keygen (once), sign (each release), "
    "launcher build, register (once); verify and doctor check what the next launch would do.")

# What a Ctrl-C leaves undone, by command: main() says it in one line and exits 130.
INTERRUPTED = {
    "keygen": "no key was written",
    "sign": "no manifest or signature was written",
    "verify": "the check did not finish (verify changes nothing)",
    "launcher build": "no launcher was written",
    "launcher inspect": "nothing was changed",
    "demo": "every node was stopped and its directory removed",
    "register": "the catalog entry, pin or mount may be partly written: run the same command again",
    "doctor": "the check did not finish (doctor changes nothing)",
}


def _emit(args, doc: dict, lines: list[str]) -> None:
    """A command's result: ``--json`` prints ``doc``, otherwise the lines."""
    print(json.dumps(doc, indent=2) if getattr(args, "json", False) else "\n".join(lines))


# --- helpers ---------------------------------------------------------------------------

def _password(args, *, confirm: bool) -> bytes:
    name = args.password_env
    if name and name in os.environ:
        return os.environ[name].encode()
    if not sys.stdin.isatty():
        raise KeyPasswordError(f"no password: ${name} is not set and there is no terminal to prompt on",
                               fix=f"set {name}, or use --unencrypted keys")
    first = getpass.getpass("Password: ")
    if confirm and getpass.getpass("Password (again): ") != first:
        raise KeyPasswordError("the passwords do not match", fix="type the same password twice")
    return first.encode()


def _read_public_key(spec: str):
    """A trusted key is a public key file path or the base64 line itself (``RW...``)."""
    from shim.trust.minisign import PublicKey

    if os.path.exists(spec):
        return PublicKey.parse(Path(spec).read_bytes(), path=spec)
    try:
        return PublicKey.parse(spec.encode("ascii"))
    except (KeyFormatError, UnicodeEncodeError):
        raise KeyFormatError("is neither a readable public key file nor a base64 minisign public key",
                             path=spec) from None


def _load_secret_key(args):
    from shim.trust.minisign import SecretKey

    data = Path(args.secret_key).read_bytes()
    password = _password(args, confirm=False) if SecretKey.is_encrypted(data, args.secret_key) else None
    return SecretKey.parse(data, password, path=args.secret_key)


def source_date_epoch() -> int:
    """``issued_at`` for a manifest: now, or ``$SOURCE_DATE_EPOCH`` for reproducible releases."""
    text = os.environ.get("SOURCE_DATE_EPOCH")
    if text is None:
        return int(time.time())
    if not text.isascii() or not text.isdigit():
        raise UsageError(f"SOURCE_DATE_EPOCH={text!r} is not a Unix time in seconds",
                         fix="set it to an integer such as $(git log -1 --format=%ct), or unset it")
    return int(text)


def parse_expiry(text: str, now: float) -> int:
    from shim.trust.manifest import format_time, parse_time

    m = DURATION_RE.match(text)
    if m:
        if int(m.group(1)) == 0:
            raise UsageError(f"--expires {text} would sign a release that has already expired",
                             fix="pass a positive duration (e.g. --expires 180d), or leave --expires out")
        return int(now) + int(m.group(1)) * UNITS[m.group(2)]
    try:
        expires = parse_time(text)
    except ValueError:
        raise UsageError(f"--expires {text!r} is neither a duration (90d, 12h, 2w) nor YYYY-MM-DDTHH:MM:SSZ",
                         fix="pass e.g. --expires 180d") from None
    if expires <= now:
        signed = "$SOURCE_DATE_EPOCH" if "SOURCE_DATE_EPOCH" in os.environ else "now"
        raise UsageError(f"--expires {text} is not after the signing time ({signed}: {format_time(int(now))}): "
                         f"no launcher would ever start the release",
                         fix="pass a later --expires: a duration such as 365d (counted from the signing "
                             "time), or a later YYYY-MM-DDTHH:MM:SSZ")
    return expires


def _check_name(name: str) -> None:
    """A plugin name as the manifest and the policy take it (``NAME_RE``), said before any work."""
    from shim.trust.manifest import NAME_RE

    if not NAME_RE.match(name):
        raise UsageError(f"--name {name!r} is not a valid Vault plugin name",
                         fix="pass a --name of 1 to 128 letters, digits, '.', '_' or '-' that starts with a "
                             "letter or digit: the name the plugin is registered under")


def _policy_from_args(args, plugins_dir: str, *, keep_relative: bool = False):
    from shim.trust.manifest import Version
    from shim.trust.policy import Policy

    try:
        floor = Version.parse_tag(args.min_version) if args.min_version else None
    except ValueError as exc:
        raise UsageError(str(exc), fix="pass --min-version as X.Y.Z") from None
    if args.name is not None:
        _check_name(args.name)
    if not (keep_relative and not os.path.isabs(plugins_dir)):
        plugins_dir = os.path.abspath(plugins_dir)
    return Policy(name=args.name, type=args.type, plugins_dir=plugins_dir,
                  trusted_keys=tuple(_read_public_key(k) for k in args.trusted_key),
                  min_version=floor, mode=getattr(args, "mode", "exec"),
                  on_refused_newer=getattr(args, "on_refused_newer", "fallback"),
                  **({"max_size": args.max_size} if getattr(args, "max_size", None) else {}))


# --- commands --------------------------------------------------------------------------

def cmd_keygen(args) -> int:
    from shim._files import write_atomic
    from shim.trust.minisign import SecretKey

    if not args.from_transit and not args.secret_key:
        raise UsageError("keygen needs --secret-key (or --from-transit KEY)")
    for path in filter(None, (None if args.from_transit else args.secret_key, args.public_key)):
        if os.path.exists(path) and not args.force:
            raise UsageError("already exists; refusing to overwrite a key", path=path,
                             fix="remove it first or pass --force")
    if args.from_transit:
        from shim.ops.cli import transit_signer_from_env
        from shim.trust.minisign import PublicKey

        signer = transit_signer_from_env(args.from_transit, args.transit_mount, args.transit_key_version)
        pub = PublicKey(signer.key_id, signer.public_key_raw())
        write_atomic(args.public_key, pub.to_text(f"minisign public key {pub.key_id_hex} "
                                                  f"(Vault Transit key {args.from_transit})").encode(), 0o644)
        _emit(args, {"key_id": pub.key_id_hex, "public_key": args.public_key, "transit_key": args.from_transit,
                     "transit_key_version": signer.key_version},
              [f"public key {pub.key_id_hex} of Transit key {args.from_transit} version {signer.key_version} "
               f"written to {args.public_key}"])
        return 0
    key = SecretKey.generate()
    password = None if args.unencrypted else _password(args, confirm=True)
    secret = key.to_text(password)   # the slow part (scrypt), before any file is touched
    write_atomic(args.secret_key, secret.encode(), 0o600)
    write_atomic(args.public_key, key.public_key().to_text().encode(), 0o644)
    _emit(args, {"key_id": key.public_key().key_id_hex, "secret_key": args.secret_key,
                 "encrypted": password is not None, "public_key": args.public_key},
          [f"key id {key.public_key().key_id_hex}",
           f"secret key: {args.secret_key} ({'unencrypted' if password is None else 'encrypted'}, mode 0600)",
           f"public key: {args.public_key}"])
    return 0


def cmd_sign(args) -> int:
    from shim.ops.release import sign_release
    from shim.trust import minisign
    from shim.trust.manifest import Version, format_time, manifest_path, signature_path

    if bool(args.secret_key) == bool(args.transit_key):
        raise UsageError("pass exactly one of --secret-key and --transit-key")
    try:
        version = Version.parse_tag(args.version)
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    _check_name(args.name)
    path = args.plugin_file
    now = source_date_epoch()
    expires_at = parse_expiry(args.expires, now) if args.expires else None
    if args.transit_key:
        from shim.ops.cli import transit_signer_from_env

        signer = transit_signer_from_env(args.transit_key, args.transit_mount, args.transit_key_version)
        signer.require_trusted([_read_public_key(k) for k in args.trusted_key])
        key_id, sign = signer.key_id, signer.sign
        if not args.json:
            print(f"Transit key {args.transit_key} version {signer.key_version}: key id {minisign.key_id_hex(key_id)}")
    elif args.transit_key_version or args.trusted_key:
        raise UsageError("--transit-key-version and --trusted-key go with --transit-key")
    else:
        key = _load_secret_key(args)
        key_id, sign = key.key_id, key.sign
    manifest = sign_release(path, name=args.name, type=args.type, version=version, key_id=key_id, sign=sign,
                            issued_at=now, expires_at=expires_at,
                            os_=args.os, arch=args.arch)
    _emit(args, {**json.loads(manifest.to_bytes()), "key_id": minisign.key_id_hex(key_id),
                 "manifest": manifest_path(path), "signature": signature_path(path)},
          [f"signed {manifest.type} plugin {manifest.name} {manifest.version} "
           f"({manifest.os}/{manifest.arch}, sha256 {manifest.sha256}) with key {minisign.key_id_hex(key_id)}, "
           + ("no expiry" if manifest.expires_at is None else f"expires {format_time(manifest.expires_at)}"),
           f"  {manifest_path(path)}", f"  {signature_path(path)}"])
    return 0


def cmd_verify(args) -> int:
    from shim.trust.manifest import format_time_or_none, manifest_path
    from shim.trust.verify import report

    target = os.path.abspath(args.path) if args.path else None
    if target and not os.path.exists(target) and not os.path.exists(manifest_path(target)):
        raise UsageError("no such file or directory", path=args.path,
                         fix="pass a signed plugin file or the directory that holds the plugin's versions")
    only, directory, ask_launcher = None, target, False
    if target and not os.path.isdir(target):
        only, directory = os.path.basename(target), os.path.dirname(target)
    if args.launcher:
        from shim.launch.build import inspect

        info = inspect(args.launcher)
        policy = info.policy
        if policy is None and args.catalog_args:
            from shim.trust.policy import split_args

            policy, _ = split_args(list(args.catalog_args))
        if policy is None:
            raise UsageError("has no embedded policy", path=args.launcher,
                             fix="a --policy-in-args launcher takes its policy from the catalog's args: "
                                 "pass them with --arg (see `vault plugin info -version=<version> <type> <name>`)")
        policy = policy.resolved(args.launcher)
        # A native launcher decides by its own code: ask it (its dry mode), for its own plugins dir.
        ask_launcher = info.native and (not directory or os.path.realpath(directory) ==
                                        os.path.realpath(policy.plugins_dir))
        if directory:
            policy = policy.replace(plugins_dir=directory)
    else:
        if not args.trusted_key or not args.name or not target:
            raise UsageError("verify needs --trusted-key, --name and PLUGIN_FILE_OR_DIR (or --launcher)")
        policy = _policy_from_args(args, directory)
    now = time.time()
    selection = report(policy, now)
    decided_by, differ, launch_refusal = "vault-plugin-shim", [], None
    if ask_launcher:
        from shim.ops.native import NativeSelection, native_differences, native_explain

        theirs = NativeSelection(native_explain(os.path.abspath(args.launcher)))
        differ = native_differences(selection, theirs, None if directory else policy.plugins_dir)
        selection, decided_by, launch_refusal = theirs, "launcher", theirs.refusal
    if only is None:
        results, chosen, passed_over = selection.candidates, selection.chosen, selection.passed_over()
    else:  # one file: is it valid on its own?
        results = [c for c in selection.candidates if c.binary == only]
        chosen = next((c for c in results if c.error is None), None)
        passed_over = [c for c in results if c.error is not None]
    expected = _expected_version(args.expect_version)
    problems = _verify_problems(policy, chosen, passed_over, expected)
    if launch_refusal is not None and only is None and chosen is not None:   # on_refused_newer: refuse
        problems.insert(0, f"next launch refuses (the launcher's own decision): {launch_refusal.reason}")
    problems += [f"the launcher's own code and vault-plugin-shim's selection differ: {d}" for d in differ]
    if args.json:
        print(json.dumps({
            "plugin": policy.name, "type": policy.type, "plugins_dir": policy.plugins_dir,
            "on_refused_newer": policy.on_refused_newer, "ok": not problems, "decided_by": decided_by,
            "refusal": None if launch_refusal is None or only is not None else launch_refusal.fields(),
            "would_launch": None if chosen is None else chosen.path,
            "version": None if chosen is None else str(chosen.manifest.version),
            "expires_at": None if chosen is None else format_time_or_none(chosen.manifest.expires_at),
            "passed_over": [c.path for c in passed_over], "problems": problems,
            "candidates": [_candidate_json(c, now) for c in results]}, indent=2))
    else:
        print(f"{policy.type} plugin {policy.name!r}, plugins dir {policy.plugins_dir}")
        if decided_by == "launcher":
            print(f"  verdicts by the launcher's own code (`{args.launcher} explain --json`)")
        if not results:
            print(f"  no candidates ({'no manifest for ' + only if only else 'no *.manifest.json files'})")
        for c in results:
            if c.error is None:
                mark = "LAUNCH" if c is chosen else "ok"
                print(f"  [{mark:6}] {c.binary}: version {c.manifest.version}, sha256 {c.manifest.sha256}, "
                      f"key {c.key.key_id_hex}, {_expiry_text(c.manifest, now)}")
            else:
                print(f"  [REJECT] {c.binary}: {c.error.diagnostics()}")
        for problem in problems:
            print(f"FAIL: {problem}")
    return 1 if problems else 0


def _expected_version(text: str | None):
    from shim.trust.manifest import Version

    if text is None:
        return None
    try:
        return Version.parse_tag(text)
    except ValueError as exc:
        raise UsageError(str(exc), fix="pass --expect-version as X.Y.Z") from None


def _verify_problems(policy, chosen, passed_over, expected) -> list[str]:
    """Why ``verify`` exits 1, one sentence each: nothing would launch, a newer version is
    refused (the launcher falls back past it, or refuses), another version than expected."""
    out = []
    if chosen is None:
        out.append(f"no version of {policy.type} plugin {policy.name!r} would launch")
    elif passed_over:
        what = ("the launcher refuses to start (on_refused_newer: refuse)" if policy.on_refused_newer == "refuse"
                else f"the launcher falls back to the older {chosen.manifest.version}")
        out += [f"{c.binary}"
                + (f" (version {c.manifest.version})" if c.manifest is not None
                   else " (its signed version could not be read)")
                + f" is refused and {what}: {c.error.reason}" for c in passed_over]
    if expected is not None and (chosen is None or str(chosen.manifest.version) != str(expected)):
        out.append(f"--expect-version {expected}: "
                   + ("nothing would launch" if chosen is None else f"version {chosen.manifest.version} would launch"))
    return out


def _expiry_text(manifest, now: float) -> str:
    from shim.trust.manifest import format_time
    from shim.trust.verify import expires_soon

    if manifest.expires_at is None:
        return "no expiry"
    left = expires_soon(manifest, now)
    text = f"expires {format_time(manifest.expires_at)}"
    return text if left is None else f"{text} (WARNING: in {left / 86400:.1f} days: re-sign it, see README)"


def _candidate_json(c, now: float) -> dict:
    from shim.trust.manifest import format_time, format_time_or_none
    from shim.trust.verify import expires_soon

    out = {"file": c.path, "ok": c.error is None}
    if c.manifest is not None:
        out.update(version=str(c.manifest.version), sha256=c.manifest.sha256, size=c.manifest.size,
                   issued_at=format_time(c.manifest.issued_at), expires_at=format_time_or_none(c.manifest.expires_at),
                   expires_soon=expires_soon(c.manifest, now) is not None)
    if c.key is not None:
        out["key_id"] = c.key.key_id_hex
    if c.error is not None:
        out["error"] = c.error.fields()
    return out


def cmd_launcher_build(args) -> int:
    from shim.launch.build import write_launcher
    from shim.trust.policy import encode_arg

    if not args.trusted_key:
        raise UsageError("launcher build needs at least one --trusted-key")
    out_dir = os.path.dirname(os.path.abspath(args.output))
    if not os.path.isdir(out_dir):
        raise UsageError(f"does not exist (the directory of --output {args.output})", path=out_dir,
                         fix=f"create it first (mkdir -p {out_dir}), or pass an --output in an existing directory")
    policy = _policy_from_args(args, args.plugins_dir, keep_relative=True)
    if args.hot_swap and policy.mode != "proxy":
        raise UsageError("--hot-swap needs --mode proxy (in exec mode the launcher is gone once the plugin runs)")
    kind = args.kind or "native"
    if kind == "native" and args.policy_in_args:
        raise UsageError("a native launcher embeds its policy; --policy-in-args needs the Python launcher",
                         fix="pass --kind python with --policy-in-args, or leave --policy-in-args out")
    if kind == "native" and policy.mode == "exec":
        # The static launcher decides and executes by itself: no interpreter in the image.
        for flag, given in (("--python", args.python), ("--python-only-in-image", args.python_only_in_image)):
            if given:
                raise UsageError(f"{flag} does not apply: an exec-mode launcher is native and starts no interpreter",
                                 fix=f"drop {flag}, or pass --kind python for the interpreter-backed launcher")
        python = None
    else:
        # The Python launcher, or a native proxy launcher: it decides, then starts the proxy's Python.
        python = args.python or os.path.abspath(sys.executable)
        if not args.python_only_in_image:
            _check_launcher_python(python, policy.mode, args.hot_swap)
    sha = write_launcher(None if args.policy_in_args else policy, python, args.output, policy.mode, args.arch,
                         hot_swap=args.hot_swap, native=kind == "native")
    command = os.path.basename(args.output)
    catalog_args = [encode_arg(policy)] if args.policy_in_args else []
    register = ["vault-plugin-shim", "register", policy.type, policy.name,
                "--launcher", f"<plugin_directory>/{command}", *(f"--arg={a}" for a in catalog_args)]
    extra = "".join(f" -args={a}" for a in catalog_args)
    runs = ("native:   static, needs nothing else in the image (exec mode)" if python is None else
            f"{'native:   decides, then starts' if kind == 'native' else 'python:  '} {python} -I "
            f"({policy.mode} mode{', hot swap' if args.hot_swap else ''})")
    _emit(args, {"launcher": args.output, "sha256": sha, "kind": kind, "python": python,
                 "flags": [] if python is None else ["-I"], "mode": policy.mode,
                 "hot_swap": args.hot_swap, "command": command, "catalog_args": catalog_args,
                 "policy": {**json.loads(policy.to_json()), "on_refused_newer": policy.on_refused_newer},
                 "register": register},
          [f"launcher: {args.output}", f"sha256:   {sha}", runs,
           "register it once, where it is installed (the plugins dir may then change freely):",
           "  " + " ".join(register),
           "  (it probes the version, refuses to replace another launcher's entry, and can --pin and --mount;",
           f"   the catalog entry it writes: vault plugin register -sha256={sha} -command={command}{extra} "
           f"{policy.type} {policy.name}, with -version= what the plugin reports)"])
    return 0


def _check_launcher_python(python: str, mode: str, hot_swap: bool = False) -> None:
    """The interpreter a launcher will start must exist and import what its mode needs:
    a launcher that cannot start its own code fails every plugin start."""
    import subprocess

    if not os.path.isabs(python):
        raise UsageError(f"--python {python!r} is not an absolute path",
                         fix="pass the interpreter's absolute path, e.g. /usr/bin/python3")
    if not os.access(python, os.X_OK) or os.path.isdir(python):
        raise UsageError(f"--python {python} does not exist or is not executable on this machine",
                         fix="pass an interpreter that exists here, or --python-only-in-image when it "
                             "exists only in the target image (then run `L doctor` in the image)")
    from shim.launch.build import IMPORT_PROBE, mode_imports

    try:
        done = subprocess.run([python, "-I", "-c", IMPORT_PROBE, *mode_imports(mode, hot_swap)], capture_output=True,
                              text=True, timeout=120, env={"LC_ALL": "C.UTF-8"})
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise UsageError(f"--python {python} cannot be run here", cause=exc,
                         fix="pass a working interpreter, or --python-only-in-image") from exc
    if done.returncode != 0 or done.stdout.strip():
        raise UsageError(f"--python {python} -I cannot import what {mode} mode needs: "
                         f"{'; '.join(done.stdout.split(chr(10))).strip('; ') or done.stderr.strip()[-300:]}",
                         fix="install the modules for that interpreter (exec: cryptography; proxy: also grpcio, "
                             "protobuf, hpack), e.g. apk add py3-cryptography py3-grpcio py3-protobuf py3-hpack")


def cmd_launcher_inspect(args) -> int:
    from shim.launch.build import inspect

    info = inspect(args.launcher)
    if args.json:
        print(json.dumps({"path": info.path, "sha256": info.sha256, "kind": "native" if info.native else "python",
                          "interpreter": info.interpreter or None,
                          "flags": info.flags, "mode": info.mode, "files": info.files, "size": info.size,
                          "compiled": info.compiled, "hot_swap": info.hot_swap,
                          "policy": None if info.policy is None else
                          {**json.loads(info.policy.to_json()), "on_refused_newer": info.policy.on_refused_newer}},
                         indent=2))
        return 0
    print(f"launcher:    {info.path}")
    print(f"sha256:      {info.sha256}")
    if info.native and not info.interpreter:
        print("kind:        native (static; verifies and executes the plugin by itself, no interpreter)")
    else:
        print(f"kind:        {'native, then ' if info.native else ''}python")
        print(f"interpreter: {info.interpreter} {' '.join(info.flags)}")
    print(f"mode:        {info.mode}{' (hot swap on)' if info.hot_swap else ''}")
    if info.files:
        print(f"size:        {info.size} bytes, {info.files} source files"
              + (f", bytecode for {info.compiled} of them" if info.compiled else
                 ", no bytecode (compiled at each start)"))
    else:
        print(f"size:        {info.size} bytes")
    if info.policy is None:
        print("policy:      none embedded (taken from the catalog's --shim-policy= arg)")
    else:
        p = info.policy
        print(f"plugin:      {p.type} {p.name}")
        print(f"plugins dir: {p.plugins_dir}")
        print(f"min version: {p.min_version or '(none)'}")
        print(f"newer refused: {p.on_refused_newer} (what a launch does when a newer version is refused)")
        for k in p.trusted_keys:
            print(f"trusted key: {k.key_id_hex} {k.to_text().splitlines()[1]}")
    return 0


def cmd_demo(args) -> int:
    from shim.demo import cli as demo_cli

    return demo_cli.main(args)


# --- parser ----------------------------------------------------------------------------

def _plugin_args(p, *, required: bool = True) -> None:
    p.add_argument("--trusted-key", action="append", default=[], metavar="PK",
                   help="trusted minisign public key: a file or the base64 line (repeat to rotate keys)")
    p.add_argument("--name", required=required, help="plugin name as registered in Vault")
    p.add_argument("--type", default="secret", choices=PLUGIN_TYPES,
                   help="plugin type as registered in Vault (default: secret)")
    p.add_argument("--min-version", help="rollback floor: older versions are refused")


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(prog="vault-plugin-shim", description=DESCRIPTION)
    parser.add_argument("--version", action="version", version=f"vault-plugin-shim {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("keygen", help="create a minisign-compatible signing key pair")
    p.add_argument("--secret-key", metavar="SK", help="where to write the secret key (not with --from-transit)")
    p.add_argument("--public-key", required=True, metavar="PK",
                   help="where to write the public key (what launcher build and verify take as --trusted-key)")
    p.add_argument("--unencrypted", action="store_true", help="no password (like minisign -W)")
    p.add_argument("--password-env", default=PASSWORD_ENV, metavar="VAR",
                   help=f"environment variable holding the password (default {PASSWORD_ENV})")
    p.add_argument("--from-transit", metavar="KEY", help="export the public half of a Vault Transit ed25519 key")
    p.add_argument("--transit-mount", default="transit", metavar="PATH",
                   help="with --from-transit: where the Transit engine is mounted (default: transit)")
    p.add_argument("--transit-key-version", type=int, metavar="N",
                   help="with --from-transit: this version of the key (default: its latest)")
    p.add_argument("--force", action="store_true",
                   help="replace existing key files (a replaced secret key is gone for good)")
    p.add_argument("--json", action="store_true", help="the key id and files as JSON")
    p.set_defaults(func=cmd_keygen)

    p = sub.add_parser("sign", help="write PLUGIN_FILE.manifest.json and its .minisig")
    p.add_argument("plugin_file", metavar="PLUGIN_FILE",
                   help="the plugin binary to sign; its manifest and signature are written next to it")
    p.add_argument("--secret-key", metavar="SK",
                   help="the secret key file from keygen (an encrypted one needs its password)")
    p.add_argument("--transit-key", metavar="KEY", help="sign with a Vault Transit ed25519 key instead")
    p.add_argument("--transit-mount", default="transit", metavar="PATH",
                   help="with --transit-key: where the Transit engine is mounted (default: transit)")
    p.add_argument("--transit-key-version", type=int, metavar="N",
                   help="sign with this version of the Transit key (default: its latest)")
    p.add_argument("--trusted-key", action="append", default=[], metavar="PK",
                   help="with --transit-key: refuse unless the key version is one of these public keys "
                        "(the launchers' --trusted-key)")
    p.add_argument("--password-env", default=PASSWORD_ENV, metavar="VAR",
                   help=f"environment variable holding the secret key's password; unset, it is asked for on "
                        f"the terminal (default {PASSWORD_ENV})")
    p.add_argument("--name", required=True, help="plugin name as registered in Vault (the launcher's --name)")
    p.add_argument("--type", required=True, choices=PLUGIN_TYPES, help="plugin type as registered in Vault")
    p.add_argument("--version", required=True, help="semantic version X.Y.Z")
    p.add_argument("--expires", help="opt-in expiry: duration (180d, 12h) or YYYY-MM-DDTHH:MM:SSZ; no launcher "
                                     "starts the release after it, so re-sign before then (default: none)")
    p.add_argument("--os", help="GOOS of the binary (default: this machine's)")
    p.add_argument("--arch", help="GOARCH of the binary (default: this machine's)")
    p.add_argument("--json", action="store_true", help="the signed manifest and the files written, as JSON")
    p.set_defaults(func=cmd_sign)

    p = sub.add_parser("verify", help="check plugin versions exactly as the launcher would")
    p.add_argument("path", nargs="?", metavar="PLUGIN_FILE_OR_DIR",
                   help="a signed plugin file (is it valid on its own?) or the plugins directory (which version "
                        "would launch?); with --launcher, default: the launcher's plugins dir")
    _plugin_args(p, required=False)
    p.add_argument("--launcher", help="take the policy from this launcher instead of flags")
    p.add_argument("--arg", dest="catalog_args", action="append", default=[], metavar="ARG",
                   help="with --launcher: a catalog argument (for launchers whose policy is in --shim-policy=...)")
    p.add_argument("--expect-version", metavar="X.Y.Z",
                   help="exit 1 unless this is the version that would launch (for image builds)")
    p.add_argument("--json", action="store_true", help="every candidate's verdict and the one to launch as JSON")
    p.set_defaults(func=cmd_verify)

    launcher = sub.add_parser("launcher", help="build or inspect the stable launcher")
    lsub = launcher.add_subparsers(dest="launcher_command", required=True)
    p = lsub.add_parser("build", help="build a reproducible single-file launcher")
    _plugin_args(p)
    p.add_argument("--plugins-dir", required=True,
                   help="directory holding the signed plugin versions; a relative path is taken "
                        "relative to the launcher's own directory when Vault runs it")
    p.add_argument("--mode", default="exec", choices=("exec", "proxy"),
                   help="exec (the default): the launcher verifies the plugin and executes it in its place; "
                        "proxy: the launcher stays between Vault and the plugin (what --hot-swap needs)")
    p.add_argument("--kind", choices=("native", "python"),
                   help="native (the default): a static file that selects, verifies and seals the plugin by "
                        "itself; in exec mode it needs no interpreter in the image, in proxy mode it then starts "
                        "the proxy's Python with its verdict. python: the interpreter-backed launcher, which "
                        "decides in Python (what --policy-in-args needs)")
    p.add_argument("--python", help="proxy mode, or --kind python: absolute path of the interpreter the launcher "
                                    "starts (default: this one)")
    p.add_argument("--python-only-in-image", action="store_true",
                   help="the --python interpreter exists only in the target image, not on this machine: "
                        "skip the checks that run it here")
    p.add_argument("--arch", help="target architecture (Go's name, e.g. amd64, arm64; default: this machine's)")
    p.add_argument("--hot-swap", action="store_true",
                   help="proxy mode: swap a newly shipped signed version in while Vault runs (off by default)")
    p.add_argument("--max-size", type=int, help="largest plugin binary accepted, in bytes")
    p.add_argument("--on-refused-newer", choices=("fallback", "refuse"), default="fallback",
                   help="when a newer version is present but refused (tampered, untrusted key, expired): run "
                        "the older valid version and log an ERROR (fallback, the default), or refuse to start")
    p.add_argument("--policy-in-args", action="store_true",
                   help="embed no policy; print it as a catalog -args value instead")
    p.add_argument("--output", required=True, metavar="LAUNCHER",
                   help="the launcher file to write, in an existing directory (replaced if it exists)")
    p.add_argument("--json", action="store_true", help="the launcher's sha256, policy and register command as JSON")
    p.set_defaults(func=cmd_launcher_build)
    p = lsub.add_parser("inspect", help="show a launcher's checksum and embedded policy")
    p.add_argument("launcher", metavar="LAUNCHER", help="the launcher file (as built by launcher build)")
    p.add_argument("--json", action="store_true", help="the checksum, kind, mode and policy as JSON")
    p.set_defaults(func=cmd_launcher_inspect)

    p = sub.add_parser("demo", help="replay a StatefulSet rolling upgrade on a real OpenBao cluster, "
                                    "with and without the shim")
    from shim.demo.cli import add_arguments as _demo_arguments
    _demo_arguments(p)
    p.set_defaults(func=cmd_demo)

    from shim.ops.cli import add_register_parser
    from shim.ops.doctor import add_doctor_parser

    add_register_parser(sub)
    add_doctor_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except ShimError as exc:
        print(f"vault-plugin-shim: error: {exc.diagnostics()}", file=sys.stderr)
        return exit_status(exc)
    except OSError as exc:
        print(f"vault-plugin-shim: error: {exc.filename or ''}: {exc.strerror}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:  # Ctrl-C: one line, what was left undone, the shell's 128 + SIGINT
        command = " ".join(filter(None, (args.command, getattr(args, "launcher_command", None))))
        print(f"vault-plugin-shim {command}: interrupted; {INTERRUPTED[command]}", file=sys.stderr)
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
