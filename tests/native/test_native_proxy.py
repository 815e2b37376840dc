"""One decision at launch, in proxy mode too (issue 20, item 2).

A native proxy-mode launcher (shim/launch/stubs/native/nv_proxy.c) selects, verifies and seals
the plugin exactly as the native exec-mode launcher does, then starts the Python proxy with the
sealed descriptor and the verdict; the Python side never selects. Hot swap's rescans run the
launcher's select-only mode on a sealed copy of the launcher's own bytes, which hands a sealed,
verified copy back over a socket pair.

Real runs throughout: launchers built with ``write_launcher(..., native=True)`` (the committed
native launcher), HashiCorp's go-plugin host as Vault, the Go peer as the plugin. The proxy and
hot swap test files run a subset of their own tests against this launcher too
(``test_proxy_interop``, ``test_proxy_lifecycle``, ``test_launch_environment``,
``test_swap_openbao``, ``test_launcher_contents``).
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path

import pytest

from shim.launch import build, stubs
from shim.launch.errors import NativeRefusal
from shim.launch.swapstatus import find_status
from shim.launch.verdict import NativeSelector
from tests.support import gopeer
from tests.support import releases as R
from tests.support.wait import wait_until

FIXED_ENV = [b"LC_ALL=C.UTF-8", b"OPENSSL_CONF=/dev/null"]
SEALS = fcntl.F_SEAL_SEAL | fcntl.F_SEAL_SHRINK | fcntl.F_SEAL_GROW | fcntl.F_SEAL_WRITE


class Dir:
    """A plugins directory with signed script plugins and the launchers to compare."""

    def __init__(self, tmp: Path, *, hot_swap: bool = True):
        self.tmp = tmp
        self.versions = tmp / "versions"
        self.versions.mkdir(mode=0o755)
        (tmp / "vault-plugins").mkdir()
        self.keys = R.new_keys()
        self.policy = R.policy(self.versions, self.keys)
        self.proxy = R.launcher(tmp / "vault-plugins", self.policy.replace(mode="proxy"), name="proxy-shim",
                                native=True, hot_swap=hot_swap)
        self.exec = R.launcher(tmp / "vault-plugins", self.policy, name="exec-shim", native=True)

    def ship(self, version: str, label: str | None = None, **kw) -> Path:
        binary = R.script_plugin(self.versions / f"myplugin-{version}", label or version)
        R.release(self.keys, binary, version=version, **kw)
        return binary

    def selector(self, launcher: Path | None = None) -> tuple[NativeSelector, int]:
        fd = os.open(launcher or self.proxy, os.O_RDONLY | os.O_CLOEXEC)
        return NativeSelector(self.policy.replace(mode="proxy"), fd, str(launcher or self.proxy),
                              R.cookie_env(TMPDIR=str(self.tmp))), fd


def shim_lines(stderr: bytes | str) -> list[dict]:
    """The launcher's own hclog lines, without their timestamps."""
    if isinstance(stderr, str):
        stderr = stderr.encode()
    out = []
    for line in R.hclog_lines(stderr):
        if str(line.get("@message", "")).startswith("vault-plugin-shim"):
            line.pop("@timestamp", None)
            out.append(line)
    return out


# --- (a) the file ------------------------------------------------------------------------------

