"""`gpupass hosts` (the config file's hosts) and `gpupass fleet` (many hosts at once)."""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

import click

from gpupass.core import paths, serialize
from gpupass.core.cli import render
from gpupass.core.domain.select import qualified
from gpupass.core.cli.escape import shown
from gpupass.core.cli.options import F, describe
from gpupass.core.cli.complete import complete_host
from gpupass.core.cli.main import AppContext, cli, emit_json, handles_errors, json_option
from gpupass.core.errors import UsageError
from gpupass.core.fleet import MAX_DEFAULT_CONCURRENCY

if TYPE_CHECKING:
    from gpupass.core.domain.inventory import HostFacts
    from gpupass.core.fleet import HostResult

PARTIAL_EXIT = 4
# Like check: what was asked for cannot be had now (as `check` would block); nothing was changed.
NO_MATCH_EXIT = 3


@cli.group()
def hosts() -> None:
    """Named hosts in the config file (and the lab hosts): add, list, remove, test."""


def _config_path(app: AppContext) -> Path:
    return Path(app.config_path) if app.config_path else paths.config_file()


@hosts.command("add")
@click.argument("name")
@click.argument("uri")
@click.option("--password-env", metavar="VAR", help="Environment variable that holds the password.")
@click.option("--keyring", "use_keyring", is_flag=True, help="Take the password from the system keyring.")
@click.option("--ca-file", metavar="FILE", help="CA bundle that signed the host's certificate.")
@click.option("--insecure", is_flag=True, help="Do not verify this host's TLS certificate (explicit, per host).")
@json_option
@click.pass_obj
@handles_errors
@describe(examples=('gpupass hosts add node7 qemu+ssh://admin@node7/system', 'gpupass hosts add vcenter esxi://administrator%40vsphere.local@vc.example.com/DC1 --password-env VC_PASSWORD', 'gpupass hosts add hv01 hyperv://Administrator@hv01.example.com --keyring',))
def hosts_add(app: AppContext, name: str, uri: str, password_env: str | None, use_keyring: bool, ca_file: str | None,
              insecure: bool, as_json: bool) -> None:
    """Add (or replace) host NAME at URI. Passwords are never taken from the command line."""
    from gpupass.core.config import HostEntry, save_config, with_host

    if "://" not in uri:
        raise UsageError(f"{uri!r} is not a URI", remedy="e.g. qemu+ssh://admin@node/system or esxi://root@esx01")
    from gpupass.core.uri import check_uri

    check_uri(uri)  # before anything is written: no password in it, a usable port
    app.registry.backend_for(urlsplit(uri).scheme).check_uri(uri)
    if app.registry.lab_host(name):
        raise UsageError(f"{name!r} is a lab host name", remedy="choose another name")
    if password_env and use_keyring:
        raise UsageError("--password-env and --keyring both given", remedy="choose one source for the password")
    entry = HostEntry(name=name, uri=uri, password_env=password_env, keyring=use_keyring, ca_file=ca_file,
                      insecure=insecure)
    save_config(_config_path(app), with_host(app.config, entry))
    if as_json:
        emit_json({"added": name, "uri": uri})
    else:
        click.echo(f"added {shown(name)} ({shown(uri)}) to {shown(_config_path(app))}")


@hosts.command("remove")
@click.argument("name", shell_complete=complete_host)
@json_option
@click.pass_obj
@handles_errors
@describe(examples=('gpupass hosts remove node7',))
def hosts_remove(app: AppContext, name: str, as_json: bool) -> None:
    """Remove host NAME from the config file."""
    from gpupass.core.config import save_config, without_host

    save_config(_config_path(app), without_host(app.config, name))
    if as_json:
        emit_json({"removed": name})
    else:
        click.echo(f"removed {shown(name)}")


