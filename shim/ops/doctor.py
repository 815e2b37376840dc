"""``doctor``: what would happen on this pod the next time Vault launches the plugin.

Run it inside the Vault container, as the user Vault runs as (the official chart: uid 100).
It reads the same files with the same code the launcher uses (:func:`shim.trust.verify.report`)
and reports, one finding per check:

* the launcher: present, a regular file directly in the plugin directory, executable, and its
  sha256 (compared with the catalog's when ``--sha256`` is given: Vault refuses a mismatch);
* the interpreter in its ``#!`` line exists and imports what the launcher needs;
* the trust policy (embedded, or from the catalog ``--arg``\\s);
* the plugins directory: exists, owned and writable only as the launcher requires;
* every candidate version with its verdict, and the one the launcher would execute (for a
  native launcher, by its own code: ``L explain --json``, as the Vault uid, checked against
  the Python selection; a difference is a failure naming both verdicts);
* the clock: manifests that expire soon, or were issued in this node's future;
* ``vm.memfd_noexec`` (the launcher then falls back to a private copy);
* a one-line answer: what Vault gets on its next launch.

Doctor changes nothing and contacts Vault only with ``--catalog`` (to read the catalog entry
it compares with). Without it, it imports no hvac, so it also runs from inside the launcher
file itself (``sys.path`` entry), as the Dockerfile's build check does.
"""

from __future__ import annotations

import argparse
import json
import os
import stat
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from typing import Sequence

from shim.errors import ShimError
from shim.ops import native as launcher_native
from shim.trust.manifest import format_time, format_time_or_none
from shim.trust.verify import SIGNATURE_SUFFIX, digest_file

STATUSES = ("ok", "info", "warn", "fail")


def _details(c) -> dict:
    """A candidate's version and expiry, for --json."""
    return {} if c.manifest is None else {
        "version": str(c.manifest.version), "expires_at": format_time_or_none(c.manifest.expires_at)}


@dataclass(frozen=True)
class Finding:
    check: str
    status: str          # ok | info | warn | fail
    message: str
    fix: str = ""
    subject: str = ""
    details: dict = field(default_factory=dict)   # for --json: e.g. a candidate's version and expires_at

    def line(self) -> str:
        head = f"[{self.status.upper():4}] {self.check}: "
        body = f"{self.subject}: {self.message}" if self.subject else self.message
        return head + body + (f"\n         fix: {self.fix}" if self.fix else "")


def _check_launcher(launcher: str, plugin_directory: str | None, expected: str | None,
                    out: list[Finding]) -> str | None:
    try:
        st = os.lstat(launcher)
    except OSError as exc:
        out.append(Finding("launcher", "fail", f"cannot be read ({exc.strerror})", subject=launcher,
                           fix="install the launcher in Vault's plugin_directory (the image or volume ships it)"))
        return None
    real = os.path.realpath(launcher)
    directory = os.path.realpath(plugin_directory) if plugin_directory else os.path.dirname(real)
    if stat.S_ISLNK(st.st_mode) and os.path.dirname(real) != directory:
        out.append(Finding("launcher", "fail", f"is a symlink to {real}, outside the plugin directory {directory}",
                           subject=launcher, fix="Vault refuses commands that resolve outside plugin_directory: "
                                                 "copy the file there"))
    elif plugin_directory and os.path.dirname(real) != directory:
        out.append(Finding("launcher", "fail", f"is not directly inside the plugin directory {directory}",
                           subject=launcher, fix="Vault runs <plugin_directory>/<command>; put the launcher there"))
    try:
        rst = os.stat(real)
        digest, _ = digest_file(real)
    except OSError as exc:
        out.append(Finding("launcher", "fail", f"cannot be read ({exc.strerror})", subject=launcher,
                           fix="make it readable by the Vault user"))
        return None
    if not stat.S_ISREG(rst.st_mode):
        out.append(Finding("launcher", "fail", "is not a regular file", subject=launcher))
        return None
    if not os.access(real, os.X_OK):
        out.append(Finding("launcher", "fail", f"is not executable by uid {os.geteuid()} (mode "
                                               f"{stat.S_IMODE(rst.st_mode):04o})", subject=launcher,
                           fix="chmod 0755 the launcher (owner root)"))
    if rst.st_uid != 0 or rst.st_mode & 0o022:
        out.append(Finding("launcher", "fail", f"can be written by someone other than root (owner uid {rst.st_uid}, "
                                               f"mode {stat.S_IMODE(rst.st_mode):04o}): Vault hashes the path, then "
                                               f"executes it, and a write in between runs other bytes under the "
                                               f"registered checksum", subject=launcher,
                           fix=f"chown root {real} && chmod 0755 {real}"))
    _check_launcher_tree(os.path.dirname(real), out)
    if expected is None:
        out.append(Finding("launcher", "ok", f"sha256 {digest} (not compared with the catalog: pass --catalog "
                                             f"<type>/<name> to ask the server, or --sha256 from `vault plugin info "
                                             f"-version=<version> <type> <name>`)",
                           subject=launcher))
    elif expected.strip().lower() == digest:
        out.append(Finding("launcher", "ok", f"sha256 {digest} matches the catalog", subject=launcher))
    else:
        out.append(Finding("launcher", "fail", f"sha256 {digest} differs from the catalog's {expected}",
                           subject=launcher,
                           fix="Vault will refuse to start it (`checksums did not match`): roll out the launcher "
                               "the catalog names, or register this one (`vault-plugin-shim register`)"))
    return real