@pytest.mark.parametrize("hot_swap", [False, True])
def test_build_and_inspect_a_native_proxy_launcher(tmp_path, hot_swap):
    keys = R.new_keys()
    pol = R.policy(tmp_path, keys).replace(mode="proxy")
    sha = build.write_launcher(pol, R.PYTHON, str(tmp_path / "a"), hot_swap=hot_swap, native=True)
    assert build.write_launcher(pol, R.PYTHON, str(tmp_path / "b"), hot_swap=hot_swap, native=True) == sha
    data = (tmp_path / "a").read_bytes()
    assert data.startswith(stubs.stub_bytes(native=True)) and data.endswith(
        stubs.NATIVE_TRAILER.pack(stubs.NATIVE_PROXY_TRAILER_MAGIC, *stubs.NATIVE_TRAILER.unpack(data[-24:])[1:]))
    info = build.inspect(str(tmp_path / "a"))
    assert (info.native, info.mode, info.interpreter, info.flags, info.hot_swap) == (True, "proxy", R.PYTHON,
                                                                                     ["-I"], hot_swap)
    assert info.policy == pol and info.files == len(build.launch_modules("proxy", hot_swap)) + 1
    prefix, code, swap = stubs.unpack_native_python(data)
    assert (prefix, swap) == ([R.PYTHON, "-I"], hot_swap)
    assert code == build.code_archive(pol, "proxy", R.PYTHON, hot_swap, native=True)
    assert stubs.unpack_native(data) == build.native_policy(pol)
    # an exec-mode native launcher keeps its layout (trailer v1) and has no Python part
    build.write_launcher(pol.replace(mode="exec"), None, str(tmp_path / "x"), native=True)
    plain = (tmp_path / "x").read_bytes()
    assert plain == stubs.pack_native(stubs.stub_bytes(native=True), build.native_policy(pol.replace(mode="exec")))
    assert stubs.unpack_native_python(plain) is None
    # and the Python launcher's code is unchanged: no NATIVE line
    import io
    import zipfile

    main = zipfile.ZipFile(io.BytesIO(build.code_archive(pol, "proxy", None, hot_swap))).read("__main__.py")
    assert b"NATIVE" not in main and b"native" not in main


def test_build_refuses_what_a_native_proxy_launcher_cannot_carry(tmp_path):
    from shim.trust.errors import PolicyError

    pol = R.policy(tmp_path, R.new_keys())
    with pytest.raises(PolicyError, match="hot swap needs proxy mode"):
        build.write_launcher(pol, R.PYTHON, str(tmp_path / "l"), hot_swap=True, native=True)
    with pytest.raises(PolicyError, match="absolute path"):
        build.write_launcher(pol.replace(mode="proxy"), None, str(tmp_path / "l"), native=True)
    with pytest.raises(PolicyError, match="mode its policy names"):
        build.write_launcher(pol, R.PYTHON, str(tmp_path / "l"), "proxy", native=True)
    with pytest.raises(PolicyError, match="embedded policy"):
        build.write_launcher(None, R.PYTHON, str(tmp_path / "l"), "proxy", native=True)


def _damage(data: bytes, case: str, pol) -> bytes:
    end = len(data) - 24 - 40
    ext = list(stubs.NATIVE_PROXY_EXT.unpack_from(data, end))
    if case == "flags":
        ext[4] = 2
    elif case == "meta-length":
        ext[1] += 1
    elif case == "code-offset":
        ext[2] -= 1
    elif case == "exec-policy":   # the Python part with a policy that says mode=exec
        prefix, code, swap = stubs.unpack_native_python(data)
        return stubs.pack_native(stubs.stub_bytes(native=True), build.native_policy(pol.replace(mode="exec")),
                                 prefix, code, swap)
    elif case == "proxy-policy-alone":   # mode=proxy with no Python part
        return stubs.pack_native(stubs.stub_bytes(native=True), build.native_policy(pol))
    elif case == "not-a-zip":
        prefix, code, swap = stubs.unpack_native_python(data)
        junk = b"import os; os.system('id')\n".ljust(len(code), b"#")
        return stubs.pack_native(stubs.stub_bytes(native=True), build.native_policy(pol), prefix, junk, swap)
    return data[:end] + stubs.NATIVE_PROXY_EXT.pack(*ext) + data[end + 40:]


