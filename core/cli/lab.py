"""`gpupass lab`: the built-in lab hosts, and a guided demo of the whole workflow on them."""

from __future__ import annotations

import shlex
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

import click

from gpupass.core import paths
from gpupass.core.cli import render
from gpupass.core.cli.options import describe
from gpupass.core.cli.main import AppContext, cli, emit_json, handles_errors, json_option
from gpupass.core.errors import NotFound

if TYPE_CHECKING:
    from gpupass.core.ports import LabHost


@cli.group()
def lab() -> None:
    """The built-in lab hosts (no hypervisor needed): status, up, down, reset, demo."""


def _labs(app: AppContext, name: str | None) -> list[LabHost]:
    labs = app.registry.lab_hosts
    if name is None:
        return labs
    chosen = [lab for lab in labs if lab.name == name]
    if not chosen:
        raise NotFound(f"no lab host named {name!r}", remedy="`gpupass lab status` lists them")
    return chosen


def _lab_row(lab: LabHost, data: Path) -> dict[str, Any]:
    """One lab host as scripts read it: its server's PID and URL as fields, not only in the prose."""
    running = lab.running(data) if hasattr(lab, "running") else None
    info = dict(running.info) if running is not None else {}
    return {"name": lab.name, "platform": lab.platform, "description": lab.description,
            "up": lab.is_up(data), "status": lab.status(data),
            "server": {"pid": running.pid, "url": info.get("url"), "auth": info.get("auth"),
                       "port": info.get("port")} if running is not None else None}


@lab.command("status")
@json_option
@click.pass_obj
@handles_errors
@describe(examples=('gpupass lab status', 'gpupass lab status --json',))
def lab_status(app: AppContext, as_json: bool) -> None:
    """List the lab hosts, whether their servers run, and where their state lives."""
    data = paths.data_dir()
    rows = [_lab_row(lab, data) for lab in _labs(app, None)]
    if as_json:
        emit_json({"lab_hosts": rows})
    else:
        click.echo(render.table(["NAME", "PLATFORM", "STATUS", "WHAT"],
                                [[r["name"], r["platform"], r["status"], r["description"]] for r in rows]))


@lab.command("up")
@click.argument("name", required=False)
@json_option
@click.pass_obj
@handles_errors
@describe(examples=('gpupass lab up', 'gpupass lab up lab-esxi',))
def lab_up(app: AppContext, name: str | None, as_json: bool) -> None:
    """Start the lab hosts' servers in the background (127.0.0.1 only); state is kept while they run."""
    from gpupass.core.progress import waiting

    result = {}
    for item in _labs(app, name):
        # The first lab-esxi start builds the simulator with Go: minutes, so say so on a terminal.
        with waiting(f"starting {item.name}" + (" (the first start builds the vSphere simulator: a few minutes)"
                                                if item.platform == "esxi" else "")):
            result[item.name] = item.up(paths.lab_data_dir())
    if as_json:
        emit_json({"up": result})
    else:
        click.echo("\n".join(f"{lab_name}: {line}" for lab_name, line in result.items()))


@lab.command("down")
@click.argument("name", required=False)
@json_option
@click.pass_obj
@handles_errors
@describe(examples=('gpupass lab down', 'gpupass lab down lab-hyperv',))
def lab_down(app: AppContext, name: str | None, as_json: bool) -> None:
    """Stop the lab hosts' servers (by PID)."""
    result = {item.name: item.down(paths.data_dir()) for item in _labs(app, name)}
    if as_json:
        emit_json({"down": result})
    else:
        click.echo("\n".join(f"{lab_name}: {line}" for lab_name, line in result.items()))


@lab.command("reset")
@click.argument("name", required=False)
@json_option
@click.pass_obj
@handles_errors
@describe(examples=('gpupass lab reset', 'gpupass lab reset lab-kvm',))
def lab_reset(app: AppContext, name: str | None, as_json: bool) -> None:
    """Restore a lab host (all of them when NAME is left out) to its initial state."""
    done = []
    for item in _labs(app, name):
        item.reset(paths.lab_data_dir())
        done.append(item.name)
    if as_json:
        emit_json({"reset": done})
    else:
        click.echo("reset: " + ", ".join(done))


def _reset_quietly(ctx: click.Context) -> None:
    for item in _labs(ctx.obj, None):
        item.reset(paths.lab_data_dir())


def _demo_json(ctx: click.Context) -> None:
    """Every demo step run with --json: one document with each step's command, exit code and output."""
    import contextlib
    import io
    import json

    steps = []
    for title, command in demo_steps(ctx.obj.registry.lab_hosts):
        captured = io.StringIO()
        code = 0
        with contextlib.redirect_stdout(captured):
            try:
                cli.main([*shlex.split(command), "--json"], prog_name="gpupass", obj=ctx.obj, standalone_mode=False)
            except SystemExit as exit_:
                code = exit_.code if isinstance(exit_.code, int) else 1 if exit_.code else 0
        text = captured.getvalue()
        try:
            output = json.loads(text) if text.strip() else None
        except json.JSONDecodeError:
            output = text
        steps.append({"title": title, "command": f"gpupass {command}", "exit_code": code, "output": output})
    emit_json({"demo": steps})


@lab.command("demo")
@json_option
@click.pass_context
@describe(examples=('gpupass lab demo', 'gpupass lab demo --json',))
def lab_demo(ctx: click.Context, as_json: bool) -> None:
    """Walk the lab through gpus, check, plan, assign, status, release, fleet and a migration plan."""
    if as_json:
        _reset_quietly(ctx)
        _demo_json(ctx)
        return
    ctx.invoke(lab_reset, name=None, as_json=False)
    for title, command in demo_steps(ctx.obj.registry.lab_hosts):
        click.echo("\n" + click.style(f"# {title}", fg="blue", bold=True))
        click.echo(click.style(f"$ gpupass {command}", bold=True))
        try:
            cli.main(shlex.split(command), prog_name="gpupass", obj=ctx.obj, standalone_mode=False)
        except SystemExit as exit_:
            code = exit_.code or 0
            click.echo(click.style(f"(exit code {code})", dim=True))
    click.echo("\nThe labs keep their state: `gpupass lab up` starts them again, `gpupass lab status` lists them,"
               "\nand every command takes a lab host's name as HOST.")


def demo_steps(labs: Sequence[LabHost]) -> list[tuple[str, str]]:
    """The demo, from whatever labs are installed: each lab brings its own steps (LabHost.demo_steps)."""
    names = [lab.name for lab in labs]
    steps: list[tuple[str, str]] = []
    # Labs that need no server first: the demo shows something at once, before any server starts.
    for lab in labs:
        if not lab.has_server:
            steps.extend(lab.demo_steps(names))
    served = [lab for lab in labs if lab.has_server]
    if served:
        steps.append(("Start the lab servers (127.0.0.1 only, stopped by PID)", "lab up"))
    if len(labs) > 1:
        platforms = len({lab.platform for lab in labs})
        steps.append((f"Every GPU on every lab host, across {platforms} platforms", "fleet gpus --all"))
    for lab in served:
        steps.extend(lab.demo_steps(names))
    if served:
        steps.append(("Stop the lab servers", "lab down"))
    return steps
