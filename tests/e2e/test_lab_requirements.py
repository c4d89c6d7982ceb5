"""Without the lab extra or Debian's govmomi sources, `lab up` says what is missing and how to get it."""

import subprocess
import sys

from support.cli import gpupass

# Runs the CLI with some modules made unimportable, as on an install without `gpupass[lab]`.
BLOCKING = """
import importlib.abc, sys
class Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split('.')[0] in {blocked!r}:
            raise ModuleNotFoundError(name)
        return None
sys.meta_path.insert(0, Block())
import importlib.util
_find = importlib.util.find_spec
importlib.util.find_spec = lambda name, *a: None if name.split('.')[0] in {blocked!r} else _find(name, *a)
from gpupass.core.cli.main import main
main({argv!r})
"""


def run_without(blocked, argv):
    code = BLOCKING.format(blocked=set(blocked), argv=argv)
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, stdin=subprocess.DEVNULL)


def test_lab_up_without_tree_sitter_is_a_clear_error():
    result = run_without({"tree_sitter", "tree_sitter_powershell"}, ["lab", "up", "lab-hyperv"])
    assert result.returncode == 1, result.stderr
    assert "Traceback" not in result.stderr
    assert "tree_sitter" in result.stderr and "pip install 'gpupass[lab]'" in result.stderr
    assert "down" in gpupass("lab", "status").stdout.split("lab-hyperv")[1].splitlines()[0]


def test_lab_up_without_govmomi_sources_names_the_debian_package(tmp_path, monkeypatch):
    monkeypatch.setenv("GPUPASS_GOPATH", str(tmp_path / "empty-gopath"))
    result = gpupass("lab", "up", "lab-esxi", expect=1)
    assert "golang-github-vmware-govmomi-dev" in result.stderr and "govmomi sources are missing" in result.stderr
    assert "Traceback" not in result.stderr
