"""The ports a platform implements. The core talks to hypervisors only through these."""

from __future__ import annotations

import importlib.util
from abc import ABC, abstractmethod
from typing import TYPE_CHECKING, Any, ClassVar, Sequence

from gpupass.core.domain.capabilities import Capabilities
from gpupass.core.errors import NotSupported
from gpupass.core.records import record

# Named in signatures only: a command that opens a host to read it does not load the planning model.
if TYPE_CHECKING:
    from pathlib import Path

    from gpupass.core.domain.context import CheckContext
    from gpupass.core.domain.findings import FeatureLoss
    from gpupass.core.domain.inventory import HostFacts, Vm
    from gpupass.core.domain.mmio import MmioPolicy
    from gpupass.core.domain.pci import PciAddress
    from gpupass.core.domain.plan import Step
    from gpupass.core.target import Target


@record(frozen=True)
class StepState:
    """What the host holds of one step: "before" (none of it), "after" (all of it; `token` is what `undo`
    needs), or "unknown" (it could not be read, or it holds part of it; `detail` says what is known)."""

    state: str
    token: Any = None
    detail: str = ""


class Backend(ABC):
    """One connection to one host (or one vCenter) of a platform."""

    platform: ClassVar[str]
    schemes: ClassVar[tuple[str, ...]]
    description: ClassVar[str] = ""
    # Python modules the backend needs at run time, and the pip extra that brings them.
    sdk_modules: ClassVar[tuple[str, ...]] = ()
    extra: ClassVar[str | None] = None
    mmio_policy: ClassVar[MmioPolicy]
    capabilities: ClassVar[Capabilities] = Capabilities()
    # True for a backend that plans from recorded facts (a snapshot) and can never change a host.
    read_only: ClassVar[bool] = False
    # How this platform expresses each hypervisor-neutral setting (gpupass.core.migration.SETTINGS), for
    # migration plans and docs; a setting missing here has no equivalent on the platform.
    native_settings: ClassVar[dict[str, str]] = {}
    # The port a URI of each scheme means when it names none, so that `host:443` and `host` are known to be one
    # host (gpupass.core.hosts.host_identity); a scheme without a network port (a socket, a file) is not listed.
    default_ports: ClassVar[dict[str, int]] = {}

    def __init__(self, target: Target) -> None:
        self.target = target
        # Requests sent to the platform's API; benchmarks and tests read it (it is deterministic).
        self.round_trips = 0

    @classmethod
    def sdk_available(cls) -> bool:
        return all(importlib.util.find_spec(module) is not None for module in cls.sdk_modules)

    # The full command that installs the SDK, for backends whose SDK is not a gpupass extra.
    install_command: ClassVar[str | None] = None

    @classmethod
    def install_hint(cls) -> str:
        if cls.install_command:
            return cls.install_command
        return f"pip install 'gpupass[{cls.extra}]'" if cls.extra else "see the backend's documentation"

    @classmethod
    def check_uri(cls, uri: str) -> None:
        """Refuse, with a UsageError naming it, anything in `uri` this platform must not be handed.

        Called before the backend is constructed, after the core's own checks (no password in the URI, a
        usable port: gpupass.core.uri.check_uri). The default accepts no query parameters at all; a backend
        whose SDK reads some lists the ones that are safe with `gpupass.core.uri.parameters`.
        """
        from gpupass.core.uri import parameters

        parameters(uri, {}, cls.platform)

    @abstractmethod
    def inventory(self) -> HostFacts:
        """Read GPUs, VMs and host settings in as few round trips as the platform allows."""

    def read_back(self, vm: str, devices: Sequence[PciAddress]) -> Vm | None:
        """The VM named `vm` as the host reports it now (None if it is gone), after a change to it and to
        `devices`; `execute` verifies every change with it.

        Backends override it to read only that VM and those devices (one or a few requests); this default
        reads the whole host, which is correct but costs what `inventory` costs.
        """
        return self.inventory().find_vm(vm)

    @abstractmethod
    def plan_assign(self, ctx: CheckContext) -> list[Step]:
        """Translate a checked assignment into this platform's ordered steps (no writes)."""

    @abstractmethod
    def plan_release(self, ctx: CheckContext) -> list[Step]:
        """Translate a release into steps that undo exactly what an assign added."""

    def plan_finish_release(self, ctx: CheckContext) -> list[Step]:
        """Steps that finish what a stopped release of ctx.vm left undone on the host, for a release the VM's
        devices show done already (the core calls this instead of plan_release then). ESXi: the passthrough
        switch-back a release killed after its reconfigure never made, named by its intent record in the VM.
        KVM: the GPU's claim (a libvirt secret) a release killed after its define left. Hyper-V: mounting,
        enabling and restoring the settings a release stopped after Remove-VMAssignableDevice left, named by the
        intent in the VM's restore record. The default: a platform whose release is one write leaves nothing to
        finish."""
        return []

    def plan_finish_assign(self, ctx: CheckContext) -> list[Step]:
        """Steps that keep an assignment the VM's devices show done working, for an assign of GPUs the VM holds
        already (the core calls this instead of plan_assign then). ESXi: a device the VM holds whose host passthrough
        is active but no longer enabled (switched off since the reboot that made it active) stops being passthrough at
        the host's next reboot, and the VM then no longer powers on: it is enabled again (no reboot needed). The
        default: nothing to do."""
        return []

    def features_lost(self, ctx: CheckContext) -> list[FeatureLoss]:
        return []

    def features_kept(self, ctx: CheckContext) -> list[FeatureLoss]:
        """For a share: what the VM keeps that a whole GPU would take from it (FeatureLoss as a feature + why)."""
        return []

    def plan_assign_share(self, ctx: CheckContext) -> list[Step]:
        """Translate a checked share request (ctx.shares, one ShareChange) into ordered steps (no writes).

        Only called for a mode listed in `capabilities.share_modes`; the default is for a backend that lists none.
        """
        raise NotSupported(f"GPU shares are not supported on {self.platform}", remedy="give the GPU whole")

    def plan_release_share(self, ctx: CheckContext) -> list[Step]:
        """Steps that take back exactly the shares in ctx.shares (and what assign created for them)."""
        raise NotSupported(f"GPU shares are not supported on {self.platform}",
                           remedy="take the share back with the platform's own tools")

    def prepare_planned_vm(self, facts: HostFacts, vm: Vm) -> HostFacts:
        """`facts` with what plan_assign needs to plan for `vm`, which does not exist on this host yet.

        For a migration's target; the backend adds to `facts.state` whatever its planner reads for a VM (KVM:
        a minimal definition); the core adds the VM itself to `facts.vms`.
        """
        raise NotSupported(f"planning for a VM that does not exist yet is not supported on {self.platform}",
                           remedy="convert the VM first, then run `gpupass migrate plan` again")

    @classmethod
    def state_to_json(cls, state: Any) -> dict[str, Any]:
        """`HostFacts.state` as JSON-safe data, for `gpupass snapshot`."""
        return {}

    @classmethod
    def state_from_json(cls, data: dict[str, Any]) -> Any:
        """What state_to_json() wrote, back as `HostFacts.state`: planning from a snapshot needs no host."""
        return None

    @abstractmethod
    def apply(self, step: Step) -> Any:
        """Carry out one step; return what `undo` needs to reverse it."""

    @abstractmethod
    def undo(self, step: Step, token: Any) -> None:
        """Reverse a step that `apply` completed."""

    def observe(self, step: Step) -> StepState:
        """After `apply(step)` raised an error that does not say what it left (a timeout, a lost connection,
        an interrupt), read the host again and say what is there. The default admits it cannot tell."""
        return StepState("unknown")

    def close(self) -> None:
        """Release the connection."""

    def __enter__(self) -> Backend:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class LabHost(ABC):
    """A built-in demonstration host whose state lives under the user's data directory."""

    name: ClassVar[str]
    platform: ClassVar[str]
    description: ClassVar[str] = ""
    # Whether `up` starts a server the lab needs before it answers (`gpupass lab demo` starts those later).
    has_server: ClassVar[bool] = False

    @abstractmethod
    def target(self, data_dir: Path) -> Target:
        """The target to open, creating the lab's state first if it does not exist."""

    @abstractmethod
    def reset(self, data_dir: Path) -> None:
        """Restore the lab's initial state."""

    def status(self, data_dir: Path) -> str:
        return "ready"

    def demo_steps(self, labs: Sequence[str]) -> list[tuple[str, str]]:
        """(title, gpupass arguments) pairs that show this lab in `gpupass lab demo`, run while the lab is up.

        `labs` names every installed lab host, for a step that spans two (a migration plan).
        """
        return []

    def open(self, backend_class: type[Backend], target: Target) -> Backend:
        """Open target() with the platform's backend; a lab may add to it (the KVM lab persists its changes)."""
        return backend_class(target)

    def is_up(self, data_dir: Path) -> bool:
        """Whether the lab host answers now (fleet commands include the lab hosts that are up)."""
        return True

    def up(self, data_dir: Path) -> str:
        """Start the lab's server, if it has one; return a line saying where it serves."""
        return "ready (no server needed)"

    def down(self, data_dir: Path) -> str:
        """Stop the lab's server, if it has one."""
        return "nothing to stop"
