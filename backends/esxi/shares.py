"""Giving an ESXi VM an NVIDIA vGPU and taking it back: the change to its configuration, as JSON-safe data.

A vGPU is a `VirtualPCIPassthrough` whose backing is `VirtualPCIPassthroughVmiopBackingInfo(vgpu=PROFILE)` ("the vGPU
configuration type exposed by a VMIOP plugin", vSphere API reference). It is added and removed with the VM off, in
one `ReconfigVM_Task` carrying the `changeVersion` the plan read, like a passthrough device (backend.py). ESXi places
it on a physical GPU of the host at power-on, and refuses the power-on unless all guest memory is reserved
(vSphere Resource Management, "Add an NVIDIA GRID vGPU to a Virtual Machine": "Reserve all memory"), so the same
reconfigure locks the reservation to the VM's memory; gpupass' record in the VM (extraConfig `gpupass.assignment`,
the one passthrough uses) keeps the reservation it found, for release, and the GPU named for each vGPU it added.

Not claimed like a fixed passthrough device (claims.py): a vGPU holds no device until power-on, where ESXi itself
refuses a GPU without room; two runs on the same VM are kept apart by `changeVersion` (ConcurrentAccess).
"""

from __future__ import annotations

import json
from typing import Any

from gpupass.backends.esxi.inventory import RECORD_KEY
from gpupass.backends.esxi.state import VmPlan


def _record(raw: VmPlan) -> dict[str, Any]:
    return json.loads(json.dumps(raw.record)) if raw.record else {"devices": [], "previous": {}}


def _encoded(record: dict[str, Any]) -> str:
    return json.dumps(record, sort_keys=True, separators=(",", ":"))


def assign_changes(raw: VmPlan, profile: str, gpu: str) -> dict[str, Any]:
    """Add one vGPU of `profile` (recorded with the GPU named), and lock the reservation to the VM's memory."""
    record = _record(raw)
    previous = record.setdefault("previous", {})
    previous.setdefault("reservation_mb", raw.reservation_mb)
    previous.setdefault("locked", raw.locked)
    index = len(raw.vgpus) + 1  # the new device is the VM's last vGPU
    record["vgpus"] = [*record.get("vgpus", []), {"index": index, "profile": profile, "gpu": gpu}]
    return {"add": [{"vgpu": profile, "index": index}], "remove": [], "locked": True,
            "reservation_mb": raw.memory_mb, "extra": {RECORD_KEY: _encoded(record)}, "firmware": None}


def release_changes(raw: VmPlan, removals: list[tuple[int, str]]) -> dict[str, Any]:
    """Remove the VM's vGPUs at these (1-based index, profile); restore what gpupass recorded once the VM holds no
    passthrough device or vGPU any more."""
    record = _record(raw) if raw.record else {}
    gone = {index for index, _ in removals}
    kept = []
    for entry in record.get("vgpus", []):
        index = int(entry.get("index", 0))
        if index in gone:
            continue
        # the vGPUs after a removed one move up
        kept.append({**entry, "index": index - sum(1 for g in gone if g < index)})
    changes: dict[str, Any] = {"add": [], "remove": [{"vgpu": p, "index": i} for i, p in sorted(removals)],
                               "locked": None, "reservation_mb": None, "extra": {}, "firmware": None}
    if not record:
        return changes  # added by other tools: nothing of gpupass' to restore
    left = len(raw.vgpus) - len(gone) + raw.passthrough_devices
    if left > 0:
        changes["extra"][RECORD_KEY] = _encoded({**record, "vgpus": kept})
        return changes
    previous = record.get("previous", {})
    if "locked" in previous:
        changes["locked"] = bool(previous["locked"])
    if "reservation_mb" in previous:
        changes["reservation_mb"] = int(previous["reservation_mb"])
    for key, value in previous.get("extra", {}).items():
        changes["extra"][key] = "" if value is None else value
    if previous.get("firmware"):
        changes["firmware"] = previous["firmware"]
    changes["extra"][RECORD_KEY] = ""
    return changes


def index_of(share_id: str, vm: str) -> int | None:
    """The vGPU index of a share id `VM/vgpu-N` (see vgpu.share_id); None for other forms."""
    prefix = f"{vm}/vgpu-"
    if share_id.startswith(prefix) and share_id[len(prefix):].isdigit():
        return int(share_id[len(prefix):])
    return None
