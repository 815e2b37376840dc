# Vault policy for the one-time registration (build/k8s/register-job.yaml or an operator's
# `vault-plugin-shim register`). Grant it to a short-lived token, run the Job, revoke the token.
#   vault policy write vault-plugin-shim-register build/k8s/register-policy.hcl
#   vault token create -policy=vault-plugin-shim-register -ttl=15m -use-limit=10 -field=token
# Checked with: tests/test_ops_recipes.py (it grants every path `register` calls); not loaded
# into a Vault server here (none on the machine that wrote it).

# Register the launcher (the catalog requires sudo).
path "sys/plugins/catalog/secret/myplugin" {
  capabilities = ["create", "update", "sudo"]
}

# Read back which version Vault recorded for the launcher.
path "sys/plugins/catalog" {
  capabilities = ["read"]
}

# --pin (Vault 1.16+).
path "sys/plugins/pins/secret/myplugin" {
  capabilities = ["create", "update", "sudo"]
}

# --mount: see what is enabled, enable the plugin if it is missing.
path "sys/mounts" {
  capabilities = ["read"]
}

path "sys/mounts/myplugin" {
  capabilities = ["create", "update", "sudo"]
}
