from pathlib import Path

from gpupass.core.cli.reference import render

DOC = Path(__file__).resolve().parents[2] / "docs" / "cli.md"


def test_docs_cli_md_matches_the_cli():
    assert DOC.read_text() == render(), (
        "docs/cli.md is stale: run `python -m gpupass.core.cli.reference > docs/cli.md`"
    )


def test_every_command_is_in_the_reference():
    text = DOC.read_text()
    for command in ("plugins", "gpus", "vms", "check", "plan", "assign", "release", "status", "lab demo", "lab reset", "lab up", "lab down", "lab status", "snapshot"):
        assert f"## `gpupass {command}`" in text
