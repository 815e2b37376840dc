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


def test_a_launch_in_a_root_with_nothing_but_the_launcher_versions_proc_and_a_static_host(go_build, tmp_path):
    assert os.geteuid() == 0, "chroot and a mount namespace need root (as CI runs)"
    host = go_build.host()
    plugin = go_build.plugin("1.0.0", 2)
    for binary in (host, plugin):
        described = subprocess.run(["file", "-b", str(binary)], capture_output=True, text=True, check=True).stdout
        assert "statically linked" in described, (binary, described)
    root = tmp_path / "root"
    versions = root / "vault" / "plugin-versions" / "myplugin"
    versions.mkdir(parents=True, mode=0o755)
    for d in (root, root / "vault", root / "vault" / "plugin-versions"):
        d.chmod(0o755)
    (root / "vault" / "plugins").mkdir(mode=0o755)
    (root / "proc").mkdir()
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
