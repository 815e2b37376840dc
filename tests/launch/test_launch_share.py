"""One sealed copy per version, however many processes run it (shim.launch.memexec.sealed_siblings).

The plugin here is a real ELF (``/bin/sleep``, signed as a release) started through a real
exec-mode launcher, so ``/proc/PID/exe`` is the sealed memfd the launch made or shared.
Decoys are processes this test starts from memfds of the same name: one sealed with other
bytes of the same size, one with the right bytes but no seals. Neither may be executed.
The sharing tests run against the Python launcher and the native one alike.
"""

from __future__ import annotations

import fcntl
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from shim.launch import memexec
from tests.support import releases as R
from tests.support.wait import wait_until

SLEEP = shutil.which("sleep") or "/bin/sleep"


@pytest.fixture
def plant(tmp_path, request):
    """A signed ``/bin/sleep`` release with a name of its own, its launcher, and a starter
    whose processes (and decoys) are all killed at the end."""
    name = f"share{os.getpid()}-{abs(hash(request.node.nodeid)) % 10**8}"
    d = tmp_path / "plugins"
    d.mkdir(mode=0o755)
    keys = R.new_keys()
    binary = d / f"{name}-1.0.0"
    shutil.copyfile(SLEEP, binary)
    binary.chmod(0o755)
    R.release(keys, binary, name=name, version="1.0.0")
    if getattr(request, "param", "python") == "native":
        from shim.launch.build import write_launcher

        launcher = tmp_path / "launcher"
        write_launcher(R.policy(d, keys, name=name), None, str(launcher), native=True)
    else:
        launcher = R.launcher(tmp_path, R.policy(d, keys, name=name))
    procs: list[subprocess.Popen] = []

    class Plant:
        memfd = f"{name}-1.0.0"
        size = binary.stat().st_size
        data = binary.read_bytes()

        path = launcher

        def launch(self, tag: str) -> tuple[subprocess.Popen, Path]:
            err = tmp_path / f"{tag}.err"
            with open(err, "wb") as f:
                p = subprocess.Popen([str(launcher), "600"], env=R.cookie_env(), stdin=subprocess.DEVNULL,
                                     stdout=subprocess.DEVNULL, stderr=f)
            procs.append(p)
            wait_until(lambda: p.pid in memexec.running_from(self.memfd) or p.poll() is not None,
                       f"launcher {tag} to exec the plugin")
            assert p.poll() is None, err.read_bytes()
            return p, err

        def decoy(self, data: bytes, seals: int) -> subprocess.Popen:
            """A process executing a memfd called like ours, holding ``data`` with ``seals``."""
            fd = os.memfd_create(self.memfd, os.MFD_ALLOW_SEALING)
            try:
                os.write(fd, data)
                if seals:
                    fcntl.fcntl(fd, fcntl.F_ADD_SEALS, seals)
                ro = os.open(f"/proc/self/fd/{fd}", os.O_RDONLY)
            finally:
                os.close(fd)  # exec refuses a file open for writing (ETXTBSY)
            try:
                p = subprocess.Popen([f"/proc/self/fd/{ro}", "600"], pass_fds=[ro], stdin=subprocess.DEVNULL,
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            finally:
                os.close(ro)
            procs.append(p)
            wait_until(lambda: p.pid in memexec.running_from(self.memfd), "the decoy to run")
            return p

    yield Plant()
    for p in procs:
        if p.poll() is None:
            p.kill()
        p.wait(10)


def exe_inode(pid: int) -> int:
    return os.stat(f"/proc/{pid}/exe").st_ino


def start_line(err: Path) -> dict:
    lines = wait_until(lambda: [x for x in R.hclog_lines(err.read_bytes()) if "starting" in x["@message"]],
                       "the launcher's start line")
    return lines[0]


@pytest.mark.parametrize("plant", ["python", "native"], indirect=True)
def test_a_second_launch_of_a_running_version_shares_its_sealed_memfd(plant):
    first, err1 = plant.launch("first")
    second, err2 = plant.launch("second")
    assert start_line(err1)["exec_via"] == "memfd"
    assert start_line(err2)["exec_via"] == "memfd-shared"
    assert exe_inode(first.pid) == exe_inode(second.pid)
    # still the sealed, signed bytes
    with open(f"/proc/{second.pid}/exe", "rb") as f:
        assert fcntl.fcntl(f.fileno(), memexec.F_GET_SEALS) & memexec.SEALS == memexec.SEALS
        assert f.read() == plant.data
    # the first one going away does not take the copy from the second
    first.kill()
    first.wait(10)
    assert second.poll() is None
    third, err3 = plant.launch("third")
    assert start_line(err3)["exec_via"] == "memfd-shared" and exe_inode(third.pid) == exe_inode(second.pid)


@pytest.mark.parametrize("plant", ["python", "native"], indirect=True)
def test_a_sealed_decoy_with_other_bytes_is_hashed_and_ignored(plant):
    other = bytearray(plant.data)
    other[-1] ^= 0xFF            # the section header table's last byte: same size, still runs
    decoy = plant.decoy(bytes(other), memexec.SEALS)
    p, err = plant.launch("launch")
    start = start_line(err)
    assert start["exec_via"] == "memfd" and exe_inode(p.pid) != exe_inode(decoy.pid)
    warns = [x for x in R.hclog_lines(err.read_bytes()) if x["@level"] == "warn"]
    assert len(warns) == 1 and f"sealed memfd named {plant.memfd} does not match" in warns[0]["@message"]
    assert "sha256 is" in warns[0]["reason"]
    with open(f"/proc/{p.pid}/exe", "rb") as f:
        assert f.read() == plant.data


@pytest.mark.parametrize("plant", ["python", "native"], indirect=True)
@pytest.mark.parametrize("seals", [0, memexec.SEALS & ~fcntl.F_SEAL_WRITE], ids=["unsealed", "writable"])
def test_a_memfd_with_the_right_bytes_that_could_still_change_is_not_shared(plant, seals):
    decoy = plant.decoy(plant.data, seals)
    p, err = plant.launch("launch")
    assert start_line(err)["exec_via"] == "memfd" and exe_inode(p.pid) != exe_inode(decoy.pid)
    assert not [x for x in R.hclog_lines(err.read_bytes()) if x["@level"] in ("warn", "error")]


def test_doctor_tells_the_memory_cost_and_how_many_copies_run(plant):
    from shim.ops.doctor import diagnose

    def memory() -> str:
        [finding] = [f for f in diagnose(str(plant.path)) if f.check == "memory"]
        assert finding.status == "info"
        return finding.message

    mb = f"{plant.size / 1e6:.1f} MB"
    assert mb in memory() and "not evictable" in memory()
    assert f"no process visible to uid {os.geteuid()} runs {plant.memfd} now" in memory()
    plant.launch("first")
    plant.launch("second")
    assert f"now 2 process(es) visible to uid {os.geteuid()} run {plant.memfd} from 1 copy" in memory()
    plant.decoy(plant.data, 0)
    assert "now 3 process(es)" in memory() and "from 2 copies" in memory()


def resident(path: Path) -> int:
    """Pages of ``path`` in the page cache (mincore on a mapping of it)."""
    import ctypes
    import mmap

    libc = ctypes.CDLL(None, use_errno=True)
    libc.mmap.restype = ctypes.c_void_p
    libc.mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.c_long]
    libc.munmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t]
    libc.mincore.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_void_p]
    size = path.stat().st_size
    pages = (size + mmap.PAGESIZE - 1) // mmap.PAGESIZE
    vec = (ctypes.c_ubyte * pages)()
    with open(path, "rb") as f:
        addr = libc.mmap(None, size, mmap.PROT_READ, mmap.MAP_SHARED, f.fileno(), 0)
        assert addr not in (None, ctypes.c_void_p(-1).value), os.strerror(ctypes.get_errno())
        try:
            assert libc.mincore(addr, size, vec) == 0, os.strerror(ctypes.get_errno())
        finally:
            libc.munmap(addr, size)
    return sum(b & 1 for b in vec)


