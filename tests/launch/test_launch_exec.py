"""The exec path: what runs is exactly what was verified, and nothing else influences it."""

import fcntl
import os
import subprocess
import sys
from pathlib import Path

import pytest

from shim.launch import memexec
from shim.launch.build import MODULES, build_bytes, inspect
from shim.trust.policy import encode_arg
from tests.support import releases as R

ROOT = Path(__file__).resolve().parents[2]


def run_patched(pol, patch: str, tmp: Path, env: dict | None = None) -> subprocess.CompletedProcess:
    """Run the launch path in a fresh interpreter with a test hook installed first."""
    code = (
        "import sys\n"
        f"sys.path.insert(0, {str(ROOT)!r})\n"
        "import shim.trust.verify as V, shim.launch.memexec as M, shim.launch.entry as E\n"
        "import shim.launch.sealed as S\n"
        + patch +
        f"\nraise SystemExit(E.main({pol.to_json()!r}, ['launcher'], dict(__import__('os').environ)))\n")
    return subprocess.run([sys.executable, "-I", "-c", code], env={**R.cookie_env(), **(env or {})},
                          capture_output=True, timeout=30, cwd=tmp)


def test_swap_after_verification_does_not_take_effect(setup):
    """The file is rewritten between the digest check and exec: the verified bytes still run."""
    tmp, d, keys, pol, path = setup
    patch = (
        "orig = V.check_digest\n"
        "def check_then_swap(fd, cand):\n"
        "    orig(fd, cand)\n"
        f"    p = {str(path)!r}\n"
        "    data = open(p).read().replace('good', 'evil')\n"
        "    open(p, 'w').write(data)\n"
        "S.check_digest = check_then_swap\n")
    proc = run_patched(pol, patch, tmp)
    assert "evil" in path.read_text(), "the swap happened on disk"
    assert proc.stdout == b"ran good \n", proc.stderr


def test_swap_between_manifest_check_and_open_is_caught(setup):
    tmp, d, keys, pol, path = setup
    patch = (
        "orig = V.PluginDir.open_binary\n"
        "def swap_then_open(self, cand):\n"
        f"    p = {str(path)!r}\n"
        "    data = open(p).read().replace('good', 'evil')\n"
        "    open(p, 'w').write(data)\n"
        "    return orig(self, cand)\n"
        "V.PluginDir.open_binary = swap_then_open\n")
    proc = run_patched(pol, patch, tmp)
    assert proc.returncode == 1 and proc.stdout == b""
    assert b"sha256 is" in proc.stderr


def test_memfd_is_sealed_against_writes_and_resizes(tmp_path):
    src = tmp_path / "src"
    src.write_bytes(b"\x7fELF" + b"x" * 1000)
    fd_in = os.open(src, os.O_RDONLY)
    fd = memexec.to_memfd(fd_in, 1004, "t")
    os.close(fd_in)
    try:
        seals = fcntl.fcntl(fd, fcntl.F_GET_SEALS)
        assert seals & memexec.SEALS == memexec.SEALS
        with pytest.raises(PermissionError):
            os.pwrite(fd, b"evil", 0)
        with pytest.raises(PermissionError):
            os.ftruncate(fd, 10)
        assert os.pread(fd, 2000, 0) == src.read_bytes()
    finally:
        os.close(fd)


REFUSE_MEMFD = (
    "import errno, os\n"
    "real_open = os.open\n"
    "def logged_open(path, flags, *a, **kw):\n"
    "    fd = real_open(path, flags, *a, **kw)\n"
    "    if flags & os.O_TMPFILE == os.O_TMPFILE:\n"
    "        os.write(2, ('made ' + os.readlink(f'/proc/self/fd/{fd}') + '\\n').encode())\n"
    "    return fd\n"
    "os.open = logged_open\n"
    "def refuse(name):\n"
    "    raise PermissionError(errno.EACCES, 'memfd exec forbidden')\n"
    "M._memfd_create = refuse\n")


def test_fallback_when_memfd_exec_is_forbidden(setup):
    """vm.memfd_noexec=2 makes memfd_create(MFD_EXEC) fail with EACCES: use a private copy,
    an unnamed file (O_TMPFILE) in Vault's TMPDIR for the plugin: nothing is ever named there."""
    tmp, d, keys, pol, path = setup
    tmpdir = tmp / "t"
    tmpdir.mkdir(mode=0o700)
    proc = run_patched(pol, REFUSE_MEMFD, tmp, env={"TMPDIR": str(tmpdir)})
    assert proc.stdout == b"ran good \n", proc.stderr
    made = [ln[5:] for ln in proc.stderr.decode().splitlines() if ln.startswith("made ")]
    assert len(made) == 1 and os.path.dirname(made[0]) == str(tmpdir), proc.stderr
    (info,) = R.hclog_lines(proc.stderr)
    assert info["exec_via"] == "private-file"
    assert list(tmpdir.iterdir()) == [], "the private copy has no name"


