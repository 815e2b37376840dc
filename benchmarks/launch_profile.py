"""Where a launch's time goes, exec and proxy mode, and what candidate changes would save.

    python -m benchmarks.launch_profile [--rounds 9] [--pad-mb N] [--quick]
    python -m benchmarks.launch_profile --gopeer-mb 50 [--rounds 5]

A small host (this module) starts each target as OpenBao does: the go-plugin magic cookie,
``PLUGIN_PROTOCOL_VERSIONS=5``, an AutoMTLS client certificate, a private TMPDIR; it times
spawn -> the handshake line on stdout (wall), and sums the CPU time of every task of the
process tree at that moment (``/proc/*/task/*/schedstat``, nanoseconds: less sensitive to a
busy machine than wall time). The plugin is the demo OpenBao secrets engine (~12 MB, see
benchmarks/baostage.py); direct is that binary itself.

Targets, measured in interleaved rounds:

* ``direct``: the Go plugin.
* ``<mode>``: the launcher exactly as ``vault-plugin-shim launcher build`` made it.
* ``<mode>-timed``: the same code with a ``__main__`` that timestamps each step
  (``time.monotonic``, one system-wide clock, so the host's spawn time compares).
* variants, hand-built from the real launcher's bytes (stub, flags and zip repacked with
  ``shim.launch.stubs.pack``; nothing in ``shim/launch`` changes): ``<mode>-src`` (no
  bytecode: zipimport compiles every source at each start), ``<mode>-pyc`` (unchecked-hash
  ``.pyc`` beside each source: the CLI's own when it adds them), ``<mode>-S`` (``.pyc`` and
  ``-I -S``, the interpreter's site-packages put on ``sys.path`` by ``__main__``: no ``site``
  processing, no ``.pth`` files), ``<mode>-src-S``.

Baselines of the interpreter alone (spawn -> exit): ``python -I -c pass``, ``python -I -S -c
pass``, and the stub with a zip whose ``__main__`` only exits. One run per mode with
``-X importtime`` gives the import tree (top-level cumulative times, compile included).
"""

from __future__ import annotations

import argparse
import ast
import io
import json
import os
import resource
import select
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from benchmarks import baostage as S  # noqa: E402
from shim.demo.bao import descendants  # noqa: E402
from shim.goplugin.vault import BACKEND_COOKIE as COOKIE  # noqa: E402
from shim.launch import stubs  # noqa: E402

MODES = ("exec", "proxy")
CANDIDATES = ("src", "pyc", "S", "src-S")
BASELINES = ("python -I -c pass", "python -I -S -c pass", "stub + empty zip __main__")
EPOCH = (1980, 1, 1, 0, 0, 0)
MARK = "VPS-PROFILE "

# The instrumented __main__: the same call as the generated one, with every step of the
# launch path wrapped in a timer. It reports on stderr right before exec (exec mode) or
# right after the handshake line (proxy mode).
TIMED_MAIN = '''\
import time as _t
_T0 = _t.monotonic()
import os as _os
import sys as _sys
POLICY = {policy!r}
MODE = {mode!r}
_SITE = {site!r}
if _SITE is not None:
    _sys.path.extend(_SITE)
_M = [("main", _T0)]
def _mark(name):
    _M.append((name, _t.monotonic()))
def _emit():
    _os.write(2, ({mark!r} + repr(_M) + "\\n").encode())
def _wrap(owner, attr, label, emit_before=False, emit_after=False):
    orig = getattr(owner, attr)
    def timed(*a, **k):
        _mark(label + ">")
        if emit_before:
            _emit()
        try:
            return orig(*a, **k)
        finally:
            _mark(label + "<")
            if emit_after:
                _emit()
    setattr(owner, attr, timed)
from shim.launch.entry import main_from_stub
_mark("import-entry")
import shim.launch.memexec as _X
import shim.launch.sealed as _S
import shim.launch.stubs as _ST
_wrap(_ST, "read_context", "context")
_wrap(_S, "select", "select")
_wrap(_X, "to_memfd", "memfd-copy")
_wrap(_S, "check_digest", "sha256")
_wrap(_X, "fexecve", "exec", emit_before=True)
if MODE == "proxy":
    import shim.launch.proxy as _P
    _mark("import-proxy")
    import shim.launch.child as _C
    import shim.goplugin.mtls as _TLS
    _wrap(_TLS, "cert_der_from_pem", "x509-parse")
    _wrap(_P, "Janitor", "janitor-start")
    _wrap(_TLS, "generate_identity", "tls-identity")
    _wrap(_P, "BrokerBridge", "tls-contexts")
    _wrap(_C.Child, "start", "child-handshake")
    _wrap(_P.Proxy, "_check_child", "health-check")
    _wrap(_P, "ServerFront", "front")
    _wrap(_P.Proxy, "announce", "announce", emit_after=True)
    import shim.goplugin.janitor as _J
    _wrap(_J.Janitor, "check", "janitor-ack")
if __name__ == "__main__":
    raise SystemExit(main_from_stub(POLICY, MODE))
'''

