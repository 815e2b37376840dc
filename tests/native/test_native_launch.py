"""The native exec-mode launcher (shim/launch/stubs/launcher-native-linux-*): the registered
file selects, verifies, seals and executes the plugin by itself, with no interpreter.

Real runs: each test builds a native launcher with ``write_launcher(..., native=True)`` (the
committed prebuilt binary, as `launcher build` uses it), gives it a plugins directory of
signed releases (script plugins that report what they received), and starts it as Vault
would: with the magic cookie, Vault's args and an environment of its choosing.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from shim.launch import build, stubs
from tests.support import releases
from tests.native.test_stub import DENY_MEMFD_C, gcc, raw_exec, seccomp_wrapper

STUB_DIR = Path(stubs.__file__).resolve().parent
REPORT = r'''#!/bin/sh
# A plugin that records what it received: its argv, its environment, its executable.
{ printf '%s\n' "$0" "$@"; } > "$REPORT_DIR/argv"
cat /proc/$$/environ > "$REPORT_DIR/environ"   # the environment it was executed with
echo "ran LABEL $*"
'''


def plugin(d: Path, name: str, label: str) -> Path:
    path = d / name
    path.write_text(REPORT.replace("LABEL", label))
    path.chmod(0o755)
    return path


def native_launcher(tmp: Path, pol) -> Path:
    out = tmp / "launcher"
    build.write_launcher(pol, None, str(out), native=True)
    return out


@pytest.fixture
def setup(tmp_path):
    versions = tmp_path / "versions"
    versions.mkdir(mode=0o755)
    keys = releases.new_keys()
    pol = releases.policy(versions, keys)
    reports = tmp_path / "reports"
    reports.mkdir()
    return tmp_path, versions, keys, pol, reports


def env(reports: Path, **extra) -> dict:
    return releases.cookie_env(REPORT_DIR=str(reports), **extra)


def test_the_native_launcher_is_static_and_needs_no_interpreter(setup):
    tmp, versions, keys, pol, _ = setup
    exe = native_launcher(tmp, pol)
    headers = subprocess.run(["readelf", "-lhd", str(exe)], capture_output=True, text=True, check=True).stdout
    assert "EXEC (Executable file)" in headers
    assert "INTERP" not in headers and "DYNAMIC" not in headers
    info = build.inspect(str(exe))
    assert info.native and info.mode == "exec" and info.interpreter == "" and info.policy == pol


def test_it_verifies_and_executes_the_highest_signed_version(setup):
    tmp, versions, keys, pol, reports = setup
    for version in ("1.0.0", "2.0.0", "1.5.0"):
        releases.release(keys, plugin(versions, f"myplugin-{version}", version), version=version)
    exe = native_launcher(tmp, pol)
    proc = releases.run(exe, "--flag", "x y", env=env(reports))
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == b"ran 2.0.0 --flag x y\n"     # the launcher itself wrote nothing there
    lines = releases.hclog_lines(proc.stderr)
    assert len(lines) == 1 and lines[0]["@level"] == "info"
    assert lines[0]["@message"] == "vault-plugin-shim: starting secret plugin myplugin 2.0.0"
    assert lines[0]["exec_via"] == "memfd" and lines[0]["key_id"] == keys.public.key_id_hex
    assert lines[0]["file"] == str(versions / "myplugin-2.0.0")


def test_vaults_argv_and_environment_arrive_byte_for_byte(setup):
    tmp, versions, keys, pol, reports = setup
    releases.release(keys, plugin(versions, "myplugin-1.0.0", "one"), version="1.0.0")
    exe = native_launcher(tmp, pol)
    cookie = b"VAULT_BACKEND_PLUGIN=6669da05-b1c8-4f49-97d9-c8e5bed98e20"
    env_in = [b"PATH=/usr/bin:/bin", cookie, b"REPORT_DIR=" + os.fsencode(reports), b"EMPTY=", b"=leading",
              b"NO_EQUALS", b"DUP=1", b"DUP=2", b"LD_PRELOAD=/nonexistent.so", b"ODD=\x01\xff"]
    args = [os.fsencode(exe), b"", b"\xff\xfe", b"--shim-policy=ignored"]
    proc = raw_exec(tmp, os.fsencode(exe), args, env_in)
    assert proc.returncode == 0, proc.stderr
    assert (reports / "environ").read_bytes() == b"\x00".join(env_in) + b"\x00"
    argv = (reports / "argv").read_bytes().split(b"\n")[:-1]
    assert argv[1:] == args[1:]


@pytest.mark.parametrize("attack", ["tampered", "symlink", "untrusted", "writable"])
def test_refusals_are_hclog_lines_and_nothing_runs(setup, attack):
    tmp, versions, keys, pol, reports = setup
    binary = plugin(versions, "myplugin-1.0.0", "one")
    releases.release(keys if attack != "untrusted" else releases.new_keys(), binary, version="1.0.0")
    if attack == "tampered":
        binary.write_text(binary.read_text().replace("ran", "RAN"))
    elif attack == "symlink":
        binary.rename(versions / "real")
        binary.symlink_to("real")
    elif attack == "writable":
        binary.chmod(0o777)
    exe = native_launcher(tmp, pol)
    proc = releases.run(exe, env=env(reports))
    assert proc.returncode == 1 and proc.stdout == b""
    assert not (reports / "argv").exists()
    lines = releases.hclog_lines(proc.stderr)
    assert len(lines) == 2 and all(line["@level"] == "error" for line in lines)
    want = {"tampered": "DigestMismatchError", "symlink": "UnsafeFileError", "untrusted": "UnknownKeyError",
            "writable": "UnsafeFileError"}[attack]
    assert lines[0]["error"] == want and lines[0]["candidate"] == "myplugin-1.0.0"
    assert lines[1]["error"] == "NoValidVersionError"
    assert lines[1]["@message"].startswith("vault-plugin-shim: refusing to start secret plugin myplugin: ")


def test_run_by_hand_it_explains_what_the_next_launch_runs(setup):
    tmp, versions, keys, pol, reports = setup
    releases.release(keys, plugin(versions, "myplugin-1.0.0", "one"), version="1.0.0")
    releases.release(keys, plugin(versions, "myplugin-2.0.0", "two"), version="2.0.0", expires=1)
    exe = native_launcher(tmp, pol)
    proc = subprocess.run([str(exe)], capture_output=True, env={"LD_PRELOAD": "/nonexistent.so"}, timeout=30)
    assert proc.returncode == 0 and proc.stdout == b""
    text = proc.stderr.decode()
    assert "myplugin-1.0.0: ok, version 1.0.0 (runs)" in text
    assert "myplugin-2.0.0: refused: ManifestError: expires_at is not after issued_at" in text
    assert f"next launch runs: {versions / 'myplugin-1.0.0'}" in text
    assert "doctor: FAIL" not in text
    assert not (reports / "argv").exists()
    # `L doctor` is vault-plugin-shim doctor's verdict: a refused newer version fails it
    proc = subprocess.run([str(exe), "doctor"], capture_output=True, env={}, timeout=30)
    assert proc.returncode == 1 and proc.stdout == b"", proc
    assert "myplugin-2.0.0: refused: ManifestError" in proc.stderr.decode()
    assert "doctor: FAIL (exit status 1): a newer version is refused" in proc.stderr.decode()


def test_doctor_by_hand_fails_a_launcher_directory_others_can_write(setup):
    """`L doctor`, in a pod with no Python, checks what vault-plugin-shim doctor checks: the
    launcher, its directory and every directory above it must be root's and writable by nobody
    else, since Vault hashes the launcher's path and then executes it. `L` alone does not."""
    tmp, versions, keys, pol, reports = setup
    releases.release(keys, plugin(versions, "myplugin-1.0.0", "one"), version="1.0.0")
    home = tmp / "plugins"
    home.mkdir(mode=0o755)
    exe = native_launcher(home, pol)
    proc = subprocess.run([str(exe), "doctor"], capture_output=True, env={}, timeout=30)
    assert proc.returncode == 0, proc.stderr
    assert b"doctor: the launcher, its directory and those above it are root's" in proc.stderr
    try:
        os.chown(home, 65534, 65534)
        proc = subprocess.run([str(exe), "doctor"], capture_output=True, env={}, timeout=30)
        assert proc.returncode == 1 and proc.stdout == b"", proc
        text = proc.stderr.decode()
        assert f"doctor: FAIL: the launcher's directory {home} can be written by someone other than root " \
               f"(owner uid 65534, mode 0755)" in text, text
        assert subprocess.run([str(exe)], capture_output=True, env={}, timeout=30).returncode == 0
        os.chown(home, 0, 0)
        os.chmod(exe, 0o775)
        proc = subprocess.run([str(exe), "doctor"], capture_output=True, env={}, timeout=30)
        assert proc.returncode == 1 and f"doctor: FAIL: the launcher {exe} can be written" in proc.stderr.decode()
    finally:
        os.chown(home, 0, 0)
        os.chmod(exe, 0o755)


