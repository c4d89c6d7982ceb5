"""`gpupass export|diff|apply`: keep the assignments you want in a YAML file and converge hosts to it."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from gpupass.core.cli.escape import shown
from gpupass.core.cli.options import describe
from gpupass.core.cli.main import AppContext, cli, emit_json, handles_errors, json_option
from gpupass.core.errors import GpupassError, Interrupted, UsageError

if TYPE_CHECKING:
    from gpupass.core.declarative import ApplyIncomplete, Change, Desired
    from gpupass.core.domain.plan import Plan
    from gpupass.core.domain.request import AssignmentRequest, ReleaseRequest

DIFF_EXIT = 5


def _change_dict(change: Change) -> dict[str, Any]:
    return {"host": change.host, "vm": change.vm, "operation": change.operation,
            "gpus": [str(a) for a in change.gpus], "share": change.share, "reason": change.reason, "line": change.line}


def _change_line(change: Change) -> str:
    sign = "+" if change.operation == "assign" else "-"
    verb = "assign" if change.operation == "assign" else "release"
    where = f" (line {change.line})" if change.line else ""
    if change.share is not None:
        return shown(f"{sign} {change.host}: {verb} a {change.share} share of {change.gpus[0]} "
                     f"{'to' if verb == 'assign' else 'from'} {change.vm} — {change.reason}{where}")
    return shown(f"{sign} {change.host}: {verb} {', '.join(str(a) for a in change.gpus)} "
                 f"{'to' if verb == 'assign' else 'from'} {change.vm} — {change.reason}{where}")


def _load(path: str) -> list[Desired]:
    from gpupass.core import declarative

    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise UsageError(f"cannot read {path}: {exc.strerror or exc}", remedy="check the path") from exc
    except UnicodeDecodeError as exc:
        raise UsageError(f"cannot read {path}: it is not UTF-8 text ({exc.reason} at byte {exc.start})",
                         remedy="save the file as UTF-8") from exc
    return declarative.parse(text, path)


def _by_host(app: AppContext, desired: list[Desired], path: str) -> dict[str, list[Desired]]:
    """Entries per host, one host however the file spells it (gpupass.core.hosts.host_identity)."""
    from gpupass.core import declarative
    from gpupass.core.hosts import host_identity

    return declarative.by_host(desired, lambda host: host_identity(host, app.config, app.registry_for(host)), path)


def _request(change: Change) -> AssignmentRequest | ReleaseRequest:
    from gpupass.core.domain.request import AssignmentRequest, AssignOptions, ReleaseRequest

    if change.operation == "release":
        return ReleaseRequest(change.vm, change.gpus)  # a GPU the VM holds a share of: its share is taken back
    if change.share is not None:
        return AssignmentRequest(change.vm, change.gpus, AssignOptions(share=change.share))
    return AssignmentRequest(change.vm, change.gpus, change.options)


def _changes(app: AppContext, path: str) -> list[Change]:
    from gpupass.core import declarative

    changes: list[Change] = []
    for host, entries in _by_host(app, _load(path), path).items():
        with app.open(host) as backend:
            changes += declarative.changes_for_host(host, backend.inventory(), entries, path)
    return changes


def _plan_file(app: AppContext, path: str) -> list[tuple[Change, Plan]]:
    """Read each host once and plan every change of the file before the first write: [(change, plan)].

    Assignments are planned on the host as it will be after the file's releases, so a GPU the file moves
    from one VM to another is not reported as taken, while a GPU held by a VM the file keeps still is.
    """
    from gpupass.core import declarative
    from gpupass.core.errors import NotSupported
    from gpupass.core.service import make_plan

    planned: list[tuple[Change, Plan]] = []
    for host, entries in _by_host(app, _load(path), path).items():
        with app.open(host) as backend:
            if backend.read_only:
                raise NotSupported(f"{host} is a snapshot: `apply` changes live hosts only",
                                   remedy="name the live host in the file; `diff` works with snapshots")
            facts = backend.inventory()
            changes = declarative.changes_for_host(host, facts, entries, path)
            after = declarative.after_releases(facts, changes)
            for change in changes:
                basis = facts if change.operation == "release" else after
                planned.append((change, make_plan(backend, basis, _request(change), app.registry)))
    return planned


class _Stage:
    """How far the change under way got, for a Ctrl-C that comes outside its steps (the core handles one during
    them): before its steps nothing of it is on the host, after them all of it is."""

    def __init__(self) -> None:
        self.name = "reading"  # reading the host and planning -> "writing" (run_plan) -> "written"
        self.result: dict[str, Any] | None = None


def _run_change(app: AppContext, change: Change, as_json: bool, stage: _Stage) -> dict[str, Any]:
    """Re-read the host, re-plan the change on what is there now, and carry it out (rolled back if it fails)
    the way `assign` and `release` do (commands.run_plan: progress, the wait on long steps, the result)."""
    from gpupass.core import serialize
    from gpupass.core.cli import render
    from gpupass.core.cli.commands import run_plan
    from gpupass.core.errors import PreflightFailed
    from gpupass.core.service import make_plan

    with app.open(change.host) as backend:
        plan = make_plan(backend, backend.inventory(), _request(change), app.registry)
        if not as_json:
            click.echo("\n" + _change_line(change))
            click.echo(render.plan(plan))
        if plan.blocked:
            raise PreflightFailed(f"{change.host} changed since the file was planned: this change is now blocked",
                                  [f for f in plan.findings if f.blocks])
        if plan.nothing_to_do:
            return {"applied": False, "changed": False, "plan": serialize.plan_to_dict(plan)}
        stage.name = "writing"
        result = run_plan(backend, plan, as_json)
        # apply's results name the VM in "vm" (the change), so the VM as read back stays "vm_after" here
        stage.result = {"applied": result["applied"], "changed": result["changed"], "plan": result["plan"],
                        "vm_after": result["vm"]}
        stage.name = "written"
        return stage.result


def _interrupted_between(file: str, planned: list[tuple[Change, Plan]], index: int, stage: _Stage) -> Interrupted:
    """A Ctrl-C outside any change's steps (reading a host, planning, reporting): what it left, by where it came."""
    line = _change_line(planned[index][0])
    if stage.name == "writing" and stage.result is None:
        # run_plan had begun but the core's steps had not, or had ended without their result reaching us: the change
        # is wholly there or wholly not (the core undoes a change a Ctrl-C stops half-way), which one is not known.
        return Interrupted(f"interrupted (Ctrl-C) just before or just after the steps of {line}: whether that change "
                           "was made is not known (it is either wholly made or not at all)",
                           remedy=f"`gpupass diff {file}` shows whether it is there and what is left; "
                                  f"`gpupass apply {file}` continues from there", rolled_back=False)
    return Interrupted(f"interrupted (Ctrl-C) before the first step of {line}: nothing of it was changed",
                       remedy=f"`gpupass apply {file}` continues from there", rolled_back=True)


