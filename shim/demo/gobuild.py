"""The one GOPATH-mode Go build helper: real go-plugin 1.0.1 plugins from Debian packages.

Everything is built offline (`GO111MODULE=off GOPROXY=off`, GOPATH mode) against Debian 12's
Go 1.19 and `/usr/share/gocode` (HashiCorp go-plugin 1.0.1, grpc 1.33, golang-protobuf 1.3.5),
with CGO disabled, so the binaries are static. Builds are cached by a content hash of their
inputs (Go sources, ldflags, the toolchain and library fingerprints, the go-plugin patch)
under a cache directory; the result is copied out, so callers may modify their copy.

    require_go()                                               -> None or GoUnavailable
    build_bao_plugin(kind, version, dest_dir, cache_dir=None, name=None) -> Path
    go_build(label, package, ldflags=..., dest_dir=..., name=..., ...)   -> Path  (the core)

`build_bao_plugin` builds the demo OpenBao plugins in `shim/demo/baoplugin/` (secret engine,
auth method, dbplugin v5 database plugin). They are built against a copy of go-plugin 1.0.1
with one fix from go-plugin 1.4.4: under AutoMTLS its plugin side dials broker ids with a
`tls.Config` that has neither `ServerName` nor `RootCAs`, so dialling OpenBao's Storage fails
with `certificate is valid for localhost, not unused`. The copy adds `RootCAs` (the host's
`PLUGIN_CLIENT_CERT`) and `ServerName: "localhost"` to that config, exactly as 1.4.4 does.
Debian's files are never modified: the copy lives in a private GOPATH entry of each build.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import re
import shutil
import subprocess
import tempfile
import time
import uuid
from pathlib import Path
from typing import Callable, Mapping

from shim.trust.verify import digest_file

GOCODE = Path("/usr/share/gocode")
GOCODE_SRC = GOCODE / "src"
BAOPLUGIN_DIR = Path(__file__).resolve().parent / "baoplugin"
BAOPLUGIN_IMPORT = "vaultpluginshim/baoplugin"
BAO_PLUGIN_KINDS = ("secret", "auth", "database")

# (path under /usr/share/gocode/src, Debian package providing it)
GO_LIBS: tuple[tuple[str, str], ...] = (
    ("github.com/hashicorp/go-plugin/client.go", "golang-github-hashicorp-go-plugin-dev"),
    ("github.com/hashicorp/go-plugin/test/grpc/test.pb.go", "golang-github-hashicorp-go-plugin-dev"),
    ("github.com/hashicorp/go-hclog/logger.go", "golang-github-hashicorp-go-hclog-dev"),
    ("google.golang.org/grpc/version.go", "golang-google-grpc-dev"),
    ("github.com/golang/protobuf/proto", "golang-goprotobuf-dev (golang-github-golang-protobuf-1-3-dev)"),
    ("github.com/golang/protobuf/ptypes/struct/struct.pb.go", "golang-goprotobuf-dev"),
    ("golang.org/x/net/context", "golang-golang-x-net-dev"),
)
APT_HINT = (
    "apt-get install -y --no-install-recommends golang-go golang-github-hashicorp-go-plugin-dev "
    "golang-google-grpc-dev golang-goprotobuf-dev golang-golang-x-net-dev"
)

GO_PLUGIN = "github.com/hashicorp/go-plugin"
# The AutoMTLS tls.Config literal in go-plugin 1.0.1's server.go, and what 1.4.4 adds to it.
_GO_PLUGIN_TLS_ANCHOR = re.compile(
    r"(tlsConfig = &tls\.Config\{\n\t\t\tCertificates: \[\]tls\.Certificate\{cert\},\n"
    r"\t\t\tClientAuth:   tls\.RequireAndVerifyClientCert,\n"
    r"\t\t\tClientCAs:    clientCertPool,\n)")
_GO_PLUGIN_TLS_FIX = (
    "\t\t\t// vault-plugin-shim: as go-plugin 1.4.4, so broker dials verify the host.\n"
    "\t\t\tRootCAs:    clientCertPool,\n"
    "\t\t\tServerName: \"localhost\",\n"
)


class GoUnavailable(RuntimeError):
    """Go or a Debian Go library is missing; the message names the packages."""


class GoBuildError(RuntimeError):
    """`go build` failed; the message holds its output."""


def _go_binary(go: str | None = None) -> str | None:
    return shutil.which(go or "go")


def require_go(go: str | None = None, gocode_src: Path | str | None = None,
               what: str = "Go plugins") -> None:
    """Raise GoUnavailable naming the missing Debian package(s), else return None."""
    src = Path(gocode_src) if gocode_src is not None else GOCODE_SRC
    missing: list[str] = []
    details: list[str] = []
    if _go_binary(go) is None:
        missing.append("golang-go")
        details.append(f"no `{go or 'go'}` on PATH")
    for rel, pkg in GO_LIBS:
        if not (src / rel).exists():
            if pkg not in missing:
                missing.append(pkg)
            details.append(f"missing {src / rel}")
    if missing:
        raise GoUnavailable(
            f"{what} cannot be built: missing Debian package(s) " + ", ".join(missing)
            + " (" + "; ".join(details) + "). Install with: " + APT_HINT)


# ---------------------------------------------------------------- the build core

_fingerprint: str | None = None
_gocache_for: dict[str, str] = {}


def _toolchain_fingerprint() -> str:
    """Cheap fingerprint of the Go toolchain and the Debian Go libraries."""
    global _fingerprint
    if _fingerprint is None:
        h = hashlib.sha256()
        go = _go_binary()
        paths = [Path(os.path.realpath(go))] if go else []
        paths += [GOCODE_SRC / rel for rel, _ in GO_LIBS]
        for p in paths:
            try:
                st = p.stat()
                h.update(f"{p}:{st.st_size}:{st.st_mtime_ns}\n".encode())
            except OSError:
                h.update(f"{p}:missing\n".encode())
        _fingerprint = h.hexdigest()
    return _fingerprint


def _writable(path: Path) -> bool:
    p = path
    while not p.exists():
        if p.parent == p:
            return False
        p = p.parent
    return os.access(p, os.W_OK | os.X_OK)


def _go_env(gopath: str, gocache: str) -> dict[str, str]:
    env = dict(os.environ)
    env.update({"GO111MODULE": "off", "GOPROXY": "off", "GOFLAGS": "", "GOTOOLCHAIN": "local",
                "GOPATH": gopath, "CGO_ENABLED": "0", "GOCACHE": gocache})
    return env


def _gocache(cache_root: Path) -> str:
    """Go's default GOCACHE when it is writable (warm across runs), else a private one."""
    key = str(cache_root)
    if key not in _gocache_for:
        default = ""
        try:
            default = subprocess.run(
                ["go", "env", "GOCACHE"], capture_output=True, text=True, timeout=60,
                env={**os.environ, "GO111MODULE": "off", "GOFLAGS": "", "GOTOOLCHAIN": "local"},
            ).stdout.strip()
        except (OSError, subprocess.SubprocessError):
            default = ""
        if default and default != "off" and _writable(Path(default)):
            _gocache_for[key] = default
        else:
            _gocache_for[key] = str(cache_root / "gocache")
    return _gocache_for[key]


