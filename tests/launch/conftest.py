"""The launch tests' shared fixture: a plugin directory with one signed release."""

import pytest

from tests.support import releases as R


@pytest.fixture
def setup(tmp_path):
    d = tmp_path / "plugins"
    d.mkdir(mode=0o755)
    keys = R.new_keys()
    pol = R.policy(d, keys)
    path = R.script_plugin(d / "myplugin-1.0.0", "good")
    R.release(keys, path, version="1.0.0")
    return tmp_path, d, keys, pol, path
