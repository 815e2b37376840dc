"""The launcher's entry point: what Vault runs in place of the plugin.

Vault starts the launcher with its own argv and env. The launcher:

1. refuses to do anything without the go-plugin magic cookie (run by hand, it explains
   itself on stderr and exits 1);
2. takes the trust policy embedded in itself (or, for a launcher built without one, from
   the catalog's args);
3. picks the highest version in the plugins directory that passes every check, logging
   each rejected candidate;
4. copies that binary into a sealed memfd, checks the sha256 of the sealed copy, and
   ``fexecve``\\s it with Vault's argv and env.

A native proxy-mode launcher (shim/launch/stubs/native/nv_proxy.c) did 1 to 3 and the copy of 4
itself before it started this code: :func:`main_from_stub` then gets its verdict
(:class:`NativeVerdict`) and runs the proxy on it, never selecting.

Nothing is ever written to stdout: before the handshake, stdout belongs to go-plugin.
Diagnostics are hclog JSON lines on stderr, so Vault logs them at their level.
"""

from __future__ import annotations

import errno
import os
import sys
import time

from shim.goplugin import hclog
from shim.goplugin.errors import Diagnostic
from shim.goplugin.vault import COOKIES
from shim.launch.errors import LaunchError
from shim.trust.errors import DigestMismatchError, NewerVersionRefusedError, PolicyError, RejectedError
from shim.trust.manifest import format_time
from shim.trust.policy import Policy, split_args
from shim.trust.verify import (MANIFEST_SUFFIX, SIGNATURE_SUFFIX, Candidate, PluginDir, check_digest, expires_soon,
                               select)

EXIT_REFUSED = 1
HAND_RUN_TEXT = """\
This is a vault-plugin-shim launcher for the {type} plugin {name!r}.

It is not meant to be run by hand. Vault (or OpenBao) runs it in place of the plugin:
it verifies the signed plugin versions in {plugins_dir} against its
embedded trust policy and then executes the highest valid one.

To see what it would do on this node, run:
    {launcher} doctor
or, where vault-plugin-shim is installed:
    vault-plugin-shim launcher inspect {launcher}
    vault-plugin-shim verify --launcher {launcher}
"""


DOCTOR_BOOTSTRAP = """\
import sys
try:
    from shim.ops.doctor import run
except ImportError as exc:
    sys.stderr.write("vault-plugin-shim: `doctor` needs the vault-plugin-shim package installed for "
                     + sys.executable + " (" + str(exc) + "). The launcher carries only what a launch "
                     "runs. Install it (pip install vault-plugin-shim), or run "
                     "`vault-plugin-shim doctor --launcher LAUNCHER` where it is installed.\\n")
    raise SystemExit(2)
raise SystemExit(run(sys.argv[1:]))
"""


def run_doctor(launcher: str, args: list[str]) -> int:
    """``L doctor``, run by an operator (no cookie, so not by Vault). The diagnosis lives in
    ``shim.ops``, which the launcher does not carry (its bytes are what Vault pins): run it
    from the installed package, with the same interpreter."""
    try:
        os.execv(sys.executable, [sys.executable, "-I", "-c", DOCTOR_BOOTSTRAP, "--launcher", launcher, *args])
    except OSError as exc:
        sys.stderr.write(f"vault-plugin-shim: cannot run doctor with {sys.executable}: {exc.strerror}\n")
        return EXIT_REFUSED


def load_policy(embedded: str | None, args: list[str]) -> tuple[Policy, list[str]]:
    """An embedded policy is final. Only a launcher built without one reads the catalog
    args; environment variables are never consulted (they can come from the pod)."""
    if embedded is not None:
        return Policy.from_json(embedded), list(args)
    policy, rest = split_args(args)
    if policy is None:
        raise PolicyError("this launcher has no embedded policy and the catalog entry has no --shim-policy= arg",
                          fix="build the launcher with --trusted-key, or register it with the "
                              "--shim-policy= value that `launcher build --policy-in-args` printed: "
                              "`vault-plugin-shim register ... --arg=--shim-policy=...`")
    return policy, rest


class NativeVerdict:
    """What a native proxy-mode launcher decided before it started us
    (shim/launch/stubs/native/nv_proxy.c): the chosen candidate with its signed manifest, the
    sealed, verified copy's descriptor and how it was made, and for hot swap a descriptor of
    the launcher's own bytes (its select-only mode makes each rescan's decision)."""

    __slots__ = ("candidate", "fd", "how", "self_fd", "launcher")

    def __init__(self, candidate: Candidate, fd: int, how: str, self_fd: int | None, launcher: str):
        self.candidate, self.fd, self.how, self.self_fd, self.launcher = candidate, fd, how, self_fd, launcher


