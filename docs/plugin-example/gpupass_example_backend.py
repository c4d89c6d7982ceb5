"""gpupass-example-backend: the smallest complete gpupass backend, walked through in docs/plugins.md."""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any, Callable, Iterable

from gpupass.core.domain.context import Capabilities, CheckContext
from gpupass.core.domain.findings import Finding, warning
from gpupass.core.domain.grouping import group_gpus
from gpupass.core.domain.inventory import Firmware, Host, HostFacts, PowerState, Vm
from gpupass.core.domain.mmio import GiB, MiB, MmioPolicy
from gpupass.core.domain.pci import Bar, IommuGroup, PciAddress, PciFunction
from gpupass.core.domain.plan import Step
from gpupass.core.errors import Conflict, ConnectionFailed, NotFound, OperationFailed
from gpupass.core.hookspecs import hookimpl
from gpupass.core.ports import Backend

A = PciAddress.parse
SEED = {  # host "demo". functions: address, vendor, device, class, IOMMU group, BARs (None: unknown)
    "functions": [("0000:41:00.0", 0x10DE, 0x20F1, 0x030200, 20, None),  # A100 40GB, RTX 4090 + audio
                  ("0000:01:00.0", 0x10DE, 0x2684, 0x030000, 14, ((0, 16 * MiB, False), (1, 32 * GiB, True))),
                  ("0000:01:00.1", 0x10DE, 0x22BA, 0x040300, 14, ())],
    "vms": {"ml-train": {"state": "off", "memory_gib": 64, "balloon": True, "devices": []},  # window: the default
            "web01": {"state": "running", "memory_gib": 8, "balloon": False, "devices": []},
            "cad-ws": {"state": "off", "memory_gib": 32, "balloon": False, "devices": ["0000:01:00.0", "0000:01:00.1"]},
            "locked": {"state": "off", "memory_gib": 16, "balloon": False, "devices": [], "locked": True}},
}
_HOSTS: dict[str, dict] = {}  # the platform's state, per host name, for the life of the process


class ApiError(Exception):
    """What the platform's SDK raises: a stable code, and a text meant for people that may change."""
    def __init__(self, code: str, text: str) -> None:
        super().__init__(text)
        self.code = code


class _Api:  # stands in for a hypervisor SDK's client (a real backend would import libvirt, pyVmomi, ...)
    def __init__(self, host: str) -> None:
        if host != "demo":  # "offline" stands for a host that does not answer
            raise ApiError("HOST_DOWN" if host == "offline" else "NO_SUCH_HOST", f"host {host!r} is not reachable")
        self.state = _HOSTS.setdefault(host, copy.deepcopy(SEED))

    def update_vm(self, name: str, values: dict) -> dict:  # set properties of a VM at once, return the old values
        vm = self.state["vms"].get(name)
        if vm is None:
            raise ApiError("NO_SUCH_VM", f"vm {name} not found")
        if "devices" in values and vm.get("locked"):
            raise ApiError("VM_LOCKED", f"the devices of vm {name} are locked by another task")
        if busy := {d for n, v in self.state["vms"].items() if n != name for d in v["devices"]} & {*values.get("devices", ())}:
            raise ApiError("DEVICE_BUSY", f"{', '.join(sorted(busy))} belong to another vm")
        old = {key: vm.get(key) for key in values}
        vm.update(values)
        return old


# The SDK's error codes and the core's error types; translation goes by code, never by message text.
ERRORS = {"NO_SUCH_HOST": NotFound, "NO_SUCH_VM": NotFound, "VM_LOCKED": OperationFailed, "DEVICE_BUSY": Conflict,
          "HOST_DOWN": ConnectionFailed}  # Conflict: another change won (exit 6); ConnectionFailed: host down


@dataclass(frozen=True)
class UpdateVm:  # a Step's payload. With several kinds of step: a class each, and apply picks one by type
    vm: str
    values: dict[str, Any]


