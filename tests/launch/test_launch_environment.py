"""What Vault's environment can and cannot do to a real launch (HashiCorp go-plugin 1.0.1 as
the host, the Go peer as the plugin, a launcher built as `launcher build` builds it).

* The loader's and OpenSSL's variables (LD_PRELOAD, LD_AUDIT, LD_LIBRARY_PATH, OPENSSL_CONF)
  run no code in the launcher: the static stub ignores them and starts the interpreter with
  a fixed environment. The signed version still runs and answers.
* The plugin gets exactly the environment the host gave the launcher, byte for byte and in
  order: in exec mode (Python or native launcher) all of it; in proxy mode all of it but the documented handful the
  proxy owns (the child talks plaintext to the launcher on a private socket directory).
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import pytest

from tests.support import gopeer
from tests.support import releases as R
from tests.native.test_stub import evil  # noqa: F401  (the hostile-library fixture)

MODES = ["exec", "proxy", "native", "native-proxy"]   # native: the static exec-mode launcher, no interpreter;
# native-proxy: the native launcher decides, then starts the proxy with its verdict
PROXY_OWNED = {b"PLUGIN_CLIENT_CERT", b"PLUGIN_UNIX_SOCKET_DIR", b"PLUGIN_UNIX_SOCKET_GROUP",
               b"PLUGIN_MULTIPLEX_GRPC", b"TMPDIR"}
ODD = [b"SHIM_TEST_ODD=caf\xc3\xa9 \xff\xfe tab\tend", b"SHIM_TEST_EMPTY=", b"SHIM_TEST_EQ==a=b="]


@pytest.fixture(scope="module")
def plugin(go_build):
    return go_build.plugin("1.0.0", 2)


class Node:
    def __init__(self, tmp: Path, plugin: Path, mode: str):
        self.mode = mode
        versions = tmp / "versions"
        versions.mkdir(mode=0o755)
        (tmp / "vault-plugins").mkdir()
        keys = R.new_keys()
        if mode == "native":
            from shim.launch.build import write_launcher

            self.launcher = tmp / "vault-plugins" / "myplugin-shim"
            write_launcher(R.policy(versions, keys), None, str(self.launcher), native=True)
        elif mode == "native-proxy":
            self.launcher = R.launcher(tmp / "vault-plugins", R.policy(versions, keys).replace(mode="proxy"),
                                       name="myplugin-shim", native=True)
        else:
            self.launcher = R.launcher(tmp / "vault-plugins", R.policy(versions, keys).replace(mode=mode),
                                       name="myplugin-shim")
        dst = versions / "myplugin-1.0.0"
        shutil.copy(plugin, dst)
        dst.chmod(0o755)
        R.release(keys, dst, version="1.0.0")
        self.sock = Path(tempfile.mkdtemp(prefix="le", dir="/tmp"))

    def close(self):
        shutil.rmtree(self.sock, ignore_errors=True)


@pytest.fixture(params=MODES)
def node(request, plugin, tmp_path):
    n = Node(tmp_path, plugin, request.param)
    yield n
    n.close()


def environ_of(pid: int) -> list[bytes]:
    with open(f"/proc/{pid}/environ", "rb") as fh:
        return [e for e in fh.read().split(b"\0") if e]


def children_of(pid: int) -> list[int]:
    out = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat", "rb") as fh:
                    ppid = int(fh.read().rsplit(b")", 1)[1].split()[1])
            except (OSError, ValueError, IndexError):
                continue
            if ppid == pid:
                out.append(int(entry))
    return out


def held_environments(host, path: Path, mode: str, env: list[str], tmpdir: Path) -> list[bytes]:
    """Start `path` under the host, hold it, and read the plugin's environment: the
    launcher's own process in exec mode (it became the plugin), its child in proxy mode."""
    with gopeer.start_host(host, path, "ping", env=env, sha256=gopeer.sha256_file(path),
                           host_env={"TMPDIR": str(tmpdir)}) as h:
        pid = h.wait_holding()
        if mode in ("proxy", "native-proxy"):
            kids = [k for k in children_of(pid) if b"GOPEER_ENV_PROBE=1" in environ_of(k)]
            assert len(kids) == 1, kids
            pid = kids[0]
        seen = environ_of(pid)
        res = h.release()
    assert res.ok, res.describe()
    return seen


def test_the_plugin_gets_the_hosts_environment_byte_for_byte(node, go_host, plugin, tmp_path):
    env = ["GOPEER_ENV_PROBE=1"] + [os.fsdecode(e) for e in ODD]
    # What the host gives a plugin it runs directly: the reference.
    direct_dir = tmp_path / "direct"
    direct_dir.mkdir()
    direct = direct_dir / "myplugin"
    shutil.copy(plugin, direct)
    direct.chmod(0o755)
    want = held_environments(go_host, direct, "exec", env, node.sock)
    got = held_environments(go_host, node.launcher, node.mode, env, node.sock)
    for e in ODD:
        assert e in want
    def key(entry):
        return entry.split(b"=", 1)[0]
    # The client certificate is new on every launch; everything else is the host's doing.
    want_ = [e for e in want if key(e) != b"PLUGIN_CLIENT_CERT"]
    if node.mode in ("exec", "native"):
        got_ = [e for e in got if key(e) != b"PLUGIN_CLIENT_CERT"]
        assert got_ == want_
        assert sum(key(e) == b"PLUGIN_CLIENT_CERT" for e in got) == 1
    else:
        assert [e for e in got if key(e) not in PROXY_OWNED] == [e for e in want_ if key(e) not in PROXY_OWNED]
        assert not any(key(e) == b"PLUGIN_CLIENT_CERT" for e in got)
    assert b"LC_CTYPE=C.UTF-8" not in got or b"LC_CTYPE=C.UTF-8" in want


@pytest.mark.parametrize("variable", ["LD_PRELOAD", "LD_AUDIT", "LD_LIBRARY_PATH", "OPENSSL_CONF"])
def test_loader_and_openssl_variables_run_nothing_in_a_real_launch(variable, evil, node, go_host):  # noqa: F811
    marker = evil["marker"]
    marker.unlink(missing_ok=True)
    res = gopeer.run_host(go_host, node.launcher, "ping", env=[f"{variable}={evil[variable]}"],
                          sha256=gopeer.sha256_file(node.launcher), host_env={"TMPDIR": str(node.sock)})
    assert res.ok and res.results == ["version=1.0.0"], res.describe()
    assert res.logs(level="info", message="vault-plugin-shim: starting secret plugin myplugin 1.0.0"), res.describe()
    assert not marker.exists(), f"{variable} ran code during a {node.mode}-mode launch"
