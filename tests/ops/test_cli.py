"""The CLI as a user runs it: verify's report and JSON, inspect, usage errors."""

import json
import subprocess
import sys
from pathlib import Path

from tests.support import releases as R

ROOT = Path(__file__).resolve().parents[2]


def cli(*args):
    return subprocess.run([sys.executable, "-m", "shim.cli", *map(str, args)], capture_output=True, text=True,
                          cwd=ROOT, timeout=60)


def setup(tmp_path):
    d = tmp_path / "plugins"
    d.mkdir(mode=0o755)
    keys = R.new_keys()
    pk = tmp_path / "release.pub"
    pk.write_text(keys.public.to_text())
    R.release(keys, R.script_plugin(d / "kv-1.0.0", "v1"), name="kv", version="1.0.0")
    R.release(keys, R.script_plugin(d / "kv-1.1.0", "v11"), name="kv", version="1.1.0")
    bad = R.script_plugin(d / "kv-2.0.0", "v2")
    R.release(keys, bad, name="kv", version="2.0.0")
    bad.write_text(bad.read_text().replace("v2", "x2"))
    return d, pk


def test_verify_reports_every_candidate_and_the_one_to_launch(tmp_path):
    d, pk = setup(tmp_path)
    p = cli("verify", "--trusted-key", pk, "--name", "kv", "--min-version", "1.1.0", d)
    lines = p.stdout.splitlines()
    assert lines[0] == f"secret plugin 'kv', plugins dir {d}"
    assert any(ln.startswith("  [LAUNCH] kv-1.1.0: version 1.1.0") and ln.endswith("no expiry") for ln in lines)
    assert any(ln.startswith("  [REJECT] kv-1.0.0:") and "below the minimum version 1.1.0" in ln for ln in lines)
    assert any(ln.startswith("  [REJECT] kv-2.0.0:") and "sha256 is" in ln and "Fix:" in ln for ln in lines)
    # Issue 16, item 2: the newest version is refused, so the launcher falls back: never quietly.
    assert p.returncode == 1, p.stdout
    assert ("FAIL: kv-2.0.0 (version 2.0.0) is refused and the launcher falls back to the older 1.1.0: "
            "sha256 is") in p.stdout
    (d / "kv-2.0.0.manifest.json").unlink()   # without it: 1.0.0 is older and rightly skipped, no failure
    p = cli("verify", "--trusted-key", pk, "--name", "kv", "--min-version", "1.1.0", d)
    assert p.returncode == 0 and "FAIL" not in p.stdout, p.stdout


def test_verify_expect_version_and_expiry_in_json(tmp_path):
    """--expect-version for image builds; expires_at in the JSON, and a warning within 30 days."""
    import time

    d = tmp_path / "plugins"
    d.mkdir(mode=0o755)
    keys = R.new_keys()
    pk = tmp_path / "release.pub"
    pk.write_text(keys.public.to_text())
    now = int(time.time())
    R.release(keys, R.script_plugin(d / "kv-1.0.0", "v1"), name="kv", version="1.0.0")
    R.release(keys, R.script_plugin(d / "kv-1.1.0", "v11"), name="kv", version="1.1.0",
              issued=now - 100, expires=now + 10 * 86400)
    base = ("verify", "--trusted-key", pk, "--name", "kv")
    p = cli(*base, "--expect-version", "1.1.0", d)
    assert p.returncode == 0, p.stdout
    assert "WARNING: in 10.0 days: re-sign it" in p.stdout
    p = cli(*base, "--expect-version", "v2.0.0", d)
    assert p.returncode == 1 and "FAIL: --expect-version 2.0.0: version 1.1.0 would launch" in p.stdout
    doc = json.loads(cli(*base, "--json", d).stdout)
    assert doc["ok"] is True and doc["version"] == "1.1.0" and doc["passed_over"] == []
    assert doc["expires_at"] == time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(now + 10 * 86400))
    by_version = {c["version"]: c for c in doc["candidates"]}
    assert by_version["1.1.0"]["expires_soon"] is True and by_version["1.0.0"]["expires_at"] is None
    assert by_version["1.1.0"]["issued_at"] == time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(now - 100))


