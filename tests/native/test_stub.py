"""The static launcher stub (shim/launch/stubs/stub.c) and its file format.

Real runs throughout: each test packs the committed stub with a small zipapp probe, starts
it as Vault would (execve with a chosen argv and environment), and the probe reports from
inside the interpreter what arrived: its own argv and environment, the context the stub
wrote, the seals on both memfds. The hostile libraries are built with gcc here, and each
is first shown to run code when the interpreter is started directly.
"""

from __future__ import annotations

import ast
import datetime
import io
import json
import os
import re
import shutil
import struct
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from shim.launch import stubs

REPO = Path(__file__).resolve().parents[2]
STUB_DIR = REPO / "shim" / "launch" / "stubs"
BUILD_STUBS = REPO / "build" / "build_stubs.sh"
PYTHON = os.path.abspath(sys.executable)  # the launchers' interpreter (absolute, like --python)
FIXED_ENV = b"LC_ALL=C.UTF-8\x00OPENSSL_CONF=/dev/null\x00"
F_SEAL_SEAL, F_SEAL_SHRINK, F_SEAL_GROW, F_SEAL_WRITE = 1, 2, 4, 8
SEALS = F_SEAL_SEAL | F_SEAL_SHRINK | F_SEAL_GROW | F_SEAL_WRITE
TIMEOUT = 120
# build_stubs.sh also builds the native launchers, whose libsodium and Nettle build_libsodium.sh
# and build_nettle.sh fetch and build on first use (then cached): a cold first run takes minutes
# on a busy 2-core machine.
BUILD_TIMEOUT = 900

# Runs inside the interpreter the stub starts. It writes what it saw to the file named by
# the first argument Vault "sent" (it learns it from the context: its own environment and
# argv are the stub's). It imports ssl, which makes OpenSSL read its config (OPENSSL_CONF).
PROBE = r'''
import os
try:  # first, before anything here opens a file that could take a free fd 0
    os.fstat(0)
    stdin_open = True
except OSError:
    stdin_open = False
import fcntl, sys
import ctxreader

def attempt(fn):
    try:
        fn()
        return "ok"
    except OSError as exc:
        return exc.errno

def reopen_and_write(fd):
    new = os.open(f"/proc/self/fd/{fd}", os.O_WRONLY)  # allowed: the seal stops the write
    try:
        os.write(new, b"x")
    finally:
        os.close(new)

flag = sys.argv[-1]
ctx_fd = int(flag[len(ctxreader.CONTEXT_FLAG):])
code_fd = int(sys.argv[0].rsplit("/", 1)[1])
argv, env, exe = ctxreader.read_context(ctx_fd)
out = {"sys_argv": sys.argv, "orig_argv": sys.orig_argv, "isolated": sys.flags.isolated,
       "environb": dict(os.environb), "ctx_argv": argv, "ctx_env": env, "exe": exe,
       "code_fd": code_fd, "ctx_fd": ctx_fd,
       "stdin_open": stdin_open}
with open("/proc/self/environ", "rb") as fh:
    out["proc_environ"] = fh.read()
for name, fd in (("code", code_fd), ("ctx", ctx_fd)):
    out[name + "_seals"] = fcntl.fcntl(fd, fcntl.F_GET_SEALS)
    out[name + "_cloexec"] = bool(fcntl.fcntl(fd, fcntl.F_GETFD) & fcntl.FD_CLOEXEC)
    out[name + "_pwrite"] = attempt(lambda fd=fd: os.pwrite(fd, b"x", 0))
    out[name + "_append"] = attempt(lambda fd=fd: os.pwrite(fd, b"x", os.fstat(fd).st_size))
    out[name + "_truncate"] = attempt(lambda fd=fd: os.ftruncate(fd, 0))
    out[name + "_reopen_and_write"] = attempt(lambda fd=fd: reopen_and_write(fd))
import ssl  # noqa: E402,F401
fd = os.open(argv[1], os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
os.write(fd, repr(out).encode())
os.close(fd)
'''

# Replaces the current process with path, argv and env given as raw bytes: entries without
# "=", duplicates and any byte but NUL, which subprocess's env mapping cannot express.
RAW_EXEC = r'''
import ast, ctypes, sys
path, argv, env = ast.literal_eval(open(sys.argv[1], "rb").read().decode())
def array(items):
    arr = (ctypes.c_char_p * (len(items) + 1))(*items)
    arr[len(items)] = None
    return arr
libc = ctypes.CDLL(None, use_errno=True)
libc.execve(path, array(argv), array(env))
sys.stderr.write(f"raw exec: execve failed: errno {ctypes.get_errno()}\n")
sys.exit(127)
'''

