"""What "read-only" guarantees for verifying a plugin in place and executing that same
descriptor (no sealed copy): experiments on this kernel, as root, in a private mount
namespace (every mount made here disappears with the process).

    sudo python -m benchmarks.readonly_exec [--size-mb 48] [--copies 10] [--limit-mb 240]

Each experiment prints what it did and what the kernel answered:

1. a read-only bind mount (``mount --bind`` + ``mount -o remount,bind,ro``): writes through
   it fail, but the same inode stays writable through any other mount of that file system;
2. a running executable: ``open(O_WRONLY)`` of its inode (by any path) fails with ETXTBSY;
   a writer that opened it *before* the exec makes the exec fail instead;
3. a read-only overlay (lower layers only, as an image volume or a read-only root file
   system is built): writes through it fail; a change to a lower layer's directory on the
   host shows through;
4. a writable overlay (an upper layer, a container's usual root file system): a write through
   the overlay copies the file up; what does a descriptor opened *before* that see, and what
   does it execute?
5. memory: ``--copies`` processes of a ``--size-mb`` binary in a memory cgroup limited to
   ``--limit-mb``, started (a) from a sealed memfd copy each, (b) in place from the read-only
   mount (``fexecve`` of the verified descriptor);
6. fs-verity, if this kernel and a loop-mounted ext4 allow it: a file whose bytes the kernel
   itself keeps immutable, measured by ``FS_IOC_MEASURE_VERITY``.
"""

from __future__ import annotations

import argparse
import ctypes
import errno
import fcntl
import hashlib
import os
import shutil
import signal
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
LIBC = ctypes.CDLL(None, use_errno=True)
MS_RDONLY, MS_REMOUNT, MS_BIND, MS_REC, MS_PRIVATE = 1, 32, 4096, 16384, 1 << 18
MB = 1024 * 1024


def mount(source: str, target: str, fstype: str | None, flags: int, data: str | None = None) -> None:
    rc = LIBC.mount(source.encode() if source else None, target.encode(),
                    fstype.encode() if fstype else None, flags, data.encode() if data else None)
    if rc != 0:
        e = ctypes.get_errno()
        raise OSError(e, f"mount {source} {target} ({fstype}, {data}): {os.strerror(e)}")


def attempt(fn) -> str:
    try:
        fn()
        return "ok"
    except OSError as exc:
        return errno.errorcode.get(exc.errno, str(exc.errno))


def write_file(path: Path, data: bytes) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_TRUNC)
    try:
        os.write(fd, data)
    finally:
        os.close(fd)


def sha(fd: int) -> str:
    h = hashlib.sha256()
    os.lseek(fd, 0, os.SEEK_SET)
    while chunk := os.read(fd, 1 << 20):
        h.update(chunk)
    return h.hexdigest()[:12]


def exec_fd_status(fd: int) -> int:
    """fexecve the descriptor in a child (argv: --version style no-op is not portable, so the
    programs here are /bin/true and /bin/false): its exit status."""
    pid = os.fork()
    if pid == 0:
        try:
            os.execve(fd, ["probe"], {})
        finally:
            os._exit(127)
    return os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1])