class _KeyId:
    """The trusted key that signed, as the native launcher names it (its id is all a launch shows)."""

    __slots__ = ("key_id_hex",)

    def __init__(self, key_id_hex: str):
        self.key_id_hex = key_id_hex


HOWS = ("memfd", "memfd-shared", "private-file")


def candidate_from_verdict(verdict: dict[str, str]) -> tuple[Candidate, str]:
    """The candidate and ``how`` of a native verdict (stubs.VERDICT_KEYS/HANDBACK_KEYS): the
    launcher verified the signature and the bytes; this only turns its text back into values."""
    from shim.launch.stubs import StubError
    from shim.trust.manifest import Manifest, Version

    try:
        manifest = Manifest(verdict["name"], verdict["type"], Version.parse(verdict["version"]), verdict["sha256"],
                            int(verdict["size"]), verdict["os"], verdict["arch"], int(verdict["issued_at"]),
                            int(verdict["expires_at"]) if verdict["expires_at"] else None)
        if verdict["how"] not in HOWS or not verdict["key_id"] or not verdict["binary"] or not verdict["file"]:
            raise ValueError("how, key_id, binary or file")
    except (KeyError, ValueError, TypeError) as exc:
        raise StubError(f"the native launcher's verdict cannot be read ({exc})") from None
    cand = Candidate(verdict["binary"], verdict["file"])
    cand.manifest, cand.key = manifest, _KeyId(verdict["key_id"])
    return cand, verdict["how"]


def _verdict_fd(text: str, what: str) -> int:
    from shim.launch.stubs import StubError

    if not text.isdigit() or int(text) < 3:
        raise StubError(f"the native launcher's verdict names no {what} descriptor ({text!r})")
    fd = int(text)
    try:
        os.fstat(fd)
        os.set_inheritable(fd, False)  # ours; the proxy's children get only what it gives them
    except OSError as exc:
        raise StubError(f"the native launcher's {what} descriptor {fd} is not open ({exc.strerror})") from None
    return fd


def native_verdict(verdict: dict[str, str], exe: str, hot_swap: bool) -> NativeVerdict:
    from shim.launch.stubs import StubError

    cand, how = candidate_from_verdict(verdict)
    fd = _verdict_fd(verdict["fd"], "plugin copy")
    if os.fstat(fd).st_size != cand.manifest.size:
        raise StubError(f"the native launcher's copy is {os.fstat(fd).st_size} bytes, its verdict says "
                        f"{cand.manifest.size}")
    if bool(verdict["self_fd"]) != hot_swap:
        raise StubError("the native launcher's hot swap flag and its Python part's disagree")
    self_fd = _verdict_fd(verdict["self_fd"], "launcher copy") if hot_swap else None
    return NativeVerdict(cand, fd, how, self_fd, exe)