def test_launcher_build_can_refuse_instead_of_falling_back(tmp_path):
    p = _build(tmp_path, "--on-refused-newer", "refuse")
    assert p.returncode == 0, p.stderr
    policy = json.loads(cli("launcher", "inspect", "--json", tmp_path / "lau").stdout)["policy"]
    assert policy["on_refused_newer"] == "refuse"
    (tmp_path / "lau").unlink()
    assert _build(tmp_path).returncode == 0
    policy = json.loads(cli("launcher", "inspect", "--json", tmp_path / "lau").stdout)["policy"]
    assert policy["on_refused_newer"] == "fallback"


def _sign(tmp_path, *extra, env=None):
    import os

    keys = R.new_keys()
    sk = tmp_path / "release.key"
    sk.write_text(keys.secret.to_text(None))
    plugin = R.script_plugin(tmp_path / "kv-1.0.0", "v1")
    return subprocess.run([sys.executable, "-m", "shim.cli", "sign", "--secret-key", str(sk), "--name", "kv",
                           "--type", "secret", "--version", "1.0.0", *extra, str(plugin)],
                          capture_output=True, text=True, cwd=ROOT, timeout=60,
                          env={**os.environ, **(env or {})}), plugin


def test_sign_refuses_a_source_date_epoch_that_is_not_a_number(tmp_path):
    p, plugin = _sign(tmp_path, env={"SOURCE_DATE_EPOCH": "abc"})
    assert p.returncode != 0 and "Traceback" not in p.stderr
    assert "SOURCE_DATE_EPOCH='abc' is not a Unix time" in p.stderr and "git log -1" in p.stderr
    assert not Path(str(plugin) + ".manifest.json").exists()


def test_sign_refuses_an_expiry_of_zero(tmp_path):
    p, plugin = _sign(tmp_path, "--expires", "0d")
    assert p.returncode != 0 and "Traceback" not in p.stderr
    assert "already expired" in p.stderr and "regenerate" not in p.stderr
    assert not Path(str(plugin) + ".manifest.json").exists()


def _build(tmp_path, *extra):
    keys = R.new_keys()
    pk = tmp_path / "release.pub"
    pk.write_text(keys.public.to_text())
    (tmp_path / "versions").mkdir(exist_ok=True)
    return cli("launcher", "build", "--trusted-key", pk, "--name", "kv", "--type", "secret",
               "--plugins-dir", tmp_path / "versions", "--output", tmp_path / "lau", *extra)


def test_every_version_option_takes_one_leading_v_and_refuses_two(tmp_path):
    """--min-version, --expect-version and sign's --version read a version the same way:
    1.2.3 or v1.2.3; vv1.2.3 is a usage error (exit 1), never a quiet 1.2.3."""
    d, pk = setup(tmp_path)
    verify = ("verify", "--trusted-key", pk, "--name", "kv")
    assert cli(*verify, "--min-version", "v1.1.0", d).stdout == cli(*verify, "--min-version", "1.1.0", d).stdout
    refused = [cli(*verify, "--min-version", "vv1.1.0", d), cli(*verify, "--expect-version", "vv1.1.0", d),
               _build(tmp_path, "--min-version", "vv1.1.0"), _sign(tmp_path, "--version", "vv1.0.0")[0]]
    for p in refused:
        assert p.returncode == 1 and "'vv1." in p.stderr and "Traceback" not in p.stderr, (p.args, p.stderr)
    assert not (tmp_path / "lau").exists()


def test_launcher_build_refuses_an_interpreter_that_does_not_exist(tmp_path):
    p = _build(tmp_path, "--kind", "python", "--python", "/nope/python3")
    assert p.returncode != 0 and "Traceback" not in p.stderr
    assert "does not exist or is not executable" in p.stderr and "--python-only-in-image" in p.stderr
    assert not (tmp_path / "lau").exists()
    p = _build(tmp_path, "--kind", "python", "--python", "/nope/python3", "--python-only-in-image")
    assert p.returncode == 0, p.stderr


