"""Issue 16, the launcher's side: a launcher built with `--on-refused-newer refuse` does not fall
back past a refused newer version, and a launch within 30 days of the chosen manifest's expiry
logs a WARN. Through the real (Python) launcher file, as Vault runs it."""

import time

from tests.support import releases as R


def setup(tmp_path, **policy_fields):
    d = tmp_path / "plugins"
    d.mkdir(mode=0o755)
    keys = R.new_keys()
    policy = R.policy(d, keys).replace(**policy_fields)
    return d, keys, R.launcher(tmp_path, policy)


def tampered_v2(d, keys):
    v2 = R.script_plugin(d / "myplugin-2.0.0", "v2")
    R.release(keys, v2, version="2.0.0")
    with open(v2, "a") as fh:
        fh.write("# one more line\n")


def test_refuse_policy_does_not_fall_back(tmp_path):
    d, keys, launcher = setup(tmp_path, on_refused_newer="refuse")
    R.release(keys, R.script_plugin(d / "myplugin-1.0.0", "v1"), version="1.0.0")
    tampered_v2(d, keys)
    proc = R.run(launcher)
    assert proc.returncode == 1 and proc.stdout == b"", proc.stderr.decode()
    errors = [ln for ln in R.hclog_lines(proc.stderr) if ln["@level"] == "error"]
    refusal = [e for e in errors if e.get("error") == "NewerVersionRefusedError"]
    assert refusal and "refuses to fall back" in refusal[0]["reason"]
    assert refusal[0]["file"].endswith("myplugin-2.0.0") and "ship the newer release intact" in refusal[0]["fix"]


def test_default_policy_falls_back_loudly(tmp_path):
    d, keys, launcher = setup(tmp_path)
    R.release(keys, R.script_plugin(d / "myplugin-1.0.0", "v1"), version="1.0.0")
    tampered_v2(d, keys)
    proc = R.run(launcher)
    assert proc.returncode == 0, proc.stderr.decode()
    assert b"v1" in proc.stdout
    errors = [ln for ln in R.hclog_lines(proc.stderr) if ln["@level"] == "error"]
    assert any("myplugin-2.0.0" in e.get("file", "") for e in errors)


def test_a_launch_within_30_days_of_expiry_warns(tmp_path):
    d, keys, launcher = setup(tmp_path)
    now = int(time.time())
    R.release(keys, R.script_plugin(d / "myplugin-1.0.0", "v1"), version="1.0.0", issued=now - 60,
              expires=now + 20 * 86400)
    proc = R.run(launcher)
    assert proc.returncode == 0, proc.stderr.decode()
    warns = [ln for ln in R.hclog_lines(proc.stderr) if ln["@level"] == "warn"]
    assert any("expires at" in w["@message"] and "in 20.0 days" in w["@message"] for w in warns), proc.stderr
    far = tmp_path / "far"
    far.mkdir()
    d2, keys2, launcher2 = setup(far)
    R.release(keys2, R.script_plugin(d2 / "myplugin-1.0.0", "v1"), version="1.0.0", issued=now - 60,
              expires=now + 60 * 86400)
    proc = R.run(launcher2)
    assert proc.returncode == 0 and not [ln for ln in R.hclog_lines(proc.stderr) if ln["@level"] == "warn"]