def main_from_stub(embedded_policy: str | None, mode: str = "exec", hot_swap: bool = False,
                   native: bool = False) -> int:
    """What the launcher's ``__main__`` runs. The static stub started us with a fixed
    environment; Vault's own argv and environment, byte for byte, and the launcher's real
    path are in the context memfd named on our command line. ``native``: the native
    proxy-mode launcher started us, and its context also holds its verdict and the sealed
    copy (:class:`NativeVerdict`): we run that, and never select."""
    from shim.launch import stubs

    flag = next((a for a in sys.argv[1:] if a.startswith(stubs.CONTEXT_FLAG)), None)
    verdict = None
    try:
        if flag is None or not flag[len(stubs.CONTEXT_FLAG):].isdigit():
            raise stubs.StubError("the launcher's code was started without its stub (no launch context)",
                                  fix="run the launcher file itself, as Vault does")
        fd = int(flag[len(stubs.CONTEXT_FLAG):])
        try:
            raw_argv, raw_env, exe, handed = stubs.read_launch_context(fd)
        finally:
            os.close(fd)
        code = sys.argv[0]
        if code.startswith("/proc/self/fd/") and code[14:].isdigit():
            os.set_inheritable(int(code[14:]), False)  # our code, not the plugin's
        if native != (handed is not None):
            raise stubs.StubError("this launcher's code runs the native launcher's verdict, but its context holds "
                                  "none" if native else "a native launcher's context reached a stub's code")
        if handed is not None:
            verdict = native_verdict(handed, os.fsdecode(exe), hot_swap)
    except stubs.StubError as exc:
        hclog.error("vault-plugin-shim: cannot read the launch context", **exc.fields())
        return EXIT_REFUSED
    except OSError as exc:
        hclog.error("vault-plugin-shim: cannot read the launch context", reason=exc.strerror or str(exc),
                    fix="run the launcher file itself, as Vault does")
        return EXIT_REFUSED
    argv = [os.fsdecode(a) for a in raw_argv]
    env, dropped = {}, []
    for entry in raw_env:
        key, sep, value = entry.partition(b"=")
        if not sep or not key:
            dropped.append(entry)  # os.execve takes NAME=VALUE pairs with a name: it cannot carry these
            continue
        env.setdefault(os.fsdecode(key), os.fsdecode(value))  # execve: the first one wins
    if dropped:
        shown = ", ".join(repr(os.fsdecode(e))[:80] for e in dropped[:5]) + (" ..." if len(dropped) > 5 else "")
        hclog.warn(f"vault-plugin-shim: {len(dropped)} environment entr{'y' if len(dropped) == 1 else 'ies'} "
                   f"without a NAME= cannot be passed to the plugin by this launcher and {'was' if len(dropped) == 1 else 'were'} "
                   f"dropped: {shown}", fix="remove them from the catalog's env (a plugin cannot read them by name anyway)")
    return main(embedded_policy, argv, env, launcher_path=os.fsdecode(exe), mode=mode, hot_swap=hot_swap,
                verdict=verdict)


def main(embedded_policy: str | None, argv: list[str], env: dict, clock=time.time, *,
         launcher_path: str | None = None, mode: str = "exec", hot_swap: bool = False,
         verdict: NativeVerdict | None = None) -> int:
    """``argv`` and ``env`` are Vault's; ``launcher_path`` the launcher's real path (a
    relative plugins dir is resolved from it); ``mode`` the one this launcher was built for;
    ``hot_swap`` whether it was built to swap versions in (proxy mode only); ``verdict`` the
    native launcher's decision (proxy mode only), which is then run instead of selecting."""
    try:
        return _main(embedded_policy, argv, env, clock, launcher_path, mode, hot_swap, verdict)
    except KeyboardInterrupt:
        hclog.error("vault-plugin-shim: interrupted (SIGINT) before the plugin started; nothing was run",
                    reason="SIGINT", fix="let Vault start and stop the plugin; a Ctrl-C in Vault's terminal "
                                         "reaches its plugins too")
        return EXIT_REFUSED


def _main(embedded_policy, argv, env, clock, launcher_path, mode, hot_swap=False, verdict=None) -> int:
    launcher = argv[0] if argv else "launcher"
    if argv[1:2] == ["doctor"] and not any(key in env for key, _ in COOKIES.values()):
        return run_doctor(launcher_path or launcher, argv[2:])
    try:
        policy, plugin_args = load_policy(embedded_policy, argv[1:])
        policy = policy.resolved(launcher_path or launcher)
        if policy.mode != mode:
            raise PolicyError(f"the policy asks for {policy.mode} mode, but this launcher was built for {mode} "
                              "mode and holds only that mode's code",
                              fix=f"rebuild the launcher with --mode {policy.mode}, or register the policy "
                                  "that `launcher build` printed for it")
        if verdict is not None and policy.mode != "proxy":
            raise PolicyError("a native launcher's verdict reached the Python code of an exec-mode launcher")
    except Diagnostic as exc:
        hclog.error("vault-plugin-shim: invalid launcher policy", launcher=launcher, **exc.fields())
        return EXIT_REFUSED
    cookie_key, cookie_value = policy.cookie
    if env.get(cookie_key) != cookie_value:
        other = "/".join(t for t, (k, v) in COOKIES.items() if env.get(k) == v)
        if other or any(k in env for k, _ in COOKIES.values()):
            # Started by Vault (a cookie is there), but not as the type this launcher serves.
            hclog.error(f"vault-plugin-shim: this launcher serves a {policy.type} plugin, but Vault started it "
                        f"as {'a ' + other if other else 'an unknown'} plugin (its magic cookie)",
                        plugin=policy.name, launcher=launcher,
                        fix=f"register the launcher with type {policy.type} "
                            f"(`vault plugin register ... {policy.type} {policy.name}`), or build one for that type")
            return EXIT_REFUSED
        sys.stderr.write(HAND_RUN_TEXT.format(type=policy.type, name=policy.name,
                                              plugins_dir=policy.plugins_dir, launcher=launcher))
        sys.stderr.flush()
        return EXIT_REFUSED
    try:
        if policy.mode == "proxy":
            return launch_proxy(policy, plugin_args, env, clock(), hot_swap=hot_swap, verdict=verdict)
        launch_exec(policy, plugin_args, env, clock())
    except Diagnostic as exc:
        hclog.error(f"vault-plugin-shim: refusing to start {policy.type} plugin {policy.name}: {exc.reason}",
                    plugin=policy.name, **exc.fields())
        return EXIT_REFUSED
    return EXIT_REFUSED  # launch_exec only returns by raising


