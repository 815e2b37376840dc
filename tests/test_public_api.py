"""The public surface: `shim` and `shim.goplugin` export what the README says, and the
README's examples run as they stand (the go-plugin one under HashiCorp's go-plugin host)."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support import gopeer

ROOT = Path(__file__).resolve().parent.parent


def example(name: str) -> str:
    text = (ROOT / "README.md").read_text()
    m = re.search(rf"<!-- example: {name} -->\n```python\n(.*?)```", text, re.S)
    assert m, f"README.md has no `<!-- example: {name} -->` block"
    return m.group(1)


@pytest.mark.parametrize("module", ["shim", "shim.goplugin"])
def test_every_exported_name_resolves_and_importing_stays_light(module):
    code = (f"import sys, {module} as m; names = m.__all__; "
            "heavy = [x for x in ('grpc', 'cryptography', 'hvac') if x in sys.modules]; "
            "assert not heavy, heavy; "
            "[getattr(m, n) for n in names]; print(len(names))")
    done = subprocess.run([sys.executable, "-I", "-c", code], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert int(done.stdout) >= 5


def test_goplugin_imports_nothing_else_of_ours():
    for path in (ROOT / "shim" / "goplugin").rglob("*.py"):
        text = path.read_text()
        assert not re.search(r"^\s*(from|import) shim\.(?!goplugin)", text, re.M), path
        assert not re.search(r"^\s*from \.\.", text, re.M), path


def test_readme_library_example_runs(tmp_path):
    done = subprocess.run([sys.executable, "-I", "-c", example("shim")], capture_output=True, text=True,
                          timeout=60, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("would launch ") and done.stdout.strip().endswith("my-plugin-1.0.0")


def test_readme_goplugin_example_serves_a_go_plugin_host(go_host, tmp_path):
    source = example("goplugin").split("\n", 1)[1]
    plugin = tmp_path / "py-plugin"
    plugin.write_text(f"#!{sys.executable} -I\n" + source)
    plugin.chmod(0o755)
    res = gopeer.run_host(go_host, plugin, "double", "21", sha256=gopeer.sha256_file(plugin),
                          host_env={"TMPDIR": str(tmp_path)}, timeout=60)
    assert res.ok and res.results == [42], res.describe()
