"""`gpupass completion SHELL`: the shell script that asks gpupass for completions (click's protocol).

What completes dynamically, and from where, is in gpupass.core.cli.complete.
"""

from __future__ import annotations

import click

from gpupass.core.cli.main import cli
from gpupass.core.cli.options import describe

SHELLS = ("bash", "zsh", "fish")
COMPLETE_VAR = "_GPUPASS_COMPLETE"


@cli.command()
@click.argument("shell", type=click.Choice(SHELLS))
@describe(
    "Add it to the shell's start-up once; after that <TAB> completes subcommands, options, host names (the "
    "config file and the lab), and the VM and GPU names of hosts gpupass has read before (gpus, vms or "
    "status keep them) or of lab-kvm.",
    examples=(
        'echo \'eval "$(gpupass completion bash)"\' >> ~/.bashrc',
        'echo \'eval "$(gpupass completion zsh)"\' >> ~/.zshrc',
        "gpupass completion fish > ~/.config/fish/completions/gpupass.fish",
    ))
def completion(shell: str) -> None:
    """Print the shell completion script for bash, zsh or fish."""
    from click.shell_completion import get_completion_class

    completer = get_completion_class(shell)
    if completer is None:  # click.Choice allows only the shells click knows; this keeps mypy and a new click honest
        raise click.BadParameter(f"no completion for {shell!r}", param_hint="SHELL")
    click.echo(completer(cli, {}, "gpupass", COMPLETE_VAR).source())


