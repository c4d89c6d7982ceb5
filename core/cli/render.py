"""Human-readable output: tables and plans as an admin reads them. JSON output lives in core.serialize."""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING, Iterable, Sequence

from gpupass.core.cli.escape import shown
from gpupass.core.domain.findings import Finding, Severity
from gpupass.core.domain.inventory import Gpu, HostFacts, PassthroughState, qualified
from gpupass.core.domain.mmio import MmioPolicy, format_bytes, mmio_need
from gpupass.core.domain.pci import PciAddress

if TYPE_CHECKING:
    from gpupass.core.domain.plan import Plan
    from gpupass.core.migration import MigrationPlan
    from gpupass.core.domain.sharing import Share

_SEVERITY_STYLE = {Severity.BLOCKER: ("BLOCKER", "red"), Severity.WARNING: ("warning", "yellow"),
                   Severity.INFO: ("info", "cyan")}


MIN_COLUMN = 12


def output_width() -> int | None:
    """The width tables must fit on a terminal ($COLUMNS, else the terminal's size); None (no limit) when
    stdout is not a terminal, so `grep`, `awk` and scripts always see whole lines."""
    import shutil

    try:
        if sys.stdout.isatty():
            return shutil.get_terminal_size().columns
    except (AttributeError, ValueError):
        pass
    return None