# What a launcher built with -S would need: its __main__ puts the interpreter's
# site-packages on sys.path itself (found at build time), then runs as usual.
S_MAIN_PREFIX = "import sys as _sys\n_sys.path.extend({site!r})\n"
EMPTY_MAIN = "import os, time\nos.write(1, (repr(time.monotonic()) + '\\n').encode())\n"


# --- building the variants ------------------------------------------------------------------

def site_dirs(python: str) -> list[str]:
    """The interpreter's site-packages directories (what ``site`` would add)."""
    out = subprocess.run([python, "-I", "-c", "import site, json; print(json.dumps(site.getsitepackages()))"],
                         capture_output=True, text=True, check=True)
    return json.loads(out.stdout)


def _zip(files: list[tuple[str, bytes]]) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression=zipfile.ZIP_STORED) as zf:
        for name, data in sorted(files):
            info = zipfile.ZipInfo(name, date_time=EPOCH)
            info.create_system = 3
            info.external_attr = 0o100644 << 16
            zf.writestr(info, data)
    return buf.getvalue()


def compile_unchecked(name: str, source: bytes, workdir: Path, python: str) -> bytes:
    """An unchecked-hash .pyc of ``source`` compiled by ``python`` (the target interpreter)."""
    src = workdir / "src.py"
    out = workdir / "out.pyc"
    src.write_bytes(source)
    subprocess.run([python, "-I", "-c",
                    "import py_compile, sys; py_compile.compile(sys.argv[1], cfile=sys.argv[2], dfile=sys.argv[3], "
                    "doraise=True, invalidation_mode=py_compile.PycInvalidationMode.UNCHECKED_HASH)",
                    str(src), str(out), name], check=True)
    return out.read_bytes()


def repack(src: Path, dest: Path, *, strip_pyc: bool = False, site: list[str] | None = None) -> Path:
    """A copy of the launcher ``src``: without its bytecode (``strip_pyc``), or started with
    ``-S`` and ``site`` put on ``sys.path`` by its ``__main__``."""
    data = src.read_bytes()
    prefix, code, stub_len = stubs.unpack(data)
    with zipfile.ZipFile(io.BytesIO(code)) as zf:
        files = [(n, zf.read(n)) for n in zf.namelist()]
    if strip_pyc:
        files = [(n, d) for n, d in files if not n.endswith(".pyc")]
    if site is not None:
        files = [(n, (S_MAIN_PREFIX.format(site=site).encode() + d) if n == "__main__.py" else d) for n, d in files]
        prefix = [*prefix, "-S"]
    dest.write_bytes(stubs.pack(data[:stub_len], prefix, _zip(files)))
    dest.chmod(0o755)
    return dest