def test_fallback_refuses_a_temp_dir_that_cannot_make_unnamed_files(setup):
    """A named private copy could be opened by another process of the Vault user while it
    exists, and written again after its hash: where TMPDIR's file system has no O_TMPFILE
    (overlayfs before Linux 6.6; every file system here has it, so os.open answers as one
    without it would), the launch refuses in one line naming TMPDIR and the fix."""
    tmp, d, keys, pol, path = setup
    tmpdir = tmp / "t"
    tmpdir.mkdir(mode=0o700)
    no_tmpfile = REFUSE_MEMFD + (
        "def no_tmpfile(path, flags, *a, **kw):\n"
        "    if flags & os.O_TMPFILE == os.O_TMPFILE:\n"
        "        raise OSError(errno.EOPNOTSUPP, os.strerror(errno.EOPNOTSUPP))\n"
        "    return real_open(path, flags, *a, **kw)\n"
        "os.open = no_tmpfile\n")
    proc = run_patched(pol, no_tmpfile, tmp, env={"TMPDIR": str(tmpdir)})
    assert proc.returncode == 1 and proc.stdout == b"", proc
    assert b"Traceback" not in proc.stderr
    errors = [ln for ln in R.hclog_lines(proc.stderr) if ln["@level"] == "error"]
    assert any("cannot make unnamed files" in ln.get("reason", "") and ln.get("file") == str(tmpdir)
               and "tmpfs" in ln.get("fix", "") for ln in errors), proc.stderr
    assert list(tmpdir.iterdir()) == []


def test_fallback_refuses_a_temp_parent_that_others_can_write(setup):
    """Another user who can write the parent (and it is not sticky) could swap our fresh
    directory between mkdtemp and the copy: refuse, and say where to point TMPDIR."""
    tmp, d, keys, pol, path = setup
    shared = tmp / "shared"
    shared.mkdir()
    os.chmod(shared, 0o777)
    proc = run_patched(pol, REFUSE_MEMFD, tmp, env={"TMPDIR": str(shared)})
    assert proc.returncode == 1 and proc.stdout == b""
    assert b"Traceback" not in proc.stderr
    lines = R.hclog_lines(proc.stderr)
    assert any("writable by others without the sticky bit" in ln.get("reason", "") and ln.get("file") == str(shared)
               and "TMPDIR" in ln.get("fix", "") for ln in lines), proc.stderr
    os.chmod(shared, 0o1777)  # sticky, like /tmp: accepted
    proc = run_patched(pol, REFUSE_MEMFD, tmp, env={"TMPDIR": str(shared)})
    assert proc.stdout == b"ran good \n", proc.stderr


def test_run_by_hand_explains_and_exits_1(setup):
    tmp, d, keys, pol, path = setup
    launcher = R.launcher(tmp, pol)
    proc = subprocess.run([str(launcher)], env={"PATH": "/usr/bin:/bin"}, capture_output=True, timeout=30)
    assert proc.returncode == 1 and proc.stdout == b""
    assert b"not meant to be run by hand" in proc.stderr and b"launcher inspect" in proc.stderr
    wrong = subprocess.run([str(launcher)], env={"VAULT_BACKEND_PLUGIN": "wrong"}, capture_output=True, timeout=30)
    assert wrong.returncode == 1 and wrong.stdout == b""
    (line,) = R.hclog_lines(wrong.stderr)  # a cookie key is there: Vault ran it, as an unknown type
    assert line["@level"] == "error" and "as an unknown plugin" in line["@message"]


def test_database_launcher_wants_the_database_cookie(tmp_path):
    d = tmp_path / "plugins"
    d.mkdir(mode=0o755)
    keys = R.new_keys()
    launcher = R.launcher(tmp_path, R.policy(d, keys, type="database"))
    # Vault started it with the backend cookie: it was registered as the wrong type. That is
    # an hclog error Vault shows at ERROR, not the text for a person at a terminal.
    wrong = R.run(launcher)
    assert wrong.returncode == 1 and wrong.stdout == b""
    (line,) = R.hclog_lines(wrong.stderr)
    assert line["@level"] == "error" and "serves a database plugin" in line["@message"]
    assert "as a secret/auth plugin" in line["@message"] and "type database" in line["fix"]
    path = R.script_plugin(d / "db", "db")
    R.release(keys, path, type="database")
    proc = R.run(launcher, env=R.cookie_env("database"))
    assert proc.stdout == b"ran db \n", proc.stderr