def _check_launcher_tree(directory: str, out: list[Finding]) -> None:
    """The launcher's directory and every one above it must be root's and writable by nobody
    else (a sticky directory excepted: others cannot rename what is not theirs). Whoever can
    write one can swap the launcher between Vault's hash of its path and the exec of that path,
    and run anything as Vault under the registered checksum (issue #17: 4 launches in 25)."""
    bad = []
    d = directory
    while True:
        try:
            st = os.stat(d)
        except OSError as exc:
            bad.append(Finding("launcher-dir", "fail", f"cannot be checked ({exc.strerror})", subject=d))
            break
        if st.st_uid != 0:
            bad.append(Finding("launcher-dir", "fail", f"is owned by uid {st.st_uid}, who can replace the launcher "
                                                       f"between Vault's hash and its exec", subject=d,
                               fix=f"chown root {d} && chmod go-w {d} (the image should ship plugin_directory "
                                   f"root-owned all the way up, not under the Vault user's home)"))
        elif st.st_mode & 0o022 and not st.st_mode & stat.S_ISVTX:
            bad.append(Finding("launcher-dir", "fail", f"is writable by group or others (mode "
                                                       f"{stat.S_IMODE(st.st_mode):04o}), who can replace the "
                                                       f"launcher between Vault's hash and its exec", subject=d,
                               fix=f"chmod go-w {d}"))
        parent = os.path.dirname(d)
        if parent == d:
            break
        d = parent
    out.extend(bad)
    if not bad:
        out.append(Finding("launcher-dir", "ok", "it and every directory above it are root's and writable by "
                                                 "nobody else", subject=directory))