def test_the_source_file_leaves_the_page_cache_after_the_copy(tmp_path):
    src = tmp_path / "plugin"
    src.write_bytes(os.urandom(4 << 20))
    os.sync()
    with open(src, "rb") as f:
        f.read()
    before = resident(src)
    assert before > 0, "the file should be cached after a read"
    fd = os.open(src, os.O_RDONLY)
    try:
        mem = memexec.to_memfd(fd, src.stat().st_size, "cache-test")
        os.close(mem)
    finally:
        os.close(fd)
    assert resident(src) < before // 4, f"{resident(src)} of {before} pages still cached"


def test_the_native_launch_drops_the_plugins_pages_from_the_page_cache(tmp_path):
    """The native launcher drops each piece of the source once it is copied (three pieces here,
    copied on a second thread): the pod's memory counts the plugin once, as its sealed copy."""
    from shim.launch.build import write_launcher

    d = tmp_path / "plugins"
    d.mkdir(mode=0o755)
    keys = R.new_keys()
    binary = d / "cached-1.0.0"
    binary.write_bytes(Path(SLEEP).read_bytes() + os.urandom(3 << 20))    # an ELF ignores what follows
    binary.chmod(0o755)
    R.release(keys, binary, name="cached", version="1.0.0")
    launcher = tmp_path / "launcher"
    write_launcher(R.policy(d, keys, name="cached"), None, str(launcher), native=True)
    os.sync()
    binary.read_bytes()
    before = resident(binary)
    assert before > 0, "the file should be cached after a read"
    proc = subprocess.run([str(launcher), "0"], env=R.cookie_env(), capture_output=True, timeout=30)
    assert proc.returncode == 0, proc.stderr
    assert resident(binary) < before // 4, f"{resident(binary)} of {before} pages still cached"


