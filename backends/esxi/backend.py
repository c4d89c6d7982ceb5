"""The ESXi / vCenter backend: pyvmomi, one PropertyCollector read, one ReconfigVM_Task per change."""

from __future__ import annotations

import functools
import http.client
import logging
import re
import time
from collections import Counter
from dataclasses import replace
from typing import Any, Callable, Sequence

from gpupass.backends.esxi import claims as esxi_claims
from gpupass.backends.esxi import collect
from gpupass.backends.esxi import graphics as host_graphics
from gpupass.backends.esxi import inventory as inv
from gpupass.backends.esxi import shares as vgpu_shares
from gpupass.backends.esxi import spec as specs
from gpupass.backends.esxi import vgpu
from gpupass.backends.esxi import hosttasks as tasks
from gpupass.backends.esxi import lean, wire
from gpupass.backends.esxi.connection import count_requests, open_session, parse_uri
from gpupass.backends.esxi.errors import OutcomeUnknown, TaskUnfinished, translate
from gpupass.backends.esxi.state import EsxiState, VmPlan, from_raw
from gpupass.backends.esxi.steps import (EndIntent, ExitMaintenance, HostGraphicsChange, Intent, Passthrough,
                                         Reboot, Reconfigure, VgpuReconfigure)
from gpupass.core.domain.claims import (Holder, Verdict, decide_written, new_claim, number_for_write,
                                        stale_holdings)
from gpupass.core.domain.context import Capabilities, CheckContext
from gpupass.core.domain.findings import FeatureLoss
from gpupass.core.domain.inventory import Firmware, HostFacts, Vm
from gpupass.core.domain.mmio import GiB, MmioPolicy
from gpupass.core.domain.pci import PciAddress
from gpupass.core.domain.request import ReleaseOptions
from gpupass.core.domain.plan import Plan, Step
from gpupass.core.domain.sharing import ShareMode
from gpupass.core.ports import Backend, StepState
from gpupass.core.target import Target
from gpupass.core.errors import (AuthenticationFailed, Conflict, ConnectionFailed, GpupassError, NotFound, NotSupported,
                                 OperationFailed, UsageError)

DYNAMIC_MIN_API = (7, 0)
# How long gpupass waits for a vSphere task to end (seconds), unless the host's options table says task_timeout_s: a
# reconfigure or a host task queued behind others on a busy vCenter may take minutes; past this the task's outcome is
# said to be not known, never assumed.
TASK_TIMEOUT_S = 1800.0
log = logging.getLogger("gpupass.esxi")


def _api_tuple(text: str) -> tuple[int, ...]:
    out = []
    for part in (text or "0").split("."):
        out.append(int(part) if part.isdigit() else 0)
    return tuple(out)


def _api_release(version_name: str) -> tuple[int, ...]:
    """The vSphere API release a pyVmomi version name stands for: "vim.version.v7_0_3_0" -> (7, 0, 3, 0); an older
    "vim.version.versionN" name by the release pyVmomi gives it (wire.VIM25_VERSIONS, checked against pyVmomi's
    versionIdMap: version15 is 6.7.3, version13 6.7.1, version11 6.5; "2.5u2server" counts as 2.5)."""
    name = version_name.rsplit(".", 1)[-1]
    if name.startswith("v") and "_" in name:
        return _api_tuple(name[1:].replace("_", "."))
    release = next((vid for vid, full in wire.VIM25_VERSIONS if full == version_name), None)
    if release is None:
        return (5,)
    return _api_tuple(re.sub(r"[^0-9.].*$", "", release).rstrip(".") or "0")


def _clear_intent(changes: dict[str, Any], raw: VmPlan, steps: Sequence[Step]) -> None:
    """The VM's change, the last step of an assign, removes the intent record: this run's (written before its host
    steps), or one a stopped run left there, which this run finishes. "Keys with empty values will be removed"
    (VirtualMachineConfigSpec.extraConfig)."""
    if steps or esxi_claims.INTENT_KEY in raw.extra:
        changes["extra"][esxi_claims.INTENT_KEY] = ""


def _state(facts: HostFacts) -> EsxiState:
    if not isinstance(facts.state, EsxiState):
        raise OperationFailed("these facts carry no vSphere configuration to plan from",
                              remedy="read the host again (or take a new snapshot of it)", rolled_back=True)  # a plan
    return facts.state