def _host_rows(app: AppContext) -> list[dict[str, str]]:
    rows: list[dict[str, str]] = [{"name": e.name, "uri": e.uri, "source": "config",
             "credential": e.password_env and f"${e.password_env}" or ("keyring" if e.keyring else
                                                                       "config file" if e.password else "none")}
            for e in app.config.hosts.values()]
    data = paths.lab_data_dir()
    for lab in app.registry.lab_hosts:
        if lab.is_up(data):
            rows.append({"name": lab.name, "uri": lab.target(data).uri, "source": "lab", "credential": "lab"})
    return rows


@hosts.command("list")
@json_option
@click.pass_obj
@handles_errors
@describe(examples=('gpupass hosts list', 'gpupass hosts list --json',))
def hosts_list(app: AppContext, as_json: bool) -> None:
    """List the config file's hosts and the lab hosts that are up."""
    rows = _host_rows(app)
    if as_json:
        emit_json({"hosts": rows})
    else:
        click.echo(render.table(["NAME", "URI", "SOURCE", "PASSWORD FROM"],
                                [[r["name"], r["uri"], r["source"], r["credential"]] for r in rows]))


@hosts.command("test")
@click.argument("name", shell_complete=complete_host)
@json_option
@click.pass_obj
@handles_errors
@describe(examples=('gpupass hosts test node7', 'gpupass hosts test lab-kvm --json',))
def hosts_test(app: AppContext, name: str, as_json: bool) -> None:
    """Connect to NAME, read its inventory, and report what was found and how long it took."""
    began = time.monotonic()
    with app.open(name) as backend:
        facts = backend.inventory()
        trips = backend.round_trips
    seconds = time.monotonic() - began
    document = {"host": name, "ok": True, "platform": facts.host.platform, "gpus": len(facts.gpus),
                "vms": len(facts.vms), "round_trips": trips, "seconds": round(seconds, 3)}
    if as_json:
        emit_json(document)
    else:
        click.echo(f"{shown(name)}: ok ({shown(facts.host.platform)}, {len(facts.gpus)} GPUs, {len(facts.vms)} VMs, "
                   f"{trips} round trips, {seconds:.2f} s)")


@cli.group()
def fleet() -> None:
    """Many hosts at once: where every GPU is, and which hosts can take a VM."""


def _fleet_hosts(app: AppContext, hosts_option: str | None, all_hosts: bool) -> list[str]:
    if hosts_option and all_hosts:
        raise UsageError("--hosts and --all both given", remedy="use one of them")
    if hosts_option:
        # A host named twice is read once (fleet results are one row per name).
        return list(dict.fromkeys(h.strip() for h in hosts_option.split(",") if h.strip()))
    if all_hosts:
        names = [row["name"] for row in _host_rows(app)]
        if not names:
            raise UsageError("no hosts configured", remedy="add some with `gpupass hosts add`, or `gpupass lab up`")
        return names
    raise UsageError("which hosts?", remedy="pass --hosts a,b or --all")


def _gather(app: AppContext, names: list[str], concurrency: int | None, timeout: float, as_json: bool
            ) -> list[HostResult]:
    from contextlib import nullcontext

    from gpupass.core.fleet import gather, longer_turns
    from gpupass.core.progress import waiting

    def read(name: str) -> tuple[HostFacts, int]:
        with app.open(name) as backend:
            return backend.inventory(), backend.round_trips

    with longer_turns(), nullcontext() if as_json else waiting(f"reading {len(names)} host(s)"):
        return gather(names, read, concurrency=concurrency, timeout=timeout)


fleet_options = [
    click.option("--hosts", "hosts_option", metavar="A,B", help="Comma-separated hosts (names or URIs)."),
    click.option("--all", "all_hosts", is_flag=True, help="Every host in the config file and every lab host up."),
    click.option("--concurrency", type=click.IntRange(min=1), default=None, metavar="N",
                 help=f"Hosts asked at the same time (default: every host, at most {MAX_DEFAULT_CONCURRENCY}, fewer "
                      "where the open-file limit is low)."),
    click.option("--timeout", default=60.0, show_default=True, callback=lambda _ctx, _param, value: _timeout(value),
                 help="Seconds each host may take."),
]


