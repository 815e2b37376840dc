"""The CLI as a user runs it: verify's report and JSON, inspect, usage errors."""

import json
import subprocess
import sys
from pathlib import Path

from tests.support import releases as R

ROOT = Path(__file__).resolve().parent.parent


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
    assert p.returncode == 0, p.stderr
    lines = p.stdout.splitlines()
    assert lines[0] == f"secret plugin 'kv', plugins dir {d}"
    assert any(ln.startswith("  [LAUNCH] kv-1.1.0: version 1.1.0") for ln in lines)
    assert any(ln.startswith("  [REJECT] kv-1.0.0:") and "below the minimum version 1.1.0" in ln for ln in lines)
    assert any(ln.startswith("  [REJECT] kv-2.0.0:") and "sha256 is" in ln and "Fix:" in ln for ln in lines)


def test_verify_json_and_single_file(tmp_path):
    d, pk = setup(tmp_path)
    p = cli("verify", "--trusted-key", pk, "--name", "kv", "--json", d / "kv-2.0.0")
    assert p.returncode == 1
    doc = json.loads(p.stdout)
    assert doc["would_launch"] is None and len(doc["candidates"]) == 1
    assert doc["candidates"][0]["error"]["error"] == "DigestMismatchError"
    ok = json.loads(cli("verify", "--trusted-key", pk, "--name", "kv", "--json", d).stdout)
    assert ok["would_launch"] == str(d / "kv-1.1.0")


def test_verify_with_the_launchers_policy_and_inspect(tmp_path):
    d, pk = setup(tmp_path)
    out = tmp_path / "kv-shim"
    b = cli("launcher", "build", "--trusted-key", pk, "--name", "kv", "--type", "secret", "--plugins-dir", d,
            "--min-version", "1.0.0", "--output", out)
    assert b.returncode == 0, b.stderr
    v = cli("verify", "--launcher", out, "--json")
    assert json.loads(v.stdout)["would_launch"] == str(d / "kv-1.1.0")
    i = json.loads(cli("launcher", "inspect", out, "--json").stdout)
    assert i["policy"]["name"] == "kv" and i["policy"]["min_version"] == "1.0.0"
    assert i["sha256"] in b.stdout


def test_usage_errors_are_clear(tmp_path):
    p = cli("verify", "--name", "kv", tmp_path)
    assert p.returncode == 1 and "verify needs --trusted-key" in p.stderr
    p = cli("launcher", "build", "--name", "kv", "--plugins-dir", tmp_path, "--output", tmp_path / "x")
    assert p.returncode == 1 and "at least one --trusted-key" in p.stderr
    p = cli("sign", "--name", "kv", "--type", "secret", "--version", "1.0", tmp_path)
    assert p.returncode == 1 and "exactly one of --secret-key and --transit-key" in p.stderr
    p = cli("launcher", "inspect", ROOT / "README.md")
    assert p.returncode == 1 and "not a vault-plugin-shim launcher" in p.stderr


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


def test_launcher_build_refuses_an_interpreter_that_does_not_exist(tmp_path):
    p = _build(tmp_path, "--python", "/nope/python3")
    assert p.returncode != 0 and "Traceback" not in p.stderr
    assert "does not exist or is not executable" in p.stderr and "--python-only-in-image" in p.stderr
    assert not (tmp_path / "lau").exists()
    p = _build(tmp_path, "--python", "/nope/python3", "--python-only-in-image")
    assert p.returncode == 0, p.stderr


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
