"""Under a real OpenBao 2.7.2: the loader's and OpenSSL's variables in the catalog entry's
environment (which OpenBao hands the plugin, like the pod's own environment) run no code in
the launcher, the signed version still runs and answers, and the plugin still receives them.

The hostile library (tests/native/test_stub.py's `evil`) appends to a marker file from its
constructor, as an audit module and as an OpenSSL provider; a launch that ran it leaves the
marker. One test per variable, in exec and in proxy mode.
"""

from __future__ import annotations

import json
import shutil

import pytest

from tests.support import baoplugins as bp
from tests.support import openbao
from tests.native.test_stub import evil  # noqa: F401  (the hostile-library fixture)

VARIABLES = ["LD_PRELOAD", "LD_AUDIT", "LD_LIBRARY_PATH", "OPENSSL_CONF"]


@pytest.fixture(scope="module")
def binary(tmp_path_factory):
    return openbao.build_plugin("secret", "1.0.0", tmp_path_factory.mktemp("bin"), bp.cache_dir(tmp_path_factory))


@pytest.mark.parametrize("mode", ["exec", "proxy"])
@pytest.mark.parametrize("variable", VARIABLES)
def test_catalog_env_cannot_run_code_in_the_launcher(variable, mode, evil, bao_dev, binary, tmp_path):  # noqa: F811
    name = f"env-{variable.lower().replace('_', '-')}-{mode}"
    rel = openbao.Release(bao_dev, tmp_path / "release", name, extra_build=("--mode", mode))
    dest = rel.versions / "secret-1.0.0"
    shutil.copyfile(binary, dest)
    dest.chmod(0o755)
    rel.add(dest, "1.0.0")
    marker = evil["marker"]
    marker.unlink(missing_ok=True)
    done = rel.register("--mount", name, "--env", f"{variable}={evil[variable]}")
    assert done.returncode == 0, done.stdout + done.stderr
    try:
        answer = json.loads(bao_dev.bao("read", "-format=json", f"{name}/version").stdout)["data"]
        assert answer["version"] == "v1.0.0"
        log = bao_dev.log_path.read_text()
        assert f"vault-plugin-shim: starting secret plugin {name} 1.0.0" in log
        assert not marker.exists(), f"{variable} from the catalog env ran code in a {mode}-mode launch"
        with open(f"/proc/{answer['pid']}/environ", "rb") as fh:  # the plugin that answered
            plugin_env = fh.read().split(b"\0")
        assert f"{variable}={evil[variable]}".encode() in plugin_env  # handed on, as Vault sent it
    finally:
        bao_dev.bao("secrets", "disable", name)
