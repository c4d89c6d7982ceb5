"""GPU claims as libvirt secrets: one per host PCI address, which the daemon refuses to hold twice.

`virSecretDefineXML` adds a secret under the secret list's write lock and refuses one whose usage is
already another secret's: libvirt 9.0.0 src/conf/virsecretobj.c, virSecretObjListAdd (lines 323-402:
`virObjectRWLockWrite(secrets)`, then "No existing secret with same UUID, try look for matching usage
instead" -> VIR_ERR_INTERNAL_ERROR "a secret with UUID %s already defined for use with %s"). That check and
the insertion are one atomic step in the daemon, which every client of the host talks to, from any
machine: a compare-and-swap on the name of the GPU. `virSecretUndefine` finds the secret by its UUID
(src/secret/secret_driver.c, secretObjFromSecret: VIR_ERR_NO_SECRET "no secret with matching uuid"), so
taking back a claim never removes a newer claim of someone else (libvirt 9.0.0
src/secret/secret_driver.c lines 78-90 and 420-459). The error code of a refused define is a
generic one, so a loss is told by looking the usage up and comparing UUIDs, never by the message.

The secret holds no value; its description names the VM (by name and UUID) and the run that made it.
Usage type "volume" (the oldest, libvirt 0.7.1) with a path no storage volume has: libvirt looks a volume
secret up only for an encrypted volume whose <encryption> names it.
"""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET

from gpupass.core.records import record

USAGE_PREFIX = "/gpupass/claim/"


@record(frozen=True)
class SecretClaim:
    address: str
    vm: str
    vm_uuid: str
    token: str
    origin: str
    uuid: str
    at: float = 0.0  # the claiming client's clock (seconds since the epoch): how old a claim looks to others


def usage_id(address: str) -> str:
    return USAGE_PREFIX + address


def new(address: str, vm: str, vm_uuid: str, token: str, origin: str, at: float) -> SecretClaim:
    import uuid  # here: reading claims (every `gpus`) never makes one

    return SecretClaim(address, vm, vm_uuid, token, origin, str(uuid.uuid4()), at)


def to_xml(claim: SecretClaim) -> str:
    root = ET.Element("secret", ephemeral="no", private="no")
    ET.SubElement(root, "uuid").text = claim.uuid
    ET.SubElement(root, "description").text = json.dumps(
        {"gpupass": "claim", "vm": claim.vm, "vm_uuid": claim.vm_uuid, "token": claim.token,
         "origin": claim.origin, "at": claim.at}, sort_keys=True, separators=(",", ":"))
    usage = ET.SubElement(root, "usage", type="volume")
    ET.SubElement(usage, "volume").text = usage_id(claim.address)
    return ET.tostring(root, encoding="unicode")


def from_xml(text: str) -> SecretClaim | None:
    """The claim a secret's XML describes, or None for a secret that is not a gpupass claim."""
    try:
        root = ET.fromstring(text)
        volume = root.findtext("usage/volume") or ""
        data = json.loads(root.findtext("description") or "")
        if not volume.startswith(USAGE_PREFIX) or data.get("gpupass") != "claim":
            return None
        return SecretClaim(volume[len(USAGE_PREFIX):], str(data["vm"]), str(data["vm_uuid"]), str(data["token"]),
                           str(data.get("origin", "")), (root.findtext("uuid") or "").strip(),
                           float(data.get("at") or 0.0))
    except (ET.ParseError, ValueError, KeyError, TypeError, AttributeError):
        return None