MAX_REJECTION_LINES = 10  # per launch; the rest are counted in one line (doctor lists them all)
STILL_WRITTEN = 10.0      # a hot swap's rescan: files changed this recently may still be being copied in
QUIET_WHEN_NEWER_RUNS = ("ExpiredError", "RollbackError")


def _being_written(cand: Candidate, now: float) -> float | None:
    """For a binary shorter than its signed size (a release is copied in as three files, a
    large binary slowly): seconds since the newest change to any of its files, if that is
    within STILL_WRITTEN; else None. A binary of the signed size or longer with other bytes
    is not being written: it is wrong."""
    return None if cand.manifest is None else still_written(cand.path, cand.manifest.size, now)


def still_written(binary: str, signed_size: int, now: float) -> float | None:
    """:func:`_being_written` for a binary path and its signed size (hot swap's native rescans
    learn both from the launcher's rejection line)."""
    try:
        if os.lstat(binary).st_size >= signed_size:
            return None
    except OSError:
        return None
    newest = 0.0
    for path in (binary, binary + MANIFEST_SUFFIX, binary + SIGNATURE_SUFFIX):
        try:
            newest = max(newest, os.lstat(path).st_mtime)
        except OSError:
            continue
    age = now - newest
    return age if newest and age < STILL_WRITTEN else None


def _log_rejections(selection, policy: Policy, rescan_at: float | None = None) -> None:
    """One line per rejected candidate, at the level it deserves, at most
    ``MAX_REJECTION_LINES`` of them. An older version that is rightly skipped (expired, below
    the floor) while a newer one runs is routine: debug. Anything else that was refused is
    an error: a tampered or untrusted newer version is exactly what an operator must see.
    In a hot swap's rescan (``rescan_at``: its wall-clock time) a binary shorter than signed
    whose files changed moments ago is most likely still being copied in: a WARN, and the next
    rescan looks again."""
    chosen = selection.chosen
    loud = 0
    for cand in selection.candidates:
        exc = cand.error
        if exc is None:
            continue
        older = (chosen is not None and cand.manifest is not None
                 and cand.manifest.version < chosen.manifest.version)
        level = "debug" if older and type(exc).__name__ in QUIET_WHEN_NEWER_RUNS else "warn" if older else "error"
        note = ""
        if level == "error" and rescan_at is not None:
            age = _being_written(cand, rescan_at)
            if age is not None:
                level = "warn"
                note = (f" (its files changed {age:.1f} s ago: still being copied in? the next rescan, once the "
                        "directory is quiet, looks again)")
        if level != "debug":
            loud += 1
            if loud > MAX_REJECTION_LINES:
                continue
        hclog.log(level, f"vault-plugin-shim: rejected candidate {exc.path or cand.path}: {exc.reason}{note}",
                  candidate=cand.binary, **exc.fields())
    if loud > MAX_REJECTION_LINES:
        hclog.error(f"vault-plugin-shim: {loud - MAX_REJECTION_LINES} more rejected candidates in "
                    f"{policy.plugins_dir} not logged", plugin=policy.name,
                    fix="run `vault-plugin-shim doctor --launcher <launcher>` on this node to list them all, "
                        "and remove what does not belong in the plugins directory")


