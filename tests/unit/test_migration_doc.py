from pathlib import Path

from gpupass.core.cli.migration_doc import render

DOC = Path(__file__).resolve().parents[2] / "docs" / "migration.md"


def test_docs_migration_md_matches_the_backends():
    assert DOC.read_text() == render(), (
        "docs/migration.md is stale: run `python -m gpupass.core.cli.migration_doc > docs/migration.md`")
