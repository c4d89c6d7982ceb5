"""The suite lints the tree with ruff, as configured in pyproject.toml ([tool.ruff]): zero findings.

CI runs the README's test command, so lint findings fail CI like a failing test.
"""

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_ruff_finds_nothing():
    result = subprocess.run([sys.executable, "-m", "ruff", "check", "--no-cache", "--output-format", "concise", "."],
                            cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_ruff_is_configured_to_look():
    """A rule the tree keeps must fire on code that breaks it, so an empty selection cannot pass silently."""
    bad = "import os\n\n\ndef f(items=[]):\n    return items\n"
    result = subprocess.run([sys.executable, "-m", "ruff", "check", "--no-cache", "--output-format", "concise",
                             "--stdin-filename", "core/example.py", "-"], cwd=ROOT, input=bad,
                            capture_output=True, text=True)
    assert result.returncode == 1
    assert "F401" in result.stdout and "B006" in result.stdout, result.stdout


def test_mypy_finds_nothing_in_the_core(tmp_path):
    """mypy over gpupass.core as pyproject.toml configures it ([tool.mypy]: strict on all of it).

    The package is importable as `gpupass.core` only through setuptools' editable finder, which mypy does not
    use; so mypy reads it through a `gpupass` folder that links to core/ (what a wheel installs).
    """
    package = tmp_path / "gpupass"
    package.mkdir()
    (package / "__init__.py").write_text((ROOT / "core" / "toplevel" / "__init__.py").read_text())
    (package / "core").symlink_to(ROOT / "core")
    result = subprocess.run([sys.executable, "-m", "mypy", "--config-file", str(ROOT / "pyproject.toml"),
                             "--cache-dir", str(tmp_path / "cache"), "-p", "gpupass.core"],
                            cwd=tmp_path, capture_output=True, text=True, env={**os.environ, "MYPYPATH": str(tmp_path)})
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Success" in result.stdout


def test_mypy_is_strict_on_every_core_module(tmp_path):
    """A new module anywhere under gpupass.core is held to the strict flags: an untyped function fails."""
    core = tmp_path / "gpupass" / "core" / "cli"
    core.mkdir(parents=True)
    for folder in (core.parent.parent, core.parent, core):
        (folder / "__init__.py").write_text("")
    (core / "probe.py").write_text("def shout(text):\n    return text.upper()\n")
    result = subprocess.run([sys.executable, "-m", "mypy", "--config-file", str(ROOT / "pyproject.toml"),
                             "--cache-dir", str(tmp_path / "cache"), "-p", "gpupass.core.cli"],
                            cwd=tmp_path, capture_output=True, text=True, env={**os.environ, "MYPYPATH": str(tmp_path)})
    assert result.returncode == 1 and "[no-untyped-def]" in result.stdout, result.stdout + result.stderr


def test_mypy_finds_nothing_in_the_backends(tmp_path):
    """mypy over gpupass.backends' product code, strict ([tool.mypy.overrides] for gpupass.backends.*: the same
    flags as the core's strict modules); their labs (backends/*/lab/) are excluded in [tool.mypy]."""
    package = tmp_path / "gpupass"
    package.mkdir()
    (package / "__init__.py").write_text((ROOT / "core" / "toplevel" / "__init__.py").read_text())
    (package / "core").symlink_to(ROOT / "core")
    (package / "backends").symlink_to(ROOT / "backends")
    result = subprocess.run([sys.executable, "-m", "mypy", "--config-file", str(ROOT / "pyproject.toml"),
                             "--cache-dir", str(tmp_path / "cache"), "-p", "gpupass.backends"],
                            cwd=tmp_path, capture_output=True, text=True, env={**os.environ, "MYPYPATH": str(tmp_path)})
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Success" in result.stdout
    checked = int(result.stdout.split(" in ")[-1].split()[0])
    products = [p for p in (ROOT / "backends").rglob("*.py") if "lab" not in p.relative_to(ROOT / "backends").parts]
    assert checked == len(products), "every product module, and no lab module, is checked"