def test_an_exec_mode_launcher_is_native_by_default_and_starts_no_interpreter(tmp_path):
    """Issue 20: exec mode builds the static launcher; the interpreter's flags do not apply to it
    (said, not ignored), and what needs the Python launcher says so."""
    p = _build(tmp_path, "--json")
    assert p.returncode == 0, p.stderr
    built = json.loads(p.stdout)
    assert built["kind"] == "native" and built["python"] is None
    info = json.loads(cli("launcher", "inspect", "--json", tmp_path / "lau").stdout)
    assert info["kind"] == "native" and info["interpreter"] is None and info["sha256"] == built["sha256"]
    text = cli("launcher", "inspect", tmp_path / "lau").stdout
    assert "kind:        native (static" in text and "interpreter:" not in text
    assert sys.executable.encode() not in (tmp_path / "lau").read_bytes()     # names no interpreter
    for extra, said in ((("--python", "/usr/bin/python3"), "--python does not apply"),
                        (("--python-only-in-image",), "--python-only-in-image does not apply"),
                        (("--policy-in-args",), "--policy-in-args needs the Python launcher")):
        (tmp_path / "lau").unlink(missing_ok=True)
        p = _build(tmp_path, *extra)
        assert p.returncode == 1 and said in p.stderr and "Fix:" in p.stderr, (extra, p.stderr)
        assert "Traceback" not in p.stderr and not (tmp_path / "lau").exists()
    p = _build(tmp_path, "--kind", "python", "--json")
    assert p.returncode == 0 and json.loads(p.stdout)["kind"] == "python", p.stderr
    # Proxy mode is native too (the native part decides, then starts the proxy's Python).
    (tmp_path / "lau").unlink()
    p = _build(tmp_path, "--mode", "proxy", "--json")
    assert p.returncode == 0, p.stderr
    built = json.loads(p.stdout)
    assert (built["kind"], built["python"], built["mode"]) == ("native", sys.executable, "proxy")
    info = json.loads(cli("launcher", "inspect", "--json", tmp_path / "lau").stdout)
    assert (info["kind"], info["interpreter"], info["mode"]) == ("native", sys.executable, "proxy")


def test_launcher_build_proxy_checks_the_interpreter_imports_grpc(tmp_path):
    bare = tmp_path / "bare"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(bare)], check=True, timeout=120)
    p = _build(tmp_path, "--python", bare / "bin" / "python", "--mode", "proxy")
    assert p.returncode != 0 and "Traceback" not in p.stderr
    assert "cannot import what proxy mode needs" in p.stderr and "grpc" in p.stderr, p.stderr
    assert not (tmp_path / "lau").exists()
    p = _build(tmp_path, "--mode", "proxy")  # this interpreter has them
    assert p.returncode == 0, p.stderr


def test_launcher_build_hot_swap_is_a_proxy_option_and_inspect_shows_it(tmp_path):
    p = _build(tmp_path, "--hot-swap")
    assert p.returncode != 0 and "--hot-swap needs --mode proxy" in p.stderr
    p = _build(tmp_path, "--hot-swap", "--mode", "proxy")
    assert p.returncode == 0, p.stderr
    out = cli("launcher", "inspect", "--json", tmp_path / "lau")
    assert json.loads(out.stdout)["hot_swap"] is True
    p = _build(tmp_path, "--mode", "proxy")
    assert json.loads(cli("launcher", "inspect", "--json", tmp_path / "lau").stdout)["hot_swap"] is False