def test_environment_cannot_inject_code_or_policy(setup):
    """PYTHONPATH, PYTHONSTARTUP, the user site and the current directory cannot add code
    (-I), and the environment never sets policy."""
    tmp, d, keys, pol, path = setup
    evil = tmp / "evil"
    (evil / "shim").mkdir(parents=True)
    (evil / "shim" / "__init__.py").write_text("raise SystemExit('evil shim imported')\n")
    (evil / "sitecustomize.py").write_text("raise SystemExit('evil sitecustomize')\n")
    other = R.new_keys()
    launcher = R.launcher(tmp, pol)
    env = R.cookie_env(PYTHONPATH=str(evil), PYTHONSTARTUP=str(evil / "sitecustomize.py"),
                       PYTHONUSERBASE=str(evil), VAULT_PLUGIN_SHIM_POLICY=R.policy(d, other).to_json())
    proc = subprocess.run([str(launcher)], env=env, cwd=evil, capture_output=True, timeout=30)
    assert proc.stdout == b"ran good \n", proc.stderr
    assert b"evil" not in proc.stderr


def test_embedded_policy_ignores_a_policy_argument(setup):
    """Catalog args cannot replace an embedded policy: the arg is handed to the plugin untouched."""
    tmp, d, keys, pol, path = setup
    other_dir = tmp / "other"
    other_dir.mkdir(mode=0o755)
    R.release(keys, R.script_plugin(other_dir / "myplugin-9.0.0", "other"), version="9.0.0")
    arg = encode_arg(R.policy(other_dir, keys))
    proc = R.run(R.launcher(tmp, pol), arg)
    assert proc.stdout == f"ran good {arg}\n".encode(), proc.stderr


def test_policy_from_catalog_args(setup):
    tmp, d, keys, pol, path = setup
    launcher = R.launcher(tmp, None, name="generic")
    proc = R.run(launcher, encode_arg(pol), "--other")
    assert proc.stdout == b"ran good --other\n", proc.stderr
    none = R.run(launcher)
    assert none.returncode == 1 and none.stdout == b""
    (err,) = R.hclog_lines(none.stderr)
    assert "no embedded policy" in err["reason"] and err["fix"]


def test_launcher_build_is_reproducible_and_inspectable(setup, tmp_path):
    tmp, d, keys, pol, path = setup
    a = build_bytes(pol, R.PYTHON)
    assert a == build_bytes(pol, R.PYTHON)
    assert a != build_bytes(R.policy(d, keys, min_version="1.0.0"), R.PYTHON)
    assert a.startswith(b"\x7fELF") and f"{R.PYTHON}\0-I\0".encode() in a
    launcher = R.launcher(tmp, pol)
    info = inspect(str(launcher))
    assert info.policy == pol and (info.interpreter, info.flags, info.mode) == (R.PYTHON, ["-I"], "exec")
    assert info.size == len(a) and info.files == 1 + len(MODULES["exec"])


def test_cli_build_twice_same_sha(setup):
    tmp, d, keys, pol, path = setup
    pk = tmp / "pk"
    pk.write_text(keys.public.to_text())
    outs = []
    for name in ("l1", "l2"):
        proc = subprocess.run([sys.executable, "-m", "shim.cli", "launcher", "build", "--trusted-key", str(pk),
                               "--name", "myplugin", "--type", "secret", "--plugins-dir", str(d),
                               "--kind", "python", "--python", R.PYTHON, "--output", str(tmp / name)],
                              capture_output=True, text=True, cwd=ROOT, check=True)
        outs.append(proc.stdout)
        assert (tmp / name).stat().st_mode & 0o777 == 0o755
    sha = [ln.split()[-1] for o in outs for ln in o.splitlines() if ln.startswith("sha256:")]
    assert len(sha) == 2 and sha[0] == sha[1]
    assert f"vault plugin register -sha256={sha[0]} -command=l1 secret myplugin" in outs[0]
    assert (tmp / "l1").read_bytes() == (tmp / "l2").read_bytes()