class EsxiBackend(Backend):
    platform = "esxi"
    schemes = ("esxi",)
    # vSphere's API is HTTPS on 443 unless the URI says otherwise (connection.parse_uri; pyVim SmartConnect's port).
    default_ports = {"esxi": 443}
    description = "VMware ESXi / vCenter through the vSphere API (pyvmomi): VMDirectPath I/O devices"
    sdk_modules = ("pyVmomi",)
    extra = "esxi"
    # Without pciPassthru.use64bitMMIO a VM maps at most 917504 pages of 4 KiB (3.5 GiB) of passthrough
    # BARs (real vmware.log: "PCIPassthru: total number of pages needed (4206594) exceeds limit (917504),
    # failing", Dell KB 000199172, tests/fixtures/real/esxi/); beyond that gpupass sets use64bitMMIO and
    # pciPassthru.64bitMMIOSizeGB (whole GB, a power of two), never below the 32 GB assumed as its default.
    mmio_policy = MmioPolicy(default_window=32 * GiB, granularity=GiB, budget_without_window=917504 * 4096)
    capabilities = Capabilities(host_passthrough_switch=True, dynamic_binding=True, hide_hypervisor=True,
                                firmware_change=True, live_attach=False, share_modes=(ShareMode.VGPU_PROFILE,))
    native_settings = {
        "firmware": "config.firmware = bios | efi",
        "memory_reservation": "memoryReservationLockedToMax (full reservation)",
        "mmio_window": "extraConfig pciPassthru.use64bitMMIO + pciPassthru.64bitMMIOSizeGB",
        "hide_hypervisor": "extraConfig hypervisor.cpuid.v0 = FALSE (folklore, opt-in)",
        "binding": "VirtualPCIPassthrough DeviceBackingInfo (host address) or DynamicBackingInfo (vendor/device)",
        "stop_action": "host autostart/shutdown policy (HostAutoStartManager)",
    }

    def __init__(self, target: Target) -> None:
        super().__init__(target)
        self._endpoint = parse_uri(target.uri)
        self._wire: Any = None  # the logged-in session (wire.Session): what the inventory reads through
        self._si: Any = None  # pyVmomi's ServiceInstance on that session, made when a write needs it
        self._si_wire: Any = None
        self._content: Any = None
        self._content_session: Any = None
        self._api = ""
        self._root: Any = None
        self._root_wire: Any = None
        self._hosts: dict[str, inv.HostRaw] = {}
        self._before: dict[str, dict[str, Any]] = {}
        # VM -> what this session's last reconfigure of it wrote (_written): its take-back sets back only that
        self._wrote: dict[str, dict[str, Any]] = {}
        # (VM, the plan's changeVersion) -> the version this run's own intent record left it at
        self._versions: dict[tuple[str, Any], Any] = {}
        self._vms: dict[str, inv.VmRaw] = {}
        self._view: Any = None  # the inventory's ContainerView, kept for the session (see inv.container_view)
        self._view_session: Any = None
        # A VM read after this session's last write of it (the claim check's read): read_back needs no other.
        self._fresh: dict[str, Vm | None] = {}
        # host -> its graphics configuration as a graphics step found it (what observe() hands to an undo)
        self._graphics_before: dict[str, dict[str, Any]] = {}
        # host -> a RebootHost_Task of this run was sent there and the host is not known back yet
        self._rebooting: dict[str, bool] = {}
        # host -> why a host task this run sent there has not settled (hosttasks.py): no undo writes to it
        self._unsettled: dict[str, str] = {}
        # A bad value is said when the host is opened, not mid-run (after the intent and the passthrough switch).
        self._seconds_option("reboot_timeout_s", 900.0)
        self._seconds_option("maintenance_timeout_s", 600.0)
        self._seconds_option("task_timeout_s", TASK_TIMEOUT_S)
        # VM -> (task, action) of this run that had not ended when gpupass stopped waiting (_wait): still running,
        # it makes the step's read-back "not known" and keeps every undo from writing
        self._unfinished: dict[str, tuple[Any, str]] = {}

    # -- connection -------------------------------------------------------------------------------
    @property
    def _service_content(self) -> Any:
        """pyVmomi's ServiceContent, for the writes: read from the login's own RetrieveServiceContent answer
        (no request). Tied to the session: after a new login (a direct ESXi host rebooted) it is read again."""
        si = self._session
        if self._content is None or self._content_session is not si:
            self._content = self._call("reading the service content", self._wire.pyvmomi_content)
            self._content_session = si
        return self._content

    def _count(self) -> None:
        self.round_trips += 1

    @property
    def _lean(self) -> Any:
        """The logged-in session (logs in on first use): wire.Session, no pyVmomi."""
        if self._wire is None:
            self._wire = open_session(self.target, self._count)
            self._api = self._wire.version_name  # negotiated at login
        return self._wire

    @property
    def _session(self) -> Any:
        """pyVmomi's ServiceInstance on the same session (its cookie: no second login), every request counted."""
        session = self._lean
        if self._si is None or self._si_wire is not session:
            from pyVmomi import vim

            stub = session.pyvmomi_stub()
            count_requests(stub, self._count)
            self._si, self._si_wire = vim.ServiceInstance("ServiceInstance", stub), session
        return self._si

    def _bound(self, value: Any) -> Any:
        """The pyVmomi object for what the inventory read (a reference, a passthrough device), on this session."""
        if isinstance(value, (lean.Ref, lean.Data)) or (isinstance(value, list) and value
                                                         and isinstance(value[0], (lean.Ref, lean.Data))):
            return lean.to_pyvmomi(value, self._session._stub)
        return value

    def ex_api_version(self) -> tuple[int, ...]:
        _ = self._lean  # logs in if needed: the version is negotiated at login
        return _api_release(self._api)  # "vim.version.v7_0_3_0" / "vim.version.version15"

    def _call(self, action: str, function: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        try:
            return function(*args, **kwargs)
        except GpupassError:
            raise
        except Exception as exc:  # noqa: BLE001 - pyvmomi raises faults as exceptions; translated by type
            raise self._lost(exc, translate(exc, action, timeout=self.target.timeout, host=self._endpoint.host)) \
                from exc

    def _lost(self, cause: BaseException, error: GpupassError) -> GpupassError:
        """A request that got no answer (a connection closed, reset or timed out) leaves its session unused from then
        on: the endpoint may have died with it and started again without the sessions it held (vpxd and hostd keep
        them in memory: assumed, as vcsim's /gpupass/restart models it), and a read-back over the old cookie would
        then fail NotAuthenticated. The next call logs in again (its cost: one Login); the error is returned as is."""
        if isinstance(error, ConnectionFailed) and isinstance(cause, (OSError, http.client.HTTPException)):
            self._drop_session()
        return error

    def _root_folder(self) -> Any:
        """The datacenter the URI names (or the root folder): a reference, found once per session."""
        session = self._lean
        if self._root is None or self._root_wire is not session:
            if self._endpoint.datacenter:
                dc = self._call("finding the datacenter", session.find_by_inventory_path, self._endpoint.datacenter)
                if dc is None:
                    raise NotFound(f"no datacenter {self._endpoint.datacenter!r} at {self._endpoint.host}",
                                   remedy="the path after the host in the URI names the datacenter")
                self._root = dc
            else:
                self._root = session.content["rootFolder"]
            self._root_wire = session
        return self._root

    def close(self) -> None:
        """Logout (pyVim's Disconnect without reading the ServiceContent again), then drop the connections."""
        if self._wire is not None:
            try:
                self._wire.logout()
            except Exception:  # noqa: BLE001 - the session may already be gone
                pass
        self._drop_session()

    def _inventory_view(self) -> Any:
        """The session's ContainerView of hosts, compute resources and VMs (a reference): made once, read through
        by every inventory and by the claim check after a write, so each of those is one RetrievePropertiesEx."""
        session = self._lean
        if self._view is None or self._view_session is not session:
            root = self._root_folder()
            self._view = self._call("creating a view of the inventory", session.create_container_view, root,
                                    inv.VIEW_KINDS)
            self._view_session = session
        return self._view

    # -- inventory --------------------------------------------------------------------------------
    def inventory(self) -> HostFacts:
        view = self._inventory_view()
        props = inv.properties(rebind_known=self.ex_api_version() >= (7, 0),
                               graphics_known=self.ex_api_version() >= vgpu.GRAPHICS_MIN_API)
        with collect.collector_paused():  # the answer's tree and objects are no garbage (collect.collector_paused)
            objects = self._call("reading the inventory", lean.retrieve, self._wire, view, props, inv.MAX_OBJECTS,
                                 self._pyvmomi_result)
            facts, hosts, vms = self._call("reading the inventory", inv.read, objects, self.target.uri,
                                           self.platform, self.target.name or self._endpoint.host)
        # the references and devices for apply() (bound to pyVmomi when a write needs them); the planner reads
        # only facts.state
        self._hosts, self._vms = hosts, vms
        self._unsettled.clear()  # a new run reads the host first: what an earlier run left is in the facts now
        state = from_raw(self.ex_api_version(), self._api, hosts, vms)
        return self._with_unfinished(replace(facts, state=state))

    def _pyvmomi_result(self, body: bytes, why: Exception) -> tuple[list[Any], str | None]:
        """An inventory answer the lean reader does not read exactly, read by pyVmomi (collect.read) from the
        same bytes: (ObjectContents, token)."""
        from pyVmomi import VmomiSupport

        from gpupass.backends.esxi import collect

        log.debug("lean reader: %s; pyVmomi reads this answer", why)
        info = VmomiSupport.GetWsdlType(lean.VIM, "PropertyCollector")._GetMethodInfo("RetrievePropertiesEx")
        result = collect.read(self._session._stub, info, body,
                              devices=(VmomiSupport.GetWsdlType(lean.VIM, lean.KEPT_DEVICE),))
        return (list(result.objects), result.token) if result is not None else ([], None)

    @staticmethod
    def _stopped_release(vm: str, intent: dict[str, Any], facts: HostFacts) -> str:
        """What a release stopped after its reconfigure left: the VM holds none of its devices; each passthrough
        switch-back it meant to make, said as the host has it now."""
        state = facts.state if isinstance(facts.state, EsxiState) else None
        told = []
        for host, ids in intent["off"].items():
            enabled = state.hosts[host].enabled if state is not None and host in state.hosts else {}
            for i in ids:
                told.append(f"passthrough of {i} on host {host} is "
                            + ("still on" if enabled.get(i) else "off" if i in enabled else "not known"))
        gpus = " ".join(intent["gpus"])
        return (f"a release of {', '.join(intent['gpus'])} started by {intent['origin']} stopped "
                f"before its last step (steps: {'; '.join(intent['steps'])}); the VM no longer holds them; "
                + "; ".join(told) + f": run `gpupass release HOST {vm} {gpus} --disable-host-passthrough` again to "
                "finish (it switches off what is still on and removes this record)")

    def _with_unfinished(self, facts: HostFacts) -> HostFacts:
        """What runs that stopped mid-way left in the VMs (intent records, claims), for `status`."""
        import dataclasses

        notes: dict[str, list[str]] = {}
        holders = []
        for name, raw in self._vms.items():
            claim = esxi_claims.decode(name, raw.extra.get(esxi_claims.CLAIM_KEY))
            if claim is not None and claim.choosing:
                notes.setdefault(name, []).append(
                    f"an assign started by {claim.origin} stopped before its change was written; any `gpupass "
                    "assign` or `release` of this VM clears it")
            intent = esxi_claims.decode_intent(raw.extra.get(esxi_claims.INTENT_KEY))
            if intent is not None and intent["op"] == "release":
                notes.setdefault(name, []).append(self._stopped_release(name, intent, facts))
            elif intent is not None and intent["op"] == "assign-share":
                notes.setdefault(name, []).append(
                    f"a vGPU assign of {', '.join(intent['gpus'])} started by {intent['origin']} stopped before its "
                    f"last step (steps: {'; '.join(intent['steps'])}); the host's graphics configuration may hold the "
                    "first of them and the VM has no vGPU from it: run the same `gpupass assign --share` again to "
                    "finish, or set the host's graphics configuration back by hand (vSphere Client: Configure > "
                    "Hardware > Graphics)")
            elif intent is not None:
                # the maintenance mode the run entered for its reboot, where the host is still in it
                held = [h for h in intent["maintenance"] if h in self._hosts and self._hosts[h].maintenance]
                notes.setdefault(name, []).append(
                    f"an {intent['op']} of {', '.join(intent['gpus'])} started by {intent['origin']} stopped before "
                    f"its last step (steps: {'; '.join(intent['steps'])}); the host may hold the first of them"
                    + "".join(f"; host {h} is in maintenance mode, where the run put it for its reboot" for h in held)
                    + ": run the same `gpupass assign` again to finish"
                    + (" (it takes the host out of maintenance mode)" if held else "")
                    + ", or `gpupass status`/`gpus` to see the host's passthrough state and switch it back by hand")
            host = self._hosts.get(raw.host)
            for device in inv.passthrough_devices(raw.devices):
                backing_id = getattr(device.backing, "id", None)
                if backing_id and host is not None:
                    key = esxi_claims.device_key(host.ref._moId, backing_id)
                    holders.append(Holder(name, key, claim if claim is not None and not claim.choosing
                                          and key in claim.addresses else None))
        claimed = {(h.vm, h.address) for h in holders if h.claim is not None}
        for holder, keeper in stale_holdings(holders):
            address = holder.address.split("/", 1)[1]
            if (keeper, holder.address) not in claimed:  # a holder without a claim wins over every claimant
                notes.setdefault(holder.vm, []).append(
                    f"holds {address}, which VM '{keeper}' holds too: a run stopped before taking back the change "
                    f"that lost; `gpupass release HOST {holder.vm} {address}` finishes it")
                continue
            # Between two claims the host cannot say which run won (decide_written: the run that wrote first
            # and saw nobody, or the one whose claim comes first), so the note names both.
            notes.setdefault(holder.vm, []).append(
                f"holds {address}, which VM '{keeper}' holds too: two assigns ran at the same time and one stopped "
                f"before taking back its change; keep it on the VM whose assign reported success and release it "
                f"from the other (`gpupass release HOST {holder.vm} {address}` or `gpupass release HOST {keeper} "
                f"{address}`)")
        if not notes:
            return facts
        vms = tuple(dataclasses.replace(vm, unfinished=vm.unfinished + tuple(notes[vm.name])) if vm.name in notes
                    else vm for vm in facts.vms)
        return dataclasses.replace(facts, vms=vms)

    def read_back(self, vm: str, devices: Sequence[PciAddress]) -> Vm | None:
        """The VM's properties as the inventory reads them: one RetrievePropertiesEx on that VM only, or none
        after an assign whose claim check read every VM after the write (that read is kept until the next write).

        The devices need no read of their own here: what the VM holds is in its config.hardware.device, and
        a passthrough switch is verified by the host reboot step that activates it.
        """
        from pyVmomi import vmodl

        if vm in self._fresh:  # read after this session's last write of it (the claim check's read)
            return self._fresh.pop(vm)
        raw = self._vms.get(vm)
        if raw is None or raw.ref is None:
            return super().read_back(vm, devices)
        pc = vmodl.query.PropertyCollector
        ref = self._bound(raw.ref)
        spec = pc.FilterSpec(objectSet=[pc.ObjectSpec(obj=ref, skip=False)],
                             propSet=[pc.PropertySpec(type=type(ref), pathSet=inv.VM_PROPS)])
        try:
            result = self._call(f"reading VM {vm!r}", self._service_content.propertyCollector.RetrievePropertiesEx,
                                [spec], pc.RetrieveOptions())
        except NotFound:  # the VM was deleted meanwhile: that is the state to report
            return None
        if result is None or not result.objects:
            return None
        values = {p.name: p.val for p in result.objects[0].propSet}
        host_ref = values.get("runtime.host")
        location = next((name for name, host in self._hosts.items()
                         if host_ref is not None and host.ref._moId == host_ref._moId), "")
        fresh, found = inv.vm_from_properties(raw.ref, values, location, self._hosts.get(location))
        if fresh is not None:
            self._vms[vm] = fresh
        return found

    # -- planning ---------------------------------------------------------------------------------
    def prepare_planned_vm(self, facts: HostFacts, vm: Vm) -> HostFacts:
        """A stand-in for a VM the user's migration tool has not created yet (nothing is sent to vSphere)."""
        state = _state(facts)
        planned = VmPlan(name=vm.name, host=vm.location, moid=None, memory_mb=vm.memory_bytes // (1 << 20),
                         reservation_mb=0, locked=False, firmware=vm.firmware.value)
        return replace(facts, state=replace(state, vms={**state.vms, vm.name: planned}))

    @classmethod
    def state_to_json(cls, state: Any) -> dict[str, Any]:
        return state.to_json() if isinstance(state, EsxiState) else {}

    @classmethod
    def state_from_json(cls, data: dict[str, Any]) -> EsxiState:
        return EsxiState.from_json(data)

    def plan_assign(self, ctx: CheckContext) -> list[Step]:
        vm, options = ctx.vm, ctx.assign_options
        state = _state(ctx.facts)
        raw = state.vms[vm.name]
        if options.dynamic and state.api < DYNAMIC_MIN_API:
            raise NotSupported(
                f"Dynamic DirectPath I/O needs vSphere API 7.0; {self._endpoint.host} speaks {state.api_name}",
                remedy="run without --dynamic (a fixed host address), or upgrade to vSphere 7")
        steps: list[Step] = []
        left = esxi_claims.decode_intent(raw.extra.get(esxi_claims.INTENT_KEY))
        # hosts a stopped run put in maintenance mode for its reboot and left there: this run finishes its step
        left_in_maintenance = {h for h in (left["maintenance"] if left else ()) if h in state.hosts
                               and state.hosts[h].maintenance}
        # vSphere API reference, HostPciPassthruInfo: passthruEnabled "Whether passThru has been configured by the
        # user", passthruActive "Whether passThru is active for this device (meaning enabled + rebooted)". So the
        # enable step is decided by passthruEnabled alone, and whether a reboot (or applyNow) must follow by
        # passthruActive alone: a device active but no longer enabled (switched off after the reboot that made it
        # active, e.g. by the undo of a run that failed later) is passthrough only until the next reboot -- it is
        # enabled again, with no reboot, since the configuration then matches what runs.
        by_host: dict[str, list[str]] = {}  # not active: enabled where needed, then activated
        reenable: dict[str, list[str]] = {}  # active, not enabled: enabled again, nothing to activate
        for gpu in ctx.gpus:
            host_state = state.hosts[gpu.location]
            for function in (gpu.functions if ctx.include_companions else (gpu.function,)):
                pci_id = str(function.address)
                if not host_state.active.get(pci_id, False):
                    by_host.setdefault(gpu.location, []).append(pci_id)
                elif not host_state.enabled.get(pci_id, False):
                    reenable.setdefault(gpu.location, []).append(pci_id)
        steps += [self._reenable_step(host_name, ids) for host_name, ids in reenable.items()]
        for host_name, ids in by_host.items():
            host = state.hosts[host_name]
            if host.rebind and not any(self._enabled(state, host_name, i) for i in ids):
                # ESXi 7.0+ with deviceRebindWithoutRebootSupported: applyNow switches them at once -- unless
                # "the configuration" cannot "be applied immediately" (API reference), e.g. while the VMkernel
                # still holds the device; then, if a reboot is allowed, the reboot follows, else it fails.
                reboot_ok = host.maintenance or options.allow_host_reboot
                steps.append(Step(
                    action="esxi.passthrough",
                    description=f"enable passthrough for {', '.join(ids)} on host {host_name} at once (no reboot: "
                                "the host supports rebinding devices)",
                    undo="disable passthrough for them again (UpdatePassthruConfig passthruEnabled=False, applyNow)",
                    changes=tuple(f"UpdatePassthruConfig {i} passthruEnabled=True applyNow=True" for i in ids),
                    preview=f"HostPciPassthruSystem.UpdatePassthruConfig on {host_name}: "
                            + ", ".join(f"{{id={i}, passthruEnabled=True, applyNow=True}}" for i in ids)
                            + "; then read config.pciPassthruInfo to confirm they are active\n",
                    payload=Passthrough(host_name, tuple(ids), enable=True, apply_now=True,
                                        pending_ok=bool(reboot_ok))))
                if reboot_ok:
                    steps.append(self._reboot_step(host_name, host.maintenance, pending=ids,
                                                   exit_after=host_name in left_in_maintenance, devices=ids))
                continue
            needs_enable = [i for i in ids if not self._enabled(state, host_name, i)]
            if needs_enable:
                steps.append(Step(
                    action="esxi.passthrough",
                    description=f"enable passthrough for {', '.join(needs_enable)} on host {host_name}",
                    undo="disable passthrough for them again (UpdatePassthruConfig passthruEnabled=False)",
                    changes=tuple(f"UpdatePassthruConfig {i} passthruEnabled=True" for i in needs_enable),
                    needs_host_reboot=True,
                    preview=f"HostPciPassthruSystem.UpdatePassthruConfig on {host_name}: "
                            + ", ".join(f"{{id={i}, passthruEnabled=True}}" for i in needs_enable) + "\n",
                    payload=Passthrough(host_name, tuple(needs_enable), enable=True)))
            if host.maintenance or options.allow_host_reboot:
                steps.append(self._reboot_step(host_name, host.maintenance,
                                               exit_after=host_name in left_in_maintenance, devices=ids))
        rebooted = {s.payload.host for s in steps if isinstance(s.payload, Reboot)}
        for host_name in sorted(left_in_maintenance - rebooted):
            steps.append(Step(
                action="esxi.exit-maintenance",
                description=f"take host {host_name} out of the maintenance mode a stopped gpupass run put it in for "
                            "its reboot (the run's intent record in the VM names the host)",
                undo="put it in maintenance mode again (EnterMaintenanceMode_Task)",
                changes=(f"ExitMaintenanceMode_Task on {host_name}",),
                preview=f"on {host_name}: ExitMaintenanceMode_Task\n",
                payload=ExitMaintenance(host_name)))
        devices: list[dict[str, Any]] = []
        for gpu in ctx.gpus:
            for function in (gpu.functions if ctx.include_companions else (gpu.function,)):
                if function.address in vm.assigned:
                    continue
                address = str(function.address)
                devices.append({"address": address, "id": address, "host": gpu.location,
                                "vendor_id": function.vendor_id, "device_id": function.device_id,
                                "name": function.name or gpu.model, "dynamic": bool(options.dynamic)})
        need = ctx.need
        window_gb = None
        if need is not None and not ctx.policy.fits(need, vm.mmio_window_bytes):
            window_gb = ctx.policy.window_for(need) // GiB
        set_efi = bool(need and need.is_large and vm.firmware is Firmware.BIOS and options.allow_firmware_change)
        changes = specs.assign_changes(raw, devices, window_gb=window_gb, set_efi=set_efi,
                                       hide=options.hide_hypervisor)
        summary = [f"add VirtualPCIPassthrough {d['address']}" + (" (dynamic)" if d["dynamic"] else "")
                   for d in devices]
        summary.append(f"lock the memory reservation to {raw.memory_mb} MB")
        if window_gb:
            summary.append(f"pciPassthru.use64bitMMIO=TRUE, pciPassthru.64bitMMIOSizeGB={window_gb}")
        if set_efi:
            summary.append("firmware bios -> efi")
        if options.hide_hypervisor:
            summary.append("hypervisor.cpuid.v0=FALSE")
        if steps:
            # Host steps come first and the VM's change last: a run stopped in between leaves the host changed
            # and the VM not. An intent record in the VM, written before the first host step and removed by the
            # VM's reconfigure, lets `status` say so (and how to finish or revert).
            leaves = sorted({s.payload.host for s in steps if isinstance(s.payload, ExitMaintenance)
                             or isinstance(s.payload, Reboot) and (s.payload.enter_maintenance or s.payload.exit_after)})
            intent = esxi_claims.encode_intent("assign", [d["address"] for d in devices],
                                               [s.description for s in steps], leaves)
            steps.insert(0, self._intent_step(vm.name, raw, intent))
        _clear_intent(changes, raw, steps)
        steps.append(self._reconfig_step(vm.name, raw, changes, f"reconfigure VM '{vm.name}' (one ReconfigVM_Task)",
                                         tuple(summary)))
        return steps

    @staticmethod
    def _reenable_step(host_name: str, ids: Sequence[str]) -> Step:
        """Passthrough enabled again for devices active but switched off since the reboot that made them active."""
        return Step(
            action="esxi.passthrough",
            description=f"enable passthrough again for {', '.join(ids)} on host {host_name} (active, but switched "
                        "off since the reboot that made it active: without this, passthrough ends at the next "
                        "reboot; no reboot needed)",
            undo="disable passthrough for them again (UpdatePassthruConfig passthruEnabled=False)",
            changes=tuple(f"UpdatePassthruConfig {i} passthruEnabled=True" for i in ids),
            preview=f"HostPciPassthruSystem.UpdatePassthruConfig on {host_name}: "
                    + ", ".join(f"{{id={i}, passthruEnabled=True}}" for i in ids) + "\n",
            payload=Passthrough(host_name, tuple(ids), enable=True))

    def plan_finish_assign(self, ctx: CheckContext) -> list[Step]:
        """An assign of GPUs VM ctx.vm holds already: a device it holds that is passthrough-active on its host but no
        longer enabled (HostPciPassthruInfo: passthruActive "meaning enabled + rebooted", passthruEnabled "Whether
        passThru has been configured by the user") ends as passthrough at the host's next reboot, and the VM then
        does not power on; it is enabled again, which needs no reboot (the configuration then matches what runs)."""
        state = _state(ctx.facts)
        reenable: dict[str, list[str]] = {}
        for gpu in ctx.gpus:
            host_state = state.hosts.get(gpu.location)
            if host_state is None:
                continue
            for function in (gpu.functions if ctx.include_companions else (gpu.function,)):
                pci_id = str(function.address)
                if function.address in ctx.vm.assigned and host_state.active.get(pci_id, False) \
                        and not host_state.enabled.get(pci_id, False):
                    reenable.setdefault(gpu.location, []).append(pci_id)
        return [self._reenable_step(host_name, ids) for host_name, ids in reenable.items()]

    @staticmethod
    def _intent_step(vm: str, raw: VmPlan, intent: str) -> Step:
        """The first step of an assign with host steps: its intent record written in the VM before them (removed by
        the VM's reconfigure, its last step), guarded by the changeVersion the plan read; its undo puts back the
        record a stopped run had left there, if any."""
        return Step(
            action="esxi.intent",
            description=f"record in VM '{vm}' that this assign has begun (extraConfig {esxi_claims.INTENT_KEY}; "
                        "removed by its last step)",
            undo=f"remove extraConfig {esxi_claims.INTENT_KEY}",
            changes=(f"extraConfig {esxi_claims.INTENT_KEY}",),
            payload=Intent(vm, intent, raw.change_version, previous=raw.extra.get(esxi_claims.INTENT_KEY, "")))

    def _reboot_step(self, host_name: str, in_maintenance: bool, pending: list[str] | None = None,
                     exit_after: bool = False, devices: Sequence[str] = ()) -> Step:
        """A reboot that never stops a running VM: force=False always, and a host that is not in maintenance
        mode is put there first. EnterMaintenanceMode_Task "completes once there are no powered-on virtual
        machines on the host"; it "does not directly initiate any operation to evacuate or power-down
        powered-on virtual machines" (DRS may migrate them), and with a timeout it fails with a Timeout
        fault (vSphere API reference, HostSystem.EnterMaintenanceMode_Task). RebootHost_Task(force=False)
        reboots only a host in maintenance mode (force: "rebooted regardless of whether it is in maintenance
        mode"). gpupass takes the host out of maintenance mode again once it is back, if it put it there."""
        enter = not in_maintenance
        when = f"only if {', '.join(pending)} are not active: " if pending is not None else ""
        steps = ["EnterMaintenanceMode_Task (waits for its VMs to be migrated or powered off; fails if they "
                 "are not)"] if enter else []
        steps += ["RebootHost_Task force=False", "wait until it is back"]
        if enter or exit_after:
            steps.append("ExitMaintenanceMode_Task")
        return Step(
            action="esxi.reboot",
            description=f"reboot host {host_name}" + (" only if it left the change for a reboot" if pending is not None
                                                      else " so passthrough becomes active")
            + (" (it enters maintenance mode first, which a host with running VMs only does once they are "
               "migrated or off; the reboot is never forced)" if enter else "")
            + (" (it is in maintenance mode, where a stopped gpupass run put it for this reboot: taken out after)"
               if exit_after else ""),
            undo="nothing to undo: a reboot cannot be taken back",
            changes=(when + ", then ".join(steps),),
            needs_host_reboot=True,
            preview=(f"read config.pciPassthruInfo of {host_name}; {when}" if pending is not None else "")
            + f"on {host_name}: " + "; ".join(steps) + "\n",
            payload=Reboot(host_name, enter, tuple(pending) if pending is not None else None, exit_after=exit_after,
                           devices=tuple(devices)))

    @staticmethod
    def _enabled(state: EsxiState, host: str, pci_id: str) -> bool:
        return bool(state.hosts[host].enabled.get(pci_id))

    def plan_release(self, ctx: CheckContext) -> list[Step]:
        vm = ctx.vm
        state = _state(ctx.facts)
        raw = state.vms[vm.name]
        addresses = {str(a) for a in ctx.addresses if a in vm.assigned}
        changes = specs.release_changes(raw, addresses)
        switch_off: dict[str, list[str]] = {}
        if isinstance(ctx.request.options, ReleaseOptions) and ctx.request.options.disable_host_passthrough:
            for gpu in ctx.gpus:
                switch_off.setdefault(gpu.location, []).extend(str(f.address) for f in gpu.functions)
        host_steps = self._switch_off_steps(state, switch_off)
        intent = None
        if host_steps:
            # The host's switch-back comes after the VM's reconfigure: a run stopped in between leaves the device
            # released and passthrough on. The intent record goes in the same ReconfigVM_Task (no extra call) and a
            # last step removes it, so `status` shows a stopped release and the same release again finishes it
            # (plan_finish_release).
            named = sorted(f"{g.location}/{g.address}" for g in ctx.gpus)  # as a rerun names them
            intent = esxi_claims.encode_intent("release", named, [s.description for s in host_steps],
                                               switch_off=switch_off)
            changes["extra"][esxi_claims.INTENT_KEY] = intent
        steps = [self._reconfig_step(vm.name, raw, changes, f"reconfigure VM '{vm.name}' (one ReconfigVM_Task)",
                                     tuple(f"remove VirtualPCIPassthrough {a}" for a in sorted(addresses))
                                     + ("restore the recorded reservation, MMIO and firmware settings",)
                                     + ((f"record the host steps that follow (extraConfig {esxi_claims.INTENT_KEY}; "
                                         "removed by the last step)",) if intent else ()))]
        steps += host_steps
        if intent is not None:
            steps.append(self._end_intent_step(vm.name, intent))
        return steps

    def plan_finish_release(self, ctx: CheckContext) -> list[Step]:
        """A release killed between its reconfigure and its passthrough switch-back left its intent record in the
        VM: the same release (with --disable-host-passthrough) switches off what is still on -- never a device a
        VM holds now -- and removes the record."""
        state = _state(ctx.facts)
        raw = state.vms[ctx.vm.name]
        text = raw.extra.get(esxi_claims.INTENT_KEY)
        left = esxi_claims.decode_intent(text)
        options = ctx.request.options
        if (left is None or text is None or left["op"] != "release" or not isinstance(options, ReleaseOptions)
                or not options.disable_host_passthrough):
            return []
        held = {(g.location, str(f.address)) for g in ctx.facts.gpus if g.assigned_to for f in g.functions}
        still_on = {host: [i for i in ids if state.hosts[host].enabled.get(i) and (host, i) not in held]
                    for host, ids in left["off"].items() if host in state.hosts}
        return [*self._switch_off_steps(state, {h: ids for h, ids in still_on.items() if ids}),
                self._end_intent_step(ctx.vm.name, text)]

    @staticmethod
    def _switch_off_steps(state: EsxiState, by_host: dict[str, list[str]]) -> list[Step]:
        steps = []
        for host_name, ids in by_host.items():
            if state.hosts[host_name].rebind:
                steps.append(Step(
                    action="esxi.passthrough",
                    description=f"disable passthrough for {', '.join(ids)} on host {host_name} at once "
                                "(the host supports rebinding devices)",
                    undo="enable passthrough for them again",
                    changes=tuple(f"UpdatePassthruConfig {i} passthruEnabled=False applyNow=True" for i in ids),
                    payload=Passthrough(host_name, tuple(ids), enable=False, apply_now=True)))
                continue
            steps.append(Step(
                action="esxi.passthrough",
                description=f"disable passthrough for {', '.join(ids)} on host {host_name} "
                            "(takes effect at its next reboot)",
                undo="enable passthrough for them again",
                changes=tuple(f"UpdatePassthruConfig {i} passthruEnabled=False" for i in ids),
                needs_host_reboot=True,
                payload=Passthrough(host_name, tuple(ids), enable=False)))
        return steps

    @staticmethod
    def _end_intent_step(vm: str, intent: str) -> Step:
        return Step(
            action="esxi.end-intent",
            description=f"remove the release's record from VM '{vm}' (extraConfig {esxi_claims.INTENT_KEY}): "
                        "its host steps are done",
            undo=f"put extraConfig {esxi_claims.INTENT_KEY} back",
            changes=(f"extraConfig {esxi_claims.INTENT_KEY} removed",),
            preview=f"ReconfigVM_Task on VM '{vm}': extraConfig {esxi_claims.INTENT_KEY} -> (removed)\n",
            payload=EndIntent(vm, intent))

    def _reconfig_step(self, name: str, raw: VmPlan, changes: dict[str, Any], description: str,
                       summary: tuple[str, ...]) -> Step:
        return Step(
            action="esxi.reconfigure",
            description=description,
            undo="reconfigure the VM back with the inverse ConfigSpec (devices, reservation, extraConfig, firmware)",
            changes=summary,
            needs_vm_off=True,
            preview=specs.preview(name, raw.host, raw, changes),
            payload=Reconfigure(name, raw.host, changes, raw.change_version))

    # -- vGPU shares (shares.py) ----------------------------------------------------------------------
    def plan_assign_share(self, ctx: CheckContext) -> list[Step]:
        vm = ctx.vm
        raw = _state(ctx.facts).vms[vm.name]
        (change,) = ctx.shares
        profile = change.type.id
        if profile in raw.vgpus:
            return []  # the VM holds one already: ESXi puts it on a GPU at power-on, wherever it fits
        changes = vgpu_shares.assign_changes(raw, profile, str(change.gpu))
        steps = self._graphics_for_share(ctx)
        if steps:
            # As in plan_assign: the host step first, the VM's change last, so a run stopped in between leaves the
            # host's graphics changed and the VM without its vGPU; the intent record written before the host step and
            # removed by the VM's reconfigure lets `status` say so, and the same assign again finishes.
            intent = esxi_claims.encode_intent("assign-share", [f"{change.location}/{change.gpu}"],
                                               [s.description for s in steps])
            steps.insert(0, self._intent_step(vm.name, raw, intent))
        _clear_intent(changes, raw, steps)
        return [*steps, self._vgpu_step(raw, changes, f"give VM '{vm.name}' a {profile} vGPU (one ReconfigVM_Task)",
                                        (f"add VirtualPCIPassthrough with vGPU profile {profile} (VmiopBackingInfo)",
                                         f"lock the memory reservation to {raw.memory_mb} MB (a vGPU VM powers on "
                                         "only with all its memory reserved)"))]

    @staticmethod
    def _graphics_for_share(ctx: CheckContext) -> list[Step]:
        """The host step that puts the GPU in shared direct mode first, where its Sharing says the host must
        (vgpu.sharing_of: a GPU in shared mode) and the request allows it (the core's share-host-change rules):
        this device's type set to sharedDirect, the rest of the host's configuration as it is (graphics.py)."""
        (change,) = ctx.shares
        gpu = next(g for g in ctx.gpus if g.address == change.gpu and g.location == change.location)
        if not gpu.sharing.host_change or not ctx.assign_options.allow_host_sharing_change:
            return []
        current = ctx.facts.host.settings.get("hosts", {}).get(gpu.location, {}).get("graphics") or {}
        device = vgpu.device_id(current, gpu.address)
        if device is None:
            return []
        default, policy, devices = host_graphics.wanted_config(current, None, None, {device: vgpu.SHARED_DIRECT})
        step = host_graphics.step(gpu.location, current, default, policy, devices)
        return [step] if step is not None else []

    def plan_release_share(self, ctx: CheckContext) -> list[Step]:
        vm = ctx.vm
        raw = _state(ctx.facts).vms[vm.name]
        removals: list[tuple[int, str]] = []
        for change in ctx.shares:
            share = change.share
            if share is None:
                continue
            index = vgpu_shares.index_of(share.id, vm.name)
            if index is None and share.type_id in raw.vgpus:
                index = raw.vgpus.index(share.type_id) + 1
            if index is not None and (index, share.type_id) not in removals:
                removals.append((index, share.type_id))
        if not removals:
            return []
        changes = vgpu_shares.release_changes(raw, removals)
        summary = tuple(f"remove the {profile} vGPU" for _, profile in removals)
        if changes["reservation_mb"] is not None:
            summary += ("restore the recorded memory reservation",)
        return [self._vgpu_step(raw, changes, f"take back {len(removals)} vGPU(s) from VM '{vm.name}' (one "
                                "ReconfigVM_Task)", summary)]

    def _vgpu_step(self, raw: VmPlan, changes: dict[str, Any], description: str, summary: tuple[str, ...]) -> Step:
        return Step(
            action="esxi.vgpu",
            description=description,
            undo="reconfigure the VM back with the inverse ConfigSpec (its vGPUs, reservation and record)",
            changes=summary,
            needs_vm_off=True,
            preview=specs.preview(raw.name, raw.host, raw, changes),
            payload=VgpuReconfigure(raw.name, raw.host, changes, raw.change_version))

    def _reconfigure_vgpu(self, payload: VgpuReconfigure) -> dict[str, Any]:
        """ONE ReconfigVM_Task guarded by the changeVersion the plan read (see _reconfigure); no claim."""
        name = payload.vm
        # the version the plan read, or the one this run's own intent record left (see _reconfigure)
        expected = self._versions.pop((name, payload.change_version), payload.change_version)
        before = self._config_at(name, expected)
        self._before[name] = before
        wanted = [entry["vgpu"] for entry in payload.changes["add"]]
        if wanted:
            # the profiles the VM's host offers, as the vSphere Client lists them (QueryConfigTarget,
            # sharedGpuPassthroughTypes): a profile gone since the plan is refused before anything is sent
            raw = self._hosts[payload.host]
            target = self._call(f"querying the vGPU profiles of {payload.host}",
                                self._bound(raw.environment_browser).QueryConfigTarget, self._bound(raw.ref))
            offered = {str(t.vgpu) for t in (target.sharedGpuPassthroughTypes or ())}
            missing = [p for p in wanted if p not in offered]
            if missing:
                raise OperationFailed(f"host {payload.host} does not offer vGPU profile {', '.join(missing)} now; "
                                      "nothing was changed",
                                      remedy="`gpupass gpus HOST` lists the profiles each GPU offers (host graphics "
                                             "must be shared direct)", rolled_back=True)  # refused before sending
        config = specs.build(dict(payload.changes), before["devices"], {})
        config.changeVersion = expected
        self._send(name, config, before)
        return before

    # -- host graphics configuration (graphics.py) -----------------------------------------------------
    def ex_plan_host_graphics(self, facts: HostFacts, host: str, *, default_type: str | None = None,
                              assignment_policy: str | None = None,
                              device_types: dict[str, str | None] | None = None) -> Plan:
        """A plan that switches host `host`'s graphics configuration (default type shared | sharedDirect, shared
        passthrough assignment policy performance | consolidation, per-device types; None drops a device's
        override) and restarts Xorg so it takes effect; carried out by `gpupass.core.service.execute` like any plan
        (a failure sets the old configuration back). Blocked where a GPU running vGPU VMs would leave shared
        direct, as the host refuses it. No step where the host already runs that configuration."""
        hosts = facts.host.settings.get("hosts", {})
        if host not in hosts:
            raise NotFound(f"no host {host!r} at {self._endpoint.host}",
                           remedy="`gpupass gpus HOST` names each ESXi host before its GPUs")
        current = hosts[host].get("graphics")
        if current is None:
            raise NotSupported(f"host graphics configuration is not supported on {host}: it needs vSphere API "
                               f"{'.'.join(map(str, vgpu.GRAPHICS_MIN_API))} (HostGraphicsConfig)",
                               remedy="upgrade the host, or set its graphics in the vSphere Client")
        default, policy, devices = host_graphics.wanted_config(current, default_type, assignment_policy, device_types)
        step = host_graphics.step(host, current, default, policy, devices)
        found = host_graphics.findings(host, current, default, devices)
        if step is not None:
            found.append(host_graphics.note_restart(host))
        return Plan(operation="host-graphics", host=self.target.label, platform=self.platform, vm="", gpus=(),
                    steps=(step,) if step is not None else (), findings=tuple(found))

    def _graphics_manager(self, host: str) -> Any:
        ref = self._host_ref(host)
        return self._call(f"reading host {host}", lambda: ref.configManager.graphicsManager)

    def _graphics_config(self, host: str) -> dict[str, Any]:
        """The host's configured graphics (graphicsConfig) as plain data: the undo token of a graphics step."""
        config = self._call(f"reading the graphics configuration of {host}",
                            lambda: self._graphics_manager(host).graphicsConfig)
        return {"default_type": str(config.hostDefaultGraphicsType),
                "assignment_policy": str(config.sharedPassthruAssignmentPolicy),
                "device_types": tuple(sorted((str(d.deviceId), str(d.graphicsType)) for d in config.deviceType or ()))}

    def _set_graphics(self, host: str, default: str, policy: str, devices: Sequence[tuple[str, str]],
                      restart_xorg: bool) -> None:
        from pyVmomi import vim

        config = vim.host.GraphicsConfig(
            hostDefaultGraphicsType=default, sharedPassthruAssignmentPolicy=policy,
            deviceType=[vim.host.GraphicsConfig.DeviceType(deviceId=d, graphicsType=t) for d, t in devices])
        manager = self._graphics_manager(host)
        self._call(f"changing the graphics configuration of {host}", manager.UpdateGraphicsConfig, config)
        if restart_xorg:
            ref = self._host_ref(host)
            services = self._call(f"reading host {host}", lambda: ref.configManager.serviceSystem)
            self._call(f"restarting Xorg on {host}", services.RestartService, "xorg")

    def _active_graphics(self, host: str) -> dict[str, str]:
        ref = self._host_ref(host)
        infos = self._call(f"reading the graphics devices of {host}", lambda: ref.config.graphicsInfo)
        return {str(i.pciId): str(i.graphicsType) for i in infos or ()}

    def _apply_graphics_change(self, payload: HostGraphicsChange) -> dict[str, Any]:
        before = self._graphics_config(payload.host)
        self._graphics_before[payload.host] = before
        try:
            self._set_graphics(payload.host, payload.default_type, payload.assignment_policy, payload.device_types,
                               payload.restart_xorg)
            if payload.restart_xorg:
                wanted = dict(payload.device_types)
                stale = sorted(d for d, t in self._active_graphics(payload.host).items()
                               if host_graphics.effective_type(d, t, payload.default_type, wanted) != t)
                if stale:
                    # caught just below, which sets the configuration back (or says it could not); it goes out as it
                    # is only where the configuration reads back as it was before
                    raise OperationFailed(
                        f"host {payload.host} took the graphics configuration but still runs the old type on "
                        f"{', '.join(stale)} after the Xorg restart",
                        remedy=f"reboot {payload.host} (in maintenance mode) so the configuration takes effect, then "
                               "run the command again", rolled_back=True)
        except GpupassError as error:
            if self._graphics_config(payload.host) == before:
                if isinstance(error, OutcomeUnknown):  # a fault that says nothing; read back, nothing of it is there
                    raise OperationFailed(error.message, remedy=error.remedy, rolled_back=True) from error
                raise  # nothing of it was applied (a lost reply stays one: the host is read again)
            try:  # leave the host as it was: the step failed, so it undoes its own change
                self._set_graphics(payload.host, before["default_type"], before["assignment_policy"],
                                   before["device_types"], payload.restart_xorg)
            except GpupassError as undo_error:
                raise OperationFailed(
                    f"{error.message}; setting the graphics configuration of {payload.host} back failed too "
                    f"({undo_error.message})",
                    remedy=f"set it back by hand: default type {before['default_type']}, policy "
                           f"{before['assignment_policy']}, devices {dict(before['device_types'])} (vSphere Client: "
                           "Configure > Hardware > Graphics), then restart Xorg", rolled_back=False) from error
            raise OperationFailed(f"{error.message}; the graphics configuration of {payload.host} was set back",
                                  remedy=error.remedy, rolled_back=True) from error
        return before

    def features_lost(self, ctx: CheckContext) -> list[FeatureLoss]:
        if ctx.operation == "assign-share":
            return self._vgpu_features_lost()
        dynamic = bool(getattr(ctx.request.options, "dynamic", False))
        why = "a VMDirectPath I/O device ties the VM to its host's physical device"
        return [
            FeatureLoss("vMotion", why),
            FeatureLoss("DRS migration", "DRS cannot move it while powered on" + (
                "; with Dynamic DirectPath DRS can still place it at power-on" if dynamic else "")),
            FeatureLoss("snapshots with memory", "the device state cannot be captured"),
            FeatureLoss("suspend / resume", "the device state cannot be saved"),
            FeatureLoss("Fault Tolerance", "FT does not support passthrough devices"),
            FeatureLoss("HA restart on another host", "unless that host has the same free device"
                        + (" (Dynamic DirectPath)" if dynamic else "; with a fixed address it cannot")),
            FeatureLoss("device hot-add (CPU/memory/PCI)", "hot-add is unavailable with passthrough devices"),
            FeatureLoss("nested virtualization", "exposing hardware virtualization is unsupported with passthrough"),
        ]

    @staticmethod
    def _vgpu_features_lost() -> list[FeatureLoss]:
        # HostSharedGpuCapabilities (vSphere API reference) says per profile whether the host's GPU plugin can
        # migrate, suspend and snapshot with memory; gpupass does not read it yet, so these are "unless".
        return [
            FeatureLoss("vMotion and DRS migration", "only where the host's vGPU plugin supports migration "
                        "(HostSharedGpuCapabilities.migrateSupported) and vCenter allows vGPU vMotion"),
            FeatureLoss("snapshots with memory, suspend / resume", "only where the plugin supports them "
                        "(HostSharedGpuCapabilities.memorySnapshotSupported, suspendSupported)"),
            FeatureLoss("HA restart on another host", "only on a host that offers the same profile with room"),
            FeatureLoss("memory overcommit", "a vGPU VM powers on only with all its memory reserved"),
        ]

    def features_kept(self, ctx: CheckContext) -> list[FeatureLoss]:
        if ctx.operation != "assign-share":
            return []
        return [FeatureLoss("the rest of the GPU", "other VMs keep or get vGPUs of the same profile on it"),
                FeatureLoss("placement", "ESXi picks the GPU at power-on, so the VM is not tied to one device")]

    # -- applying ---------------------------------------------------------------------------------
    # apply, undo and observe pick their handler by the payload's type (backends/esxi/steps.py), never by the
    # step's action label.
    def apply(self, step: Step) -> Any:
        return self._translated(step.description, self._apply, step.payload)

    def observe(self, step: Step) -> StepState:
        """Read the host again after a step failed without saying what it left (lost reply, timeout). A step whose
        task on its VM had not ended when gpupass stopped waiting, and still has not, is not known: the VM read now
        would show the step as not done while the host may still carry it out."""
        vm = getattr(step.payload, "vm", None)
        if isinstance(vm, str):
            running = self._translated(f"reading back '{step.description}'", self._task_still_running, vm)
            if running is not None:
                return StepState("unknown", detail=f"what it left is not known yet: {running}")
        state: StepState = self._translated(f"reading back '{step.description}'", self._observe, step.payload, step)
        return state

    def _translated(self, action: str, function: Callable[..., Any], *args: Any) -> Any:
        """pyvmomi may talk to the host outside `_call` (a lazily read property such as si.content): its
        socket errors and timeouts become the same errors, naming the host."""
        try:
            return function(*args)
        except GpupassError:
            raise
        except tasks.Unsettled as unsettled:  # a host task whose end is not known: said with the host as it is
            raise self._unsettled_error(unsettled, False, (), None) from None
        except Exception as exc:  # noqa: BLE001 - translated by type
            raise self._lost(exc, translate(exc, action, timeout=self.target.timeout, host=self._endpoint.host)) \
                from exc

    @functools.singledispatchmethod
    def _apply(self, payload: object) -> Any:
        raise OperationFailed(f"the esxi backend cannot carry out a step of type {type(payload).__name__}",
                              remedy="plan again with this version of gpupass", rolled_back=True)  # nothing sent

    @_apply.register
    def _apply_passthrough(self, payload: Passthrough) -> None:
        self._passthru(payload.host, list(payload.ids), payload.enable, payload.apply_now,
                       check=not payload.pending_ok)

    @_apply.register
    def _apply_reboot(self, payload: Reboot) -> None:
        pending = payload.only_if_pending
        if pending is not None and all(self._active_now(payload.host).get(i) for i in pending):
            if payload.exit_after:  # no reboot needed any more, but the maintenance mode a stopped run left is ended
                self._exit_maintenance(payload.host)
            return  # the host applied the change at once: no reboot
        self._reboot_safely(payload.host, payload.enter_maintenance, exit_after=payload.exit_after,
                            devices=payload.devices)

    @_apply.register
    def _apply_exit_maintenance(self, payload: ExitMaintenance) -> None:
        if self._in_maintenance(payload.host):
            self._exit_maintenance(payload.host)

    @_apply.register
    def _apply_reconfigure(self, payload: Reconfigure) -> dict[str, Any]:
        return self._reconfigure(payload)

    @_apply.register
    def _apply_vgpu(self, payload: VgpuReconfigure) -> dict[str, Any]:
        return self._reconfigure_vgpu(payload)

    @_apply.register
    def _apply_end_intent(self, payload: EndIntent) -> None:
        # Only this release's own record goes: another run may have begun in this VM since the reconfigure (an
        # assign writes its record there), and its record is its own to remove. "Keys with empty values will be
        # removed" (VirtualMachineConfigSpec.extraConfig).
        self._swap_intent(payload.vm, (payload.intent,), "")

    @_apply.register
    def _apply_graphics(self, payload: HostGraphicsChange) -> dict[str, Any]:
        return self._apply_graphics_change(payload)

    @_apply.register
    def _apply_intent(self, payload: Intent) -> None:
        # sent with the plan's changeVersion: a VM changed since the plan refuses it (ConcurrentAccess)
        self._set_extra(payload.vm, esxi_claims.INTENT_KEY, payload.intent, payload.change_version)
        # Keyed by the plan's version too: this run's reconfigure of the VM expects the version its own record left,
        # and a later plan (this object reused after a run that failed here) reads a version of its own.
        self._versions[(payload.vm, payload.change_version)] = self._read_vm(payload.vm)["change_version"]

    # How often a guarded write of the intent record reads the VM again after vSphere refused it because the VM
    # changed between that read and the write (ConcurrentAccess).
    _intent_tries = 5

    def _swap_intent(self, name: str, expected: tuple[str, ...], value: str, *, once_more_if_lost: bool = False) -> bool:
        """Set VM `name`'s intent record to `value` where the record there now is one of `expected` ("" for none):
        a read-modify-write of one extraConfig key, sent with the changeVersion just read, so a record another run
        wrote in between is never overwritten. vSphere API reference, VirtualMachineConfigSpec.changeVersion: "If
        specified when updating the configuration, the changes will only be applied if the current changeVersion
        matches the specified changeVersion. This field can be used to guard against updates that have happened
        between the configInfo was read and until it is applied"; ReconfigVM_Task fails with ConcurrentAccess
        otherwise, and the VM is read again. Returns False, writing nothing, where another record is there.
        `once_more_if_lost` (the undos): a write that got no answer is followed by a read of the VM (logged in again if
        the endpoint lost the session): done, or sent once more, so a lost reply is not an undo to make by hand."""
        for _ in range(self._intent_tries):
            now = self._read_vm(name)
            there = now["extra"].get(esxi_claims.INTENT_KEY, "")
            if there == value:
                return True
            if there not in expected:
                return False
            try:
                self._set_extra(name, esxi_claims.INTENT_KEY, value, now["change_version"])
                return True
            except Conflict:
                continue  # the VM changed between the read and the write: read it again
            except GpupassError as error:
                if not (once_more_if_lost and tasks.no_answer(error)):
                    raise
                continue  # no answer: the VM read again says whether it was written
        raise Conflict(f"VM '{name}' changed {self._intent_tries} times while gpupass wrote its record "
                       f"(extraConfig {esxi_claims.INTENT_KEY}); the record was not changed",
                       remedy="run `gpupass status HOST`, then the command again", rolled_back=True)

    def _set_extra(self, name: str, key: str, value: str, version: str | None = None) -> None:
        from pyVmomi import vim

        self._fresh.pop(name, None)
        ref = self._vm_ref(name)
        spec = vim.vm.ConfigSpec(extraConfig=[vim.option.OptionValue(key=key, value=value)], changeVersion=version)
        task = self._call(f"recording in VM '{name}'", ref.ReconfigVM_Task, spec)
        self._wait(task, f"recording in VM '{name}'", name)

    @functools.singledispatchmethod
    def _observe(self, payload: object, step: Step) -> StepState:
        return StepState("unknown", detail=f"{step.description} cannot be read back")

    # A vGPU is added by the same kind of reconfigure, so it reads back the same way.
    @_observe.register(Reconfigure)
    @_observe.register(VgpuReconfigure)
    def _observe_reconfigure(self, payload: Reconfigure | VgpuReconfigure, step: Step) -> StepState:
        now = self._read_vm(payload.vm)
        if now["change_version"] == payload.change_version:
            return StepState("before")
        before = self._before.get(payload.vm)
        return StepState("after", token=before) if before is not None else StepState("unknown")

    @_observe.register
    def _observe_passthrough(self, payload: Passthrough, step: Step) -> StepState:
        enabled = self._enabled_now(payload.host)
        if all(enabled.get(i) == payload.enable for i in payload.ids):
            return StepState("after")
        if all(enabled.get(i) != payload.enable for i in payload.ids):
            return StepState("before")
        return StepState("unknown", detail=f"{step.description}: only some of {', '.join(payload.ids)} changed")

    @_observe.register
    def _observe_reboot(self, payload: Reboot, step: Step) -> StepState:
        """A reboot step stopped without saying what it left (an interrupt; its own faults say it themselves): a
        reboot cannot be taken back, so the host is said as it is now -- connection, maintenance mode, the devices'
        passthrough state -- with what the admin finishes (the maintenance mode gpupass entered for it)."""
        values = self._host_values(payload.host)
        seen = tasks.host_report(payload.host, values, payload.devices, None, payload.enter_maintenance)
        left = ("; once it is connected, run the same command again to finish (it takes the host out of maintenance "
                "mode), or take it out yourself (ExitMaintenanceMode_Task; 'Exit Maintenance Mode' in the vSphere "
                "Client)" if values.get("runtime.inMaintenanceMode") else "")
        return StepState("unknown", detail=f"the reboot of {payload.host} may have begun; read back: {seen}{left}")

    @_observe.register
    def _observe_exit_maintenance(self, payload: ExitMaintenance, step: Step) -> StepState:
        return StepState("before" if self._in_maintenance(payload.host) else "after")

    @_observe.register
    def _observe_graphics(self, payload: HostGraphicsChange, step: Step) -> StepState:
        now = self._graphics_config(payload.host)
        if (now["default_type"], now["assignment_policy"], now["device_types"]) == \
                (payload.default_type, payload.assignment_policy, tuple(sorted(payload.device_types))):
            found = self._graphics_before.get(payload.host)
            return StepState("after", token=found) if found is not None else StepState("unknown")
        before = self._graphics_before.get(payload.host)
        if before is not None and now == before:
            return StepState("before")
        return StepState("unknown", detail=f"the graphics configuration of {payload.host} is neither the old nor the "
                                           "new one")

    @_observe.register
    def _observe_intent(self, payload: Intent, step: Step) -> StepState:
        there = self._read_vm(payload.vm)["extra"].get(esxi_claims.INTENT_KEY)
        return StepState("after" if there else "before")

    @_observe.register
    def _observe_end_intent(self, payload: EndIntent, step: Step) -> StepState:
        there = self._read_vm(payload.vm)["extra"].get(esxi_claims.INTENT_KEY)
        return StepState("before" if there == payload.intent else "after")  # this release's record gone: done

    def _enabled_now(self, host: str) -> dict[str, bool]:
        ref = self._host_ref(host)
        infos = self._call(f"reading passthrough state of {host}", lambda: ref.config.pciPassthruInfo)
        return {info.id: bool(info.passthruEnabled) for info in infos or ()}

    def undo(self, step: Step, token: Any) -> None:
        # A task of this run that had not ended when gpupass stopped waiting may still run: an undo written now races
        # it (a switch-back of the passthrough under a reconfigure that then lands), so each step is left as it is
        # and the run's intent record keeps saying so to `status`.
        running = [why for vm in sorted(self._unfinished) for why in [self._task_still_running(vm)] if why]
        if running:
            raise OperationFailed(f"'{step.description}' was not undone: a task of this run has not ended ("
                                  + "; ".join(running) + ")",
                                  remedy=f"once it has ended, run `gpupass status {self.target.label}`, then the same "
                                         "command again to finish", rolled_back=False)
        try:
            self._undo(step.payload, token)
        except tasks.Unsettled as unsettled:
            raise self._unsettled_error(unsettled, False, (), None) from None

    @functools.singledispatchmethod
    def _undo(self, payload: object, token: Any) -> None:
        raise OperationFailed(f"the esxi backend cannot undo a step of type {type(payload).__name__}",
                              rolled_back=False)  # the step stays as it is

    @_undo.register
    def _undo_passthrough(self, payload: Passthrough, token: None) -> None:
        # After a reboot whose end is not known, switching back now races it: disabled before the reboot runs, the
        # device ends inactive; after it, active until the next reboot -- which of the two, nobody could say.
        self._refuse_while_unsettled([payload.host], f"passthrough of {', '.join(payload.ids)} on {payload.host}")
        try:
            self._passthru(payload.host, list(payload.ids), not payload.enable, payload.apply_now, check=False)
        except GpupassError as error:
            if not tasks.no_answer(error):
                raise
            # No answer (a lost reply, an endpoint that died with it): the host read again (logged in again if need
            # be) says whether it was switched back; if not, it is sent once more -- setting a device's passthrough
            # state twice is the same as once (UpdatePassthruConfig sets passthruEnabled, it does not toggle it).
            now = self._enabled_now(payload.host)
            if any(now.get(i) != (not payload.enable) for i in payload.ids):
                self._passthru(payload.host, list(payload.ids), not payload.enable, payload.apply_now, check=False)

    @_undo.register
    def _undo_reboot(self, payload: Reboot, token: None) -> None:
        """A reboot cannot be taken back; what it activated is undone by the passthrough step before it."""

    @_undo.register
    def _undo_reconfigure(self, payload: Reconfigure, token: dict[str, Any] | None) -> None:
        if token is not None:
            self._restore(payload.vm, token)

    @_undo.register
    def _undo_vgpu(self, payload: VgpuReconfigure, token: dict[str, Any] | None) -> None:
        if token is not None:  # the VM as it was: the inverse ConfigSpec takes the vGPU change back
            self._restore(payload.vm, token)

    @_undo.register
    def _undo_graphics(self, payload: HostGraphicsChange, token: dict[str, Any] | None) -> None:
        if token is None:
            return
        # the configuration the step found, in effect again
        try:
            self._set_graphics(payload.host, token["default_type"], token["assignment_policy"],
                               token["device_types"], payload.restart_xorg)
        except GpupassError as error:
            if not tasks.no_answer(error):
                raise
            # No answer (a lost reply, an endpoint that died with it): the host read again (logged in again if need
            # be) says whether the configuration is back and, where Xorg restarts, in effect; if not, it is set once
            # more (UpdateGraphicsConfig sets the configuration whole; a second Xorg restart changes nothing more).
            if not self._graphics_back(payload, token):
                self._set_graphics(payload.host, token["default_type"], token["assignment_policy"],
                                   token["device_types"], payload.restart_xorg)

    def _graphics_back(self, payload: HostGraphicsChange, token: dict[str, Any]) -> bool:
        """The host's graphics configuration is `token` again and, where the step restarts Xorg, runs it."""
        if self._graphics_config(payload.host) != token:
            return False
        if not payload.restart_xorg:
            return True
        wanted = dict(token["device_types"])
        return all(host_graphics.effective_type(d, t, token["default_type"], wanted) == t
                   for d, t in self._active_graphics(payload.host).items())

    @_undo.register
    def _undo_intent(self, payload: Intent, token: None) -> None:
        # Kept while a host step of this run has not settled: it is what `status` shows of the run, and what the same
        # assign again finishes from.
        self._refuse_while_unsettled(sorted(self._unsettled), f"this run's record in VM '{payload.vm}'")
        # the record a stopped run left goes back in place of this run's -- never in place of another run's
        if not self._swap_intent(payload.vm, (payload.intent,), payload.previous, once_more_if_lost=True):
            # this run's record is gone already (the other run wrote over it): nothing of it is left to undo
            raise Conflict(f"VM '{payload.vm}' holds another run's record ({esxi_claims.INTENT_KEY}) now; it was "
                           "left in place", rolled_back=True)

    @_undo.register
    def _undo_end_intent(self, payload: EndIntent, token: None) -> None:
        if not self._swap_intent(payload.vm, ("",), payload.intent, once_more_if_lost=True):
            # the record stays removed: putting it back would overwrite the other run's
            raise Conflict(f"VM '{payload.vm}' holds another run's record ({esxi_claims.INTENT_KEY}) now; it was "
                           "left in place", rolled_back=False)

    @_undo.register
    def _undo_exit_maintenance(self, payload: ExitMaintenance, token: None) -> None:
        self._refuse_while_unsettled([payload.host], f"the maintenance mode of {payload.host}")
        self._enter_maintenance(payload.host)

    def _host_ref(self, name: str) -> Any:
        if name not in self._hosts:
            self.inventory()
        if name not in self._hosts:
            raise NotFound(f"host {name} is gone from {self._endpoint.host}")
        return self._bound(self._hosts[name].ref)

    def _vm_ref(self, name: str) -> Any:
        raw = self._vms.get(name)
        if raw is None:
            self.inventory()
            raw = self._vms.get(name)
        if raw is None:
            raise NotFound(f"VM {name!r} is gone")
        return self._bound(raw.ref)

    def _passthru(self, host: str, ids: list[str], enable: bool, apply_now: bool = False, *,
                  check: bool = True) -> None:
        """UpdatePassthruConfig; with apply_now, confirm on the host that the change is active now.

        applyNow (vSphere API 7.0): "If the configuration can be applied immediately, it will be,
        otherwise the changes will take effect after reboot" -- so the host's word is read back.
        """
        from pyVmomi import vim

        ref = self._host_ref(host)
        system = self._call(f"reading host {host}", lambda: ref.configManager.pciPassthruSystem)
        extra = {"applyNow": True} if apply_now else {}
        config = [vim.host.PciPassthruConfig(id=i, passthruEnabled=enable, **extra) for i in ids]
        self._call(f"{'enabling' if enable else 'disabling'} passthrough on {host}",
                   system.UpdatePassthruConfig, config)
        if not (apply_now and check):
            return
        active = self._active_now(host)
        pending = [i for i in ids if active.get(i) != enable]
        if pending:
            # leave the host as it was: the step failed, so it undoes its own switch
            back = [vim.host.PciPassthruConfig(id=i, passthruEnabled=not enable, **extra) for i in ids]
            try:
                self._call(f"switching passthrough back on {host}", system.UpdatePassthruConfig, back)
            except GpupassError as error:
                raise OperationFailed(
                    f"host {host} did not apply the passthrough change for {', '.join(pending)} at once, and "
                    f"switching it back failed: {error.message}",
                    remedy=f"set passthrough of {', '.join(ids)} on {host} back by hand (vSphere Client: "
                           "Configure > PCI Devices)", rolled_back=False) from error
            raise OperationFailed(
                f"host {host} took the passthrough change for {', '.join(pending)} but did not apply it at once "
                "(it says it takes effect at the next reboot)",
                remedy="run the command again with --allow-host-reboot, or put the host in maintenance mode and "
                       "reboot it", rolled_back=True)  # switched back just above

    def _running_vms(self, host: str) -> list[str]:
        ref = self._host_ref(host)
        vms = self._call(f"reading the VMs of host {host}", lambda: list(ref.vm or ()))
        return sorted(str(vm.name) for vm in vms
                      if str(self._call(f"reading the VMs of host {host}", lambda vm=vm: vm.runtime.powerState))
                      == "poweredOn")

    def _in_maintenance(self, host: str) -> bool:
        ref = self._host_ref(host)
        return bool(self._call(f"reading host {host}", lambda: ref.runtime.inMaintenanceMode))

    def _enter_maintenance(self, host: str, since: Any = None) -> None:
        ref = self._host_ref(host)
        since = since if since is not None else self._server_time()
        # EnterMaintenanceMode_Task's timeout is an int of seconds (vSphere API: HostSystem.EnterMaintenanceMode_Task)
        timeout = max(1, int(self._seconds_option("maintenance_timeout_s", 600.0)))
        self._host_task(host, f"putting host {host} in maintenance mode", tasks.ENTER_MAINTENANCE, since,
                        lambda: ref.EnterMaintenanceMode_Task(timeout=timeout, evacuatePoweredOffVms=False))

    def _exit_maintenance(self, host: str, since: Any = None) -> None:
        ref = self._host_ref(host)
        since = since if since is not None else self._server_time()
        self._host_task(host, f"taking host {host} out of maintenance mode", tasks.EXIT_MAINTENANCE, since,
                        lambda: ref.ExitMaintenanceMode_Task(timeout=0))

    def _reboot_safely(self, host: str, enter_maintenance: bool, exit_after: bool = False,
                       devices: tuple[str, ...] = ()) -> None:
        """See _reboot_step: maintenance mode first, never force=True, and never with a VM running. `exit_after`:
        the host is in maintenance mode for a stopped run's reboot; taken out once the reboot is done (left in it if
        the reboot fails, as the run found it).

        A host task whose end is not known (hosttasks.py) is never followed by a cleanup write to that host: the
        step fails with the host as read back (or unread), names what to finish or revert, and the undo of this run's
        earlier steps on the host waits too (_refuse_while_unsettled)."""
        ref = self._host_ref(host)
        since = self._server_time()  # the tasks this step sends are found by it if their answers are lost
        boot_before = self._host_runtime(ref)[1]
        try:
            if enter_maintenance:
                try:
                    self._enter_maintenance(host, since)
                except GpupassError as error:  # the task ended in a fault or was refused: it did not happen
                    running = self._running_vms(host)
                    if self._in_maintenance(host):
                        self._exit_maintenance(host, since)
                    raise OperationFailed(
                        f"host {host} did not enter maintenance mode ({error.message})"
                        + (f"; VMs running on it: {', '.join(running)}" if running else "")
                        + "; gpupass never reboots a host with running VMs, and it was not rebooted",
                        remedy="migrate or power off those VMs (or let DRS evacuate the host), or put the host in "
                               "maintenance mode yourself, then run the command again",
                        rolled_back=True) from error  # not rebooted, and out of maintenance mode again
            try:
                running = self._running_vms(host)
                if running:  # cannot happen in maintenance mode; checked anyway, as a reboot cannot be undone
                    raise OperationFailed(f"host {host} still runs {', '.join(running)}; it was not rebooted",
                                          remedy="power those VMs off or migrate them, then run the command again",
                                          rolled_back=True)  # the maintenance mode it entered is left just below
                self._reboot(host, since, boot_before)
            except tasks.Unsettled:
                raise
            except BaseException as stopped:
                if self._rebooting.get(host):  # sent, its end not known (an interrupt): nothing more goes to the host
                    self._unsettled[host] = f"the reboot of {host} was stopped before its end was known ({stopped!r})"
                    raise
                if enter_maintenance:  # known not rebooted (refused, or never sent): the maintenance mode goes
                    self._exit_maintenance(host, since)
                raise
            if enter_maintenance or exit_after:
                self._exit_maintenance(host, since)
        except tasks.Unsettled as unsettled:
            raise self._unsettled_error(unsettled, enter_maintenance or exit_after, devices, boot_before) from None
        finally:
            self._rebooting.pop(host, None)

    def _reboot(self, host: str, since: Any, boot_before: Any) -> None:
        """RebootHost_Task (force=False: the host must be in maintenance mode), then wait until the host has really
        been down and is back.

        The task ends when the reboot starts, and vCenter goes on reporting the host connected until its
        heartbeats stop (every 10 s, 60 s window: Broadcom KB 435077), so "connected" right after the task
        proves nothing: the host counts as back once runtime.bootTime has changed (or it was seen down)
        and it is connected again. A direct ESXi connection dies with the host; it is opened again. The wait is
        bounded by the host's `reboot_timeout_s` option (900 s by default); past it, or with vCenter gone, the
        step is unsettled (tasks.Unsettled), never followed by a write.
        """
        ref = self._host_ref(host)
        timeout = self._seconds_option("reboot_timeout_s", 900.0)
        direct = self._is_direct_host()
        self._rebooting[host] = True
        try:
            self._host_task(host, f"rebooting host {host}", tasks.REBOOT, since, lambda: ref.RebootHost_Task(False))
        except tasks.Unsettled:
            if not direct:
                raise
        except BaseException as error:
            if isinstance(error, GpupassError):  # the server refused it or the task ended in error: no reboot
                self._rebooting.pop(host, None)
            raise
            # a direct host may go down before it reports the task (vCenter stays up): the wait below tells
        deadline = time.monotonic() + timeout
        delay = 0.2
        seen_down = False
        while True:
            state = boot = None
            reconnecting = self._wire is None
            try:
                if reconnecting:
                    self.inventory()  # logs in again; fresh references for the later steps
                    ref = self._host_ref(host)
                state, boot = self._host_runtime(ref)
            except ConnectionFailed as error:
                if not direct:  # vCenter itself does not answer
                    raise tasks.Unsettled(host, f"waiting for host {host} to come back: {error.message}") from error
                self._drop_session()  # the host is down
                seen_down = True
            except AuthenticationFailed as error:
                if not direct or reconnecting:  # refused credentials are not a reboot
                    raise tasks.Unsettled(host, f"waiting for host {host} to come back: {error.message}") from error
                self._drop_session()  # back, but our session died with the reboot
                seen_down = True
            if state is not None and state != "connected":
                seen_down = True
            elif state == "connected" and (seen_down or (boot is not None and boot_before is not None
                                                         and boot != boot_before)):
                return
            if time.monotonic() > deadline:
                raise tasks.Unsettled(host, f"host {host} did not come back within {timeout:g}s after the reboot "
                                            "began (option reboot_timeout_s)")
            time.sleep(delay)
            delay = min(delay * 2, 10.0)

    def _seconds_option(self, name: str, default: float) -> float:
        from gpupass.core.target import MAX_TIMEOUT_S

        value = self.target.options.get(name, default)
        # at most a day, as a host's `timeout`: inf or nan would wait forever or fail in int() mid-run
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value <= MAX_TIMEOUT_S:
            raise UsageError(f"option {name} of host {self.target.label} must be a number of seconds above 0 and at "
                             f"most {MAX_TIMEOUT_S:.0f}, not {value!r}",
                             remedy=f"set {name} = 900 (say) in the host's options table")
        return float(value)

    def _server_time(self) -> Any:
        """ServiceInstance.CurrentTime: "the current time on the server", which a task's queueTime is compared with."""
        return self._call("reading the server's time", self._session.CurrentTime)

    def _host_task(self, host: str, action: str, kind: str, since: Any, send: Callable[[], Any]) -> None:
        """Send a host task and wait for its end. A fault the server answered with (the call refused, the task
        ended in error) is raised translated: the task did not happen. Without an answer, the task's state is
        learnt first (by its reference, or found in TaskManager.recentTask by `kind`, the host and `since`): ended
        well, it returns; ended in error, that fault is raised; running, it is waited for; anything else raises
        tasks.Unsettled -- and nothing more is sent."""
        task = None
        try:
            task = self._call(action, send)
            info = self._task_end(task, action, host)
        except GpupassError as error:
            if not tasks.no_answer(error):
                raise
            info = self._learnt_end(host, task, action, kind, since, error)
        if str(info.state) == "error":
            raise translate(info.error, action) from info.error

    def _learnt_end(self, host: str, task: Any, action: str, kind: str, since: Any, error: GpupassError) -> Any:
        """The end of a host task whose answer did not come (see _host_task): its TaskInfo, or tasks.Unsettled."""
        try:
            if task is None:
                found = self._recent_task(host, kind, since)
                if found is None:
                    raise tasks.Unsettled(host, f"{error.message}; vCenter lists no such task for host {host}: the "
                                                "request may not have reached it yet, or never will")
                task = found.ref
            else:  # the task as a reference on the session in use now (the one that sent it may be gone)
                task = type(task)(task._moId, self._session._stub)
            return self._task_end(task, action, host)
        except tasks.Unsettled:
            raise
        except GpupassError as unread:
            raise tasks.Unsettled(host, f"{error.message}; its task could not be read either ({unread.message})") \
                from error

    def _task_end(self, task: Any, action: str, host: str = "") -> Any:
        """The host task's TaskInfo once its state is success or error (queued and running are waited through, up to
        the host's `task_timeout_s`). Past it the task may still run: tasks.Unsettled, and nothing more goes to the
        host."""
        info = self._poll_task(task, action)
        if str(info.state) not in ("success", "error"):
            raise tasks.Unsettled(host, self._unfinished_text(task, action, info, host))
        return info

    def _recent_task(self, host: str, kind: str, since: Any) -> tasks.FoundTask | None:
        """The newest task of `kind` on `host` since `since` in TaskManager.recentTask: one RetrievePropertiesEx."""
        from pyVmomi import vim, vmodl

        pc = vmodl.query.PropertyCollector
        content = self._service_content
        spec = pc.FilterSpec(
            objectSet=[pc.ObjectSpec(obj=content.taskManager, skip=True, selectSet=[
                pc.TraversalSpec(name="recentTask", type=vim.TaskManager, path="recentTask", skip=False)])],
            propSet=[pc.PropertySpec(type=vim.Task, pathSet=tasks.TASK_PROPS)])
        result = self._call(f"reading the recent tasks of {self._endpoint.host}",
                            content.propertyCollector.RetrievePropertiesEx, [spec], pc.RetrieveOptions())
        return tasks.newest_task(result.objects if result else (), self._host_ref(host)._moId, kind, since)

    def _unsettled_error(self, unsettled: tasks.Unsettled, entered: bool, devices: tuple[str, ...],
                         boot_before: Any) -> OperationFailed:
        """The reboot step's error when a host task's end is not known: the host as read now (or that it cannot be
        read), and what finishes or reverts it. The host is marked so that no undo writes to it in this run."""
        host = unsettled.host
        self._unsettled[host] = unsettled.reason
        try:
            seen = "read back: " + tasks.host_report(host, self._host_values(host), devices, boot_before, entered)
        except GpupassError as unread:
            seen = f"host {host} could not be read back either ({unread.message})"
        return OperationFailed(
            f"{unsettled.reason}; so nothing more was sent to host {host} (a cleanup would race the task), and this "
            f"run's earlier steps on it are not undone; {seen}",
            remedy=f"once host {host} is connected, run `gpupass status {self.target.label}`: it shows this run's "
                   "intent; the same command again finishes it (the reboot if a device is still not active, taking "
                   "the host out of the maintenance mode this run put it in, the VM's change); to revert instead, "
                   "disable passthrough of the devices again, take the host out of maintenance mode and remove the "
                   f"VM's extraConfig {esxi_claims.INTENT_KEY}",
            rolled_back=False)

    def _host_values(self, host: str) -> dict[str, Any]:
        """tasks.HOST_PROPS of `host`, in one PropertyCollector read."""
        from pyVmomi import vmodl

        ref = self._host_ref(host)
        pc = vmodl.query.PropertyCollector
        spec = pc.FilterSpec(objectSet=[pc.ObjectSpec(obj=ref, skip=False)],
                             propSet=[pc.PropertySpec(type=type(ref), pathSet=tasks.HOST_PROPS)])
        result = self._call(f"reading host {host}",
                            self._service_content.propertyCollector.RetrievePropertiesEx, [spec], pc.RetrieveOptions())
        return {p.name: p.val for o in (result.objects if result else ()) for p in o.propSet}

    def _refuse_while_unsettled(self, hosts: Sequence[str], what: str) -> None:
        """An undo that would write while a host task of this run has not settled there would race it."""
        unsettled = [f"{h}: {self._unsettled[h]}" for h in hosts if h in self._unsettled]
        if unsettled:
            raise OperationFailed(f"{what} was not undone: a host task of this run has not settled ("
                                  + "; ".join(unsettled) + ")", rolled_back=False)

    def _active_now(self, host: str) -> dict[str, bool]:
        """passthruActive per device id, read from the host now."""
        ref = self._host_ref(host)
        infos = self._call(f"reading passthrough state of {host}", lambda: ref.config.pciPassthruInfo)
        return {info.id: bool(info.passthruActive) for info in infos or ()}

    def _host_runtime(self, ref: Any) -> tuple[str, Any]:
        """(connectionState, bootTime) of a host in one PropertyCollector call."""
        from pyVmomi import vmodl

        pc = vmodl.query.PropertyCollector
        spec = pc.FilterSpec(objectSet=[pc.ObjectSpec(obj=ref, skip=False)],
                             propSet=[pc.PropertySpec(type=type(ref),
                                                      pathSet=["runtime.connectionState", "runtime.bootTime"])])
        result = self._call("reading the host's state",
                            lambda: self._service_content.propertyCollector.RetrievePropertiesEx([spec], pc.RetrieveOptions()))
        values = {p.name: p.val for o in (result.objects if result else ()) for p in o.propSet}
        return str(values.get("runtime.connectionState")), values.get("runtime.bootTime")

    def _is_direct_host(self) -> bool:
        """Connected to an ESXi host itself (hostd), not to vCenter: its API goes down with a reboot."""
        about = self._call("reading the endpoint's type", lambda: self._service_content.about)
        return str(getattr(about, "apiType", "")) == "HostAgent"

    def _drop_session(self) -> None:
        """Forget a session that died with the host (no logout: there is nobody to tell)."""
        if self._wire is not None:
            self._wire.drop()
        self._wire = None
        self._si = self._si_wire = None
        self._root = None
        self._content = None
        self._view = None

    # How often a long wait for a task says (in the log, -v) that it still waits; the CLI's spinner shows the step.
    _progress_every_s = 30.0

    def _poll_task(self, task: Any, action: str) -> Any:
        """The task's TaskInfo once it has ended (success or error), or as read last when the host's `task_timeout_s`
        (TASK_TIMEOUT_S by default) ran out first; progress is logged on the way."""
        timeout = self._seconds_option("task_timeout_s", TASK_TIMEOUT_S)
        began = time.monotonic()
        said = began
        delay = 0.05
        while True:
            info = self._call(action, lambda: task.info)
            if str(info.state) in ("success", "error"):
                return info
            now = time.monotonic()
            if now - began > timeout:
                return info
            if now - said >= self._progress_every_s:
                said = now
                log.info("%s: task %s still %s on %s after %.0f s (gives up after %g s: option task_timeout_s)",
                         action, getattr(task, "_moId", "?"), info.state, self._endpoint.host, now - began, timeout)
            time.sleep(min(delay, max(0.0, began + timeout - now) + 0.01))
            delay = min(delay * 2, 2.0)

    def _unfinished_text(self, task: Any, action: str, info: Any, host: str = "") -> str:
        timeout = self._seconds_option("task_timeout_s", TASK_TIMEOUT_S)
        where = f"host {host} at {self._endpoint.host}" if host else self._endpoint.host
        return (f"{action}: task {getattr(task, '_moId', '?')} on {where} was still {info.state} after {timeout:g}s "
                "(option task_timeout_s); it may still be carried out there")

    def _wait(self, task: Any, action: str, vm: str) -> Any:
        """The result of a task on VM `vm` once it succeeded; its fault, translated, if it failed. A task that has not
        ended within the host's `task_timeout_s` raises TaskUnfinished: what it does is not known yet, so the step is
        read back (observe says so while the task runs) and no undo of this run writes meanwhile."""
        info = self._poll_task(task, action)
        state = str(info.state)
        if state == "success":
            return info.result
        if state == "error":
            raise translate(info.error, action) from info.error
        self._unfinished[vm] = (task, action)
        raise TaskUnfinished(
            self._unfinished_text(task, action, info),
            remedy=f"see task {getattr(task, '_moId', '?')} in the vSphere client; once it has ended, `gpupass status "
                   f"{self.target.label}` shows what VM '{vm}' holds and the same command again finishes or reverts "
                   "the change; for a vCenter this slow, raise task_timeout_s in the host's options table",
            task=str(getattr(task, "_moId", "")), vm=vm)

    def _task_still_running(self, vm: str) -> str | None:
        """Why VM `vm`'s step cannot be read back yet: a task of this run on it that had not ended when gpupass stopped
        waiting, read again now; None when there is none, or it has ended since (then the VM shows its outcome)."""
        pending = self._unfinished.get(vm)
        if pending is None:
            return None
        task, action = pending
        info = self._call(f"reading task {getattr(task, '_moId', '?')}", lambda: task.info)
        if str(info.state) in ("success", "error"):
            del self._unfinished[vm]
            return None
        return (f"task {getattr(task, '_moId', '?')} ({action}) is still {info.state} on {self._endpoint.host}: it may "
                "still be carried out")

    def _read_vm(self, name: str) -> dict[str, Any]:
        from pyVmomi import vmodl

        ref = self._vm_ref(name)
        pc = vmodl.query.PropertyCollector
        paths = ["config.hardware.device", "config.extraConfig", "config.memoryAllocation.reservation",
                 "config.memoryReservationLockedToMax", "config.firmware", "config.changeVersion"]
        spec = pc.FilterSpec(objectSet=[pc.ObjectSpec(obj=ref, skip=False)],
                             propSet=[pc.PropertySpec(type=type(ref), pathSet=paths)])
        result = self._call(f"reading VM {name!r}", self._service_content.propertyCollector.RetrievePropertiesEx,
                            [spec], pc.RetrieveOptions())
        values = {p.name: p.val for p in result.objects[0].propSet}
        return {
            "devices": inv.passthrough_devices(values.get("config.hardware.device")),
            "extra": {o.key: str(o.value) for o in values.get("config.extraConfig") or ()},
            "reservation_mb": int(values.get("config.memoryAllocation.reservation") or 0),
            "locked": bool(values.get("config.memoryReservationLockedToMax")),
            "firmware": str(values.get("config.firmware") or ""),
            "change_version": values.get("config.changeVersion"),
        }

    # How long a claimant waits for a run that holds the same GPU under a later claim to give it back (see
    # core/domain/claims.py, decide_written): that run either saw this claim and takes its change back, or it
    # wrote and read before this run wrote, and keeps the GPU.
    _claim_wait_s = 10.0

    def _reconfigure(self, payload: Reconfigure) -> dict[str, Any]:
        """ONE ReconfigVM_Task carries the change and, for fixed-address devices, the claim on them; it is
        guarded by ConfigSpec.changeVersion: "If specified when updating the configuration, the changes will
        only be applied if the current changeVersion matches the specified changeVersion" (vSphere Web
        Services API reference, VirtualMachineConfigSpec.changeVersion; ReconfigVM_Task fails with
        ConcurrentAccess otherwise), so the write is a compare-and-swap on this VM against the configuration
        the plan read. Then one read of every VM through the session's view decides the claim and is the
        read-back of this VM. SOAP calls: QueryConfigTarget, ReconfigVM_Task, the task's info (once if it has
        finished by then), RetrievePropertiesEx."""
        name, changes = payload.vm, payload.changes
        # the version the plan read, or the one this run's own intent record left
        expected = self._versions.pop((name, payload.change_version), payload.change_version)
        before = self._config_at(name, expected)
        self._before[name] = before  # what observe() hands back for an undo if the reply is lost
        backings = {}
        static = [d for d in changes["add"] if not d.get("dynamic")]
        if static:
            backings = self._config_target(payload.host, [d["id"] for d in static])
        config = specs.build(dict(changes), before["devices"], backings)
        mine = None
        if static:
            host_id = self._hosts[payload.host].ref._moId
            mine = new_claim(name, [esxi_claims.device_key(host_id, d["id"]) for d in static])
            seen = [c for vm, raw in self._vms.items() if vm != name
                    for c in [esxi_claims.decode(vm, raw.extra.get(esxi_claims.CLAIM_KEY))] if c is not None]
            mine = mine.numbered(number_for_write(mine, seen, time.time_ns() // 1000))
            config.extraConfig = [*(config.extraConfig or ()), self._claim_option(mine)]
        config.changeVersion = expected
        self._send(name, config, before)
        if mine is not None:
            self._decide(name, mine, before)
        return before

    def _config_at(self, name: str, version: str | None) -> dict[str, Any]:
        """The VM's configuration at `version`: the inventory's, when it read that version (changeVersion
        "is a unique identifier for a given version of the configuration"), else read now. A VM no longer at
        that version changed since the plan: a conflict, and nothing is written."""
        raw = self._vms.get(name)
        if raw is not None and version is not None and raw.change_version == version:
            try:
                devices = self._bound(inv.passthrough_devices(raw.devices))
            except collect.Unreadable as why:  # pyVmomi reads the VM's devices itself (one request more)
                log.debug("lean reader: %s; the VM's devices are read again", why)
            else:
                return {"devices": devices, "extra": dict(raw.extra), "reservation_mb": raw.reservation_mb,
                        "locked": raw.locked, "firmware": raw.firmware, "change_version": raw.change_version}
        now = self._read_vm(name)
        if now["change_version"] != version:
            raise Conflict(f"VM '{name}' was changed by someone else since the plan was made; nothing was changed",
                           remedy="run the command again to plan from its current configuration", rolled_back=True)
        return now

    def _send(self, name: str, config: Any, before: dict[str, Any]) -> None:
        self._fresh.pop(name, None)
        self._wrote[name] = _written(config)  # what a take-back of this write may set back, and nothing else
        ref = self._vm_ref(name)
        try:
            task = self._call(f"reconfiguring VM '{name}'", ref.ReconfigVM_Task, config)
            self._wait(task, f"reconfiguring VM '{name}'", name)
        except TaskUnfinished:
            raise  # not settled: read back by observe, which says so while the task runs
        except GpupassError as error:
            self._settle(name, before, error)

    def _claim_option(self, claim: Any) -> Any:
        from pyVmomi import vim

        return vim.option.OptionValue(key=esxi_claims.CLAIM_KEY, value=esxi_claims.encode(claim))

    def _read_claims(self, name: str) -> tuple[dict[str, Any], list[Any], Vm | None]:
        """Every VM's claim and passthrough devices, and VM `name` as the inventory reads it: ONE
        RetrievePropertiesEx (plus continuations) through the session's view."""
        from pyVmomi import vim

        objects = self._call("reading the claims of every VM", inv.retrieve_view, self._service_content,
                             self._bound(self._inventory_view()), [(vim.VirtualMachine, inv.VM_PROPS)], self._count)
        found, holders = esxi_claims.claims_and_holders(objects)
        mine = self._vms.get(name)
        fresh = None
        for obj in objects:
            if mine is None or obj.obj._moId != mine.ref._moId:
                continue
            values = {p.name: p.val for p in obj.propSet}
            host_ref = values.get("runtime.host")
            location = next((host for host, raw in self._hosts.items()
                             if host_ref is not None and raw.ref._moId == host_ref._moId), "")
            raw, fresh = inv.vm_from_properties(obj.obj, values, location, self._hosts.get(location))
            if raw is not None:
                self._vms[name] = raw
        return found, holders, fresh

    def _decide(self, name: str, mine: Any, before: dict[str, Any]) -> None:
        deadline = time.monotonic() + self._claim_wait_s
        delay = 0.05
        while True:
            found, holders, fresh = self._read_claims(name)
            own = found.get(name)
            if own is None or own.token != mine.token:
                raise Conflict(f"VM '{name}' was reconfigured by another run while this one was assigning "
                               f"{', '.join(sorted(mine.addresses))}",
                               remedy="run `gpupass status HOST`, then the command again if the GPU is not there",
                               rolled_back=False)
            verdict = decide_written(mine, holders)
            if verdict.outcome != "wait":
                break
            if time.monotonic() > deadline:
                verdict = Verdict("lose", f"VM '{verdict.other_vm}' holds the same GPU and kept it for "
                                  f"{self._claim_wait_s:.0f}s: its run wrote first (or stopped before it could "
                                  "give it back)", verdict.other_vm)
                break
            time.sleep(delay)
            delay = min(delay * 2, 0.5)
        if verdict.outcome == "lose":
            try:
                self._restore(name, before)
            except GpupassError as error:
                # The VM may still hold the device the other VM holds too: said as it is, never as a clean conflict.
                raise OperationFailed(
                    f"{verdict.reason}; taking this run's change to VM '{name}' back failed: {error.message}",
                    remedy=f"run `gpupass status HOST` once it answers: if VM '{name}' still holds "
                           f"{', '.join(sorted(a.split('/', 1)[1] for a in mine.addresses))}, `gpupass release HOST "
                           f"{name} GPU` gives it back (VM '{verdict.other_vm}' keeps it)",
                    rolled_back=False) from error
            raise Conflict(f"{verdict.reason}; this run's change to VM '{name}' was undone",
                           remedy=f"release the GPU from VM '{verdict.other_vm}' first if it should move",
                           rolled_back=True)
        self._fresh[name] = fresh  # read after this run's write: the verify needs no other read

    def _settle(self, name: str, before: dict[str, Any], error: GpupassError) -> None:
        """After a failed reconfigure, read the VM back and say what is there; never assume (always raises)."""
        if isinstance(error, Conflict):  # vSphere refused the stale changeVersion: nothing of this run was applied
            raise Conflict(f"VM '{name}' was changed by someone else since the plan was made; nothing was changed "
                           f"({error.message})",
                           remedy="run the command again to plan from its current configuration",
                           rolled_back=True) from error
        try:
            after = self._read_vm(name)
        except GpupassError as unreadable:
            raise OperationFailed(
                f"{error.message}; VM '{name}' could not be read back afterwards ({unreadable.message}), so "
                "whether the reconfiguration happened is not known",
                remedy="run `gpupass status HOST` once it answers: if the devices are on the VM, release them or "
                       "run the assign again to finish", rolled_back=False) from error
        taken_back = ""
        if _state_key(after) != _state_key(before):
            self._restore(name, before)
            taken_back = "; what vSphere had applied of it was taken back"
        raise OperationFailed(f"{error.message}{taken_back}", remedy=error.remedy, rolled_back=True) from error

    def _config_target(self, host: str, ids: list[str]) -> dict[str, Any]:
        raw = self._hosts[host]
        browser = self._bound(raw.environment_browser)
        target = self._call(f"querying passthrough devices of {host}", browser.QueryConfigTarget, self._bound(raw.ref))
        found = {info.pciDevice.id: info for info in (target.pciPassthrough or ()) if hasattr(info, "systemId")}
        missing = [i for i in ids if i not in found]
        if missing:
            raise OperationFailed(
                f"{', '.join(missing)} on host {host} is not an active passthrough device",
                remedy="enable passthrough for it and reboot the host (gpupass assign --allow-host-reboot)",
                rolled_back=True)  # found before anything is sent
        return found

    def _restore(self, name: str, before: dict[str, Any]) -> None:
        """Take this run's reconfigure of VM `name` back to `before`: only what it wrote (_written) and only where
        the VM still holds what it wrote -- a device, key or setting another run changed since is that run's now,
        and a device the VM holds already is never added a second time. The inverse ConfigSpec is sent with the
        changeVersion it was computed from (vSphere API reference, VirtualMachineConfigSpec.changeVersion: "the
        changes will only be applied if the current changeVersion matches"); a VM changed in between refuses it
        (ConcurrentAccess) and is read again. A take-back whose answer is lost is read back: carried out, it is
        done; not, or not readable, the error says so (rolled_back false)."""
        self._fresh.pop(name, None)
        wrote = self._wrote.get(name)
        for _ in range(self._intent_tries):
            now = self._read_vm(name)
            spec = _inverse(now, before, wrote)
            if spec is None:
                return  # nothing of this run's change is left to take back
            spec.changeVersion = now["change_version"]
            ref = self._vm_ref(name)
            try:
                task = self._call(f"restoring VM '{name}'", ref.ReconfigVM_Task, spec)
                self._wait(task, f"restoring VM '{name}'", name)
                return
            except Conflict:
                continue  # the VM changed between the read and the write: read it again
            except TaskUnfinished as unfinished:
                raise OperationFailed(f"taking back the change to VM '{name}' is not known to be done: "
                                      f"{unfinished.message}", remedy=unfinished.remedy,
                                      rolled_back=False) from unfinished
            except GpupassError as error:
                self._settle_restore(name, before, wrote, error)
                return
        raise Conflict(f"VM '{name}' changed {self._intent_tries} times while gpupass took its change back; it was "
                       "not taken back", remedy="run `gpupass status HOST`, then release what this run added",
                       rolled_back=False)

    def _settle_restore(self, name: str, before: dict[str, Any], wrote: dict[str, Any] | None,
                        error: GpupassError) -> None:
        """A take-back that failed without saying what it left: read the VM back (returns where it was carried out)."""
        try:
            after = self._read_vm(name)
        except GpupassError as unreadable:
            raise OperationFailed(
                f"taking back the change to VM '{name}' failed ({error.message}) and the VM could not be read back "
                f"({unreadable.message}): whether it was taken back is not known",
                remedy="run `gpupass status HOST` once it answers", rolled_back=False) from error
        if _inverse(after, before, wrote) is not None:
            raise OperationFailed(f"taking back the change to VM '{name}' failed ({error.message}); read back, the VM "
                                  "still holds it", remedy=error.remedy, rolled_back=False) from error


def _identity(device: Any) -> tuple[str, str]:
    """What a passthrough device is, whatever key ESXi gave it: backing kind and host address, vGPU profile or
    allowed vendor/device pair."""
    backing = device.backing
    what = getattr(backing, "id", None) or getattr(backing, "vgpu", None) or str(inv.allowed_pair(backing))
    return (type(backing).__name__, str(what))


def _written(config: Any) -> dict[str, Any]:
    """What one reconfigure sets, from its ConfigSpec: the devices it adds (by identity) and removes (by key), the
    extraConfig keys it sets ("" removes one), and the reservation, lock and firmware where it sets them."""
    op = "add"
    changes = list(config.deviceChange or ())
    allocation = config.memoryAllocation
    return {
        "added": [_identity(c.device) for c in changes if str(c.operation) == op],
        "removed": {int(c.device.key) for c in changes if str(c.operation) != op},
        "extra": {o.key: str(o.value if o.value is not None else "") for o in config.extraConfig or ()},
        "locked": config.memoryReservationLockedToMax,
        "reservation_mb": int(allocation.reservation) if allocation is not None and allocation.reservation is not None
        else None,
        "firmware": config.firmware or None,
    }


def _inverse(now: dict[str, Any], before: dict[str, Any], wrote: dict[str, Any] | None) -> Any:
    """The ConfigSpec that takes what `wrote` set back to `before`, where `now` still holds it; None when nothing is
    left to take back. Without `wrote` (not known), everything that differs from `before` is taken back."""
    from pyVmomi import vim

    op = vim.vm.device.VirtualDeviceSpec.Operation
    before_keys = {int(d.key or 0) for d in before["devices"]}
    added = Counter(wrote["added"]) if wrote is not None else Counter(
        _identity(d) for d in now["devices"] if int(d.key or 0) not in before_keys)
    changes = []
    for device in now["devices"]:
        identity = _identity(device)
        if int(device.key or 0) not in before_keys and added[identity] > 0:
            added[identity] -= 1
            changes.append(vim.vm.device.VirtualDeviceSpec(operation=op.remove, device=device))
    removed = wrote["removed"] if wrote is not None else before_keys - {int(d.key or 0) for d in now["devices"]}
    kept = Counter(_identity(d) for d in now["devices"]) - Counter(_identity(c.device) for c in changes)
    for index, device in enumerate(before["devices"]):
        if int(device.key or 0) not in removed:
            continue
        identity = _identity(device)
        if kept[identity] > 0:  # on the VM (still, or again): never a second one
            kept[identity] -= 1
            continue
        changes.append(vim.vm.device.VirtualDeviceSpec(
            operation=op.add, device=vim.vm.device.VirtualPCIPassthrough(key=-200 - index, backing=device.backing)))
    spec = vim.vm.ConfigSpec()
    if changes:
        spec.deviceChange = changes
    keys = wrote["extra"] if wrote is not None else sorted(set(before["extra"]) | set(now["extra"]))
    extra = [vim.option.OptionValue(key=k, value=before["extra"].get(k, "")) for k in sorted(keys)
             if before["extra"].get(k, "") != now["extra"].get(k, "")
             and (wrote is None or now["extra"].get(k, "") == wrote["extra"][k])]  # else another run's value now
    if extra:
        spec.extraConfig = extra

    def mine(field: str) -> bool:  # set by this write, still as it set it, and not as it was before
        return now[field] != before[field] and (wrote is None or (wrote[field] is not None and now[field] == wrote[field]))

    if mine("locked"):
        spec.memoryReservationLockedToMax = before["locked"]
    if mine("reservation_mb"):
        spec.memoryAllocation = vim.ResourceAllocationInfo(reservation=before["reservation_mb"])
    if mine("firmware") and before["firmware"]:
        spec.firmware = before["firmware"]
    touched = (spec.deviceChange, spec.extraConfig, spec.memoryReservationLockedToMax, spec.memoryAllocation,
               spec.firmware)
    return spec if any(t is not None and t != [] for t in touched) else None


def _device_key(device: Any) -> tuple[str, str, int]:
    """Identity of a VM's passthrough device: backing kind, host address or allowed pair, and ESXi's key."""
    backing = device.backing
    what = getattr(backing, "id", None) or str(inv.allowed_pair(backing))
    return (type(backing).__name__, str(what), int(device.key or 0))


def _state_key(state: dict[str, Any]) -> tuple[object, ...]:
    return (sorted(_device_key(d) for d in state["devices"]), sorted(state["extra"].items()),
            state["reservation_mb"], state["locked"], state["firmware"])