def test_sign_under_a_small_memory_limit_fails_in_one_line_with_a_hint(tmp_path):
    """Issue 16, item 8: scrypt needs 1 GiB to decrypt a minisign key; under `ulimit -v 900000`
    (a small CI runner) sign used to end in a traceback (`ValueError: malloc failure`)."""
    import os
    import resource

    keys = R.new_keys()
    sk = tmp_path / "release.key"
    sk.write_text(keys.secret.to_text(b"pw"))                      # encrypted, as keygen writes it
    plugin = R.script_plugin(tmp_path / "kv-1.0.0", "v1")

    def limit():
        resource.setrlimit(resource.RLIMIT_AS, (900000 * 1024, 900000 * 1024))

    p = subprocess.run([sys.executable, "-m", "shim.cli", "sign", "--secret-key", str(sk), "--name", "kv",
                        "--type", "secret", "--version", "1.0.0", str(plugin)], capture_output=True, text=True,
                       cwd=ROOT, timeout=120, env={**os.environ, "VAULT_PLUGIN_SHIM_PASSWORD": "pw"},
                       preexec_fn=limit)
    assert p.returncode == 1, p.stderr
    assert "Traceback" not in p.stderr and len(p.stderr.strip().splitlines()) == 1, p.stderr
    assert "needs 1024 MiB of memory to decrypt" in p.stderr and str(sk) in p.stderr
    assert "--transit-key" in p.stderr and "--unencrypted" in p.stderr
    assert not Path(str(plugin) + ".manifest.json").exists()


def test_every_command_that_prints_a_result_has_json(tmp_path):
    """Issue 16, item 9: keygen, sign and launcher build too (verify, inspect, doctor and
    register have theirs); usage errors exit 1, as the vault CLI's do."""
    k = cli("keygen", "--secret-key", tmp_path / "k.sk", "--public-key", tmp_path / "k.pub", "--unencrypted", "--json")
    assert k.returncode == 0, k.stderr
    key = json.loads(k.stdout)
    assert key["encrypted"] is False and key["public_key"] == str(tmp_path / "k.pub")
    d = tmp_path / "plugins"
    d.mkdir(mode=0o755)
    plugin = R.script_plugin(d / "kv-1.0.0", "v1")
    s = cli("sign", "--secret-key", tmp_path / "k.sk", "--name", "kv", "--type", "secret", "--version", "1.0.0",
            "--json", plugin)
    assert s.returncode == 0, s.stderr
    signed = json.loads(s.stdout)
    assert signed["version"] == "1.0.0" and signed["key_id"] == key["key_id"]
    assert signed["expires_at"] is None                           # expiry is opt-in
    assert "no expiry" in cli("sign", "--secret-key", tmp_path / "k.sk", "--name", "kv", "--type", "secret",
                              "--version", "1.0.0", plugin).stdout
    b = cli("launcher", "build", "--trusted-key", tmp_path / "k.pub", "--name", "kv", "--plugins-dir", d,
            "--output", tmp_path / "kv-shim", "--json")
    assert b.returncode == 0, b.stderr
    built = json.loads(b.stdout)
    assert built["register"][:5] == ["vault-plugin-shim", "register", "secret", "kv", "--launcher"]
    assert built["sha256"] == json.loads(cli("launcher", "inspect", "--json", tmp_path / "kv-shim").stdout)["sha256"]
    text = cli("launcher", "build", "--trusted-key", tmp_path / "k.pub", "--name", "kv", "--plugins-dir", d,
               "--output", tmp_path / "kv-shim2").stdout
    assert "  vault-plugin-shim register secret kv --launcher <plugin_directory>/kv-shim2" in text
    assert cli("verify", "--nope").returncode == 1 and cli("sign").returncode == 1


# --- first-hour review: Ctrl-C, help texts, error wording ---------------------------------

def _walk(parser, name="vault-plugin-shim"):
    """(command, action) for every argument of every (sub)command, and the leaf commands."""
    import argparse

    args, leaves = [], []
    subs = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    for a in parser._actions:
        if not isinstance(a, (argparse._SubParsersAction, argparse._HelpAction, argparse._VersionAction)):
            args.append((name, a))
    for sub in subs:
        helps = {c.dest: c.help for c in sub._choices_actions}
        for command, p in sub.choices.items():
            args.append((f"{name} {command}", helps.get(command)))
            more, deeper = _walk(p, f"{name} {command}")
            args += more
            leaves += deeper or [command if name == "vault-plugin-shim" else f"{name.split(' ', 1)[1]} {command}"]
    return args, leaves