def _incomplete(file: str, planned: list[tuple[Change, Plan]], results: list[dict[str, Any]], index: int,
                cause: GpupassError, begun: bool = True) -> ApplyIncomplete:
    """The error for a failure after some changes were made: which were made, which failed, which were not."""
    from gpupass.core.declarative import ApplyIncomplete

    made = [r for r in results if r["changed"]]
    change = planned[index][0]
    undone = getattr(cause, "rolled_back", True) is True  # None: not said, so not claimed
    lines = [f"apply stopped at change {index + 1} of {len(planned)} ({_change_line(change)}): {cause.message}",
             "that change was not begun" if not begun else
             "that change was undone" if undone else "that change was NOT fully undone (see the message above)",
             f"changed before it ({len(made)}):"]
    lines += [f"  {_change_line(planned[i][0])}" for i, r in enumerate(results) if r["changed"]]
    rest = [c for c, _ in planned[index + 1:]]
    if rest:
        lines.append(f"not done ({len(rest)}):")
        lines += [f"  {_change_line(c)}" for c in rest]
    incomplete = ApplyIncomplete(
        "\n".join(lines),
        remedy=(cause.remedy + "; then " if cause.remedy else "fix the cause, then ")
        + f"`gpupass diff {file}` shows what is left and `gpupass apply {file}` continues from there",
        results=made,
        failed={**_change_dict(change), "error": cause.to_dict()},
        not_done=[_change_dict(c) for c in rest],
    )
    if isinstance(cause, Interrupted):
        incomplete.exit_code = Interrupted.exit_code  # Ctrl-C: 130 as for one change (the report says what was done)
    return incomplete


