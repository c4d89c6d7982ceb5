"""`gpupass export|diff|apply`: keep the assignments you want in a YAML file and converge hosts to it."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from gpupass.core.cli.main import cli, emit_json, handles_errors, json_option
from gpupass.core.errors import UsageError

DIFF_EXIT = 5


def _change_dict(change) -> dict:
    return {"host": change.host, "vm": change.vm, "operation": change.operation,
            "gpus": [str(a) for a in change.gpus], "reason": change.reason, "line": change.line}


def _change_line(change) -> str:
    sign = "+" if change.operation == "assign" else "-"
    verb = "assign" if change.operation == "assign" else "release"
    where = f" (line {change.line})" if change.line else ""
    return f"{sign} {change.host}: {verb} {', '.join(str(a) for a in change.gpus)} " \
           f"{'to' if verb == 'assign' else 'from'} {change.vm} — {change.reason}{where}"


def _load(path: str):
    from gpupass.core import declarative

    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise UsageError(f"cannot read {path}: {exc.strerror}", remedy="check the path") from exc
    return declarative.parse(text, path)


def _by_host(desired):
    hosts: dict[str, list] = {}
    for entry in desired:
        hosts.setdefault(entry.host, []).append(entry)
    return hosts


def _changes(app, path):
    from gpupass.core import declarative

    changes = []
    for host, entries in _by_host(_load(path)).items():
        with app.open(host) as backend:
            changes += declarative.changes_for_host(host, backend.inventory(), entries, path)
    return changes


@cli.command()
@click.argument("hosts", nargs=-1, required=True)
@click.option("-o", "--output", type=click.Path(dir_okay=False), help="Write the file here instead of stdout.")
@click.pass_obj
@handles_errors
def export(app, hosts, output) -> None:
    """Write the hosts' current assignments as a YAML file that `diff` and `apply` read."""
    from gpupass.core import declarative

    rows = []
    for host in hosts:
        with app.open(host) as backend:
            rows += declarative.export(host, backend.inventory())
    text = declarative.dump(rows)
    if output:
        Path(output).write_text(text, encoding="utf-8")
        click.echo(f"wrote {output}: {len(rows)} assignment(s)", err=True)
    else:
        click.echo(text, nl=False)


@cli.command()
@click.argument("file", type=click.Path(dir_okay=False))
@json_option
@click.pass_obj
@handles_errors
def diff(app, file, as_json) -> None:
    """Show what `apply FILE` would change. Exit 0 when nothing, 5 when something would change."""
    changes = _changes(app, file)
    if as_json:
        emit_json({"file": file, "in_sync": not changes, "changes": [_change_dict(c) for c in changes]})
    elif changes:
        click.echo("\n".join(_change_line(c) for c in changes))
    else:
        click.echo(f"in sync: the hosts match {file}")
    if changes:
        sys.exit(DIFF_EXIT)


@cli.command()
@click.argument("file", type=click.Path(dir_okay=False))
@click.option("--yes", "-y", is_flag=True, help="Apply without asking (required without a terminal).")
@json_option
@click.pass_obj
@handles_errors
def apply(app, file, yes, as_json) -> None:
    """Converge the hosts to FILE: each change goes through the normal plan, preflight and rollback."""
    from gpupass.core.cli.commands import _confirm_and_run
    from gpupass.core.domain.request import AssignmentRequest, ReleaseRequest
    from gpupass.core.service import make_plan

    changes = _changes(app, file)
    if not changes:
        if as_json:
            emit_json({"file": file, "changed": False, "results": []})
        else:
            click.echo(f"in sync: nothing to do for {file}")
        return
    if not as_json:
        click.echo("\n".join(_change_line(c) for c in changes))
    if not yes:
        if not sys.stdin.isatty():
            raise UsageError("refusing to change hosts without confirmation: there is no terminal to ask on",
                             remedy=f"review `gpupass diff {file}`, then run again with --yes")
        if not click.confirm("\nApply these changes?", default=False):
            raise UsageError("nothing was changed: not confirmed", remedy="run again and answer y, or pass --yes")
    results = []
    for change in changes:
        with app.open(change.host) as backend:
            if change.operation == "release":
                request = ReleaseRequest(change.vm, change.gpus)
            else:
                request = AssignmentRequest(change.vm, change.gpus, change.options)
            if not as_json:
                click.echo("\n" + _change_line(change))
            results.append({**_change_dict(change), **_confirm_and_run(
                app, backend, make_plan(backend, backend.inventory(), request, app.registry), True, as_json)})
    if as_json:
        emit_json({"file": file, "changed": True, "results": results})
