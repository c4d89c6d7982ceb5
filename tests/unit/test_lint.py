"""The suite lints the tree with ruff, as configured in pyproject.toml ([tool.ruff]): zero findings.

CI runs the README's test command, so lint findings fail CI like a failing test.
"""

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
