"""What the ESXi planner needs beyond the neutral facts (HostFacts.state), and its snapshot form.

Read by inventory() from the same PropertyCollector answer as the facts; plain data (no pyVmomi object),
so a plan from a snapshot is the plan from the live vCenter.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Mapping

from gpupass.backends.esxi.inventory import HostRaw, VmRaw, passthrough_devices


@dataclass(frozen=True)
class HostPlan:
    name: str
    maintenance: bool
    # PCI id -> passthruEnabled / passthruActive (config.pciPassthruInfo)
    enabled: Mapping[str, bool] = field(default_factory=dict)
    active: Mapping[str, bool] = field(default_factory=dict)
    rebind: bool = False  # HostCapability.deviceRebindWithoutRebootSupported


@dataclass(frozen=True)
class VmPlan:
    name: str
    host: str
    moid: str | None  # None for a VM that does not exist yet (a migration's target)
    memory_mb: int
    reservation_mb: int
    locked: bool
    firmware: str
    extra: Mapping[str, str] = field(default_factory=dict)
    change_version: str | None = None
    record: Mapping[str, Any] = field(default_factory=dict)  # gpupass' own record in extraConfig
    vgpus: tuple[str, ...] = ()  # the profiles of its vGPUs, in device order
    passthrough_devices: int = 0  # its other VirtualPCIPassthrough devices (fixed or dynamic)


@dataclass(frozen=True)
class EsxiState:
    api: tuple[int, ...] = ()
    api_name: str = ""
    hosts: Mapping[str, HostPlan] = field(default_factory=dict)
    vms: Mapping[str, VmPlan] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {"api": list(self.api), "api_name": self.api_name,
                "hosts": {name: asdict(host) for name, host in self.hosts.items()},
                "vms": {name: asdict(vm) for name, vm in self.vms.items()}}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> EsxiState:
        return cls(tuple(int(part) for part in data.get("api") or ()), str(data.get("api_name") or ""),
                   {name: HostPlan(**host) for name, host in (data.get("hosts") or {}).items()},
                   {name: VmPlan(**{**vm, "vgpus": tuple(vm.get("vgpus") or ())})
                    for name, vm in (data.get("vms") or {}).items()})


def from_raw(api: tuple[int, ...], api_name: str, hosts: Mapping[str, HostRaw],
             vms: Mapping[str, VmRaw]) -> EsxiState:
    return EsxiState(
        api, api_name,
        {name: HostPlan(name, h.maintenance, dict(h.enabled), dict(h.active), h.rebind) for name, h in hosts.items()},
        {name: VmPlan(name, v.host, getattr(v.ref, "_moId", None), v.memory_mb, v.reservation_mb, v.locked,
                      v.firmware, dict(v.extra), v.change_version, dict(v.record or {}), tuple(v.vgpus),
                      len(passthrough_devices(v.devices)) - len(v.vgpus))
         for name, v in vms.items()})