def experiments(work: Path) -> None:
    true_bin, false_bin = Path(shutil.which("true")).read_bytes(), Path(shutil.which("false")).read_bytes()

    print("1. read-only bind mount")
    src, ro = work / "src", work / "ro"
    src.mkdir()
    ro.mkdir()
    (src / "f").write_bytes(b"v1")
    mount(str(src), str(ro), None, MS_BIND)
    mount("", str(ro), None, MS_REMOUNT | MS_BIND | MS_RDONLY)
    print(f"   statvfs(ro).f_flag has ST_RDONLY: {bool(os.statvfs(ro).f_flag & os.ST_RDONLY)}")
    print(f"   open(ro/f, O_WRONLY): {attempt(lambda: write_file(ro / 'f', b'x'))}")
    print(f"   open(src/f, O_WRONLY) (the same inode, another mount): {attempt(lambda: write_file(src / 'f', b'v2'))}")
    print(f"   ro/f now reads {(ro / 'f').read_bytes()!r}: the read-only mount did not keep the bytes")

    print("2. a running executable")
    shutil.copyfile(shutil.which("sleep"), src / "sleep")
    os.chmod(src / "sleep", 0o755)
    proc = subprocess.Popen([str(ro / "sleep"), "30"])
    time.sleep(0.2)
    print(f"   open(src/sleep, O_WRONLY) while it runs from ro/: {attempt(lambda: os.close(os.open(src / 'sleep', os.O_WRONLY)))}")
    proc.kill()
    proc.wait()
    writer = os.open(src / "sleep", os.O_WRONLY)
    try:
        subprocess.run([str(ro / "sleep"), "0"], check=True)
        outcome = "ok"
    except OSError as exc:
        outcome = errno.errorcode.get(exc.errno, str(exc.errno))
    finally:
        os.close(writer)
    print(f"   exec of ro/sleep while another descriptor has it open for writing: {outcome}")

    print("3. read-only overlay (lower layers only)")
    l1, l2, merged = work / "l1", work / "l2", work / "ovl-ro"
    for d in (l1, l2, merged):
        d.mkdir()
    (l1 / "plugin").write_bytes(true_bin)
    os.chmod(l1 / "plugin", 0o755)
    (l2 / "other").write_bytes(b"x")
    mount("overlay", str(merged), "overlay", MS_RDONLY, f"lowerdir={l1}:{l2}")
    fd = os.open(merged / "plugin", os.O_RDONLY)
    before = sha(fd)
    print(f"   open(merged/plugin, O_WRONLY): {attempt(lambda: os.close(os.open(merged / 'plugin', os.O_WRONLY)))}")
    print(f"   write to the lower layer's file on the host (l1/plugin): "
          f"{attempt(lambda: write_file(l1 / 'plugin', false_bin))}")
    after = sha(fd)
    print(f"   the descriptor opened through the overlay before: sha256 {before} -> {after}; fexecve of it exits "
          f"{exec_fd_status(fd)} (true=0, false=1)")
    os.close(fd)

    print("4. writable overlay (upper layer)")
    low, up, wk, mrg = work / "low", work / "up", work / "wk", work / "ovl-rw"
    for d in (low, up, wk, mrg):
        d.mkdir()
    (low / "plugin").write_bytes(true_bin)
    os.chmod(low / "plugin", 0o755)
    mount("overlay", str(mrg), "overlay", 0, f"lowerdir={low},upperdir={up},workdir={wk}")
    fd = os.open(mrg / "plugin", os.O_RDONLY)
    before = sha(fd)
    res = attempt(lambda: write_file(mrg / "plugin", false_bin))
    after = sha(fd)
    print(f"   write through the overlay (copy-up): {res}; lower file unchanged: "
          f"{(low / 'plugin').read_bytes() == true_bin}")
    print(f"   descriptor opened before the copy-up: sha256 {before} -> {after}; fexecve of it exits "
          f"{exec_fd_status(fd)} (true=0, false=1)")
    os.close(fd)


def spawn(path: Path, how: str, env: dict) -> int:
    """A child that opens ``path``, hashes it, and either copies it into a sealed memfd
    (how="memfd") or keeps the descriptor (how="inplace"), then fexecve()s it."""
    code = (
        "import os, sys, hashlib, fcntl\n"
        "src = os.open(sys.argv[1], os.O_RDONLY)\n"
        "size = os.fstat(src).st_size\n"
        "if sys.argv[2] == 'memfd':\n"
        "    fd = os.memfd_create('copy', os.MFD_ALLOW_SEALING)\n"
        "    off = 0\n"
        "    while off < size:\n"
        "        off += os.sendfile(fd, src, off, size - off)\n"
        "    fcntl.fcntl(fd, fcntl.F_ADD_SEALS, fcntl.F_SEAL_WRITE | fcntl.F_SEAL_GROW | fcntl.F_SEAL_SHRINK)\n"
        "else:\n"
        "    fd = src\n"
        "h = hashlib.sha256()\n"
        "os.lseek(fd, 0, 0)\n"
        "while chunk := os.read(fd, 1 << 20):\n"
        "    h.update(chunk)\n"
        "os.execve(fd, ['plugin', '3600'], {})\n")
    return subprocess.Popen([sys.executable, "-I", "-S", "-c", code, str(path), how], env=env).pid


