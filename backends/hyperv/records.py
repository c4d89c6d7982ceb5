"""What stopped gpupass runs left on a Hyper-V host, told from the restore records the inventory returns.

The inventory script returns, for each VM whose notes hold a gpupass restore record (scripts.RECORD_BEGIN), the text
after the marker (``Record``); this module reads it as the release script's own check does (scripts._READ_RECORD) and
says, per VM, what a stopped run left and which release finishes it. Pure: no I/O, no SDK.

* A record whose JSON names a release's intent (``Releasing``: the devices it was taking back) whose devices are still
  dismounted and on no VM, or mounted back but disabled, or on a VM left without devices (its settings not restored):
  the same release again finishes it (``ex_finish``: HypervBackend.plan_finish_release).
* A record without an intent (an older gpupass wrote it, or an assign stopped on the host after its first Set-VM) on a
  VM that holds no device: its settings are not restored. Which device was the VM's, the record does not say: where
  no device on the host is dismounted-and-on-no-VM or disabled (other than those other VMs' intents name), restoring
  the settings is the whole finish; otherwise each such device is named, and the release that names it gives it back
  too (the admin says which was this VM's; a device dismounted on purpose, ready for another assignment, stays).
* A damaged record (cut, edited, copied from another VM): a release of the VM refuses it before any change, so it is
  shown with what is wrong.
"""
from __future__ import annotations

import json
import shlex
from dataclasses import dataclass
from typing import Any, Iterable, Mapping

from gpupass.core.domain.pci import PciAddress

from .partitioning import type_id
from .scripts import (COUNT_BEGIN, RECORD_BEGIN, RECORD_DAMAGE, RECORD_END, RECORD_MAX_CHARS, RELEASE_BEGIN, STOP_ACTIONS,
                      ps_quote)


@dataclass(frozen=True)
class Record:
    """A VM's restore record as the release script reads it: ``damage`` is a RECORD_DAMAGE key (then nothing else is
    read), ``releasing`` the location paths of a release's intent (None: the record names no release)."""

    damage: str | None
    releasing: tuple[str, ...] | None = None


def read_record(text: Any, vm_id: str) -> Record | None:
    """The record in ``text`` (the notes after RECORD_BEGIN, as the inventory returns them), None when there is none.

    Checked as scripts._READ_RECORD checks it before a release: the end marker within RECORD_MAX_CHARS, JSON, values
    Set-VM takes (-LowMemoryMappedIoSpace UInt32, -HighMemoryMappedIoSpace UInt64, -AutomaticStopAction one of its
    enum names, -GuestControlledCacheTypes a bool), the VM's own id (compared as PowerShell's -eq compares the two
    strings there: ignoring case, about_Comparison_Operators)."""
    if not isinstance(text, str):
        return None
    end = text.find(RECORD_END)
    if end < 0 or end > RECORD_MAX_CHARS:
        return Record("end")
    try:
        data = json.loads(text[:end])
    except ValueError:
        return Record("json")
    if not isinstance(data, dict):
        return Record("json")
    low, high, cache = data.get("LowMmio"), data.get("HighMmio"), data.get("GuestCache")
    if not (_whole(low, 2**32 - 1) and _whole(high, 2**64 - 1) and data.get("StopAction") in STOP_ACTIONS
            and isinstance(cache, bool)):
        return Record("value")
    if str(data.get("VMId") or "").lower() != vm_id.lower():
        return Record("vm")
    named = data.get("Releasing")
    if named is None:
        return Record(None)
    return Record(None, tuple(str(p) for p in ([named] if isinstance(named, str) else named)))


def _whole(value: Any, most: int) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= most


@dataclass(frozen=True)
class Unfinished:
    """What a stopped run left on one VM: ``note`` for `status`, and what the same release again does (``paths`` go
    back to the host; ``restore``: the settings are put back from the record and the record removed). ``candidates``:
    devices a record without an intent may have held, given back only when the release names their GPU."""

    note: str
    paths: tuple[str, ...] = ()
    restore: bool = False
    candidates: tuple[str, ...] = ()
    # only the release's intent is left in the record (nothing to give back, nothing to restore): taken out
    intent_only: bool = False

    def as_state(self) -> dict[str, Any] | None:
        """What HypervState keeps for plan_finish_release (with the note, which a finishing step whose reply was lost
        compares with the host's again: HypervBackend._finish_release_state); None where no release finishes it (a
        damaged record)."""
        if not (self.paths or self.restore or self.intent_only):
            return None
        return {"paths": list(self.paths), "restore": self.restore, "candidates": list(self.candidates),
                "intent_only": self.intent_only, "note": self.note}