def default_cache_dir(dest_dir: Path | str) -> Path:
    if os.environ.get("GOPEER_CACHE_DIR"):
        return Path(os.environ["GOPEER_CACHE_DIR"])
    return Path(dest_dir) / ".gopeer-cache"


def _tree_files(tree: Path) -> list[Path]:
    return sorted(p for p in tree.rglob("*.go") if p.is_file())


def _hash_tree(h: "hashlib._Hash", tree: Path) -> None:
    for f in _tree_files(tree):
        h.update(str(f.relative_to(tree)).encode() + b"\0" + f.read_bytes() + b"\0")


def _copy_go_tree(src: Path, dest: Path) -> None:
    for f in _tree_files(src):
        out = dest / f.relative_to(src)
        out.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(f, out)


def _patch_go_plugin(gopath_src: Path) -> None:
    """Copy Debian's go-plugin 1.0.1 (minus its tests) and apply the 1.4.4 broker TLS fix."""
    src = GOCODE_SRC / GO_PLUGIN
    dest = gopath_src / GO_PLUGIN
    for f in _tree_files(src):
        rel = f.relative_to(src)
        if f.name.endswith("_test.go") or rel.parts[0] == "test":
            continue
        out = dest / rel
        out.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(f, out)
    server = dest / "server.go"
    text = server.read_text()
    patched, n = _GO_PLUGIN_TLS_ANCHOR.subn(lambda m: m.group(1) + _GO_PLUGIN_TLS_FIX, text)
    if n != 1:
        raise GoBuildError(
            f"cannot apply the broker TLS fix to {src / 'server.go'}: its AutoMTLS tls.Config "
            "is not the one of go-plugin 1.0.1 (is golang-github-hashicorp-go-plugin-dev "
            "another version?)")
    server.write_text(patched)