def table(headers: Sequence[str], rows: Iterable[Sequence[str]], width: int | None = None) -> str:
    """Columns two spaces apart. Wider than `width` (default: output_width()), the widest columns after the
    first (which holds the name to copy) wrap onto continuation lines."""
    rows = [[shown(cell) for cell in row] for row in rows]
    widths = [max([len(h)] + [len(r[i]) for r in rows]) for i, h in enumerate(headers)]
    limit = output_width() if width is None else width
    if limit is not None:
        widths = _fit(widths, limit)
    lines = ["  ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True)).rstrip()]
    for row in rows:
        lines += _wrapped(row, widths)
    return "\n".join(lines)


def _fit(widths: list[int], limit: int) -> list[int]:
    widths = list(widths)
    while sum(widths) + 2 * (len(widths) - 1) > limit:
        shrinkable = [i for i in range(1, len(widths)) if widths[i] > MIN_COLUMN]
        if not shrinkable:
            break
        widest = max(shrinkable, key=lambda i: widths[i])
        widths[widest] -= 1
    return widths


def _wrapped(row: Sequence[str], widths: Sequence[int]) -> list[str]:
    import textwrap

    cells = [[cell] if len(cell) <= width or index == 0 else
             textwrap.wrap(cell, width, break_long_words=True, break_on_hyphens=False) or [""]
             for index, (cell, width) in enumerate(zip(row, widths, strict=False))]
    height = max(len(cell) for cell in cells)
    return ["  ".join((cell[line] if line < len(cell) else "").ljust(width) for cell, width in zip(cells, widths, strict=False))
            .rstrip() for line in range(height)]


def gpus(facts: HostFacts, policy: MmioPolicy | None = None) -> str:
    """With the platform's MMIO policy, MMIO64 is sized as that platform sizes it (Hyper-V: packed, not a
    power of two), so the table and the plan agree."""
    if not facts.gpus:
        return f"no GPUs found on {shown(facts.host.name or facts.host.uri)}"
    rows = []
    packed = policy is not None and not policy.power_of_two
    for gpu in facts.gpus:
        bars = gpu.bars
        need = "unknown" if bars is None else format_bytes(mmio_need(bars).high_packed if packed else mmio_need(bars).high)
        state = gpu.passthrough
        if state.capable is None:
            passthrough = "ready" if facts.host.iommu_enabled else "no IOMMU"
        elif not state.capable:
            passthrough = "not capable"
        else:
            passthrough = _passthrough_word(state)
        rows.append([
            qualified(gpu),
            gpu.model,
            gpu.function.ids,
            str(gpu.iommu_group.number) if gpu.iommu_group else "-",
            ", ".join(companion_names(gpu)) or "-",
            need,
            passthrough,
            gpu.assigned_to or _share_holders(gpu) or "-",
        ])
    lines = [table(["ADDRESS", "MODEL", "IDS", "GROUP", "COMPANIONS", "MMIO64", "PASSTHROUGH", "ASSIGNED TO"], rows)]
    shared = [gpu for gpu in facts.gpus if gpu.sharing.offered or gpu.sharing.in_use]
    if shared:
        lines.append("")
        for gpu in shared:
            sharing = gpu.sharing
            modes = "/".join(m.value for m in sharing.modes) or "shared"
            # Room: instances the driver can still create, or shares that exist and no VM holds (SR-IOV VFs).
            free = sum(1 for t in sharing.types if t.available or sharing.free(t.id))
            held = sum(1 for s in sharing.shares if s.holder)
            idle = len(sharing.shares) - held
            lines.append(f"{qualified(gpu)}: {len(sharing.types)} {modes} types ({free} with room now), "
                         f"{len(sharing.shares)} in use" + (f" ({idle} held by no VM)" if idle else ""))
            if sharing.unread:
                lines.append(f"  not listed: {sharing.unread}")
            lines += [f"  not free: {shown(s.id)}: {shown(s.unfinished)}" for s in sharing.shares if s.unfinished]
        lines.append("(`gpus --json` lists each type with its name, framebuffer and instances left)")
    unavailable = facts.host.settings.get("sharing_unavailable")
    if unavailable and not shared:
        # The backend's word on why this host offers no GPU sharing (Host.settings["sharing_unavailable"]).
        lines += ["", shown(f"sharing: {unavailable}")]
    return "\n".join(lines)


def _passthrough_word(state: PassthroughState) -> str:
    if state.active:
        # HostPciPassthruInfo (vSphere API reference): active means "enabled + rebooted"; a device switched off
        # since that reboot is still passthrough, until the next one
        return "active but disabled: passthrough ends at next reboot" if state.enabled is False else "active"
    return "enabled, reboot pending" if state.enabled else "disabled"


def _share_holders(gpu: Gpu) -> str:
    holders = gpu.sharing.holders
    return f"shared: {', '.join(holders)}" if holders else ""


def companion_names(gpu: Gpu) -> list[str]:
    """The companions as the platform names them (Hyper-V: LocationPaths), else by address."""
    native = gpu.native_addresses
    if len(native) == len(gpu.functions):
        return list(native[1:])
    return [str(c.address) for c in gpu.companions]


def _device_name(facts: HostFacts, address: PciAddress, location: str) -> str:
    """How a device a VM holds is printed: as its GPU is (LocationPath on Hyper-V), else its address."""
    for gpu in facts.gpus:
        if gpu.location == location and address in [f.address for f in gpu.functions]:
            names = gpu.native_addresses
            index = [f.address for f in gpu.functions].index(address)
            if len(names) == len(gpu.functions):
                return names[index]
    return str(address)


def vms(facts: HostFacts) -> str:
    if not facts.vms:
        return f"no VMs on {shown(facts.host.name or facts.host.uri)}"
    multi_host = any(vm.location for vm in facts.vms)
    rows = [[
        *([vm.location or "-"] if multi_host else []),
        vm.name, vm.power_state.value, vm.firmware.value, format_bytes(vm.memory_bytes),
        format_bytes(vm.memory_reserved_bytes) if vm.memory_reserved_bytes else "-",
        ", ".join(_device_name(facts, a, vm.location) for a in vm.assigned) or "-",
    ] for vm in facts.vms]
    headers = ["VM", "STATE", "FIRMWARE", "MEMORY", "RESERVED", "PCI DEVICES"]
    return table((["HOST"] if multi_host else []) + headers, rows)


def status(facts: HostFacts) -> str:
    host = facts.host
    iommu = {True: "on", False: "OFF", None: "unknown"}[host.iommu_enabled]
    assigned = [g for g in facts.gpus if g.assigned_to]
    # A GPU with shares on it (vGPUs, partitions, enabled VFs) is not free for passthrough, even when no VM holds one.
    shared = [g for g in facts.gpus if not g.assigned_to and g.sharing.in_use]
    incapable = [g for g in facts.gpus if not g.assigned_to and not g.sharing.in_use and g.passthrough.capable is False]
    free = [g for g in facts.gpus if not g.assigned_to and not g.sharing.in_use and g.passthrough.capable is not False]
    counts = [f"{len(free)} free", f"{len(assigned)} assigned"]
    if shared:
        counts.append(f"{len(shared)} shared")
    if incapable:
        counts.append(f"{len(incapable)} not capable of passthrough")
    lines = [
        f"host      {shown(host.name or host.uri)} ({shown(host.platform)}, {shown(host.uri)})",
        f"IOMMU     {iommu}" + (f" ({shown('; '.join(host.iommu_reasons))})" if host.iommu_reasons else ""),
        f"GPUs      {len(facts.gpus)} ({', '.join(counts)})",
        "",
    ]
    multi_host = any(vm.location for vm in facts.vms) or any(g.location for g in facts.gpus)
    held = [(vm, [f"{qualified(g)} {g.model}" for g in facts.gpus
                  if g.assigned_to == vm.name and g.location == vm.location]
             + [f"{qualified(g)} {_share_name(g, share)} (share)" for g in facts.gpus if g.location == vm.location
                for share in g.sharing.held_by(vm.name)])
            for vm in facts.vms]
    rows = [[*([vm.location or "-"] if multi_host else []), vm.name, vm.power_state.value, ", ".join(gpus)]
            for vm, gpus in held if gpus]
    headers = (["HOST"] if multi_host else []) + ["VM", "STATE", "GPUS"]
    lines.append(table(headers, rows) if rows else "no VM holds a GPU")
    if free:
        lines += ["", "free:"] + [f"  {shown(qualified(g))} ({shown(g.model)})" for g in free]
    if shared:
        lines += ["", "shared (not free for passthrough):"] + [
            f"  {shown(qualified(g))} ({shown(g.model)}): {_share_use(g)}" for g in shared]
    if incapable:
        lines += ["", "not capable of passthrough:"] + [f"  {shown(qualified(g))} ({shown(g.model)})" for g in incapable]
    ending = [g for g in facts.gpus if g.passthrough.capable and g.passthrough.active and g.passthrough.enabled is False]
    if ending:
        lines += ["", "active but disabled (passthrough ends at the next host reboot; enable it again in the vSphere "
                      "Client, Configure > PCI Devices, or by a `gpupass assign` of it to a VM that does not hold it):"]
        lines += [f"  {shown(qualified(g))} ({shown(g.model)})"
                  + (f", held by {shown(g.assigned_to)}" if g.assigned_to else "") for g in ending]
    unfinished = [(vm.name, item) for vm in facts.vms for item in vm.unfinished]
    unfinished += [("(host)", item) for item in host.unfinished]  # left by a run on a VM that is gone
    if unfinished:
        lines += ["", "UNFINISHED gpupass operations (a run stopped mid-way):"]
        lines += [f"  {shown(name)}: {shown(item)}" for name, item in unfinished]
    return "\n".join(lines)


def _share_name(gpu: Gpu, share: Share) -> str:
    share_type = gpu.sharing.type_named(share.type_id)
    return share_type.name if share_type and share_type.name else share.type_id


def _share_use(gpu: Gpu) -> str:
    shares = gpu.sharing.shares
    unheld = sum(1 for s in shares if s.holder is None)
    said = [f"held by {', '.join(gpu.sharing.holders)}"] if gpu.sharing.holders else []
    if unheld:
        said.append(f"{unheld} held by no VM")
    return shown("; ".join(said))


def finding_line(finding: Finding) -> str:
    import click  # for colour; the listings (gpus, vms, status) print without it

    label, color = _SEVERITY_STYLE[finding.severity]
    text = f"  {click.style(label, fg=color, bold=finding.blocks)} [{shown(finding.code)}] {shown(finding.message, True)}"
    if finding.remedy:
        text += f"\n      fix: {shown(finding.remedy, True)}"
    return text


def findings(items: Sequence[Finding]) -> str:
    if not items:
        return "  no problems found"
    order = {Severity.BLOCKER: 0, Severity.WARNING: 1, Severity.INFO: 2}
    return "\n".join(finding_line(f) for f in sorted(items, key=lambda f: order[f.severity]))


def plan(item: Plan, show_changes: bool = False) -> str:
    import click

    gpus = shown(", ".join(f"{qualified(g)} ({g.model})" for g in item.gpus) or "none")
    if item.shares:
        kinds = ", ".join(f"{c.type.name or c.type.id} ({c.type.id})" if c.type.name != c.type.id else c.type.id
                          for c in item.shares)
        gpus = shown(f"a {kinds} share of {gpus}")
    verb = "Assign" if item.operation in ("assign", "assign-share") else "Release"
    lines = [f"{verb} {gpus} {'to' if verb == 'Assign' else 'from'} VM '{shown(item.vm)}' on "
             f"{shown(item.host)}", ""]
    lines += ["Preflight:", findings(item.findings), ""]
    if item.mmio is not None and item.mmio.need is not None:
        need = item.mmio.need
        window = format_bytes(item.mmio.target_window)
        change = f" (now {format_bytes(item.mmio.current_window)})" if item.mmio.changes else " (unchanged)"
        said = item.mmio.explanation or f"the GPUs need {format_bytes(need.high)} of 64-bit MMIO"
        lines += [f"MMIO: {shown(said)}; guest window {window}{change}", ""]
    if item.nothing_to_do:
        held = "this share" if item.shares else "these GPUs"
        lines.append("Nothing to do: " + (f"the VM already holds {held}." if verb == "Assign"
                                          else "the VM holds none of these GPUs."))
    else:
        lines.append("Steps:")
        for number, step in enumerate(item.steps, 1):
            flags = [f for f, on in (("VM off", step.needs_vm_off), ("host reboot", step.needs_host_reboot),
                                     ("no write", not step.writes)) if on]
            suffix = f"  [{', '.join(flags)}]" if flags else ""
            lines.append(f"  {number}. {shown(step.description)}{suffix}")
            lines += [f"       - {shown(change)}" for change in step.changes]
            if step.writes:
                lines.append(f"       undo: {shown(step.undo)}")
            if show_changes and step.preview:
                lines += ["", *("       " + shown(line, True) for line in step.preview.rstrip().splitlines()), ""]
    if item.features_lost:
        lines += ["", f"While it holds the {'share' if item.shares else 'GPU'}, the VM loses:"]
        lines += [f"  - {shown(loss.feature)}: {shown(loss.reason)}" for loss in item.features_lost]
    if item.features_kept:
        lines += ["", "It keeps (unlike with a whole GPU):"]
        lines += [f"  - {shown(kept.feature)}: {shown(kept.reason)}" for kept in item.features_kept]
    if item.blocked:
        lines += ["", click.style("Blocked: fix the BLOCKER findings; nothing will be changed.", fg="red", bold=True)]
    return "\n".join(lines)


def migration(item: MigrationPlan, show_changes: bool = False) -> str:
    import click

    lines = [shown(f"Move VM '{item.vm}' from {item.source_host} ({item.source_platform}) to "
                   f"{item.destination_host} ({item.destination_platform})"), "", "GPUs:"]
    for m in item.matches:
        there = f"{qualified(m.destination)} {m.destination.model} [{m.match}]" if m.destination else "NONE FREE"
        lines.append(shown(f"  {qualified(m.source)} {m.source.model} ({m.source.function.ids})  ->  {there}"))
    for s in item.shares:
        there = (f"{qualified(s.destination)} {s.destination_type.name or s.destination_type.id} "
                 f"({s.destination_type.mode.value}) [{s.match}]") if s.destination and s.destination_type else "NONE FREE"
        lines.append(shown(f"  share {s.source_type.name or s.source_type.id} ({s.source_type.mode.value}) of "
                           f"{qualified(s.source)}  ->  {there}"))
    lines += ["", "Settings:"]
    lines.append(table(["SETTING", "VALUE", f"ON {item.destination_platform.upper()}"],
                       [[s.setting, s.value, s.destination or f"no equivalent on {item.destination_platform}"]
                        for s in item.settings]))
    lines += ["", "Migration findings:", findings(item.findings), ""]
    if item.destination_plan is not None:
        lines += ["Destination plan " + "-" * 60, plan(item.destination_plan, show_changes), ""]
    lines += ["What gpupass does NOT do:"] + [f"  - {shown(note)}" for note in item.not_done]
    if item.blocked:
        lines += ["", click.style("Blocked: the destination cannot take this VM's GPUs as planned.", fg="red", bold=True)]
    return "\n".join(lines)