@pytest.mark.parametrize("case, reason", [
    ("flags", "unknown flags"),
    ("meta-length", "do not follow each other"),
    ("code-offset", "do not follow each other"),
    ("exec-policy", "its policy says mode=exec"),
    ("proxy-policy-alone", "carries no Python part"),
    ("not-a-zip", "not a zip archive"),
])
def test_a_damaged_native_proxy_launcher_fails_with_one_hclog_line(tmp_path, case, reason):
    d = Dir(tmp_path)
    d.ship("1.0.0")
    bad = tmp_path / "bad"
    bad.write_bytes(_damage(d.proxy.read_bytes(), case, d.policy.replace(mode="proxy")))
    bad.chmod(0o755)
    if case in ("flags", "meta-length", "code-offset", "not-a-zip"):   # the Python reader agrees
        with pytest.raises(stubs.StubError):
            stubs.unpack_native_python(bad.read_bytes())
    proc = R.run(bad)
    assert proc.returncode == 1 and proc.stdout == b""
    lines = R.hclog_lines(proc.stderr)
    assert len(lines) == 1 and len(proc.stderr.splitlines()) == 1, proc.stderr
    assert lines[0]["@level"] == "error" and reason in lines[0]["reason"], lines


# --- (b) the launch --------------------------------------------------------------------------

@pytest.fixture(scope="module")
def peer(go_build, go_host):
    return {"host": go_host, "v1": go_build.plugin("1.0.0", 2), "v2": go_build.plugin("2.0.0", 3)}


class Node:
    def __init__(self, peer, tmp: Path, *, hot_swap: bool = False, python_policy=None):
        self.peer = peer
        self.versions = tmp / "versions"
        self.versions.mkdir(mode=0o755)
        (tmp / "vault-plugins").mkdir()
        self.sock = Path(tempfile.mkdtemp(prefix="np", dir="/tmp"))
        self.keys = R.new_keys()
        self.policy = R.policy(self.versions, self.keys).replace(mode="proxy")
        self.launcher = tmp / "vault-plugins" / "myplugin-shim"
        if python_policy is None:
            build.write_launcher(self.policy, R.PYTHON, str(self.launcher), hot_swap=hot_swap, native=True)
        else:  # the native part decides with self.policy; the Python part carries another one
            self.launcher.write_bytes(stubs.pack_native(
                stubs.stub_bytes(native=True), build.native_policy(self.policy), [R.PYTHON, "-I"],
                build.code_archive(python_policy, "proxy", R.PYTHON, hot_swap, native=True), hot_swap=hot_swap))
            self.launcher.chmod(0o755)
        self.sha256 = gopeer.sha256_file(self.launcher)

    def ship(self, version: str, binary: Path | None = None, tamper: bool = False) -> Path:
        dst = self.versions / f"myplugin-{version}"
        shutil.copy(binary or self.peer["v1"], dst)
        dst.chmod(0o755)
        R.release(self.keys, dst, version=version)
        if tamper:
            with open(dst, "ab") as fh:
                fh.write(b"x")
        return dst

    def host(self, *action, **kw):
        kw.setdefault("host_env", {"TMPDIR": str(self.sock)})
        res = gopeer.run_host(self.peer["host"], self.launcher, *action, sha256=self.sha256, timeout=60, **kw)
        assert res.leftover_pids == [], res.describe()
        return res

    def hold(self, *action, **kw):
        return gopeer.start_host(self.peer["host"], self.launcher, *(action or ("ping",)), sha256=self.sha256,
                                 host_env={"TMPDIR": str(self.sock)}, **kw)

    def leftovers(self) -> list[str]:
        return sorted(str(p.relative_to(self.sock)) for p in self.sock.rglob("*"))

    def close(self):
        shutil.rmtree(self.sock, ignore_errors=True)


@pytest.fixture
def node(peer, tmp_path):
    n = Node(peer, tmp_path)
    yield n
    n.close()


def test_a_native_proxy_launcher_serves_a_go_plugin_through_the_go_plugin_host(node):
    node.ship("1.0.0")
    res = node.host("double", "21", "-5")
    assert res.ok and res.results == [42, -10], res.describe()
    started = res.logs(level="info", message="vault-plugin-shim: starting")
    assert len(started) == 1, res.describe()
    assert {k: started[0][k] for k in ("version", "exec_via", "mode", "selected_by", "key_id")} == {
        "version": "1.0.0", "exec_via": "memfd", "mode": "proxy", "selected_by": "native launcher",
        "key_id": node.keys.public.key_id_hex}
    assert res.plugin_exited and node.leftovers() == []
    res = node.host("broker", "host-dials")
    assert res.ok and res.results[0]["msg"] == "brokered version=1.0.0", res.describe()


