"""The CLI imports a subcommand's module only when that subcommand is used (issue 11: start-up time)."""

from __future__ import annotations

import importlib
import subprocess
import sys

import click
from click.testing import CliRunner

from gpupass.core.cli import manifest
from gpupass.core.cli.main import cli


def _loaded_after(code: str) -> set[str]:
    probe = code + "\nimport sys\nprint(sorted(m for m in sys.modules if m.startswith('gpupass')))\n"
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    return set(eval(result.stdout.strip().splitlines()[-1]))


def test_every_manifest_line_is_the_commands_own_short_help():
    for name, (module, short_help) in manifest.COMMANDS.items():
        importlib.import_module(module)
        command = cli.commands.get(name)
        assert command is not None, f"{module} does not register {name!r}"
        assert command.get_short_help_str(10**6) == short_help, f"update manifest.COMMANDS[{name!r}]"


def test_every_command_is_in_the_manifest():
    for module in {module for module, _ in manifest.COMMANDS.values()}:
        importlib.import_module(module)
    assert set(cli.commands) == set(manifest.COMMANDS)


def test_help_imports_no_command_module():
    loaded = _loaded_after("from gpupass.core.cli.main import cli\n"
                           "try:\n    cli(['--help'], prog_name='gpupass')\nexcept SystemExit:\n    pass")
    modules = {module for module, _ in manifest.COMMANDS.values()}
    assert not loaded & modules, loaded & modules
    assert "gpupass.core.plugins" not in loaded


def test_a_subcommand_imports_its_own_module_only():
    loaded = _loaded_after("from gpupass.core.cli.main import cli\n"
                           "try:\n    cli(['fleet', '--help'], prog_name='gpupass')\nexcept SystemExit:\n    pass")
    assert "gpupass.core.cli.fleet" in loaded
    assert not {"gpupass.core.cli.commands", "gpupass.core.cli.lab", "gpupass.core.cli.migrate"} & loaded


def test_help_lists_every_command_and_one_added_at_run_time():
    @click.command("zz-extra")
    def extra() -> None:
        """An extra command a library user added."""

    cli.add_command(extra)
    try:
        output = CliRunner().invoke(cli, ["--help"], terminal_width=200).output
    finally:
        cli.commands.pop("zz-extra")
    for name, (_, short_help) in manifest.COMMANDS.items():
        assert f"  {name}" in output and short_help in output
    assert "An extra command a library user added." in output


def test_an_unknown_command_is_a_usage_error():
    result = CliRunner().invoke(cli, ["gpuz"])
    assert result.exit_code == 2 and "No such command 'gpuz'" in result.output
