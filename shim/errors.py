"""The base of vault-plugin-shim's own errors.

Each room has its small hierarchy on this base: ``shim.trust.errors`` (why a key,
signature, manifest, policy or candidate is refused), ``shim.launch.errors`` (why verified
bytes could not run), ``shim.ops.errors`` (operator tools and Vault's API). The go-plugin library
(``shim.goplugin.errors``) stands alone and shares only the shape, :class:`Diagnostic`.
A caller (the launcher, ``verify``, ``doctor``, the demo) can act on the type, and an
operator reading Vault's log learns which file, what is wrong, why, and what to do.
"""

from __future__ import annotations

from shim.goplugin.errors import Diagnostic


class ShimError(Diagnostic):
    """Base class of vault-plugin-shim's own errors. ``reason`` says what happened, ``path``
    which file, ``cause`` why (kept from ``raise ... from``), ``fix`` what to do next."""


class UsageError(ShimError):
    """A command line that asks for something impossible (an option's value, a combination)."""