def left_on_host(functions_raw: Iterable[Mapping[str, Any]]) -> dict[str, str]:
    """Per location path, the devices that are neither a VM's nor the host's for use: "dismounted" (dismounted from the
    host and on no VM: Dismount-VMHostAssignableDevice done, Add-VMAssignableDevice not, or Remove-VMAssignableDevice
    done and Mount-VMHostAssignableDevice not) or "disabled" (mounted back but still disabled: present, with a host
    driver -- a GPU prepared for DDA without one shows Status Error always -- and not OK)."""
    left: dict[str, str] = {}
    for fn in functions_raw:
        if fn.get("Dismounted") and not fn.get("Owner"):
            left[fn["LocationPath"]] = "dismounted"
        elif fn.get("Present") and fn.get("Class") and not fn.get("Dismounted") and fn.get("Status") != "OK":
            left[fn["LocationPath"]] = "disabled"
    return left


def give_back_by_hand(path: str, instance_id: str, how: str) -> str:
    """The PowerShell that gives a device left `how` (left_on_host) back to the host: Mount-VMHostAssignableDevice
    (its page: "Mounts a device to the host", by -LocationPath) where it is still dismounted, then Enable-PnpDevice
    (-InstanceId, -Confirm:$false as gpupass's own scripts send it), quoted exactly (ps_quote)."""
    mount = f"Mount-VMHostAssignableDevice -LocationPath {ps_quote(path)}; " if how == "dismounted" else ""
    return f"{mount}Enable-PnpDevice -InstanceId {ps_quote(instance_id)} -Confirm:$false"


def stopped_runs(vms_raw: Iterable[Mapping[str, Any]], functions_raw: Iterable[Mapping[str, Any]],
               addresses: Mapping[str, PciAddress], host_label: str) -> dict[str, Unfinished]:
    """Per VM name, what a stopped run left on it (VMs with nothing left out), from the inventory's raw VMs and PCI
    functions."""
    functions = list(functions_raw)
    left = left_on_host(functions)
    loose = {p for p, how in left.items() if how == "dismounted"}
    disabled = {p for p, how in left.items() if how == "disabled"}
    instance_ids = {fn["LocationPath"]: str(fn.get("InstanceId") or "") for fn in functions}
    records: dict[str, tuple[Mapping[str, Any], Record]] = {}
    for v in vms_raw:
        record = read_record(v.get("Record"), str(v.get("Id") or ""))
        if record is not None:
            records[str(v["Name"])] = (v, record)
    named_by_intents = {p for _, r in records.values() for p in (r.releasing or ())}
    out: dict[str, Unfinished] = {}
    for name, (raw, record) in records.items():
        held = bool(raw.get("Devices"))
        release = f"gpupass release {shlex.quote(host_label)} {shlex.quote(name)}"
        if record.damage is not None:
            out[name] = Unfinished(
                f"the gpupass restore record in its notes cannot be used: {RECORD_DAMAGE[record.damage]}; a release "
                "of this VM refuses it before any change: repair the record, or delete it from "
                f"{RECORD_BEGIN!r} to {RECORD_END!r} (Set-VM -Notes) and set the VM's stop action and MMIO by hand")
        elif record.releasing:
            pending = tuple(p for p in record.releasing if p in loose or p in disabled)
            if pending or not held:
                out[name] = _stopped_release(release, pending, loose, addresses, restore=not held)
            else:
                # Nothing of it to give back and the VM keeps devices: its intent alone is left (a release script that
                # failed before it took any device and could not take its intent out either, or one whose devices
                # were given back to the VM and whose intent's removal failed, or one stopped after its devices and
                # before its last Set-VM), and a later release must not read it as its own (scripts.release_script
                # drops it first).
                on_vm = set(raw.get("Devices") or ())
                out[name] = _intent_left(release, record.releasing, on_vm, addresses)
        elif not held:
            candidates = tuple(sorted(p for p in (loose | disabled) - named_by_intents if p in addresses))
            out[name] = _settings_left(release, candidates, loose, addresses, instance_ids)
    return out