def test_relative_plugins_dir_is_relative_to_the_launcher(tmp_path):
    """One launcher file (one checksum) serves each node's own image directory."""
    from shim.trust.errors import PolicyError
    from shim.trust.policy import Policy

    keys = R.new_keys()
    pol = Policy(name="myplugin", type="secret", plugins_dir="versions/myplugin",
                 trusted_keys=(keys.public,))
    data = build_bytes(pol, R.PYTHON)
    for node, label in (("node-a", "old"), ("node-b", "new")):
        plugins = tmp_path / node / "plugins"
        versions = plugins / "versions" / "myplugin"
        versions.mkdir(parents=True)
        R.release(keys, R.script_plugin(versions / f"myplugin-{label}", label),
                  version="1.0.0" if label == "old" else "2.0.0")
        launcher = plugins / "launcher"
        launcher.write_bytes(data)
        launcher.chmod(0o755)
        assert R.run(launcher).stdout == f"ran {label} \n".encode()
    for bad in ("../elsewhere", "a/../../b", ""):
        with pytest.raises(PolicyError):
            Policy(name="myplugin", type="secret", plugins_dir=bad, trusted_keys=(keys.public,))


def test_launcher_doctor_when_run_by_an_operator(setup):
    tmp, d, keys, pol, path = setup
    launcher = R.launcher(tmp, pol)
    proc = subprocess.run([str(launcher), "doctor"], env={"PATH": "/usr/bin:/bin"}, capture_output=True,
                          text=True, timeout=60)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "myplugin-1.0.0" in proc.stdout
    # With Vault's cookie, "doctor" is just an argument for the plugin.
    assert R.run(launcher, "doctor").stdout == b"ran good doctor\n"


def test_memfd_exec_refused_reuses_the_verified_copy(setup):
    """fexecve of the sealed memfd is refused (an LSM, vm.memfd_noexec): the launcher copies
    the bytes it already verified into a private file, hashes that copy, and runs it. No
    second selection: every candidate line is logged once, and the same version runs."""
    tmp, d, keys, pol, path = setup
    bad = R.script_plugin(d / "myplugin-2.0.0", "bad")
    R.release(keys, bad, version="2.0.0")
    bad.write_text(bad.read_text().replace("bad", "BAD"))  # a rejected candidate, to count its lines
    patch = (
        "import errno\n"
        "real = M.fexecve\n"
        "calls = []\n"
        "def fexecve(fd, argv, env, *, script):\n"
        "    calls.append(fd)\n"
        "    if len(calls) == 1:\n"
        "        raise PermissionError(errno.EACCES, 'memfd exec denied by policy')\n"
        "    return real(fd, argv, env, script=script)\n"
        "M.fexecve = fexecve\n")
    proc = run_patched(pol, patch, tmp)
    assert proc.stdout == b"ran good \n", proc.stderr
    lines = R.hclog_lines(proc.stderr)
    assert sum("rejected candidate" in ln["@message"] for ln in lines) == 1, lines
    assert sum("starting secret plugin" in ln["@message"] for ln in lines) == 1, lines
    (warn,) = [ln for ln in lines if ln["@level"] == "warn"]
    assert "private copy of the verified bytes" in warn["@message"] and warn["reason"] == "memfd exec denied by policy"


def test_private_copy_on_a_noexec_tmpdir_says_so(setup):
    """Both memfd exec and the private copy are refused, and TMPDIR is mounted noexec: the
    fix names TMPDIR, not the binary's architecture."""
    tmp, d, keys, pol, path = setup
    patch = (
        "import errno\n"
        "def fexecve(fd, argv, env, *, script):\n"
        "    raise PermissionError(errno.EACCES, 'Permission denied')\n"
        "M.fexecve = fexecve\n"
        "M.noexec_mount = lambda path: True\n")
    proc = run_patched(pol, patch, tmp, env={"TMPDIR": "/tmp"})
    assert proc.returncode == 1 and proc.stdout == b"" and b"Traceback" not in proc.stderr
    final = R.hclog_lines(proc.stderr)[-1]
    assert final["@level"] == "error" and "cannot execute the verified copy" in final["reason"]
    assert "mounted noexec" in final["fix"] and "TMPDIR" in final["fix"] and "architecture" not in final["fix"]


def verified_copy(tmp: Path, data: bytes) -> tuple[object, int]:
    """A candidate signed for ``data`` and a sealed memfd holding it, as select_sealed returns."""
    import hashlib

    from shim.trust.manifest import Manifest, Version
    from shim.trust.verify import Candidate

    cand = Candidate("myplugin-1.0.0", str(tmp / "myplugin-1.0.0"))
    cand.manifest = Manifest("myplugin", "secret", Version.parse("1.0.0"), hashlib.sha256(data).hexdigest(),
                             len(data), "linux", "amd64", 0, None)
    fd = os.memfd_create("verified", os.MFD_CLOEXEC | os.MFD_ALLOW_SEALING)
    os.write(fd, data)
    return cand, fd


