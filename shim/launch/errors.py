"""Why verified bytes could not be started."""

from __future__ import annotations

from shim.errors import ShimError


class LaunchError(ShimError):
    """The verified bytes could not be executed."""