def _stopped_release(release: str, pending: tuple[str, ...], loose: set[str], addresses: Mapping[str, PciAddress],
                     restore: bool) -> Unfinished:
    left = [f"{addresses[p]} is dismounted from the host and on no VM" if p in loose else
            f"{addresses[p]} is mounted back on the host but still disabled" for p in pending if p in addresses]
    if restore:
        left.append("the VM holds no device, but its stop action and MMIO are not restored (the gpupass restore "
                    "record is still in its notes)")
    else:
        left.append("the gpupass restore record in its notes still names the release")
    # A VM that keeps other devices names the GPUs: `release HOST VM` alone would take those too.
    gpus = "" if restore else "".join(f" {addresses[p]}" for p in pending if p in addresses)
    return Unfinished(f"a release stopped half-way (its client killed or its connection lost, with its script failing "
                      f"on the host): {'; '.join(left)}; `{release}{gpus}` finishes it", pending, restore)


def _intent_left(release: str, named: tuple[str, ...], on_vm: set[str], addresses: Mapping[str, PciAddress]) -> Unfinished:
    held = [str(addresses[p]) for p in named if p in on_vm and p in addresses]
    gone = [str(addresses[p]) for p in named if p not in on_vm and p in addresses]
    assign = release.replace("gpupass release ", "gpupass assign ", 1)
    where, finish = [], []
    if held:
        where.append(f"it still holds {', '.join(held)}")
        finish.append(f"`{release} {' '.join(held)}` (the same release again) releases {'it' if len(held) == 1 else 'them'} "
                      f"and takes the intent out; `{assign} {' '.join(held)}` keeps {'it' if len(held) == 1 else 'them'} "
                      "on the VM and takes the intent out alone")
    if gone:
        where.append(f"{', '.join(gone)} {'is' if len(gone) == 1 else 'are'} on no VM of it any more")
        finish.append(f"`{release} {' '.join(gone)}` takes the intent out")
    return Unfinished(f"a release of this VM stopped with nothing of it to give back (it failed before it took any "
                      "device, or after its devices, and could not take its intent out of the record): "
                      f"{'; '.join(where) or 'its devices are where they were'}; the gpupass restore record in its notes "
                      f"still names them as being released; {'; '.join(finish) or 'delete the Releasing part by hand'}",
                      intent_only=True)


def _settings_left(release: str, candidates: tuple[str, ...], loose: set[str], addresses: Mapping[str, PciAddress],
                   instance_ids: Mapping[str, str]) -> Unfinished:
    what = ("a run stopped before it finished (a release by an older gpupass, an assign stopped on the host after "
            "its first Set-VM, or the device removed from the VM by hand): the VM holds no device, but its stop action and MMIO are not restored (the gpupass "
            "restore record, which names no devices, is still in its notes)")
    if not candidates:
        return Unfinished(f"{what}; no device is left dismounted or disabled on the host; `{release}` restores the "
                          "settings from the record and removes it", restore=True)
    devices = "; ".join(
        f"{addresses[p]} is {'dismounted from the host and on no VM' if p in loose else 'disabled on the host'} "
        f"(by hand: {'Mount-VMHostAssignableDevice -LocationPath ' + ps_quote(p) + ', then ' if p in loose else ''}"
        f"Enable-PnpDevice -InstanceId {ps_quote(instance_ids.get(p, ''))} -Confirm:$false)" for p in candidates)
    return Unfinished(f"{what}; the record does not say which device was this VM's: {devices}; `{release}` restores "
                      f"the settings and leaves the devices as they are; `{release} GPU` (e.g. `{release} "
                      f"{addresses[candidates[0]]}`) also gives the GPUs named back to the host, for a device that "
                      "was this VM's", restore=True, candidates=candidates)


# -- a GPU partition count change a stopped assign left (scripts.COUNT_BEGIN) -----------------------------------------
@dataclass(frozen=True)
class CountChange:
    """A partition count change's intent in a VM's notes: the GPU (its GPU-P instance path) whose count went from
    ``was`` to ``to`` for a partition of it to this VM."""

    gpu: str
    was: int
    to: int