def test_start_verified_falls_back_to_one_private_copy_for_every_caller(tmp_path, capfd):
    """The one fallback of exec mode, proxy mode and hot swap (shim.launch.sealed): a memfd
    whose execution is refused is started once more from a private copy of the verified
    bytes, in TMPDIR; the descriptors it was given are closed; a refusal that stays is the
    launch's LaunchError (or, for hot swap, the refusal itself); a copy that is no memfd is
    not retried."""
    from shim.launch.errors import ExecRefusedError, LaunchError
    from shim.launch.sealed import start_verified

    data = b"#!/bin/sh\necho verified\n"
    tmpdir = tmp_path / "t"
    tmpdir.mkdir(mode=0o700)
    started = []

    def refuse_memfd(fd, how):
        started.append((how, os.pread(fd, 100, 0)))
        if how == "memfd":
            raise ExecRefusedError("executing the verified copy was refused (Permission denied)")
        return "running"

    cand, fd = verified_copy(tmp_path, data)
    assert start_verified(cand, fd, "memfd", str(tmpdir), refuse_memfd) == "running"
    assert started == [("memfd", data), ("private-file", data)]
    assert list(tmpdir.iterdir()) == []
    with pytest.raises(OSError):
        os.fstat(fd)   # given over, and closed
    warn = [ln for ln in R.hclog_lines(capfd.readouterr().err.encode()) if ln["@level"] == "warn"]
    assert len(warn) == 1 and "private copy of the verified bytes" in warn[0]["@message"]

    def refuse_all(fd, how):
        started.append(how)
        raise ExecRefusedError("executing the verified copy was refused (Permission denied)")

    for how, explain, tries in (("memfd", True, 2), ("memfd-shared", False, 2), ("private-file", True, 1)):
        started.clear()
        cand, fd = verified_copy(tmp_path, data)
        with pytest.raises(LaunchError) as info:
            start_verified(cand, fd, how, str(tmpdir), refuse_all, explain=explain)
        assert len(started) == tries, (how, started)
        if explain:
            assert type(info.value) is LaunchError
            assert info.value.reason == ("cannot execute the verified copy (executing the verified copy was refused "
                                         "(Permission denied))")
        else:
            assert type(info.value) is ExecRefusedError
    capfd.readouterr()


def test_the_archive_carries_bytecode_for_its_interpreter(setup):
    """Compiled at build time by the target interpreter (unchecked-hash .pyc), so a launch
    does not compile the launch path's sources again."""
    import importlib.util
    import io
    import zipfile

    from shim.launch.build import launcher_code

    tmp, d, keys, pol, path = setup
    launcher = R.launcher(tmp, pol)
    with zipfile.ZipFile(io.BytesIO(launcher_code(launcher.read_bytes()))) as zf:
        names = set(zf.namelist())
        for rel in MODULES["exec"]:
            assert rel + "c" in names, rel
            pyc = zf.read(rel + "c")
            assert pyc[:4] == importlib.util.MAGIC_NUMBER and int.from_bytes(pyc[4:8], "little") == 0b01
    info = inspect(str(launcher))
    assert info.compiled == len(MODULES["exec"]) and info.files == 1 + len(MODULES["exec"])
    assert R.run(launcher).stdout == b"ran good \n"


def test_bytecode_for_another_interpreter_version_falls_back_to_the_source(setup):
    """An image whose interpreter is another version than the build's: zipimport ignores a
    .pyc with another magic number and compiles the source beside it."""
    import io
    import zipfile

    from shim.launch import stubs
    from shim.launch.build import launcher_code

    tmp, d, keys, pol, path = setup
    data = R.launcher(tmp, pol).read_bytes()
    prefix, _, stub_len = stubs.unpack(data)
    zin = zipfile.ZipFile(io.BytesIO(launcher_code(data)))
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression=zipfile.ZIP_STORED) as zout:
        for info in zin.infolist():
            body = zin.read(info)
            if info.filename.endswith(".pyc"):
                body = b"\x00\x0d\x0d\x0a" + body[4:]  # a magic no interpreter here has
            zout.writestr(info, body)
    foreign = tmp / "foreign-launcher"
    foreign.write_bytes(stubs.pack(data[:stub_len], prefix, buf.getvalue()))
    foreign.chmod(0o755)
    proc = R.run(foreign)
    assert proc.stdout == b"ran good \n", proc.stderr


def test_an_interpreter_only_the_image_has_gets_sources_only(setup):
    from shim.launch.build import build_bytes as bb

    tmp, d, keys, pol, path = setup
    out = tmp / "image-only"
    out.write_bytes(bb(pol, "/opt/only-in-the-image/bin/python3"))
    info = inspect(str(out))
    assert info.compiled == 0 and info.files == 1 + len(MODULES["exec"])
