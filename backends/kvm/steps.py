"""What a KVM step carries out: one small frozen dataclass per kind of step (the `Step.payload`).

`KvmBackend.apply`, `undo` and `observe` choose their handler by the payload's type (functools'
singledispatchmethod), never by `Step.action`, which is only the step's label in text and --json output.
A new kind of step is a new class here plus its handlers in backend.py; tests/unit/test_step_payloads.py
checks that every class here has an apply and an undo handler.
"""

from __future__ import annotations

from gpupass.backends.kvm.domxml import MdevIntent
from gpupass.core.records import record


@record(frozen=True)
class DefineDomain:
    """Replace VM `vm`'s persistent definition `old_xml` by `new_xml` (refused if it is no longer `old_xml`).

    `claims`: the PCI addresses an assign takes, recorded as a claim in the definition so that runs in
    other processes cannot take the same GPU (gpupass.core.domain.claims); empty for a release.
    """

    vm: str
    old_xml: str
    new_xml: str
    claims: tuple[str, ...] = ()


@record(frozen=True)
class Hotplug:
    """Attach (`attach`) or detach one `<hostdev>` element, `hostdev_xml`, to or from running VM `vm`."""

    vm: str
    hostdev_xml: str
    attach: bool


# -- vGPU shares (mediated devices; backends/kvm/shares.py) --------------------------------------------------
@record(frozen=True)
class CreateMdev:
    """Define and start a mediated device of `type_id` on the card `parent` (a node device name). `resume`: a stopped
    run's device (its intent in the VM): one already defined is started if it is not, instead of defined again."""

    parent: str
    type_id: str
    uuid: str
    resume: bool = False

    @property
    def xml(self) -> str:
        from gpupass.backends.kvm.shares import mdev_definition

        return mdev_definition(self.parent, self.type_id, self.uuid)


@record(frozen=True)
class RemoveMdev:
    """Stop and undefine the mediated device `uuid` that gpupass created (virNodeDeviceDestroy + Undefine)."""

    parent: str
    type_id: str
    uuid: str

    @property
    def xml(self) -> str:
        from gpupass.backends.kvm.shares import mdev_definition

        return mdev_definition(self.parent, self.type_id, self.uuid)


@record(frozen=True)
class DefineShare:
    """Define VM `vm` with (`adds`) or without the <hostdev type='mdev'> of mediated device `uuid`; refused if its
    definition is no longer `old_xml`, apart from gpupass's `intent` for that device (written by the run's earlier step,
    and taken out by this define or written by it: domxml.MdevIntent)."""

    vm: str
    old_xml: str
    new_xml: str
    uuid: str
    adds: bool
    intent: MdevIntent | None = None


@record(frozen=True)
class RecordMdevIntent:
    """Write (`writes`) or take out gpupass's `intent` for a mediated device in VM `vm`'s definition; refused if the
    definition, apart from that intent, is no longer `old_xml`. Written before an assign's first call on the device,
    taken out after a release's removal of it (backends/kvm/mdevstate.py)."""

    vm: str
    old_xml: str
    intent: MdevIntent
    writes: bool


# -- NVIDIA vGPU on an SR-IOV virtual function (backends/kvm/nvidia.py) -----------------------------------------
@record(frozen=True)
class SetVfVgpuType:
    """Write vGPU type `type_id` ("0": none) to virtual function `vf`'s nvidia/current_vgpu_type on the host; its
    undo writes `previous` back."""

    vf: str
    type_id: str
    previous: str


# -- claims (backends/kvm/secretclaims.py) ------------------------------------------------------------------
@record(frozen=True)
class DropClaim:
    """Remove the secret claim `uuid` on `address` naming VM `vm` (UUID `vm_uuid`), which does not hold that GPU: what
    a stopped run left (a release killed between its define and the claim's removal, or an assign between its claim
    and its define). `claim_xml` is the secret as it was, which the undo defines again."""

    vm: str
    vm_uuid: str
    address: str
    uuid: str
    claim_xml: str