def _note(text: Any, begin: str) -> str | None:
    """The text after the note marker `begin` in ``text`` (the VM's notes from its first GPU-P note on, as the inventory
    returns them: scripts.GPU_P_NOTES), None where there is no such note."""
    at = text.find(begin) if isinstance(text, str) else -1
    return text[at + len(begin):] if at >= 0 else None


_NOT_OURS = "it is not the JSON gpupass writes"


def _note_json(text: Any, begin: str) -> dict[str, Any] | str | None:
    """The JSON object of the note after `begin` (see _note), up to RECORD_END; None where there is no such note, or
    what is wrong with it (a str): no end marker, or not a JSON object."""
    note = _note(text, begin)
    if note is None:
        return None
    end = note.find(RECORD_END)
    if end < 0:
        return f"it has no end marker {RECORD_END!r}"
    try:
        data = json.loads(note[:end])
    except ValueError:
        return _NOT_OURS
    return data if isinstance(data, dict) else _NOT_OURS


def read_count_intent(text: Any, vm_id: str) -> CountChange | str | None:
    """The count change's intent in ``text`` (see _note): a CountChange, None where there is none, or what is wrong with
    it (a str)."""
    data = _note_json(text, COUNT_BEGIN)
    if data is None or isinstance(data, str):
        return data
    if not (isinstance(data.get("Gpu"), str) and _whole(data.get("From"), 2**32) and _whole(data.get("To"), 2**32)):
        return _NOT_OURS
    if str(data.get("VMId") or "").lower() != vm_id.lower():
        return "it was written for another VM (its VMId is not this VM's: copied with the notes?)"
    return CountChange(data["Gpu"], data["From"], data["To"])


def count_changes(vms_raw: Iterable[Mapping[str, Any]], counts: Mapping[str, int | None],
                  gpus: Mapping[str, PciAddress], host_label: str) -> dict[str, tuple[str, CountChange | None]]:
    """Per VM name, what a stopped assign of a partition left: the note for `status` and the change a release of the VM
    takes back (None: nothing for a release to do but what the note says). ``counts``: each partitionable GPU's count
    now, by lower-case instance path; ``gpus``: their PCI addresses.

    The VM holding a partition of the GPU: the assign finished (its intent, taken out by the add's script at best
    effort, is moot: the next count change or the partition's release takes it out): nothing is reported."""
    raw_vms = list(vms_raw)
    holders: dict[str, set[str]] = {}
    for v in raw_vms:
        for path in v.get("Partitions") or []:
            holders.setdefault(str(path).lower(), set()).add(str(v["Name"]))
    out: dict[str, tuple[str, CountChange | None]] = {}
    for v in raw_vms:
        name = str(v["Name"])
        change = read_count_intent(v.get("Intent"), str(v.get("Id") or ""))
        if change is None:
            continue
        release = f"gpupass release {shlex.quote(host_label)} {shlex.quote(name)}"
        notes = (f"delete it from {COUNT_BEGIN!r} to {RECORD_END!r} in the VM's notes (Set-VM -Notes)")
        if isinstance(change, str):
            out[name] = (f"the note of a GPU partition count change in its notes cannot be used: {change}; {notes}", None)
            continue
        key = change.gpu.lower()
        if name in holders.get(key, set()):
            continue
        address = gpus.get(key)
        gpu = f"GPU {address}" if address is not None else f"the GPU {change.gpu} (no longer on the host)"
        now = counts.get(key)
        stopped = (f"an assign of a partition of {gpu} to this VM stopped before it added the partition "
                   "(its client killed, its connection lost, or the host's PowerShell stopped)")
        others = sorted(holders.get(key, set()))
        if now == change.to and now != change.was:
            assign = (f"`gpupass assign {shlex.quote(host_label)} {shlex.quote(name)} {address} --share "
                      f"{type_id(change.to)}` finishes it" if address is not None else "")
            if others:
                back = (f"`{release}` takes the note out and leaves the count (VM {', '.join(others)} hold partitions "
                        "at it now)")
            else:
                back = (f"`{release}` sets the count back to {change.was} and takes the note out (by hand: "
                        f"Set-VMHostPartitionableGpu -Name {ps_quote(change.gpu)} -PartitionCount {change.was}, then "
                        f"{notes})")
            out[name] = (f"{stopped} after it changed the GPU's partition count from {change.was} to {change.to} "
                         f"(Set-VMHostPartitionableGpu): {'; '.join(x for x in (assign, back) if x)}", change)
        elif now == change.was:
            out[name] = (f"{stopped}, before it changed the GPU's partition count (still {change.was}): nothing was "
                         f"changed but its note in the VM's notes; `{release}` takes it out (or the same assign "
                         "again)", change)
        else:
            out[name] = (f"{stopped}; it was changing the GPU's partition count from {change.was} to {change.to}, and "
                         f"the count is now {'not readable' if now is None else now} (changed since): `{release}` takes "
                         "the note out and leaves the count", change)
    return out