def _check_interpreter(python: str, flags: list[str], mode: str, out: list[Finding], hot_swap: bool = False) -> None:
    """The interpreter the launcher starts must import what its mode needs, run the way the
    stub runs it (its flags, the stub's fixed environment)."""
    from shim.launch.build import IMPORT_PROBE, mode_imports

    if not os.access(python, os.X_OK):
        out.append(Finding("interpreter", "fail", f"{python} does not exist or is not executable here",
                           fix="install Python in the Vault image (Alpine: apk add python3 py3-cryptography) "
                               "or rebuild the launcher with --python pointing at this image's interpreter"))
        return
    try:
        done = subprocess.run([python, *flags, "-c", IMPORT_PROBE, *mode_imports(mode, hot_swap)], capture_output=True,
                              text=True, timeout=60, env={"LC_ALL": "C.UTF-8"})
    except (OSError, subprocess.TimeoutExpired) as exc:
        out.append(Finding("interpreter", "fail", f"{python} could not be run ({exc})"))
        return
    missing = done.stdout.strip().splitlines()
    if done.returncode != 0 or missing:
        what = "; ".join(missing) or (done.stderr.strip().splitlines() or ["no error text"])[-1]
        fix = ("install the cryptography package for that interpreter (Alpine: apk add py3-cryptography; "
               "Debian: apt-get install python3-cryptography)")
        if mode == "proxy":
            fix = ("install cryptography, grpcio, protobuf and hpack for that interpreter (build/docker's "
                   "vault-proxy target uses a pinned venv), or rebuild the launcher with --mode exec")
        out.append(Finding("interpreter", "fail", f"{python} {' '.join(flags)} cannot import what {mode} mode "
                                                  f"needs: {what}", fix=fix))
        return
    out.append(Finding("interpreter", "ok", f"{python} {' '.join(flags)} imports what {mode} mode needs "
                                            f"({', '.join(mode_imports(mode, hot_swap))})"))


def _hot_swap_findings(name: str, tmpdir: str | None, out: list[Finding]) -> dict[str, str]:
    """What each running hot-swapping launcher of this plugin reports: the version it runs,
    a swap pending, and every swap it refused, with why. Returns the refused files (and why)."""
    from shim.launch import swapstatus

    states = swapstatus.find_status(name, tmpdir)
    if not states:
        out.append(Finding("hot-swap", "info", "hot swap is on; no running launcher of this plugin found under "
                                               f"{tmpdir or '/tmp'} (pass --tmpdir with Vault's TMPDIR for it)"))
    for state in states:
        for level, text in swapstatus.describe_status(state):
            out.append(Finding("hot-swap", level, text))
    return swapstatus.refused_files(states)


def vault_uid(explicit: int | None) -> tuple[int, str]:
    """The user Vault runs as, whose view the checks must take: ``--vault-uid``; else, when
    doctor runs as root, the owner of a running ``vault``/``bao`` process; else our own."""
    if explicit is not None:
        return explicit, "given with --vault-uid"
    me = os.geteuid()
    if me != 0:
        return me, "this process's uid"
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/comm") as fh:
                comm = fh.read().strip()
            if comm in ("vault", "bao", "openbao"):
                return os.stat(f"/proc/{entry}").st_uid, f"the uid of the running {comm} process (pid {entry})"
        except OSError:
            continue
    return 0, "root (no running vault/bao process found; pass --vault-uid to check as the Vault user)"


def readable_by(st: os.stat_result, uid: int, gids: set[int]) -> bool:
    if uid == 0:
        return True
    if st.st_uid == uid:
        return bool(st.st_mode & 0o400)
    if st.st_gid in gids:
        return bool(st.st_mode & 0o040)
    return bool(st.st_mode & 0o004)


def _groups_of(uid: int) -> set[int]:
    import pwd
    import grp

    try:
        user = pwd.getpwuid(uid)
    except KeyError:
        return set()
    return {user.pw_gid} | {g.gr_gid for g in grp.getgrall() if user.pw_name in g.gr_mem}


def _check_as_vault_user(policy, uid: int, how: str, out: list[Finding]) -> set[str]:
    """Ownership and readability as Vault sees them (root can read anything; Vault cannot).
    Returns the paths that uid's launcher could not use."""
    gids = _groups_of(uid)
    bad = []
    for name in [None, *sorted(os.listdir(policy.plugins_dir))]:
        path = policy.plugins_dir if name is None else os.path.join(policy.plugins_dir, name)
        try:
            st = os.lstat(path)
        except OSError:
            continue
        if stat.S_ISLNK(st.st_mode):
            continue  # the candidate check reports links
        if st.st_uid not in (0, uid):
            bad.append(Finding("plugins-dir", "fail", f"is owned by uid {st.st_uid}: the launcher, running as uid "
                                                      f"{uid}, refuses files not owned by root or itself",
                               subject=path, fix=f"chown root (or uid {uid}) {path}"))
        elif not readable_by(st, uid, gids) or (stat.S_ISDIR(st.st_mode) and uid and not st.st_mode & 0o111):
            bad.append(Finding("plugins-dir", "fail", f"cannot be read by uid {uid} (mode "
                                                      f"{stat.S_IMODE(st.st_mode):04o})", subject=path,
                               fix="chmod 0755 the directory and binaries, 0644 manifests and signatures"))
    out.extend(bad)
    out.append(Finding("vault-user", "ok" if not bad else "fail",
                       f"checked as uid {uid}, {how}", subject=policy.plugins_dir))
    return {f.subject for f in bad}


