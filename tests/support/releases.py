"""Test helpers: keys, signed plugin versions and launchers, built with the real code paths."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from shim.goplugin.vault import COOKIES
from shim.launch.build import write_launcher
from shim.trust import minisign
from shim.trust.manifest import Manifest, Version, manifest_path, signature_path
from shim.trust.policy import Policy
from shim.trust.verify import digest_file, host_platform

PYTHON = os.path.abspath(sys.executable)


@dataclass
class Keys:
    secret: minisign.SecretKey

    @property
    def public(self) -> minisign.PublicKey:
        return self.secret.public_key()


def new_keys() -> Keys:
    return Keys(minisign.SecretKey.generate())


def script_plugin(path: Path, label: str) -> Path:
    """A plugin that prints 'ran LABEL ARGS...' on stdout: enough to see what was executed."""
    path.write_text(f'#!/bin/sh\necho "ran {label} $*"\n')
    path.chmod(0o755)
    return path


def make_manifest(binary: Path, *, name="myplugin", type="secret", version="1.0.0", expires=None,
                  issued=None, os_=None, arch=None) -> Manifest:
    sha256, size = digest_file(str(binary))
    goos, goarch = host_platform()
    now = int(time.time()) if issued is None else issued
    return Manifest(name=name, type=type, version=Version.parse(version),
                    sha256=sha256, size=size, os=os_ or goos,
                    arch=arch or goarch, issued_at=now, expires_at=expires)


def signature(keys: Keys, data: bytes, trusted_comment="test release") -> bytes:
    """The .minisig bytes for ``data``, as release CI signs a manifest (prehashed ``ED``)."""
    return minisign.sign_detached(data, keys.secret.key_id, keys.secret.sign, trusted_comment=trusted_comment)


def sign_bytes(keys: Keys, binary: Path, data: bytes, trusted_comment="test release") -> None:
    Path(manifest_path(str(binary))).write_bytes(data)
    Path(signature_path(str(binary))).write_bytes(signature(keys, data, trusted_comment))


def release(keys: Keys, binary: Path, **kw) -> Manifest:
    m = make_manifest(binary, **kw)
    sign_bytes(keys, binary, m.to_bytes(), m.trusted_comment())
    return m


def policy(plugins_dir: Path, *keys: Keys, name="myplugin", type="secret", min_version=None) -> Policy:
    return Policy(name=name, type=type, plugins_dir=str(plugins_dir),
                  trusted_keys=tuple(k.public for k in keys),
                  min_version=None if min_version is None else Version.parse(min_version))


def launcher(tmp: Path, pol: Policy | None, name="launcher", native: bool = False, hot_swap: bool = False) -> Path:
    """``native``: the native launcher (exec mode: no interpreter; proxy mode: it decides, then
    starts this interpreter on the proxy's code with its verdict)."""
    out = tmp / name
    write_launcher(pol, PYTHON, str(out), hot_swap=hot_swap, native=native)
    return out


def cookie_env(type="secret", **extra) -> dict:
    key, value = COOKIES[type]
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), key: value}
    env.update(extra)
    return env


def run(launcher_path: Path, *args, env=None, timeout=30) -> subprocess.CompletedProcess:
    return subprocess.run([str(launcher_path), *args], env=cookie_env() if env is None else env,
                          capture_output=True, timeout=timeout)


def hclog_lines(stderr: bytes) -> list[dict]:
    import json

    out = []
    for line in stderr.decode(errors="replace").splitlines():
        try:
            out.append(json.loads(line))
        except ValueError:
            continue
    return out