def test_the_python_side_does_not_select(peer, tmp_path):
    """The Python part of this launcher trusts another key only: had it selected, it would
    refuse the only release (UnknownKeyError). It serves it: it ran the native verdict."""
    other = R.new_keys()
    n = Node(peer, tmp_path, python_policy=R.policy(tmp_path / "versions", other).replace(mode="proxy"))
    try:
        n.ship("1.0.0")
        res = n.host("double", "21")
        assert res.ok and res.results == [42], res.describe()
        assert not res.logs(level="error"), res.describe()
        assert res.logs(level="info", message="vault-plugin-shim: starting")[0]["selected_by"] == "native launcher"
    finally:
        n.close()


def test_refusals_and_rejections_are_the_native_exec_launchers_lines(tmp_path):
    d = Dir(tmp_path, hot_swap=False)
    d.ship("1.0.0")
    d.ship("2.0.0")
    (d.versions / "myplugin-2.0.0").write_text("#!/bin/sh\necho tampered\n")
    R.release(R.new_keys(), R.script_plugin(d.versions / "myplugin-3.0.0", "untrusted"), version="3.0.0")
    env = R.cookie_env(TMPDIR=str(tmp_path))
    exe, proxy = R.run(d.exec, env=env), R.run(d.proxy, env=env)
    assert exe.stdout == b"ran 1.0.0 \n" and proxy.stdout == b""
    rejected = [line for line in shim_lines(exe.stderr) if "rejected candidate" in line["@message"]]
    assert len(rejected) == 2 and all(line["@level"] == "error" for line in rejected)
    # proxy mode: the same rejection lines, then the Python part (here without Vault's AutoMTLS: it refuses)
    assert shim_lines(proxy.stderr)[:2] == rejected
    assert "AutoMTLS" in proxy.stderr.decode()
    # nothing valid: the same refusal line, exit 1, the interpreter never starts
    (d.versions / "myplugin-1.0.0").write_text("#!/bin/sh\necho tampered too\n")
    exe, proxy = R.run(d.exec, env=env), R.run(d.proxy, env=env)
    assert (exe.returncode, proxy.returncode, exe.stdout, proxy.stdout) == (1, 1, b"", b"")
    assert shim_lines(proxy.stderr) == shim_lines(exe.stderr)
    assert "refusing to start secret plugin myplugin" in shim_lines(proxy.stderr)[-1]["@message"]


def _fds(pid: int) -> list[str]:
    out = []
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            out.append(os.readlink(f"/proc/{pid}/fd/{fd}"))
        except OSError:
            pass
    return out


def _children(pid: int) -> list[int]:
    from shim.demo.bao import descendants

    return [p for p in descendants(pid) if Path(f"/proc/{p}").exists()]


def test_the_interpreter_gets_the_fixed_environment_and_only_the_handed_over_descriptors(peer, tmp_path):
    n = Node(peer, tmp_path, hot_swap=True)
    try:
        n.ship("1.0.0")
        marker = gopeer.new_marker()
        with n.hold("ping", env=[marker, "LD_PRELOAD=/nonexistent.so", "OPENSSL_CONF=/etc/evil.cnf"]) as h:
            pid = h.wait_holding()
            environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
            assert [e for e in environ if e] == FIXED_ENV
            held = _fds(pid)
            # the plugin's sealed copy and the launcher's own copy (hot swap), nothing of the code/context
            assert sum(t.startswith("/memfd:myplugin-1.0.0") for t in held) == 1, held
            assert sum(t.startswith("/memfd:vault-plugin-shim-launcher") for t in held) == 1, held
            plugin = [p for p in gopeer.find_marked_processes(marker)]
            assert len(plugin) == 1, plugin
            assert not [t for t in _fds(plugin[0]) if t.startswith("/memfd:")], _fds(plugin[0])
            res = h.release()
        assert res.ok and res.leftover_pids == [], res.describe()
        assert gopeer.find_marked_processes(marker) == [] and n.leftovers() == []
    finally:
        n.close()


# --- (c) select-only mode and hot swap ---------------------------------------------------------