def select_sealed(policy: Policy, now: float, *, tmpdir: str | None = None,
                  skip=None, rescan: bool = False) -> tuple[Candidate, int, str]:
    """The one selection path of both modes: the highest candidate whose binary, copied
    into a sealed memfd (or the private-copy fallback), hashes to its signed manifest.
    Returns (candidate, fd of the verified copy, how it was made). ``skip(candidate)``
    (hot swap) may return why a candidate is not to be tried (it failed to take over
    before): it is then rejected with that reason, before its bytes are read. ``rescan``: a
    hot swap's look at the directory, where a release still being copied in is expected."""
    from shim.launch import memexec

    def seal(pdir: PluginDir, cand: Candidate) -> tuple[int, str]:
        why = skip(cand) if skip is not None else None
        if why:
            raise RejectedError(why, path=cand.path, fix="replace or remove this release; a changed file is tried "
                                                         "again")
        name = f"{policy.name}-{cand.manifest.version}"
        src = pdir.open_binary(cand)
        shared = _shared_copy(cand, name)
        if shared is not None:
            os.close(src)
            return shared, "memfd-shared"
        try:
            fd, how = memexec.materialize(src, cand.manifest.size, name, tmpdir=tmpdir)
        except OSError as exc:
            raise memexec.describe_os_error(exc, "copy the binary for verification", tmpdir) from exc
        finally:
            os.close(src)
        try:
            check_digest(fd, cand)  # hash the sealed copy: the bytes that will run
        except BaseException:
            os.close(fd)
            raise
        return fd, how

    selection = select(policy, now, seal)
    _log_rejections(selection, policy, rescan_at=time.time() if rescan else None)
    if selection.chosen is None:
        raise selection.refusal(policy)
    fd, how = selection.value
    try:
        _no_quiet_fallback(selection, policy, now)
    except BaseException:
        os.close(fd)
        raise
    return selection.chosen, fd, how


def _no_quiet_fallback(selection, policy: Policy, now: float) -> None:
    """Issue 16, the launch side: refuse to fall back past a refused newer version when the
    policy says so (``on_refused_newer: refuse``; the default runs the older one, and the
    refusal was logged at ERROR above), and warn at each launch within
    :data:`~shim.trust.verify.EXPIRY_WARNING` of the chosen manifest's expiry."""
    chosen = selection.chosen
    passed_over = selection.passed_over()
    if passed_over and policy.on_refused_newer == "refuse":
        first = passed_over[0]
        raise NewerVersionRefusedError(
            f"{len(passed_over)} version(s) newer than {chosen.manifest.version} are present and refused, "
            f"and this launcher's policy refuses to fall back (on_refused_newer: refuse)",
            path=first.path)
    left = expires_soon(chosen.manifest, now)
    if left is not None:
        hclog.warn(f"vault-plugin-shim: {policy.type} plugin {policy.name} {chosen.manifest.version} expires at "
                   f"{format_time(chosen.manifest.expires_at)}, in {left / 86400:.1f} days: after that no launcher "
                   f"starts it", plugin=policy.name, file=chosen.path,
                   fix="re-sign the same binary with a later --expires (or none) and ship the new manifest "
                       "and .minisig")


def _shared_copy(cand: Candidate, name: str) -> int | None:
    """A sealed memfd of this version that a running process already executes, if one
    hashes to the signed manifest (shim.launch.memexec.sealed_siblings); else None."""
    from shim.launch import memexec

    found = None
    for fd in memexec.sealed_siblings(name, cand.manifest.size):
        if found is not None:
            os.close(fd)
            continue
        try:
            check_digest(fd, cand)
        except DigestMismatchError as exc:
            os.close(fd)
            hclog.warn(f"vault-plugin-shim: a running process's sealed memfd named {name} does not match the "
                       "signed manifest; ignored, making our own copy", file=cand.path, reason=exc.reason,
                       fix="find the process that runs it (doctor lists them) and why it has that name")
            continue
        except BaseException:
            os.close(fd)
            raise
        found = fd
    return found


def _log_start(policy: Policy, cand: Candidate, how: str, **extra) -> None:
    manifest = cand.manifest
    hclog.info(f"vault-plugin-shim: starting {policy.type} plugin {policy.name} {manifest.version}",
               plugin=policy.name, version=str(manifest.version), sha256=manifest.sha256,
               key_id=cand.key.key_id_hex, file=cand.path, exec_via=how, **extra)


def _private_copy(cand: Candidate, fd: int, tmpdir: str | None, refused: str) -> int:
    """The kernel or an LSM refused to execute the memfd: copy the *verified* bytes (not
    the file again: no second selection) into a private file, hash that copy, use it."""
    from shim.launch import memexec

    hclog.warn("vault-plugin-shim: executing from a memfd was refused; using a private copy of the verified "
               "bytes", reason=refused, file=cand.path)
    try:
        copy = memexec.to_private_file(fd, cand.manifest.size, os.path.basename(cand.path), tmpdir)
    except OSError as exc:
        raise memexec.describe_os_error(exc, "make the private copy", tmpdir) from exc
    finally:
        os.close(fd)
    try:
        check_digest(copy, cand)
    except BaseException:
        os.close(copy)
        raise
    return copy


