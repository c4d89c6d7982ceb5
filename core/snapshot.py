"""Save a host's facts to a file and read them back exactly, so planning works offline.

A snapshot holds the normalised facts plus whatever the platform's planner needs (`HostFacts.state` through `Backend.state_to_json`,
e.g. KVM's domain XML). Opening a snapshot file as HOST gives a read-only backend of that platform.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from gpupass.core.domain.inventory import Firmware, Gpu, Host, HostFacts, PassthroughState, PowerState, Vm
from gpupass.core.domain.pci import Bar, IommuGroup, PciAddress, PciFunction
from gpupass.core.domain.sharing import Share, ShareMode, ShareType, Sharing
from gpupass.core.errors import UsageError

FORMAT = "gpupass-snapshot/1"


def _bars(bars: tuple[Bar, ...] | None) -> list[list[Any]] | None:
    return None if bars is None else [[b.index, b.size, b.is_64bit] for b in bars]


def _function(f: PciFunction) -> dict[str, Any]:
    return {"address": str(f.address), "vendor_id": f.vendor_id, "device_id": f.device_id,
            "class_code": f.class_code, "name": f.name, "driver": f.driver, "bars": _bars(f.bars),
            "header_type": f.header_type}


def _read_function(d: dict[str, Any]) -> PciFunction:
    bars = d.get("bars")
    return PciFunction(
        PciAddress.parse(d["address"]), d["vendor_id"], d["device_id"], d["class_code"], d.get("name", ""),
        d.get("driver"), None if bars is None else tuple(Bar(i, s, b) for i, s, b in bars),
        d.get("header_type"),
    )


def _sharing(sharing: Sharing) -> dict[str, Any]:
    return {"types": [{"id": t.id, "name": t.name, "mode": t.mode.value, "available": t.available,
                       "max_instances": t.max_instances, "framebuffer_bytes": t.framebuffer_bytes,
                       "description": t.description} for t in sharing.types],
            "shares": [{"id": x.id, "type_id": x.type_id, "mode": x.mode.value, "holder": x.holder,
                        "unfinished": x.unfinished} for x in sharing.shares],
            "one_type_at_a_time": sharing.one_type_at_a_time, "mig_mode": sharing.mig_mode, "unread": sharing.unread,
            "host_change": sharing.host_change}


def _read_sharing(d: dict[str, Any]) -> Sharing:
    return Sharing(
        types=tuple(ShareType(t["id"], t.get("name", ""), ShareMode(t["mode"]), t.get("available"),
                              t.get("max_instances"), t.get("framebuffer_bytes"), t.get("description", ""))
                    for t in d.get("types", ())),
        shares=tuple(Share(x["id"], x["type_id"], ShareMode(x["mode"]), x.get("holder"), str(x.get("unfinished") or ""))
                     for x in d.get("shares", ())),
        one_type_at_a_time=bool(d.get("one_type_at_a_time", False)),
        mig_mode=d.get("mig_mode"),
        unread=str(d.get("unread") or ""),
        host_change=str(d.get("host_change") or ""),
    )


def facts_to_snapshot(facts: HostFacts) -> dict[str, Any]:
    host = facts.host
    return {
        "host": {"uri": host.uri, "platform": host.platform, "name": host.name, "iommu_enabled": host.iommu_enabled,
                 "iommu_reasons": list(host.iommu_reasons), "maintenance_mode": host.maintenance_mode,
                 "settings": dict(host.settings)},
        "functions": [{"location": location, **_function(f)} for (location, _), f in sorted(
            facts.functions.items(), key=lambda item: (item[0][0], item[0][1]))],
        "gpus": [{
            "function": _function(g.function),
            "companions": [_function(c) for c in g.companions],
            "iommu_group": None if g.iommu_group is None else {
                "number": g.iommu_group.number, "members": [str(a) for a in g.iommu_group.members]},
            "passthrough": {"capable": g.passthrough.capable, "enabled": g.passthrough.enabled,
                            "active": g.passthrough.active, "reasons": list(g.passthrough.reasons),
                            "activates_without_reboot": g.passthrough.activates_without_reboot},
            "assigned_to": g.assigned_to, "model": g.model, "location": g.location, "extra": dict(g.extra),
            "sharing": _sharing(g.sharing),
        } for g in facts.gpus],
        "maintenance": dict(facts.maintenance),
        "vms": [{
            "name": v.name, "power_state": v.power_state.value, "firmware": v.firmware.value,
            "memory_bytes": v.memory_bytes, "memory_reserved_bytes": v.memory_reserved_bytes,
            "mmio_window_bytes": v.mmio_window_bytes, "assigned": [str(a) for a in v.assigned], "id": v.id,
            "location": v.location, "snapshots": v.snapshots, "hypervisor_hidden": v.hypervisor_hidden,
            "settings": dict(v.settings), "binding": v.binding, "stop_action": v.stop_action,
            "dynamic_memory": v.dynamic_memory,
        } for v in facts.vms],
    }


def facts_from_snapshot(data: dict[str, Any]) -> HostFacts:
    h = data["host"]
    host = Host(h["uri"], h["platform"], h.get("name", ""), h.get("iommu_enabled"), tuple(h.get("iommu_reasons", ())),
                h.get("maintenance_mode"), h.get("settings", {}))
    functions = {(f.get("location", ""), PciAddress.parse(f["address"])): _read_function(f) for f in data["functions"]}
    gpus = []
    for g in data["gpus"]:
        group = g.get("iommu_group")
        state = g.get("passthrough", {})
        gpus.append(Gpu(
            function=_read_function(g["function"]),
            companions=tuple(_read_function(c) for c in g.get("companions", ())),
            iommu_group=None if group is None else IommuGroup(
                group["number"], tuple(PciAddress.parse(a) for a in group["members"])),
            passthrough=PassthroughState(state.get("capable"), state.get("enabled"), state.get("active"),
                                         tuple(state.get("reasons", ())),
                                         bool(state.get("activates_without_reboot", False))),
            assigned_to=g.get("assigned_to"), model=g.get("model", ""), location=g.get("location", ""),
            extra=g.get("extra", {}), sharing=_read_sharing(g.get("sharing") or {}),
        ))
    vms = [Vm(
        name=v["name"], power_state=PowerState(v["power_state"]), firmware=Firmware(v["firmware"]),
        memory_bytes=v["memory_bytes"], memory_reserved_bytes=v.get("memory_reserved_bytes"),
        mmio_window_bytes=v.get("mmio_window_bytes"), assigned=tuple(PciAddress.parse(a) for a in v["assigned"]),
        id=v.get("id", ""), location=v.get("location", ""), snapshots=v.get("snapshots", 0),
        hypervisor_hidden=v.get("hypervisor_hidden", False), settings=v.get("settings", {}),
        binding=v.get("binding"), stop_action=v.get("stop_action"), dynamic_memory=v.get("dynamic_memory"),
        unfinished=tuple(v.get("unfinished", ())),
    ) for v in data["vms"]]
    return HostFacts(host, tuple(gpus), tuple(vms), functions, data.get("maintenance", {}))


def write(path: Path, facts: HostFacts, backend_state: dict[str, Any], label: str) -> None:
    from gpupass.core.files import write_private

    document = {"format": FORMAT, "label": label, "platform": facts.host.platform,
                "facts": facts_to_snapshot(facts), "backend_state": backend_state}
    write_private(path, json.dumps(document, indent=1, sort_keys=True) + "\n", "snapshot")


# The PCI ids' widths in configuration space (PCI Local Bus Specification 3.0, 6.2.1: Vendor ID and Device ID 16
# bits, Class Code 24, Header Type 8); every other number in the facts (sizes, counts) is only checked to be >= 0.
_LIMITS = {"vendor_id": 0xFFFF, "device_id": 0xFFFF, "class_code": 0xFFFFFF, "header_type": 0xFF}

_REMEDY = "make a new one with `gpupass snapshot HOST -o FILE`"


def read(path: Path) -> dict[str, Any]:
    """The snapshot document, its top level checked: format, platform, label, facts and backend_state."""
    try:
        document = json.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise UsageError(f"cannot read snapshot {path}: {exc.strerror or exc}", remedy=_REMEDY) from exc
    except (ValueError, RecursionError) as exc:  # not UTF-8, not JSON, or nested beyond reason
        raise UsageError(f"cannot read snapshot {path}: not JSON ({type(exc).__name__}: {str(exc)[:200]})",
                         remedy=_REMEDY) from exc
    if not isinstance(document, dict) or document.get("format") != FORMAT:
        raise UsageError(f"{path} is not a gpupass snapshot ({FORMAT})", remedy=_REMEDY)
    for key, kind, required in (("platform", str, True), ("facts", dict, True), ("label", (str, type(None)), False),
                                ("backend_state", dict, False)):
        missing = required and key not in document
        if missing or key in document and not isinstance(document[key], kind):
            raise UsageError(f"snapshot {path} is damaged: `{key}` is {'missing' if missing else 'of the wrong type'}",
                             remedy=_REMEDY)
    return document


def load_facts(path: Path, document: dict[str, Any]) -> HostFacts:
    """The document's facts, decoded and type-checked; a damaged snapshot is a usage error naming the field."""
    from gpupass.core.typecheck import first_out_of_range, first_problem

    try:
        facts = facts_from_snapshot(document["facts"])
    except UsageError as exc:  # e.g. an address that does not parse
        raise UsageError(f"snapshot {path} is damaged: {exc.message}", remedy=_REMEDY) from exc
    except (KeyError, TypeError, ValueError, AttributeError, IndexError) as exc:
        # The decoder indexes the parsed JSON directly: a missing field or a value of the wrong shape lands here.
        detail = f"missing field {exc}" if isinstance(exc, KeyError) else f"{type(exc).__name__}: {str(exc)[:200]}"
        raise UsageError(f"snapshot {path} is damaged: {detail}", remedy=_REMEDY) from exc
    problem = first_problem(facts) or first_out_of_range(facts, _LIMITS)
    if problem:
        raise UsageError(f"snapshot {path} is damaged: facts.{problem}", remedy=_REMEDY)
    return facts