def _memfd_finding(out: list[Finding], tmpdir: str | None, proc: str = "/proc/sys/vm/memfd_noexec") -> None:
    from shim.errors import ShimError as _E
    from shim.launch import memexec

    try:
        value = open(proc).read().strip()
    except OSError:
        return
    if value != "2":
        return
    where = tmpdir or "/tmp"
    try:
        memexec.check_temp_parent(where)
    except _E as exc:
        out.append(Finding("memfd", "fail", f"vm.memfd_noexec=2 (executing from a memfd is refused) and the "
                                            f"fallback's temporary directory is unsafe: {exc.reason}",
                           fix=exc.fix, subject=where))
        return
    if memexec.noexec_mount(where):
        out.append(Finding("memfd", "fail", f"vm.memfd_noexec=2 (executing from a memfd is refused) and {where} "
                                            "is mounted noexec, so the private-copy fallback cannot run either",
                           fix="set TMPDIR in the plugin's catalog env to an executable directory the Vault user "
                               "owns (an emptyDir tmpfs without noexec)", subject=where))
        return
    out.append(Finding("memfd", "info", f"vm.memfd_noexec=2: executing from a memfd is refused; the launcher "
                                        f"falls back to a private copy of the verified binary under {where}"))


def _memory_finding(policy, chosen) -> Finding:
    """What running the chosen version costs in memory, and how many copies exist now."""
    from shim.launch import memexec

    name = f"{policy.name}-{chosen.manifest.version}"
    mb = chosen.manifest.size / 1e6
    pids = memexec.running_from(name)
    inodes = set()
    for pid in pids:
        try:
            inodes.add(os.stat(f"/proc/{pid}/exe").st_ino)
        except OSError:
            pass
    now = (f"now {len(pids)} process(es) visible to uid {os.geteuid()} run {name} from {len(inodes)} "
           f"cop{'y' if len(inodes) == 1 else 'ies'}" if pids else f"no process visible to uid {os.geteuid()} runs "
           f"{name} now")
    proxy = (" In proxy mode each launcher adds its Python interpreter (about 30 MB of its own, "
             "see the README's memory rows)." if policy.mode == "proxy" else "")
    return Finding("memory", "info", f"version {chosen.manifest.version} runs from a sealed memfd of {mb:.1f} MB: "
                                     "shared memory that is not evictable and is charged to the pod's memory "
                                     "cgroup; every process of this version on the node shares one copy; "
                                     f"{now}.{proxy}")


