"""docs/plugins.md's samples are made from the code (gpupass.core.cli.plugins_doc): a stale one fails here."""

from __future__ import annotations

from gpupass.core.cli import plugins_doc


def test_every_generated_block_of_the_guide_matches_the_code():
    text = plugins_doc.GUIDE.read_text(encoding="utf-8")
    assert text == plugins_doc.render(text), (
        "a generated sample in docs/plugins.md is stale: run `python -m gpupass.core.cli.plugins_doc`")


def test_the_guide_has_every_generated_block_once():
    assert sorted(plugins_doc.blocks(plugins_doc.GUIDE.read_text(encoding="utf-8"))) == sorted(plugins_doc.GENERATORS)


def test_a_drifted_sample_is_caught():
    """The check can fail: a sample edited by hand (here: an old exit code) is rewritten, not kept."""
    text = plugins_doc.GUIDE.read_text(encoding="utf-8")
    drifted = text.replace("| `NotFound` | `not-found` | 2 |", "| `NotFound` | `not-found` | 1 |")
    assert drifted != text
    assert plugins_doc.render(drifted) == text


def test_the_samples_show_what_the_code_has():
    text = plugins_doc.GUIDE.read_text(encoding="utf-8")
    assert "$ gpupass plugins\nPLUGIN" in text and "example  0.3.0    example" in text
    assert '"rule": "balloon_pinned"' in text
    assert "| `Conflict` | `conflict` | 6 |" in text
    for hook in plugins_doc.hook_names():
        assert f"def {hook}(register: " in text
    assert '[project.entry-points.gpupass]\nexample = "gpupass_example_backend"' in text