def _timeout(value: float) -> float:
    """A host's wait is bounded: more than 0, at most a day (what a host's `timeout` in the config file may be).
    click's FloatRange lets nan through (every comparison with it is false), so the test is written the other way."""
    from gpupass.core.target import MAX_TIMEOUT_S

    if not 0 < value <= MAX_TIMEOUT_S:
        raise click.BadParameter(f"{value} is not a number of seconds more than 0 and at most {MAX_TIMEOUT_S:.0f}")
    return value


def with_fleet_options(command: F) -> F:
    for option in reversed(fleet_options):
        command = option(command)
    return command


def _error_row(result: HostResult) -> dict[str, Any]:
    assert result.error is not None
    return {"host": result.host, "ok": False, "error": result.error.to_dict()}


@fleet.command("gpus")
@with_fleet_options
@json_option
@click.pass_obj
@handles_errors
@describe(examples=('gpupass fleet gpus --all', 'gpupass fleet gpus --hosts node7,vcenter --json',))
def fleet_gpus(app: AppContext, hosts_option: str | None, all_hosts: bool, concurrency: int | None, timeout: float,
               as_json: bool) -> None:
    """Every GPU on every host, with its owner; a host that fails is one row with its error (exit 4)."""
    from gpupass.core.fleet import assignable

    results = _gather(app, _fleet_hosts(app, hosts_option, all_hosts), concurrency, timeout, as_json)
    failed = [r for r in results if r.error]
    if as_json:
        emit_json({"hosts": [
            {"host": r.host, "ok": True, "platform": r.facts.host.platform, "seconds": round(r.seconds, 3),
             "gpus": [serialize.gpu_to_dict(g) for g in r.facts.gpus]} if r.facts else _error_row(r)
            for r in results]})
    else:
        rows = []
        free = total = 0
        for r in results:
            if r.error:
                rows.append([r.host, "-", "ERROR", r.error.message, "", ""])
                continue
            facts = r.facts
            assert facts is not None  # a host read without an error has its facts
            for g in facts.gpus:
                # once per GPU (it runs check's rules): the row and the count below agree by construction
                now = assignable(facts, g, app.registry)
                free += now
                owner = g.assigned_to or ("free" if now else "not assignable now")
                rows.append([r.host, facts.host.platform, qualified(g),
                             g.model, g.function.ids, owner])
            total += len(facts.gpus)
        click.echo(render.table(["HOST", "PLATFORM", "ADDRESS", "MODEL", "IDS", "OWNER"], rows))
        click.echo(f"\n{total} GPUs on {len(results) - len(failed)} hosts, {free} free to assign"
                   + (f"; {len(failed)} host(s) could not be read" if failed else ""))
    if failed:
        sys.exit(PARTIAL_EXIT)


@fleet.command("find")
@click.option("--model", help="Model name (A100, 'H100 PCIe') or vendor:device (10de:20b5).")
@click.option("--profile", help="A share type instead of whole GPUs: a vGPU profile (A100-4C, 'GRID P40-1Q'), an mdev "
                                "type (nvidia-46) or a partition size (partitions-32); lists free capacity per GPU.")
@click.option("--count", default=1, show_default=True, help="GPUs the VM needs on one host.")
@with_fleet_options
@json_option
@click.pass_obj
@handles_errors
@describe(examples=('gpupass fleet find --model A100 --all', "gpupass fleet find --model 'A100 80GB' --count 2 --all", 'gpupass fleet find --model 10de:2331 --hosts node7,node8 --json',
                    'gpupass fleet find --profile P40-1Q --all', 'gpupass fleet find --profile partitions-32 --json'))