def _native_view(launcher: str, policy, selection, uid: int, out: list[Finding]):
    """The launcher's own decision (``L explain --json``, as the Vault uid) in place of the
    Python selection: a native launcher is what Vault runs. Where the two differ, a failure
    naming both verdicts. Returns the selection to report."""
    if uid != os.geteuid() and os.geteuid() != 0:
        out.append(Finding("native", "warn", f"the launcher's own decision was not asked: it would run as uid "
                                             f"{os.geteuid()}, not as the Vault user's uid {uid}; shown below is "
                                             "vault-plugin-shim's selection (the same code's verdicts, in Python)",
                           fix="run doctor as root (with --vault-uid) or as the Vault user"))
        return selection
    try:
        native = launcher_native.NativeSelection(launcher_native.native_explain(launcher, uid))
    except ShimError as exc:
        out.append(Finding("native", "fail", exc.reason, exc.fix, subject=launcher))
        return selection
    for line in native.log:
        out.append(Finding("native", "warn", f"the launcher's own code said, while deciding: {line.get('@message', '')}",
                           line.get("fix", ""), subject=line.get("file") or launcher))
    differ = launcher_native.native_differences(selection, native, policy.plugins_dir)
    if differ:
        out.append(Finding("native", "fail", "the launcher's own code decides differently from vault-plugin-shim's "
                                             "selection (Vault gets the launcher's; shown below): " + "; ".join(differ),
                           subject=launcher,
                           fix="report this as a vault-plugin-shim bug, with the output of `L explain --json` and "
                               "`vault-plugin-shim verify --launcher L --json`"))
    else:
        out.append(Finding("native", "ok", f"verdicts from the launcher's own code (`explain --json`, as uid "
                                           f"{native.doc.get('uid')}); vault-plugin-shim's selection agrees",
                           subject=launcher))
    return native


