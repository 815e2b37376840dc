"""The launcher's entry point: what Vault runs in place of the plugin.

Vault starts the launcher with its own argv and env. The launcher:

1. refuses to do anything without the go-plugin magic cookie (run by hand, it explains
   itself on stderr and exits 1);
2. takes the trust policy embedded in itself (or, for a launcher built without one, from
   the catalog's args);
3. picks the highest version in the plugins directory that passes every check, logging
   each rejected candidate;
4. copies that binary into a sealed memfd, checks the sha256 of the sealed copy, and
   ``fexecve``\\s it with Vault's argv and env (proxy mode: runs it as its child).

3 and 4 are :mod:`shim.launch.sealed`, the select-and-start path that hot swap runs too.
A native proxy-mode launcher (shim/launch/stubs/native/nv_proxy.c) did 1 to 3 and the copy of 4
itself before it started this code: :func:`main_from_stub` then gets its verdict
(:class:`~shim.launch.verdict.NativeVerdict`) and runs the proxy on it, never selecting.

Nothing is ever written to stdout: before the handshake, stdout belongs to go-plugin.
Diagnostics are hclog JSON lines on stderr, so Vault logs them at their level.
"""

from __future__ import annotations

import errno
import os
import sys
import time
from typing import TYPE_CHECKING  # cryptography imports typing on every launch anyway

from shim.goplugin import hclog
from shim.goplugin.errors import Diagnostic
from shim.goplugin.vault import COOKIES
from shim.launch.errors import ExecRefusedError, LaunchError
from shim.launch.sealed import cannot_execute, log_start, select_sealed, start_verified
from shim.trust.errors import PolicyError
from shim.trust.policy import Policy, split_args

if TYPE_CHECKING:  # pragma: no cover
    from shim.launch.verdict import NativeVerdict

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
            from shim.launch.verdict import native_verdict  # proxy mode's: an exec launch never imports it

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


def launch_exec(policy: Policy, plugin_args: list[str], env: dict, now: float) -> None:
    """Exec mode: this process becomes the plugin, from the sealed copy, with Vault's argv and
    env unchanged; returns only by raising. It reads one variable of Vault's, ``TMPDIR`` (where a
    private copy goes), itself: :class:`~shim.launch.environment.VaultEnvironment` is proxy
    mode's, and its imports (``dataclasses``) would cost every exec-mode launch."""
    from shim.launch import memexec

    tmpdir = env.get("TMPDIR") or None
    cand, fd, how = select_sealed(policy, now, tmpdir=tmpdir)
    script = os.pread(fd, 2, 0) == b"#!"
    log_start(policy, cand, how)
    argv = [cand.path, *plugin_args]

    def execute(copy: int, how: str) -> None:
        try:
            memexec.fexecve(copy, argv, env, script=script)
        except OSError as exc:
            if exc.errno in (errno.EACCES, errno.EPERM):
                raise ExecRefusedError(exc.strerror or str(exc)) from exc
            raise cannot_execute(cand, exc.strerror or str(exc), tmpdir, how, cause=exc) from exc

    start_verified(cand, fd, how, tmpdir, execute)


def launch_proxy(policy: Policy, plugin_args: list[str], env: dict, now: float, *, hot_swap: bool = False,
                 verdict: NativeVerdict | None = None) -> int:
    """Proxy mode: the same verified, sealed bytes, run as our child behind a go-plugin
    relay (shim.launch.proxy). Returns the exit code. Vault's environment is read once, here
    (:class:`~shim.launch.environment.VaultEnvironment`). ``verdict``: a native launcher
    selected, verified and sealed already (its rejection lines are logged); its copy is run,
    and hot swap's rescans run its select-only mode (:class:`shim.launch.verdict.NativeSelector`)."""
    try:
        from shim.launch import proxy  # grpc and cryptography: only on this path
    except ImportError as exc:
        raise LaunchError(f"the launcher's interpreter ({sys.executable}) cannot import what proxy mode needs",
                          fix="install grpcio, protobuf and hpack for that interpreter (Alpine: "
                              "py3-grpcio py3-protobuf py3-hpack), or build the launcher with --mode exec",
                          cause=exc) from exc
    from shim.launch.environment import VaultEnvironment
    from shim.launch.verdict import NativeSelector

    vault = VaultEnvironment.parse(env)
    if verdict is None:
        cand, fd, how = select_sealed(policy, now, tmpdir=vault.tmpdir)
    else:
        cand, fd, how = verdict.candidate, verdict.fd, verdict.how
    log_start(policy, cand, how, mode="proxy", **({"hot_swap": "on"} if hot_swap else {}),
              **({"selected_by": "native launcher"} if verdict is not None else {}))
    argv = [cand.path, *plugin_args]
    plugin = f"{policy.type} plugin {policy.name}"
    swap = None
    if hot_swap:
        from shim.launch import swap as swapping  # and the watcher: imported before Vault connects

        native = None if verdict is None else NativeSelector(policy, verdict.self_fd, verdict.launcher,
                                                             vault.variables)
        swap = swapping.Options(policy, plugin_args, vault.tmpdir, cand, native)
    return start_verified(cand, fd, how, vault.tmpdir,
                          lambda copy, _how: proxy.run(copy, argv, vault, plugin=plugin, name=policy.name,
                                                       hot_swap=swap))
