"""The gpupass command line. Importing this module must not import any hypervisor SDK."""

from __future__ import annotations

import functools
import json
import sys
from typing import Any, Callable

import click

from gpupass.core.errors import GpupassError, PreflightFailed, UsageError

EXIT_CODES = """\b
Exit codes:
  0  done (or nothing needed doing)
  1  error: the host, the backend or a step failed (a failed change is rolled back)
  2  usage: bad arguments, unknown host, or a change refused without --yes
  3  preflight found blocking problems; nothing was changed
  4  fleet: some hosts could not be read (their rows carry the error); the rest is complete
  5  diff: the hosts differ from the file (apply would change something)
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
                click.echo(click.style("error: ", fg="red", bold=True) + exc.message, err=True)
            sys.exit(exc.exit_code)
        except GpupassError as exc:
            if as_json:
                emit_json(exc.to_dict())
            else:
                click.echo(click.style("error: ", fg="red", bold=True) + exc.message, err=True)
                if exc.remedy:
                    click.echo(f"  fix: {exc.remedy}", err=True)
            sys.exit(exc.exit_code)

    return wrapper


json_option = click.option("--json", "as_json", is_flag=True, help="Print one JSON document instead of text.")


@click.group(epilog=EXIT_CODES, context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
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


from gpupass.core.cli import commands as _commands  # noqa: E402  (registers the commands on `cli`)
from gpupass.core.cli import lab as _lab  # noqa: E402,F401
from gpupass.core.cli import fleet as _fleet  # noqa: E402,F401
from gpupass.core.cli import migrate as _migrate  # noqa: E402,F401
from gpupass.core.cli import declarative as _declarative  # noqa: E402,F401


def main() -> None:
    cli(prog_name="gpupass")