def test_every_option_positional_and_command_has_a_help_text():
    import argparse

    from shim.cli import build_parser

    args, _ = _walk(build_parser())
    missing = [f"{cmd}: {'/'.join(a.option_strings) or a.dest}" if isinstance(a, argparse.Action) else cmd
               for cmd, a in args
               if not (a.help if isinstance(a, argparse.Action) else a) or getattr(a, "help", "") == argparse.SUPPRESS]
    assert missing == []


def test_the_cli_describes_itself_to_users_and_each_command_says_what_ctrl_c_leaves_undone():
    from shim import cli

    parser = cli.build_parser()
    assert "argparse" not in parser.description and "``" not in parser.description
    assert parser.description.startswith("Run HashiCorp Vault or OpenBao external plugins")
    assert sorted(_walk(parser)[1]) == sorted(cli.INTERRUPTED)


def test_doctor_help_says_when_it_contacts_vault_and_what_to_run_without_python():
    text = " ".join(cli("doctor", "--help").stdout.split())
    assert "contacts Vault only with --catalog" in text and "does not contact Vault" not in text
    assert "without Python" in text and "doctor` answers by itself" in text


def _rss_mib(pid: int) -> int:
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return 0
    return next((int(ln.split()[1]) >> 10 for ln in status.splitlines() if ln.startswith("VmRSS:")), 0)


def _interrupted(args, *, env=None, ready):
    """Start the CLI, wait until ``ready(proc)`` says it is inside its slow part, send SIGINT."""
    import os
    import signal

    from tests.support.wait import wait_until

    p = subprocess.Popen([sys.executable, "-m", "shim.cli", *map(str, args)], cwd=ROOT, text=True,
                         stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                         env={**os.environ, **(env or {})})
    try:
        wait_until(lambda: p.poll() is not None or ready(p), "the command to reach its slow part", deadline=60)
        assert p.poll() is None, p.communicate()
        p.send_signal(signal.SIGINT)
        out, err = p.communicate(timeout=60)
    finally:
        if p.poll() is None:
            p.kill()
            p.communicate()
    return p.returncode, out, err


def _in_scrypt(p) -> bool:
    """scrypt (N=2^20, r=8) fills 1 GiB as it goes: far past what the CLI needs otherwise."""
    return _rss_mib(p.pid) >= 256


def test_ctrl_c_during_keygen_exits_130_in_one_line_and_leaves_the_old_keys(tmp_path):
    sk, pk = tmp_path / "int.key", tmp_path / "int.pub"
    sk.write_text("old secret\n")
    pk.write_text("old public\n")
    rc, _, err = _interrupted(("keygen", "--secret-key", sk, "--public-key", pk, "--force"),
                              env={"VAULT_PLUGIN_SHIM_PASSWORD": "x"}, ready=_in_scrypt)
    assert (rc, err) == (130, "vault-plugin-shim keygen: interrupted; no key was written\n")
    assert sorted(f.name for f in tmp_path.iterdir()) == ["int.key", "int.pub"], "no temporary file is left"
    assert (sk.read_text(), pk.read_text()) == ("old secret\n", "old public\n")


def test_ctrl_c_while_sign_decrypts_its_key_exits_130_and_writes_nothing(tmp_path):
    keys = R.new_keys()
    sk = tmp_path / "release.key"
    sk.write_text(keys.secret.to_text(b"pw"))
    plugin = R.script_plugin(tmp_path / "kv-1.0.0", "v1")
    rc, out, err = _interrupted(("sign", "--secret-key", sk, "--name", "kv", "--type", "secret", "--version",
                                 "1.0.0", plugin), env={"VAULT_PLUGIN_SHIM_PASSWORD": "pw"}, ready=_in_scrypt)
    assert (rc, out, err) == (130, "", "vault-plugin-shim sign: interrupted; no manifest or signature was written\n")
    assert sorted(f.name for f in tmp_path.iterdir()) == ["kv-1.0.0", "release.key"]