def go_build(label: str, package: Path | str, *, dest_dir: Path | str, name: str,
             ldflags: str = "", cache_dir: Path | str | None = None,
             trees: Mapping[str, Path] | None = None, patch_go_plugin: bool = False,
             what: str = "Go plugins") -> Path:
    """Build one Go main package into dest_dir/name (cached by content hash).

    package: a directory holding a main package that imports only Debian's libraries
    (built in place), or an import path found in `trees` ({import path: source dir}),
    which are copied into a private GOPATH entry. patch_go_plugin puts the patched
    go-plugin copy (see the module docstring) in front of Debian's.
    """
    require_go(what=what)
    dest_dir = Path(dest_dir)
    dest_dir.mkdir(parents=True, exist_ok=True)
    root = Path(cache_dir) if cache_dir is not None else default_cache_dir(dest_dir)
    root.mkdir(parents=True, exist_ok=True)
    trees = dict(trees or {})

    h = hashlib.sha256()
    h.update(label.encode() + b"\0" + str(package).encode() + b"\0" + ldflags.encode() + b"\0"
             + _toolchain_fingerprint().encode() + b"\0")
    if isinstance(package, Path):
        for f in sorted(package.glob("*.go")):
            h.update(f.name.encode() + b"\0" + f.read_bytes() + b"\0")
    elif package.split("/")[0] not in {p.split("/")[0] for p in trees}:
        raise ValueError(f"import path {package!r} is not under any of trees {sorted(trees)}")
    for imp in sorted(trees):
        h.update(imp.encode() + b"\0")
        _hash_tree(h, trees[imp])
    if patch_go_plugin:
        h.update(b"go-plugin-fix\0" + _GO_PLUGIN_TLS_FIX.encode()
                 + (GOCODE_SRC / GO_PLUGIN / "server.go").read_bytes())

    def compile_into(tmp_out: Path) -> dict:
        with tempfile.TemporaryDirectory(prefix="gopath-", dir=root) as private:
            private_src = Path(private) / "src"
            private_src.mkdir()
            for imp, tree in trees.items():
                _copy_go_tree(tree, private_src / imp)
            if patch_go_plugin:
                _patch_go_plugin(private_src)
            cmd = ["go", "build", "-buildvcs=false", "-trimpath", "-o", str(tmp_out)]
            if ldflags:
                cmd += ["-ldflags", ldflags]
            if isinstance(package, Path):
                cwd, target = package, "."
            else:
                cwd, target = private, package
            cmd.append(target)
            proc = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=600,
                                  env=_go_env(f"{private}:{GOCODE}", _gocache(root)))
            if proc.returncode != 0:
                raise GoBuildError(f"go build of {package} failed (rc={proc.returncode}):\n"
                                   f"{proc.stdout}{proc.stderr}")
        return {"label": label, "package": str(package), "ldflags": ldflags}

    return cached_build(root, label, h.hexdigest()[:20], compile_into, dest_dir / name)


def cached_build(root: Path, label: str, key: str, build: Callable[[Path], dict], out: Path) -> Path:
    """The build cache of gobuild and gomod: ``root/<label>-<key>/<label>``, made once by
    ``build(tmp_path)`` (which returns what to record in build.json) under a lock, so that
    concurrent builds of the same inputs wait for one another; then copied to ``out``
    (atomically; callers may modify their copy)."""
    entry = root / f"{label}-{key}"
    built = entry / label
    with open(root / f".{label}-{key}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not built.exists():
            entry.mkdir(parents=True, exist_ok=True)
            tmp_out = entry / f".{label}.{os.getpid()}.tmp"
            t0 = time.monotonic()
            try:
                record = build(tmp_out)
            except BaseException:
                tmp_out.unlink(missing_ok=True)
                raise
            os.replace(tmp_out, built)
            (entry / "build.json").write_text(json.dumps({**record, "seconds": round(time.monotonic() - t0, 3)}))
    if out.exists() and out.stat().st_size == built.stat().st_size and digest_file(str(out)) == digest_file(str(built)):
        return out
    tmp = out.with_name(f".{out.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp")
    shutil.copy2(built, tmp)
    os.replace(tmp, out)
    return out


# ---------------------------------------------------------------- the demo OpenBao plugins

_SEMVER = re.compile(r"(0|[1-9]\d*)\.(0|[1-9]\d*)\.(0|[1-9]\d*)")


def build_bao_plugin(kind: str, version: str, dest_dir: Path | str,
                     cache_dir: Path | str | None = None, name: str | None = None, *,
                     broker_fix: bool = True) -> Path:
    """Build the demo OpenBao plugin of `kind` ("secret", "auth" or "database").

    `version` is X.Y.Z; the plugin reports `vX.Y.Z` (what OpenBao requires) from its
    logical.PluginVersion service and in its answers. Default file name:
    `bao-<kind>-<version>`. broker_fix=False builds against Debian's go-plugin as it is
    (to show the failure the fix is for).
    """
    if kind not in BAO_PLUGIN_KINDS:
        raise ValueError(f"kind must be one of {BAO_PLUGIN_KINDS}, not {kind!r}")
    if not _SEMVER.fullmatch(version):
        raise ValueError(f"version must be X.Y.Z (the plugin reports vX.Y.Z), not {version!r}")
    return go_build(
        f"bao-{kind}" if broker_fix else f"bao-{kind}-unfixed", f"{BAOPLUGIN_IMPORT}/cmd/{kind}",
        ldflags=f"-X main.version=v{version}", dest_dir=dest_dir,
        name=name or f"bao-{kind}-{version}", cache_dir=cache_dir,
        trees={BAOPLUGIN_IMPORT: BAOPLUGIN_DIR}, patch_go_plugin=broker_fix,
        what="the demo OpenBao plugins")