def _cannot_execute(cand: Candidate, exc: OSError | str, tmpdir: str | None, how: str) -> LaunchError:
    from shim.launch import memexec

    strerror = exc if isinstance(exc, str) else (exc.strerror or str(exc))
    if how == "private-file" and memexec.noexec_mount(tmpdir):
        fix = (f"the private copy lives under {tmpdir or '/tmp'}, which is mounted noexec: set TMPDIR in the "
               "plugin's catalog env to an executable directory the Vault user owns (an emptyDir tmpfs)")
    else:
        fix = "check that the binary is built for this node (ELF, right architecture)"
    return LaunchError(f"cannot execute the verified copy ({strerror})", path=cand.path, fix=fix,
                       cause=None if isinstance(exc, str) else exc)


def launch_exec(policy: Policy, plugin_args: list[str], env: dict, now: float) -> None:
    from shim.launch import memexec

    tmpdir = env.get("TMPDIR")
    cand, fd, how = select_sealed(policy, now, tmpdir=tmpdir)
    script = os.pread(fd, 2, 0) == b"#!"
    _log_start(policy, cand, how)
    argv = [cand.path, *plugin_args]
    try:
        memexec.fexecve(fd, argv, env, script=script)
    except OSError as exc:
        if not how.startswith("memfd") or exc.errno not in (errno.EACCES, errno.EPERM):
            raise _cannot_execute(cand, exc, tmpdir, how) from exc
        fd, how = _private_copy(cand, fd, tmpdir, exc.strerror), "private-file"
    try:
        memexec.fexecve(fd, argv, env, script=script)
    except OSError as exc:
        raise _cannot_execute(cand, exc, tmpdir, how) from exc


def launch_proxy(policy: Policy, plugin_args: list[str], env: dict, now: float, *, hot_swap: bool = False,
                 verdict: NativeVerdict | None = None) -> int:
    """Proxy mode: the same verified, sealed bytes, run as our child behind a go-plugin
    relay (shim.launch.proxy). Returns the exit code. ``verdict``: a native launcher selected,
    verified and sealed already (its rejection lines are logged); its copy is run, and hot
    swap's rescans run its select-only mode (:class:`shim.launch.swap.NativeSelector`)."""
    try:
        from shim.launch import proxy  # grpc and cryptography: only on this path
    except ImportError as exc:
        raise LaunchError(f"the launcher's interpreter ({sys.executable}) cannot import what proxy mode needs",
                          fix="install grpcio, protobuf and hpack for that interpreter (Alpine: "
                              "py3-grpcio py3-protobuf py3-hpack), or build the launcher with --mode exec",
                          cause=exc) from exc
    tmpdir = env.get("TMPDIR")
    if verdict is None:
        cand, fd, how = select_sealed(policy, now, tmpdir=tmpdir)
    else:
        cand, fd, how = verdict.candidate, verdict.fd, verdict.how
    _log_start(policy, cand, how, mode="proxy", **({"hot_swap": "on"} if hot_swap else {}),
               **({"selected_by": "native launcher"} if verdict is not None else {}))
    argv = [cand.path, *plugin_args]
    plugin = f"{policy.type} plugin {policy.name}"
    swap = None
    if hot_swap:
        from shim.launch import swap as swapping  # and the watcher: imported before Vault connects

        native = None if verdict is None else swapping.NativeSelector(policy, verdict.self_fd, verdict.launcher, env)
        swap = swapping.Options(policy, plugin_args, tmpdir, cand, native)
    try:
        try:
            return proxy.run(fd, argv, env, plugin=plugin, name=policy.name, hot_swap=swap)
        except proxy.ExecRefusedError as exc:
            if not how.startswith("memfd"):
                raise _cannot_execute(cand, exc.reason, tmpdir, how) from exc
            fd, how = _private_copy(cand, fd, tmpdir, exc.reason), "private-file"
        try:
            return proxy.run(fd, argv, env, plugin=plugin, name=policy.name, hot_swap=swap)
        except proxy.ExecRefusedError as exc:
            raise _cannot_execute(cand, exc.reason, tmpdir, how) from exc
    finally:
        try:
            os.close(fd)
        except OSError:
            pass
