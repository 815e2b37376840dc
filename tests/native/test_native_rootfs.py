"""Issue 20's acceptance: an exec-mode launch in a root file system that holds only the
native launcher, the signed versions, /proc, an empty /tmp for go-plugin's sockets and a
statically linked go-plugin host. No Python, no libc, no shared library, no shell, no /dev:
the plugin answers.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

from shim.launch.build import write_launcher
from tests.support import gopeer
from tests.support import releases as R


def skeleton(tmp_path: Path) -> tuple[Path, Path]:
    """An empty root file system with /proc, /vault/plugins and the plugin's versions directory
    (root-owned, 0755), as an image would hold them; returns the root and the versions directory."""
    root = tmp_path / "root"
    versions = root / "vault" / "plugin-versions" / "myplugin"
    versions.mkdir(parents=True, mode=0o755)
    for d in (root, root / "vault", root / "vault" / "plugin-versions"):
        d.chmod(0o755)
    (root / "vault" / "plugins").mkdir(mode=0o755)
    (root / "proc").mkdir()
    return root, versions


def test_a_launch_in_a_root_with_nothing_but_the_launcher_versions_proc_and_a_static_host(go_build, tmp_path):
    assert os.geteuid() == 0, "chroot and a mount namespace need root (as CI runs)"
    host = go_build.host()
    plugin = go_build.plugin("1.0.0", 2)
    for binary in (host, plugin):
        described = subprocess.run(["file", "-b", str(binary)], capture_output=True, text=True, check=True).stdout
        assert "statically linked" in described, (binary, described)
    root, versions = skeleton(tmp_path)
    (root / "tmp").mkdir()
    (root / "tmp").chmod(0o1777)
    shutil.copy(host, root / "host")
    keys = R.new_keys()
    shutil.copy(plugin, versions / "myplugin-1.0.0")
    (versions / "myplugin-1.0.0").chmod(0o755)
    R.release(keys, versions / "myplugin-1.0.0", version="1.0.0")
    launcher = root / "vault" / "plugins" / "myplugin-shim"
    write_launcher(R.policy(Path("/vault/plugin-versions/myplugin"), keys), None, str(launcher), native=True)

    everything = sorted(str(p.relative_to(root)) for p in root.rglob("*"))
    assert everything == ["host", "proc", "tmp", "vault", "vault/plugin-versions", "vault/plugin-versions/myplugin",
                          "vault/plugin-versions/myplugin/myplugin-1.0.0",
                          "vault/plugin-versions/myplugin/myplugin-1.0.0.manifest.json",
                          "vault/plugin-versions/myplugin/myplugin-1.0.0.manifest.json.minisig",
                          "vault/plugins", "vault/plugins/myplugin-shim"], everything

    argv = gopeer.host_argv("/host", "/vault/plugins/myplugin-shim", "ping", sha256=gopeer.sha256_file(launcher))
    # A private mount and PID namespace: /proc inside the root shows only what runs there.
    script = 'mount -t proc proc "$0/proc" && exec env -i TMPDIR=/tmp /usr/sbin/chroot "$0" "$@"'
    proc = subprocess.run([shutil.which("unshare") or "unshare", "--mount", "--pid", "--fork", "--", "/bin/sh", "-c",
                           script, str(root), *argv], capture_output=True, text=True, timeout=120,
                          env={"PATH": "/usr/sbin:/usr/bin:/sbin:/bin"})
    res = gopeer._make_result(argv, proc.returncode, proc.stdout, proc.stderr)
    assert res.ok and res.results == ["version=1.0.0"], res.describe()
    assert res.logs(level="info", message="vault-plugin-shim: starting secret plugin myplugin 1.0.0"), res.describe()


def test_doctor_by_hand_in_a_root_without_python_gives_the_verdict(tmp_path):
    """Issue 20: `L doctor` (and `L explain --json`) in an image with no Python, no libc and no
    shell: the launcher, the signed versions and /proc. The verdict, each refused candidate's
    reason, and the exit status (`L`: 0 when a version would run; `L doctor`: 1 also when a newer
    version is refused, as vault-plugin-shim doctor)."""
    import json

    assert os.geteuid() == 0, "chroot and a mount namespace need root (as CI runs)"
    root, versions = skeleton(tmp_path)
    keys = R.new_keys()
    for version in ("1.0.0", "2.0.0"):
        binary = versions / f"myplugin-{version}"
        binary.write_bytes(b"\x7fELF not run by doctor " + version.encode())
        binary.chmod(0o755)
        R.release(keys, binary, version=version)
    with open(versions / "myplugin-2.0.0", "ab") as fh:
        fh.write(b"tampered")
    pol = R.policy(Path("/vault/plugin-versions/myplugin"), keys)
    write_launcher(pol, None, str(root / "vault" / "plugins" / "myplugin-shim"), native=True)
    write_launcher(pol.replace(on_refused_newer="refuse"), None, str(root / "vault" / "plugins" / "refusing-shim"),
                   native=True)
    assert not [p for p in root.rglob("*") if p.name.startswith(("python", "lib", "sh"))]

    def by_hand(launcher: str, *args: str) -> subprocess.CompletedProcess:
        script = 'mount -t proc proc "$0/proc" && exec env -i /usr/sbin/chroot "$0" "$@"'
        return subprocess.run([shutil.which("unshare") or "unshare", "--mount", "--pid", "--fork", "--", "/bin/sh",
                               "-c", script, str(root), f"/vault/plugins/{launcher}", *args], capture_output=True,
                              text=True, timeout=60, env={"PATH": "/usr/sbin:/usr/bin:/sbin:/bin"})

    refused = "myplugin-2.0.0: refused: DigestMismatchError: is 36 bytes, the signed manifest says 28"
    proc = by_hand("myplugin-shim", "doctor")
    assert proc.returncode == 1 and proc.stdout == "", proc.stderr     # as vault-plugin-shim doctor
    assert "myplugin-1.0.0: ok, version 1.0.0 (runs)" in proc.stderr and refused in proc.stderr, proc.stderr
    assert "next launch runs: /vault/plugin-versions/myplugin/myplugin-1.0.0" in proc.stderr
    assert "fallback: 1 version(s) newer than 1.0.0 are present and refused" in proc.stderr
    assert "doctor: FAIL (exit status 1): a newer version is refused" in proc.stderr
    proc = by_hand("myplugin-shim")
    assert proc.returncode == 0 and "next launch runs: /vault/plugin-versions/myplugin/myplugin-1.0.0" in proc.stderr

    proc = by_hand("refusing-shim", "doctor")
    assert proc.returncode == 1 and proc.stdout == "", proc.stderr
    assert refused in proc.stderr and "next launch refuses: NewerVersionRefusedError: 1 version(s) newer than " \
                                      "1.0.0 are present and refused" in proc.stderr, proc.stderr

    proc = by_hand("refusing-shim", "explain", "--json")
    assert proc.returncode == 1 and proc.stderr == "", proc.stderr
    doc = json.loads(proc.stdout)
    assert doc["runs"] is None and doc["refusal"]["error"] == "NewerVersionRefusedError"
    assert [c["verdict"] for c in doc["candidates"]] == ["ok", "refused"]