@pytest.mark.parametrize("how", ["no-descriptor", "a-pipe", "stdout", "a-stream-socket", "not-our-parents",
                                 "no-hot-swap"])
def test_select_only_mode_without_its_socket_fails_closed_with_one_line(tmp_path, how):
    d = Dir(tmp_path, hot_swap=how != "no-hot-swap")
    d.ship("1.0.0")
    env = R.cookie_env(TMPDIR=str(tmp_path))
    keep, cmd, pass_fds = [], [str(d.proxy)], ()
    if how == "no-descriptor":
        cmd.append("--vault-plugin-shim-select-only=77")
    elif how == "stdout":   # what a catalog arg can name: one of Vault's pipes
        cmd.append("--vault-plugin-shim-select-only=1")
    else:
        if how == "a-pipe":
            r, w = os.pipe()
            keep += [r, w]
            fd = r
        else:
            a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM if how == "a-stream-socket"
                                     else socket.SOCK_SEQPACKET)
            keep += [a.detach(), b.detach()]
            fd = keep[-1]
        cmd.append(f"--vault-plugin-shim-select-only={fd}")
        pass_fds = (fd,)
        if how == "not-our-parents":   # a socket pair the launcher's grandparent made
            cmd = ["/bin/sh", "-c", '"$@"; exit $?', "sh", *cmd]
    try:
        proc = subprocess.run(cmd, env=env, pass_fds=pass_fds, capture_output=True, timeout=30)
    finally:
        for fd in keep:
            os.close(fd)
    assert proc.returncode == 1 and proc.stdout == b"", proc
    lines = R.hclog_lines(proc.stderr)
    assert len(lines) == 1 and len(proc.stderr.splitlines()) == 1, proc.stderr
    assert lines[0]["@level"] == "error" and "select-only mode refused" in lines[0]["@message"], lines
    assert "ran" not in proc.stderr.decode()


def test_select_only_mode_hands_back_a_sealed_verified_copy_and_the_launchs_lines(tmp_path, capfd):
    d = Dir(tmp_path)
    d.ship("1.0.0")
    v2 = d.ship("2.0.0")
    v2.write_bytes(v2.read_bytes()[:-2] + b"X\n")   # the signed size, other bytes
    before = sorted(os.listdir("/proc/self/fd"))
    selector, self_fd = d.selector()
    try:
        capfd.readouterr()
        cand, fd, how = selector.select([])
        relayed = shim_lines(capfd.readouterr().err)
        try:
            assert (str(cand.manifest.version), how) == ("1.0.0", "memfd")
            assert cand.path == str(d.versions / "myplugin-1.0.0")
            assert cand.key.key_id_hex == d.keys.public.key_id_hex
            assert fcntl.fcntl(fd, fcntl.F_GET_SEALS) & SEALS == SEALS
            data = os.pread(fd, 1 << 20, 0)
            assert hashlib.sha256(data).hexdigest() == cand.manifest.sha256 == hashlib.sha256(
                (d.versions / "myplugin-1.0.0").read_bytes()).hexdigest()
            assert not os.get_inheritable(fd)
        finally:
            os.close(fd)
        # the lines a launch logs (the native exec launcher's), relayed as they were
        launch = [line for line in shim_lines(R.run(d.exec, env=R.cookie_env(TMPDIR=str(tmp_path))).stderr)
                  if "starting" not in line["@message"]]
        assert relayed == launch and len(relayed) == 1 and "myplugin-2.0.0" in relayed[0]["@message"]
    finally:
        os.close(self_fd)
    assert sorted(os.listdir("/proc/self/fd")) == before   # no descriptor left behind
    assert _children(os.getpid()) == []                      # no process left behind


