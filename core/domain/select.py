"""How a user names a GPU: every identifier gpupass prints is accepted back.

A GPU may be named by
* its PCI address, long or short (``0000:41:00.0``, ``41:00.0``), as lspci prints it;
* the host-qualified address a multi-host endpoint prints (``esx02.lab.local/0000:3b:00.0`` on a vCenter);
* virsh's node-device name (``pci_0000_42_00_0``, what ``virsh nodedev-list`` prints);
* Windows' LocationPath (``PCIROOT(40)#PCI(0100)#...``, what ``Get-PnpDeviceProperty`` and Hyper-V print);
* its vendor:device id (``10de:2331``, what ``lspci -nn`` prints);
* its model name, matched word by word (``H100``, ``'A100 80GB'`` matches "NVIDIA A100 PCIe 80GB").

Any of these may carry a ``LOCATION/`` prefix. A selector that matches several GPUs is an error listing
them, never a silent pick; the one exception is an address that exists on several hosts of a vCenter while
exactly one of them runs the VM, because the VM can only use a card of its own host.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Sequence

from gpupass.core.domain.inventory import Gpu, HostFacts
from gpupass.core.domain.inventory import qualified as qualified  # where the names are read back
from gpupass.core.domain.pci import PciAddress
from gpupass.core.errors import NotFound, UsageError

_NODEDEV = re.compile(r"^pci_([0-9a-fA-F]{4})_([0-9a-fA-F]{2})_([0-9a-fA-F]{2})_([0-7])$")
_IDS = re.compile(r"^([0-9a-fA-F]{4}):([0-9a-fA-F]{4})$")
_ADDRESSISH = re.compile(r"^[0-9a-fA-F:.]+$")


def words(text: str) -> list[str]:
    """The words of a model name, lower-cased: 'NVIDIA A100-PCIe 80GB' -> nvidia, a100, pcie, 80gb."""
    return [w for w in re.split(r"[^0-9a-z]+", text.lower()) if w]


def model_matches(model: str, query: str) -> bool:
    """Every word of the query is a word of the model ('A100 80GB' matches 'NVIDIA A100 PCIe 80GB';
    'A10' does not match 'A100')."""
    wanted, have = words(query), set(words(model))
    return bool(wanted) and all(w in have for w in wanted)


@dataclass(frozen=True)
class GpuSelector:
    """What the user typed to name one GPU; resolved against a host's facts."""

    text: str

    @property
    def location(self) -> str:
        location, sep, rest = self.text.strip().rpartition("/")
        return location if sep and rest else ""

    @property
    def name(self) -> str:
        return self.text.strip().rpartition("/")[2]

    @property
    def address(self) -> PciAddress | None:
        """The PCI address when the selector is one (any of the address forms), else None."""
        name = self.name
        match = _NODEDEV.match(name)
        if match:
            return PciAddress(*(int(group, 16) for group in match.groups()))
        if _IDS.match(name):
            return None
        try:
            return PciAddress.parse(name)
        except UsageError:
            if _ADDRESSISH.match(name) and ":" in name:
                raise  # 41:00 or 0000:41:0.0 is a mistyped address: say so, not "no model named ..."
            return None

    def __str__(self) -> str:
        return self.text

    def _share_holding_gpu(self, facts: HostFacts) -> tuple[Gpu, str] | None:
        """The GPU with a share whose id is the address named (an SR-IOV VF), and that share's type."""
        if self.address is None:
            return None
        for gpu in facts.gpus:
            for share in gpu.sharing.shares:
                if share.id == str(self.address):
                    return gpu, share.type_id
        return None

    def candidates(self, facts: HostFacts) -> list[Gpu]:
        """Every GPU (or, for an address or LocationPath, the card with that function) the selector names."""
        pool = [g for g in facts.gpus if not self.location or g.location.lower() == self.location.lower()]
        name, address = self.name, self.address
        if address is not None:
            return [g for g in pool if any(f.address == address for f in g.functions)]
        ids = _IDS.match(name)
        if ids:
            return [g for g in pool if g.function.ids == name.lower()]
        if name.upper().startswith("PCIROOT("):
            return [g for g in pool if name.upper() in (p.upper() for p in g.native_addresses)]
        return [g for g in pool if model_matches(g.model or g.function.name, name)]

    def resolve(self, facts: HostFacts, host_label: str, vm_location: str | None = None) -> Gpu:
        found = self.candidates(facts)
        if len(found) > 1 and vm_location is not None and self.address is not None:
            # One address on several ESXi hosts of a vCenter: the VM can only use its own host's card.
            found = [g for g in found if g.location == vm_location] or found
        if not found:
            shared = self._share_holding_gpu(facts)
            if shared is not None:  # an SR-IOV VF (its id is its PCI address): a share of its PF's card
                raise UsageError(f"{self.address} is a {shared[1]} share of GPU {shared[0].address}, not a GPU",
                                 remedy=f"name the GPU with --share {shared[1]} ({shared[0].address} --share "
                                        f"{shared[1]}): gpupass picks a free one")
            raise NotFound(f"no GPU matches {self.text!r} on {host_label}",
                           remedy=_did_you_mean(self.text, facts, host_label))
        if len(found) > 1:
            listed = ", ".join(f"{qualified(g)} ({g.model or g.function.name})" for g in found)
            raise UsageError(f"{self.text!r} matches {len(found)} GPUs on {host_label}: {listed}",
                             remedy="name one of them by the address shown")
        gpu = found[0]
        address = self.address
        if address is not None and address != gpu.address:
            function = facts.function(address, gpu.location)
            kind = function.kind if function else "companion"
            raise UsageError(f"{address} is the {kind} of GPU {gpu.address}, not a GPU",
                             remedy=f"name the GPU, {gpu.address}; its companions go with it")
        if self.name.upper().startswith("PCIROOT(") and gpu.native_address.upper() != self.name.upper():
            raise UsageError(f"{self.name} is a companion of GPU {gpu.native_address}, not a GPU",
                             remedy=f"name the GPU, {gpu.native_address}; its companions go with it")
        return gpu


def names_of(facts: HostFacts) -> list[str]:
    """Every name a GPU of the host answers to, for suggestions and shell completion."""
    names: list[str] = []
    for gpu in facts.gpus:
        names += [qualified(gpu), str(gpu.address), gpu.function.ids]
        if gpu.model:
            names.append(gpu.model)
    return list(dict.fromkeys(names))


def _did_you_mean(text: str, facts: HostFacts, host_label: str) -> str:
    import difflib  # for the error only

    close = difflib.get_close_matches(text, names_of(facts), n=3, cutoff=0.6)
    listing = f"`gpupass gpus {host_label}` lists them"
    return (f"did you mean {' or '.join(repr(c) for c in close)}? " if close else "") + listing


def parse_selectors(values: Sequence[str]) -> tuple[GpuSelector, ...]:
    selectors = []
    for value in values:
        if not value.strip():
            raise UsageError("an empty GPU name was given", remedy="name the GPU by address, model or id")
        selector = GpuSelector(value)
        _ = selector.address  # a mistyped address fails here, before the host is asked
        selectors.append(selector)
    return tuple(selectors)
