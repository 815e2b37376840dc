"""What Vault and OpenBao tell a plugin about its kind: the plugin types and the magic
cookie each type's host sets (the same in Vault's SDK and OpenBao's). Plain constants, so
the exec launch path can check the cookie without importing the handshake machinery."""

from __future__ import annotations

BACKEND_COOKIE = ("VAULT_BACKEND_PLUGIN", "6669da05-b1c8-4f49-97d9-c8e5bed98e20")
DATABASE_COOKIE = ("VAULT_DATABASE_PLUGIN", "926a0820-aea2-be28-51d6-83cdf00e8edb")

PLUGIN_TYPES = ("secret", "auth", "database")
COOKIES = {"secret": BACKEND_COOKIE, "auth": BACKEND_COOKIE, "database": DATABASE_COOKIE}
