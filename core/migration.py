"""Migration plans: what a GPU VM on one platform needs on another, in the destination's own Plan form.

gpupass moves no disks and no VM: it reads the VM's GPU setup at the source, picks equivalent free GPUs at
the destination, and plans their assignment there with the destination's preflight.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from gpupass.core.domain import catalog
from gpupass.core.domain.findings import Finding, blocker, info, warning
from gpupass.core.domain.inventory import Gpu, HostFacts, PowerState, Vm
from gpupass.core.domain.mmio import format_bytes
from gpupass.core.domain.plan import Plan
from gpupass.core.domain.request import AssignmentRequest, AssignOptions
from gpupass.core.domain.sharing import ShareType, neutral_profile
from gpupass.core.fleet import assignable
from gpupass.core.errors import NotSupported
from gpupass.core.plugins import Registry
from gpupass.core.ports import Backend
from gpupass.core.service import find_vm, make_plan

# The hypervisor-neutral settings a GPU VM carries; each backend says how it spells them (native_settings).
SETTINGS = {
    "firmware": "guest firmware (BIOS or EFI)",
    "memory_reservation": "guest memory reserved or pinned for device DMA",
    "mmio_window": "64-bit MMIO window for the GPUs' BARs",
    "hide_hypervisor": "hypervisor hidden from the guest (opt-in)",
    "binding": "how the device is bound to the VM",
    "stop_action": "what the host does with the VM when the host shuts down",
    "dynamic_memory": "dynamic memory or ballooning",
}

NOT_DONE = (
    "gpupass does not convert or copy the VM or its disks: use your migration tool (virt-v2v, VMware "
    "Converter, Hyper-V import) and power the VM off at the source first",
    "gpupass does not install guest drivers: the GPU driver in the guest must support the destination",
    "the source keeps its GPUs until you release them (`gpupass migrate apply ... --release-source`)",
)


@dataclass(frozen=True)
class GpuMatch:
    source: Gpu
    destination: Gpu | None
    match: str | None  # "same-model", "same-family", or None


@dataclass(frozen=True)
class ShareMatch:
    """A share the VM holds at the source and its nearest equivalent at the destination."""

    source: Gpu
    source_type: ShareType
    destination: Gpu | None
    destination_type: ShareType | None
    # "same-profile" (the same vGPU profile or type), "framebuffer" (the smallest type with at least the source's
    # framebuffer), "size-unknown" (a type with room whose size cannot be compared), or None (nothing free)
    match: str | None


@dataclass(frozen=True)
class SettingCarry:
    setting: str
    value: str
    source: str | None
    destination: str | None

    @property
    def carried(self) -> bool:
        return self.destination is not None


@dataclass(frozen=True)
class MigrationPlan:
    source_host: str
    source_platform: str
    vm: str
    destination_host: str
    destination_platform: str
    vm_exists_at_destination: bool
    matches: tuple[GpuMatch, ...]
    settings: tuple[SettingCarry, ...]
    findings: tuple[Finding, ...]
    destination_plan: Plan | None
    not_done: tuple[str, ...] = NOT_DONE
    shares: tuple[ShareMatch, ...] = ()

    @property
    def blocked(self) -> bool:
        own = any(f.blocks for f in self.findings)
        return own or self.destination_plan is None or self.destination_plan.blocked


def _family(gpu: Gpu) -> str | None:
    known = catalog.lookup(gpu.function.vendor_id, gpu.function.device_id)
    return known.family if known else None


def pick_equivalents(source_gpus: tuple[Gpu, ...], destination: HostFacts, location: str | None = None,
                     registry: Registry | None = None) -> tuple[GpuMatch, ...]:
    """Same vendor:device first, else same family; all on one location (a VM runs on one host).

    Every host of the destination is searched (a vCenter's ESXi hosts too), as `fleet find` does; a card
    that `check` would block on now (e.g. passthrough needing a host reboot) only counts when nothing
    better exists, and `location` (the existing VM's host) wins a tie.
    """
    free = [g for g in destination.gpus if assignable(destination, g)]
    ready = {id(g) for g in free if registry is None or assignable(destination, g, registry)}
    best: tuple[GpuMatch, ...] = ()
    best_score: tuple[int, int, int, bool] | tuple[()] = ()
    for place in sorted({g.location for g in free}) or [""]:
        pool = sorted((g for g in free if g.location == place), key=lambda g: id(g) not in ready)
        matches = []
        for wanted in source_gpus:
            same = next((g for g in pool if g.function.ids == wanted.function.ids), None)
            kind = "same-model" if same else None
            if same is None and _family(wanted):
                same = next((g for g in pool if _family(g) == _family(wanted)), None)
                kind = "same-family" if same else None
            if same is not None:
                pool.remove(same)
            matches.append(GpuMatch(wanted, same, kind))
        found = [m for m in matches if m.destination is not None]
        score = (len(found), sum(id(m.destination) in ready for m in found),
                 sum(m.match == "same-model" for m in matches), place == location)
        if not best or score > best_score:
            best, best_score = tuple(matches), score
    return best or tuple(GpuMatch(g, None, None) for g in source_gpus)


def _room(gpu: Gpu, share_type: ShareType) -> int | None:
    """How many more shares of the type the GPU can give now (the rule fleet find --profile uses)."""
    sharing = gpu.sharing
    if gpu.assigned_to or (sharing.one_type_at_a_time and sharing.other_types_held(share_type)):
        return 0
    if share_type.available is None:
        return len(sharing.free(share_type.id)) or None
    return share_type.available + len(sharing.free(share_type.id))


def pick_share_equivalents(held: tuple[tuple[Gpu, ShareType], ...], destination: HostFacts) -> tuple[ShareMatch, ...]:
    """Each share's nearest equivalent at the destination: the same vGPU profile (or type id) if a GPU offers it
    with room, else the smallest type with at least the source's framebuffer, else (sizes unknown on either side)
    any type with room, said as such. Known room wins over unknown room."""
    room = {(id(g), t.id): _room(g, t) for g in destination.gpus for t in g.sharing.types}
    matches = []
    for gpu, wanted in held:
        profile = neutral_profile(wanted.name) or neutral_profile(wanted.id)
        # The guest's driver is the GPU vendor's (an NVIDIA vGPU needs NVIDIA's guest driver): a share maps only
        # to a GPU of the same vendor, where both say theirs.
        offers = [(g, t) for g in destination.gpus for t in g.sharing.types if room[(id(g), t.id)] != 0
                  and (not g.function.vendor_id or not gpu.function.vendor_id
                       or g.function.vendor_id == gpu.function.vendor_id)]
        offers.sort(key=lambda o: room[(id(o[0]), o[1].id)] is None)     # known room first
        same = [(g, t) for g, t in offers if t.id == wanted.id or (profile and profile in
                                                                   (neutral_profile(t.name), neutral_profile(t.id)))]
        size = wanted.framebuffer_bytes
        bigger = sorted(((g, t) for g, t in offers if size and t.framebuffer_bytes and t.framebuffer_bytes >= size),
                        key=lambda o: o[1].framebuffer_bytes or 0)
        unknown = [(g, t) for g, t in offers if not size or not t.framebuffer_bytes]
        for kind, pool in (("same-profile", same), ("framebuffer", bigger), ("size-unknown", unknown)):
            if pool:
                g, t = pool[0]
                left = room[(id(g), t.id)]
                room[(id(g), t.id)] = None if left is None else left - 1
                matches.append(ShareMatch(gpu, wanted, g, t, kind))
                break
        else:
            matches.append(ShareMatch(gpu, wanted, None, None, None))
    return tuple(matches)


def _share_findings(matches: tuple[ShareMatch, ...], destination: Backend) -> list[Finding]:
    findings = []
    for m in matches:
        was = f"{m.source_type.name or m.source_type.id} ({m.source_type.mode.value})"
        if m.destination is None or m.destination_type is None:
            findings.append(blocker(
                "migrate-no-share-equivalent", f"no GPU at {destination.target.label} has room for a share like {was}",
                "free one there (`gpupass fleet find --profile ...` lists free capacity)", subject=str(m.source.address)))
            continue
        now = f"{m.destination_type.name or m.destination_type.id} ({m.destination_type.mode.value}) of " \
              f"{m.destination.model or m.destination.address}"
        if m.match == "same-profile":
            findings.append(info("migrate-share-same-profile", f"{was} becomes {now}: the same profile",
                                 subject=str(m.source.address)))
        elif m.match == "framebuffer":
            findings.append(warning(
                "migrate-share-substitute", f"{was} becomes {now}: another profile with at least its framebuffer "
                f"({format_bytes(m.destination_type.framebuffer_bytes or 0)})",
                "check the guest driver supports the new profile", subject=str(m.source.address)))
        else:
            findings.append(warning(
                "migrate-share-size-unknown", f"{was} becomes {now}: the platforms do not say both sizes, so gpupass "
                "cannot tell whether it is as large", "compare the two in the vendors' documentation before moving",
                subject=str(m.source.address)))
    return findings


def _source_values(vm: Vm, gpus: tuple[Gpu, ...]) -> dict[str, str]:
    return {
        "firmware": vm.firmware.value,
        "memory_reservation": format_bytes(vm.memory_reserved_bytes) if vm.memory_reserved_bytes else "none",
        "mmio_window": format_bytes(vm.mmio_window_bytes) if vm.mmio_window_bytes else "platform default",
        "hide_hypervisor": "on" if vm.hypervisor_hidden else "off",
        "binding": {"address": "host address", "dynamic": "dynamic"}.get(vm.binding or "", "unknown"),
        "stop_action": vm.stop_action or "unknown",
        "dynamic_memory": "unknown" if vm.dynamic_memory is None else "on" if vm.dynamic_memory else "off",
    }


def carry_settings(vm: Vm, gpus: tuple[Gpu, ...], source: type[Backend], destination: type[Backend]) -> tuple[SettingCarry, ...]:
    values = _source_values(vm, gpus)
    return tuple(
        SettingCarry(setting, values[setting], source.native_settings.get(setting),
                     destination.native_settings.get(setting))
        for setting in SETTINGS
    )


def plan_migration(source: Backend, vm_name: str, destination: Backend, registry: Registry,
                   destination_vm: str | None = None) -> MigrationPlan:
    source_facts = source.inventory()
    vm = find_vm(source_facts, vm_name)
    held = tuple(g for g in source_facts.gpus if g.assigned_to == vm.name and g.location == vm.location)
    held_shares = tuple((g, g.sharing.type_named(s.type_id) or ShareType(s.type_id, s.type_id, s.mode))
                        for g in source_facts.gpus for s in g.sharing.held_by(vm.name))
    findings: list[Finding] = []
    if not held and held_shares:
        return _plan_share_migration(source, vm, destination, registry, destination_vm, held_shares)
    if not held:
        findings.append(blocker("migrate-no-gpus", f"VM '{vm.name}' holds no GPU at {source.target.label}",
                                f"name the VM that holds the GPUs (`gpupass status {source.target.label}`)"))
    dest_facts = destination.inventory()
    target_name = destination_vm or vm.name
    existing = dest_facts.find_vm(target_name)
    matches = pick_equivalents(held, dest_facts, existing.location if existing is not None else None, registry)
    chosen_at = next((m.destination.location for m in matches if m.destination is not None), None)
    if existing is not None and chosen_at is not None and chosen_at != existing.location:
        findings.append(blocker(
            "migrate-vm-on-other-host",
            f"VM '{existing.name}' is on {existing.location or destination.target.label}, but the free equivalent "
            f"GPUs are on {chosen_at}",
            f"move the VM to {chosen_at} first (powered off), then run the migration plan again; the plan below "
            f"is for the VM on {chosen_at}"))
        # As it would be there: a passthrough device of its old host cannot move with it.
        existing = dataclasses.replace(existing, location=chosen_at, assigned=())
        dest_facts = dataclasses.replace(dest_facts, vms=tuple(existing if v.name == existing.name else v
                                                               for v in dest_facts.vms))
    for m in matches:
        if m.destination is None:
            findings.append(blocker(
                "migrate-no-equivalent",
                f"no free, assignable GPU like {m.source.model} ({m.source.function.ids}) at {destination.target.label}",
                "free one there (`gpupass fleet find --model ...` shows where one is free)",
                subject=str(m.source.address)))
        elif m.match == "same-family":
            findings.append(warning(
                "migrate-family-substitute",
                f"{m.source.model} becomes {m.destination.model} ({m.destination.address}): same family, another model",
                "check the guest driver and the workload's memory needs", subject=str(m.source.address)))
    settings = carry_settings(vm, held, type(source), type(destination))
    for row in settings:
        if not row.carried and row.setting in ("hide_hypervisor",) and vm.hypervisor_hidden:
            findings.append(warning("migrate-setting-lost",
                                    f"{SETTINGS[row.setting]} has no equivalent on {destination.platform}",
                                    "the guest must cope without it (NVIDIA drivers since R465 do)"))
    plan = None
    chosen = tuple(m.destination for m in matches if m.destination is not None)
    if chosen and existing is None:
        arriving = Vm(name=target_name, power_state=PowerState.OFF, firmware=vm.firmware,
                      memory_bytes=vm.memory_bytes, location=chosen[0].location)
        try:
            prepared = destination.prepare_planned_vm(dest_facts, arriving)
        except NotSupported as exc:
            findings.append(blocker("migrate-vm-missing", exc.message, exc.remedy))
            chosen = ()
        else:
            dest_facts = dataclasses.replace(prepared, vms=prepared.vms + (arriving,))
            findings.append(info("migrate-vm-not-there-yet",
                                 f"VM '{target_name}' does not exist at {destination.target.label} yet: the plan is for "
                                 "the VM as your migration tool will create it (off, same firmware and memory)"))
    if chosen:
        caps = type(destination).capabilities
        options = AssignOptions(
            hide_hypervisor=vm.hypervisor_hidden and caps.hide_hypervisor,
            dynamic=vm.binding == "dynamic" and caps.dynamic_binding,
        )
        request = AssignmentRequest(target_name, tuple(g.address for g in chosen), options)
        plan = make_plan(destination, dest_facts, request, registry)
    return MigrationPlan(
        source_host=source.target.label, source_platform=source.platform, vm=vm.name,
        destination_host=destination.target.label, destination_platform=destination.platform,
        vm_exists_at_destination=existing is not None, matches=matches, settings=settings,
        findings=tuple(findings), destination_plan=plan,
    )


def _plan_share_migration(source: Backend, vm: Vm, destination: Backend, registry: Registry, destination_vm: str | None,
                          held: tuple[tuple[Gpu, ShareType], ...]) -> MigrationPlan:
    """A VM holding shares: each mapped to its nearest equivalent, the first planned as an assign-share there."""
    dest_facts = destination.inventory()
    target_name = destination_vm or vm.name
    existing = dest_facts.find_vm(target_name)
    matches = pick_share_equivalents(held, dest_facts)
    findings = _share_findings(matches, destination)
    found = [m for m in matches if m.destination is not None and m.destination_type is not None]
    if len(found) > 1:
        findings.append(info("migrate-more-shares", f"VM '{vm.name}' holds {len(found)} shares: the plan below is "
                             "for the first; assign each other one with `gpupass assign ... --share`"))
    plan = None
    if found and existing is None:
        arriving = Vm(name=target_name, power_state=PowerState.OFF, firmware=vm.firmware,
                      memory_bytes=vm.memory_bytes, location=found[0].destination.location if found[0].destination else "")
        try:
            prepared = destination.prepare_planned_vm(dest_facts, arriving)
        except NotSupported as exc:
            findings.append(blocker("migrate-vm-missing", exc.message, exc.remedy))
            found = []
        else:
            dest_facts = dataclasses.replace(prepared, vms=prepared.vms + (arriving,))
            findings.append(info("migrate-vm-not-there-yet",
                                 f"VM '{target_name}' does not exist at {destination.target.label} yet: the plan is for "
                                 "the VM as your migration tool will create it (off, same firmware and memory)"))
    if found:
        first = found[0]
        assert first.destination is not None and first.destination_type is not None
        request = AssignmentRequest(target_name, (first.destination.address,),
                                    AssignOptions(share=first.destination_type.id))
        plan = make_plan(destination, dest_facts, request, registry)
    return MigrationPlan(
        source_host=source.target.label, source_platform=source.platform, vm=vm.name,
        destination_host=destination.target.label, destination_platform=destination.platform,
        vm_exists_at_destination=existing is not None, matches=(),
        settings=carry_settings(vm, (), type(source), type(destination)), findings=tuple(findings),
        destination_plan=plan, shares=matches,
    )
