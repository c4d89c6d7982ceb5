"""The host commands: plugins, gpus, vms, status, check, plan, assign, release."""

from __future__ import annotations

import contextlib
import os
import sys
from typing import TYPE_CHECKING, Any

import click

from gpupass.core import serialize
from gpupass.core.cli import listing, render
from gpupass.core.cli.escape import shown
from gpupass.core.cli.complete import complete_gpu, complete_host, complete_vm
from gpupass.core.cli.main import AppContext, cli, emit_json, handles_errors, json_option
from gpupass.core.cli.options import (DEFAULT_HOST_HELP, GPU_HELP, HOST_HELP, assignment_options, build_assignment,
                                      describe, parse_addresses)
from gpupass.core.errors import PreflightFailed, UsageError

if TYPE_CHECKING:
    from gpupass.core.domain.inventory import HostFacts
    from gpupass.core.domain.plan import Plan, Step
    from gpupass.core.domain.request import AssignmentRequest, ReleaseRequest
    from gpupass.core.ports import Backend


@cli.command()
@json_option
@click.pass_obj
@handles_errors
@describe(examples=('gpupass plugins', 'gpupass plugins --json',))
def plugins(app: AppContext, as_json: bool) -> None:
    """List the loaded plugins, the backends and URI schemes they provide, and whether their SDK is installed."""
    registry = app.registry
    versions = registry.versions
    rows: list[dict[str, Any]] = []
    for backend in registry.backends:
        plugin = registry.backend_plugins[backend]
        rows.append({
            "plugin": plugin,
            "version": versions.get(plugin),
            "platform": backend.platform,
            "schemes": list(backend.schemes),
            "sdk_modules": list(backend.sdk_modules),
            "sdk_installed": backend.sdk_available(),
            "install": None if backend.sdk_available() else backend.install_hint(),
            "description": backend.description,
        })
    labs = [{"name": lab.name, "platform": lab.platform, "description": lab.description} for lab in registry.lab_hosts]
    rules = [{"rule": r.rule.__name__, "plugin": r.plugin, "operations": list(r.operations),
              "platforms": list(r.platforms) if r.platforms else None} for r in registry.rules]
    if as_json:
        emit_json({"backends": rows, "lab_hosts": labs, "rules": rules, "problems": registry.problems})
        return
    click.echo(render.table(
        ["PLUGIN", "VERSION", "PLATFORM", "SCHEMES", "SDK"],
        [[r["plugin"], r["version"] or "-", r["platform"], ", ".join(r["schemes"]),
          "installed" if r["sdk_installed"] else f"missing: {r['install']}"] for r in rows],
    ))
    if labs:
        click.echo("\nlab hosts: " + ", ".join(f"{lab['name']} ({lab['platform']})" for lab in labs))
    click.echo(f"preflight rules: {len(rules)}")
    for problem in registry.problems:
        click.echo(click.style("problem: ", fg="yellow", bold=True) + shown(problem, True), err=True)


def _facts(app: AppContext, host: str | None) -> HostFacts:
    return listing.read(app, host)


def _listing(command: str, app: AppContext, host: str | None, as_json: bool) -> None:
    facts = _facts(app, host)
    if as_json:
        emit_json(listing.as_document(command, facts))
    else:
        click.echo(listing.as_text(command, app, host, facts))


@cli.command()
@click.argument("host", required=False, shell_complete=complete_host)
@json_option
@click.pass_obj
@handles_errors
@describe(HOST_HELP, DEFAULT_HOST_HELP, examples=('gpupass gpus lab-kvm', 'gpupass gpus qemu+ssh://admin@node7/system --json', 'LIBVIRT_DEFAULT_URI=qemu:///system gpupass gpus'))
def gpus(app: AppContext, host: str | None, as_json: bool) -> None:
    """List the host's GPUs: companions, IOMMU group, MMIO need, passthrough state and owner VM."""
    _listing("gpus", app, host, as_json)


