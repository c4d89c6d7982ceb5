"""A plan: the ordered steps of one change, what preflight found, and what the VM will lose."""

from __future__ import annotations

from dataclasses import dataclass, field

from gpupass.core.domain.findings import FeatureLoss, Finding
from gpupass.core.domain.inventory import Gpu
from gpupass.core.domain.mmio import MmioNeed
from gpupass.core.domain.sharing import ShareChange


@dataclass(frozen=True)
class Step:
    action: str
    description: str
    undo: str
    changes: tuple[str, ...] = ()
    needs_vm_off: bool = False
    needs_host_reboot: bool = False
    writes: bool = True
    # What the step sends, readable by an admin (an XML diff, a PowerShell script).
    preview: str | None = None
    # What the backend needs to carry the step out: an instance of one of the backend's own small frozen
    # dataclasses (backends/kvm/steps.py ...), whose type picks its apply/undo handler. `action` above is only
    # the step's label for people and --json; no backend dispatches on it. Never shown, never compared.
    payload: object = field(default=None, compare=False, repr=False)


@dataclass(frozen=True)
class MmioSummary:
    need: MmioNeed | None
    current_window: int
    target_window: int
    # The platform's own wording of the need (packed or power of two), from MmioPolicy.explain.
    explanation: str = ""

    @property
    def changes(self) -> bool:
        return self.target_window != self.current_window


@dataclass(frozen=True)
class Plan:
    operation: str
    host: str
    platform: str
    vm: str
    gpus: tuple[Gpu, ...]
    steps: tuple[Step, ...]
    findings: tuple[Finding, ...]
    features_lost: tuple[FeatureLoss, ...] = ()
    mmio: MmioSummary | None = None
    # A share request (core/domain/sharing.py): the shares given or taken back; empty for whole GPUs.
    shares: tuple[ShareChange, ...] = ()
    # What the VM keeps that a whole-GPU passthrough would take (a vGPU that can live-migrate).
    features_kept: tuple[FeatureLoss, ...] = ()

    @property
    def blocked(self) -> bool:
        return any(finding.blocks for finding in self.findings)

    @property
    def nothing_to_do(self) -> bool:
        return not any(step.writes for step in self.steps)

    @property
    def needs_vm_off(self) -> bool:
        return any(step.needs_vm_off for step in self.steps)

    @property
    def needs_host_reboot(self) -> bool:
        return any(step.needs_host_reboot for step in self.steps)
