"""The gpupass command line. Importing this module must not import any hypervisor SDK."""

from __future__ import annotations

import functools
import importlib
import json
import sys
from typing import Any, Callable

import click

from gpupass.core.cli import manifest
from gpupass.core.cli.escape import shown
from gpupass.core.errors import GpupassError, PreflightFailed, UsageError

EXIT_CODES = """\b
Exit codes:
  0  done (or nothing needed doing)
  1  error: the host, the backend or a step failed (rolled_back says whether the change was undone)
  2  usage: bad arguments, a host, VM or GPU that does not exist, or a change refused without --yes
  3  preflight found blocking problems (fleet find: no host can take the VM now); nothing was changed
  4  fleet: some hosts could not be read (their rows carry the error); the rest is complete
  5  diff: the hosts differ from the file (apply would change something)
  6  conflict: another run changed the same GPU or VM at the same time and won; this one was undone
"""


class AppContext:
    def __init__(self, config_path: str | None, insecure: bool, ca_file: str | None) -> None:
        self.config_path, self.insecure, self.ca_file = config_path, insecure, ca_file

    @functools.cached_property
    def registry(self):
        from gpupass.core.plugins import default_registry

        return default_registry()

    @functools.cached_property
    def config(self):
        from pathlib import Path

        from gpupass.core import paths
        from gpupass.core.config import load_config

        return load_config(Path(self.config_path) if self.config_path else paths.config_file())

    def open(self, host: str):
        from gpupass.core.hosts import open_host
        from gpupass.core.target import TlsOptions

        return open_host(host, self.config, self.registry, TlsOptions(verify=not self.insecure, ca_file=self.ca_file))


def emit_json(document: Any) -> None:
    click.echo(json.dumps(document, indent=2, sort_keys=False))


def handles_errors(command: Callable) -> Callable:
    """Report gpupass errors as 'error:' + 'fix:' (or as JSON with --json) and exit with their code."""

    @functools.wraps(command)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        as_json = kwargs.get("as_json", False)
        try:
            return command(*args, **kwargs)
        except PreflightFailed as exc:
            if not as_json:
                click.echo(click.style("error: ", fg="red", bold=True) + shown(exc.message, True), err=True)
            sys.exit(exc.exit_code)
        except GpupassError as exc:
            if as_json:
                emit_json(exc.to_dict())
            else:
                # Messages quote names from hosts and files: escaped, so none can act on the terminal.
                click.echo(click.style("error: ", fg="red", bold=True) + shown(exc.message, True), err=True)
                if exc.remedy:
                    click.echo(f"  fix: {shown(exc.remedy, True)}", err=True)
            sys.exit(exc.exit_code)

    return wrapper


json_option = click.option("--json", "as_json", is_flag=True, help="Print one JSON document instead of text.")


class LazyGroup(click.Group):
    """Imports a subcommand's module only when that subcommand runs (or its own help is asked for).

    The modules register their commands with `@cli.command()` as before; `manifest.COMMANDS` says which
    module defines which name, and carries the short help that `gpupass --help` lists without importing any.
    """

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(set(manifest.COMMANDS) | set(self.commands))

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        if name not in self.commands and name in manifest.COMMANDS:
            importlib.import_module(manifest.COMMANDS[name][0])
        return self.commands.get(name)

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        names = self.list_commands(ctx)
        if not names:
            return
        limit = formatter.width - 6 - max(len(name) for name in names)
        rows = []
        for name in names:
            if name in self.commands:  # registered already (a plugin's, or imported): ask the command itself
                if self.commands[name].hidden:
                    continue
                rows.append((name, self.commands[name].get_short_help_str(limit)))
            else:
                # Shortened exactly as click shortens a command's own help (the text is one paragraph).
                stand_in = click.Command(name, help=manifest.COMMANDS[name][1])
                rows.append((name, stand_in.get_short_help_str(limit)))
        with formatter.section("Commands"):
            formatter.write_dl(rows)


@click.group(cls=LazyGroup, epilog=EXIT_CODES, context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(package_name="gpupass")
@click.option("--config", "config_path", metavar="FILE", envvar="GPUPASS_CONFIG",
              help="Config file with named hosts (default: ~/.config/gpupass/config.toml).")
@click.option("--insecure", is_flag=True, help="Do not verify TLS certificates (ESXi, Hyper-V). Never the default.")
@click.option("--ca-file", metavar="FILE", help="Trust this CA bundle for the host's TLS certificate.")
@click.pass_context
def cli(ctx: click.Context, config_path: str | None, insecure: bool, ca_file: str | None) -> None:
    """Give a physical GPU to a virtual machine on KVM, VMware ESXi and Hyper-V.

    HOST is a URI (qemu:///system, qemu+ssh://admin@node/system, test:///path/host.xml,
    esxi://user@vcenter/DC, hyperv://user@host), a name from the config file, or a lab host
    such as lab-kvm. Passwords come from the environment (GPUPASS_PASSWORD_<HOST>), the
    config file or the keyring, never from the command line.
    """
    ctx.obj = AppContext(config_path, insecure, ca_file)




def main() -> None:
    cli(prog_name="gpupass")

