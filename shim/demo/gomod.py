"""Module-mode Go builds: our Go modules (go.mod and go.sum committed) with the machine's Go.

`shim/demo/gobuild.py` builds the go-plugin 1.0.1 peers in GOPATH mode from Debian's
packages; everything else of ours that is Go is a module, built here: the SDK plugins in
`shim/demo/sdkplugin/` (OpenBao's SDK; `vaultsdk/`, HashiCorp's, is a module of its own) and
the go-plugin current-release build of the interop peers (`tests/gopeer/go.mod`: the same
sources as the 1.0.1 build, `-tags goplugin_current`). Dependencies come from the module
cache, filled from the Go module proxy (`go mod download`, which build/install.sh runs);
`go.sum` pins every byte, and `-mod=readonly` keeps a build from editing it.

Which Go: the first of `go` on PATH and /usr/local/go/bin/go whose version is at least the
module's `go` line. Debian 12's golang-go (1.19, needed by gobuild) is too old for these
modules and is passed over; `GOTOOLCHAIN=local` keeps Go from fetching another toolchain.
Without a suitable Go, :class:`GoUnavailable` says in one line what to install.

Builds are reproducible (`-trimpath -buildvcs=false`, CGO off, so static) and cached by a
content hash of their inputs (the module's sources, go.mod, go.sum, package, tags, ldflags,
the Go version), like gobuild's; the result is copied out, so callers may modify their copy.

    required_go(module_dir)                                    -> (major, minor, patch) of its go line
    find_go(module_dir, candidates=GO_CANDIDATES)              -> Go (path, version)
    build(module_dir, package, dest_dir=, name=, ldflags=, tags=, cache_dir=, label=) -> Path
    build_sdk_plugin(kind, version, dest_dir, multiplex=False, cache_dir=None, name=None) -> Path
    download(module_dir)                                       -> None (go mod download)

`python -m shim.demo.gomod download [MODULE_DIR...]` fills the module cache (default: the
SDK plugin modules); `python -m shim.demo.gomod build` builds every SDK plugin once.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import NamedTuple, Sequence

from shim.demo.gobuild import GoBuildError, GoUnavailable, cached_build, default_cache_dir

SDKPLUGIN_DIR = Path(__file__).resolve().parent / "sdkplugin"
VAULTSDK_DIR = SDKPLUGIN_DIR / "vaultsdk"
# kind -> (module directory, main package, OpenBao plugin type)
SDK_PLUGINS: dict[str, tuple[Path, str, str]] = {
    "secret": (SDKPLUGIN_DIR, "./cmd/secret", "secret"),
    "auth": (SDKPLUGIN_DIR, "./cmd/auth", "auth"),
    "database": (SDKPLUGIN_DIR, "./cmd/database", "database"),
    "vaultsdk": (VAULTSDK_DIR, ".", "secret"),     # HashiCorp's vault/sdk
}
GO_CANDIDATES = ("go", "/usr/local/go/bin/go")
GO_DOWNLOAD = "https://go.dev/dl/"

_SEMVER = re.compile(r"(0|[1-9]\d*)\.(0|[1-9]\d*)\.(0|[1-9]\d*)")
_GO_LINE = re.compile(r"^go\s+(\d+)\.(\d+)(?:\.(\d+))?\s*$", re.M)
_GO_VERSION = re.compile(r"^go(\d+)\.(\d+)(?:\.(\d+))?")


class Go(NamedTuple):
    path: str
    version: str            # "go1.26.8"


def required_go(module_dir: Path | str) -> tuple[int, int, int]:
    """The module's `go` line: the oldest Go that builds it."""
    text = (Path(module_dir) / "go.mod").read_text()
    m = _GO_LINE.search(text)
    if m is None:
        raise GoBuildError(f"{Path(module_dir) / 'go.mod'} has no `go` line")
    return int(m.group(1)), int(m.group(2)), int(m.group(3) or 0)