@cli.command()
@click.argument("host", required=False, shell_complete=complete_host)
@json_option
@click.pass_obj
@handles_errors
@describe(HOST_HELP, DEFAULT_HOST_HELP, examples=('gpupass vms lab-esxi', 'GOVC_URL=vc.example.com GOVC_USERNAME=admin@vsphere.local GOVC_PASSWORD=... gpupass vms'))
def vms(app: AppContext, host: str | None, as_json: bool) -> None:
    """List the host's VMs with power state, firmware, memory and PCI devices."""
    _listing("vms", app, host, as_json)


@cli.command()
@click.argument("host", required=False, shell_complete=complete_host)
@json_option
@click.pass_obj
@handles_errors
@describe(HOST_HELP, DEFAULT_HOST_HELP, examples=('gpupass status lab-kvm', 'gpupass status esxi://administrator%40vsphere.local@vc.example.com/DC1 --json'))
def status(app: AppContext, host: str | None, as_json: bool) -> None:
    """Summarise the host: IOMMU, free and assigned GPUs, and which VM holds which."""
    _listing("status", app, host, as_json)


def _plan(app: AppContext, host: str, backend: Backend, request: AssignmentRequest | ReleaseRequest) -> Plan:
    from gpupass.core.service import make_plan

    return make_plan(backend, backend.inventory(), request, app.registry_for(host))


@cli.command()
@click.argument("host", shell_complete=complete_host)
@click.argument("vm", shell_complete=complete_vm)
@click.argument("gpu", nargs=-1, required=True, shell_complete=complete_gpu)
@assignment_options
@json_option
@click.pass_obj
@handles_errors
@describe(HOST_HELP, GPU_HELP, examples=(
    "gpupass check lab-kvm ml-train 0000:42:00.0",
    "gpupass check lab-kvm ml-train H100 --json",
    "gpupass check lab-esxi ml-train esx02.lab.local/0000:3b:00.0",
))
def check(app: AppContext, /, host: str, vm: str, gpu: tuple[str, ...], as_json: bool, **options: Any) -> None:
    """Run the preflight checks for giving GPU(s) to VM. Exit 3 when something blocks."""
    request = build_assignment(vm, gpu, **options)
    with app.open(host) as backend:
        plan = _plan(app, host, backend, request)
    if as_json:
        emit_json({"vm": plan.vm, "host": plan.host, "blocked": plan.blocked,
                   "findings": [serialize.finding_to_dict(f) for f in plan.findings]})
    else:
        click.echo(f"Preflight for VM '{shown(plan.vm)}' on {shown(plan.host)}:")
        click.echo(render.findings(plan.findings))
        blockers = sum(f.blocks for f in plan.findings)
        click.echo(click.style(f"BLOCKED: {blockers} blocking problem(s)", fg="red", bold=True) if blockers
                   else click.style("OK: nothing blocks this assignment", fg="green"))
    if plan.blocked:
        sys.exit(PreflightFailed.exit_code)


@cli.command()
@click.argument("host", shell_complete=complete_host)
@click.argument("vm", shell_complete=complete_vm)
@click.argument("gpu", nargs=-1, required=True, shell_complete=complete_gpu)
@assignment_options
@click.option("--show-changes", "--show-scripts", "show_changes", is_flag=True,
              help="Show what each step sends: the domain XML diff, the ConfigSpec, the PowerShell scripts.")
@json_option
@click.pass_obj
@handles_errors
@describe(HOST_HELP, GPU_HELP, examples=(
    "gpupass plan lab-kvm ml-train 42:00.0 --show-changes",
    "gpupass plan lab-hyperv ml-train 'PCIROOT(40)#PCI(0100)#PCI(0000)#PCI(1000)#PCI(0000)' --show-scripts",
    "gpupass plan lab-esxi ml-train 10de:20b5 --allow-host-reboot",
))
def plan(app: AppContext, /, host: str, vm: str, gpu: tuple[str, ...], show_changes: bool, as_json: bool, **options: Any) -> None:
    """Show the ordered steps of an assignment, what needs the VM off or a host reboot, and what the VM loses."""
    request = build_assignment(vm, gpu, **options)
    with app.open(host) as backend:
        result = _plan(app, host, backend, request)
    if as_json:
        emit_json(serialize.plan_to_dict(result))
    else:
        click.echo(render.plan(result, show_changes))
    if result.blocked:
        sys.exit(PreflightFailed.exit_code)


