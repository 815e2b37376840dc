import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import pytest


@pytest.fixture(scope="session")
def go_build(tmp_path_factory):
    """Builder for the real go-plugin peer; fails (never skips) when Go or go-plugin is missing."""
    from tests.support import gopeer

    try:
        gopeer.require_go()
    except RuntimeError as e:
        pytest.fail(str(e), pytrace=False)
    cache = tmp_path_factory.getbasetemp() / "gopeer-cache"
    out = tmp_path_factory.mktemp("go-bin")

    class Build:
        host = staticmethod(lambda: gopeer.build_host(out, cache_dir=cache))
        plugin = staticmethod(lambda version, mult: gopeer.build_plugin(out, version, mult, cache_dir=cache))

    return Build


@pytest.fixture(scope="session")
def go_host(go_build):
    return go_build.host()
