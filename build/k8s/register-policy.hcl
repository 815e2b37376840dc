# Vault policy for the one-time registration (build/k8s/register-job.yaml or an operator's
# `vault-plugin-shim register`). Grant it to a short-lived token, run the Job, revoke the token.
#   vault policy write vault-plugin-shim-register build/k8s/register-policy.hcl
#   vault token create -policy=vault-plugin-shim-register -ttl=15m -use-limit=10 -field=token
# Checked with: tests/ops/test_ops_recipes.py (it grants every path `register` calls), and loaded
# into a real OpenBao 2.7.2 whose token then registers, pins and mounts, a versioned and an
# unversioned plugin, and whose `token capabilities` on other mounts are `deny`
# (tests/openbao/test_openbao_ops_register.py::test_the_recipes_policy_*).
# HashiCorp Vault itself cannot be installed here: on Vault, --pin uses sys/plugins/pins.

# Register the launcher (the catalog requires sudo). read: compare with the entry already
# there (another launcher's entry is not replaced without --force); delete: remove the
# probe entry register writes first to learn the plugin's version.
path "sys/plugins/catalog/secret/myplugin" {
  capabilities = ["create", "read", "update", "delete", "sudo"]
}

# Read back which version Vault recorded for the launcher.
path "sys/plugins/catalog" {
  capabilities = ["read"]
}

# --pin (Vault 1.16+).
path "sys/plugins/pins/secret/myplugin" {
  capabilities = ["create", "update", "sudo"]
}

# --pin on OpenBao (no pins there): move the plugin's mount with secrets tune. Only that
# mount: a `+` here would let the token tune every mount on the server. If the plugin is
# mounted at more paths, add one block per path (register names a path it could not tune).
path "sys/mounts/myplugin/tune" {
  capabilities = ["update"]
}

# A plugin that reports no version: register enables it once here to learn whether the
# server can run the launcher at all, then disables it again (auth plugins: sys/auth/...).
path "sys/mounts/vault-plugin-shim-probe-myplugin" {
  capabilities = ["create", "update", "delete", "sudo"]
}

# --mount: see what is enabled, enable the plugin if it is missing.
path "sys/mounts" {
  capabilities = ["read"]
}

path "sys/mounts/myplugin" {
  capabilities = ["create", "update", "sudo"]
}