def diagnose(launcher: str, *, expected_sha256: str | None = None, catalog_args: Sequence[str] = (),
             plugin_directory: str | None = None, now: float | None = None, soon: float | None = None,
             check_interpreter: bool = True, uid: int | None = None, tmpdir: str | None = None) -> list[Finding]:
    """All findings, in the order an operator should read them."""
    from shim.launch.build import inspect
    from shim.trust.policy import split_args
    from shim.trust.verify import CLOCK_SKEW, EXPIRY_WARNING, PluginDir, expires_soon, report

    now = time.time() if now is None else now
    out: list[Finding] = []
    real = _check_launcher(launcher, plugin_directory, expected_sha256, out)
    checksum_ok = not any(f.check == "launcher" and f.status == "fail" for f in out)
    if real is None:
        out.append(Finding("next-launch", "fail", "Vault cannot start the plugin: the launcher is missing"))
        return out

    try:
        info = inspect(real)
    except ShimError as exc:
        out.append(Finding("policy", "fail", exc.reason, exc.fix, subject=launcher))
        out.append(Finding("next-launch", "fail", "Vault would start a file that is not a working launcher"))
        return out
    if check_interpreter and info.interpreter:     # a native exec launcher starts none
        _check_interpreter(info.interpreter, info.flags, info.mode, out, info.hot_swap)

    policy = info.policy
    if policy is None:
        try:
            policy, _ = split_args(list(catalog_args))
        except ShimError as exc:
            out.append(Finding("policy", "fail", exc.reason, exc.fix))
            policy = None
        if policy is None:
            out.append(Finding("policy", "fail", "no embedded policy and no --shim-policy= catalog argument given",
                               fix="pass the catalog's args with --arg (see `vault plugin info -version=<version> <type> <name>`)"))
            out.append(Finding("next-launch", "fail", "cannot tell: the launcher's policy is unknown"))
            return out
    if hasattr(policy, "resolved"):
        # A relative plugins_dir is relative to where Vault runs the launcher from.
        as_run = os.path.join(plugin_directory, os.path.basename(launcher)) if plugin_directory else launcher
        policy = policy.resolved(as_run)
    keys = ", ".join(k.key_id_hex for k in policy.trusted_keys)
    if policy.mode != info.mode:
        out.append(Finding("policy", "fail", f"the policy asks for {policy.mode} mode, the launcher holds only "
                                             f"{info.mode} mode's code", fix=f"rebuild it with --mode {policy.mode}"))
    out.append(Finding("policy", "ok",
                       f"{policy.source} policy for {policy.type} plugin {policy.name!r}: plugins dir "
                       f"{policy.plugins_dir}, trusted keys {keys}, minimum version {policy.min_version or 'none'}, "
                       f"mode {policy.mode}",
                       fix=""))

    check_uid, how = vault_uid(uid)
    try:
        with PluginDir(policy, check_uid):
            pass
    except ShimError as exc:
        out.append(Finding("plugins-dir", "fail", exc.reason, exc.fix, subject=exc.path or policy.plugins_dir))
        out.append(Finding("next-launch", "fail", "the launcher would refuse to start any version "
                                                  "(Vault: `plugin exited before we could connect`)"))
        return out
    out.append(Finding("plugins-dir", "ok", f"owned by root or the Vault user, and writable by nobody else "
                                            f"(checked as uid {check_uid})", subject=policy.plugins_dir))

    out.append(Finding("clock", "info", f"node clock {format_time(now)}"))
    selection = report(policy, now, check_uid)
    if info.native:     # what Vault runs decides: ask it (its dry mode), and check it against ours
        selection = _native_view(real, policy, selection, check_uid, out)
    launch_refusal = selection.refusal if isinstance(selection, launcher_native.NativeSelection) else None
    candidates, chosen = selection.candidates, selection.chosen
    listed = {c.binary for c in candidates}
    for name in sorted(os.listdir(policy.plugins_dir)):
        if not name.endswith((".manifest.json", ".manifest.json.minisig")) and name not in listed:
            out.append(Finding("candidate", "info", "ignored: no NAME.manifest.json next to it",
                               subject=os.path.join(policy.plugins_dir, name)))
    soon = EXPIRY_WARNING if soon is None else soon
    for c in candidates:
        details = _details(c)
        if c.error is None:
            tag = ("valid, not the highest" if c is not chosen else "would launch" if launch_refusal is None
                   else "chosen, but the next launch refuses (see below)")
            expiry = "no expiry" if c.manifest.expires_at is None else f"expires {format_time(c.manifest.expires_at)}"
            out.append(Finding("candidate", "ok", f"{tag}: version {c.manifest.version}, "
                                                  f"signed by {c.key.key_id_hex}, {expiry}", subject=c.path,
                               details=details))
            left = expires_soon(c.manifest, now, soon)
            if left is not None:
                out.append(Finding("clock", "warn", f"manifest for {c.manifest.version} expires "
                                                    f"{format_time(c.manifest.expires_at)} "
                                                    f"(in {left / 86400:.1f} days); no launcher starts it after that",
                                   subject=c.manifest_path, details=details,
                                   fix="re-sign the same binary with a later --expires (or none): `vault-plugin-shim "
                                       "sign` writes a new manifest and .minisig for it; ship those (README: "
                                       "re-signing)"))
        else:
            out.append(Finding("candidate", "fail", c.error.reason, c.error.fix, subject=c.error.path or c.path,
                               details=details))
            if "in the future of this node" in c.error.reason:
                out.append(Finding("clock", "fail", "a manifest is issued after this node's clock "
                                                    f"(+{CLOCK_SKEW} s allowed)", fix="fix NTP on the node"))
    passed_over = selection.passed_over() if chosen is not None else []
    for c in passed_over:
        what = ("the launcher refuses to start (its policy: on_refused_newer refuse)"
                if policy.on_refused_newer == "refuse" else
                f"the launcher falls back to the older {chosen.manifest.version}, and logs an ERROR at each launch")
        out.append(Finding("fallback", "fail",
                           f"{'version ' + str(c.manifest.version) if c.manifest is not None else 'a version'} "
                           f"newer than {chosen.manifest.version} is present and refused: {what}",
                           subject=c.path, details=_details(c),
                           fix="ship the release again as it was signed (binary, manifest and .minisig from the "
                               "same release), or remove it if the older version is meant to run"))
    unusable = _check_as_vault_user(policy, check_uid, how, out)
    blocked = [] if chosen is None else [p for p in (policy.plugins_dir, chosen.path, chosen.manifest_path,
                                                     chosen.path + SIGNATURE_SUFFIX) if p in unusable]
    _memfd_finding(out, tmpdir if tmpdir is not None else os.environ.get("TMPDIR"))
    if chosen is not None:
        out.append(_memory_finding(policy, chosen))
    refused_by_swap = {}
    if info.hot_swap:
        refused_by_swap = _hot_swap_findings(policy.name, tmpdir if tmpdir is not None else os.environ.get("TMPDIR"),
                                             out)

    if not checksum_ok:
        verdict = Finding("next-launch", "fail", "Vault would refuse the launcher before running it "
                                                 "(`checksums did not match` or no usable launcher)")
    elif chosen is None:
        verdict = Finding("next-launch", "fail",
                          f"the launcher would refuse: no valid version of {policy.name} in {policy.plugins_dir} "
                          "(Vault logs each rejection, then `plugin exited before we could connect`)",
                          fix="ship a signed version that passes the checks above")
    elif chosen.path in refused_by_swap:
        from shim.launch.swapstatus import NEXT_LAUNCH_FIX

        verdict = Finding("next-launch", "fail",
                          f"the next launch runs {chosen.path} version {chosen.manifest.version}, which a running "
                          f"launcher's hot swap refused: {refused_by_swap[chosen.path]}",
                          subject=chosen.path, fix=NEXT_LAUNCH_FIX)
    elif blocked:
        verdict = Finding("next-launch", "fail",
                          f"the launcher, running as uid {check_uid} ({how}), could not use {blocked[0]}: it would "
                          f"refuse version {chosen.manifest.version} (the checks above read as root)",
                          subject=blocked[0], fix="see the plugins-dir findings above")
    elif launch_refusal is not None:
        verdict = Finding("next-launch", "fail", f"next launch refuses (the launcher's own decision): "
                                                 f"{launch_refusal.reason}", subject=launch_refusal.path or "",
                          fix=launch_refusal.fix)
    elif passed_over and policy.on_refused_newer == "refuse":
        verdict = Finding("next-launch", "fail",
                          f"the launcher would refuse: a newer version than {chosen.manifest.version} is present "
                          f"and refused, and its policy refuses to fall back (on_refused_newer: refuse)",
                          fix="ship the newer release intact, or remove it")
    else:
        verdict = Finding("next-launch", "ok", f"Vault runs the launcher, which executes {chosen.path} "
                                               f"version {chosen.manifest.version} (sha256 {chosen.manifest.sha256})"
                                               + (" (an older version: see fallback above)" if passed_over else ""),
                          details={"version": str(chosen.manifest.version),
                                   "expires_at": format_time_or_none(chosen.manifest.expires_at)})
    out.append(running_version_note(policy.type, policy.name))
    out.append(verdict)          # the one-line answer stays last
    return out


