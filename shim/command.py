"""What every command line of ours shares: the ``vault`` CLI's exit codes and an argparse
parser that keeps them. ``shim.cli`` builds the whole CLI on it; ``L doctor`` (run from inside
a pod, without the rest of the CLI) builds its own small one."""

from __future__ import annotations

import argparse
import sys

from shim.errors import ShimError


class Parser(argparse.ArgumentParser):
    """argparse with the vault CLI's exit codes: a usage error exits 1 (argparse's own default
    is 2, which the vault CLI keeps for an error from the server)."""

    def error(self, message):
        self.print_usage(sys.stderr)
        self.exit(1, f"{self.prog}: error: {message}\n")


def exit_status(exc: ShimError) -> int:
    """1 for a local or usage error, 2 for an error of the server (``VaultOpsError``), as the
    vault CLI exits."""
    return getattr(exc, "exit_status", 1)
