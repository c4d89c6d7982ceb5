"""A fake platform for unit tests of the core: it subclasses the Backend port and records every call."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from gpupass.core.domain.context import Capabilities, CheckContext
from gpupass.core.domain.findings import FeatureLoss
from gpupass.core.domain.inventory import Firmware, Gpu, Host, HostFacts, PowerState, Vm
from gpupass.core.domain.mmio import GiB, MiB, MmioPolicy
from gpupass.core.domain.pci import Bar, IommuGroup, PciAddress, PciFunction
from gpupass.core.domain.plan import Step
from gpupass.core.errors import OperationFailed
from gpupass.core.hookspecs import hookimpl
from gpupass.core.ports import Backend

A = PciAddress.parse


def function(address: str, class_code: int = 0x030200, vendor: int = 0x10DE, device: int = 0x20F1,
             bars=None, name: str = "", driver: str | None = None) -> PciFunction:
    return PciFunction(A(address), vendor, device, class_code, name=name, bars=bars, driver=driver)


def gpu(address: str, *, companions=(), group: int | None = 1, members=None, owner=None, bars=(),
        device: int = 0x20F1, model: str = "Fake GPU") -> Gpu:
    primary = function(address, device=device, bars=bars)
    companion_functions = tuple(function(c, class_code=0x040300, device=0x1AEF, bars=()) for c in companions)
    group_members = members if members is not None else [address, *companions]
    return Gpu(
        function=primary,
        companions=companion_functions,
        iommu_group=IommuGroup(group, tuple(sorted(A(m) for m in group_members))) if group is not None else None,
        assigned_to=owner,
        model=model,
    )


def vm(name: str, *, state=PowerState.OFF, firmware=Firmware.EFI, memory=16 * GiB, assigned=(), window=None) -> Vm:
    return Vm(name=name, power_state=state, firmware=firmware, memory_bytes=memory,
              assigned=tuple(A(a) for a in assigned), mmio_window_bytes=window)


def facts(gpus=(), vms=(), functions=(), iommu=True) -> HostFacts:
    table = {("", f.address): f for g in gpus for f in g.functions}
    table.update({("", f.address): f for f in functions})
    return HostFacts(Host(uri="fake://lab", platform="fake", name="fake-host", iommu_enabled=iommu),
                     tuple(gpus), tuple(vms), table)


@dataclass(frozen=True)
class Reserve:
    vm: str
    address: str


@dataclass(frozen=True)
class Move:
    vm: str
    addresses: tuple[str, ...]
    detach: bool = False


class FakeBackend(Backend):
    """Holds its facts in memory; assign/release edit them. `fail_on` makes a step fail."""

    platform = "fake"
    schemes = ("fake",)
    description = "in-memory fake platform for tests"
    mmio_policy = MmioPolicy(default_window=32 * GiB, granularity=GiB)
    capabilities = Capabilities(live_attach=False, hide_hypervisor=True)
    state: HostFacts = facts()
    fail_on: set[str] = set()
    fail_undo: set[str] = set()
    calls: list[tuple[str, Any]] = []

    def inventory(self) -> HostFacts:
        self.calls.append(("inventory", None))
        self.round_trips += 1
        return type(self).state

    def plan_assign(self, ctx: CheckContext) -> list[Step]:
        return [
            Step("fake.reserve", f"reserve {a}", undo=f"unreserve {a}", payload=Reserve(ctx.vm.name, str(a)))
            for a in ctx.addresses
        ] + [Step("fake.attach", f"attach to {ctx.vm.name}", undo="detach",
                  payload=Move(ctx.vm.name, tuple(str(a) for a in ctx.addresses)), needs_vm_off=True)]

    def plan_release(self, ctx: CheckContext) -> list[Step]:
        return [Step("fake.detach", f"detach from {ctx.vm.name}", undo="attach",
                     payload=Move(ctx.vm.name, tuple(str(a) for a in ctx.addresses), detach=True))]

    def features_lost(self, ctx: CheckContext) -> list[FeatureLoss]:
        return [FeatureLoss("teleportation", "fake GPUs pin the VM")]

    def apply(self, step: Step) -> Any:
        self.calls.append(("apply", step.action))
        if step.action in self.fail_on:
            raise OperationFailed(f"injected failure in {step.action}", rolled_back=True)  # refused before writing
        if isinstance(step.payload, Move):
            before = type(self).state
            self._move(step.payload.vm, step.payload.addresses, detach=step.payload.detach)
            return before
        return None

    def undo(self, step: Step, token: Any) -> None:
        self.calls.append(("undo", step.action))
        if step.action in self.fail_undo:
            raise OperationFailed(f"injected undo failure in {step.action}")
        if token is not None:
            type(self).state = token

    def _move(self, vm_name: str, addresses: tuple[str, ...], detach: bool) -> None:
        moving = {A(a) for a in addresses}
        current = type(self).state
        vms = []
        for item in current.vms:
            if item.name == vm_name:
                held = [a for a in item.assigned if a not in moving] if detach else [*item.assigned, *moving]
                item = dataclasses.replace(item, assigned=tuple(held))
            vms.append(item)
        gpus = []
        for item in current.gpus:
            if item.address in moving:
                item = dataclasses.replace(item, assigned_to=None if detach else vm_name)
            gpus.append(item)
        type(self).state = dataclasses.replace(current, vms=tuple(vms), gpus=tuple(gpus))


class FakePlugin:
    """Registered per test (like llm's fake model): the fake backend and no lab."""

    @hookimpl
    def gpupass_register_backends(self, register):
        register(FakeBackend)


def reset_fake(state: HostFacts) -> None:
    FakeBackend.state = state
    FakeBackend.fail_on = set()
    FakeBackend.fail_undo = set()
    FakeBackend.calls = []


def lab_facts() -> HostFacts:
    """A small host: an isolated A100, a card with audio, a card sharing its group with a SATA controller."""
    sata = function("0000:00:17.0", class_code=0x010601, vendor=0x8086, device=0x7A62, name="SATA AHCI",
                    driver="ahci")
    bridge = function("0000:00:01.0", class_code=0x060400, vendor=0x8086, device=0xA70D, name="root port")
    big = (Bar(0, 16 * MiB, False), Bar(1, 64 * GiB, True), Bar(3, 32 * MiB, True))
    return facts(
        gpus=[
            gpu("0000:41:00.0", group=20, bars=big, model="A100"),
            gpu("0000:01:00.0", companions=["0000:01:00.1"], group=14,
                members=["0000:00:01.0", "0000:01:00.0", "0000:01:00.1"], owner="cad-ws",
                bars=(Bar(1, 256 * MiB, True),)),
            gpu("0000:02:00.0", companions=["0000:02:00.1"], group=15,
                members=["0000:00:17.0", "0000:02:00.0", "0000:02:00.1"], bars=None),
        ],
        vms=[
            vm("ml-train"),
            vm("render01", firmware=Firmware.BIOS),
            vm("web01", state=PowerState.RUNNING),
            vm("cad-ws", assigned=["0000:01:00.0", "0000:01:00.1"]),
        ],
        functions=[sata, bridge],
    )


def open_fake(state: HostFacts) -> FakeBackend:
    """A fresh fake backend whose host holds `state`."""
    from gpupass.core.target import Target

    reset_fake(state)
    return FakeBackend(Target(uri="fake://lab", name="fake-host"))


class OtherFakeBackend(FakeBackend):
    """A second fake platform with its own state and spelling of settings, for migration tests."""

    platform = "otherfake"
    schemes = ("otherfake",)
    native_settings = {"firmware": "generation", "mmio_window": "HighMmio", "binding": "by location path"}
    state: HostFacts = facts()

    def prepare_planned_vm(self, facts: HostFacts, vm: Vm) -> HostFacts:
        self.planned = vm
        return facts


def open_other_fake(state: HostFacts) -> OtherFakeBackend:
    from gpupass.core.target import Target

    OtherFakeBackend.state = state
    return OtherFakeBackend(Target(uri="otherfake://dst", name="dst-host"))