def running_version_note(plugin_type: str, name: str) -> Finding:
    """Where the version that runs now can be seen: the catalog and the mount table show the
    registered one (OpenBao's ``running_plugin_version`` is copied from the mount's
    configuration), never what the launcher picked on each node."""
    return Finding("running-version", "info",
                   f"the version running now on a node is in that node's server log, in the launcher's "
                   f"line `vault-plugin-shim: starting {plugin_type} plugin {name} <version>` at each "
                   f"launch (and above, for the next launch); `secrets list -detailed` and `plugin list` "
                   f"show the registered catalog version, not the running one")


def render(findings: Sequence[Finding]) -> str:
    return "\n".join(f.line() for f in findings) + "\n"


def exit_code(findings: Sequence[Finding]) -> int:
    return 1 if any(f.status == "fail" for f in findings) else 0


def from_catalog(spec: str, launcher: str) -> tuple[str, list[str]]:
    """(sha256, args) of the catalog entry that runs ``launcher``, asked of the server itself
    (VAULT_ADDR and a token, as the vault CLI reads them): ``spec`` is TYPE/NAME. The entry is
    the one whose command is the launcher's file name. The only part of doctor that talks to
    Vault, and only with --catalog."""
    from shim.ops.register import catalog_entries
    from shim.ops.errors import VaultConfigError, VaultRequestError
    from shim.ops.vaultenv import VaultEnv

    plugin_type, sep, name = spec.partition("/")
    if not sep or not name:
        raise VaultConfigError(f"--catalog {spec!r} is not TYPE/NAME", fix="e.g. --catalog secret/my-plugin")
    command = os.path.basename(launcher)
    entries = [e for e in catalog_entries(VaultEnv.from_environ().client(), plugin_type, name)
               if e.command == command]
    if len({(e.sha256, e.args) for e in entries}) != 1:
        found = "no entry" if not entries else "entries that differ: " + "; ".join(
            f"{e.version or '(unversioned)'} names {e.describe()}" for e in entries)
        raise VaultRequestError(f"the catalog has {found} of {plugin_type}/{name} with command {command}",
                                fix="register this launcher (`vault-plugin-shim register`), or pass --sha256 "
                                    "and --arg by hand")
    return entries[0].sha256, list(entries[0].args)