@cli.command()
@click.argument("hosts", nargs=-1, required=True)
@click.option("-o", "--output", type=click.Path(dir_okay=False), help="Write the file here instead of stdout.")
@json_option
@click.pass_obj
@handles_errors
@describe(examples=('gpupass export lab-kvm lab-esxi -o gpus.yaml', 'gpupass export node7 --json',))
def export(app: AppContext, hosts: tuple[str, ...], output: str | None, as_json: bool) -> None:
    """Write the hosts' current assignments as a YAML file that `diff` and `apply` read."""
    from gpupass.core import declarative

    rows = []
    for host in hosts:
        with app.open(host) as backend:
            rows += declarative.export(host, backend.inventory())
    text = declarative.dump(rows)
    if output:
        from gpupass.core.files import write_private

        write_private(Path(output), text, "export file")  # a path that cannot take it is a clean error
    if as_json:
        emit_json({"hosts": list(hosts), "assignments": rows, "written": output, "yaml": None if output else text})
    elif output:
        click.echo(f"wrote {shown(output)}: {len(rows)} assignment(s)", err=True)
    else:
        click.echo(text, nl=False)


@cli.command()
@click.argument("file", type=click.Path(dir_okay=False))
@json_option
@click.pass_obj
@handles_errors
@describe(examples=('gpupass diff gpus.yaml', 'gpupass diff gpus.yaml --json',))
def diff(app: AppContext, file: str, as_json: bool) -> None:
    """Show what `apply FILE` would change. Exit 0 when nothing, 5 when something would change."""
    changes = _changes(app, file)
    if as_json:
        emit_json({"file": file, "in_sync": not changes, "changes": [_change_dict(c) for c in changes]})
    elif changes:
        click.echo("\n".join(_change_line(c) for c in changes))
    else:
        click.echo(f"in sync: the hosts match {shown(file)}")
    if changes:
        sys.exit(DIFF_EXIT)


@cli.command()
@click.argument("file", type=click.Path(dir_okay=False))
@click.option("--yes", "-y", is_flag=True, help="Apply without asking (required without a terminal).")
@json_option
@click.pass_obj
@handles_errors
@describe(examples=('gpupass apply gpus.yaml', 'gpupass apply gpus.yaml --yes --json',))
def apply(app: AppContext, file: str, yes: bool, as_json: bool) -> None:
    """Converge the hosts to FILE: each change goes through the normal plan, preflight and rollback."""
    from gpupass.core import serialize
    from gpupass.core.cli import render
    from gpupass.core.cli.commands import confirm
    from gpupass.core.errors import GpupassError, PreflightFailed

    planned = _plan_file(app, file)
    if not planned:
        if as_json:
            emit_json({"file": file, "changed": False, "results": []})
        else:
            click.echo(f"in sync: nothing to do for {shown(file)}")
        return
    blocked = [(change, plan) for change, plan in planned if plan.blocked]
    if blocked:
        if as_json:
            emit_json({"file": file, "changed": False, "results": [],
                       "blocked": [{**_change_dict(c), "plan": serialize.plan_to_dict(p)} for c, p in blocked]})
        else:
            for change, plan in blocked:
                click.echo(_change_line(change))
                click.echo(render.plan(plan) + "\n")
        raise PreflightFailed(f"{len(blocked)} of the {len(planned)} change(s) {file} asks for are blocked; "
                              f"nothing was changed", [f for _, p in blocked for f in p.findings if f.blocks])
    if not as_json:
        click.echo("\n".join(_change_line(c) for c, _ in planned))
    confirm(yes, "hosts", "\nApply these changes?", review=f"gpupass diff {file}")
    results: list[dict[str, Any]] = []
    for index, (change, _) in enumerate(planned):
        stage = _Stage()
        try:
            try:
                results.append({**_change_dict(change), **_run_change(app, change, as_json, stage)})
            except KeyboardInterrupt as interrupt:
                if stage.result is not None:  # after its steps: the change is on the host
                    results.append({**_change_dict(change), **stage.result})
                    if index + 1 == len(planned):
                        break  # the whole file was applied before the Ctrl-C: the result says so
                    index, stage = index + 1, _Stage()  # stopped before the next change began
                raise _interrupted_between(file, planned, index, stage) from interrupt
        except GpupassError as exc:
            if not any(r["changed"] for r in results):
                if as_json and isinstance(exc, PreflightFailed):  # its handler prints no JSON of its own
                    emit_json({"file": file, "changed": False, "results": results, **exc.to_dict()})
                raise  # nothing before it changed; the error says for itself what it did
            raise _incomplete(file, planned, results, index, exc, begun=stage.name != "reading") from exc
    if as_json:
        emit_json({"file": file, "changed": any(r["changed"] for r in results), "results": results})