def gopeer_handshake(size_mb: int = 50, rounds: int = 5, iterations: int = 6) -> dict:
    """benchmarks.launch's measurement (go-plugin 1.0.1 host, which hashes the file it runs,
    as Vault does; launch -> handshake) for direct, the exec launcher as built, and the
    ``-src`` and ``-S`` variants."""
    from tests.support import gopeer
    from tests.support import releases as R

    gopeer.require_go()
    with tempfile.TemporaryDirectory(prefix="vps-gph-") as tmp:
        tmp = Path(tmp)
        host = gopeer.build_host(tmp / "bin", cache_dir=tmp / "cache")
        versions = tmp / "versions"
        versions.mkdir(mode=0o755)
        plugin = versions / "myplugin-1.0.0"
        shutil.copy(gopeer.build_plugin(tmp / "bin", "1.0.0", 2, cache_dir=tmp / "cache"), plugin)
        gopeer.pad(plugin, size_mb * 1024 * 1024, fill="random")
        os.chmod(plugin, 0o755)
        keys = R.new_keys()
        R.release(keys, plugin, version="1.0.0")
        built = R.launcher(tmp, R.policy(versions, keys))
        python = stubs.unpack(built.read_bytes())[0][0]
        targets = {"direct": plugin, "exec": built,
                   "exec-src": repack(built, tmp / "launcher-src", strip_pyc=True),
                   "exec-S": repack(built, tmp / "launcher-S", site=site_dirs(python))}
        sock = tmp / "sock"
        sock.mkdir()
        samples: dict[str, list[float]] = {t: [] for t in targets}
        for _ in range(rounds):
            for name, target in targets.items():
                res = gopeer.run_host(host, target, "bench", iterations=iterations, sha256=gopeer.sha256_file(target),
                                      host_env={"TMPDIR": str(sock)}, timeout=300)
                if not res.ok:
                    raise S.StageError(res.describe())
                samples[name] += [it["handshake_ms"] for it in res.results]
    return {"size_mb": size_mb, "runs": rounds * iterations, **{f"{t}_ms": S.median(v) for t, v in samples.items()}}


class Variants:
    """The launcher files of every target, written next to the CLI-built ones (the
    policy's relative plugins directory is resolved from the launcher's own path).

    Whatever the CLI put in the archive, ``-src`` is it without bytecode (every start
    compiles the sources, as launchers did before they carried .pyc) and ``-pyc`` is it with
    unchecked-hash bytecode (the CLI's own, or compiled here by the target interpreter when
    the CLI added none); ``-S`` and the timed variants start from ``-pyc``."""

    def __init__(self, image: S.Image, workdir: Path):
        self.image = image
        self.paths: dict[str, Path] = {"direct": image.files["direct"]}
        self.pyc_reproducible: bool | None = None
        self.pyc_from_cli = {}
        workdir.mkdir(parents=True, exist_ok=True)
        for mode in MODES:
            data = image.files[mode].read_bytes()
            prefix, code, stub_len = stubs.unpack(data)
            stub = data[:stub_len]
            python, flags = prefix[0], prefix[1:]
            self.python = python
            site = site_dirs(python)
            with zipfile.ZipFile(io.BytesIO(code)) as zf:
                files = [(n, zf.read(n)) for n in zf.namelist()]
            main = dict(files)["__main__.py"].decode()
            policy = None
            for node in ast.parse(main).body:
                if isinstance(node, ast.Assign) and getattr(node.targets[0], "id", None) == "POLICY":
                    policy = ast.literal_eval(node.value)
            sources = [(n, d) for n, d in files if not n.endswith(".pyc") and n != "__main__.py"]
            pycs = [(n, d) for n, d in files if n.endswith(".pyc") and n != "__main__.pyc"]
            self.pyc_from_cli[mode] = bool(pycs)
            if not pycs:
                pycs = [(n + "c", compile_unchecked(n, d, workdir, python)) for n, d in sources if n.endswith(".py")]
                again = [(n + "c", compile_unchecked(n, d, workdir, python)) for n, d in sources if n.endswith(".py")]
                self.pyc_reproducible = pycs == again

            def write(label: str, members, argv_prefix) -> None:
                path = image.dir / f"variant-{label}"
                path.write_bytes(stubs.pack(stub, argv_prefix, _zip(members)))
                path.chmod(0o755)
                self.paths[label] = path

            self.paths[mode] = image.files[mode]
            plain_main = [("__main__.py", main.encode())]
            write(f"{mode}-src", sources + plain_main, [python, *flags])
            write(f"{mode}-pyc", sources + pycs + plain_main, [python, *flags])
            write(f"{mode}-importtime", sources + pycs + plain_main, [python, *flags, "-X", "importtime"])
            s_main = (S_MAIN_PREFIX.format(site=site) + main).encode()
            write(f"{mode}-S", sources + pycs + [("__main__.py", s_main)], [python, *flags, "-S"])
            write(f"{mode}-src-S", sources + [("__main__.py", s_main)], [python, *flags, "-S"])
            timed = TIMED_MAIN.format(policy=policy, mode=mode, site=None, mark=MARK)
            write(f"{mode}-timed", sources + pycs + [("__main__.py", timed.encode())], [python, *flags])
            timed_s = TIMED_MAIN.format(policy=policy, mode=mode, site=site, mark=MARK)
            write(f"{mode}-timed-S", sources + pycs + [("__main__.py", timed_s.encode())], [python, *flags, "-S"])
        data = image.files["exec"].read_bytes()
        stub = data[:stubs.unpack(data)[2]]
        empty = image.dir / "variant-stub-empty"
        empty.write_bytes(stubs.pack(stub, [self.python, "-I"], _zip([("__main__.py", EMPTY_MAIN.encode())])))
        empty.chmod(0o755)
        self.paths["stub-empty"] = empty