def test_ctrl_c_during_the_model_demo_exits_130_and_stops_every_node(tmp_path):
    import os
    import shutil
    import signal
    import tempfile
    import threading

    from tests.support.procs import gone, referencing
    from tests.support.wait import wait_until

    tmp = Path(tempfile.mkdtemp(prefix="t-", dir="/tmp"))  # short: socket paths are length-limited
    try:
        p = subprocess.Popen([sys.executable, "-m", "shim.cli", "demo", "--model", "--nodes", "2", "--rate", "10"],
                             cwd=ROOT, text=True, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                             stderr=subprocess.PIPE, env={**os.environ, "TMPDIR": str(tmp)})
        lines = []
        reader = threading.Thread(target=lambda: lines.extend(p.stderr), daemon=True)
        reader.start()
        try:
            # The baseline run has begun and both of its nodes are running (the demo and its two nodes).
            wait_until(lambda: p.poll() is not None or ("running baseline ...\n" in lines
                                                        and len(referencing(tmp)) >= 3),
                       "the model's nodes to run", deadline=120, detail=lambda: "".join(lines))
            assert p.poll() is None, "".join(lines)
            p.send_signal(signal.SIGINT)
            p.wait(timeout=60)
        finally:
            if p.poll() is None:
                p.kill()
                p.wait()
        reader.join(10)
        err = "".join(lines)
        assert p.returncode == 130 and "Traceback" not in err, err
        assert [ln for ln in lines if "interrupted" in ln] == \
            ["vault-plugin-shim demo: interrupted; every node was stopped and its directory removed\n"]
        assert gone(tmp) == [], "no node or plugin of the run is left"
        assert list(tmp.iterdir()) == [], "the workspace and the sockets' directory are removed"
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def test_sign_says_an_expiry_in_the_past_is_the_option_to_change(tmp_path):
    p, plugin = _sign(tmp_path, "--expires", "2020-01-01T00:00:00Z")
    assert p.returncode == 1 and "Traceback" not in p.stderr
    assert "--expires 2020-01-01T00:00:00Z is not after the signing time (now: " in p.stderr
    assert "Fix: pass a later --expires: a duration such as 365d" in p.stderr
    assert "manifest.json" not in p.stderr and "regenerate" not in p.stderr
    assert not Path(str(plugin) + ".manifest.json").exists()


def test_an_invalid_plugin_name_says_what_a_valid_one_is(tmp_path):
    p, plugin = _sign(tmp_path, "--name", "bad name")
    built = _build(tmp_path, "--name", "bad name")
    for done in (p, built):
        assert done.returncode == 1 and "Traceback" not in done.stderr
        assert "--name 'bad name' is not a valid Vault plugin name" in done.stderr, done.stderr
        assert "Fix: pass a --name of 1 to 128 letters, digits, '.', '_' or '-'" in done.stderr
        assert "regenerate" not in done.stderr and "rebuild" not in done.stderr
    assert not Path(str(plugin) + ".manifest.json").exists() and not (tmp_path / "lau").exists()


def test_launcher_build_names_an_output_directory_that_does_not_exist(tmp_path):
    keys = R.new_keys()
    pk = tmp_path / "release.pub"
    pk.write_text(keys.public.to_text())
    p = cli("launcher", "build", "--trusted-key", pk, "--name", "kv", "--plugins-dir", tmp_path,
            "--output", tmp_path / "nope" / "x")
    assert p.returncode == 1 and "Traceback" not in p.stderr and ".tmp-" not in p.stderr
    assert p.stderr.startswith(f"vault-plugin-shim: error: {tmp_path / 'nope'}: does not exist "
                               f"(the directory of --output {tmp_path / 'nope' / 'x'}). Fix: create it first")


def test_verify_says_a_path_that_does_not_exist_does_not_exist(tmp_path):
    d, pk = setup(tmp_path)
    p = cli("verify", "--trusted-key", pk, "--name", "kv", tmp_path / "nope")
    assert p.returncode == 1 and "Traceback" not in p.stderr and p.stdout == ""
    assert f"{tmp_path / 'nope'}: no such file or directory. Fix: pass a signed plugin file" in p.stderr
    # A binary whose manifest is still there is a candidate that says what is missing, as before.
    (d / "kv-1.1.0").unlink()
    p = cli("verify", "--trusted-key", pk, "--name", "kv", d / "kv-1.1.0")
    assert p.returncode == 1 and "[REJECT] kv-1.1.0:" in p.stdout, p.stdout + p.stderr