def read_release_intent(text: Any, vm_id: str) -> tuple[str, ...] | str | None:
    """The GPUs (instance paths) a stopped release of partitions of several GPUs named (scripts.RELEASE_BEGIN) in
    ``text`` (see _note), None where there is none, or what is wrong with it (a str). ConvertTo-Json writes a one-element
    array as an array (its -InputObject is the object whose Gpus property is the array), but a plain string is taken
    too."""
    data = _note_json(text, RELEASE_BEGIN)
    if data is None or isinstance(data, str):
        return data
    gpus = data.get("Gpus")
    gpus = [gpus] if isinstance(gpus, str) else gpus
    if not (isinstance(gpus, list) and gpus and all(isinstance(g, str) for g in gpus)):
        return _NOT_OURS
    if str(data.get("VMId") or "").lower() != vm_id.lower():
        return "it was written for another VM (its VMId is not this VM's: copied with the notes?)"
    return tuple(gpus)


def partition_releases(vms_raw: Iterable[Mapping[str, Any]], gpus: Mapping[str, PciAddress],
                       host_label: str) -> dict[str, tuple[str, str | None]]:
    """Per VM name, what a release of GPU partitions from several GPUs left when it stopped between its steps (its
    intent in the VM's notes, scripts.RELEASE_BEGIN): the note for `status`, and the instance path of a GPU whose
    release (`gpupass release HOST VM GPU`, which holds none of it: HypervBackend.plan_finish_release) only takes the
    intent out, where the VM holds no partition of the GPUs it names (None: a release of the GPUs still held finishes
    it, and takes the intent out with its last removal). ``gpus``: the partitionable GPUs' PCI addresses by lower-case
    instance path."""
    out: dict[str, tuple[str, str | None]] = {}
    for v in vms_raw:
        name = str(v["Name"])
        named = read_release_intent(v.get("Intent"), str(v.get("Id") or ""))
        if named is None:
            continue
        by_hand = f"delete it from {RELEASE_BEGIN!r} to {RECORD_END!r} in the VM's notes (Set-VM -Notes)"
        if isinstance(named, str):
            out[name] = (f"the note of a release of GPU partitions in its notes cannot be used: {named}; {by_hand}", None)
            continue
        held = {str(p).lower() for p in v.get("Partitions") or []}
        left = [p for p in named if p.lower() in held]
        shown = ", ".join(f"GPU {gpus[p.lower()]}" if p.lower() in gpus else p for p in named)
        stopped = f"a release of its partitions of {shown} stopped between its steps (its client killed, or lost)"
        release = f"gpupass release {shlex.quote(host_label)} {shlex.quote(name)}"
        if left:
            addresses = [str(gpus[p.lower()]) for p in left if p.lower() in gpus]
            out[name] = (f"{stopped}: it still holds partitions of "
                         f"{', '.join(f'GPU {a}' for a in addresses) or ', '.join(left)}; `{release} "
                         f"{' '.join(addresses)}` finishes it", None)
            continue
        known = next((p for p in named if p.lower() in gpus), None)
        finish = (f"`{release} {gpus[known.lower()]}` takes it out" if known is not None else by_hand)
        out[name] = (f"{stopped}, after its last removal: it holds none of them, but the release's note is left in its "
                     f"notes; {finish}", known)
    return out