def test_select_only_mode_passes_over_what_hot_swap_refused(tmp_path, capfd):
    from shim.launch.swap import Release

    d = Dir(tmp_path)
    d.ship("1.0.0")
    d.ship("2.0.0")
    selector, self_fd = d.selector()
    try:
        cand, fd, _ = selector.select([])
        os.close(fd)
        assert str(cand.manifest.version) == "2.0.0"
        v2 = Release.of(cand)
        capfd.readouterr()
        cand, fd, _ = selector.select([(v2.identity, "failed to take over (a test)")])
        os.close(fd)
        assert str(cand.manifest.version) == "1.0.0"
        (line,) = shim_lines(capfd.readouterr().err)
        assert (line["@level"], line["error"], line["reason"], line["file"]) == (
            "error", "RejectedError", "failed to take over (a test)", v2.file)
        assert line["fix"] == "replace or remove this release; a changed file is tried again"
    finally:
        os.close(self_fd)


def test_select_only_mode_warns_about_a_release_still_being_copied_in(tmp_path, capfd):
    """test_swap_units' case for the Python rescan, on the native decision: a binary shorter
    than signed whose files changed a moment ago is a WARN in a rescan (an ERROR at launch)."""
    d = Dir(tmp_path)
    d.ship("1.0.0")
    v2 = d.ship("2.0.0")
    data = v2.read_bytes()
    v2.write_bytes(data[: len(data) // 2])
    selector, self_fd = d.selector()
    try:
        capfd.readouterr()
        cand, fd, _ = selector.select([])
        os.close(fd)
        (line,) = shim_lines(capfd.readouterr().err)
        assert line["@level"] == "warn" and "still being copied in" in line["@message"], line
        old = time.time() - 60
        for suffix in ("", ".manifest.json", ".manifest.json.minisig"):
            os.utime(str(v2) + suffix, (old, old))
        cand, fd, _ = selector.select([])
        os.close(fd)
        (line,) = shim_lines(capfd.readouterr().err)
        assert line["@level"] == "error" and "still being copied" not in line["@message"], line
    finally:
        os.close(self_fd)


def test_select_only_mode_refuses_like_the_launch_when_nothing_is_valid(tmp_path, capfd):
    d = Dir(tmp_path)
    v1 = d.ship("1.0.0")
    v1.write_bytes(v1.read_bytes()[:-2] + b"X\n")   # the signed size, other bytes
    selector, self_fd = d.selector()
    try:
        with pytest.raises(NativeRefusal) as info:
            selector.select([])
    finally:
        os.close(self_fd)
    exe = shim_lines(R.run(d.exec, env=R.cookie_env(TMPDIR=str(tmp_path))).stderr)
    refusal = {k: v for k, v in exe[-1].items() if k in ("error", "reason", "file", "fix")}
    assert info.value.fields() == refusal and refusal["error"] == "NoValidVersionError"
    assert shim_lines(capfd.readouterr().err) == exe[:-1]   # the rejection lines; the refusal is raised


def _select_only_children(pid: int) -> list[int]:
    out = []
    for p in _children(pid):
        try:
            if "vault-plugin-shim-launcher" in os.readlink(f"/proc/{p}/exe"):
                out.append(p)
        except OSError:
            pass
    return out


def _status(n: Node, pid: int) -> dict:
    found = [s for s in find_status("myplugin", str(n.sock)) if s["pid"] == pid]
    return found[0] if found else {}


def test_a_hot_swap_rescan_runs_select_only_mode_inside_the_launcher(peer, tmp_path):
    """Under the go-plugin host (not a Vault backend, so no set-up call to replay: a swap waits
    for one), SIGHUP rescans run the launcher's select-only mode from its own sealed copy: a
    newly shipped signed version is chosen (pending), a tampered one is named with the launch's
    line, and rescans leave no descriptor or process behind."""
    n = Node(peer, tmp_path, hot_swap=True)
    try:
        n.ship("1.0.0")
        with n.hold("ping") as h:
            pid = h.wait_holding()
            wait_until(lambda: _status(n, pid).get("watching") not in (None, "starting"), "the watcher", 20)
            fds = _fds(pid)
            n.ship("2.0.0", peer["v2"])
            os.kill(pid, signal.SIGHUP)
            wait_until(lambda: (_status(n, pid).get("pending") or {}).get("version") == "2.0.0", "2.0.0 pending")
            n.ship("3.0.0", peer["v2"], tamper=True)
            os.kill(pid, signal.SIGHUP)
            h.wait_for_log("rejected candidate " + str(n.versions / "myplugin-3.0.0"), timeout=30)
            wait_until(lambda: not _select_only_children(pid), "select-only processes to end", 10)
            # no descriptor left behind: the same memfds (the plugin's and the launcher's copy),
            # no more sockets or pipes than before (gRPC's own come and go)
            def memfds(targets):
                return sorted(t for t in targets if t.startswith("/memfd:"))

            wait_until(lambda: memfds(_fds(pid)) == memfds(fds), f"the rescans to end (before: {memfds(fds)})", 20)
            after = _fds(pid)
            for kind in ("socket:", "pipe:"):
                assert sum(t.startswith(kind) for t in after) <= sum(t.startswith(kind) for t in fds), (fds, after)
            res = h.release()
        assert res.ok and res.leftover_pids == [], res.describe()
        line = next(x for x in res.logs(level="error") if "myplugin-3.0.0" in x.get("@message", ""))
        assert line["error"] == "DigestMismatchError" and line["candidate"] == "myplugin-3.0.0"
        assert not res.logs(message="cannot rescan"), res.describe()
        assert n.leftovers() == []
    finally:
        n.close()


def test_the_arm64_native_proxy_launcher_decides_and_serves_under_qemu(tmp_path):
    """The arm64 build of the proxy-mode launcher, run under qemu-user by our go-plugin host
    client as Vault would run it: its own (arm64) code selects and seals (it refuses an amd64
    release, newer, and says so), then hands the copy to the interpreter, which serves calls
    through the proxy. Nothing is left once the host kills it. Hot swap is not tried: its
    rescans execute the launcher's own copy, which this amd64 machine runs only through qemu."""
    import logging

    from shim.goplugin.client import PluginClient
    from tests.proxy.test_proxy_faults import CONFIG, PLUGIN, UNARY, Waiter

    qemu = shutil.which("qemu-aarch64-static")
    assert qemu, "apt-get install qemu-user-static (bash build/install.sh)"
    versions = tmp_path / "versions"
    versions.mkdir(mode=0o755)
    keys = R.new_keys()
    for version, arch in (("1.0.0", "arm64"), ("2.0.0", "amd64")):
        script = versions / f"myplugin-{version}"
        script.write_text(f"#!{R.PYTHON}\n" + PLUGIN)
        script.chmod(0o755)
        R.release(keys, script, version=version, arch=arch)
    (tmp_path / "vault-plugins").mkdir()
    launcher = tmp_path / "vault-plugins" / "myplugin-shim"
    build.write_launcher(R.policy(versions, keys).replace(mode="proxy"), R.PYTHON, str(launcher),
                         native=True, arch="arm64")
    sock = Path(tempfile.mkdtemp(prefix="npa", dir="/tmp"))
    marker = gopeer.new_marker("NPARM64")
    key, value = marker.split("=")
    log = Waiter()
    logger = logging.getLogger(f"native-proxy-arm64.{id(log)}")
    logger.setLevel(logging.DEBUG)
    logger.addHandler(log)
    client = PluginClient([qemu, "-cpu", "max", str(launcher)], CONFIG, skip_host_env=True, logger=logger,
                          env={"PATH": "/usr/bin:/bin", "TMPDIR": str(sock), key: value})
    try:
        client.connect()
        assert client.channel.unary_unary(UNARY)(b"hello", timeout=30) == b"hello"
        refused = [m for m in log.messages if "rejected candidate" in m]
        assert len(refused) == 1 and "myplugin-2.0.0" in refused[0] and "linux/amd64" in refused[0], log.messages
        started = [m for m in log.messages if m.startswith("vault-plugin-shim: starting")]
        assert len(started) == 1 and "version=1.0.0" in started[0] and "mode=proxy" in started[0], log.messages
        assert "selected_by=native launcher" in started[0], started
    finally:
        client.kill()
        left = gopeer.kill_marked_processes(marker)
        leftovers = sorted(p.name for p in sock.iterdir())
        shutil.rmtree(sock, ignore_errors=True)
    assert left == [] and leftovers == [], (left, leftovers)
