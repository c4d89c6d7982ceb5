"""`gpupass --help` comes from a cached rendering without importing click (issue 11: start-up time)."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
from gpupass.core import paths
from gpupass.core.cli import entry
from gpupass.core.cli.main import cli

PROBE = ("import sys\nfrom gpupass.core.cli.{module} import main\ntry:\n    main()\nfinally:\n"
         "    print('CLICK-LOADED' if 'click' in sys.modules else 'CLICK-NOT-LOADED', file=sys.stderr)\n")


@pytest.fixture(autouse=True)
def own_cache_folder(tmp_path, monkeypatch):
    """These tests write and break the cache; the rest of the suite shares it (the simulator's build too)."""
    monkeypatch.setenv("GPUPASS_CACHE_DIR", str(tmp_path / "cache"))


def _help(columns: int, *args: str, module: str = "entry") -> subprocess.CompletedProcess:
    env = {**os.environ, "COLUMNS": str(columns)}
    return subprocess.run([sys.executable, "-c", PROBE.format(module=module), *(args or ("--help",))],
                          capture_output=True, text=True, env=env, check=True)


@pytest.mark.parametrize("columns", [60, 80, 140])
def test_cold_and_warm_help_are_clicks_own_and_the_warm_one_imports_no_click(columns):
    expected = _help(columns, module="main").stdout  # click itself, as the console script used to run it
    cold, warm = _help(columns), _help(columns, "-h")
    assert cold.stdout == expected and warm.stdout == expected
    assert "CLICK-LOADED" in cold.stderr and "CLICK-NOT-LOADED" in warm.stderr


def test_any_other_command_line_goes_through_click():
    result = _help(80, "plugins", "--help")
    assert "List the loaded plugins" in result.stdout and "CLICK-LOADED" in result.stderr


def test_a_changed_stamp_renders_again(monkeypatch, capsys):
    monkeypatch.setattr(sys, "argv", ["gpupass", "--help"])
    monkeypatch.setattr(entry, "_stamp", lambda: "one")
    entry.main()
    first = capsys.readouterr().out
    path = entry._cache_file(entry.help_width())
    with open(path, "w", encoding="utf-8") as cached:
        cached.write("one\nstale text\n")
    entry.main()
    assert capsys.readouterr().out == "stale text\n"  # the stamp matches: the cache is used as it is
    monkeypatch.setattr(entry, "_stamp", lambda: "two")
    entry.main()
    assert capsys.readouterr().out == first


def test_help_without_a_writable_cache_still_prints(monkeypatch, capsys, tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("")
    monkeypatch.setenv("GPUPASS_CACHE_DIR", str(blocker / "cache"))
    monkeypatch.setattr(sys, "argv", ["gpupass", "--help"])
    entry.main()
    assert capsys.readouterr().out.startswith("Usage: gpupass")


@pytest.mark.parametrize("variables", [{"GPUPASS_CACHE_DIR": "/x/y"}, {"XDG_CACHE_HOME": "/x"}, {}])
def test_the_cache_folder_is_the_one_paths_names(monkeypatch, variables):
    for name in ("GPUPASS_CACHE_DIR", "XDG_CACHE_HOME"):
        monkeypatch.delenv(name, raising=False)
    for name, value in variables.items():
        monkeypatch.setenv(name, value)
    assert entry.cache_dir() == str(paths.cache_dir())


def test_the_width_limit_is_the_groups():
    assert entry.MAX_CONTENT_WIDTH == cli.context_settings["max_content_width"]


def test_each_environment_keeps_its_own_rendering(monkeypatch):
    """Two virtualenvs sharing one cache folder must not overwrite each other's --help (as the plugin index)."""
    here = entry._cache_file(80)
    monkeypatch.setattr(sys, "path", [sys.path[0], "/some/other/site-packages"])
    assert entry._cache_file(80) != here and os.path.dirname(entry._cache_file(80)) == os.path.dirname(here)