EVIL_C = r'''
#include <fcntl.h>
#include <unistd.h>
static void mark(void)
{
    int fd = open(MARKER, O_WRONLY | O_CREAT | O_APPEND, 0644);
    if (fd >= 0) { (void)!write(fd, "ran\n", 4); close(fd); }
}
__attribute__((constructor)) static void init(void) { mark(); }
unsigned int la_version(unsigned int v) { mark(); return v; }   /* LD_AUDIT's entry */
int OSSL_provider_init(const void *h, const void *in, const void **out, void **ctx)
{ (void)h; (void)in; (void)out; (void)ctx; mark(); return 0; }  /* an OpenSSL provider */
'''

def seccomp_wrapper(name: str, filter_lines: str) -> str:
    """C for a program that installs a seccomp filter (``filter_lines``: the sock_filter array's
    entries) and executes its arguments: a fault a real peer cannot be made to produce here."""
    return r'''
#include <errno.h>
#include <linux/filter.h>
#include <linux/seccomp.h>
#include <stddef.h>
#include <stdio.h>
#include <sys/prctl.h>
#include <sys/syscall.h>
#include <unistd.h>
int main(int argc, char **argv)
{
    struct sock_filter f[] = {@FILTER@
    };
    struct sock_fprog prog = {sizeof f / sizeof f[0], f};
    if (argc < 2 || prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0)
        || prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER, &prog)) { perror("@NAME@"); return 127; }
    execv(argv[1], argv + 1);
    perror("@NAME@: execv");
    return 127;
}
'''.replace("@FILTER@", filter_lines).replace("@NAME@", name)


# memfd_create: EPERM (a seccomp profile that denies it)
DENY_MEMFD_C = seccomp_wrapper("deny-memfd", """
        BPF_STMT(BPF_LD | BPF_W | BPF_ABS, offsetof(struct seccomp_data, nr)),
        BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, __NR_memfd_create, 0, 1),
        BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ERRNO | EPERM),
        BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ALLOW),""")


def require(tool: str, how: str) -> str:
    path = shutil.which(tool)
    if path is None:
        pytest.fail(f"{tool} is missing: {how}", pytrace=False)
    return path


def gcc(tmp: Path, name: str, source: str, *flags: str) -> Path:
    require("gcc", "apt-get install gcc (bash build/install.sh)")
    src = tmp / f"{name}.c"
    src.write_text(source)
    out = tmp / name
    subprocess.run(["gcc", "-O1", "-o", str(out), str(src), *flags], check=True, timeout=TIMEOUT)
    return out


def probe_zip() -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression=zipfile.ZIP_STORED) as zf:
        zf.writestr("__main__.py", PROBE)
        zf.writestr("ctxreader.py", (STUB_DIR / "__init__.py").read_bytes())
    return buf.getvalue()


def write_exe(path: Path | bytes, data: bytes) -> Path | bytes:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o755)
    with os.fdopen(fd, "wb") as fh:
        fh.write(data)
    return path


def launcher(tmp: Path, name: str = "launcher", prefix: list[str] | None = None,
             arch: str = "amd64") -> Path:
    data = stubs.pack(stubs.stub_bytes(arch), prefix or [PYTHON, "-I"], probe_zip())
    return write_exe(tmp / name, data)


def raw_exec(tmp: Path, path: bytes, argv: list[bytes], env: list[bytes], *,
             wrapper: list[str] = (), **kw) -> subprocess.CompletedProcess:
    """Run path with exactly this argv and env; through `wrapper` (qemu) if given."""
    if wrapper:
        path, argv = os.fsencode(wrapper[0]), [os.fsencode(w) for w in wrapper] + [path] + argv[1:]
    spec = tmp / f"spec-{len(list(tmp.glob('spec-*')))}"
    spec.write_bytes(repr((path, argv, env)).encode())
    return subprocess.run([PYTHON, "-I", "-c", RAW_EXEC, str(spec)], capture_output=True,
                          timeout=TIMEOUT, env={}, **kw)


def report(out: Path) -> dict:
    assert out.exists(), "the probe did not run"
    return ast.literal_eval(out.read_text())


def run_probe(tmp: Path, exe: Path, extra_argv: list[bytes] = (), env: list[bytes] = (),
              **kw) -> tuple[subprocess.CompletedProcess, Path]:
    out = tmp / f"report-{len(list(tmp.glob('report-*')))}"
    argv = [os.fsencode(exe), os.fsencode(out), *extra_argv]
    proc = raw_exec(tmp, os.fsencode(exe), argv, list(env), **kw)
    return proc, out


