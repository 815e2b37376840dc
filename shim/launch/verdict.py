"""What the native launcher decided, read back: at launch and at each hot-swap rescan.

A native proxy-mode launcher (shim/launch/stubs/native/nv_proxy.c) selects, verifies and seals
the plugin itself, then starts this Python code with its verdict (:func:`native_verdict`,
:class:`NativeVerdict`): the proxy runs that copy and never selects. With hot swap, each rescan
runs the launcher's select-only mode (:class:`NativeSelector`) for the same decision. Either
way, this module only turns the launcher's text back into values and checks the descriptors
it handed over; the decision is the launcher's.
"""

from __future__ import annotations

import json
import os
import time

from shim.goplugin import hclog
from shim.launch import stubs
from shim.launch.errors import NativeRefusal, SwapError
from shim.launch.sealed import STILL_WRITTEN, still_written
from shim.launch.stubs import StubError
from shim.trust.manifest import Manifest, Version
from shim.trust.policy import Policy
from shim.trust.verify import Candidate


# --- at launch: the verdict in the launch context ----------------------------------------------

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
    """The verdict handed over in the launch context, its descriptors checked and made ours."""
    cand, how = candidate_from_verdict(verdict)
    fd = _verdict_fd(verdict["fd"], "plugin copy")
    if os.fstat(fd).st_size != cand.manifest.size:
        raise StubError(f"the native launcher's copy is {os.fstat(fd).st_size} bytes, its verdict says "
                        f"{cand.manifest.size}")
    if bool(verdict["self_fd"]) != hot_swap:
        raise StubError("the native launcher's hot swap flag and its Python part's disagree")
    self_fd = _verdict_fd(verdict["self_fd"], "launcher copy") if hot_swap else None
    return NativeVerdict(cand, fd, how, self_fd, exe)


# --- at a hot swap's rescan: select-only mode ----------------------------------------------------

SELECT_TIMEOUT = 120.0   # select-only mode hashes at most one binary of max_size (2 GiB: about 20 s)
SELECT_ONLY = "--vault-plugin-shim-select-only="
SKIP = "--vault-plugin-shim-skip="
REFUSING = "vault-plugin-shim: refusing to start "
REJECTED = "vault-plugin-shim: rejected candidate "


class NativeSelector:
    """A hot swap rescan on the native launcher's own decision (issue 20: one decision at launch,
    in every mode). The launcher kept a sealed copy of its own file (``self_fd``, the bytes Vault
    verified at launch); each rescan executes that copy in select-only mode
    (shim/launch/stubs/native/nv_proxy.c) with Vault's environment, a unix SOCK_SEQPACKET socket
    pair (the child's end named in argv), and the releases hot swap passes over. It makes the
    launch's selection, writes the launch's rejection lines to stderr (read here, and relayed with
    the rescan's one difference: a binary shorter than signed whose files changed within
    ``STILL_WRITTEN`` s is a WARN, as :func:`shim.launch.sealed.log_rejections` does), and hands
    the sealed, verified copy back (SCM_RIGHTS) with its verdict."""

    def __init__(self, policy: Policy, self_fd: int, launcher: str, env: dict, timeout: float = SELECT_TIMEOUT):
        self.policy, self.self_fd, self.launcher, self.env, self.timeout = policy, self_fd, launcher, dict(env), timeout

    def select(self, skips: list[tuple[tuple, str]]) -> tuple[Candidate, int, str]:
        """``skips``: (identity (sha256, version, issued_at), reason) of each release to pass
        over. Returns (candidate, fd of the sealed verified copy, how); raises a Diagnostic."""
        import socket
        import subprocess

        parent, child = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        try:
            args = [self.launcher, f"{SELECT_ONLY}{child.fileno()}"]
            args += [f"{SKIP}{sha}:{int(issued)}:{version}:{reason}" for (sha, version, issued), reason in skips]
            try:
                proc = subprocess.Popen(args, executable=f"/proc/self/fd/{self.self_fd}", env=self.env,
                                        pass_fds=(self.self_fd, child.fileno()), stdin=subprocess.DEVNULL,
                                        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
            except OSError as exc:
                raise SwapError(f"cannot run the launcher's select-only mode ({exc.strerror})", path=self.launcher,
                                fix="allow executing the launcher's sealed copy (memfd) for the Vault "
                                    "process") from None
            finally:
                child.close()
            try:
                _, err = proc.communicate(timeout=self.timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.communicate()
                raise SwapError(f"the launcher's select-only mode did not decide within {self.timeout:g} s",
                                path=self.launcher) from None
            refusal = self._relay(err)
            try:
                data, ancdata, flags, _ = parent.recvmsg(stubs.VERDICT_MAX, socket.CMSG_SPACE(4 * 4),
                                                         socket.MSG_DONTWAIT)
            except BlockingIOError:
                data, ancdata, flags = b"", [], 0
        finally:
            parent.close()
        fds = []
        for level, kind, payload in ancdata:
            if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
                fds.extend(int.from_bytes(payload[i:i + 4], "little") for i in range(0, len(payload) - 3, 4))
        try:
            if proc.returncode != 0 or not data:
                raise refusal or SwapError(f"the launcher's select-only mode ended with status {proc.returncode} and "
                                           "handed nothing back", path=self.launcher)
            if len(fds) != 1 or flags & (socket.MSG_TRUNC | socket.MSG_CTRUNC):
                raise SwapError("the launcher's select-only mode handed back a malformed message", path=self.launcher)
            cand, how = candidate_from_verdict(stubs.parse_handback(data))
            if os.fstat(fds[0]).st_size != cand.manifest.size:
                raise SwapError("the launcher's select-only copy has another size than its verdict", path=cand.path)
        except BaseException:
            for fd in fds:
                os.close(fd)
            raise
        os.set_inheritable(fds[0], False)
        return cand, fds[0], how

    def _relay(self, err: bytes) -> NativeRefusal | None:
        """Log select-only mode's lines as the launch path logs them (they are the launch's own
        lines); return its refusal, if it refused."""
        import re

        refusal, last_error, other = None, None, []
        now = time.time()
        for raw in err.splitlines():
            try:
                line = json.loads(raw)
            except ValueError:
                line = None
            if not isinstance(line, dict) or not isinstance(line.get("@message"), str):
                if raw.strip():
                    other.append(raw.decode("utf-8", "replace")[:200])
                continue
            message, level = line["@message"], line.get("@level")
            if level == "error" and message.startswith(REFUSING):
                refusal = NativeRefusal(line)
                continue
            if level == "error" and message.startswith(REJECTED) and line.get("error") == "DigestMismatchError":
                m = re.fullmatch(r"is (\d+) bytes, the signed manifest says (\d+)", str(line.get("reason", "")))
                age = None if m is None else still_written(str(line.get("file", "")), int(m.group(2)), now)
                if age is not None and age < STILL_WRITTEN:
                    line = {**line, "@level": "warn",
                            "@message": message + f" (its files changed {age:.1f} s ago: still being copied in? the "
                                                  "next rescan, once the directory is quiet, looks again)"}
                    raw = json.dumps(line, separators=(",", ":"), ensure_ascii=False).encode("utf-8", "replace")
            elif level == "error":
                last_error = line
            hclog.write_stderr(raw.rstrip(b"\n") + b"\n")
        if refusal is None and last_error is not None:
            refusal = NativeRefusal(last_error)
        if refusal is None and other:
            refusal = NativeRefusal({"error": "LaunchError", "reason": "the launcher's select-only mode wrote: "
                                     + " | ".join(other[:3])})
        return refusal