# --- the host ---------------------------------------------------------------------------------

def client_cert_pem() -> str:
    from shim.goplugin import mtls

    return mtls.cert_pem_from_der(mtls.generate_identity().cert_der).decode()


def host_env(tmpdir: Path, cert: str) -> dict[str, str]:
    return {COOKIE[0]: COOKIE[1], "PLUGIN_PROTOCOL_VERSIONS": "5", "PLUGIN_MIN_PORT": "10000",
            "PLUGIN_MAX_PORT": "25000", "PLUGIN_CLIENT_CERT": cert, "VAULT_PLUGIN_AUTOMTLS_ENABLED": "true",
            "BAO_PLUGIN_AUTOMTLS_ENABLED": "true", "TMPDIR": str(tmpdir), "PATH": "/usr/bin:/bin"}


def tree_cpu_ns(pid: int) -> int:
    total = 0
    for p in [pid, *descendants(pid)]:
        try:
            tasks = os.listdir(f"/proc/{p}/task")
        except OSError:
            continue
        for t in tasks:
            try:
                with open(f"/proc/{p}/task/{t}/schedstat") as f:
                    total += int(f.read().split()[0])
            except (OSError, ValueError, IndexError):
                pass
    return total


def _kill_tree(proc: subprocess.Popen, graceful: bool) -> None:
    family = set(descendants(proc.pid))
    if graceful:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            pass
    if proc.poll() is None:
        proc.kill()
        proc.wait(15)
    end = time.monotonic() + 15
    while True:
        left = [p for p in family if S._alive(p)]
        if not left:
            return
        if time.monotonic() > end:
            for p in left:
                try:
                    os.kill(p, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            return
        time.sleep(0.05)


def launch(path: Path, env: dict[str, str], graceful: bool, timeout: float = 60.0) -> dict:
    """Start ``path`` with the host env; time to the handshake line; stop it again."""
    t0 = time.monotonic()
    proc = subprocess.Popen([str(path)], env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, start_new_session=True)
    out, err = b"", b""
    try:
        fds = {proc.stdout.fileno(): "out", proc.stderr.fileno(): "err"}
        end = t0 + timeout
        t_line = None
        while t_line is None:
            left = end - time.monotonic()
            if left <= 0 or not fds:
                raise S.StageError(f"{path.name}: no handshake within {timeout:.0f} s; stderr: "
                                   f"{err.decode(errors='replace')[-2000:]}")
            ready, _, _ = select.select(list(fds), [], [], left)
            for fd in ready:
                chunk = os.read(fd, 65536)
                if not chunk:
                    del fds[fd]
                elif fds[fd] == "out":
                    out += chunk
                    if b"\n" in out:
                        t_line = time.monotonic()
                else:
                    err += chunk
        cpu = tree_cpu_ns(proc.pid)
        # the report a timed launcher wrote before the line (exec) or right after it (proxy)
        if MARK.encode() not in err and graceful:
            stop = time.monotonic() + 5
            while MARK.encode() not in err and time.monotonic() < stop:
                ready, _, _ = select.select([proc.stderr.fileno()], [], [], 0.2)
                if ready:
                    chunk = os.read(proc.stderr.fileno(), 65536)
                    if not chunk:
                        break
                    err += chunk
    finally:
        _kill_tree(proc, graceful)
        proc.stdout.close()
        proc.stderr.close()
    return {"t0": t0, "wall_ms": (t_line - t0) * 1000, "cpu_ms": cpu / 1e6, "stderr": err.decode(errors="replace"),
            "line": out.split(b"\n", 1)[0].decode(errors="replace")}


def run_to_exit(argv: list[str], env: dict[str, str]) -> dict:
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.monotonic()
    proc = subprocess.Popen(argv, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE)
    out, err = proc.communicate(timeout=60)
    t1 = time.monotonic()
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime + after.ru_stime - before.ru_stime) * 1000
    return {"wall_ms": (t1 - t0) * 1000, "cpu_ms": cpu, "out": out.decode(errors="replace"), "err": err.decode(errors="replace"),
            "rc": proc.returncode}


