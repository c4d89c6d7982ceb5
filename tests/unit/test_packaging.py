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


def test_the_wheel_builds_without_warnings_and_installs_as_a_normal_package(tmp_path):
    """A non-editable install: `gpupass` (core/toplevel) and gpupass.core side by side, typed, licensed."""
    import os
    import zipfile

    env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
    build = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-v",
                            "-w", str(tmp_path / "dist"), str(ROOT)], capture_output=True, text=True, env=env)
    assert build.returncode == 0, build.stderr[-3000:]
    warnings = [line for line in (build.stdout + build.stderr).splitlines()
                if "Warning" in line or "deprecated" in line.lower() or "is absent from" in line]
    assert not warnings, warnings
    wheel = next((tmp_path / "dist").glob("gpupass-*.whl"))
    names = zipfile.ZipFile(wheel).namelist()
    for expected in ("gpupass/__init__.py", "gpupass/py.typed", "gpupass/core/api.py",
                     "gpupass/backends/esxi/lab/vcsim/main.go"):
        assert expected in names, expected
    assert any(n.endswith(".dist-info/licenses/LICENSE") for n in names)
    metadata = zipfile.ZipFile(wheel).read(next(n for n in names if n.endswith(".dist-info/METADATA"))).decode()
    assert "License-Expression: Apache-2.0" in metadata
    target = tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-index", "--target", str(target),
                    str(wheel)], check=True, capture_output=True)
    probe = ("import gpupass, gpupass.core.cli.main as m; from gpupass import open_host, Plan, GpupassError; "
             "print(gpupass.__file__); print(m.__file__); print(gpupass.__version__)")
    # -S: no site-packages .pth files, so the editable install of this checkout cannot answer; the
    # dependencies come from the venv's site-packages on the path after the installed wheel.
    import sysconfig

    paths = os.pathsep.join([str(target), sysconfig.get_paths()["purelib"]])
    result = subprocess.run([sys.executable, "-S", "-c", probe], capture_output=True, text=True,
                            env={**env, "PYTHONPATH": paths}, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    gpupass_file, cli_file, version = result.stdout.split()
    assert gpupass_file.startswith(str(target)) and cli_file.startswith(str(target))
    assert version == tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
