"""What `status` and `assign` are told about mediated devices (vGPUs) that are not simply started and held or free.

Two things make a mediated device unusable as it stands, and neither shows in a domain's <hostdev> alone:

* It is defined on the host but not started. libvirt (7.3+) creates one in two calls, virNodeDeviceDefineXML then
  virNodeDeviceCreate, and removes one in two, virNodeDeviceDestroy then virNodeDeviceUndefine (libvirt
  src/libvirt-nodedev.c); a run stopped between them, or a removal whose undefine and restart both failed, leaves it
  defined and stopped, and a VM given it cannot start. libvirt lists such a device with the others: without an
  ACTIVE or INACTIVE flag virConnectListAllNodeDevices filters on nothing but the capability (libvirt 9.0.0
  src/conf/virnodedeviceobj.c, virNodeDeviceObjMatch lines 907-913), so it would look free. Which ones are stopped is
  asked with VIR_CONNECT_LIST_NODE_DEVICES_INACTIVE (include/libvirt/libvirt-nodedev.h, "Since: 7.3.0"), where the
  connection takes that flag (KvmBackend._inactive_mdevs).
* A gpupass run was creating it for a VM, or removing it, and stopped: the run records its intent in the VM's
  definition (domxml.MdevIntent) before its first call on the device, so the record is there whatever the host did
  with the call, even on a connection that cannot list stopped devices (the libvirt test driver) or where the device
  never got made.

Pure functions over what the inventory read: no libvirt call here.
"""

from __future__ import annotations

from typing import Mapping, Sequence

from gpupass.backends.kvm.domxml import MdevIntent
from gpupass.backends.kvm.nodedev import MediatedDevice


def _device_state(uuid: str, listed: Mapping[str, MediatedDevice], inactive: frozenset[str]) -> str:
    if uuid not in listed:
        return "is not on the host"
    if uuid in inactive:
        return f"is defined on the host but not started ({listed[uuid].name})"
    return f"is on the host ({listed[uuid].name})"


def intent_note(vm: str, intent: MdevIntent, listed: Mapping[str, MediatedDevice], inactive: frozenset[str]) -> str:
    """The line `status` shows on VM `vm` for an intent a stopped run left in its definition."""
    state = _device_state(intent.uuid, listed, inactive)
    if not intent.removing:
        return (f"an assign of a {intent.type_id} vGPU of GPU {intent.gpu} stopped before it finished: it was creating "
                f"mediated device {intent.uuid} (parent {intent.parent}), which {state} and is given to no VM; "
                f"`gpupass assign HOST {vm} {intent.gpu} --share {intent.type_id}` finishes it, `gpupass release HOST "
                f"{vm} {intent.gpu}` removes it")
    return (f"a release of the {intent.type_id} vGPU of GPU {intent.gpu} stopped before it finished: it was removing "
            f"mediated device {intent.uuid} (parent {intent.parent}), which {state}; `gpupass release HOST {vm} "
            f"{intent.gpu}` finishes it")


def intent_share_note(vm: str, intent: MdevIntent) -> str:
    """Why a device named by an intent is not free, on the share `gpus` lists."""
    if not intent.removing:
        return (f"being created for VM '{vm}' by a gpupass assign that stopped: `gpupass assign HOST {vm} {intent.gpu} "
                f"--share {intent.type_id}` finishes it, `gpupass release HOST {vm} {intent.gpu}` removes it")
    return (f"being removed by a gpupass release of VM '{vm}' that stopped: `gpupass release HOST {vm} {intent.gpu}` "
            "finishes it")


def stopped_share_note(device: MediatedDevice, holder: str | None) -> str:
    """Why a defined-but-stopped device no intent names is not free."""
    if holder:
        return (f"defined but not started: VM '{holder}' cannot start with it; `virsh nodedev-start {device.name}` "
                "starts it")
    return (f"defined but not started, given to no VM: `virsh nodedev-start {device.name}` starts it (it is then free), "
            f"`virsh nodedev-undefine {device.name}` removes it")


def stopped_holder_note(vm: str, device: MediatedDevice, gpu: str) -> str:
    """The line `status` shows on a VM that holds a defined-but-stopped device."""
    return (f"holds mediated device {device.uuid} of GPU {gpu}, which is defined on the host but not started (a removal "
            f"stopped between its stop and its undefine, or a device stopped by hand): the VM cannot start with it; "
            f"`virsh nodedev-start {device.name}` starts it, `gpupass release HOST {vm} {gpu}` takes it back")


def stopped_host_note(device: MediatedDevice, gpu: str) -> str:
    """The line `status` shows on the host for a defined-but-stopped device no VM holds and no intent names."""
    return (f"mediated device {device.uuid} ({device.type_id} on GPU {gpu}) is defined but not started and given to no "
            f"VM: `virsh nodedev-start {device.name}` starts it (it is then free), `virsh nodedev-undefine "
            f"{device.name}` removes it")


def intents_by_uuid(intents: Mapping[str, Sequence[MdevIntent]]) -> dict[str, tuple[str, MdevIntent]]:
    """-> the VM and intent naming each device UUID (the first VM by name, where two name one)."""
    found: dict[str, tuple[str, MdevIntent]] = {}
    for vm in sorted(intents):
        for intent in intents[vm]:
            found.setdefault(intent.uuid, (vm, intent))
    return found