def marks_of(stderr: str) -> list[tuple[str, float]]:
    for line in stderr.splitlines():
        if line.startswith(MARK):
            return ast.literal_eval(line[len(MARK):])
    raise S.StageError(f"no profile line in the timed launcher's stderr:\n{stderr[-2000:]}")


def steps(t0: float, marks: list[tuple[str, float]]) -> dict[str, float]:
    """Durations in ms: spawn -> main, each wrapped call (label> .. label<), and the
    import of the entry module; the remainder of select (listing, manifest, signature)."""
    at = {}
    for name, t in marks:
        at.setdefault(name, t)
    out = {"spawn -> __main__ (stub, interpreter, site)": (at["main"] - t0) * 1000,
           "imports of the exec path (from the zip)": (at["import-entry"] - at["main"]) * 1000}
    if "import-proxy" in at:
        out["imports of the proxy path (grpc, cryptography.x509, ...)"] = (at["import-proxy"] - at["import-entry"]) * 1000
    for name, t in marks:
        if name.endswith(">"):
            label = name[:-1]
            end = at.get(label + "<")
            if end is not None and label not in out:
                out[label] = (end - t) * 1000
    if "select" in out:
        out["select: listing, manifest, signature (rest)"] = (
            out["select"] - out.get("memfd-copy", 0) - out.get("sha256", 0))
    return out


THIRD_PARTY = {"cryptography": "cryptography", "_cffi_backend": "cryptography", "grpc": "grpc (grpcio)",
               "grpc_health": "grpc (grpcio)", "google": "protobuf", "hpack": "hpack"}
SITE_MODULES = ("site", "_distutils_hack", "__editable__")


