"""Everything a preflight rule or a backend's planner needs to judge one request."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Union

# Capabilities lives apart so that a backend class (which names its own) does not load the planning model.
from gpupass.core.domain.capabilities import Capabilities as Capabilities
from gpupass.core.domain.inventory import Gpu, HostFacts, Vm
from gpupass.core.domain.mmio import MmioNeed, MmioPolicy, mmio_need
from gpupass.core.domain.pci import PciAddress, PciFunction
from gpupass.core.domain.request import AssignmentRequest, AssignOptions, ReleaseRequest
from gpupass.core.domain.sharing import ASSIGN_SHARE, RELEASE_SHARE, ShareChange


@dataclass(frozen=True)
class CheckContext:
    operation: str
    platform: str
    facts: HostFacts
    vm: Vm
    gpus: tuple[Gpu, ...]
    request: Union[AssignmentRequest, ReleaseRequest]
    policy: MmioPolicy
    capabilities: Capabilities
    # The host as the user named it (lab-kvm, node7), for remedies that are commands to copy.
    host_label: str = ""
    # For assign-share / release-share: the shares given or taken back (one for an assign).
    shares: tuple[ShareChange, ...] = ()

    @property
    def is_share(self) -> bool:
        return self.operation in (ASSIGN_SHARE, RELEASE_SHARE)

    @property
    def host_ref(self) -> str:
        import shlex

        return shlex.quote(self.host_label or self.facts.host.name or self.facts.host.uri)

    @property
    def assign_options(self) -> AssignOptions:
        """The assignment's options; a release has none of them (all off)."""
        options = self.request.options
        return options if isinstance(options, AssignOptions) else AssignOptions()

    @property
    def include_companions(self) -> bool:
        return getattr(self.request.options, "include_companions", True)

    @property
    def functions(self) -> tuple[PciFunction, ...]:
        """Every function that moves: the GPUs, and their companions unless the user left them out."""
        result: list[PciFunction] = []
        for gpu in self.gpus:
            result.extend(gpu.functions if self.include_companions else (gpu.function,))
        return tuple(result)

    @property
    def addresses(self) -> tuple[PciAddress, ...]:
        return tuple(function.address for function in self.functions)

    @property
    def need(self) -> MmioNeed | None:
        """MMIO the VM needs for everything it will hold after the change, from the BARs that are known.

        None only when no BAR at all is known; with some unknown it is a lower bound (the bar-size-unknown
        warning says so), which still sizes the window for the cards that are known.
        """
        known = [gpu.bars for gpu in self.gpus_held_after if gpu.bars is not None]
        if not known:
            return None
        return mmio_need([bar for bars in known for bar in bars])

    @property
    def gpus_held_after(self) -> tuple[Gpu, ...]:
        held = [gpu for gpu in self.facts.gpus if gpu.assigned_to == self.vm.name and gpu.location == self.vm.location]
        if self.operation == "assign":
            held += [gpu for gpu in self.gpus if gpu not in held]
        else:
            held = [gpu for gpu in held if gpu not in self.gpus]
        return tuple(held)

    @property
    def already_done(self) -> bool:
        """True when the facts already show the requested state (the command is idempotent)."""
        if self.operation == ASSIGN_SHARE:
            return all(change.share is not None for change in self.shares)
        if self.operation == RELEASE_SHARE:
            return not self.shares
        held = set(self.vm.assigned)
        if self.operation == "assign":
            return all(address in held for address in self.addresses)
        return not any(address in held for address in self.addresses)