def main(ns: argparse.Namespace, *, stdout=None, stderr=None) -> int:
    stdout, stderr = stdout or sys.stdout, stderr or sys.stderr
    try:
        expected, args = ns.sha256, list(ns.args)
        if ns.catalog:
            expected, args = from_catalog(ns.catalog, ns.launcher)
        findings = diagnose(ns.launcher, expected_sha256=expected, catalog_args=args,
                            plugin_directory=ns.plugin_directory, check_interpreter=not ns.no_interpreter_check,
                            uid=ns.vault_uid, tmpdir=ns.tmpdir)
    except ShimError as exc:
        stderr.write(f"vault-plugin-shim doctor: {exc.diagnostics()}\n")
        return getattr(exc, "exit_status", 1)
    if ns.json:
        stdout.write(json.dumps([asdict(f) for f in findings], indent=2) + "\n")
    else:
        stdout.write(render(findings))
    return exit_code(findings)


def add_doctor_parser(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "doctor", help="explain what Vault's next launch of the plugin would do on this pod",
        description="Check the launcher, its interpreter and policy, the plugins directory, each candidate "
                    "version and the clock, and say what Vault gets on its next launch. Run it where Vault "
                    "runs (in its container, as its user); in an image without Python, run the launcher "
                    "itself: `LAUNCHER doctor` answers by itself. Changes nothing; contacts Vault only with "
                    "--catalog.")
    p.add_argument("--launcher", metavar="PATH", required=True,
                   help="the launcher file in Vault's plugin_directory")
    p.add_argument("--sha256", metavar="HEX",
                   help="the sha256 in the catalog (`vault plugin info -version=V TYPE NAME`) to compare with")
    p.add_argument("--arg", dest="args", action="append", default=[], metavar="ARG",
                   help="a catalog argument (for launchers whose policy is in --shim-policy=...)")
    p.add_argument("--catalog", metavar="TYPE/NAME",
                   help="ask the server (VAULT_ADDR, VAULT_TOKEN) for the catalog entry of this launcher and "
                        "compare with its sha256 and args, instead of --sha256/--arg")
    p.add_argument("--plugin-directory", metavar="DIR",
                   help="Vault's plugin_directory (default: the launcher's directory)")
    p.add_argument("--vault-uid", type=int, metavar="UID",
                   help="check ownership and readability as this uid (default: ours; as root, the uid of a "
                        "running vault/bao process)")
    p.add_argument("--tmpdir", metavar="DIR",
                   help="the TMPDIR Vault gives the plugin (for the memfd fallback; default: $TMPDIR or /tmp)")
    p.add_argument("--no-interpreter-check", action="store_true",
                   help="do not run the launcher's interpreter to check it imports what its mode needs")
    p.add_argument("--json", action="store_true", help="findings as JSON")
    p.set_defaults(func=main)
    return p


def run(argv: Sequence[str]) -> int:
    """Entry point without the full CLI (what `L doctor` runs)."""
    from shim.command import Parser

    parser = Parser(prog="vault-plugin-shim")
    add_doctor_parser(parser.add_subparsers(dest="command", required=True))
    ns = parser.parse_args(["doctor", *argv])
    return main(ns, stdout=sys.stdout, stderr=sys.stderr)