def import_tree(stderr: str) -> dict[str, float]:
    """``-X importtime`` output as self time (ms) per group, each module counted under the
    outermost third-party package that led to its import (so a group is what not importing
    that package would save), else under ``site``, our own modules, or the standard library."""
    entries = []  # (depth, self_us, name) in output order: children before their parent
    for line in stderr.splitlines():
        if not line.startswith("import time:"):
            continue
        try:
            self_us, _cum_us, name = line[len("import time:"):].split("|", 2)
            self_us = int(self_us)
        except ValueError:
            continue  # the header line
        name = name[1:]
        depth = (len(name) - len(name.lstrip(" "))) // 2
        entries.append((depth, self_us, name.strip()))
    groups: dict[str, float] = {}
    ancestors: list[tuple[int, str]] = []  # walking backwards, parents come first
    for depth, self_us, name in reversed(entries):
        while ancestors and ancestors[-1][0] >= depth:
            ancestors.pop()
        chain = [n for _, n in ancestors] + [name]
        ancestors.append((depth, name))
        third = next((n.split(".")[0] for n in chain if n.split(".")[0] in THIRD_PARTY), None)
        if chain[0].startswith(SITE_MODULES):
            key = "site and its .pth files (with what they import)"
        elif third is not None:
            key = f"{THIRD_PARTY[third]} (with the stdlib it imports)"
        elif name.startswith("shim"):
            key = "shim.* modules (their code; compile too without .pyc)"
        elif any(n.startswith("shim") for n in chain):
            key = "standard library imported by shim.*"
        else:
            key = "standard library (interpreter start)"
        groups[key] = groups.get(key, 0.0) + self_us / 1000
    return groups


# --- the measurement --------------------------------------------------------------------------

def measure(rounds: int = 9, quick: bool = False, pad_mb: int = 0) -> dict:
    if quick:
        rounds = 2
    with tempfile.TemporaryDirectory(prefix="vps-prof-") as tmp:
        tmp = Path(tmp)
        image = S.Image(tmp / "stage", pad_mb=pad_mb)
        variants = Variants(image, tmp / "pyc")
        sock = tmp / "sock"
        sock.mkdir()
        env = host_env(sock, client_cert_pem())
        targets = ["direct"]
        for mode in MODES:
            targets += [mode, f"{mode}-timed", f"{mode}-timed-S"] + [f"{mode}-{c}" for c in CANDIDATES]
        samples: dict[str, list[dict]] = {t: [] for t in targets}
        base: dict[str, list[dict]] = {k: [] for k in BASELINES}
        python = variants.python
        clean = {"PATH": "/usr/bin:/bin"}
        for name in targets:  # one warm-up each: page cache, first-run effects
            launch(variants.paths[name], env, graceful=name.startswith("proxy"))
        for _ in range(rounds):
            for name in targets:
                samples[name].append(launch(variants.paths[name], env, graceful=name.startswith("proxy")))
            base["python -I -c pass"].append(run_to_exit([python, "-I", "-c", "pass"], clean))
            base["python -I -S -c pass"].append(run_to_exit([python, "-I", "-S", "-c", "pass"], clean))
            base["stub + empty zip __main__"].append(run_to_exit([str(variants.paths["stub-empty"])], clean))
        imports = {}
        for mode in MODES:  # median per group over a few runs
            runs = [import_tree(launch(variants.paths[f"{mode}-importtime"], env, graceful=mode == "proxy")["stderr"])
                    for _ in range(1 if quick else 3)]
            imports[mode] = {k: S.median([run.get(k, 0.0) for run in runs]) for k in runs[0]}
        sizes = {m: {v: variants.paths[v].stat().st_size for v in (m, f"{m}-src", f"{m}-pyc")} for m in MODES}
    out = {"rounds": rounds, "plugin_mb": image.size / 1e6, "pyc_reproducible": variants.pyc_reproducible,
           "pyc_from_cli": variants.pyc_from_cli, "launcher_bytes": sizes, "imports": imports}
    for name, runs in samples.items():
        out[f"{name}_wall_ms"] = S.median([r["wall_ms"] for r in runs])
        out[f"{name}_cpu_ms"] = S.median([r["cpu_ms"] for r in runs])
        if "timed" in name:
            per = [steps(r["t0"], marks_of(r["stderr"])) for r in runs]
            out[f"{name}_steps"] = {k: S.median([p[k] for p in per if k in p]) for k in per[0]}
    for k, v in base.items():
        out[f"base {k}"] = {"wall_ms": S.median([x["wall_ms"] for x in v]),
                            "cpu_ms": S.median([x["cpu_ms"] for x in v])}
    return out