def _version_of(go: str) -> str | None:
    try:
        out = subprocess.run([go, "env", "GOVERSION"], capture_output=True, text=True, timeout=60,
                             env={**os.environ, "GOTOOLCHAIN": "local", "GOFLAGS": ""})
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() if out.returncode == 0 else None


_found: dict[tuple, Go] = {}


def find_go(module_dir: Path | str, candidates: Sequence[str] = GO_CANDIDATES) -> Go:
    """The first Go in ``candidates`` at least as new as the module's `go` line, else
    GoUnavailable naming what was found and what to install."""
    need = required_go(module_dir)
    key = (need, tuple(candidates))
    if key in _found:
        return _found[key]
    seen: list[str] = []
    done: set[str] = set()
    for cand in candidates:
        path = shutil.which(cand)
        if path is None or os.path.realpath(path) in done:
            continue
        done.add(os.path.realpath(path))
        version = _version_of(path)
        m = _GO_VERSION.match(version or "")
        if m is None:
            seen.append(f"{path} (does not run)")
            continue
        have = (int(m.group(1)), int(m.group(2)), int(m.group(3) or 0))
        if have >= need:
            _found[key] = Go(path, version)
            return _found[key]
        seen.append(f"{path} is {version}")
    wanted = "{}.{}.{}".format(*need)
    raise GoUnavailable(
        f"the Go modules in {module_dir} need Go >= {wanted} (their go.mod), but "
        + ("; ".join(seen) if seen else "no `go` is on PATH or in /usr/local/go/bin")
        + f": install Go {wanted} or newer from {GO_DOWNLOAD} into /usr/local/go "
          "(Debian 12's golang-go is 1.19, too old for these modules)")


def _go_env() -> dict[str, str]:
    env = dict(os.environ)
    env.update({"GO111MODULE": "on", "GOFLAGS": "-mod=readonly", "GOTOOLCHAIN": "local",
                "CGO_ENABLED": "0", "GOWORK": "off"})
    for var in ("GOPATH", "GOROOT"):   # gobuild's GOPATH-mode settings must not leak in
        env.pop(var, None)
    return env


def _module_files(module_dir: Path) -> list[Path]:
    """The files that make up the module: go.mod, go.sum and its .go files, not those of a
    nested module (a directory with its own go.mod)."""
    out = []
    for dirpath, dirnames, filenames in os.walk(module_dir):
        here = Path(dirpath)
        dirnames[:] = sorted(d for d in dirnames if not (here / d / "go.mod").exists())
        out += [here / f for f in sorted(filenames)
                if f.endswith(".go") or (here == module_dir and f in ("go.mod", "go.sum"))]
    return out


def _diagnose(module_dir: Path, output: str) -> str:
    """A hint for the failures a user can fix."""
    if "proxy.golang.org" in output or "dial tcp" in output or "missing go.sum entry" in output:
        return (f"\nThe module cache lacks a dependency and it could not be downloaded: run "
                f"`go mod download` in {module_dir} where the Go module proxy is reachable "
                "(GOPROXY), or `python -m shim.demo.gomod download`.")
    return ""