def test_keygen_under_a_small_memory_limit_says_it_is_encrypting(tmp_path):
    import os
    import resource

    def limit():
        resource.setrlimit(resource.RLIMIT_AS, (800000 * 1024, 800000 * 1024))

    p = subprocess.run([sys.executable, "-m", "shim.cli", "keygen", "--secret-key", str(tmp_path / "k.key"),
                        "--public-key", str(tmp_path / "k.pub")], capture_output=True, text=True, cwd=ROOT,
                       timeout=120, env={**os.environ, "VAULT_PLUGIN_SHIM_PASSWORD": "pw"}, preexec_fn=limit)
    assert p.returncode == 1 and "Traceback" not in p.stderr and len(p.stderr.splitlines()) == 1, p.stderr
    assert "encrypting the new secret key needs 1024 MiB of memory for its scrypt key derivation" in p.stderr
    assert "decrypt" not in p.stderr and "--unencrypted" in p.stderr and p.stderr.count("Fix:") == 1
    assert list(tmp_path.iterdir()) == []


def test_launcher_inspect_of_another_file_gives_one_fix(tmp_path):
    keys = R.new_keys()
    pk = tmp_path / "release.pub"
    pk.write_text(keys.public.to_text())
    p = cli("launcher", "inspect", pk)
    assert p.returncode == 1 and "Traceback" not in p.stderr and len(p.stderr.splitlines()) == 1
    assert f"{pk}: is not a vault-plugin-shim launcher" in p.stderr and p.stderr.count("Fix:") == 1, p.stderr


def test_under_a_umask_of_002_keys_manifests_and_launchers_get_their_own_modes(tmp_path):
    """The launcher refuses a manifest that its group may write; a umask of 002 (common for
    users with a group of their own) must not make sign write one. Keys, manifests,
    signatures and launchers are written with exactly their modes."""
    import os
    import stat

    def run(*args):
        return subprocess.run([sys.executable, "-m", "shim.cli", *map(str, args)], capture_output=True, text=True,
                              cwd=ROOT, timeout=120, preexec_fn=lambda: os.umask(0o002))

    d = tmp_path / "plugins"
    d.mkdir(mode=0o755)
    sk, pk = tmp_path / "k", tmp_path / "k.pub"
    assert run("keygen", "--secret-key", sk, "--public-key", pk, "--unencrypted").returncode == 0
    plugin = R.script_plugin(d / "kv-1.0.0", "v1")
    done = run("sign", "--secret-key", sk, "--name", "kv", "--type", "secret", "--version", "1.0.0", plugin)
    assert done.returncode == 0, done.stderr
    out = tmp_path / "launcher"
    done = run("launcher", "build", "--trusted-key", pk, "--name", "kv", "--plugins-dir", d, "--output", out)
    assert done.returncode == 0, done.stderr
    modes = {p.name: stat.S_IMODE(p.stat().st_mode) for p in (sk, pk, out, *d.glob("kv-1.0.0.*"))}
    assert modes == {"k": 0o600, "k.pub": 0o644, "launcher": 0o755, "kv-1.0.0.manifest.json": 0o644,
                     "kv-1.0.0.manifest.json.minisig": 0o644}, modes
    done = run("verify", "--launcher", out)
    assert done.returncode == 0, done.stdout + done.stderr


def test_verify_says_why_a_refused_newer_versions_number_is_not_shown(tmp_path):
    """A newer release signed by a key the launcher does not trust: its manifest is not read,
    so verify cannot show its version, and says why instead of "version unknown"."""
    d, pk = setup(tmp_path)
    (d / "kv-2.0.0").unlink()
    R.release(R.new_keys(), R.script_plugin(d / "kv-3.0.0", "v3"), name="kv", version="3.0.0")
    done = cli("verify", "--trusted-key", pk, "--name", "kv", d)
    assert done.returncode == 1
    assert "FAIL: kv-3.0.0 (its signed version could not be read) is refused and the launcher falls back to the " \
           "older 1.1.0" in done.stdout, done.stdout
