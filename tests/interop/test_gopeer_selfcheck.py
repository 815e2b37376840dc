"""Self-check of the real go-plugin interop peer: Go host -> Go plugin, directly.

Both sides are HashiCorp go-plugin 1.0.1 (Debian). If these fail, interop tests
that put the shim in between cannot be trusted either.
"""

from __future__ import annotations

import shutil

import pytest

from tests.support import gopeer

pytestmark = pytest.mark.interop

V1, V2 = "1.0.0", "2.0.0"


@pytest.fixture(scope="session")
def gopeer_cache(tmp_path_factory):
    try:
        gopeer.require_go()
    except RuntimeError as e:  # never skip silently: the peer is part of CI
        pytest.fail(str(e), pytrace=False)
    return tmp_path_factory.getbasetemp() / "gopeer-cache"


@pytest.fixture(scope="session")
def bin_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("gopeer-bin")


@pytest.fixture(scope="session")
def host(bin_dir, gopeer_cache):
    return gopeer.build_host(bin_dir, cache_dir=gopeer_cache)


@pytest.fixture(scope="session")
def plugin_v1(bin_dir, gopeer_cache):
    return gopeer.build_plugin(bin_dir, V1, 2, cache_dir=gopeer_cache)


@pytest.fixture(scope="session")
def plugin_v2(bin_dir, gopeer_cache):
    return gopeer.build_plugin(bin_dir, V2, 3, cache_dir=gopeer_cache)


@pytest.fixture
def run(host, tmp_path):
    """run_host with the plugin's unix socket dir (TMPDIR) private to the test."""
    sockdir = tmp_path / "sock"
    sockdir.mkdir()

    def _run(plugin, *args, **kw):
        kw.setdefault("host_env", {"TMPDIR": str(sockdir)})
        kw.setdefault("timeout", 60)
        r = gopeer.run_host(host, plugin, *args, **kw)
        assert r.leftover_pids == [], r.describe()
        return r

    _run.sockdir = sockdir
    return _run


def test_require_go_names_missing_packages(tmp_path):
    with pytest.raises(RuntimeError) as ei:
        gopeer.require_go(go="no-such-go-binary-xyz", gocode_src=tmp_path)
    msg = str(ei.value)
    assert "golang-go" in msg
    assert "golang-github-hashicorp-go-plugin-dev" in msg
    assert "golang-google-grpc-dev" in msg
    assert "apt-get install" in msg


def test_double(run, plugin_v1):
    r = run(plugin_v1, "double", 21, -5)
    assert r.ok, r.describe()
    assert r.returncode == 0
    assert r.results == [42, -10]
    assert isinstance(r.pid, int) and r.pid > 0
    assert r.pids == [r.pid]
    assert r.plugin_exited
    assert 0 < r.timings["handshake_ms"] <= r.timings["first_call_ms"] < 30000
    assert r.timings["checksum_ms"] > 0  # the host hashed the file itself


def test_versions_answer_differently(run, plugin_v1, plugin_v2):
    r1 = run(plugin_v1, "ping")
    r2 = run(plugin_v2, "ping")
    assert r1.results == ["version=1.0.0"], r1.describe()
    assert r2.results == ["version=2.0.0"], r2.describe()
    r3 = run(plugin_v2, "double", 21)
    assert r3.results == [63], r3.describe()
    assert gopeer.sha256_file(plugin_v1) != gopeer.sha256_file(plugin_v2)


def test_stream(run, plugin_v1):
    r = run(plugin_v1, "stream")
    assert r.ok and r.results == [2, 4, 6], r.describe()
    r = run(plugin_v1, "stream", 7, 8, 9, 10, 0)
    assert r.ok and r.results == [14, 16, 18, 20, 0], r.describe()


def test_plugin_logs_start_line_and_relogged_levels(run, plugin_v1):
    r = run(plugin_v1, "printkv", "log.error", "gopeer-selfcheck-boom")
    assert r.ok, r.describe()
    start = r.logs(level="info", message="gopeer plugin starting")
    assert start and start[0]["version"] == V1
    errs = r.logs(level="error", message="gopeer-selfcheck-boom")
    assert len(errs) == 1, r.describe()
    # re-logged by go-plugin's stderr reader: it adds the plugin's own timestamp
    assert "timestamp" in errs[0]
    # nothing else was logged at error level
    assert len(r.logs(level="error")) == 1


def test_explicit_checksum_ok(run, plugin_v1):
    r = run(plugin_v1, "ping", sha256=gopeer.sha256_file(plugin_v1))
    assert r.ok, r.describe()
    assert "checksum_ms" not in r.timings


def test_wrong_checksum(run, plugin_v1):
    r = run(plugin_v1, "ping", sha256="00" * 32)
    assert not r.ok
    assert r.returncode == 1
    assert r.error == "checksums did not match"
    assert r.pid is None and r.pids == []  # never executed


def test_wrong_cookie_is_refused_by_plugin(run, plugin_v1):
    r = run(plugin_v1, "ping", cookie_value="not-the-cookie")
    assert not r.ok
    # go-plugin 1.0.1 host: stdout EOF before a handshake line reads as an empty line
    assert "Unrecognized remote plugin message" in r.error or "exited before" in r.error
    assert r.logs(message="This binary is a plugin"), r.describe()


def test_plugin_exit_before_handshake(run, plugin_v1):
    r = run(plugin_v1, "ping", env={"GOPEER_PLUGIN_EXIT_EARLY": "3"})
    assert not r.ok
    # go-plugin 1.0.1 races stdout EOF against process exit here; either is reported
    assert "Unrecognized remote plugin message" in r.error or "exited before" in r.error
    assert r.logs(level="error", message="exiting early on request")
    assert any(ln.get("error") == "exit status 3"
               for ln in r.logs(message="plugin process exited")), r.describe()