def memory_experiment(work: Path, size_mb: int, copies: int, limit_mb: int) -> None:
    print(f"5. {copies} processes of a {size_mb} MB binary in a memory cgroup limited to {limit_mb} MB")
    sys.path.insert(0, str(ROOT))
    from benchmarks.bao_memory import Cgroup  # noqa: E402
    from benchmarks.baostage import drop_cache  # noqa: E402

    big = work / "src" / "big-plugin"
    shutil.copyfile(shutil.which("sleep"), big)
    with open(big, "ab") as f:
        f.write(os.urandom(size_mb * MB - big.stat().st_size))
    os.chmod(big, 0o755)
    in_ro = work / "ro" / "big-plugin"
    for how in ("memfd", "inplace"):
        drop_cache([big])
        cg = Cgroup(f"ro-{how}")
        if cg.path is None:
            print(f"   no memory cgroup: {cg.why_not}")
            return
        pids = []
        try:
            if cg.version == 1:
                (cg.path / "memory.limit_in_bytes").write_text(str(limit_mb * MB))
            else:
                (cg.path / "memory.max").write_text(str(limit_mb * MB))
            r, w = os.pipe()
            helper = os.fork()
            if helper == 0:  # join the cgroup, then start the copies from inside it
                os.close(r)
                cg.add(os.getpid())
                started = [spawn(in_ro, how, {}) for _ in range(copies)]
                os.write(w, (" ".join(map(str, started)) + "\n").encode())
                os._exit(0)
            os.close(w)
            pids = [int(p) for p in os.read(r, 4096).split()]
            os.close(r)
            os.waitpid(helper, 0)
            end = time.monotonic() + 60
            while time.monotonic() < end:  # until every copy runs `plugin` or has died
                states = [_state(p) for p in pids]
                if all(s in ("exec", "dead") for s in states):
                    break
                time.sleep(0.1)
            states = [_state(p) for p in pids]
            use = cg.usage()
            oom = ""
            if cg.version == 1:
                oom = (cg.path / "memory.oom_control").read_text().split("oom_kill ")[-1].split()[0]
            print(f"   {how:8s}: running {states.count('exec')}/{copies}, died {states.count('dead')}; charged "
                  f"{use['charged'] / MB:.0f} MB, of which shmem {use['shmem'] / MB:.0f} MB and unreclaimable "
                  f"{use['unreclaimable'] / MB:.0f} MB; OOM kills {oom or '?'}")
        finally:
            for p in pids:
                try:
                    os.kill(p, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            for p in pids:
                try:
                    os.waitpid(p, 0)
                except ChildProcessError:
                    pass
            cg.close()


def _state(pid: int) -> str:
    try:
        comm = Path(f"/proc/{pid}/comm").read_text().strip()
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return "dead"
    if state == "Z":
        return "dead"
    return "exec" if comm not in ("python", "python3", "python3.11") else "starting"


FS_IOC_ENABLE_VERITY = 0x40806685
FS_IOC_MEASURE_VERITY = 0xC0046686


def verity_experiment(work: Path) -> None:
    print("6. fs-verity on a loop-mounted ext4")
    if not shutil.which("mkfs.ext4") or not shutil.which("losetup"):
        print("   mkfs.ext4 or losetup missing")
        return
    img, mnt = work / "verity.img", work / "verity"
    mnt.mkdir()
    with open(img, "wb") as f:
        f.truncate(64 * MB)
    mk = subprocess.run(["mkfs.ext4", "-q", "-O", "verity", "-F", str(img)], capture_output=True, text=True)
    if mk.returncode:
        print(f"   mkfs.ext4 -O verity failed: {mk.stderr.strip()}")
        return
    loop = subprocess.run(["losetup", "--find", "--show", str(img)], capture_output=True, text=True)
    if loop.returncode:
        print(f"   losetup failed: {loop.stderr.strip()}")
        return
    dev = loop.stdout.strip()
    try:
        mount(dev, str(mnt), "ext4", 0)
        target = mnt / "plugin"
        shutil.copyfile(shutil.which("true"), target)
        os.chmod(target, 0o755)
        fd = os.open(target, os.O_RDONLY)
        arg = struct.pack("<IIII Q II Q 88x", 1, 1, 4096, 0, 0, 0, 0, 0)
        try:
            fcntl.ioctl(fd, FS_IOC_ENABLE_VERITY, arg)
        except OSError as exc:
            print(f"   FS_IOC_ENABLE_VERITY: {errno.errorcode.get(exc.errno)} (kernel without CONFIG_FS_VERITY?)")
            os.close(fd)
            return
        buf = bytearray(struct.pack("<HH", 0, 64) + bytes(64))
        fcntl.ioctl(fd, FS_IOC_MEASURE_VERITY, buf)
        alg, size = struct.unpack_from("<HH", buf)
        print(f"   enabled; measured digest (sha256 Merkle root, alg {alg}): {bytes(buf[4:4 + size]).hex()[:16]}...")
        print(f"   open(plugin, O_WRONLY) by root: {attempt(lambda: os.close(os.open(target, os.O_WRONLY)))}")
        print(f"   fexecve of the measured descriptor exits {exec_fd_status(fd)}")
        os.close(fd)
    finally:
        LIBC.umount2(str(mnt).encode(), 2)
        subprocess.run(["losetup", "-d", dev], capture_output=True)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size-mb", type=int, default=48)
    ap.add_argument("--copies", type=int, default=10)
    ap.add_argument("--limit-mb", type=int, default=240)
    ap.add_argument("--in-namespace", action="store_true", help=argparse.SUPPRESS)
    a = ap.parse_args(argv)
    if os.geteuid() != 0:
        print("needs root (mounts, cgroups)", file=sys.stderr)
        return 2
    if not a.in_namespace:  # a private mount namespace: nothing mounted here is seen outside
        return subprocess.call(["unshare", "--mount", "--propagation", "private", sys.executable, "-m",
                                "benchmarks.readonly_exec", "--in-namespace", "--size-mb", str(a.size_mb),
                                "--copies", str(a.copies), "--limit-mb", str(a.limit_mb)], cwd=ROOT)
    print(f"kernel {os.uname().release}")
    with tempfile.TemporaryDirectory(prefix="vps-ro-") as tmp:
        work = Path(tmp)
        try:
            experiments(work)
            memory_experiment(work, a.size_mb, a.copies, a.limit_mb)
            verity_experiment(work)
        finally:
            for sub in ("ovl-rw", "ovl-ro", "ro"):
                LIBC.umount2(str(work / sub).encode(), 2)  # MNT_DETACH; the namespace ends anyway
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