def build(module_dir: Path | str, package: str, *, dest_dir: Path | str, name: str, ldflags: str = "",
          tags: Sequence[str] = (), cache_dir: Path | str | None = None, label: str | None = None) -> Path:
    """Build the main ``package`` (relative to ``module_dir``, "./cmd/x") into dest_dir/name,
    cached by content hash. Raises GoUnavailable or GoBuildError."""
    module_dir = Path(module_dir).resolve()
    go = find_go(module_dir)
    dest_dir = Path(dest_dir)
    dest_dir.mkdir(parents=True, exist_ok=True)
    root = Path(cache_dir) if cache_dir is not None else default_cache_dir(dest_dir)
    root.mkdir(parents=True, exist_ok=True)
    label = label or re.sub(r"[^A-Za-z0-9_.-]+", "-", f"{module_dir.name}-{package}").strip("-.")

    h = hashlib.sha256()
    for part in (str(module_dir), package, ldflags, ",".join(tags), go.version, str(Path(go.path).resolve())):
        h.update(part.encode() + b"\0")
    for f in _module_files(module_dir):
        h.update(str(f.relative_to(module_dir)).encode() + b"\0" + f.read_bytes() + b"\0")

    def compile_into(tmp_out: Path) -> dict:
        cmd = [go.path, "build", "-trimpath", "-buildvcs=false", "-o", str(tmp_out)]
        if tags:
            cmd += ["-tags", ",".join(tags)]
        if ldflags:
            cmd += ["-ldflags", ldflags]
        cmd.append(package)
        proc = subprocess.run(cmd, cwd=module_dir, capture_output=True, text=True, timeout=900, env=_go_env())
        if proc.returncode != 0:
            output = proc.stdout + proc.stderr
            raise GoBuildError(f"go build of {package} in {module_dir} with {go.version} failed "
                               f"(rc={proc.returncode}):\n{output}{_diagnose(module_dir, output)}")
        return {"label": label, "module": str(module_dir), "package": package, "ldflags": ldflags,
                "tags": list(tags), "go": go.version}

    return cached_build(root, label, h.hexdigest()[:20], compile_into, dest_dir / name)


def download(module_dir: Path | str) -> None:
    """Fill the module cache with everything go.sum names (needs the module proxy once)."""
    module_dir = Path(module_dir).resolve()
    go = find_go(module_dir)
    proc = subprocess.run([go.path, "mod", "download"], cwd=module_dir, capture_output=True, text=True,
                          timeout=900, env=_go_env())
    if proc.returncode != 0:
        output = proc.stdout + proc.stderr
        raise GoBuildError(f"go mod download in {module_dir} failed (rc={proc.returncode}):\n{output}"
                           f"{_diagnose(module_dir, output)}")


def build_sdk_plugin(kind: str, version: str, dest_dir: Path | str, *, multiplex: bool = False,
                     cache_dir: Path | str | None = None, name: str | None = None) -> Path:
    """Build an SDK plugin of ``kind`` (a key of SDK_PLUGINS) reporting `vX.Y.Z`, served by
    ServeMultiplex when ``multiplex``. Default file name: `sdk-<kind>[-mux]-<version>`."""
    if kind not in SDK_PLUGINS:
        raise ValueError(f"kind must be one of {sorted(SDK_PLUGINS)}, not {kind!r}")
    if not _SEMVER.fullmatch(version):
        raise ValueError(f"version must be X.Y.Z (the plugin reports vX.Y.Z), not {version!r}")
    module_dir, package, _ = SDK_PLUGINS[kind]
    mux = "-mux" if multiplex else ""
    return build(module_dir, package, dest_dir=dest_dir, name=name or f"sdk-{kind}{mux}-{version}",
                 ldflags=f"-X main.version=v{version} -X main.multiplex={'true' if multiplex else 'false'}",
                 cache_dir=cache_dir, label=f"sdk-{kind}{mux}")


def _main(argv: list[str]) -> int:
    usage = "usage: python -m shim.demo.gomod download [MODULE_DIR...] | build [DEST_DIR]"
    if not argv or argv[0] not in ("download", "build"):
        print(usage, file=sys.stderr)
        return 2
    try:
        if argv[0] == "download":
            for d in argv[1:] or sorted({str(m) for m, _, _ in SDK_PLUGINS.values()}):
                t0 = time.monotonic()
                download(d)
                print(f"gomod: modules of {d} are in the module cache ({time.monotonic() - t0:.0f} s)")
        else:
            dest = Path(argv[1]) if len(argv) > 1 else Path(tempfile.gettempdir()) / "vault-plugin-shim-sdk"
            t0 = time.monotonic()
            for kind in SDK_PLUGINS:
                for mux in (False, True):
                    build_sdk_plugin(kind, "1.0.0", dest, multiplex=mux)
            print(f"gomod: SDK plugins built into {dest} ({time.monotonic() - t0:.0f} s)")
    except (GoUnavailable, GoBuildError) as exc:
        print(f"gomod: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(_main(sys.argv[1:]))