class ExampleBackend(Backend):
    platform = "example"
    schemes = ("example",)
    description = "in-memory example platform (docs/plugin-example); its state lasts one process"
    sdk_modules = ()  # a real backend names its SDK's modules here, e.g. ("pyVmomi",)
    mmio_policy = MmioPolicy(default_window=32 * GiB, granularity=GiB)
    capabilities = Capabilities(firmware_change=False)
    _api: _Api | None = None  # the SDK client, connected on first use

    def _call(self, action: str, request: Callable[[_Api], Any]) -> Any:
        self.round_trips += 1
        try:
            if self._api is None:  # a real backend passes self.target.password.reveal() to its SDK here
                self._api = _Api(self.target.hostname or "")
            return request(self._api)
        except ApiError as exc:  # the SDK refused the request whole: a step's error says the host is as it was
            error = ERRORS.get(exc.code, OperationFailed)
            said = {"rolled_back": True} if issubclass(error, OperationFailed) else {}
            raise error(f"{action}: {exc} ({exc.code})", **said) from exc

    def inventory(self) -> HostFacts:
        state = self._call(f"reading {self.target.uri}", lambda api: copy.deepcopy(api.state))
        rows = state["functions"]
        functions = [PciFunction(A(a), v, d, c, bars=None if b is None else tuple(Bar(*x) for x in b))
                     for a, v, d, c, _, b in rows]
        groups = {A(a): IommuGroup(g, tuple(A(r[0]) for r in rows if r[4] == g)) for a, *_, g, _ in rows}
        owners = {A(a): name for name, vm in state["vms"].items() for a in vm["devices"]}
        vms = tuple(Vm(name, PowerState(vm["state"]), Firmware.EFI, vm["memory_gib"] * GiB,
                       mmio_window_bytes=vm.get("window"), assigned=tuple(A(a) for a in vm["devices"]),
                       settings={"balloon": vm["balloon"], "gpupass": vm.get("gpupass")})  # our note on the VM
               for name, vm in state["vms"].items())
        host = Host(self.target.uri, self.platform, name=self.target.hostname or "", iommu_enabled=True)
        return HostFacts(host, tuple(group_gpus(functions, groups, owners)), vms,
                         {("", f.address): f for f in functions})

    @staticmethod
    def _step(action: str, vm: str, values: dict, what: str) -> Step:
        return Step(f"example.{action}", f"{what} (VM '{vm}')", undo="set the VM's previous values again",
                    needs_vm_off=True, payload=UpdateVm(vm, values))

    def plan_assign(self, ctx: CheckContext) -> list[Step]:
        vm, need, steps = ctx.vm, ctx.need, []
        if need is not None and not ctx.policy.fits(need, vm.mmio_window_bytes):
            window = ctx.policy.window_for(need)  # remember the window we found, so release can restore it
            note = vm.settings.get("gpupass") or {"window_before": vm.mmio_window_bytes}
            steps.append(self._step("set-window", vm.name, {"window": window, "gpupass": note},
                                    f"set the MMIO window to {window // GiB} GiB"))
        new = [str(a) for a in ctx.addresses if a not in vm.assigned]
        devices = [*map(str, vm.assigned), *new]
        return steps + [self._step("attach", vm.name, {"devices": devices}, "attach " + ", ".join(new))]

    def plan_release(self, ctx: CheckContext) -> list[Step]:
        """Undo exactly what assign added: the devices, and the window once no GPU is left."""
        vm, gone = ctx.vm, [a for a in ctx.vm.assigned if a in ctx.addresses]
        values: dict[str, Any] = {"devices": [str(a) for a in vm.assigned if a not in gone]}
        if not ctx.gpus_held_after and vm.settings.get("gpupass"):
            values.update(window=vm.settings["gpupass"]["window_before"], gpupass=None)
        return [self._step("detach", vm.name, values, "detach " + ", ".join(map(str, gone)))]

    def apply(self, step: Step) -> Any:
        if not isinstance(step.payload, UpdateVm):
            raise OperationFailed(f"cannot carry out {type(step.payload).__name__}", rolled_back=True)
        vm, values = step.payload.vm, step.payload.values
        return self._call(f"changing VM '{vm}'", lambda api: api.update_vm(vm, values))

    def undo(self, step: Step, token: Any) -> None:  # token: what apply returned, the VM's old values
        vm = step.payload.vm  # a step that apply() completed: an UpdateVm
        self._call(f"restoring VM '{vm}'", lambda api: api.update_vm(vm, token))

    def ex_reset(self) -> None:
        """A platform-only extra (hence `ex_`): put the host back to its seeded state. The core never calls it."""
        self._call("resetting the host", lambda api: api.state.update(copy.deepcopy(SEED)))


def balloon_pinned(ctx: CheckContext) -> Iterable[Finding]:
    """The plugin's own preflight rule; its finding codes start with the platform name."""
    if ctx.vm.settings.get("balloon"):
        yield warning("example-balloon-pinned",
                      f"VM '{ctx.vm.name}' has memory ballooning on, but all of its RAM is pinned while it holds a GPU",
                      "turn ballooning off for the VM so its memory use is what it seems", subject=ctx.vm.name)


@hookimpl
def gpupass_register_backends(register):
    register(ExampleBackend)


@hookimpl
def gpupass_register_rules(register):
    register(balloon_pinned, operations=("assign",), platforms=("example",))