def fleet_find(app: AppContext, model: str | None, profile: str | None, count: int, hosts_option: str | None,
               all_hosts: bool, concurrency: int | None, timeout: float, as_json: bool) -> None:
    """Hosts that can take a VM with COUNT such GPUs now, or (--profile) free share capacity per GPU.

    "Now" means what `gpupass check` means: free, passthrough-capable and active (no host reboot needed),
    alone in its IOMMU group, nothing else blocking. --model matches words of the model name ('A100 80GB'
    matches "NVIDIA A100 PCIe 80GB") or a vendor:device id. --profile lists every GPU offering that share type
    with how many more it can give now (unknown where the platform does not say). Exit 3 when no host can,
    4 when some hosts could not be read.
    """
    from gpupass.core.fleet import find

    if (model is None) == (profile is None):
        raise UsageError("give --model or --profile" if model is None else "--model and --profile both given",
                         remedy="--model for whole GPUs, --profile for a share type")
    if count < 1:
        raise UsageError("--count must be at least 1", remedy="e.g. --count 2")
    names = _fleet_hosts(app, hosts_option or None, all_hosts or not hosts_option)
    results = _gather(app, names, concurrency, timeout, as_json)
    if profile is not None:
        _profile_capacity(results, profile, as_json)
        return
    assert model is not None
    candidates = find(results, model, count, app.registry)
    failed = [r for r in results if r.error]
    if as_json:
        emit_json({"model": model, "count": count, "candidates": [
            {"host": c.host, "location": c.location or None, "free": [str(g.address) for g in c.gpus],
             "models": sorted({g.model for g in c.gpus})} for c in candidates],
            "unreachable": [_error_row(r) for r in failed]})
    else:
        if candidates:
            click.echo(render.table(["HOST", "WHERE", "FREE MATCHING GPUS"], [
                [c.host, c.location or "-", ", ".join(f"{qualified(g)} ({g.model})" for g in c.gpus)] for c in candidates]))
        else:
            click.echo(f"no host can take {count} x {shown(model)} now")
    _exit_for_search(failed, bool(candidates), as_json)


def _profile_capacity(results: list[HostResult], profile: str, as_json: bool) -> None:
    from gpupass.core.fleet import share_capacity

    rows = share_capacity(results, profile)
    failed = [r for r in results if r.error]
    room = [r for r in rows if r.free != 0]
    if as_json:
        emit_json({"profile": profile, "capacity": [
            {"host": r.host, "location": r.location or None, "gpu": str(r.gpu.address), "model": r.gpu.model,
             "type": r.type.id, "type_name": r.type.name, "mode": r.type.mode.value, "free": r.free,
             "framebuffer_bytes": r.type.framebuffer_bytes} for r in rows],
            "total_free": sum(r.free or 0 for r in rows), "unknown": sum(1 for r in rows if r.free is None),
            "unreachable": [_error_row(r) for r in failed]})
    else:
        if rows:
            click.echo(render.table(["HOST", "GPU", "MODEL", "TYPE", "FREE"], [
                [r.host, qualified(r.gpu), r.gpu.model, f"{r.type.name} ({r.type.id})" if r.type.name else r.type.id,
                 "unknown" if r.free is None else str(r.free)] for r in rows]))
            click.echo(f"\n{sum(r.free or 0 for r in rows)} free {shown(profile)} share(s) on {len(room)} GPU(s)")
        else:
            click.echo(f"no GPU offers share type {shown(profile)}")
    _exit_for_search(failed, bool(room), as_json)


def _exit_for_search(failed: list[HostResult], found: bool, as_json: bool) -> None:
    """Name the hosts that could not be read (on stderr; --json carries them), then exit 4 when some could not be
    read, 3 when nothing matched: a search that missed a host cannot say that no host can."""
    if not as_json:
        for r in failed:
            assert r.error is not None
            click.echo(f"could not read {shown(r.host)}: {shown(r.error.message, True)}", err=True)
    if failed:
        sys.exit(PARTIAL_EXIT)
    if not found:
        sys.exit(NO_MATCH_EXIT)
