"""JSON shapes of the model. These keys are a public contract: scripts read them."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from gpupass.core.domain.mmio import mmio_need

if TYPE_CHECKING:  # named in annotations only: `gpupass gpus --json` does not load the planning model
    from gpupass.core.domain.findings import FeatureLoss, Finding
    from gpupass.core.domain.inventory import Gpu, Host, HostFacts, Vm
    from gpupass.core.domain.pci import PciFunction
    from gpupass.core.domain.plan import MmioSummary, Plan, Step
    from gpupass.core.domain.sharing import ShareChange, Sharing
    from gpupass.core.migration import MigrationPlan


def function_to_dict(function: PciFunction) -> dict[str, Any]:
    return {
        "address": str(function.address),
        "vendor_id": f"{function.vendor_id:04x}",
        "device_id": f"{function.device_id:04x}",
        "class": f"{function.class_code:06x}",
        "kind": function.kind,
        "name": function.name,
        "driver": function.driver,
        "bars": None if function.bars is None else [
            {"index": bar.index, "size": bar.size, "64bit": bar.is_64bit} for bar in function.bars
        ],
    }


def gpu_to_dict(gpu: Gpu) -> dict[str, Any]:
    bars = gpu.bars
    need = mmio_need(bars) if bars is not None else None
    state = gpu.passthrough
    return {
        "address": str(gpu.address),
        "location": gpu.location or None,
        "vendor_id": f"{gpu.function.vendor_id:04x}",
        "device_id": f"{gpu.function.device_id:04x}",
        "name": gpu.model or gpu.function.name,
        "class": f"{gpu.function.class_code:06x}",
        "driver": gpu.function.driver,
        "iommu_group": gpu.iommu_group.number if gpu.iommu_group else None,
        "iommu_group_members": [str(a) for a in gpu.iommu_group.members] if gpu.iommu_group else [],
        "companions": [str(f.address) for f in gpu.companions],
        "functions": [function_to_dict(f) for f in gpu.functions],
        "bars": None if bars is None else [{"index": b.index, "size": b.size, "64bit": b.is_64bit} for b in bars],
        "mmio_bytes": None if need is None else {"high": need.high, "low": need.low, "total_bars": need.total_bars},
        "passthrough": {"capable": state.capable, "enabled": state.enabled, "active": state.active,
                        "reasons": list(state.reasons), "activates_without_reboot": state.activates_without_reboot},
        "assigned_to": gpu.assigned_to,
        "sharing": sharing_to_dict(gpu.sharing),
        **({"extra": dict(gpu.extra)} if gpu.extra else {}),
    }


def sharing_to_dict(sharing: Sharing) -> dict[str, Any]:
    return {
        "modes": [mode.value for mode in sharing.modes],
        "types": [{"id": t.id, "name": t.name, "mode": t.mode.value, "available": t.available,
                   "max_instances": t.max_instances, "framebuffer_bytes": t.framebuffer_bytes,
                   "description": t.description} for t in sharing.types],
        "shares": [{"id": s.id, "type": s.type_id, "mode": s.mode.value, "holder": s.holder,
                    **({"unfinished": s.unfinished} if s.unfinished else {})} for s in sharing.shares],
        "one_type_at_a_time": sharing.one_type_at_a_time,
        "mig_mode": sharing.mig_mode,
        **({"unread": sharing.unread} if sharing.unread else {}),
        "host_change": sharing.host_change or None,
    }


def share_change_to_dict(change: ShareChange) -> dict[str, Any]:
    return {"gpu": str(change.gpu), "location": change.location or None, "type": change.type.id,
            "type_name": change.type.name, "mode": change.type.mode.value,
            "framebuffer_bytes": change.type.framebuffer_bytes,
            "share": change.share.id if change.share else None}


def vm_to_dict(vm: Vm) -> dict[str, Any]:
    return {
        "name": vm.name,
        "id": vm.id or None,
        "location": vm.location or None,
        "power_state": vm.power_state.value,
        "firmware": vm.firmware.value,
        "memory_bytes": vm.memory_bytes,
        "memory_reserved_bytes": vm.memory_reserved_bytes,
        "mmio_window_bytes": vm.mmio_window_bytes,
        "assigned": [str(a) for a in vm.assigned],
        "snapshots": vm.snapshots,
        "hypervisor_hidden": vm.hypervisor_hidden,
        "binding": vm.binding,
        "stop_action": vm.stop_action,
        "dynamic_memory": vm.dynamic_memory,
        "settings": dict(vm.settings),
        "unfinished": list(vm.unfinished),
    }


def host_to_dict(host: Host) -> dict[str, Any]:
    return {
        "uri": host.uri,
        "platform": host.platform,
        "name": host.name,
        "iommu_enabled": host.iommu_enabled,
        "iommu_reasons": list(host.iommu_reasons),
        "maintenance_mode": host.maintenance_mode,
        "settings": dict(host.settings),
        "unfinished": list(host.unfinished),
    }


def finding_to_dict(finding: Finding) -> dict[str, Any]:
    return {
        "code": finding.code,
        "severity": finding.severity.value,
        "message": finding.message,
        "remedy": finding.remedy,
        "subject": finding.subject,
    }


def feature_to_dict(loss: FeatureLoss) -> dict[str, Any]:
    return {"feature": loss.feature, "reason": loss.reason}


def step_to_dict(step: Step, index: int) -> dict[str, Any]:
    return {
        "number": index,
        "action": step.action,
        "description": step.description,
        "changes": list(step.changes),
        "writes": step.writes,
        "needs_vm_off": step.needs_vm_off,
        "needs_host_reboot": step.needs_host_reboot,
        "undo": step.undo,
        "preview": step.preview,
    }


def mmio_to_dict(summary: MmioSummary | None) -> dict[str, Any] | None:
    if summary is None:
        return None
    return {
        "need_high_bytes": summary.need.high if summary.need else None,
        "need_low_bytes": summary.need.low if summary.need else None,
        "need_high_packed_bytes": summary.need.high_packed if summary.need else None,
        "explanation": summary.explanation or None,
        "current_window_bytes": summary.current_window,
        "target_window_bytes": summary.target_window,
    }


def plan_to_dict(plan: Plan) -> dict[str, Any]:
    return {
        "operation": plan.operation,
        "host": plan.host,
        "platform": plan.platform,
        "vm": plan.vm,
        "gpus": [gpu_to_dict(g) for g in plan.gpus],
        "blocked": plan.blocked,
        "nothing_to_do": plan.nothing_to_do,
        "needs_vm_off": plan.needs_vm_off,
        "needs_host_reboot": plan.needs_host_reboot,
        "steps": [step_to_dict(s, i) for i, s in enumerate(plan.steps, 1)],
        "findings": [finding_to_dict(f) for f in plan.findings],
        "features_lost": [feature_to_dict(f) for f in plan.features_lost],
        "mmio": mmio_to_dict(plan.mmio),
        "shares": [share_change_to_dict(c) for c in plan.shares],
        "features_kept": [feature_to_dict(f) for f in plan.features_kept],
    }


def facts_to_dict(facts: HostFacts) -> dict[str, Any]:
    return {
        "host": host_to_dict(facts.host),
        "gpus": [gpu_to_dict(g) for g in facts.gpus],
        "vms": [vm_to_dict(v) for v in facts.vms],
    }


def migration_to_dict(plan: MigrationPlan) -> dict[str, Any]:
    return {
        "source": {"host": plan.source_host, "platform": plan.source_platform, "vm": plan.vm},
        "destination": {"host": plan.destination_host, "platform": plan.destination_platform,
                        "vm_exists": plan.vm_exists_at_destination},
        "blocked": plan.blocked,
        "gpus": [{"source": str(m.source.address), "source_model": m.source.model,
                  "source_ids": m.source.function.ids,
                  "destination": str(m.destination.address) if m.destination else None,
                  "destination_location": (m.destination.location or None) if m.destination else None,
                  "destination_model": m.destination.model if m.destination else None,
                  "match": m.match} for m in plan.matches],
        "settings": [{"setting": s.setting, "value": s.value, "source": s.source, "destination": s.destination,
                      "carried": s.carried} for s in plan.settings],
        "findings": [finding_to_dict(f) for f in plan.findings],
        "destination_plan": plan_to_dict(plan.destination_plan) if plan.destination_plan else None,
        "not_done_by_gpupass": list(plan.not_done),
        "shares": [{"source": str(m.source.address), "source_type": m.source_type.id,
                    "source_type_name": m.source_type.name, "source_mode": m.source_type.mode.value,
                    "destination": str(m.destination.address) if m.destination else None,
                    "destination_type": m.destination_type.id if m.destination_type else None,
                    "destination_type_name": m.destination_type.name if m.destination_type else None,
                    "destination_mode": m.destination_type.mode.value if m.destination_type else None,
                    "match": m.match} for m in plan.shares],
    }