def _confirm_and_run(app: AppContext, backend: Backend, plan: Plan, yes: bool, as_json: bool,
                     show_changes: bool = False) -> dict[str, Any]:
    """Show the plan, ask (or require --yes), execute; return the JSON document describing what happened."""
    from gpupass.core.errors import NotSupported

    if backend.read_only:
        raise NotSupported(f"{backend.target.label} is a snapshot: plan from it, change the live host",
                           remedy="run the command against the live host")
    if not as_json:
        click.echo(render.plan(plan, show_changes))
    if plan.blocked:
        if as_json:
            emit_json({"applied": False, "plan": serialize.plan_to_dict(plan)})
        raise PreflightFailed("preflight found blocking problems; nothing was changed", list(plan.findings))
    if plan.nothing_to_do:
        return {"applied": False, "changed": False, "plan": serialize.plan_to_dict(plan)}
    confirm(yes, "the host", "\nApply this plan?", review="gpupass plan ...")
    return run_plan(backend, plan, as_json)


def confirm(yes: bool, what: str, question: str, review: str) -> None:
    """--yes, or a yes at the terminal; without a terminal, refuse (exit 2): nothing changes unconfirmed."""
    if yes:
        return
    if not sys.stdin.isatty():
        raise UsageError(f"refusing to change {what} without confirmation: there is no terminal to ask on",
                         remedy=f"review `{review}`, then run again with --yes")
    if not click.confirm(question, default=False):
        raise UsageError("nothing was changed: not confirmed", remedy="run again and answer y, or pass --yes")


def run_plan(backend: Backend, plan: Plan, as_json: bool) -> dict[str, Any]:
    """Execute a confirmed plan with progress (and a wait indicator on long steps); the JSON of what happened.
    `assign`, `release` and each change of `apply` go through it."""
    from gpupass.core.service import execute

    def progress(step: Step) -> None:
        if not as_json:
            sys.stdout.flush()
            click.echo(f"  ... {shown(step.description)}", err=True)

    from gpupass.core.progress import waiting

    def interrupted(notice: str) -> None:
        # Called from the SIGINT handler: straight to the file descriptor, not through a stream it may have interrupted.
        os.write(2, f"\n{notice}\n".encode())

    outcome = execute(backend, plan, on_step=progress,
                      around_step=lambda step: waiting(step.description) if not as_json else contextlib.nullcontext(),
                      on_interrupt=interrupted)
    if not as_json:
        verb = "assigned to" if plan.operation in ("assign", "assign-share") else "released from"
        what = ", ".join(str(g.address) for g in plan.gpus)
        if plan.shares:
            what = f"a {', '.join(c.type.id for c in plan.shares)} share of {what}"
        click.echo(click.style(f"\nDone: {what} {verb} '{shown(plan.vm)}'.", fg="green", bold=True))
    return {"applied": True, "changed": True, "plan": serialize.plan_to_dict(plan),
            "vm": serialize.vm_to_dict(outcome.vm_after) if outcome.vm_after else None}


@cli.command()
@click.argument("host", shell_complete=complete_host)
@click.argument("vm", shell_complete=complete_vm)
@click.argument("gpu", nargs=-1, required=True, shell_complete=complete_gpu)
@assignment_options
@click.option("--yes", "-y", is_flag=True, help="Apply without asking (required without a terminal).")
@click.option("--show-changes", "--show-scripts", "show_changes", is_flag=True,
              help="Show what each step sends (domain XML diff, ConfigSpec, PowerShell scripts) before applying.")