# --- issue 17, cases 4 and 5: what a decoy can still cost (native launcher) ------------------

DECOY_AS = r'''
import fcntl, os, sys
data = sys.stdin.buffer.read()
fd = os.memfd_create(sys.argv[1], os.MFD_ALLOW_SEALING)
os.write(fd, data)
fcntl.fcntl(fd, fcntl.F_ADD_SEALS, fcntl.F_SEAL_SEAL | fcntl.F_SEAL_SHRINK | fcntl.F_SEAL_GROW | fcntl.F_SEAL_WRITE)
ro = os.open(f"/proc/self/fd/{fd}", os.O_RDONLY)
os.close(fd)
os.execv(f"/proc/self/fd/{ro}", ["decoy", "600"])
'''


@pytest.mark.parametrize("plant", ["native"], indirect=True)
def test_a_right_copy_we_may_not_execute_is_not_shared(plant):
    """Case 4: a correct sealed copy chmod-ed to 0644 would make the launch fail where TMPDIR
    is noexec; it is left alone and the launch makes its own copy."""
    decoy = plant.decoy(plant.data, memexec.SEALS)
    fd = os.open(f"/proc/{decoy.pid}/exe", os.O_RDONLY)
    try:
        os.fchmod(fd, 0o644)
    finally:
        os.close(fd)
    p, err = plant.launch("launch")
    assert start_line(err)["exec_via"] == "memfd" and exe_inode(p.pid) != exe_inode(decoy.pid)


@pytest.mark.parametrize("plant", ["native"], indirect=True)
def test_a_right_copy_owned_by_another_uid_is_not_shared(plant):
    """Case 4: a launcher running as root shares only copies its own uid made."""
    if os.geteuid() != 0:
        pytest.fail("this test must run as root to start a process as another user")
    decoy = subprocess.Popen(["/usr/bin/python3", "-I", "-c", DECOY_AS, plant.memfd], user=4242, group=4242,
                             stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    decoy.stdin.write(plant.data)
    decoy.stdin.close()
    try:
        wait_until(lambda: decoy.pid in memexec.running_from(plant.memfd) or decoy.poll() is not None,
                   "the other user's copy to run")
        assert decoy.poll() is None
        assert os.stat(f"/proc/{decoy.pid}/exe").st_uid == 4242
        p, err = plant.launch("launch")
        assert start_line(err)["exec_via"] == "memfd" and exe_inode(p.pid) != exe_inode(decoy.pid)
    finally:
        decoy.kill()
        decoy.wait(10)


@pytest.mark.parametrize("plant", ["native"], indirect=True)
def test_wrong_byte_decoys_cost_at_most_two_hashes_and_two_lines(plant):
    """Case 5: eight sealed decoys of the right size and name, one byte off: before, each was
    hashed in full and logged; now at most two are, and the launch makes its own copy."""
    other = bytearray(plant.data)
    other[-1] ^= 0xFF
    decoys = [plant.decoy(bytes(other), memexec.SEALS) for _ in range(8)]
    p, err = plant.launch("launch")
    assert start_line(err)["exec_via"] == "memfd"
    assert all(exe_inode(p.pid) != exe_inode(d.pid) for d in decoys)
    warns = [x for x in R.hclog_lines(err.read_bytes()) if x["@level"] == "warn"]
    assert 1 <= len(warns) <= 2, warns