def error_line(proc: subprocess.CompletedProcess) -> dict:
    """The one hclog error line a failed start must leave, with nothing on stdout."""
    assert proc.returncode == 1, proc
    assert proc.stdout == b""
    lines = proc.stderr.decode("utf-8").splitlines()
    assert len(lines) == 1, lines
    entry = json.loads(lines[0])
    assert entry["@level"] == "error"
    assert entry["@module"] == "vault-plugin-shim"
    assert entry["@message"].startswith("vault-plugin-shim: ")
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z", entry["@timestamp"])
    when = datetime.datetime.strptime(entry["@timestamp"], "%Y-%m-%dT%H:%M:%S.%fZ")
    now = datetime.datetime.now(datetime.timezone.utc).replace(tzinfo=None)
    assert abs((now - when).total_seconds()) < 300, (entry["@timestamp"], now)
    assert entry["error"] == "StubError"
    assert entry["reason"] and entry["fix"] and entry["file"]
    return entry


# --- what the stub is ------------------------------------------------------------------------

@pytest.mark.parametrize("arch", sorted(stubs.STUB_NAMES))
def test_stub_is_a_static_executable_without_interpreter_or_dynamic_section(arch, tmp_path):
    require("readelf", "apt-get install binutils")
    require("file", "apt-get install file")
    exe = launcher(tmp_path, arch=arch)  # a whole launcher: what Vault hashes and runs
    for path in (STUB_DIR / stubs.STUB_NAMES[arch], exe):
        described = subprocess.run(["file", "-b", str(path)], capture_output=True, text=True,
                                   check=True).stdout
        assert "statically linked" in described, described
        assert "interpreter" not in described and "dynamically" not in described, described
        headers = subprocess.run(["readelf", "-lhd", str(path)], capture_output=True, text=True,
                                 check=True).stdout
        assert "EXEC (Executable file)" in headers
        assert "INTERP" not in headers and "DYNAMIC" not in headers, headers
        assert "There is no dynamic section in this file." in headers


def test_stub_links_in_nothing_that_reads_the_environment(tmp_path):
    require("nm", "apt-get install binutils")
    subprocess.run(["bash", str(BUILD_STUBS), "--symbols", str(tmp_path)], check=True,
                   capture_output=True, timeout=BUILD_TIMEOUT)
    for arch in stubs.STUB_NAMES:
        names = set(subprocess.run(["nm", "--defined-only", "-j", str(tmp_path / f"launcher-linux-{arch}")],
                                   capture_output=True, text=True, check=True).stdout.split())
        assert {"main", "__init_libc", "execve", "memfd_create"} <= names  # the table is real
        readers = {"getenv", "secure_getenv", "__secure_getenv", "setlocale", "newlocale",
                   "tzset", "__tzset", "localtime", "localtime_r", "dlopen", "__dls3"}
        assert not names & readers, names & readers


def test_rebuilding_from_source_gives_the_committed_bytes():
    proc = subprocess.run(["bash", str(BUILD_STUBS), "--check"], capture_output=True, text=True,
                          timeout=BUILD_TIMEOUT)
    assert proc.returncode == 0, proc.stderr
    for name in (*stubs.STUB_NAMES.values(), *stubs.NATIVE_STUB_NAMES.values()):
        assert f"{name} matches" in proc.stdout