@json_option
@click.pass_obj
@handles_errors
@describe(HOST_HELP, GPU_HELP, examples=(
    "gpupass assign lab-kvm ml-train 0000:42:00.0",
    "gpupass assign lab-kvm render01 41:00.0 --allow-firmware-change --yes",
    "gpupass assign lab-hyperv ml-train 10de:20b5 --show-scripts --yes --json",
))
def assign(app: AppContext, /, host: str, vm: str, gpu: tuple[str, ...], yes: bool, show_changes: bool, as_json: bool,
           **options: Any) -> None:
    """Give GPU(s) and their companions to VM. Shows the plan and asks first; rolls back on failure."""
    request = build_assignment(vm, gpu, **options)
    with app.open(host) as backend:
        document = _confirm_and_run(app, backend, _plan(app, host, backend, request), yes, as_json, show_changes)
    if as_json:
        emit_json(document)


@cli.command()
@click.argument("host", shell_complete=complete_host)
@click.argument("vm", shell_complete=complete_vm)
@click.argument("gpu", nargs=-1, shell_complete=complete_gpu)
@click.option("--live", is_flag=True, help="Hot-unplug from a running VM where the platform can.")
@click.option("--disable-host-passthrough", is_flag=True,
              help="Also switch host passthrough off for the device (ESXi; needs a host reboot).")
@click.option("--yes", "-y", is_flag=True, help="Apply without asking (required without a terminal).")
@click.option("--show-changes", "--show-scripts", "show_changes", is_flag=True,
              help="Show what each step sends (domain XML diff, ConfigSpec, PowerShell scripts) before applying.")
@json_option
@click.pass_obj
@handles_errors
@describe(HOST_HELP, GPU_HELP, examples=(
    "gpupass release lab-kvm ml-train --yes",
    "gpupass release lab-esxi cad-ws esx01.lab.local/0000:3b:00.0 --disable-host-passthrough",
))
def release(app: AppContext, host: str, vm: str, gpu: tuple[str, ...], live: bool, disable_host_passthrough: bool, yes: bool,
            show_changes: bool, as_json: bool) -> None:
    """Give GPU(s) back to the host (all the VM's GPUs when none is named) and undo what assign changed."""
    from gpupass.core.domain.request import ReleaseOptions, ReleaseRequest

    request = ReleaseRequest(vm=vm, gpus=parse_addresses(gpu),
                             options=ReleaseOptions(live=live, disable_host_passthrough=disable_host_passthrough))
    with app.open(host) as backend:
        document = _confirm_and_run(app, backend, _plan(app, host, backend, request), yes, as_json, show_changes)
    if as_json:
        emit_json(document)


@cli.command()
@click.argument("host", required=False, shell_complete=complete_host)
@click.option("-o", "--output", "output", required=True, type=click.Path(dir_okay=False),
              help="File to write (JSON); give it to any read-only command or plan as HOST.")
@json_option
@click.pass_obj
@handles_errors
@describe(HOST_HELP, DEFAULT_HOST_HELP, examples=(
    "gpupass snapshot lab-kvm -o node7.json",
    "gpupass plan node7.json ml-train 42:00.0",
))
def snapshot(app: AppContext, host: str | None, output: str, as_json: bool) -> None:
    """Save the host's facts to FILE, so check, plan, gpus and migrate plans work offline from it."""
    from pathlib import Path

    from gpupass.core import snapshot as snapshots

    folder = Path(output).absolute().parent
    if not folder.is_dir():
        raise UsageError(f"cannot write {output}: the folder {folder} does not exist",
                         remedy=f"create it first (mkdir -p {folder}) or choose another -o path")
    with app.open(host) as backend:
        facts = backend.inventory()
        try:
            snapshots.write(Path(output), facts, type(backend).state_to_json(facts.state), backend.target.label)
        except OSError as exc:
            raise UsageError(f"cannot write {output}: {exc.strerror}", remedy="choose a path you can write to") from exc
    if as_json:
        emit_json({"written": output, "gpus": len(facts.gpus), "vms": len(facts.vms)})
    else:
        click.echo(f"wrote {shown(output)}: {len(facts.gpus)} GPUs, {len(facts.vms)} VMs of {shown(backend.target.label)}")