def test_hand_run_text_escapes_c1_controls_and_bytes_that_are_not_utf8(setup):
    """A file name reaches an operator's terminal in `L` and `L doctor`: C0 controls, the C1
    controls U+0080..U+009F (CSI is U+009B) and stray bytes (a lone 0x9B is CSI to an 8-bit
    terminal) are written visibly; other UTF-8 passes as it is."""
    tmp, versions, keys, pol, reports = setup
    releases.release(keys, plugin(versions, "myplugin-1.0.0", "one"), version="1.0.0")
    for name in (b"a\xc2\x9b2J", b"b\x9b2J", b"c\x1b[2J", "d-\u00e9\u4e2d".encode()):
        os.close(os.open(bytes(versions) + b"/myplugin-" + name + b".manifest.json", os.O_CREAT | os.O_WRONLY, 0o644))
    exe = native_launcher(tmp, pol)
    proc = subprocess.run([str(exe), "doctor"], capture_output=True, env={}, timeout=30)
    text = proc.stderr
    assert b"\xc2\x9b" not in text and b"\x9b2J" not in text and b"\x1b" not in text, text
    assert b"myplugin-a\\u009b2J" in text and b"myplugin-b\\x9b2J" in text and b"myplugin-c\\x1b[2J" in text, text
    assert "myplugin-d-\u00e9\u4e2d".encode() in text, text


def test_where_memfd_is_refused_the_verified_bytes_run_from_a_private_copy(setup):
    tmp, versions, keys, pol, reports = setup
    releases.release(keys, plugin(versions, "myplugin-1.0.0", "one"), version="1.0.0")
    exe = native_launcher(tmp, pol)
    deny = gcc(tmp, "deny-memfd", DENY_MEMFD_C)
    private = tmp / "private"
    private.mkdir(mode=0o700)
    proc = subprocess.run([str(deny), str(exe)], capture_output=True, timeout=30,
                          env=env(reports, TMPDIR=str(private)))
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == b"ran one \n"
    lines = releases.hclog_lines(proc.stderr)
    assert lines[-1]["exec_via"] == "private-file"
    assert list(private.iterdir()) == []        # the copy and its directory are gone


def test_a_damaged_policy_fails_closed_with_one_hclog_line(setup):
    tmp, versions, keys, pol, reports = setup
    exe = native_launcher(tmp, pol)
    data = bytearray(exe.read_bytes())
    at = bytes(data).rindex(b"\nend\n")
    data[at + 1] = ord("E")
    damaged = tmp / "damaged"
    damaged.write_bytes(bytes(data))
    damaged.chmod(0o755)
    proc = releases.run(damaged, env=env(reports))
    assert proc.returncode == 1 and proc.stdout == b""
    (line,) = releases.hclog_lines(proc.stderr)
    assert line["error"] == "PolicyError" and line["file"] == str(damaged)


