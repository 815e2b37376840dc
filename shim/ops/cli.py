"""argparse wiring for the operator subcommands (``register``, ``doctor``).

``shim/cli.py`` calls :func:`add_register_parser` (and ``shim.ops.doctor.add_doctor_parser``)
on its subparsers; each sets ``func`` to a callable taking the parsed namespace and
returning an exit status. :func:`transit_signer_from_env` is re-exported for
``sign --transit-key`` and ``keygen --from-transit``.
"""

from __future__ import annotations

import argparse
import json
import sys

from shim.errors import ShimError
from shim.goplugin.vault import PLUGIN_TYPES
from shim.ops.doctor import add_doctor_parser
from shim.ops.transit import TransitSigner, transit_signer_from_env

__all__ = ["add_doctor_parser", "add_register_parser", "run_register", "transit_signer_from_env",
           "TransitSigner"]

REGISTER_EPILOG = """\
Register the launcher ONCE; routine plugin upgrades never touch the catalog again.
The server runs the launcher at registration to learn the plugin's version: leave
--version out (the version the plugin on the active node reports is recorded) or pass
exactly that. register learns it first without writing, fails if the launcher could not
run, and refuses to replace an entry another launcher owns (a rotation: pass --force).
On OpenBao (no plugin pins) --pin moves each mount of the name with secrets tune.
Reads VAULT_ADDR, VAULT_TOKEN (else ~/.vault-token), VAULT_CACERT, VAULT_CAPATH,
VAULT_CLIENT_CERT/KEY, VAULT_NAMESPACE, VAULT_SKIP_VERIFY (BAO_* when VAULT_* is unset).
Database plugins are not mounted: point a database/config/<connection> at plugin_name.
"""


def add_register_parser(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "register", help="register the launcher in Vault's plugin catalog (once)",
        description="Register the launcher in Vault's plugin catalog, optionally pin it and enable a mount.",
        epilog=REGISTER_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("type", choices=PLUGIN_TYPES, help="plugin type")
    p.add_argument("name", help="plugin name in the catalog (what mounts refer to)")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--launcher", metavar="PATH",
                     help="the launcher file, byte-identical to the one in plugin_directory (hashed here)")
    src.add_argument("--sha256", metavar="HEX", help="the launcher's published SHA-256 instead of --launcher")
    p.add_argument("--command", metavar="FILE",
                   help="file name of the launcher inside plugin_directory (default: --launcher's file name)")
    p.add_argument("--arg", dest="args", action="append", default=[], metavar="ARG",
                   help="argument Vault passes to the launcher (repeatable; write --arg=--flag for dashes)")
    p.add_argument("--env", dest="env", action="append", default=[], metavar="KEY=VALUE",
                   help="environment entry in the catalog (repeatable)")
    p.add_argument("--version", dest="plugin_version", default="", metavar="VERSION",
                   help="catalog version; must equal what the plugin on the active node reports")
    p.add_argument("--pin", action="store_true",
                   help="make every mount of the name run this entry: a pin on Vault 1.16+, "
                        "secrets/auth tune -plugin-version of each mount on OpenBao")
    p.add_argument("--force", action="store_true",
                   help="replace a catalog entry that names another sha256 or args (a deliberate "
                        "launcher rotation)")
    p.add_argument("--mount", metavar="PATH",
                   help="enable the plugin at PATH if nothing is mounted there (secret/auth only)")
    p.add_argument("--description", default="", help="description for a mount created by --mount")
    p.add_argument("--dry-run", action="store_true",
                   help="print the vault CLI commands and HTTP calls; send nothing")
    p.add_argument("--json", action="store_true", help="what was written (or, with --dry-run, the plan) as JSON")
    p.set_defaults(func=run_register)
    return p


def _registration(ns: argparse.Namespace):
    from pathlib import Path

    from shim.ops.errors import RegistrationError
    from shim.ops.registration import Registration, sha256_file

    if ns.launcher:
        digest = sha256_file(ns.launcher)
        command = ns.command or Path(ns.launcher).name
    else:
        digest = ns.sha256.strip().lower()
        if not ns.command:
            raise RegistrationError("--sha256 needs --command",
                                    fix="name the launcher's file inside plugin_directory with --command")
        command = ns.command
    return Registration(plugin_type=ns.type, name=ns.name, command=command, sha256=digest,
                        args=tuple(ns.args), env=tuple(ns.env), version=ns.plugin_version,
                        pin=ns.pin, mount_path=ns.mount, description=ns.description)


def run_register(ns: argparse.Namespace, *, stdout=None, stderr=None) -> int:
    from dataclasses import asdict

    from shim.ops.register import apply
    from shim.ops.registration import plan, render_dry_run
    from shim.ops.vaultenv import VaultEnv

    stdout = stdout or sys.stdout
    stderr = stderr or sys.stderr
    try:
        reg = _registration(ns)
        env = VaultEnv.from_environ()
        if ns.dry_run:
            stdout.write(json.dumps([asdict(c) for c in plan(reg)], indent=2) + "\n" if ns.json
                         else render_dry_run(reg, env))
            return 0
        result = apply(env.client(), reg, force=ns.force)
    except ShimError as exc:
        stderr.write(f"vault-plugin-shim register: {exc.diagnostics()}\n")
        return getattr(exc, "exit_status", 1)
    stdout.write((json.dumps(result.to_json(reg), indent=2) if ns.json else result.summary(reg)) + "\n")
    return 0