@pytest.mark.parametrize("mode", ["graceful", "hard"])
def test_kill_leaves_no_marked_process(host, plugin_v1, tmp_path, mode):
    marker = gopeer.new_marker()
    sockdir = tmp_path / "sock"
    sockdir.mkdir()
    try:
        with gopeer.start_host(host, plugin_v1, "ping", env=[marker], kill=mode,
                               host_env={"TMPDIR": str(sockdir)}) as h:
            pid = h.wait_holding()
            # the marker really reaches the plugin (and only the plugin)
            assert gopeer.find_marked_processes(marker) == [pid]
            assert len(list(sockdir.iterdir())) == 1  # its unix socket
            r = h.release()
        assert r.ok, r.describe()
        assert r.pid == pid
        assert r.plugin_exited
        assert r.leftover_pids == []
        assert gopeer.find_marked_processes(marker) == []
        exited = r.logs(message="plugin process exited")
        assert exited and exited[0]["pid"] == pid
        if mode == "hard":
            assert exited[0].get("error") == "signal: killed"
            # go-plugin 1.0.1 does not clean up after a SIGKILLed plugin
            assert [p.name.startswith("plugin") for p in sockdir.iterdir()] == [True]
        else:
            assert "error" not in exited[0]
            assert not r.logs(message="plugin failed to exit gracefully")
            assert list(sockdir.iterdir()) == []
    finally:
        gopeer.kill_marked_processes(marker)


def test_bench(run, plugin_v1):
    r = run(plugin_v1, "bench", iterations=3)
    assert r.ok, r.describe()
    assert len(r.results) == 3
    pids = [it["pid"] for it in r.results]
    assert len(set(pids)) == 3 and r.pids == pids and r.pid == pids[-1]
    for it in r.results:
        assert 0 < it["handshake_ms"] <= it["first_call_ms"] < 30000
        assert it["kill_ms"] >= 0
    for key in ("handshake_ms", "first_call_ms", "kill_ms"):
        s = r.timings[key]
        assert s["min"] <= s["p50"] <= s["max"]
    assert list(run.sockdir.iterdir()) == []


def test_unary_bench(run, plugin_v1):
    r = run(plugin_v1, "unary-bench", iterations=300, concurrency=2, method="double")
    assert r.ok, r.describe()
    (s,) = r.results
    assert s["calls"] == 300 and s["concurrency"] == 2 and s["method"] == "double"
    assert 0 < s["p50_us"] <= s["p99_us"] <= s["max_us"]
    assert s["calls_per_s"] > 0


def test_broker_host_dials_plugin(run, plugin_v1):
    """Plugin AcceptAndServe()s a broker id, host Dial()s it: works under AutoMTLS.

    Note: a go-plugin 1.0.1 plugin exits on Shutdown without closing its brokered
    listeners, so their unix socket files stay behind in TMPDIR (hence the
    private TMPDIR of the `run` fixture). Do not blame the shim for those.
    """
    r = run(plugin_v1, "broker", "host-dials")
    assert r.ok, r.describe()
    (b,) = r.results
    assert b["ok"] and b["msg"] == "brokered version=1.0.0" and b["broker_id"] > 0


def test_broker_plugin_dials_host_hits_101_automtls_bug(run, plugin_v1):
    """Host serves a broker id, plugin dials it (what Vault's Setup does).

    With go-plugin 1.0.1 on the plugin side this fails under AutoMTLS: the plugin
    dials with its server tls.Config, which has no ServerName, so gRPC verifies
    the host's "localhost" cert against the dial target "unused". Fixed upstream
    in go-plugin 1.4.4. This asserts the failure honestly; if it starts passing,
    the Debian package changed and the proxy tests' expectations need a look.
    """
    r = run(plugin_v1, "broker", "plugin-dials")
    assert not r.ok
    (b,) = r.results
    assert not b["ok"]
    assert gopeer.BROKER_BUG_101 in b["error"], r.describe()
    assert gopeer.BROKER_BUG_101 in r.error


def test_broker_both_directions_without_automtls(run, plugin_v1):
    r = run(plugin_v1, "broker", "plugin-dials", "host-dials", automtls=False)
    assert r.ok, r.describe()
    pd, hd = r.results
    assert pd["ok"] and pd["msg"].startswith("relayed host nonce=") and pd["msg"].endswith(
        " via version=1.0.0")
    assert hd["ok"] and hd["msg"] == "brokered version=1.0.0"


def test_padded_plugin_still_runs(run, plugin_v1, tmp_path):
    padded = tmp_path / "plugin-padded"
    shutil.copy2(plugin_v1, padded)
    size = 50 * 1024 * 1024
    gopeer.pad(padded, size)
    assert padded.stat().st_size == size
    r = run(padded, "ping")
    assert r.ok and r.results == ["version=1.0.0"], r.describe()
    # the padding is part of what SecureConfig hashes
    r = run(padded, "ping", sha256=gopeer.sha256_file(plugin_v1))
    assert r.error == "checksums did not match"


def test_build_cache_reuses_binary(bin_dir, gopeer_cache, plugin_v1, tmp_path):
    again = gopeer.build_plugin(tmp_path, V1, 2, cache_dir=gopeer_cache)
    assert again != plugin_v1
    assert gopeer.sha256_file(again) == gopeer.sha256_file(plugin_v1)
    entries = [p for p in gopeer_cache.iterdir() if p.name.startswith("plugin-")]
    assert len(entries) == 2  # v1 and v2, nothing rebuilt
