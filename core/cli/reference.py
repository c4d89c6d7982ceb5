"""Generate docs/cli.md from the CLI itself: `python -m gpupass.core.cli.reference > docs/cli.md`."""

from __future__ import annotations

from typing import Iterator

import click

from gpupass.core.cli.main import cli

WIDTH = 100


def _walk(command: click.Command, path: list[str], parent: click.Context | None
          ) -> Iterator[tuple[list[str], click.Command, click.Context]]:
    settings = {**command.context_settings, "terminal_width": WIDTH, "max_content_width": WIDTH}
    ctx = click.Context(command, info_name=path[-1], parent=parent, **settings)
    yield path, command, ctx
    if isinstance(command, click.Group):
        for name in sorted(command.list_commands(ctx)):
            sub = command.get_command(ctx, name)
            if sub is not None:
                yield from _walk(sub, [*path, name], ctx)


def render() -> str:
    parts = [
        "# gpupass command reference",
        "",
        "Generated from the CLI itself by `python -m gpupass.core.cli.reference > docs/cli.md`;",
        "`tests/unit/test_cli_reference.py` fails when this file is stale.",
        "",
    ]
    for path, command, ctx in _walk(cli, ["gpupass"], None):
        parts += [f"{'#' * min(len(path) + 1, 4)} `{' '.join(path)}`", "", "```", command.get_help(ctx).rstrip(), "```", ""]
    return "\n".join(parts)


if __name__ == "__main__":
    print(render(), end="")
