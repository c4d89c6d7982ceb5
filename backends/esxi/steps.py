"""What an ESXi step carries out: one small frozen dataclass per kind of step (the `Step.payload`).

`EsxiBackend.apply`, `undo` and `observe` choose their handler by the payload's type (functools'
singledispatchmethod), never by `Step.action`, which is only the step's label in text and --json output.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping


@dataclass(frozen=True)
class Passthrough:
    """HostPciPassthruSystem.UpdatePassthruConfig on host `host`: set passthruEnabled=`enable` for the PCI
    ids `ids`; with `apply_now`, ask the host to switch them at once (ESXi 7.0+ deviceRebindWithoutReboot).
    `pending_ok`: a host that leaves the change for a reboot is fine (a Reboot step follows)."""

    host: str
    ids: tuple[str, ...]
    enable: bool
    apply_now: bool = False
    pending_ok: bool = False


@dataclass(frozen=True)
class Reboot:
    """Reboot host `host` (never forced), entering maintenance mode first if `enter_maintenance` (and leaving it
    after); with `only_if_pending`, only if those PCI ids are not active yet (an applyNow the host deferred).
    `exit_after`: the host is in maintenance mode because a stopped gpupass run put it there for its reboot (its
    intent record says so): take it out afterwards too. `devices`: the PCI ids the run switches on this host, whose
    passthrough state a reboot that fails half-way reports."""

    host: str
    enter_maintenance: bool
    only_if_pending: tuple[str, ...] | None = None
    exit_after: bool = False
    devices: tuple[str, ...] = ()


@dataclass(frozen=True)
class ExitMaintenance:
    """ExitMaintenanceMode_Task on host `host`, which a stopped gpupass run put in maintenance mode for a reboot that
    has happened since (or is no longer needed): the part of that run's reboot step it did not get to."""

    host: str


@dataclass(frozen=True)
class Reconfigure:
    """One ReconfigVM_Task on VM `vm` (on host `host`), built from `changes` (backends/esxi/spec.py's
    assign_changes/release_changes) and refused if the VM's changeVersion is no longer `change_version`."""

    vm: str
    host: str
    changes: Mapping[str, Any]
    change_version: str | None


@dataclass(frozen=True)
class Intent:
    """Record in VM `vm`'s extraConfig that a run has begun (`intent`, from claims.encode_intent), sent with
    the plan's `change_version` so a VM changed since the plan refuses it. `previous`: the record a stopped run
    left there, which the undo puts back (a run that fails and changes nothing must not hide the stopped one)."""

    vm: str
    intent: str
    change_version: str | None
    previous: str = ""


@dataclass(frozen=True)
class EndIntent:
    """Remove from VM `vm`'s extraConfig the intent record `intent` a release wrote with its reconfigure: its last
    step, once the host steps after the reconfigure are done (the undo puts the record back)."""

    vm: str
    intent: str


@dataclass(frozen=True)
class VgpuReconfigure:
    """One ReconfigVM_Task of VM `vm` on host `host` that adds or removes vGPUs (`changes` from
    backends/esxi/shares.py: entries {"vgpu": PROFILE, "index": N}, the reservation and gpupass' record), refused
    if the VM's changeVersion is no longer `change_version`. Not claimed: a vGPU holds no device until power-on."""

    vm: str
    host: str
    changes: Mapping[str, Any]
    change_version: str | None


@dataclass(frozen=True)
class HostGraphicsChange:
    """HostGraphicsManager.UpdateGraphicsConfig on host `host`: the whole configuration to set (the API takes the
    whole HostGraphicsConfig: default type, assignment policy, every device override as (device id, type)), then,
    with `restart_xorg`, HostServiceSystem.RestartService("xorg") so that it takes effect (backends/esxi/graphics.py).
    The undo sets the configuration the step found back, and restarts Xorg again."""

    host: str
    default_type: str
    assignment_policy: str
    device_types: tuple[tuple[str, str], ...] = ()
    restart_xorg: bool = True
