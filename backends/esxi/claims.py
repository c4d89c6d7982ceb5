"""GPU claims on vSphere (gpupass.core.domain.claims), kept in each VM's extraConfig.

`ConfigSpec.changeVersion` makes ReconfigVM_Task fail with ConcurrentAccess when the VM changed since it
was read (vSphere API reference, VirtualMachineConfigSpec.changeVersion), which settles races on ONE VM.
Two VMs given the same host device are not refused by vSphere until power-on, so the claim decides
between VMs: its record is the extraConfig key below, which every reader sees through the
PropertyCollector and which a reconfigure with "an empty value removes" (OptionValue, extraConfig: "Keys
with empty values will be removed").
"""

from __future__ import annotations

import json
from typing import Any

from gpupass.core.domain.claims import Claim, Holder

CLAIM_KEY = "gpupass.claim"
INTENT_KEY = "gpupass.intent"


def device_key(host_id: str, address: str) -> str:
    """A host device, as claims name it: PCI addresses are per host, so the host's managed object id goes first."""
    return f"{host_id}/{address}"


def encode(claim: Claim) -> str:
    return json.dumps({"token": claim.token, "number": claim.number, "gpus": sorted(claim.addresses),
                       "origin": claim.origin}, sort_keys=True, separators=(",", ":"))


def decode(vm: str, text: str | None) -> Claim | None:
    if not text:
        return None
    try:
        data = json.loads(text)
        number = data.get("number")
        return Claim(vm, str(data["token"]), frozenset(str(g) for g in data.get("gpus", ())),
                     int(number) if number is not None else None, str(data.get("origin", "")))
    except (ValueError, KeyError, TypeError, AttributeError):
        return None  # not ours to read: treated as no claim (the holder then wins over claimants)


def claims_and_holders(objects: Any) -> tuple[dict[str, Claim], list[Holder]]:
    """Every VM's claim and the fixed-address passthrough devices each holds, from the ObjectContents of one
    PropertyCollector read of the VMs' name, config.extraConfig, config.hardware.device and runtime.host."""
    from pyVmomi import vim

    from gpupass.backends.esxi.inventory import passthrough_devices

    claims: dict[str, Claim] = {}
    holders: list[Holder] = []
    for obj in objects:
        if not isinstance(obj.obj, vim.VirtualMachine):
            continue
        values = {p.name: p.val for p in obj.propSet}
        name = str(values.get("name"))
        extra = {o.key: str(o.value) for o in values.get("config.extraConfig") or ()}
        claim = decode(name, extra.get(CLAIM_KEY))
        if claim is not None:
            claims[name] = claim
        host = values.get("runtime.host")
        for device in passthrough_devices(values.get("config.hardware.device")):
            if isinstance(device.backing, vim.vm.device.VirtualPCIPassthrough.DeviceBackingInfo) and host is not None:
                key = device_key(host._moId, device.backing.id)
                held_by = claim if claim is not None and not claim.choosing and key in claim.addresses else None
                holders.append(Holder(name, key, held_by))
    return claims, holders


def encode_intent(op: str, gpus: list[str], steps: list[str], maintenance: list[str] | None = None,
                  switch_off: dict[str, list[str]] | None = None) -> str:
    """The intent record; `maintenance`: the hosts the run takes out of maintenance mode at the end of its reboot
    step (those it puts there, or a stopped run left there), so a run stopped in between is finished by the next.
    `switch_off`: host -> the PCI ids a release switches passthrough off for after its reconfigure (its "off")."""
    from gpupass.core.domain.claims import new_claim

    origin = new_claim("", ()).origin
    record: dict[str, Any] = {"op": op, "gpus": gpus, "steps": steps, "origin": origin}
    if maintenance:
        record["maintenance"] = sorted(maintenance)
    if switch_off:
        record["off"] = {host: sorted(ids) for host, ids in sorted(switch_off.items())}
    return json.dumps(record, sort_keys=True, separators=(",", ":"))


def decode_intent(text: str | None) -> dict[str, Any] | None:
    if not text:
        return None
    try:
        data = json.loads(text)
        return {"op": str(data["op"]), "gpus": [str(g) for g in data["gpus"]],
                "steps": [str(s) for s in data["steps"]], "origin": str(data.get("origin", "")),
                "maintenance": [str(h) for h in data.get("maintenance", [])],
                "off": {str(h): [str(i) for i in ids] for h, ids in dict(data.get("off", {})).items()}}
    except (ValueError, KeyError, TypeError, AttributeError):
        return None
