"""The README's two set-up commands are the project's contract with a new user and with CI."""

from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def readme_commands():
    lines = (ROOT / "README.md").read_text().splitlines()
    return [line.strip() for line in lines if line.startswith("bash .ci/bootstrap")]


def test_readme_starts_with_the_demo_and_the_test_command():
    demo, tests = readme_commands()[:2]
    assert demo.endswith("gpupass lab demo")
    assert "pytest" in tests


def test_ci_runs_exactly_the_readme_test_command():
    tests = readme_commands()[1]
    assert tests in (ROOT / ".ci" / "run").read_text().splitlines()
