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

    def built(make):
        try:
            return make()
        except gopeer.gobuild.GoUnavailable as e:  # the current release needs the machine's Go
            pytest.fail(str(e), pytrace=False)

    class Build:  # release: "1.0.1" (Debian, GOPATH mode) or "current" (tests/gopeer/go.mod)
        host = staticmethod(lambda release="1.0.1": built(
            lambda: gopeer.build_host(out, cache_dir=cache, release=release)))
        plugin = staticmethod(lambda version, mult, release="1.0.1": built(
            lambda: gopeer.build_plugin(out, version, mult, cache_dir=cache, release=release)))

    return Build


@pytest.fixture(scope="session")
def go_host(go_build):
    return go_build.host()


@pytest.fixture(scope="module")
def bao_dev(tmp_path_factory):
    """A real OpenBao dev server (in memory, root token "root") shared by one test module;
    fails (never skips) when `bao` is missing. ``bao_dev.plugin_dir`` is its plugin_directory."""
    from shim.demo import bao
    from tests.support import openbao

    openbao.require_bao()
    with openbao.started(bao.DevServer(tmp_path_factory.mktemp("bao-dev"))) as server:
        yield server


@pytest.fixture(scope="module")
def bao_raft(tmp_path_factory):
    """A real persistent OpenBao node (Raft storage, static auto-unseal) for one test module;
    ``bao_raft.restart()`` keeps its data."""
    from shim.demo import bao
    from tests.support import openbao

    openbao.require_bao()
    with openbao.started(bao.RaftNode(tmp_path_factory.mktemp("bao-raft"))) as server:
        yield server