def test_the_native_launcher_links_in_nothing_that_reads_the_environment(tmp_path):
    """Nothing linked in reads the environment. Nettle's fat setup calls getenv and secure_getenv
    (NETTLE_FAT_VERBOSE, NETTLE_FAT_OVERRIDE): the launcher's are nv_noenv.c's `return NULL`, a
    function of at most two instructions, and musl's (which read environ) are not linked."""
    proc = subprocess.run(["bash", str(STUB_DIR.parent.parent.parent / "build" / "build_stubs.sh"), "--symbols",
                           str(tmp_path)], capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr
    for arch in stubs.NATIVE_STUB_NAMES:
        table = subprocess.run(["nm", "--defined-only", "-S", str(tmp_path / f"launcher-native-linux-{arch}")],
                               capture_output=True, text=True, check=True).stdout.splitlines()
        names = {line.split()[-1] for line in table}
        sizes = {f[3]: int(f[1], 16) for f in map(str.split, table) if len(f) == 4}
        assert {"main", "crypto_sign_verify_detached", "nettle_sha256_update", "memfd_create"} <= names
        assert "crypto_hash_sha256_update" not in names         # SHA-256 is Nettle's (nv_sha256.c)
        readers = {"__secure_getenv", "setlocale", "newlocale", "tzset", "__tzset",
                   "localtime", "localtime_r", "dlopen", "__dls3", "sodium_init", "randombytes_buf"}
        assert not names & readers, names & readers
        assert sizes["getenv"] <= 8 and sizes["secure_getenv"] <= 8, (sizes["getenv"], sizes["secure_getenv"])


@pytest.mark.parametrize("arch", ["amd64", "arm64"])
def test_nettles_variables_steer_nothing_and_still_reach_the_plugin(setup, arch):
    """NETTLE_FAT_VERBOSE would make Nettle print "libnettle: ..." lines on stderr (which Vault
    logs) and NETTLE_FAT_OVERRIDE would choose its SHA-256 code: in Vault's environment they
    reach the plugin byte for byte, and the launcher reads neither (nv_noenv.c): nothing is
    printed, and the CPU alone chooses (its secure_getenv is the null one: the test above)."""
    tmp, versions, keys, pol, reports = setup
    releases.release(keys, plugin(versions, "myplugin-1.0.0", "one"), version="1.0.0", arch=arch)
    out = tmp / f"launcher-{arch}"
    build.write_launcher(pol, None, str(out), native=True, arch=arch)
    wrapper = []
    if arch == "arm64":
        qemu = shutil.which("qemu-aarch64-static")
        assert qemu, "apt-get install qemu-user-static (bash build/install.sh)"
        wrapper = [qemu, "-cpu", "max"]                          # a CPU with the SHA2 instructions
    cookie = b"VAULT_BACKEND_PLUGIN=6669da05-b1c8-4f49-97d9-c8e5bed98e20"
    env_in = [b"PATH=/usr/bin:/bin", cookie, b"REPORT_DIR=" + os.fsencode(reports), b"NETTLE_FAT_VERBOSE=1",
              b"NETTLE_FAT_OVERRIDE=none"]
    proc = raw_exec(tmp, os.fsencode(out), [os.fsencode(out), b"x"], env_in, wrapper=wrapper)
    assert proc.returncode == 0 and proc.stdout == b"ran one x\n", proc.stderr
    assert b"libnettle" not in proc.stderr, proc.stderr
    (line,) = releases.hclog_lines(proc.stderr)
    assert line["@message"] == "vault-plugin-shim: starting secret plugin myplugin 1.0.0"
    received = (reports / "environ").read_bytes().split(b"\x00")[:-1]
    assert received == env_in if arch == "amd64" else sorted(received) == sorted(env_in)   # qemu reverses it


def test_hand_run_output_is_json_free_and_launch_lines_are_json(setup):
    """Every stderr line of a launch is an hclog JSON object (Vault logs anything else at
    debug); the hand-run text is for a person and never claims to be JSON."""
    tmp, versions, keys, pol, reports = setup
    releases.release(keys, plugin(versions, "myplugin-1.0.0", "one"), version="1.0.0")
    (versions / "junk\nline.manifest.json").write_text("{}")
    exe = native_launcher(tmp, pol)
    proc = releases.run(exe, env=env(reports))
    assert proc.returncode == 0
    for line in proc.stderr.decode().splitlines():
        entry = json.loads(line)
        assert "\n" not in entry["@message"]
        if entry.get("candidate"):
            assert entry["candidate"] == "junk\\nline"    # escaped: it cannot forge a line


def test_the_arm64_native_launcher_verifies_under_qemu(setup):
    """The arm64 build parses, verifies (Ed25519, BLAKE2b) and hashes (SHA-256) the same
    way: run by hand under qemu-user, it names the version the next launch would run."""
    tmp, versions, keys, pol, reports = setup
    qemu = shutil.which("qemu-aarch64-static")
    assert qemu, "apt-get install qemu-user-static (bash build/install.sh)"
    releases.release(keys, plugin(versions, "myplugin-1.0.0", "one"), version="1.0.0", arch="arm64")
    releases.release(keys, plugin(versions, "myplugin-2.0.0", "two"), version="2.0.0", arch="amd64")
    (versions / "myplugin-3.0.0").write_text("tampered")
    releases.release(keys, versions / "myplugin-3.0.0", version="3.0.0", arch="arm64")
    (versions / "myplugin-3.0.0").write_text("tampered!")
    out = tmp / "launcher-arm64"
    build.write_launcher(pol, None, str(out), native=True, arch="arm64")
    proc = subprocess.run([qemu, str(out)], capture_output=True, timeout=60, env={})
    text = proc.stderr.decode()
    assert proc.returncode == 0 and proc.stdout == b"", text
    assert "myplugin-1.0.0: ok, version 1.0.0 (runs)" in text
    assert "myplugin-2.0.0: refused: WrongPluginError: manifest is for linux/amd64, this node is linux/arm64" in text
    assert "myplugin-3.0.0: refused: DigestMismatchError: is 9 bytes, the signed manifest says 8" in text


# --- issue 17's exec-path cases, in the native launcher ---------------------------------------

DENY_EXECVEAT_C = DENY_MEMFD_C.replace("__NR_memfd_create", "__NR_execveat").replace("deny-memfd", "deny-execveat")
STDIO_REPORT = r'''#!/bin/sh
s0="$(readlink /proc/$$/fd/0)"; s1="$(readlink /proc/$$/fd/1)"; s2="$(readlink /proc/$$/fd/2)"
printf '0=%s\n1=%s\n2=%s\n' "$s0" "$s1" "$s2" > "$REPORT_DIR/stdio"
grep '^SigIgn' /proc/$$/status > "$REPORT_DIR/sigign"
'''


def test_closed_stdio_stays_closed_and_the_kept_memfd_lands_above_it(setup):
    """Case 7: a #! plugin keeps its memfd across exec; with Vault's fds 0-2 closed, it must
    not become the plugin's stdin, stdout or stderr."""
    tmp, versions, keys, pol, reports = setup
    path = versions / "myplugin-1.0.0"
    path.write_text(STDIO_REPORT)
    path.chmod(0o755)
    releases.release(keys, path, version="1.0.0")
    exe = native_launcher(tmp, pol)
    proc = subprocess.run(["/bin/sh", "-c", 'exec "$0" <&- >&- 2>&-', str(exe)], env=env(reports),
                          capture_output=True, timeout=30)
    assert proc.returncode == 0
    stdio = dict(line.split("=", 1) for line in (reports / "stdio").read_text().splitlines())
    assert not any("memfd" in target for target in stdio.values()), stdio
    assert stdio["1"] == "" and stdio["2"] == ""       # closed, as Vault gave them


def test_the_plugin_gets_vaults_signal_dispositions(setup):
    tmp, versions, keys, pol, reports = setup
    path = versions / "myplugin-1.0.0"
    path.write_text(STDIO_REPORT)
    path.chmod(0o755)
    releases.release(keys, path, version="1.0.0")
    proc = releases.run(native_launcher(tmp, pol), env=env(reports))
    assert proc.returncode == 0, proc.stderr
    ignored = int((reports / "sigign").read_text().split()[1], 16)
    assert not ignored & (1 << (25 - 1)), "SIGXFSZ, ignored by the launcher while it copies, leaked to the plugin"


def limited(resource_name: str, value: int):
    import resource

    def apply():
        limit = getattr(resource, resource_name)
        resource.setrlimit(limit, (value, value))
    return apply


@pytest.mark.parametrize("limit, value, fix_part", [
    ("RLIMIT_FSIZE", 1000, "RLIMIT_FSIZE"),
    ("RLIMIT_NOFILE", 4, "ulimit -n"),
])
def test_a_tiny_rlimit_gets_one_line_naming_it(setup, limit, value, fix_part):
    """Case 8: the launcher does not die of SIGXFSZ and does not blame seccomp; the line's
    fix names the limit."""
    tmp, versions, keys, pol, reports = setup
    path = plugin(versions, "myplugin-1.0.0", "one")
    path.write_text(path.read_text() + "#" * 4000 + "\n")
    releases.release(keys, path, version="1.0.0")
    exe = native_launcher(tmp, pol)
    proc = subprocess.run([str(exe)], env=env(reports), capture_output=True, timeout=30,
                          preexec_fn=limited(limit, value))
    assert proc.returncode == 1 and proc.stdout == b"", proc
    lines = releases.hclog_lines(proc.stderr)
    assert any(fix_part in line.get("fix", "") for line in lines), lines
    assert not any("seccomp" in line.get("fix", "") for line in lines)
    assert lines[-1]["error"] == "NoValidVersionError"


def test_a_tiny_file_size_limit_after_a_refused_exec_of_a_shared_copy_gets_its_line(tmp_path):
    """Case 8 again, on the retry path: executing a running process's copy fails (here a
    seccomp filter answers EACCES to execveat), so the launcher makes its own copy. The failed
    exec had given SIGXFSZ back to Vault's disposition (the default: death); the copy past
    RLIMIT_FSIZE must still end in a line naming the limit, not in a silent SIGXFSZ."""
    from shim.launch import memexec
    from tests.support.wait import wait_until

    versions = tmp_path / "versions"
    versions.mkdir(mode=0o755)
    keys = releases.new_keys()
    path = versions / "myplugin-1.0.0"
    path.write_bytes(Path(shutil.which("sleep") or "/bin/sleep").read_bytes())
    path.chmod(0o755)
    releases.release(keys, path, version="1.0.0")
    exe = native_launcher(tmp_path, releases.policy(versions, keys))
    deny = gcc(tmp_path, "deny-execveat-eacces", DENY_EXECVEAT_C.replace("| EPERM", "| EACCES"))
    first = subprocess.Popen([str(exe), "600"], env=releases.cookie_env(), stdin=subprocess.DEVNULL,
                             stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        wait_until(lambda: first.pid in memexec.running_from("myplugin-1.0.0") or first.poll() is not None,
                   "the first launch to execute the plugin")
        assert first.poll() is None, first.stderr.read()
        proc = subprocess.run([str(deny), str(exe), "600"], env=releases.cookie_env(), capture_output=True,
                              timeout=30, preexec_fn=limited("RLIMIT_FSIZE", 1000))
    finally:
        first.kill()
        first.wait(10)
        first.stderr.close()
    assert proc.returncode == 1 and proc.stdout == b"", proc
    lines = releases.hclog_lines(proc.stderr)
    assert [line["exec_via"] for line in lines if "starting" in line["@message"]] == ["memfd-shared"], lines
    assert lines[-1]["@level"] == "error" and "RLIMIT_FSIZE" in lines[-1].get("fix", ""), lines


def test_where_no_second_thread_can_start_it_copies_then_hashes_and_says_so(tmp_path):
    """The copy of a plugin over 1 MiB is hashed while it is made, on a second thread.
    Where none can start (the Vault user at its pids limit: here an unused uid with
    RLIMIT_NPROC 1), the launch still runs the verified plugin, and one WARN line says it went
    slower and what to raise."""
    import tempfile

    uid = 54321
    top = Path(tempfile.mkdtemp(prefix="shim-nproc-"))
    try:
        top.chmod(0o755)
        versions = top / "versions"
        versions.mkdir(mode=0o755)
        reports = top / "reports"
        reports.mkdir()
        os.chown(reports, uid, uid)
        keys = releases.new_keys()
        path = versions / "myplugin-1.0.0"     # forks nothing: the pids limit holds for the plugin too
        path.write_text('#!/bin/sh\necho "ran one $*"\n' + ("#" * 1023 + "\n") * 3072)      # 3 MiB: a second thread
        path.chmod(0o755)
        releases.release(keys, path, version="1.0.0")
        exe = native_launcher(top, releases.policy(versions, keys))
        exe.chmod(0o755)
        proc = subprocess.run([str(exe), "a"], env=env(reports), capture_output=True, timeout=30, user=uid, group=uid,
                              extra_groups=[], preexec_fn=limited("RLIMIT_NPROC", 1))
        assert proc.returncode == 0 and proc.stdout == b"ran one a\n", proc
        warns = [line for line in releases.hclog_lines(proc.stderr) if line["@level"] == "warn"]
        assert [w["@message"] for w in warns] == [
            "vault-plugin-shim: cannot start a second thread to copy while hashing; reading, hashing and copying "
            "one piece at a time (the launch is slower)"], proc.stderr
        assert warns[0]["file"] == str(path) and "pids" in warns[0]["fix"]
        proc = subprocess.run([str(exe), "a"], env=env(reports), capture_output=True, timeout=30, user=uid, group=uid,
                              extra_groups=[])
        assert proc.returncode == 0 and proc.stdout == b"ran one a\n", proc
        assert b'"@level":"warn"' not in proc.stderr, proc.stderr
    finally:
        shutil.rmtree(top)


def test_where_no_second_thread_can_start_a_shared_copy_is_hashed_on_one_thread_and_says_so(tmp_path):
    """A launch of a version that a process of the same uid runs shares that process's sealed
    copy, and hashes it first, on a second thread where the copy is over 1 MiB. Where none can
    start (the pids limit reached: here RLIMIT_NPROC 2 for an unused uid that runs the first
    plugin), the shared copy is still hashed and executed, and one WARN line says it was slower
    and what to raise."""
    import tempfile

    from shim.launch import memexec
    from tests.support.wait import wait_until

    uid = 54322
    top = Path(tempfile.mkdtemp(prefix="shim-nproc-share-"))
    procs: list[subprocess.Popen] = []
    try:
        top.chmod(0o755)
        versions = top / "versions"
        versions.mkdir(mode=0o755)
        keys = releases.new_keys()
        path = versions / "myplugin-1.0.0"      # sleep, padded to 3 MiB: still an ELF that runs
        path.write_bytes(Path(shutil.which("sleep") or "/bin/sleep").read_bytes())
        with open(path, "ab") as f:
            f.write(b"\0" * (3 * 1024 * 1024 - path.stat().st_size))
        path.chmod(0o755)
        releases.release(keys, path, version="1.0.0")
        exe = native_launcher(top, releases.policy(versions, keys))
        exe.chmod(0o755)

        def launch(tag: str, **kw) -> tuple[subprocess.Popen, Path]:
            err = top / f"{tag}.err"
            with open(err, "wb") as f:
                p = subprocess.Popen([str(exe), "600"], env=releases.cookie_env(), stdin=subprocess.DEVNULL,
                                     stdout=subprocess.DEVNULL, stderr=f, user=uid, group=uid, extra_groups=[], **kw)
            procs.append(p)
            wait_until(lambda: p.pid in memexec.running_from("myplugin-1.0.0") or p.poll() is not None,
                       f"the {tag} launch to execute the plugin")
            assert p.poll() is None, err.read_bytes()
            return p, err

        first, err1 = launch("first")
        assert b'"@level":"warn"' not in err1.read_bytes(), err1.read_bytes()
        second, err2 = launch("second", preexec_fn=limited("RLIMIT_NPROC", 2))    # the first plugin and this
        lines = releases.hclog_lines(err2.read_bytes())
        warns = [line for line in lines if line["@level"] == "warn"]
        assert [w["@message"] for w in warns] == [
            "vault-plugin-shim: cannot start a second thread to read while hashing; reading and hashing one "
            "piece at a time (slower)"], lines
        assert warns[0]["file"] == str(path) and "pids" in warns[0]["fix"]
        assert [line["exec_via"] for line in lines if "starting" in line["@message"]] == ["memfd-shared"], lines
        assert os.stat(f"/proc/{first.pid}/exe").st_ino == os.stat(f"/proc/{second.pid}/exe").st_ino
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
            p.wait(10)
        shutil.rmtree(top)


def test_the_launcher_makes_itself_not_dumpable_before_anything_else(setup):
    """Not dumpable from its first call on: before main(), before any library's constructor
    (Nettle's CPU detection), before it opens anything. Only musl's own start (arch_prctl,
    set_tid_address) comes before the prctl."""
    tmp, versions, keys, pol, reports = setup
    releases.release(keys, plugin(versions, "myplugin-1.0.0", "one"), version="1.0.0")
    exe = native_launcher(tmp, pol)
    strace = shutil.which("strace")
    assert strace, "strace is missing: apt-get install strace (bash build/install.sh)"
    trace = tmp / "trace"
    proc = subprocess.run([strace, "-qq", "-o", str(trace), str(exe)], capture_output=True, env={}, timeout=30)
    assert proc.returncode == 0, proc.stderr
    calls = [line.split("(", 1)[0] for line in trace.read_text().splitlines()]
    assert calls[0] == "execve", calls[:5]
    first = next(k for k, name in enumerate(calls[1:], 1) if name not in ("arch_prctl", "set_tid_address"))
    assert trace.read_text().splitlines()[first].startswith("prctl(PR_SET_DUMPABLE, SUID_DUMP_DISABLE)"), calls[:8]


def test_no_other_process_of_the_vault_user_can_reach_the_copy_before_the_seal(tmp_path):
    """The copy is hashed piece by piece before it is sealed, so nothing else may write it
    meanwhile: the launcher is not dumpable, and another process of its uid cannot open its
    memfd through /proc/PID/fd. strace (root) holds the first write into the memfd for a while;
    in that window, a process of the same uid tries to open the memfd for writing."""
    import tempfile

    from tests.support.wait import wait_until

    uid = 54321
    top = Path(tempfile.mkdtemp(prefix="shim-dumpable-"))
    proc = None
    try:
        top.chmod(0o755)
        versions = top / "versions"
        versions.mkdir(mode=0o755)
        keys = releases.new_keys()
        path = versions / "myplugin-1.0.0"
        path.write_text('#!/bin/sh\necho "ran one $*"\n' + ("#" * 1023 + "\n") * 2048)
        path.chmod(0o755)
        releases.release(keys, path, version="1.0.0")
        exe = native_launcher(top, releases.policy(versions, keys))
        exe.chmod(0o755)
        strace = shutil.which("strace")
        assert strace, "strace is missing: apt-get install strace (bash build/install.sh)"
        proc = subprocess.Popen([strace, "-f", "-qq", "-o", "/dev/null", "-e", "trace=pwrite64",
                                 "-e", "inject=pwrite64:delay_enter=4000000:when=1",
                                 "setpriv", f"--reuid={uid}", f"--regid={uid}", "--clear-groups", str(exe), "a"],
                                env=releases.cookie_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE)

        def memfd_of_launcher():
            for pid in filter(str.isdigit, os.listdir("/proc")):
                try:
                    if os.readlink(f"/proc/{pid}/exe") != str(exe):
                        continue
                    for fd in os.listdir(f"/proc/{pid}/fd"):
                        if os.readlink(f"/proc/{pid}/fd/{fd}").startswith("/memfd:myplugin-1.0.0"):
                            return pid, fd
                except OSError:
                    continue
            return None

        pid, fd = wait_until(memfd_of_launcher, "the launcher to make its memfd", deadline=20)
        assert os.stat(f"/proc/{pid}/fd").st_uid == 0, "the launcher should not be dumpable while it copies"
        probe = subprocess.run(["/bin/sh", "-c", 'exec 3>"$1"', "probe", f"/proc/{pid}/fd/{fd}"], user=uid,
                               group=uid, extra_groups=[], capture_output=True, text=True, timeout=30)
        assert probe.returncode != 0 and "Permission denied" in probe.stderr, probe
        out, err = proc.communicate(timeout=60)
        assert proc.returncode == 0 and out == b"ran one a\n", err
    finally:
        if proc is not None and proc.poll() is None:
            proc.kill()
            proc.wait()
        shutil.rmtree(top)


def test_no_other_process_of_the_vault_user_can_reach_the_private_copy(tmp_path):
    """The private-copy fallback (memfd_create refused) is a file. A named one, even unlinked
    right after it was written, could be opened by another process of the Vault user while it
    existed, and written again between its hash and the exec (a review reproduced that: 2 runs
    in 5 ran its bytes). So the copy is an unnamed file (O_TMPFILE) of a launcher that is not
    dumpable. strace (root) holds the copy's second piece; meanwhile TMPDIR holds no entry, and
    a process of the same uid cannot open the copy through /proc/PID/fd. Then the launch goes
    on and runs the signed bytes from the private file."""
    import tempfile

    from tests.support.wait import wait_until

    uid = 54324
    top = Path(tempfile.mkdtemp(prefix="shim-private-"))
    proc = None
    try:
        top.chmod(0o755)
        versions = top / "versions"
        versions.mkdir(mode=0o755)
        keys = releases.new_keys()
        path = versions / "myplugin-1.0.0"
        path.write_text('#!/bin/sh\necho "ran one $*"\n' + ("#" * 1023 + "\n") * 2048)      # 2 MiB: two pieces
        path.chmod(0o755)
        releases.release(keys, path, version="1.0.0")
        exe = native_launcher(top, releases.policy(versions, keys))
        exe.chmod(0o755)
        deny = gcc(top, "deny-memfd", DENY_MEMFD_C)
        deny.chmod(0o755)
        tmpdir = top / "tmp"
        tmpdir.mkdir(mode=0o700)
        os.chown(tmpdir, uid, uid)
        strace = shutil.which("strace")
        assert strace, "strace is missing: apt-get install strace (bash build/install.sh)"
        proc = subprocess.Popen([strace, "-f", "-qq", "-o", "/dev/null", "-e", "trace=sendfile",
                                 "-e", "inject=sendfile:delay_enter=4000000:when=2",
                                 "setpriv", f"--reuid={uid}", f"--regid={uid}", "--clear-groups",
                                 str(deny), str(exe), "a"],
                                env=releases.cookie_env(TMPDIR=str(tmpdir)), stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE)

        def private_copy_of_launcher():
            for pid in filter(str.isdigit, os.listdir("/proc")):
                try:
                    if os.readlink(f"/proc/{pid}/exe") != str(exe):
                        continue
                    for fd in os.listdir(f"/proc/{pid}/fd"):
                        if os.readlink(f"/proc/{pid}/fd/{fd}").startswith(f"{tmpdir}/#"):
                            return pid, fd
                except OSError:
                    continue
            return None

        pid, fd = wait_until(private_copy_of_launcher, "the launcher to make its private copy", deadline=20)
        assert list(tmpdir.iterdir()) == [], "the private copy must have no name"
        assert os.stat(f"/proc/{pid}/fd").st_uid == 0, "the launcher should not be dumpable while it copies"
        probe = subprocess.run(["/bin/sh", "-c", 'exec 3<"$1"', "probe", f"/proc/{pid}/fd/{fd}"], user=uid,
                               group=uid, extra_groups=[], capture_output=True, text=True, timeout=30)
        assert probe.returncode != 0 and "Permission denied" in probe.stderr, probe
        out, err = proc.communicate(timeout=60)
        assert proc.returncode == 0 and out == b"ran one a\n", err
        (line,) = [ln for ln in releases.hclog_lines(err) if "starting" in ln["@message"]]
        assert line["exec_via"] == "private-file"
        assert list(tmpdir.iterdir()) == []
    finally:
        if proc is not None and proc.poll() is None:
            proc.kill()
            proc.wait()
        shutil.rmtree(top)


# memfd_create: EPERM; open and openat with O_TMPFILE: EOPNOTSUPP, as a file system without
# unnamed files answers (overlayfs before Linux 6.6). x86_64 only (where open exists).
DENY_MEMFD_AND_TMPFILE_C = seccomp_wrapper("deny-tmpfile", """
        BPF_STMT(BPF_LD | BPF_W | BPF_ABS, offsetof(struct seccomp_data, nr)),
        BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, __NR_memfd_create, 0, 1),
        BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ERRNO | EPERM),
        BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, __NR_open, 0, 2),
        BPF_STMT(BPF_LD | BPF_W | BPF_ABS, offsetof(struct seccomp_data, args[1])),
        BPF_STMT(BPF_JMP | BPF_JA, 2),
        BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, __NR_openat, 0, 3),
        BPF_STMT(BPF_LD | BPF_W | BPF_ABS, offsetof(struct seccomp_data, args[2])),
        BPF_JUMP(BPF_JMP | BPF_JSET | BPF_K, 020000000, 0, 1),
        BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ERRNO | EOPNOTSUPP),
        BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ALLOW),""")


def test_where_temp_files_cannot_be_unnamed_the_private_copy_fails_closed(setup):
    """A TMPDIR whose file system has no O_TMPFILE cannot hold a copy nobody else can reach:
    the candidate is refused, in a line that names the directory and where to point TMPDIR,
    and nothing runs, rather than falling back to a named file. (Every file system here has
    O_TMPFILE, so a seccomp filter answers as one without it would.)"""
    tmp, versions, keys, pol, reports = setup
    releases.release(keys, plugin(versions, "myplugin-1.0.0", "one"), version="1.0.0")
    exe = native_launcher(tmp, pol)
    deny = gcc(tmp, "deny-tmpfile", DENY_MEMFD_AND_TMPFILE_C)
    private = tmp / "private"
    private.mkdir(mode=0o700)
    proc = subprocess.run([str(deny), str(exe)], capture_output=True, timeout=30,
                          env=env(reports, TMPDIR=str(private)))
    assert proc.returncode == 1 and proc.stdout == b"", proc
    assert not (reports / "argv").exists(), "nothing may run"
    errors = [line for line in releases.hclog_lines(proc.stderr) if line["@level"] == "error"]
    assert [e["error"] for e in errors] == ["LaunchError", "NoValidVersionError"], proc.stderr
    assert "cannot make unnamed files" in errors[0]["reason"] and str(private) in errors[0]["reason"], errors
    assert "TMPDIR" in errors[0]["fix"] and "tmpfs" in errors[0]["fix"], errors
    assert list(private.iterdir()) == []


def test_where_execveat_is_refused_it_executes_through_proc_self_fd(setup):
    """Case 15: a seccomp profile recorded from a running Vault allows execve only."""
    tmp, versions, keys, pol, reports = setup
    releases.release(keys, plugin(versions, "myplugin-1.0.0", "one"), version="1.0.0")
    exe = native_launcher(tmp, pol)
    deny = gcc(tmp, "deny-execveat", DENY_EXECVEAT_C)
    proc = subprocess.run([str(deny), str(exe), "a"], capture_output=True, timeout=30, env=env(reports))
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == b"ran one a\n"
    assert (reports / "argv").read_text().splitlines()[1:] == ["a"]


def test_the_cookie_of_another_plugin_type_is_one_error_line(setup):
    tmp, versions, keys, pol, reports = setup
    releases.release(keys, plugin(versions, "myplugin-1.0.0", "one"), version="1.0.0")
    exe = native_launcher(tmp, pol)
    proc = releases.run(exe, env=releases.cookie_env("database", REPORT_DIR=str(reports)))
    assert proc.returncode == 1 and proc.stdout == b""
    (line,) = releases.hclog_lines(proc.stderr)
    assert line["@message"] == ("vault-plugin-shim: this launcher serves a secret plugin, but Vault started it as "
                                "a database plugin (its magic cookie)")
    assert "vault plugin register ... secret myplugin" in line["fix"]
    assert not (reports / "argv").exists()


def test_the_launch_path_runs_clean_under_asan_and_ubsan(setup):
    """The launcher's own main (the part the differential test does not run: its trailer, the
    copy, sealing, the exec) built for this machine with ASan and UBSan, on a valid launch, a
    refused one, a hand run and a private-copy fallback."""
    from tests.support import native

    tmp, versions, keys, pol, reports = setup
    exe = native.build(tmp / "launcher-asan", "nv_launcher.c")
    launcher = tmp / "asan-launcher"
    launcher.write_bytes(stubs.pack_native(exe.read_bytes(), build.native_policy(pol)))
    launcher.chmod(0o755)
    one = plugin(versions, "myplugin-1.0.0", "one")
    one.write_text(one.read_text() + ("#" * 1023 + "\n") * 2500)      # over 2 MiB: copied and hashed on two threads
    releases.release(keys, one, version="1.0.0")
    releases.release(keys, plugin(versions, "myplugin-2.0.0", "two"), version="2.0.0")
    bad = versions / "myplugin-2.0.0"
    bad.write_text(bad.read_text().replace("two", "TWO"))
    asan = {"ASAN_OPTIONS": "detect_leaks=0:abort_on_error=0:exitcode=99",
            "UBSAN_OPTIONS": "halt_on_error=1:exitcode=99"}
    proc = releases.run(launcher, "x", env=env(reports, **asan))
    assert proc.returncode == 0 and proc.stdout == b"ran one x\n", proc.stderr
    assert [line["error"] for line in releases.hclog_lines(proc.stderr) if line["@level"] == "error"] == \
        ["DigestMismatchError"]
    proc = subprocess.run([str(launcher)], capture_output=True, timeout=60, env=asan)
    assert proc.returncode == 0 and b"myplugin-1.0.0: ok, version 1.0.0 (runs)" in proc.stderr, proc.stderr
    deny = gcc(tmp, "deny-memfd", DENY_MEMFD_C)
    proc = subprocess.run([str(deny), str(launcher)], capture_output=True, timeout=60, env=env(reports, **asan))
    assert proc.returncode == 0 and proc.stdout == b"ran one \n", proc.stderr
    bad.unlink()
    (versions / "myplugin-1.0.0").chmod(0o777)
    proc = releases.run(launcher, env=env(reports, **asan))
    assert proc.returncode == 1 and b"ERROR: AddressSanitizer" not in proc.stderr, proc.stderr
    assert releases.hclog_lines(proc.stderr)[-1]["error"] == "NoValidVersionError"


def test_the_python_launcher_drops_entries_it_cannot_carry_with_a_warning(setup):
    """Issue #17 case 6, for the Python-backed launcher (the native one above passes them as
    they are): an environment entry with no name (`=x`) or no `=` cannot go through
    os.execve; it used to end in a traceback (`=x`) or vanish without a word. Now the plugin
    starts with every other entry, and one WARN line names what was dropped."""
    tmp, versions, keys, pol, reports = setup
    releases.release(keys, plugin(versions, "myplugin-1.0.0", "one"), version="1.0.0")
    exe = releases.launcher(tmp, pol)
    cookie = b"VAULT_BACKEND_PLUGIN=6669da05-b1c8-4f49-97d9-c8e5bed98e20"
    kept = [b"PATH=/usr/bin:/bin", cookie, b"REPORT_DIR=" + os.fsencode(reports), b"EMPTY="]
    proc = raw_exec(tmp, os.fsencode(exe), [os.fsencode(exe)], kept[:2] + [b"=leading", b"NO_EQUALS"] + kept[2:])
    assert proc.returncode == 0, proc.stderr
    assert b"Traceback" not in proc.stderr
    received = (reports / "environ").read_bytes().split(b"\x00")[:-1]
    assert [e for e in received if e in kept] == kept and b"=leading" not in received and b"NO_EQUALS" not in received
    warns = [json.loads(line) for line in proc.stderr.decode().splitlines() if "without a NAME=" in line]
    assert len(warns) == 1 and warns[0]["@level"] == "warn", proc.stderr
    assert "'=leading'" in warns[0]["@message"] and "'NO_EQUALS'" in warns[0]["@message"]


# --- issue 20 item 2: on_refused_newer and the expiry warning, as the Python launcher does them --

def tampered_newer(versions: Path, keys) -> Path:
    """2.0.0, signed, then changed: refused (DigestMismatchError), and newer than 1.0.0."""
    v2 = plugin(versions, "myplugin-2.0.0", "two")
    releases.release(keys, v2, version="2.0.0")
    v2.write_text(v2.read_text() + "# one more line\n")
    return v2


def test_on_refused_newer_refuse_does_not_fall_back_past_a_tampered_newer_version(setup):
    tmp, versions, keys, pol, reports = setup
    releases.release(keys, plugin(versions, "myplugin-1.0.0", "one"), version="1.0.0")
    v2 = tampered_newer(versions, keys)
    exe = native_launcher(tmp, pol.replace(on_refused_newer="refuse"))
    proc = releases.run(exe, env=env(reports))
    assert proc.returncode == 1 and proc.stdout == b"", proc.stderr
    assert not (reports / "argv").exists()          # nothing ran
    lines = releases.hclog_lines(proc.stderr)
    assert [line["@level"] for line in lines] == ["error", "error"], lines
    assert lines[0]["error"] == "DigestMismatchError" and lines[0]["candidate"] == "myplugin-2.0.0"
    refusal = lines[1]      # entry._main's refusal line, field for field
    assert {k: v for k, v in refusal.items() if k != "@timestamp"} == {
        "@level": "error", "@module": "vault-plugin-shim",
        "@message": "vault-plugin-shim: refusing to start secret plugin myplugin: 1 version(s) newer than 1.0.0 are "
                    "present and refused, and this launcher's policy refuses to fall back (on_refused_newer: refuse)",
        "plugin": "myplugin", "error": "NewerVersionRefusedError",
        "reason": "1 version(s) newer than 1.0.0 are present and refused, and this launcher's policy refuses to fall "
                  "back (on_refused_newer: refuse)",
        "file": str(v2),
        "fix": "ship the newer release intact (binary, manifest and .minisig from the same release), or remove it "
               "if the older version is meant to run"}


def test_by_default_the_older_version_runs_and_the_newer_refusal_is_logged(setup):
    tmp, versions, keys, pol, reports = setup
    releases.release(keys, plugin(versions, "myplugin-1.0.0", "one"), version="1.0.0")
    v2 = tampered_newer(versions, keys)
    proc = releases.run(native_launcher(tmp, pol), env=env(reports))
    assert proc.returncode == 0 and proc.stdout == b"ran one \n", proc.stderr
    lines = releases.hclog_lines(proc.stderr)
    assert [(line["@level"], line.get("error")) for line in lines] == [("error", "DigestMismatchError"),
                                                                       ("info", None)], lines
    assert lines[0]["file"] == str(v2)
    assert lines[1]["@message"] == "vault-plugin-shim: starting secret plugin myplugin 1.0.0"


def test_a_launch_within_30_days_of_expiry_warns_and_runs(setup):
    import time

    tmp, versions, keys, pol, reports = setup
    now = int(time.time())
    one = plugin(versions, "myplugin-1.0.0", "one")
    m = releases.release(keys, one, version="1.0.0", issued=now - 60, expires=now + 10 * 86400)
    proc = releases.run(native_launcher(tmp, pol), env=env(reports))
    assert proc.returncode == 0 and proc.stdout == b"ran one \n", proc.stderr
    lines = releases.hclog_lines(proc.stderr)
    assert [line["@level"] for line in lines] == ["warn", "info"], lines
    from shim.trust.manifest import format_time

    assert {k: v for k, v in lines[0].items() if k != "@timestamp"} == {
        "@level": "warn", "@module": "vault-plugin-shim",
        "@message": f"vault-plugin-shim: secret plugin myplugin 1.0.0 expires at {format_time(m.expires_at)}, in 10.0 "
                    "days: after that no launcher starts it",
        "plugin": "myplugin", "file": str(one),
        "fix": "re-sign the same binary with a later --expires (or none) and ship the new manifest and .minisig"}
    # 60 days away: no warning
    releases.release(keys, one, version="1.0.0", issued=now - 60, expires=now + 60 * 86400)
    proc = releases.run(native_launcher(tmp, pol), env=env(reports))
    assert proc.returncode == 0 and [line["@level"] for line in releases.hclog_lines(proc.stderr)] == ["info"]


# --- issue 20 item 2: the dry mode the tools use (`L explain --json`), and `L doctor` by hand -----

def test_explain_json_by_hand_is_the_decision_and_nothing_else_writes_stdout(setup):
    tmp, versions, keys, pol, reports = setup
    releases.release(keys, plugin(versions, "myplugin-1.0.0", "one"), version="1.0.0")
    v2 = tampered_newer(versions, keys)
    exe = tmp / "refusing"
    build.write_launcher(pol.replace(on_refused_newer="refuse"), None, str(exe), native=True)
    proc = subprocess.run([str(exe), "explain", "--json"], capture_output=True, env={}, timeout=30)
    assert proc.returncode == 1 and proc.stderr == b"", proc.stderr
    doc = json.loads(proc.stdout)
    assert doc["schema"] == "vault-plugin-shim/explain/v1" and doc["kind"] == "native"
    assert doc["launcher"] == str(exe) and doc["uid"] == os.geteuid()
    assert doc["policy"]["name"] == "myplugin" and doc["policy"]["plugins_dir"] == str(versions)
    assert doc["policy"]["on_refused_newer"] == "refuse" and doc["policy"]["mode"] == "exec"
    assert doc["policy"]["key_ids"] == [keys.public.key_id_hex]
    one, two = doc["candidates"]
    assert one["verdict"] == "ok" and one["chosen"] and not one["runs"] and one["error"] is None
    assert one["version"] == "1.0.0" and one["key_id"] == keys.public.key_id_hex
    assert two["verdict"] == "refused" and two["passed_over"] and two["error"]["error"] == "DigestMismatchError"
    assert two["file"] == str(v2) and two["error"]["fix"].startswith("the binary differs")
    assert doc["chosen"] == one["file"] and doc["runs"] is None and doc["passed_over"] == [str(v2)]
    assert doc["refusal"]["error"] == "NewerVersionRefusedError" and doc["exit_status"] == 1
    assert not (reports / "argv").exists()
    # A cookie means Vault started it: the words are the plugin's args, and the plugin runs.
    proc = releases.run(native_launcher(tmp, pol), "explain", "--json", env=env(reports))
    assert proc.returncode == 0 and proc.stdout == b"ran one explain --json\n", proc.stderr
    # By hand, `doctor` and any other words explain on stderr, with the verdict as exit status.
    for args in (["doctor"], ["--version"], ["explain"], ["explain", "--json", "x"]):
        proc = subprocess.run([str(exe), *args], capture_output=True, env={}, timeout=30)
        text = proc.stderr.decode()
        assert proc.returncode == 1 and proc.stdout == b"", (args, text)
        assert "myplugin-2.0.0: refused: DigestMismatchError: is" in text
        assert "next launch refuses: NewerVersionRefusedError: 1 version(s) newer than 1.0.0" in text
    for args, status in (([], 0), (["doctor"], 1)):     # `L doctor` fails on a refused newer version
        proc = subprocess.run([str(native_launcher(tmp, pol)), *args], capture_output=True, env={}, timeout=30)
        text = proc.stderr.decode()
        assert proc.returncode == status and proc.stdout == b"", text
        assert f"next launch runs: {versions / 'myplugin-1.0.0'}" in text
        assert "fallback: 1 version(s) newer than 1.0.0 are present and refused" in text


def test_explain_json_carries_the_expiry_warning(setup):
    import time

    tmp, versions, keys, pol, reports = setup
    now = int(time.time())
    releases.release(keys, plugin(versions, "myplugin-1.0.0", "one"), version="1.0.0", issued=now - 60,
                     expires=now + 10 * 86400)
    exe = native_launcher(tmp, pol)
    proc = subprocess.run([str(exe), "explain", "--json"], capture_output=True, env={}, timeout=30)
    assert proc.returncode == 0 and proc.stderr == b""
    doc = json.loads(proc.stdout)
    assert doc["runs"] == str(versions / "myplugin-1.0.0") and doc["refusal"] is None
    assert doc["candidates"][0]["expires_soon"] is True
    warning = doc["expiry_warning"]
    assert warning["days"] == 10.0 and "in 10.0 days: after that no launcher starts it" in warning["message"]
    proc = subprocess.run([str(exe)], capture_output=True, env={}, timeout=30)
    assert proc.returncode == 0 and "in 10.0 days: after that no launcher starts it" in proc.stderr.decode()


def test_the_dry_mode_and_the_refusal_run_clean_under_asan_and_ubsan(setup):
    """`explain --json`, `doctor` by hand, the on_refused_newer refusal and the expiry warning,
    in the launcher's own main built with ASan and UBSan (leaks included)."""
    import time

    from tests.support import native

    tmp, versions, keys, pol, reports = setup
    exe = native.build(tmp / "launcher-asan", "nv_launcher.c")
    now = int(time.time())
    releases.release(keys, plugin(versions, "myplugin-1.0.0", "one"), version="1.0.0", issued=now - 60,
                     expires=now + 3 * 86400)
    tampered_newer(versions, keys)
    (versions / "caf\xe9\x01.manifest.json").write_text("{}")       # a name JSON must escape
    asan = {"ASAN_OPTIONS": "detect_leaks=1:abort_on_error=0:exitcode=99",
            "UBSAN_OPTIONS": "halt_on_error=1:exitcode=99"}
    for on_refused_newer, status in (("refuse", 1), ("fallback", 0)):
        launcher = tmp / f"asan-{on_refused_newer}"
        launcher.write_bytes(stubs.pack_native(exe.read_bytes(),
                                               build.native_policy(pol.replace(on_refused_newer=on_refused_newer))))
        launcher.chmod(0o755)
        proc = subprocess.run([str(launcher), "explain", "--json"], capture_output=True, timeout=60, env=asan)
        assert proc.returncode == status and proc.stderr == b"", proc.stderr
        doc = json.loads(proc.stdout)
        assert [c["binary"] for c in doc["candidates"]] == ["caf\xe9\x01", "myplugin-1.0.0", "myplugin-2.0.0"]
        assert (doc["expiry_warning"] is None) == (status == 1)
        proc = subprocess.run([str(launcher)], capture_output=True, timeout=60, env=asan)
        assert proc.returncode == status and b"Sanitizer" not in proc.stderr, proc.stderr
        proc = subprocess.run([str(launcher), "doctor"], capture_output=True, timeout=60, env=asan)
        assert proc.returncode == 1 and b"Sanitizer" not in proc.stderr, proc.stderr    # a refused newer fails doctor
        proc = releases.run(launcher, env=env(reports, **asan))
        assert proc.returncode == status and b"Sanitizer" not in proc.stderr, proc.stderr
        levels = [line["@level"] for line in releases.hclog_lines(proc.stderr)]
        assert levels == (["error", "error", "error"] if status else ["error", "error", "warn", "info"]), proc.stderr


def test_a_binary_that_cannot_execute_is_named_and_said_not_to_have_started(setup):
    """Issue 17, case 11: the failure after the "starting" line says that the plugin did not
    start, and names the binary (not the temporary directory) with the errno and the fix."""
    tmp, versions, keys, pol, reports = setup
    broken = versions / "myplugin-1.0.0"
    broken.write_bytes(b"\x7fELF\x02\x01\x01" + b"\0" * 57 + b"not a program")   # a truncated ELF header
    broken.chmod(0o755)
    releases.release(keys, broken, version="1.0.0")
    scratch = tmp / "scratch"
    scratch.mkdir(mode=0o700)
    proc = releases.run(native_launcher(tmp, pol), env=env(reports, TMPDIR=str(scratch)))
    assert proc.returncode == 1 and proc.stdout == b""
    lines = releases.hclog_lines(proc.stderr)
    assert [ln["@level"] for ln in lines] == ["info", "error"], lines
    assert lines[0]["@message"] == "vault-plugin-shim: starting secret plugin myplugin 1.0.0"
    failed = lines[1]
    assert failed["@message"] == "vault-plugin-shim: cannot execute the verified copy"
    assert failed["file"] == str(broken)
    assert "the plugin did not start" in failed["reason"] and failed["cause"]
    assert "built for this node" in failed["fix"]
