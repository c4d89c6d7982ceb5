"""`gpupass migrate plan|apply`: a GPU VM's needs on another platform, and applying them there."""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING

import click

from gpupass.core import serialize
from gpupass.core.cli import render
from gpupass.core.cli.options import describe
from gpupass.core.cli.complete import complete_host, complete_vm
from gpupass.core.cli.main import AppContext, cli, emit_json, handles_errors, json_option
from gpupass.core.errors import PreflightFailed

if TYPE_CHECKING:
    from gpupass.core.migration import MigrationPlan
    from gpupass.core.ports import Backend


@cli.group()
def migrate() -> None:
    """Plan (and apply) a GPU VM's move between hosts or platforms; gpupass does not move the VM itself."""


def _plan(app: AppContext, src: str, vm: str, dst: str, dst_vm: str | None
          ) -> tuple[MigrationPlan, Backend, Backend]:
    from gpupass.core.migration import plan_migration

    source = app.open(src)
    destination = app.open(dst)
    try:
        return plan_migration(source, vm, destination, app.registry, dst_vm), source, destination
    except BaseException:
        source.close()
        destination.close()
        raise


@migrate.command("plan")
@click.argument("src_host", shell_complete=complete_host)
@click.argument("vm", shell_complete=complete_vm)
@click.argument("dst_host", shell_complete=complete_host)
@click.option("--dst-vm", metavar="NAME", help="The VM's name at the destination, if it differs.")
@click.option("--show-changes", is_flag=True, help="Show what each destination step sends.")
@json_option
@click.pass_obj
@handles_errors
@describe(examples=('gpupass migrate plan lab-esxi cad-ws lab-kvm', 'gpupass migrate plan vcenter ml-train node7 --dst-vm ml-train-kvm --json',))
def migrate_plan(app: AppContext, src_host: str, vm: str, dst_host: str, dst_vm: str | None, show_changes: bool,
                 as_json: bool) -> None:
    """What VM's GPUs need at DST_HOST: equivalent GPUs, settings that carry over or not, the destination plan."""
    result, source, destination = _plan(app, src_host, vm, dst_host, dst_vm)
    source.close()
    destination.close()
    if as_json:
        emit_json(serialize.migration_to_dict(result))
    else:
        click.echo(render.migration(result, show_changes))
    if result.blocked:
        sys.exit(PreflightFailed.exit_code)


@migrate.command("apply")
@click.argument("src_host", shell_complete=complete_host)
@click.argument("vm", shell_complete=complete_vm)
@click.argument("dst_host", shell_complete=complete_host)
@click.option("--dst-vm", metavar="NAME", help="The VM's name at the destination, if it differs.")
@click.option("--release-source", is_flag=True, help="After assigning at the destination, release the source GPUs.")
@click.option("--yes", "-y", is_flag=True, help="Apply without asking (required without a terminal).")
@json_option
@click.pass_obj
@handles_errors
@describe(examples=('gpupass migrate apply lab-esxi cad-ws lab-kvm --yes', 'gpupass migrate apply vcenter ml-train node7 --release-source --yes',))
def migrate_apply(app: AppContext, src_host: str, vm: str, dst_host: str, dst_vm: str | None, release_source: bool,
                  yes: bool, as_json: bool) -> None:
    """Assign the equivalent GPUs to the VM already converted at DST_HOST; optionally release the source's."""
    from gpupass.core.cli.commands import _confirm_and_run
    from gpupass.core.domain.request import ReleaseRequest
    from gpupass.core.errors import UsageError
    from gpupass.core.service import make_plan

    result, source, destination = _plan(app, src_host, vm, dst_host, dst_vm)
    with source, destination:
        if not result.vm_exists_at_destination:
            raise UsageError(f"VM '{dst_vm or vm}' does not exist at {dst_host} yet",
                             remedy="convert it with your migration tool first; `gpupass migrate plan` shows what it needs")
        if not as_json:
            click.echo(render.migration(result))
        if result.blocked:
            raise PreflightFailed("the destination cannot take this VM's GPUs; nothing was changed",
                                  list(result.findings))
        assert result.destination_plan is not None  # the VM exists there, so it was planned
        document = {"destination": _confirm_and_run(app, destination, result.destination_plan, yes, as_json),
                    "source_release": None}
        if release_source:
            release = make_plan(source, source.inventory(), ReleaseRequest(vm), app.registry)
            document["source_release"] = _confirm_and_run(app, source, release, True, as_json)
    if as_json:
        emit_json({"migration": serialize.migration_to_dict(result), **document})