def rows(r: dict) -> list[tuple[str, str, str, str]]:
    """Rows for the combined table: each candidate against the launcher as built (CPU time
    to the handshake, the less noisy of the two)."""
    out = []
    for mode in MODES:
        for c in CANDIDATES:
            b, v = r[f"{mode}_cpu_ms"], r[f"{mode}-{c}_cpu_ms"]
            out.append((f"profile: {mode} launch CPU to handshake, variant {c} vs as built (ms)",
                        f"{b:.0f}", f"{v:.0f}", f"{v / b:.2f}x"))
    return out


def report(r: dict) -> str:
    lines = [f"plugin {r['plugin_mb']:.1f} MB, {r['rounds']} rounds, medians; wall = spawn -> handshake line, "
             f"cpu = CPU of the process tree at that moment", "",
             "| target | wall ms | cpu ms | wall vs direct | cpu vs direct |", "|---|---|---|---|---|"]
    d_w, d_c = r["direct_wall_ms"], r["direct_cpu_ms"]
    names = ["direct"] + [n for m in MODES for n in (m, f"{m}-src", f"{m}-pyc", f"{m}-S", f"{m}-src-S",
                                                         f"{m}-timed", f"{m}-timed-S")]
    for n in names:
        lines.append(f"| {n} | {r[n + '_wall_ms']:.1f} | {r[n + '_cpu_ms']:.1f} | {r[n + '_wall_ms'] / d_w:.2f}x "
                     f"| {r[n + '_cpu_ms'] / d_c:.2f}x |")
    lines += ["", "| interpreter alone (spawn -> exit) | wall ms | cpu ms |", "|---|---|---|"]
    for k in BASELINES:
        lines.append(f"| {k} | {r['base ' + k]['wall_ms']:.1f} | {r['base ' + k]['cpu_ms']:.1f} |")
    for mode in MODES:
        for which in (f"{mode}-timed", f"{mode}-timed-S"):
            lines += ["", f"| step ({which}) | ms |", "|---|---|"]
            for k, v in r[f"{which}_steps"].items():
                lines.append(f"| {k} | {v:.1f} |")
        lines += ["", f"| imports, {mode} (-X importtime, self time by group) | ms |", "|---|---|"]
        for k, v in sorted(r["imports"][mode].items(), key=lambda kv: -kv[1]):
            lines.append(f"| {k} | {v:.1f} |")
    lines += ["", "bytecode in the launcher as built: " + ", ".join(f"{m} {r['pyc_from_cli'][m]}" for m in MODES)
              + (f"; unchecked-hash .pyc compiled here byte-identical twice: {r['pyc_reproducible']}"
                 if r["pyc_reproducible"] is not None else ""),
              "launcher bytes (as built / sources only / with .pyc): " + ", ".join(
                  f"{m} {r['launcher_bytes'][m][m]} / {r['launcher_bytes'][m][m + '-src']} / "
                  f"{r['launcher_bytes'][m][m + '-pyc']}" for m in MODES)]
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=9)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--pad-mb", type=int, default=0, help="grow the plugin to this size (e.g. 50, as benchmarks.launch)")
    ap.add_argument("--json", metavar="FILE", help="also write the raw result as JSON")
    ap.add_argument("--gopeer-mb", type=int, metavar="MB",
                    help="instead: launch -> handshake under the go-plugin host (as benchmarks.launch) of an MB-sized "
                         "plugin, direct vs the exec launcher as built, -src and -S")
    a = ap.parse_args(argv)
    if a.gopeer_mb:
        res = gopeer_handshake(a.gopeer_mb, rounds=2 if a.quick else a.rounds)
        d = res["direct_ms"]
        print(f"go-plugin host, {res['size_mb']} MB plugin, {res['runs']} launches each, median launch -> handshake:")
        for t in ("direct", "exec", "exec-src", "exec-S"):
            print(f"  {t:9s} {res[t + '_ms']:7.1f} ms  {res[t + '_ms'] / d:.2f}x")
        return 0
    res = measure(a.rounds, a.quick, a.pad_mb)
    print(report(res))
    if a.json:
        Path(a.json).write_text(json.dumps(res, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