def test_check_fails_when_a_committed_stub_differs(tmp_path):
    # A copy of the recipe and the stubs in another directory: the untouched stub must still
    # match (no build path leaks into the bytes), the altered one must not.
    (tmp_path / "build").mkdir()
    shutil.copy(BUILD_STUBS, tmp_path / "build")
    shutil.copy(BUILD_STUBS.parent / "build_libsodium.sh", tmp_path / "build")  # the native launchers' libsodium
    for nettle in ("build_nettle.sh", "nettle-arm64-musl-getauxval.patch", "debian_source.sh"):  # and Nettle
        shutil.copy(BUILD_STUBS.parent / nettle, tmp_path / "build")
    shutil.copytree(STUB_DIR, tmp_path / "shim" / "launch" / "stubs",
                    ignore=shutil.ignore_patterns("__pycache__"))
    altered = tmp_path / "shim" / "launch" / "stubs" / "launcher-linux-amd64"
    data = bytearray(altered.read_bytes())
    data[len(data) // 2] ^= 1
    altered.write_bytes(bytes(data))
    proc = subprocess.run(["bash", str(tmp_path / "build" / "build_stubs.sh"), "--check"],
                          capture_output=True, text=True, timeout=BUILD_TIMEOUT)
    assert proc.returncode == 1
    assert "launcher-linux-amd64 differs from a rebuild" in proc.stderr
    assert "launcher-linux-arm64 matches" in proc.stdout
    assert "launcher-native-linux-amd64 matches" in proc.stdout


# --- what arrives where ---------------------------------------------------------------------

def test_argv_and_environment_arrive_byte_for_byte(tmp_path):
    exe = launcher(tmp_path)
    argv_extra = [b"", b"\xff\xfe not utf-8", b" spaced  out ", b"caf\xc3\xa9", b"\x01\x7f",
                  b"--vault-plugin-shim-context-fd=99", b"/proc/self/fd/0"]
    env = [b"PLAIN=1", b"EMPTY=", b"=leading-equals", b"NO_EQUALS_SIGN", b"DUP=first",
           b"DUP=second", b"ODD=\x01\x02\x7f\xff\xfe\xc3(", b"UTF8=\xe2\x82\xac",
           b"LD_PRELOAD=/nonexistent.so", b"PYTHONPATH=/nonexistent", b"A=b=c", b"TAB=\t\n"]
    proc, out = run_probe(tmp_path, exe, argv_extra, env)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == b"" and proc.stderr == b""
    seen = report(out)
    assert seen["ctx_argv"] == [os.fsencode(exe), os.fsencode(out), *argv_extra]
    assert seen["ctx_env"] == env
    assert seen["exe"] == os.fsencode(os.path.realpath(exe))


def test_a_huge_environment_arrives_byte_for_byte(tmp_path):
    exe = launcher(tmp_path)
    env = [f"VAR_{i:05d}=".encode() + bytes([i % 255 + 1]) * (i % 300) for i in range(4000)]
    env.append(b"BIG=" + b"x" * (128 * 1024 - 6))  # just under MAX_ARG_STRLEN (128 KiB)
    proc, out = run_probe(tmp_path, exe, [b"y" * 100_000], env)
    assert proc.returncode == 0, proc.stderr
    seen = report(out)
    assert seen["ctx_env"] == env
    assert seen["ctx_argv"][2] == b"y" * 100_000


def test_the_interpreter_sees_only_the_fixed_environment(tmp_path):
    exe = launcher(tmp_path)
    hostile = [b"PYTHONPATH=/tmp", b"PYTHONSTARTUP=/tmp/x.py", b"PYTHONHOME=/nonexistent",
               b"LANG=de_DE.ISO-8859-1", b"LC_CTYPE=POSIX", b"PATH=/nonexistent", b"HOME=/"]
    proc, out = run_probe(tmp_path, exe, [], hostile)
    assert proc.returncode == 0, proc.stderr
    seen = report(out)
    assert seen["proc_environ"] == FIXED_ENV
    # and Python added nothing (no LC_CTYPE)
    assert seen["environb"] == {b"LC_ALL": b"C.UTF-8", b"OPENSSL_CONF": b"/dev/null"}
    assert seen["isolated"] == 1
    code, ctx = f"/proc/self/fd/{seen['code_fd']}", f"{stubs.CONTEXT_FLAG}{seen['ctx_fd']}"
    assert seen["orig_argv"] == [PYTHON, "-I", code, ctx]
    assert seen["sys_argv"] == [code, ctx]
    assert seen["ctx_env"] == hostile


@pytest.fixture(scope="module")
def evil(tmp_path_factory):
    """A shared library whose code, wherever the loader or OpenSSL runs it, appends to a
    marker file: as an LD_PRELOAD/LD_AUDIT object, an OpenSSL provider module, and (built as
    a filter over the real one) a library of the interpreter found through LD_LIBRARY_PATH."""
    tmp = tmp_path_factory.mktemp("evil")
    marker = tmp / "marker"
    lib = gcc(tmp, "evil.so", EVIL_C, "-shared", "-fPIC", f'-DMARKER="{marker}"')
    # A library the interpreter really loads: the first DT_NEEDED it gets from ldd that is
    # not libc or the loader, replaced by a filter that forwards to the real one.
    ldd = subprocess.run(["ldd", PYTHON], capture_output=True, text=True, check=True).stdout
    found = [m.groups() for m in re.finditer(r"^\s*(\S+) => (/\S+)", ldd, re.M)
             if not m.group(1).startswith(("libc.so", "ld-linux"))]
    if not found:
        pytest.fail(f"no shared library of {PYTHON} to shadow through LD_LIBRARY_PATH: {ldd}")
    soname, real = found[-1]
    libdir = tmp / "libdir"
    libdir.mkdir()
    gcc(libdir, soname, EVIL_C, "-shared", "-fPIC", f'-DMARKER="{marker}"',
        f"-Wl,-soname,{soname}", f"-Wl,--filter={real}")
    conf = tmp / "openssl.cnf"
    conf.write_text("openssl_conf = openssl_init\n[openssl_init]\nproviders = provider_sect\n"
                    "[provider_sect]\ndefault = default_sect\nevil = evil_sect\n"
                    "[default_sect]\nactivate = 1\n"
                    f"[evil_sect]\nmodule = {lib}\nactivate = 1\n")
    return {"marker": marker, "LD_PRELOAD": str(lib), "LD_AUDIT": str(lib),
            "LD_LIBRARY_PATH": str(libdir), "OPENSSL_CONF": str(conf)}


@pytest.mark.parametrize("variable", ["LD_PRELOAD", "LD_AUDIT", "LD_LIBRARY_PATH", "OPENSSL_CONF"])
def test_loader_and_openssl_variables_run_nothing(variable, evil, tmp_path):
    marker = evil["marker"]
    setting = f"{variable}={evil[variable]}".encode()
    # The library is live: the interpreter started directly runs it.
    marker.unlink(missing_ok=True)
    direct = subprocess.run([PYTHON, "-I", "-c", "import ssl"], env={variable: evil[variable]},
                            capture_output=True, timeout=TIMEOUT)
    assert marker.exists(), (f"control: {variable} did not run the library when the interpreter "
                             f"was started directly: {direct.stderr!r}")
    # Through the stub it never runs, and the code does.
    marker.unlink()
    proc, out = run_probe(tmp_path, launcher(tmp_path), [], [setting, b"OTHER=1"])
    assert proc.returncode == 0, proc.stderr
    assert not marker.exists(), f"{variable} ran code through the stub"
    seen = report(out)
    assert seen["proc_environ"] == FIXED_ENV
    assert seen["ctx_env"] == [setting, b"OTHER=1"]  # still handed on, for the plugin


def test_the_interpreters_openssl_reads_no_configuration_file(tmp_path):
    """Issue 17, case 2: OpenSSL reads its compiled-in openssl.cnf when it starts (the
    interpreter's ssl module: /usr/lib/ssl/openssl.cnf; cryptography's wheel:
    /opt/pyca/cryptography/openssl/openssl.cnf), before any manifest is read, and a provider
    named there runs code in the launcher. The stub gives the interpreter an empty one."""
    strace = require("strace", "apt-get install strace")
    exe = launcher(tmp_path)
    log = tmp_path / "strace.log"
    out = tmp_path / "report-strace"
    spec = tmp_path / "spec-strace"
    spec.write_bytes(repr((os.fsencode(exe), [os.fsencode(exe), os.fsencode(out)], [b"OTHER=1"])).encode())
    proc = subprocess.run([strace, "-f", "-qq", "-e", "trace=open,openat,openat2", "-o", str(log),
                           PYTHON, "-I", "-c", RAW_EXEC, str(spec)], capture_output=True, timeout=TIMEOUT, env={})
    assert proc.returncode == 0, proc.stderr
    assert report(out)["environb"][b"OPENSSL_CONF"] == b"/dev/null"
    opened = log.read_text()
    # Control: the probe's `import ssl` started OpenSSL, which opened its configuration.
    assert '"/dev/null"' in opened, opened[-2000:]
    assert "openssl.cnf" not in opened, [ln for ln in opened.splitlines() if "openssl.cnf" in ln]
    # And cryptography's OpenSSL, which the exec launcher imports, likewise:
    direct = subprocess.run([strace, "-f", "-qq", "-e", "trace=open,openat", "-o", str(tmp_path / "direct.log"),
                             PYTHON, "-I", "-c", "import cryptography.hazmat.primitives.asymmetric.ed25519 as e; "
                             "e.Ed25519PrivateKey.generate()"], env={"OPENSSL_CONF": "/dev/null"},
                            capture_output=True, timeout=TIMEOUT)
    assert direct.returncode == 0, direct.stderr
    assert "openssl.cnf" not in (tmp_path / "direct.log").read_text()


def test_both_memfds_are_sealed_and_inherited(tmp_path):
    proc, out = run_probe(tmp_path, launcher(tmp_path))
    assert proc.returncode == 0, proc.stderr
    seen = report(out)
    for name in ("code", "ctx"):
        assert seen[f"{name}_seals"] & SEALS == SEALS, (name, seen[f"{name}_seals"])
        assert seen[f"{name}_cloexec"] is False
        for attempt in ("pwrite", "append", "truncate", "reopen_and_write"):
            assert seen[f"{name}_{attempt}"] == 1, (name, attempt, seen[f"{name}_{attempt}"])  # EPERM
    assert min(seen["code_fd"], seen["ctx_fd"]) >= 3


def test_closed_stdio_stays_closed_and_memfds_land_above_it(tmp_path):
    exe = launcher(tmp_path)
    proc, out = run_probe(tmp_path, exe)
    assert report(out)["stdin_open"] is True  # the probe can tell
    proc, out = run_probe(tmp_path, exe, preexec_fn=lambda: os.close(0))
    assert proc.returncode == 0, proc.stderr
    seen = report(out)
    assert seen["stdin_open"] is False
    assert min(seen["code_fd"], seen["ctx_fd"]) >= 3


def test_the_real_path_is_reported_through_a_symlink_a_relative_path_and_fexecve(tmp_path):
    exe = launcher(tmp_path)
    real = os.fsencode(os.path.realpath(exe))
    link = tmp_path / "elsewhere" / "plugin-name"
    link.parent.mkdir()
    link.symlink_to(exe)
    proc, out = run_probe(tmp_path, link)
    assert proc.returncode == 0, proc.stderr
    assert report(out)["exe"] == real
    assert report(out)["ctx_argv"][0] == os.fsencode(link)

    out = tmp_path / "relative-report"
    proc = raw_exec(tmp_path, b"./launcher", [b"./launcher", os.fsencode(out)], [], cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert report(out)["exe"] == real

    out = tmp_path / "fexecve-report"
    script = ("import os, sys\nfd = os.open(sys.argv[1], os.O_RDONLY)\n"
              "os.execve(fd, ['vault-gave-this', sys.argv[2]], {'K': 'V'})\n")
    proc = subprocess.run([PYTHON, "-I", "-c", script, str(link), str(out)], capture_output=True,
                          timeout=TIMEOUT)
    assert proc.returncode == 0, proc.stderr
    seen = report(out)
    assert seen["exe"] == real
    assert seen["ctx_argv"] == [b"vault-gave-this", os.fsencode(out)]
    assert seen["ctx_env"] == [b"K=V"]


# --- refusals ----------------------------------------------------------------------------

def _good(tmp_path) -> tuple[bytes, int, int, int, int]:
    data = launcher(tmp_path, "good").read_bytes()
    _, mo, ml, co, cl = stubs.TRAILER.unpack_from(data, len(data) - 40)
    return data, mo, ml, co, cl


def _retrailer(data: bytes, *fields: int, magic: bytes = stubs.TRAILER_MAGIC) -> bytes:
    return data[:-40] + stubs.TRAILER.pack(magic, *fields)


def _bad_meta(data: bytes, mo: int, meta: bytes, cl: int) -> bytes:
    code = data[-40 - cl:-40]
    return data[:mo] + meta + code + stubs.TRAILER.pack(stubs.TRAILER_MAGIC, mo, len(meta),
                                                         mo + len(meta), cl)


CORRUPTIONS = {
    "bare stub": (lambda d, mo, ml, co, cl: d[:mo], "bad magic"),
    "bad magic": (lambda d, mo, ml, co, cl: _retrailer(d, mo, ml, co, cl, magic=b"VPSHIM\x00\x02"),
                  "bad magic"),
    "truncated file": (lambda d, mo, ml, co, cl: d[:-100], "bad magic"),
    "code cut, trailer kept": (lambda d, mo, ml, co, cl: d[:co + cl // 2] + d[-40:],
                               "code does not end right at the trailer"),
    "code_length too large": (lambda d, mo, ml, co, cl: _retrailer(d, mo, ml, co, cl + 1),
                              "code does not end right at the trailer"),
    "meta_offset past the end": (lambda d, mo, ml, co, cl: _retrailer(d, 2**64 - 1, ml, co, cl),
                                 "meta_offset is outside the file"),
    "meta_offset zero": (lambda d, mo, ml, co, cl: _retrailer(d, 0, ml, co, cl),
                         "meta_offset is outside the file"),
    "meta_length wraps": (lambda d, mo, ml, co, cl: _retrailer(d, mo, 2**64 - mo + 8, 8, cl),
                          "meta runs past the trailer"),
    "gap after meta": (lambda d, mo, ml, co, cl: _retrailer(d, mo, ml - 1, co, cl),
                       "code does not start right after meta"),
    "meta without final NUL": (lambda d, mo, ml, co, cl: _bad_meta(d, mo, PYTHON.encode() + b"\x00-I", cl),
                               "not NUL-terminated"),
    "empty meta string": (lambda d, mo, ml, co, cl: _bad_meta(d, mo, PYTHON.encode() + b"\x00\x00", cl),
                          "an empty string"),
    "relative interpreter": (lambda d, mo, ml, co, cl: _bad_meta(d, mo, b"python3\x00-I\x00", cl),
                             "not absolute"),
    "too many flags": (lambda d, mo, ml, co, cl: _bad_meta(d, mo, PYTHON.encode() + b"\x00" + b"-I\x00" * 16, cl),
                       "more than 16 strings"),
}


@pytest.mark.parametrize("case", sorted(CORRUPTIONS))
def test_a_damaged_launcher_fails_with_one_hclog_line(case, tmp_path):
    corrupt, reason = CORRUPTIONS[case]
    bad = write_exe(tmp_path / "bad-launcher", corrupt(*_good(tmp_path)))
    proc, out = run_probe(tmp_path, bad)
    entry = error_line(proc)
    assert reason in entry["reason"], entry
    assert entry["file"] == os.path.realpath(bad)
    assert "rebuild the launcher" in entry["fix"]
    assert not out.exists()
    with pytest.raises(stubs.StubError, match=re.escape(reason)):
        stubs.unpack(bad.read_bytes())  # the Python reader agrees


def test_a_code_region_that_is_not_a_zip_is_refused_not_run_as_source(tmp_path):
    """Issue 17, case 14: the interpreter would run such a file as Python source."""
    marker = tmp_path / "ran"
    source = f"open({str(marker)!r}, 'w').write('ran')\n".encode()
    exe = write_exe(tmp_path / "launcher", stubs.pack(stubs.stub_bytes(), [PYTHON, "-I"], source))
    proc = raw_exec(tmp_path, os.fsencode(exe), [os.fsencode(exe)], [])
    assert "not a zip archive" in error_line(proc)["reason"]
    assert not marker.exists()


def test_a_missing_interpreter_fails_with_one_hclog_line(tmp_path):
    exe = launcher(tmp_path, prefix=["/nonexistent/bin/python3", "-I"])
    proc, out = run_probe(tmp_path, exe)
    entry = error_line(proc)
    assert entry["file"] == "/nonexistent/bin/python3"
    assert entry["cause"] == "No such file or directory"
    assert "--python" in entry["fix"]
    assert not out.exists()


def test_a_refused_memfd_fails_closed_with_one_hclog_line(tmp_path):
    deny = gcc(tmp_path, "deny-memfd", DENY_MEMFD_C)
    exe = launcher(tmp_path)
    out = tmp_path / "report"
    proc = subprocess.run([str(deny), str(exe), str(out)], capture_output=True, timeout=TIMEOUT)
    entry = error_line(proc)
    assert entry["reason"] == "memfd_create was refused"
    assert entry["cause"] == "Operation not permitted"
    assert entry["file"] == os.path.realpath(exe)
    assert not out.exists()


def test_the_error_line_is_valid_json_for_any_path(tmp_path):
    odd = os.fsencode(os.path.realpath(tmp_path)) + b'/q"uote\\back\nnew\xff\xc3\xa9 launcher'
    data = stubs.stub_bytes()  # a bare stub: bad magic, so the line names this path
    write_exe(odd, data)
    proc = raw_exec(tmp_path, odd, [odd], [])
    entry = error_line(proc)
    assert entry["file"] == odd.decode("utf-8", "replace")
    assert "bad magic" in entry["reason"]


# --- arm64, under qemu-user ----------------------------------------------------------------

def test_the_arm64_stub_runs_under_qemu(tmp_path):
    qemu = require("qemu-aarch64-static", "apt-get install qemu-user-static (bash build/install.sh)")
    exe = launcher(tmp_path, arch="arm64")
    env = [b"A=1", b"ODD=\xff", b"EMPTY=", b"LD_PRELOAD=/nonexistent.so"]
    proc, out = run_probe(tmp_path, exe, [b"\xfe", b""], env, wrapper=[qemu])
    assert proc.returncode == 0, proc.stderr
    seen = report(out)
    assert seen["ctx_argv"][2:] == [b"\xfe", b""]
    assert sorted(seen["ctx_env"]) == sorted(env)  # qemu-user hands the guest env reversed
    assert seen["exe"] == os.fsencode(os.path.realpath(exe))
    assert seen["proc_environ"] == FIXED_ENV
    assert seen["code_seals"] & SEALS == SEALS
    bad = write_exe(tmp_path / "bad-arm64", stubs.stub_bytes("arm64"))
    proc = subprocess.run([qemu, str(bad)], capture_output=True, timeout=TIMEOUT, env={})
    assert "bad magic" in error_line(proc)["reason"]


# --- the Python side of the format --------------------------------------------------------

def test_pack_and_unpack_round_trip_deterministically():
    stub, code = stubs.stub_bytes(), probe_zip()
    data = stubs.pack(stub, [PYTHON, "-I", "-S"], code)
    assert data == stubs.pack(stub, [PYTHON, "-I", "-S"], code)
    assert data.startswith(stub) and data.endswith(stubs.TRAILER.pack(
        stubs.TRAILER_MAGIC, len(stub), len(PYTHON) + 7, len(stub) + len(PYTHON) + 7, len(code)))
    assert stubs.unpack(data) == ([PYTHON, "-I", "-S"], code, len(stub))


@pytest.mark.parametrize("prefix, reason", [
    ([], "empty"), (["python3", "-I"], "not an absolute path"), (["/usr/bin/python3", ""], "empty"),
    (["/usr/bin/py\x00thon"], "NUL"), (["/usr/bin/python3"] + ["-I"] * 16, "more than 16"),
    (["/" + "p" * 4096], "more than 4096"),
])
def test_pack_refuses_a_prefix_the_stub_would_refuse(prefix, reason):
    with pytest.raises(stubs.StubError, match=reason):
        stubs.pack(stubs.stub_bytes(), prefix, b"PK")


def test_pack_refuses_a_non_elf_stub_and_empty_code():
    with pytest.raises(stubs.StubError, match="not an ELF"):
        stubs.pack(b"#!/bin/sh\n", [PYTHON], b"PK")
    with pytest.raises(stubs.StubError, match="code archive is empty"):
        stubs.pack(stubs.stub_bytes(), [PYTHON], b"")


def test_unpack_refuses_a_file_that_does_not_start_with_the_stub():
    data = stubs.pack(stubs.stub_bytes(), [PYTHON], b"PK")
    with pytest.raises(stubs.StubError, match="ELF stub"):
        stubs.unpack(b"#" + data[1:])
    with pytest.raises(stubs.StubError, match="shorter than its trailer"):
        stubs.unpack(data[-39:])


def test_stub_bytes_names_what_exists_for_an_unknown_arch():
    with pytest.raises(stubs.StubError) as info:
        stubs.stub_bytes("riscv64")
    assert "linux/riscv64" in str(info.value)
    assert "linux/amd64, linux/arm64 only" in str(info.value)
    assert "--arch amd64 or --arch arm64" in info.value.fix


def _memfd(data: bytes) -> int:
    fd = os.memfd_create("test-context")
    os.write(fd, data)
    return fd


def _context(argv, env, exe) -> bytes:
    def strings(items):
        return struct.pack("<I", len(items)) + b"".join(struct.pack("<I", len(s)) + s for s in items)
    return stubs.CONTEXT_MAGIC + strings(argv) + strings(env) + struct.pack("<I", len(exe)) + exe


def test_read_context_reads_the_format_and_leaves_the_fd_alone():
    fd = _memfd(_context([b"a", b""], [b"K=V", b"\xff"], b"/x"))
    try:
        os.lseek(fd, 3, os.SEEK_SET)
        assert stubs.read_context(fd) == ([b"a", b""], [b"K=V", b"\xff"], b"/x")
        assert os.lseek(fd, 0, os.SEEK_CUR) == 3
    finally:
        os.close(fd)


@pytest.mark.parametrize("data, reason", [
    (b"VPCTX\x00\x01\x01" + b"\x00" * 12, "bad magic"),
    (_context([b"a"], [], b"/x")[:-1], "truncated"),
    (_context([b"a"], [], b"/x")[:10], "truncated"),
    (_context([b"a"], [], b"/x") + b"!", "1 trailing bytes"),
    (stubs.CONTEXT_MAGIC + struct.pack("<I", 2**32 - 1), "truncated"),
])
def test_read_context_refuses_a_malformed_context(data, reason):
    fd = _memfd(data)
    try:
        with pytest.raises(stubs.StubError, match=reason):
            stubs.read_context(fd)
    finally:
        os.close(fd)


def test_read_context_names_a_bad_descriptor():
    r, w = os.pipe()
    os.close(r)
    os.close(w)
    with pytest.raises(stubs.StubError, match=f"fd {r}") as info:
        stubs.read_context(r)
    assert isinstance(info.value.__cause__, OSError)
