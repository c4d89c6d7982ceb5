"""The package list in pyproject.toml must name every package, or a wheel install silently lacks it."""

import subprocess
import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_every_package_folder_is_listed():
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    listed = set(config["packages"])
    mapped = {(ROOT / folder).resolve() for folder in config["package-dir"].values()}
    found = set()
    for top, folder in config["package-dir"].items():
        for init in (ROOT / folder).rglob("__init__.py"):
            if init.parent.resolve() in mapped and init.parent.resolve() != (ROOT / folder).resolve():
                continue  # a folder mapped to a package of its own (core/toplevel is `gpupass`)
            relative = init.parent.relative_to(ROOT / folder)
            found.add(".".join([top, *relative.parts]))
    # Data-only packages (no Python module) are listed for their package data.
    found |= {name for name in config.get("package-data", {}) if name in listed}
    assert found == listed, f"missing from pyproject: {sorted(found - listed)}; stale: {sorted(listed - found)}"


def test_help_imports_no_hypervisor_sdk():
    code = (
        "import sys\n"
        "from gpupass.core.cli.main import cli\n"
        "try:\n    cli(['--help'], prog_name='gpupass')\nexcept SystemExit:\n    pass\n"
        "sdks = sorted(m for m in sys.modules if m.split('.')[0] in "
        "('libvirt', 'libvirtmod', 'pyVmomi', 'pyVim', 'winrm', 'spnego', 'requests', 'pluggy'))\n"
        "print('SDKS', sdks)\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert "SDKS []" in result.stdout, result.stdout
