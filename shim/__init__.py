"""vault-plugin-shim: run signed Vault/OpenBao plugin versions behind one stable launcher.

Kept empty on purpose: the exec-mode launch path imports ``shim`` on every plugin
start, so nothing heavy may happen here.
"""

__version__ = "0.1.0"
