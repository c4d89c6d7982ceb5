"""The KVM backend: libvirt node devices and domain definitions, edited structurally."""

from __future__ import annotations

import contextlib
import functools
import time
from typing import TYPE_CHECKING, Any, Callable, Iterator, Mapping, Sequence
from urllib.parse import urlsplit

from gpupass.backends.kvm import domxml, mdevstate, nvidia, secretclaims, shares, sysfs
from gpupass.backends.kvm.errors import is_transport_error, translate
from gpupass.backends.kvm.steps import (CreateMdev, DefineDomain, DefineShare, DropClaim, Hotplug, RecordMdevIntent,
                                        RemoveMdev, SetVfVgpuType)
from gpupass.backends.kvm.nodedev import (
    MediatedDevice,
    NodeDevice,
    drivers_in_node_file,
    nodedev_name,
    parse_mdev_nodedev,
    parse_pci_nodedev,
    with_description,
)
from gpupass.core import records
from gpupass.core.domain.capabilities import Capabilities
from gpupass.core.domain.grouping import group_gpus
from gpupass.core.domain.inventory import Firmware, Gpu, Host, HostFacts, PowerState, Vm
from gpupass.core.domain.pci import IommuGroup, PciAddress, PciFunction
from gpupass.core.domain.mmio import GiB, MmioPolicy
from gpupass.core.domain import claims
from gpupass.core.domain.sharing import SRIOV_VF_TYPE, Share, ShareMode, ShareType, Sharing, virtual_function_type
from gpupass.core.errors import (BackendUnavailable, Conflict, ConnectionFailed, GpupassError, NotSupported,
                                 OperationFailed)
from gpupass.core.lazylog import LazyLogger
from gpupass.core.ports import Backend, StepState
from gpupass.core.target import Target

if TYPE_CHECKING:  # named in signatures only: reading a host does not load the planning model
    from pathlib import Path

    from gpupass.backends.kvm.watchdog import Watchdog
    from gpupass.core.domain.context import CheckContext
    from gpupass.core.domain.findings import FeatureLoss
    from gpupass.core.domain.plan import Step

log = LazyLogger("gpupass.kvm")  # logging loads only where a record could be shown

# Local accessors of libvirt objects that do not talk to the daemon.
# (A secret's usage type and ID come with it from the daemon: libvirt src/remote/remote_protocol.x,
# remote_nonnull_secret; virSecretGetUsageID returns the object's own field.)
_LOCAL_CALLS = {"name", "UUIDString", "UUID", "ID", "getConnect", "connect", "usageID", "usageType"}


class _Counted:
    """Wraps a libvirt object so every daemon call is counted in `backend.round_trips`."""

    def __init__(self, wrapped: Any, backend: KvmBackend) -> None:
        self._wrapped, self._backend = wrapped, backend

    def __getattr__(self, name: str) -> Any:
        attribute = getattr(self._wrapped, name)
        if not callable(attribute) or name in _LOCAL_CALLS:
            return attribute

        def call(*args: Any, **kwargs: Any) -> Any:
            self._backend.round_trips += 1
            log.debug("libvirt %s.%s", type(self._wrapped).__name__, name)
            return _wrap(self._backend._bounded(name, attribute, *args, **kwargs), self._backend)

        return call


def _wrap(value: Any, backend: KvmBackend) -> Any:
    module = type(value).__module__
    if module == "libvirt" and type(value).__name__ in ("virDomain", "virNodeDevice", "virSecret"):
        return _Counted(value, backend)
    if isinstance(value, list):
        return [_wrap(item, backend) for item in value]
    if isinstance(value, tuple):
        return tuple(_wrap(item, backend) for item in value)
    return value


def _libvirt() -> Any:
    try:
        import libvirt
    except ImportError as exc:
        raise BackendUnavailable(
            "the kvm backend needs libvirt-python, which is not installed",
            remedy="pip install 'gpupass[kvm]' (it builds against libvirt-dev: apt-get install libvirt-dev pkg-config gcc)",
        ) from exc
    # libvirt prints every error to stderr by default; gpupass reports them itself.
    libvirt.registerErrorHandler(lambda _ctx, _err: None, None)
    return libvirt


@records.record(frozen=True)
class KvmState:
    """What the KVM planner needs beyond the neutral facts (HostFacts.state): each domain's inactive XML."""

    domain_xml: Mapping[str, str] = records.field(default_factory=dict)
    # gpupass's secret claims on GPUs that no VM holds (secretclaims.py): what a stopped run left. A release of the VM
    # a claim names removes it (plan_finish_release); read with the inventory's one listAllSecrets.
    unheld_claims: tuple[secretclaims.SecretClaim, ...] = ()


def _step(**fields: Any) -> Step:
    from gpupass.core.domain.plan import Step  # here: planning loads the planning model, reading a host does not

    return Step(**fields)


def _state(facts: HostFacts) -> KvmState:
    if not isinstance(facts.state, KvmState):
        raise OperationFailed("these facts carry no KVM domain definitions to plan from",
                              remedy="read the host again (or take a new snapshot of it)", rolled_back=True)
    return facts.state


class KvmBackend(Backend):
    platform = "kvm"
    schemes = ("qemu", "qemu+ssh", "qemu+tcp", "qemu+tls", "qemu+unix", "qemu+libssh", "qemu+libssh2", "test")
    # libvirt's remote transports: TLS 16514, TCP 16509, SSH 22 (libvirt's remote URI documentation, "Transport
    # modes"); qemu:// without a transport is TLS.
    default_ports = {"qemu": 16514, "qemu+tls": 16514, "qemu+tcp": 16509, "qemu+ssh": 22, "qemu+libssh": 22,
                     "qemu+libssh2": 22}
    description = "KVM/QEMU through libvirt: <hostdev> devices in the persistent domain definition"
    sdk_modules = ("libvirt",)
    extra = "kvm"
    # OVMF's default 64-bit PCI aperture is 32 GiB; gpupass raises it in powers of two.
    mmio_policy = MmioPolicy(default_window=32 * GiB, granularity=GiB)
    capabilities = Capabilities(live_attach=True, firmware_change=True, hide_hypervisor=True,
                                share_modes=(ShareMode.MDEV, ShareMode.SRIOV_VF, ShareMode.VF_VGPU))

    @classmethod
    def check_uri(cls, uri: str) -> None:
        """libvirt's remote driver takes query parameters that run programs: only the safe ones pass."""
        from gpupass.backends.kvm import uriparams

        uriparams.check(uri)
    native_settings = {
        "firmware": "<os firmware='efi'> (OVMF) or SeaBIOS",
        "memory_reservation": "implicit: VFIO pins guest RAM while the VM runs",
        "mmio_window": "<pcihole64> + OVMF X-PciMmio64Mb",
        "hide_hypervisor": "<kvm><hidden state='on'/> + Hyper-V vendor_id",
        "binding": "<hostdev managed='yes'> by host address",
        "stop_action": "libvirt-guests (host-wide)",
        "dynamic_memory": "<memballoon>, idle while a GPU is assigned",
    }

    def __init__(self, target: Target) -> None:
        super().__init__(target)
        self._module: Any = None
        self._conn: Any = None
        self._watchdog: Watchdog | None = None
        # Whether the connection has a secret driver for claims: None until an assign tries it (the test
        # driver has none: VIR_ERR_NO_SUPPORT), then the bakery in the domains' metadata decides instead.
        self._secret_driver: bool | None = None
        # The secrets this backend defined (by UUID: the object secretDefineXML returned), to take one back on a
        # connection that may make and remove secrets but not look them up (libvirt's access control).
        self._made_secrets: dict[str, Any] = {}
        # Whether the connection lists mediated devices by state (VIR_CONNECT_LIST_NODE_DEVICES_INACTIVE): None until
        # asked, then what libvirt answered (_inactive_mdevs).
        self._inactive_listing: bool | None = None

    @property
    def _libvirt(self) -> Any:
        if self._module is None:
            self._module = _libvirt()
        return self._module

    def prepare_planned_vm(self, facts: HostFacts, vm: Vm) -> HostFacts:
        planned = domxml.planned_domain(vm.name, vm.memory_bytes, vm.firmware)
        state = _state(facts)
        return records.replace(facts, state=records.replace(state, domain_xml={**state.domain_xml,
                                                                                  vm.name: planned}))

    @classmethod
    def state_to_json(cls, state: Any) -> dict[str, Any]:
        import dataclasses  # a snapshot's codec, not a read

        if not isinstance(state, KvmState):
            return {}
        return {"domain_xml": dict(state.domain_xml),
                "unheld_claims": [dataclasses.asdict(claim) for claim in state.unheld_claims]}

    @classmethod
    def state_from_json(cls, data: dict[str, Any]) -> KvmState:
        return KvmState(dict(data.get("domain_xml") or {}),
                        tuple(secretclaims.SecretClaim(**claim) for claim in data.get("unheld_claims") or ()))

    # -- connection ---------------------------------------------------------------------------------
    def _connection(self) -> Any:
        if self._conn is None:
            libvirt = self._libvirt
            log.info("connecting to %s", self.target.label)
            try:
                if self.target.password is not None:
                    conn = self._bounded("connecting", libvirt.openAuth, self.target.uri, self._auth(), 0)
                else:
                    conn = self._bounded("connecting", libvirt.open, self.target.uri)
            except libvirt.libvirtError as exc:
                # The label is what the user typed; the URI (a test-driver file's path) is what failed to open.
                where = self.target.label if self.target.label == self.target.uri else \
                    f"{self.target.label} ({self.target.uri})"
                raise translate(libvirt, exc, f"connecting to {where}", connecting=True) from exc
            self.round_trips += 1
            self._conn = _Counted(conn, self)
        return self._conn

    def _auth(self) -> list[Any]:
        libvirt = self._libvirt
        username, password = self.target.username, self.target.password

        def answer(credentials: list[list[Any]], _data: object) -> int:
            for credential in credentials:
                if credential[0] == libvirt.VIR_CRED_AUTHNAME:
                    credential[4] = username or credential[3]
                elif credential[0] == libvirt.VIR_CRED_PASSPHRASE and password is not None:
                    credential[4] = password.reveal()
            return 0

        return [[libvirt.VIR_CRED_AUTHNAME, libvirt.VIR_CRED_PASSPHRASE], answer, None]

    def _call(self, action: str, function: Callable[..., Any], *args: Any) -> Any:
        try:
            return function(*args)
        except self._libvirt.libvirtError as exc:
            raise translate(self._libvirt, exc, action) from exc

    @property
    def _has_peer(self) -> bool:
        """Whether calls wait on another process that may never answer: not for the libvirt test driver (a file)."""
        return not self.target.uri.startswith("test:")

    def _bounded(self, what: str, function: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        """Run one libvirt call within the host's timeout: on this thread where a fleet's pool watches it
        (core/callbounds.py), else on the watchdog's thread (see watchdog.py); a test-driver file has no peer."""
        if not self._has_peer:
            return function(*args, **kwargs)
        # Here, not at the top: a test-driver host (above) waits on no peer and need not load them.
        from gpupass.backends.kvm.watchdog import CallTimedOut, Watchdog
        from gpupass.core.callbounds import watch_of_this_thread

        watch = watch_of_this_thread()
        try:
            if watch is not None:
                return watch.run(self.target.timeout, lambda: self._no_answer(what), function, *args, **kwargs)
            if self._watchdog is None:
                self._watchdog = Watchdog(self.target.timeout)
            return self._watchdog.call(lambda: function(*args, **kwargs))
        except self._libvirt.libvirtError as exc:
            if is_transport_error(self._libvirt, exc):
                # The connection is lost (libvirt's client fails every later call on it: "client socket is
                # closed"): the next call opens a new one, so that what the host holds can still be read again.
                self._conn = None
            raise
        except CallTimedOut:
            self._conn = None  # a connection with a call still pending cannot be used again
            raise self._no_answer(what) from None

    def _no_answer(self, what: str) -> ConnectionFailed:
        where = urlsplit(self.target.uri).hostname or self.target.uri
        return ConnectionFailed(
            f"{self.target.label} ({where}) did not answer within {self.target.timeout:g}s ({what}); what that "
            "call did on the host is not known",
            remedy="check that the host and libvirtd are up and reachable; for a slow host raise `timeout` in "
                   "its [hosts.NAME] table of the config file")

    def close(self) -> None:
        if self._conn is not None:
            conn, self._conn = self._conn, None
            try:
                self._bounded("closing the connection", conn._wrapped.close)
            except ConnectionFailed:
                pass  # the host stopped answering; nothing is left to release on our side
        if self._watchdog is not None:
            self._watchdog.close()  # its thread ends (one per host in a fleet otherwise)

    @property
    def _is_local(self) -> bool:
        parts = urlsplit(self.target.uri)
        return parts.scheme in ("qemu", "qemu+unix") and not parts.hostname

    # -- inventory ----------------------------------------------------------------------------------
    def inventory(self) -> HostFacts:
        libvirt, conn = self._libvirt, self._connection()
        devices = self._call("listing node devices", conn.listAllDevices, libvirt.VIR_CONNECT_LIST_NODE_DEVICES_CAP_PCI_DEV)
        functions: dict[PciAddress, PciFunction] = {}
        groups: dict[PciAddress, IommuGroup] = {}
        share_types: dict[PciAddress, tuple[ShareType, ...]] = {}
        physical_functions: dict[PciAddress, NodeDevice] = {}
        virtual_functions: set[PciAddress] = set()
        file_drivers = self._test_file_drivers()
        for device in devices:
            parsed = parse_pci_nodedev(self._call("reading a node device", device.XMLDesc, 0),
                                       driver=file_drivers.get(device.name()) if file_drivers else None)
            if parsed is None:
                continue
            if parsed.is_physical_function:
                physical_functions[parsed.function.address] = parsed
                virtual_functions.update(parsed.virtual_functions)
            if parsed.physical_function is not None:
                virtual_functions.add(parsed.function.address)
            function = parsed.function
            if self._is_local:
                function = _with_sysfs_bars(function)
            functions[function.address] = function
            if parsed.iommu_group is not None:
                groups[function.address] = parsed.iommu_group
            if parsed.share_types:
                share_types[function.address] = parsed.share_types
        stats = self._call("listing domains", conn.getAllDomainStats, libvirt.VIR_DOMAIN_STATS_STATE, 0)
        vms: list[Vm] = []
        owners: dict[PciAddress, str] = {}
        holders: list[claims.Holder] = []
        mdev_holders: dict[str, str] = {}
        intents: dict[str, tuple[domxml.MdevIntent, ...]] = {}  # VM -> the mediated devices a stopped run was changing
        domain_xml: dict[str, str] = {}
        held_by: dict[str, list[tuple[str, str]]] = {}  # address -> (VM, its UUID) for every VM holding it
        for domain, values in stats:
            xml = self._call(f"reading domain {domain.name()!r}", domain.XMLDesc, libvirt.VIR_DOMAIN_XML_INACTIVE)
            root = domxml.parse(xml)  # once, for its facts and its claims
            facts = domxml.facts_of(root)
            domain_xml[facts.name] = xml
            for address in facts.hostdevs:
                owners[address] = facts.name
                held_by.setdefault(str(address), []).append((facts.name, facts.uuid))
            claimed, held = domxml.claims_in(root)
            holders.extend(held)
            for uuid in facts.mdevs:
                mdev_holders[uuid] = facts.name
            if intended := domxml.mdev_intents(root):
                intents[facts.name] = intended
            state = values.get("state.state", 0)
            live_only, stored_only = self._live_differences(domain, facts) if state in _ACTIVE_STATES else ((), ())
            for address in live_only:  # the VM holds it while it runs: another VM's assign is refused
                owners.setdefault(address, facts.name)
            vms.append(_vm(facts, state, claimed, live_only, stored_only))
        vms, settled = self._with_claim_owners(vms, held_by)
        vms, unheld, host_notes = self._with_unheld_claims(vms, held_by)
        vms = _with_stale_holdings(vms, [h for h in holders if h.address not in settled])
        # A VF is a share of its PF's card (below), not a GPU of its own and not a companion of the PF, though it
        # has the PF's class and often its slot (an A10's VFs are 41:00.4-41:04.3: OpenNebula's vGPU guide).
        mdev_parents = _fold_vf_mdev_types(physical_functions, share_types)
        gpus = group_gpus([f for a, f in functions.items() if a not in virtual_functions], groups, owners)
        listed, inactive = self._mediated_devices() if share_types or intents else ({}, frozenset())
        gpus = self._with_sharing(gpus, share_types, mdev_holders, physical_functions, listed, inactive, intents)
        cards = {nodedev_name(vf): str(pf) for pf, node in physical_functions.items() for vf in node.virtual_functions}
        vms, mdev_host_notes = _with_mdev_notes(vms, mdev_holders, listed, inactive, intents, cards)
        host_notes += mdev_host_notes
        gpus = [records.replace(g, extra={**g.extra, "mdev_parents": mdev_parents[g.address]})
                if g.address in mdev_parents else g for g in gpus]
        sysfs_root = self._host_sysfs()
        gpus = [_with_virtual_functions(gpu, physical_functions[gpu.address], owners, sysfs_root)
                if gpu.address in physical_functions else gpu for gpu in gpus]
        gpus = self._with_mig_modes(gpus)
        if self._is_local:
            gpus = [_mark_boot_vga(gpu) for gpu in gpus]
        host = Host(
            uri=self.target.uri,
            platform=self.platform,
            name=self.target.name or urlsplit(self.target.uri).hostname or "localhost",
            iommu_enabled=bool(groups) if functions else None,
            iommu_reasons=() if groups or not functions else (
                "no PCI device reports an IOMMU group (VT-d/AMD-Vi off in firmware, or intel_iommu=on missing)",),
            unfinished=tuple(host_notes),
        )
        return HostFacts(host, tuple(gpus), tuple(sorted(vms, key=lambda v: v.name)),
                         {("", a): f for a, f in functions.items()}, state=KvmState(domain_xml, tuple(unheld)))

    def _live_differences(self, domain: Any, facts: domxml.DomainFacts
                          ) -> tuple[tuple[PciAddress, ...], tuple[PciAddress, ...]]:
        """-> the PCI devices a running VM holds in its live definition and not in its stored one (plugged in and never
        written into the definition: an `assign --live` stopped between its hot-plug and its define, or a hot-plug by
        hand), and those in its stored one and not live (unplugged and still written there: a `release --live` stopped
        between its hot-unplug and its define, or a definition changed while the VM runs). One call per running VM
        (virDomainGetXMLDesc without VIR_DOMAIN_XML_INACTIVE: the live definition)."""
        live = domxml.read_facts(self._call(f"reading the live definition of domain {facts.name!r}", domain.XMLDesc,
                                            0)).hostdevs
        return (tuple(a for a in live if a not in facts.hostdevs), tuple(a for a in facts.hostdevs if a not in live))

    def _with_claim_owners(self, vms: list[Vm], held_by: dict[str, list[tuple[str, str]]]) -> tuple[list[Vm], set[str]]:
        """A GPU on several VMs whose secret claim names one of them (a run stopped between its define and
        taking it back, or a hand edit): the others are told to give it back. Two calls per such GPU, none
        otherwise. -> the VMs with their notes, and the addresses settled this way."""
        notes: dict[str, list[str]] = {}
        settled: set[str] = set()
        for address, holding in held_by.items():
            if len(holding) < 2 or self._secret_driver is False:
                continue
            try:
                claim = self._claim_on(address)
            except _SecretsDenied as denied:  # what the connection may read is still shown
                log.warning("%s: cannot read gpupass's claim on %s on this connection: %s", self.target.label,
                            address, denied.message)
                continue
            owner = next((vm for vm, uuid in holding if claim is not None and claim.vm_uuid == uuid), None)
            if claim is None or owner is None:
                continue
            settled.add(address)
            for vm, _ in holding:
                if vm != owner:
                    notes.setdefault(vm, []).append(
                        f"holds {address}, which VM '{owner}' holds too and gpupass's claim gives to it ({claim.origin}); "
                        f"`gpupass release HOST {vm} {address}` takes it off this VM")
        if not notes:
            return vms, settled
        return [records.replace(vm, unfinished=vm.unfinished + tuple(notes[vm.name])) if vm.name in notes
                else vm for vm in vms], settled

    def _with_unheld_claims(self, vms: list[Vm], held_by: dict[str, list[tuple[str, str]]]
                            ) -> tuple[list[Vm], list[secretclaims.SecretClaim], list[str]]:
        """A secret claim on a GPU no VM holds names a VM whose run stopped between its claim and its define (an
        assign killed, or whose define's reply was lost and could not be read again) or between a release's
        define and removing the claim: status shows it on that VM, and a release of that VM removes it
        (plan_finish_release). A claim naming a VM that is no longer defined (undefined after its claim was
        written, or defined again under a new UUID) is shown on the host. One call (listAllSecrets: each secret's
        usage comes with it), plus one per such claim. -> the VMs with their notes, the claims, the host's notes."""
        if self._secret_driver is False or urlsplit(self.target.uri).scheme == "test":
            return vms, [], []  # the libvirt test driver has no secret driver (claims live in the domains' metadata)
        libvirt, conn = self._libvirt, self._connection()
        try:
            secrets = conn.listAllSecrets(0)
        except libvirt.libvirtError as exc:
            if exc.get_error_code() == libvirt.VIR_ERR_NO_SUPPORT:
                self._secret_driver = False
                return vms, [], []
            if exc.get_error_code() in (libvirt.VIR_ERR_OPERATION_DENIED, libvirt.VIR_ERR_ACCESS_DENIED):
                # a connection allowed to read domains but not secrets: everything else can still be shown
                log.warning("%s: cannot list gpupass's claims (libvirt secrets) on this connection: %s",
                            self.target.label, exc.get_error_message())
                return vms, [], []
            raise translate(libvirt, exc, "listing gpupass's claims") from exc
        names = {vm.id: vm.name for vm in vms}
        notes: dict[str, list[str]] = {}
        unheld: list[secretclaims.SecretClaim] = []
        host_notes: list[str] = []
        for secret in secrets:
            usage = secret.usageID() if secret.usageType() == libvirt.VIR_SECRET_USAGE_TYPE_VOLUME else ""
            address = usage.removeprefix(secretclaims.USAGE_PREFIX)
            if not usage.startswith(secretclaims.USAGE_PREFIX) or address in held_by:
                continue
            try:
                claim = secretclaims.from_xml(secret.XMLDesc(0))
            except libvirt.libvirtError as exc:
                if exc.get_error_code() == libvirt.VIR_ERR_NO_SECRET:
                    continue  # removed since the list was read
                raise translate(libvirt, exc, f"reading the claim on {address}") from exc
            if claim is None:
                continue  # a secret with gpupass's usage that gpupass did not make: not ours to report or remove
            unheld.append(claim)
            if claim.vm_uuid not in names:
                # Its VM was undefined after the claim was written (a VM holding a GPU undefined by hand, or one
                # undefined while a run on it stopped): no release of it can run, and an assign of the GPU takes
                # the claim over (_holds: a VM that is not defined holds nothing).
                host_notes.append(
                    f"a claim on {address} names VM '{claim.vm}' (UUID {claim.vm_uuid}), which is not defined on this "
                    f"host ({claim.origin}): it was undefined after the claim was written. `virsh secret-undefine "
                    f"{claim.uuid}` removes the claim; any `gpupass assign` of {address} takes it over after "
                    f"{self._claim_takeover_s:g}s")
                continue
            vm = names[claim.vm_uuid]
            notes.setdefault(vm, []).append(
                f"a claim on {address} for this VM ({claim.origin}) is on the host but the VM does not hold it: an "
                f"assign stopped before its define, or a release before removing the claim; `gpupass release HOST "
                f"{vm} {address}` removes the claim (it finishes the release), `gpupass assign HOST {vm} {address}` "
                f"gives the GPU to this VM, any other assign of it takes the claim over after "
                f"{self._claim_takeover_s:g}s, `virsh secret-undefine {claim.uuid}` removes it now")
        vms = [records.replace(vm, unfinished=vm.unfinished + tuple(notes[vm.name])) if vm.name in notes
               else vm for vm in vms]
        return vms, unheld, host_notes

    def _mediated_devices(self) -> tuple[dict[str, MediatedDevice], frozenset[str]]:
        """Every mediated device the host lists, by UUID, and the UUIDs of those defined but not started.

        The first listing, with no ACTIVE or INACTIVE flag, gives both kinds (libvirt 9.0.0 src/conf/virnodedeviceobj.c,
        virNodeDeviceObjMatch lines 907-913 filter on them only when one is given). Which are stopped is a second
        listing with VIR_CONNECT_LIST_NODE_DEVICES_INACTIVE, asked only where the first found any."""
        libvirt, conn = self._libvirt, self._connection()
        listed: dict[str, MediatedDevice] = {}
        for device in self._call("listing mediated devices", conn.listAllDevices,
                                 libvirt.VIR_CONNECT_LIST_NODE_DEVICES_CAP_MDEV):
            mdev = parse_mdev_nodedev(self._call("reading a mediated device", device.XMLDesc, 0), device.name())
            if mdev is not None:
                listed[mdev.uuid] = mdev
        return listed, self._inactive_mdevs() if listed else frozenset()

    def _inactive_mdevs(self) -> frozenset[str]:
        """The UUIDs of the mediated devices defined but not started, where the connection can list them; else none
        (every device listed is taken as started: such a connection cannot define one without starting it either --
        the libvirt test driver has virNodeDeviceCreateXML, which makes a started device, and no
        virNodeDeviceDefineXML, src/test/test_driver.c driver table lines 10217-10228).

        Whether the connection takes the flag is read from libvirt's error code, once per connection: a driver that
        does not know it refuses it in virCheckFlags with VIR_ERR_INVALID_ARG (src/internal.h, virCheckFlags through
        virReportInvalidArg, src/util/virerror.h): the test driver accepts only the capability flags
        (testConnectListAllNodeDevices, src/test/test_driver.c line 7486); the node device driver accepts them all
        (nodeConnectListAllNodeDevices, src/node_device/node_device_driver.c line 218). A daemon older than 7.3 is
        assumed to refuse it the same way (the flag came with 7.3: include/libvirt/libvirt-nodedev.h line 94; not seen
        here). A driver with no node device listing at all answers VIR_ERR_NO_SUPPORT."""
        if self._inactive_listing is False:
            return frozenset()
        libvirt, conn = self._libvirt, self._connection()
        try:
            devices = conn.listAllDevices(libvirt.VIR_CONNECT_LIST_NODE_DEVICES_CAP_MDEV
                                          | libvirt.VIR_CONNECT_LIST_NODE_DEVICES_INACTIVE)
        except libvirt.libvirtError as exc:
            if exc.get_error_code() in (libvirt.VIR_ERR_INVALID_ARG, libvirt.VIR_ERR_NO_SUPPORT):
                self._inactive_listing = False
                return frozenset()
            raise translate(libvirt, exc, "listing the mediated devices defined but not started") from exc
        self._inactive_listing = True
        stopped = set()
        for device in devices:
            mdev = parse_mdev_nodedev(self._call("reading a mediated device", device.XMLDesc, 0), device.name())
            if mdev is not None:
                stopped.add(mdev.uuid)
        return frozenset(stopped)

    def _with_sharing(self, gpus: list[Gpu], share_types: dict[PciAddress, tuple[ShareType, ...]],
                      mdev_holders: dict[str, str], physical_functions: Mapping[PciAddress, NodeDevice],
                      listed: Mapping[str, MediatedDevice], inactive: frozenset[str],
                      intents: Mapping[str, Sequence[domxml.MdevIntent]]) -> list[Gpu]:
        """Each card's vGPU types and the mediated devices created on it, with the VM holding each; a device defined
        but not started, or named by a stopped run's intent, is never free (mdevstate.py)."""
        if not share_types:
            return gpus
        children: dict[str, list[MediatedDevice]] = {}
        for mdev in listed.values():
            children.setdefault(mdev.parent, []).append(mdev)
        named = mdevstate.intents_by_uuid(intents)
        shared = []
        for gpu in gpus:
            types = share_types.get(gpu.address, ())
            if self._is_local:
                types = tuple(with_description(t, text) if (text := sysfs.mdev_type_description(gpu.address, t.id))
                              else t for t in types)
            # By UUID: libvirt lists node devices in no set order, and a snapshot must read like the live host.
            pf = physical_functions.get(gpu.address)
            parents = (gpu.address, *(pf.virtual_functions if pf else ()))  # a VF's devices are its card's
            held = tuple(Share(m.uuid, m.type_id, ShareMode.MDEV, mdev_holders.get(m.uuid),
                               _share_unfinished(m, mdev_holders.get(m.uuid), inactive, named))
                         for m in sorted((m for a in parents for m in children.get(nodedev_name(a), ())),
                                         key=lambda m: m.uuid))
            # NVIDIA's time-sliced vGPU takes one type per physical GPU at a time (NVIDIA Virtual GPU Software User
            # Guide, "Valid Virtual GPU Configurations on a Single GPU"); its driver then reports 0 available for the
            # other types, and preflight says why.
            one_type = gpu.function.vendor_id == 0x10DE
            shared.append(records.replace(gpu, sharing=Sharing(types, held, one_type_at_a_time=one_type))
                          if types or held else gpu)
        return shared

    # Where NVIDIA's vGPU manager is read (backends/kvm/nvidia.py): the host's own sysfs and nvidia-smi, only on a
    # connection from the host itself; libvirt reports neither. A lab overrides these (backends/kvm/lab).
    def _host_sysfs(self) -> Path | None:
        return nvidia.SYSFS_PCI if self._is_local else None

    def _host_mig_modes(self) -> dict[PciAddress | None, bool | None]:
        return nvidia.read_mig_modes() if self._is_local else {}

    def _with_mig_modes(self, gpus: list[Gpu]) -> list[Gpu]:
        """MIG mode of each NVIDIA GPU that offers vGPU types (read once, only where there is one)."""
        if not any(g.function.vendor_id == 0x10DE and g.sharing.offered for g in gpus):
            return gpus
        modes = self._host_mig_modes()
        if not modes:
            return gpus
        single = modes.get(None) if len(modes) == 1 else None  # one GPU's lines without their heading
        return [records.replace(g, sharing=records.replace(g.sharing, mig_mode=modes.get(g.address, single)))
                if g.function.vendor_id == 0x10DE and g.sharing.offered else g for g in gpus]

    def _test_file_drivers(self) -> dict[str, str]:
        """Drivers of a `test:///path` host, which its node devices do not report (see drivers_in_node_file)."""
        parts = urlsplit(self.target.uri)
        if parts.scheme != "test" or not parts.path or parts.path == "/default":
            return {}
        try:
            with open(parts.path, encoding="utf-8") as node_file:
                return drivers_in_node_file(node_file.read())
        except (OSError, ValueError) as exc:
            raise OperationFailed(f"cannot read the test-driver host file {parts.path}: {exc}",
                                  rolled_back=True) from exc  # a read: nothing was written

    def read_back(self, vm: str, devices: Sequence[PciAddress]) -> Vm | None:
        """The VM's persistent definition and power state: three libvirt calls, whatever the host's size.

        The devices need no read of their own: libvirt's node devices do not change when a definition
        does (managed='yes' rebinds them only at VM start), and what the VM holds is in its definition.
        """
        libvirt, conn = self._libvirt, self._connection()
        try:
            domain = conn.lookupByName(vm)
        except libvirt.libvirtError as exc:
            if exc.get_error_code() == libvirt.VIR_ERR_NO_DOMAIN:
                return None
            raise translate(libvirt, exc, f"looking up VM {vm!r}") from exc
        xml = self._call(f"reading VM {vm!r}", domain.XMLDesc, libvirt.VIR_DOMAIN_XML_INACTIVE)
        state = self._call(f"reading the state of VM {vm!r}", domain.state, 0)[0]
        root = domxml.parse(xml)
        facts = domxml.facts_of(root)
        # The VM's own record of claims; a holding made stale by another VM is an inventory-wide fact.
        return _vm(facts, state, domxml.claims_in(root)[0])

    # -- planning -----------------------------------------------------------------------------------
    def plan_assign(self, ctx: CheckContext) -> list[Step]:
        vm, options = ctx.vm, ctx.assign_options
        xml = _state(ctx.facts).domain_xml[vm.name]
        cards = tuple(gpu.functions if ctx.include_companions else (gpu.function,) for gpu in ctx.gpus)
        need = ctx.need
        set_efi = bool(need and need.is_large and vm.firmware is Firmware.BIOS and options.allow_firmware_change)
        window = None
        if need is not None and not ctx.policy.fits(need, vm.mmio_window_bytes):
            window = ctx.policy.window_for(need)
        edit = domxml.add_gpus(xml, domxml.AssignSettings(
            cards, set_efi=set_efi, mmio_window_bytes=window,
            hide_hypervisor=options.hide_hypervisor and not vm.hypervisor_hidden,
        ))
        steps = []
        new_functions = [f for f in ctx.functions if f.address not in vm.assigned]
        if options.live and not vm.is_off:
            # A device the running VM holds already (an `assign --live` stopped after its hot-plug) is not plugged in
            # twice (libvirt refuses a device in use: "PCI device %s is in use by driver %s, domain %s", libvirt 9.0.0
            # src/hypervisor/virhostdev.c line 97): the define writes it into the stored definition.
            plugged = set(vm.settings.get("held_live_only") or ())
            steps += [self._hotplug_step(vm.name, f, attach=True) for f in new_functions
                      if str(f.address) not in plugged]
        steps.append(self._define_step(vm.name, xml, edit, needs_vm_off=not options.live,
                                       claims=[str(f.address) for f in new_functions]))
        steps.append(_step(
            action="kvm.managed-binding",
            description="at VM start libvirt detaches " + ", ".join(str(f.address) for f in new_functions)
            + " from the host driver and binds vfio-pci (managed='yes'); at VM stop it gives them back",
            undo="nothing to undo: libvirt does it at each start and stop",
            writes=False,
        ))
        return steps

    def plan_release(self, ctx: CheckContext) -> list[Step]:
        vm = ctx.vm
        xml = _state(ctx.facts).domain_xml[vm.name]
        addresses = set(ctx.addresses) & set(vm.assigned)
        edit = domxml.remove_gpus(xml, addresses)
        edit = domxml.Edit(domxml.without_unfinished_claims(edit.xml), edit.changes)
        steps = []
        if ctx.request.options.live and not vm.is_off:
            # A device the running VM no longer holds (a `release --live` stopped after its hot-unplug) is not
            # unplugged twice (libvirt refuses: VIR_ERR_DEVICE_MISSING "host pci device ... not found", libvirt 9.0.0
            # src/qemu/qemu_hotplug.c, qemuDomainDetachPrepHostdev line 5512): the define takes it out of the stored
            # definition.
            unplugged = set(vm.settings.get("held_stored_only") or ())
            functions = [f for f in ctx.functions if f.address in addresses and str(f.address) not in unplugged]
            steps += [self._hotplug_step(vm.name, f, attach=False) for f in functions]
        steps.append(self._define_step(vm.name, xml, edit, needs_vm_off=not ctx.request.options.live))
        return steps + self._finish_release(ctx, edit.xml)

    def plan_finish_release(self, ctx: CheckContext) -> list[Step]:
        """The claims a stopped run left naming this VM on GPUs it does not hold (a release killed between its
        define and the claim's removal, or an assign between its claim and its define): a release of the VM
        removes them -- those on the GPUs it names, or all of them when it names none. A claim on a GPU the VM
        holds is never one of them (the inventory lists only claims on GPUs no VM holds). And the mediated devices a
        stopped vGPU assign or release left recorded in the VM (domxml.MdevIntent): removed where the host lists them,
        then their records taken out."""
        return self._finish_release(ctx, _state(ctx.facts).domain_xml[ctx.vm.name])

    def _finish_release(self, ctx: CheckContext, xml: str) -> list[Step]:
        """plan_finish_release's steps, with the VM's definition `xml` as the release's steps before them leave it."""
        named = {str(a) for a in ctx.addresses} if ctx.request.gpus else None
        held = {str(a) for a in ctx.vm.assigned}
        left = [claim for claim in _state(ctx.facts).unheld_claims if claim.vm_uuid == ctx.vm.id
                and claim.address not in held and (named is None or claim.address in named)]
        steps = [self._drop_claim_step(ctx.vm.name, claim) for claim in sorted(left, key=lambda c: c.address)]
        return steps + self._finish_mdev_intents(ctx, xml)

    @staticmethod
    def _drop_claim_step(vm: str, claim: secretclaims.SecretClaim) -> Step:
        return _step(
            action="kvm.drop-claim",
            description=f"remove the claim on {claim.address} that a stopped gpupass run left for VM '{vm}' (the VM "
                        "does not hold that GPU)",
            undo=f"define the claim's secret again (virsh secret-define, UUID {claim.uuid})",
            changes=(f"virSecretUndefine {claim.uuid} (usage {secretclaims.usage_id(claim.address)}, "
                     f"{claim.origin})",),
            payload=DropClaim(vm, claim.vm_uuid, claim.address, claim.uuid, secretclaims.to_xml(claim)),
        )

    # -- shares (backends/kvm/shares.py) ---------------------------------------------------------------
    def plan_assign_share(self, ctx: CheckContext) -> list[Step]:
        """A free mediated device of the type if the card has one, else a new one; then the domain holds it."""
        (change,), (gpu,), vm = ctx.shares, ctx.gpus, ctx.vm
        xml = _state(ctx.facts).domain_xml[vm.name]
        if change.type.mode is ShareMode.SRIOV_VF:
            return self._plan_assign_vf(ctx, gpu, xml)
        if change.type.mode is ShareMode.VF_VGPU:
            return self._plan_assign_vf_vgpu(ctx, gpu, change.type, xml)
        with_room = (gpu.extra.get("mdev_parents") or {}).get(change.type.id)  # the card's VFs, where they are
        parent = with_room[0] if with_room else nodedev_name(gpu.address)            # the mdev parents
        steps = []
        free = gpu.sharing.free(change.type.id)
        left = next((i for i in domxml.mdev_intents(domxml.parse(xml)) if not i.removing and i.gpu == str(gpu.address)
                     and i.type_id == change.type.id), None)  # a stopped assign's device: this one finishes it
        intent = None
        if left is not None:
            uuid, created, intent = left.uuid, True, left
            create = CreateMdev(left.parent, change.type.id, uuid, resume=True)
            steps.append(self._create_mdev_step(create, change.type, note=" (or start the one a stopped assign left)"))
        elif free:
            uuid, created = free[0].id, False
        else:
            uuid, created = shares.mdev_uuid(ctx.facts.host.uri, vm.name, gpu.address, change.type.id), True
            intent = domxml.MdevIntent(uuid, parent, change.type.id, str(gpu.address))
            steps.append(self._intent_step(vm.name, xml, intent, writes=True))
            steps.append(self._create_mdev_step(CreateMdev(parent, change.type.id, uuid), change.type))
        edit = domxml.add_mdev(xml, uuid, created)
        if intent is not None:  # the define that gives the VM the device takes the run's intent out
            edit = domxml.Edit(domxml.without_mdev_intent(edit.xml, uuid), edit.changes)
        steps.append(self._share_define_step(vm.name, xml, edit, uuid, adds=True, intent=intent,
                                             note="" if created else " (a free one already on the host)"))
        return steps

    @staticmethod
    def _create_mdev_step(create: CreateMdev, share_type: ShareType, note: str = "") -> Step:
        return _step(
            action="kvm.create-mdev",
            description=f"create a {share_type.id} ({share_type.name}) mediated device on {create.parent}{note}",
            undo=f"stop and undefine it: virsh nodedev-destroy and nodedev-undefine of mdev {create.uuid}",
            changes=(f"define and start mdev {create.uuid} (type {share_type.id}, parent {create.parent})",),
            preview=create.xml,
            payload=create,
        )

    @staticmethod
    def _intent_step(vm: str, xml: str, intent: domxml.MdevIntent, writes: bool) -> Step:
        doing = "removing" if intent.removing else "creating"
        return _step(
            action="kvm.record-mdev-intent" if writes else "kvm.clear-mdev-intent",
            description=(f"record in VM '{vm}' that gpupass is {doing} mediated device {intent.uuid} (so that a run "
                         "stopped mid-way shows in `status`)" if writes else
                         f"take out of VM '{vm}' the record that gpupass is {doing} mediated device {intent.uuid}"),
            undo=("take the record out of the VM's definition once the device is gone (a `gpupass release` of the VM "
                  "does it)" if writes else "write the record into the VM's definition again"),
            changes=(f"{'add' if writes else 'remove'} <gpupass:mdev-intent uuid='{intent.uuid}'> in the VM's "
                     "<metadata>",),
            needs_vm_off=True,
            payload=RecordMdevIntent(vm, xml, intent, writes),
        )

    def _finish_mdev_intents(self, ctx: CheckContext, xml: str) -> list[Step]:
        """What a stopped share run left named in the VM's definition (domxml.MdevIntent), on the GPUs a release names
        (all when it names none): the device removed where the host lists it, then the record taken out."""
        named = {str(a) for a in ctx.addresses} if ctx.request.gpus else None
        steps: list[Step] = []
        releasing = {c.share.id for c in ctx.shares if c.share}  # removed by the release's own steps
        for intent in domxml.mdev_intents(domxml.parse(xml)):
            if (named is not None and intent.gpu not in named) or intent.uuid in releasing:
                continue
            listed = any(s.id == intent.uuid for g in ctx.facts.gpus for s in g.sharing.shares)
            if listed:
                remove = RemoveMdev(intent.parent, intent.type_id, intent.uuid)
                steps.append(_step(
                    action="kvm.remove-mdev",
                    description=f"stop and undefine mediated device {intent.uuid} on {intent.parent}, which a stopped "
                                "gpupass run left",
                    undo="define and start it again with the same UUID and type",
                    changes=(f"nodedev-destroy + nodedev-undefine mdev {intent.uuid}",),
                    preview=remove.xml,
                    payload=remove,
                ))
            steps.append(self._intent_step(ctx.vm.name, xml, intent, writes=False))
        return steps

    def plan_release_share(self, ctx: CheckContext) -> list[Step]:
        """The domain gives back its <hostdev type='mdev'>; a device gpupass created is then undefined."""
        vm = ctx.vm
        xml = _state(ctx.facts).domain_xml[vm.name]
        created = set(domxml.mdevs_created_by_gpupass(domxml.parse(xml)))
        steps, removals = [], []
        on_vfs = (ShareMode.SRIOV_VF, ShareMode.VF_VGPU)
        vfs = {PciAddress.parse(c.share.id) for c in ctx.shares if c.type.mode in on_vfs and c.share}
        if vfs:  # a VF leaves like a whole GPU: its <hostdev> goes, and its claim with it (_apply_define)
            types_set = domxml.vf_vgpu_types_set_by_gpupass(domxml.parse(xml))
            edit = domxml.remove_gpus(xml, vfs)
            edit = domxml.Edit(domxml.without_unfinished_claims(edit.xml), edit.changes)
            steps.append(self._define_step(vm.name, xml, edit, needs_vm_off=True))
            xml = edit.xml
            for vf in sorted(str(a) for a in vfs if str(a) in types_set):  # the types gpupass set, not an admin's
                clear = SetVfVgpuType(vf, nvidia.UNSET, types_set[vf])
                removals.append(_step(
                    action="kvm.set-vf-vgpu-type",
                    description=f"clear the vGPU type gpupass set on virtual function {vf}",
                    undo=f"set it again: echo {types_set[vf]} > /sys/bus/pci/devices/{vf}/nvidia/current_vgpu_type",
                    changes=(f"echo 0 > /sys/bus/pci/devices/{vf}/nvidia/current_vgpu_type",),
                    payload=clear,
                ))
        for change in ctx.shares:
            if change.type.mode in on_vfs:
                continue
            uuid = change.share.id if change.share else ""
            edit = domxml.remove_mdev(xml, uuid)
            intent = None
            if uuid in created:
                # The define that takes the device from the VM records the removal in its place, before the device's
                # stop: a run stopped from there on leaves the device named in the VM (mdevstate.py).
                intent = domxml.MdevIntent(uuid, nodedev_name(change.gpu), change.type.id, str(change.gpu),
                                           removing=True)
                recorded = domxml.with_mdev_intent(edit.xml, intent)
                edit = domxml.Edit(recorded.xml, edit.changes + recorded.changes)
            steps.append(self._share_define_step(vm.name, xml, edit, uuid, adds=False, intent=intent))
            xml = edit.xml
            if intent is not None:
                remove = RemoveMdev(intent.parent, change.type.id, uuid)
                removals.append(_step(
                    action="kvm.remove-mdev",
                    description=f"stop and undefine mediated device {uuid} on {intent.parent}, which gpupass created",
                    undo="define and start it again with the same UUID and type",
                    changes=(f"nodedev-destroy + nodedev-undefine mdev {uuid}",),
                    preview=remove.xml,
                    payload=remove,
                ))
                removals.append(self._intent_step(vm.name, xml, intent, writes=False))
        # what a stopped run left named on these GPUs, taken out last (planned from the definition as this release
        # leaves it: each record's define checks the VM is that, apart from gpupass's records)
        return steps + removals + self._finish_mdev_intents(ctx, xml)

    def _plan_assign_vf_vgpu(self, ctx: CheckContext, gpu: Gpu, share_type: ShareType, xml: str) -> list[Step]:
        """An NVIDIA vGPU on a VF (backends/kvm/nvidia.py): a free VF already of the type, else the lowest VF with no
        type that lists it, whose type gpupass sets (a sysfs write on the host, undone by writing 0); then the VF
        goes into the domain as a PCI device with managed='no' (it stays on the nvidia driver), claimed."""
        free = gpu.sharing.free(share_type.id)
        steps: list[Step] = []
        if free:
            vf = free[0].id
        else:
            creatable = gpu.extra.get("vf_vgpu_creatable") or {}
            idle = [s.id for s in gpu.sharing.free(SRIOV_VF_TYPE) if share_type.id in creatable.get(s.id, ())]
            if not idle:  # blocked by preflight (share-capacity-exhausted)
                return []
            vf = idle[0]
            step = SetVfVgpuType(vf, share_type.id, nvidia.UNSET)
            steps.append(_step(
                action="kvm.set-vf-vgpu-type",
                description=f"make virtual function {vf} of {gpu.address} a {share_type.name or share_type.id} vGPU",
                undo=f"clear its type: echo 0 > /sys/bus/pci/devices/{vf}/nvidia/current_vgpu_type",
                changes=(f"echo {share_type.id} > /sys/bus/pci/devices/{vf}/nvidia/current_vgpu_type",),
                payload=step,
            ))
        address = PciAddress.parse(vf)
        function = ctx.facts.function(address) or PciFunction(address, gpu.function.vendor_id, 0,
                                                              gpu.function.class_code)
        edit = domxml.add_gpus(xml, domxml.AssignSettings(((function,),), managed=False))
        if not free:
            edit = domxml.Edit(domxml.with_vf_vgpu_type(edit.xml, vf, share_type.id), edit.changes)
        define = self._define_step(ctx.vm.name, xml, edit, needs_vm_off=True, claims=[vf])
        steps.append(records.replace(define, description=f"give vGPU {vf} ({share_type.name or share_type.id}) "
                                                             f"to VM '{ctx.vm.name}' in its persistent definition"))
        return steps

    def _plan_assign_vf(self, ctx: CheckContext, gpu: Gpu, xml: str) -> list[Step]:
        """The lowest free VF of the PF, as a <hostdev type='pci' managed='yes'> of its own (libvirt
        docs/formatdomain.rst, "Host device assignment"; a VF is a PCI function like any other), claimed like a
        whole GPU so that two runs cannot give the same VF to two VMs."""
        free = gpu.sharing.free(SRIOV_VF_TYPE)
        if not free:  # blocked by preflight (share-capacity-exhausted): there is nothing to plan
            return []
        address = PciAddress.parse(free[0].id)
        function = ctx.facts.function(address) or PciFunction(address, gpu.function.vendor_id, 0,
                                                              gpu.function.class_code)
        edit = domxml.add_gpus(xml, domxml.AssignSettings(((function,),)))
        step = self._define_step(ctx.vm.name, xml, edit, needs_vm_off=True, claims=[str(address)])
        return [
            records.replace(step, description=f"give virtual function {address} of {gpu.address} to VM "
                                                  f"'{ctx.vm.name}' in its persistent definition"),
            _step(action="kvm.managed-binding",
                 description=f"at VM start libvirt detaches {address} from its host driver and binds vfio-pci "
                             "(managed='yes'); at VM stop it gives it back",
                 undo="nothing to undo: libvirt does it at each start and stop", writes=False),
        ]

    def _share_define_step(self, vm: str, old: str, edit: domxml.Edit, uuid: str, adds: bool, note: str = "",
                           intent: domxml.MdevIntent | None = None) -> Step:
        import difflib

        diff = "".join(difflib.unified_diff(
            _pretty(old).splitlines(keepends=True), _pretty(edit.xml).splitlines(keepends=True),
            fromfile=f"{vm} (now)", tofile=f"{vm} (planned)",
        ))
        return _step(
            action="kvm.define-domain",
            description=(f"give mediated device {uuid}{note} to VM '{vm}' in its persistent definition" if adds else
                         f"take mediated device {uuid} from the persistent definition of VM '{vm}'"),
            undo="define the VM again with its previous XML",
            changes=tuple(edit.changes),
            needs_vm_off=True,
            preview=diff,
            payload=DefineShare(vm, old, edit.xml, uuid, adds, intent),
        )

    def _define_step(self, vm: str, old: str, edit: domxml.Edit, needs_vm_off: bool,
                     claims: list[str] | None = None) -> Step:
        import difflib

        diff = "".join(difflib.unified_diff(
            _pretty(old).splitlines(keepends=True), _pretty(edit.xml).splitlines(keepends=True),
            fromfile=f"{vm} (now)", tofile=f"{vm} (planned)",
        ))
        return _step(
            action="kvm.define-domain",
            description=f"update the persistent definition of VM '{vm}'",
            undo="define the VM again with its previous XML",
            changes=tuple(edit.changes),
            needs_vm_off=needs_vm_off,
            preview=diff,
            payload=DefineDomain(vm, old, edit.xml, tuple(claims or ())),
        )

    def _hotplug_step(self, vm: str, function: PciFunction, attach: bool) -> Step:
        verb = "hot-plug" if attach else "hot-unplug"
        return _step(
            action="kvm.hotplug" if attach else "kvm.hotunplug",
            description=f"{verb} {function.address} ({function.kind}) {'into' if attach else 'from'} running VM '{vm}'",
            undo=f"{'hot-unplug' if attach else 'hot-plug'} it again",
            changes=(f"{verb} <hostdev> {function.address}",),
            payload=Hotplug(vm, domxml.hostdev_xml(function), attach),
        )

    def features_lost(self, ctx: CheckContext) -> list[FeatureLoss]:
        from gpupass.core.domain.findings import FeatureLoss

        if ctx.is_share and all(c.type.mode is ShareMode.SRIOV_VF for c in ctx.shares):
            # A VF is a PCI host device like a whole GPU (<hostdev type='pci'>), with the same limits.
            return [
                FeatureLoss("live migration", "libvirt refuses to migrate a domain with PCI host devices"),
                FeatureLoss("managed save / suspend to disk", "the VF's device state cannot be saved"),
                FeatureLoss("snapshots with memory state", "the VF's device state cannot be captured"),
            ]
        if ctx.is_share:
            return [
                FeatureLoss("live migration, unless QEMU can migrate this vGPU",
                            "libvirt migrates a domain with a mediated device only where the vendor driver supports "
                            "VFIO migration (NVIDIA vGPU: the releases and GPUs its user guide lists)"),
                FeatureLoss("snapshots with memory state", "the vGPU's device state is saved only with VFIO migration"),
            ]
        return [
            FeatureLoss("live migration", "libvirt refuses to migrate a domain with PCI host devices"),
            FeatureLoss("managed save / suspend to disk", "the GPU's device state cannot be saved"),
            FeatureLoss("snapshots with memory state", "the GPU's device state cannot be captured"),
            FeatureLoss("memory ballooning and overcommit", "guest RAM stays pinned for the GPU's DMA while the VM runs"),
        ]

    def features_kept(self, ctx: CheckContext) -> list[FeatureLoss]:
        from gpupass.core.domain.findings import FeatureLoss

        if not ctx.is_share:
            return []
        if all(c.type.mode is ShareMode.SRIOV_VF for c in ctx.shares):
            return [FeatureLoss("the card for other VMs", "the physical function stays with the host's driver: its "
                                "other virtual functions can go to other VMs")]
        return [FeatureLoss("the card for other VMs", "the host's vendor driver keeps the card: other VMs can hold "
                            "shares of it, and the host can still use it")]

    # -- applying -----------------------------------------------------------------------------------
    # apply, undo and observe pick their handler by the payload's type (backends/kvm/steps.py), never by the
    # step's action label. Registered by class, not by annotation: functools would evaluate every annotation of each
    # handler at import (`step: Step` names the planning model, which reading a host does not load).
    def apply(self, step: Step) -> Any:
        return self._apply(step.payload)

    @functools.singledispatchmethod
    def _apply(self, payload: object) -> Any:
        raise OperationFailed(f"the kvm backend cannot carry out a step of type {type(payload).__name__}",
                              remedy="plan again with this version of gpupass", rolled_back=True)

    @_apply.register(DefineDomain)
    def _apply_define(self, payload: DefineDomain) -> str:
        current = self._current_xml(payload.vm)
        if current != payload.old_xml:
            raise Conflict(
                f"VM '{payload.vm}' was changed by someone else since the plan was made; nothing was changed",
                remedy="run the command again to plan from its current definition", rolled_back=True,
            )
        if payload.claims:
            return self._define_claimed(payload)
        self._define(payload.new_xml, "defining the new VM definition")
        before, after = domxml.read_facts(payload.old_xml), domxml.read_facts(payload.new_xml)
        try:
            self._release_claims(before.uuid, {str(a) for a in before.hostdevs} - {str(a) for a in after.hostdevs})
        except _SecretsDenied:
            # This connection may not read (or remove) the GPU's claim: a release that left it would leave a claim on
            # a GPU its VM does not hold, so the release is taken back and refused whole.
            with _after_its_write():
                self._take_back_define(payload.old_xml, "taking the release back: its claim cannot be removed on this "
                                                        "connection")
            raise  # taken back (read back after a lost reply): rolled back, as its error says
        except OperationFailed as failed:
            _not_known(failed)  # the define went through, its claim's removal did not: the service reads again
            raise
        return payload.old_xml

    @_apply.register(DropClaim)
    def _apply_drop_claim(self, payload: DropClaim) -> bool:
        """Undefine the claim by its UUID (never a newer claim on the GPU: secretclaims.py), unless its VM holds the
        GPU by now (an undone release gave it back): a claim in use is never removed. -> whether it was there."""
        libvirt = self._libvirt
        if self._holds(payload.vm_uuid, payload.address):
            raise Conflict(f"VM '{payload.vm}' holds {payload.address} again: its claim is in use and stays; nothing "
                           "was changed", remedy="run `gpupass status HOST`", rolled_back=True)
        try:
            self._connection().secretLookupByUUIDString(payload.uuid).undefine()
        except libvirt.libvirtError as exc:
            if exc.get_error_code() == libvirt.VIR_ERR_NO_SECRET:
                return False  # gone since the plan (taken over by an assign of the GPU): nothing left to remove
            raise translate(libvirt, exc, f"removing the claim on {payload.address}") from exc
        return True

    @_apply.register(Hotplug)
    def _apply_hotplug(self, payload: Hotplug) -> None:
        self._hotplug(payload.vm, payload.hostdev_xml, attach=payload.attach)

    # How long a claimant waits for another run that is choosing its claim number (gpupass.core.domain.claims);
    # a run killed in that moment leaves its claim choosing, and after this the waiting run gives up.
    _claim_wait_s = 10.0

    def _define_claimed(self, payload: DefineDomain) -> str:
        """The define of an assign, as a claim that holds across processes and machines: a libvirt secret per
        GPU where the connection has a secret driver (secretclaims.py), else the bakery in the domains'
        metadata (gpupass.core.domain.claims), which costs two reads of every domain."""
        if self._secret_driver is not False:
            try:
                return self._define_with_secrets(payload)
            except _NoSecretDriver:
                self._secret_driver = False
        return self._define_with_bakery(payload)

    def _define_with_bakery(self, payload: DefineDomain) -> str:
        vm, old = payload.vm, payload.old_xml
        mine = claims.new_claim(vm, payload.claims)
        self._define(domxml.with_claim(old, mine), f"recording gpupass's claim in VM {vm!r}")
        with _after_its_write():  # the claim is in the VM: a call failing from here leaves it, or more
            return self._define_with_bakery_claimed(payload, mine)

    def _define_with_bakery_claimed(self, payload: DefineDomain, mine: claims.Claim) -> str:
        vm, old = payload.vm, payload.old_xml
        others, _ = self._claims(exclude=vm)
        mine = mine.numbered(claims.next_number(mine, others))
        try:
            self._define(domxml.with_claim(payload.new_xml, mine), "defining the new VM definition")
        except GpupassError as refused:
            # libvirt takes a definition whole or not at all: only the claim is there; take it back. Whether or not
            # that went through, the error leaves the outcome to the service's read of the VM (_after_its_write).
            self._define(old, "taking back the claim after libvirt refused the definition")
            raise refused
        deadline = time.monotonic() + self._claim_wait_s
        gave_up_waiting = False
        while True:
            domains = self._all_domain_xml()
            if mine.token not in domains.get(vm, ""):
                # Another run's define replaced this one's whole definition (its claim token is gone with it), so
                # nothing of this run's change is on the host: rolled back, with what the VM holds now.
                raise Conflict(
                    f"VM '{vm}' was redefined by another run while this one was assigning "
                    f"{', '.join(sorted(mine.addresses))}; it now holds "
                    f"{', '.join(str(a) for a in domxml.read_facts(domains[vm]).hostdevs) or 'no PCI device'}"
                    if vm in domains else f"VM '{vm}' was undefined by another run during the assignment",
                    remedy="run `gpupass status HOST`, then the command again if the GPU is not there",
                    rolled_back=True)
            others, holders = self._claims(exclude=vm, domains=domains)
            verdict = claims.decide(mine, others, holders)
            if verdict.outcome != "wait":
                break
            if time.monotonic() > deadline:
                verdict = claims.Verdict(
                    "lose", f"VM '{verdict.other_vm}' carries a claim on the same GPU that stayed unfinished for "
                    f"{self._claim_wait_s:.0f}s (a gpupass run stopped mid-way?)", verdict.other_vm)
                gave_up_waiting = True
                break
            time.sleep(0.05)
        if verdict.outcome == "lose":
            self._define(old, "undoing this run's change after losing the claim")
            raise Conflict(
                f"{verdict.reason}; this run's change to VM '{vm}' was undone",
                remedy=f"release the GPU from VM '{verdict.other_vm}' first if it should move"
                       + ("; a claim left by a stopped run goes away with any gpupass assign or release of that VM"
                          if gave_up_waiting else ""), rolled_back=True)
        return old

    # How old a claim on a GPU its VM does not hold must be before another run takes it over (secret claims).
    _claim_takeover_s = 2.0

    def _define_with_secrets(self, payload: DefineDomain, adopt_own: bool = False) -> str:
        """Claim each GPU as a libvirt secret (secretclaims.py), define the new definition, then look each
        claim up again: one that is no longer this run's was taken over by a run that found it stale, and
        this run undoes its change. Calls: one secretDefineXML and one secretLookupByUsage per address and
        one defineXML, whatever the number of domains on the host. `adopt_own`: a claim already naming this VM
        is kept as this run's (an undone release gives the VM back the GPUs its claims still name)."""
        vm, old = payload.vm, payload.old_xml
        vm_uuid = domxml.read_facts(old).uuid
        run = claims.new_claim(vm, payload.claims)
        taken: list[tuple[secretclaims.SecretClaim, secretclaims.SecretClaim | None]] = []
        asking: secretclaims.SecretClaim | None = None
        try:
            for address in sorted(payload.claims):  # one order for every run: no two wait on each other
                asking = secretclaims.new(address, vm, vm_uuid, run.token, run.origin, time.time())
                claim = functools.partial(self._take_claim, asking, first=not taken, adopt_own=adopt_own)
                # Taking a release back (adopt_own) claims again what its claim may still hold: a reply lost there is
                # asked once more over a new connection, which finds the claim (this run's or the release's) there.
                taken.append(self._once_more_if_lost(claim) if adopt_own else claim())
                asking = None
        except _NoSecretDriver:
            raise  # refused at the first claim: nothing was made
        except _SecretsDenied as denied:
            # Refused by the host's access control (the claim asked for last was not made): only the claims made
            # before it are taken back.
            if not self._drop_claims_after_failure([claim for claim, _ in taken]):
                _not_known(denied)
            raise
        except BaseException as failed:
            # Nothing is defined yet: only claims to take back, the one asked for last included (its reply may
            # have been lost after the daemon made it; it is removed by the UUID this run chose, never another's).
            if not self._drop_claims_after_failure([claim for claim, _ in taken] + ([asking] if asking else [])) \
                    and isinstance(failed, OperationFailed):
                _not_known(failed)  # a claim of this run may be left: the service reads the host again
            raise
        try:
            if adopt_own:  # a release taken back: its define is read back after a lost reply (_take_back_define)
                self._take_back_define(payload.new_xml, "defining the new VM definition")
            else:
                self._define(payload.new_xml, "defining the new VM definition")
        except GpupassError as refused:
            if isinstance(refused, ConnectionFailed):
                # The define may have been carried out with its reply lost: the claims stay with it, and the
                # service reads the VM again (observe) and undoes what is there, claims included (_undo_define).
                raise
            # refused by the daemon: nothing defined, only the claims to take back
            if not self._drop_claims_after_failure([claim for claim, _ in taken]) and \
                    isinstance(refused, OperationFailed):
                _not_known(refused)
            raise
        with _after_its_write():  # the VM is defined with its claims: a call failing from here leaves the change
            taken_back = self._check_claims_after_define(vm, old, taken)
        if taken_back is not None:
            raise taken_back  # the change taken back, read back after a lost reply: rolled back
        return old

    def _check_claims_after_define(self, vm: str, old: str,
                                   taken: list[tuple[secretclaims.SecretClaim, secretclaims.SecretClaim | None]]
                                   ) -> OperationFailed | None:
        """After the define of an assign: is each claim still this run's? -> None if so; else, with the change taken back,
        the error to report (the conflict, or a connection that may not read claims)."""
        try:
            lost = [(claim, self._claim_on(claim.address)) for claim, _ in taken
                    if not self._still_mine(claim)]
            # A claim taken over from a stale one: the run that made it may have defined its VM and seen its
            # claim before the takeover, and then it won; its VM holding the GPU now says so.
            # (A stale claim of this same VM is left by an earlier run on it: its VM holding the GPU is this define.)
            overtaken = [(mine, stale) for mine, stale in taken if stale is not None and stale.vm_uuid != mine.vm_uuid
                         and self._holds(stale.vm_uuid, mine.address)]
        except _SecretsDenied as denied:
            # The claims were made and the VM defined, but this connection may not read a claim back, so whether it is
            # still this run's cannot be known: the change is taken back rather than kept unchecked.
            self._take_back_define(old, "undoing this run's change: its claim cannot be read back on this connection")
            self._drop_own_claims_unread([claim for claim, _ in taken], denied)  # raises, not rolled back, if left
            return denied
        if lost or overtaken:
            self._take_back_define(old, "undoing this run's change after losing the claim")
            self._once_more_if_lost(lambda: self._drop_claims([claim for claim, _ in taken]))
            mine, other = (lost or overtaken)[0]
            who = f"VM '{other.vm}' ({other.origin})" if other is not None else "another run"
            return Conflict(f"{who} claimed {mine.address} while this run was assigning it; this run's change to "
                            f"VM '{vm}' was undone", remedy=f"release the GPU from VM '{other.vm if other else '?'}' "
                                                            "first if it should move", rolled_back=True)
        return None

    def _take_back_define(self, xml: str, action: str) -> None:
        """A define that takes a change back (an undo, or a run that lost its claim), whose reply may be lost after
        libvirtd carried it out (libvirt's client reports the closed connection, or the host's timeout runs out:
        ConnectionFailed). Then the VM is read again over a new connection: holding `xml` (compared as libvirt reports
        definitions back, _essentials), the take-back is done; else the error stands and the service reads the host."""
        try:
            self._define(xml, action)
        except ConnectionFailed as lost:
            try:
                now = self._current_xml(domxml.read_facts(xml).name)
            except GpupassError:
                raise lost from None
            if _essentials(now, keep_claims=True) != _essentials(xml, keep_claims=True):
                raise
            log.info("%s: %s went through although its reply was lost (read back)", self.target.label, action)

    def _once_more_if_lost(self, call: Callable[[], Any]) -> Any:
        """`call` again, once, over a new connection (_bounded drops a lost one), when its reply was lost. Only for
        calls that find their work done when it is: claims removed by usage and VM or by UUID (_release_claims,
        _drop_claims, _remove_stale_claim), a claim taken with adopt_own (a claim already naming the VM is kept)."""
        try:
            return call()
        except ConnectionFailed:
            return call()

    def _drop_own_claims_unread(self, mine: list[secretclaims.SecretClaim], denied: _SecretsDenied) -> None:
        """Take back this run's claims on a connection that may not look secrets up: by the objects secretDefineXML
        returned (virSecretUndefine checks only org.libvirt.api.secret.delete: src/remote/remote_protocol.x). If that
        is refused too, the claims stay, and the error says so (not rolled back)."""
        libvirt = self._libvirt
        left = []
        for claim in mine:
            made = self._made_secrets.pop(claim.uuid, None)
            try:
                if made is None:
                    raise denied
                made.undefine()
            except (libvirt.libvirtError, _SecretsDenied) as exc:
                if isinstance(exc, libvirt.libvirtError) and exc.get_error_code() == libvirt.VIR_ERR_NO_SECRET:
                    continue
                left.append(claim)
        if left:
            raise _SecretsDenied(
                f"{denied.message}; this run's change to the VM was undone but its claim on "
                f"{', '.join(c.address for c in left)} could not be removed on this connection",
                remedy="as a user who may remove libvirt secrets: "
                       + "; ".join(f"virsh secret-undefine {c.uuid}" for c in left) + f". {denied.remedy}",
                rolled_back=False) from denied

    def _drop_claims_after_failure(self, mine: list[secretclaims.SecretClaim]) -> bool:
        """-> whether this run's claims are taken back. If not, the run's own error says more, and the caller makes it
        not known (_not_known) so that the service reads the host again and undoes what it finds."""
        try:
            self._drop_claims(mine)
        except GpupassError as error:
            log.warning("could not take back this run's claims: %s", error.message)
            return False
        return True

    def _take_claim(self, mine: secretclaims.SecretClaim, first: bool, adopt_own: bool = False
                    ) -> tuple[secretclaims.SecretClaim, secretclaims.SecretClaim | None]:
        """Define the claim's secret; -> the claim now this run's, and the stale claim it replaced, if any (with
        `adopt_own`, a claim that already names this VM is this run's). A claim of another run whose VM
        does not hold the GPU is waited for: that run is between its claim and its define, or it stopped
        there (killed), or the GPU was taken off its VM by hand. Once the claim is _claim_takeover_s old (by
        its maker's clock), or has been seen that long, it is taken over. Safety does not rest on that
        time: a run whose claim was taken over sees so after its define and undoes it, and the run that
        took it over loses if the other one's VM holds the GPU by then (_define_with_secrets)."""
        libvirt = self._libvirt
        replaced = None
        waiting_on, since, delay = "", time.monotonic(), 0.05
        refusals_without_owner = 0
        while True:
            try:  # dated at each attempt: a claim made after a wait must not look old to the others
                # (the connection of now: a takeover whose reply was lost goes on over a new one)
                made = self._connection().secretDefineXML(secretclaims.to_xml(records.replace(mine, at=time.time())),
                                                          0)
                self._made_secrets[mine.uuid] = made
                self._secret_driver = True
                return mine, replaced
            except libvirt.libvirtError as exc:
                code = exc.get_error_code()
                if first and code == libvirt.VIR_ERR_NO_SUPPORT:
                    raise _NoSecretDriver() from exc
                self._refused_secrets(exc, f"claiming {mine.address}")
                if code != libvirt.VIR_ERR_INTERNAL_ERROR or is_transport_error(libvirt, exc):
                    raise translate(libvirt, exc, f"claiming {mine.address}") from exc
                refused = exc
            # VIR_ERR_INTERNAL_ERROR is also what other failures report: the usage's owner tells which.
            other = self._claim_on(mine.address)
            if other is None:
                refusals_without_owner += 1
                if refusals_without_owner > 3:  # not a taken usage: libvirt failed for another reason
                    raise translate(libvirt, refused, f"claiming {mine.address}") from refused
                continue  # released (or taken back) meanwhile: claim it again
            if adopt_own and other.vm_uuid == mine.vm_uuid:
                return other, None
            if other.uuid != waiting_on:
                waiting_on, since, delay = other.uuid, time.monotonic(), 0.05
            if not other.vm_uuid:
                # rolled back: this run's claims made before this one are taken back by _define_with_secrets, which
                # makes the error not known where that fails
                raise Conflict(f"{mine.address} is claimed by a libvirt secret gpupass did not make (usage "
                               f"{secretclaims.usage_id(mine.address)!r}, UUID {other.uuid}); nothing was changed",
                               remedy="if nothing uses that secret, remove it (`virsh secret-undefine "
                                      f"{other.uuid}`), then run the command again", rolled_back=True)
            if self._holds(other.vm_uuid, mine.address):
                raise Conflict(f"{mine.address} is claimed by VM '{other.vm}' ({other.origin}), which holds it; "
                               "nothing was changed", remedy=f"release the GPU from VM '{other.vm}' first if it "
                                                             "should move", rolled_back=True)  # (as above)
            if time.monotonic() - since > self._claim_takeover_s or time.time() - other.at > self._claim_takeover_s:
                # A lost reply here leaves the stale claim removed or not, and another run may have claimed the GPU
                # since: asked once more over a new connection, the removal finds its work done (or another run's
                # claim, which it leaves), and the claim is then asked for as before -- not reported as a lost
                # connection after the host's only change, the stale claim's removal, was made.
                self._once_more_if_lost(functools.partial(self._remove_stale_claim, other))
                replaced = other
                continue
            time.sleep(delay)
            delay = min(delay * 2, 0.5)

    def _remove_stale_claim(self, stale: secretclaims.SecretClaim) -> None:
        """Undefine `stale` if it is still the claim on its GPU, by its UUID: a newer claim of someone else is never
        removed (virSecretUndefine finds the secret by UUID: secretclaims.py), and one already gone is done."""
        libvirt = self._libvirt
        secret = self._secret_by_usage(stale.address)
        if secret is None or secret.UUIDString() != stale.uuid:
            return
        try:
            secret.undefine()
        except libvirt.libvirtError as exc:
            if exc.get_error_code() != libvirt.VIR_ERR_NO_SECRET:
                raise translate(libvirt, exc, f"taking over the stale claim on {stale.address}") from exc

    def _claimed_for(self, vm_uuid: str, addresses: Sequence[str]) -> bool:
        """Does a secret claim on one of `addresses` name the VM with this UUID?"""
        if self._secret_driver is False:
            return False
        return any((claim := self._claim_on(address)) is not None and claim.vm_uuid == vm_uuid
                   for address in addresses)

    def _still_mine(self, claim: secretclaims.SecretClaim) -> bool:
        secret = self._secret_by_usage(claim.address)
        return secret is not None and secret.UUIDString() == claim.uuid

    def _secret_by_usage(self, address: str) -> Any:
        libvirt = self._libvirt
        try:
            return self._connection().secretLookupByUsage(libvirt.VIR_SECRET_USAGE_TYPE_VOLUME,
                                                          secretclaims.usage_id(address))
        except libvirt.libvirtError as exc:
            if exc.get_error_code() == libvirt.VIR_ERR_NO_SUPPORT:
                self._secret_driver = False
                return None
            if exc.get_error_code() == libvirt.VIR_ERR_NO_SECRET:
                return None
            self._refused_secrets(exc, f"looking up the claim on {address}")
            raise translate(libvirt, exc, f"looking up the claim on {address}") from exc

    def _refused_secrets(self, exc: Any, action: str) -> None:
        """Raise _SecretsDenied when libvirt's access control refused this connection a secret (VIR_ERR_ACCESS_DENIED,
        whatever the access driver said: src/access/viraccessmanager.c, virAccessManagerSanitizeError)."""
        libvirt = self._libvirt
        if exc.get_error_code() in (libvirt.VIR_ERR_ACCESS_DENIED, libvirt.VIR_ERR_OPERATION_DENIED):
            # The permissions each secret call checks are the @acl lines of libvirt's src/remote/remote_protocol.x
            # (secretDefineXML: secret.write and secret.save; secretLookupByUsage/ByUUID: secret.getattr;
            # virSecretGetXMLDesc: secret.read; virSecretUndefine: secret.delete; virConnectListAllSecrets:
            # connect.search-secrets).
            raise _SecretsDenied(
                f"{action}: {exc.get_error_message()}: this connection may not use libvirt secrets, which gpupass "
                "claims GPUs with (the host's libvirt access control refused it)",
                remedy="let this user make, read and remove libvirt secrets (libvirt's access control, "
                       "https://libvirt.org/acl.html: the polkit actions " + ", ".join(
                           f"org.libvirt.api.secret.{p}" for p in ("getattr", "read", "write", "save", "delete"))
                       + " and org.libvirt.api.connect.search-secrets), or connect as a user who may; the secrets "
                         "hold no value, only which VM claims a GPU",
                rolled_back=True) from exc  # this call was refused; a step whose write went through says not known

    def _claim_on(self, address: str) -> secretclaims.SecretClaim | None:
        """The claim on `address` now, or None. A secret with that usage that is not a gpupass claim counts
        as a claim nobody can take over (its VM UUID matches no domain)."""
        secret = self._secret_by_usage(address)
        if secret is None:
            return None
        libvirt = self._libvirt
        try:
            text = secret.XMLDesc(0)
        except libvirt.libvirtError as exc:
            if exc.get_error_code() == libvirt.VIR_ERR_NO_SECRET:
                return None
            self._refused_secrets(exc, f"reading the claim on {address}")
            raise translate(libvirt, exc, f"reading the claim on {address}") from exc
        return secretclaims.from_xml(text) or secretclaims.SecretClaim(address, "(not gpupass)", "", "", "",
                                                                       secret.UUIDString())

    def _holds(self, vm_uuid: str, address: str) -> bool:
        """Does the domain with this UUID hold `address` in its persistent definition now?"""
        libvirt = self._libvirt
        if not vm_uuid:
            return True  # a secret gpupass did not make: never taken over
        try:
            domain = self._connection().lookupByUUIDString(vm_uuid)
            xml = domain.XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE)
        except libvirt.libvirtError as exc:
            if exc.get_error_code() == libvirt.VIR_ERR_NO_DOMAIN:
                return False
            raise translate(libvirt, exc, f"reading the VM that claimed {address}") from exc
        return address in {str(a) for a in domxml.read_facts(xml).hostdevs}

    def _drop_claims(self, mine: list[secretclaims.SecretClaim]) -> None:
        """Take back this run's own claims (by UUID: never one that replaced it)."""
        libvirt, conn = self._libvirt, self._connection()
        for claim in mine:
            try:
                conn.secretLookupByUUIDString(claim.uuid).undefine()
            except libvirt.libvirtError as exc:
                if exc.get_error_code() not in (libvirt.VIR_ERR_NO_SECRET, libvirt.VIR_ERR_NO_SUPPORT):
                    raise translate(libvirt, exc, f"taking back the claim on {claim.address}") from exc

    def _release_claims(self, vm_uuid: str, addresses: set[str]) -> None:
        """After a release (or the undo of an assign): the claims on these addresses that name this VM."""
        if self._secret_driver is False or not addresses:
            return
        libvirt = self._libvirt
        for address in sorted(addresses):
            secret = self._secret_by_usage(address)
            if secret is None:
                continue
            try:  # undefined by its UUID, read here: a claim made after this read is never removed
                claim = secretclaims.from_xml(secret.XMLDesc(0))
                if claim is not None and claim.vm_uuid == vm_uuid:
                    secret.undefine()
            except libvirt.libvirtError as exc:
                if exc.get_error_code() not in (libvirt.VIR_ERR_NO_SECRET, libvirt.VIR_ERR_NO_SUPPORT):
                    self._refused_secrets(exc, f"removing the claim on {address}")
                    raise translate(libvirt, exc, f"removing the claim on {address}") from exc

    def _all_domain_xml(self) -> dict[str, str]:
        self._before_reading_definition()  # a test-driver lab reloads its file: other processes' defines are there
        conn = self._connection()
        domains = self._call("listing domains", conn.listAllDomains, 0)
        inactive = self._libvirt.VIR_DOMAIN_XML_INACTIVE
        return {d.name(): self._call(f"reading domain {d.name()!r}", d.XMLDesc, inactive) for d in domains}

    def _claims(self, exclude: str, domains: dict[str, str] | None = None
                ) -> tuple[list[claims.Claim], list[claims.Holder]]:
        found: tuple[list[claims.Claim], list[claims.Holder]] = ([], [])
        for name, xml in (domains if domains is not None else self._all_domain_xml()).items():
            if name != exclude:
                claimed, held = domxml.claims_of(xml)
                found[0].extend(claimed)
                found[1].extend(held)
        return found

    def undo(self, step: Step, token: Any) -> None:
        self._undo(step.payload, token)

    @functools.singledispatchmethod
    def _undo(self, payload: object, token: Any) -> None:
        raise OperationFailed(f"the kvm backend cannot undo a step of type {type(payload).__name__}", rolled_back=True)

    @_undo.register(DefineDomain)
    def _undo_define(self, payload: DefineDomain, token: str) -> None:
        given_back = {str(a) for a in domxml.read_facts(token).hostdevs} - \
            {str(a) for a in domxml.read_facts(payload.new_xml).hostdevs}
        if given_back and not payload.claims and self._secret_driver is not False:
            # A release taken back gives the VM its GPUs again: claimed first, as an assign is, so that a GPU whose
            # claim another run took over meanwhile (or whose claim the release had removed) is never on two VMs.
            # The release's own claim, still naming this VM, is kept.
            try:
                self._define_with_secrets(DefineDomain(payload.vm, payload.new_xml, token, tuple(sorted(given_back))),
                                          adopt_own=True)
                return
            except _NoSecretDriver:
                self._secret_driver = False
            except Conflict as taken:
                raise Conflict(f"the release from VM '{payload.vm}' stays: {taken.message}",
                               remedy=taken.remedy, rolled_back=taken.rolled_back) from taken
        self._take_back_define(token, "restoring the previous VM definition")
        if payload.claims:  # an assign taken back: its claims go with it
            uuid = domxml.read_facts(token).uuid
            self._once_more_if_lost(lambda: self._release_claims(uuid, set(payload.claims)))

    @_undo.register(Hotplug)
    def _undo_hotplug(self, payload: Hotplug, token: None) -> None:
        """The reverse hot-plug. Its reply may be lost after the daemon carried it out (libvirt's client then reports the
        closed connection, or the host's timeout runs out: ConnectionFailed): the VM's live definition is read again
        over a new connection (_bounded dropped the lost one), and the undo is done if the device is where the undo
        puts it; else (or if that read fails too) the error stands and the service reports the step not undone."""
        try:
            self._hotplug(payload.vm, payload.hostdev_xml, attach=not payload.attach)
        except ConnectionFailed as lost:
            try:
                there = self._live_holds(payload)
            except GpupassError:
                raise lost from None
            if there == payload.attach:
                raise
            log.info("%s: the %s of %s went through although its reply was lost (read back)", self.target.label,
                     "hot-unplug" if payload.attach else "hot-plug", payload.vm)

    def observe(self, step: Step) -> StepState:
        """Read the VM again after a step that failed without saying what it left."""
        return self._observe(step.payload, step)

    @functools.singledispatchmethod
    def _observe(self, payload: object, step: Step) -> StepState:
        return StepState("unknown", detail=f"{step.description} cannot be read back")

    @_observe.register(Hotplug)
    def _observe_hotplug(self, payload: Hotplug, step: Step) -> StepState:
        there = self._live_holds(payload)
        return StepState("after" if there == payload.attach else "before")

    def _live_holds(self, payload: Hotplug) -> bool:
        """Does the running VM's live definition (virDomainGetXMLDesc without VIR_DOMAIN_XML_INACTIVE) hold the
        device the hot-plug names? Two calls, on the connection of now (a new one after a lost reply)."""
        domain = self._call(f"looking up VM {payload.vm!r}", self._connection().lookupByName, payload.vm)
        live = self._call(f"reading the live definition of VM {payload.vm!r}", domain.XMLDesc, 0)
        return self._device_in(live, payload.hostdev_xml)

    @staticmethod
    def _device_in(live_xml: str, device_xml: str) -> bool:
        """A <hostdev> is in a live definition when every host PCI address of its <source> is (libvirt adds its own
        <alias>, guest <address> and <driver name='vfio'/> to what it was given: the source names the device)."""
        wanted = {a for _, a in domxml.pci_hostdevs(domxml.parse(f"<domain><devices>{device_xml}</devices></domain>"))}
        return bool(wanted) and wanted <= set(domxml.read_facts(live_xml).hostdevs)

    @_observe.register(DefineDomain)
    def _observe_define(self, payload: DefineDomain, step: Step) -> StepState:
        current = _essentials(self._current_xml(payload.vm))
        if current == _essentials(payload.old_xml, keep_claims=True):
            if self._claimed_for(domxml.read_facts(payload.old_xml).uuid, payload.claims):
                # The VM is as it was but a claim of this assign is on the host (its reply was lost, or taking it
                # back failed): undoing the step (the old definition again, then the claims) removes it.
                return StepState("after", token=payload.old_xml)
            return StepState("before")
        if current in (_essentials(payload.old_xml), _essentials(payload.new_xml)):
            # the change, or only this run's claim, is there: defining the old XML takes either back
            return StepState("after", token=payload.old_xml)
        return StepState("unknown", detail=f"VM '{payload.vm}' holds neither its old nor its planned definition")

    @_undo.register(DropClaim)
    def _undo_drop_claim(self, payload: DropClaim, removed: bool) -> None:
        """The claim's secret again, with its UUID; refused (Conflict: left as it is) where another run claimed
        the GPU meanwhile, as the daemon holds one secret per usage (secretclaims.py)."""
        if not removed:
            return
        libvirt = self._libvirt

        def put_back() -> None:
            try:
                self._connection().secretDefineXML(payload.claim_xml, 0)
            except libvirt.libvirtError as exc:
                if exc.get_error_code() == libvirt.VIR_ERR_INTERNAL_ERROR and not is_transport_error(libvirt, exc):
                    other = self._claim_on(payload.address)
                    if other is not None and other.uuid != payload.uuid:
                        raise Conflict(f"{payload.address} is claimed by VM '{other.vm}' now ({other.origin}); the "
                                       f"claim left for VM '{payload.vm}' stays removed", rolled_back=True) from exc
                raise translate(libvirt, exc, f"putting back the claim on {payload.address}") from exc

        # Its reply lost (ConnectionFailed), it is asked once more over a new connection: defining a secret whose UUID and
        # usage are there already is done again (libvirt src/conf/virsecretobj.c, virSecretObjListAdd replaces the
        # definition of the secret with the same UUID), so a define the daemon had carried out is found done.
        self._once_more_if_lost(put_back)

    @_observe.register(DropClaim)
    def _observe_drop_claim(self, payload: DropClaim, step: Step) -> StepState:
        libvirt = self._libvirt
        try:
            self._connection().secretLookupByUUIDString(payload.uuid)
        except libvirt.libvirtError as exc:
            if exc.get_error_code() == libvirt.VIR_ERR_NO_SECRET:
                return StepState("after", token=True)
            raise translate(libvirt, exc, f"looking up the claim on {payload.address}") from exc
        return StepState("before")

    # -- share steps (payloads in steps.py, mediated devices in shares.py) ------------------------------
    @_apply.register(CreateMdev)
    def _apply_create_mdev(self, payload: CreateMdev) -> str:
        return self._create_mdev(payload)

    @_undo.register(CreateMdev)
    def _undo_create_mdev(self, payload: CreateMdev, token: str) -> None:
        self._remove_mdev(payload.uuid)

    @_apply.register(RemoveMdev)
    def _apply_remove_mdev(self, payload: RemoveMdev) -> None:
        self._remove_mdev(payload.uuid)

    @_undo.register(RemoveMdev)
    def _undo_remove_mdev(self, payload: RemoveMdev, token: None) -> None:
        self._create_mdev(CreateMdev(payload.parent, payload.type_id, payload.uuid))

    @_observe.register(CreateMdev | RemoveMdev)
    def _observe_mdev(self, payload: CreateMdev | RemoveMdev, step: Step) -> StepState:
        device = self._find_mdev(payload.uuid)
        if device is not None and self._mdev_active(device) is False:
            # Defined and stopped (a create that failed to start, or a removal stopped between its two calls): neither
            # before nor after. The undo of a create removes it whole; a removal's state is reported as it is.
            if isinstance(payload, CreateMdev):
                return StepState("after", token=payload.uuid)
            return StepState("unknown", detail=f"mediated device {payload.uuid} is stopped and still defined (`virsh "
                                               f"nodedev-start` keeps it, `virsh nodedev-undefine` removes it)")
        there = device is not None
        return StepState("after" if there == isinstance(payload, CreateMdev) else "before", token=payload.uuid)

    @_apply.register(SetVfVgpuType)
    def _apply_set_vf_vgpu_type(self, payload: SetVfVgpuType) -> None:
        self._write_vf_vgpu_type(payload.vf, payload.type_id)

    @_undo.register(SetVfVgpuType)
    def _undo_set_vf_vgpu_type(self, payload: SetVfVgpuType, token: None) -> None:
        self._write_vf_vgpu_type(payload.vf, payload.previous)

    @_observe.register(SetVfVgpuType)
    def _observe_set_vf_vgpu_type(self, payload: SetVfVgpuType, step: Step) -> StepState:
        root = self._host_sysfs()
        if root is None:  # _write_vf_vgpu_type refuses before writing anything where it cannot reach sysfs
            return StepState("before", detail="gpupass writes a VF's vGPU type only on the host itself")
        state = nvidia.read_vf_vgpu(PciAddress.parse(payload.vf), root)
        if state is None:
            return StepState("unknown", detail=f"virtual function {payload.vf}'s vGPU type cannot be read")
        now = state.current or nvidia.UNSET
        return StepState("after" if now == payload.type_id else "before" if now == payload.previous else "unknown",
                         detail=f"virtual function {payload.vf} has vGPU type {now}")

    def _write_vf_vgpu_type(self, vf: str, type_id: str) -> None:
        """A sysfs write on the host: only from the host itself. Over a remote URI (or from a snapshot of a host)
        the plan shows the step, and carrying it out stops here, before anything changed."""
        root = self._host_sysfs()
        if root is None:
            raise NotSupported(
                f"setting the vGPU type of an SR-IOV virtual function ({vf}) is not supported over a remote URI "
                f"({self.target.label}): it is a write to the host's sysfs (nvidia/current_vgpu_type); nothing was "
                "changed", remedy="run gpupass on the host itself (qemu:///system), or set the type there (echo "
                                  f"{type_id} > /sys/bus/pci/devices/{vf}/nvidia/current_vgpu_type): gpupass then "
                                  "gives the configured VF")
        nvidia.write_vf_vgpu_type(PciAddress.parse(vf), type_id, root)

    @_apply.register(DefineShare)
    def _apply_define_share(self, payload: DefineShare) -> str:
        return self._define_share(payload)

    @_undo.register(DefineShare)
    def _undo_define_share(self, payload: DefineShare, token: str) -> None:
        intent = payload.intent
        if intent is not None and intent.removing and (device := self._find_mdev(intent.uuid)) is not None \
                and self._mdev_active(device) is not True:
            # A release whose removal stopped the device and could neither undefine nor start it again (or where the
            # connection cannot say it runs): the VM gets the device back with the removal still recorded, so that
            # status names it and the device is never taken as free (mdevstate.py); the release again finishes it.
            token = domxml.with_mdev_intent(token, intent).xml
        # read back over a new connection after a lost reply, as every take-back is (_take_back_define)
        self._take_back_define(token, "restoring the previous VM definition")

    @_observe.register(DefineShare)
    def _observe_define_share(self, payload: DefineShare, step: Step) -> StepState:
        held = payload.uuid in domxml.read_facts(self._current_xml(payload.vm)).mdevs
        before = payload.old_xml
        if payload.intent is not None and not payload.intent.removing:  # the run's intent stays until the device goes
            before = domxml.with_mdev_intent(before, payload.intent).xml
        return StepState("after" if held == payload.adds else "before", token=before)

    @_apply.register(RecordMdevIntent)
    def _apply_record_mdev_intent(self, payload: RecordMdevIntent) -> str:
        current = self._current_xml(payload.vm)
        if domxml.comparable(current) != domxml.comparable(payload.old_xml):
            raise Conflict(f"VM '{payload.vm}' was changed by someone else since the plan was made; nothing was changed",
                           remedy="run the command again to plan from its current definition", rolled_back=True)
        new = domxml.with_mdev_intent(current, payload.intent).xml if payload.writes else \
            domxml.without_mdev_intent(current, payload.intent.uuid)
        self._define(new, f"{'recording' if payload.writes else 'taking out'} gpupass's record of mediated device "
                          f"{payload.intent.uuid} in VM {payload.vm!r}")
        return current

    @_undo.register(RecordMdevIntent)
    def _undo_record_mdev_intent(self, payload: RecordMdevIntent, token: str) -> None:
        uuid = payload.intent.uuid
        current = self._current_xml(payload.vm)
        if payload.writes and uuid in domxml.read_facts(current).mdevs:
            return  # the VM holds the device: the same assign, run at the same time, finished it (and took the record)
        if payload.writes and self._find_mdev(uuid) is not None:
            # The device is still on the host (its removal failed): the record stays, so that status names it and a
            # release removes it, instead of a device no VM and no record names.
            raise OperationFailed(f"mediated device {uuid} is still on the host: the record of it in VM "
                                  f"'{payload.vm}' stays", remedy=f"`gpupass release HOST {payload.vm} "
                                  f"{payload.intent.gpu}` removes both", rolled_back=True)
        back = domxml.without_mdev_intent(current, uuid) if payload.writes else \
            domxml.with_mdev_intent(current, payload.intent).xml
        self._take_back_define(back, f"{'taking out' if payload.writes else 'writing again'} gpupass's record of "
                                     f"mediated device {uuid}")

    @_observe.register(RecordMdevIntent)
    def _observe_record_mdev_intent(self, payload: RecordMdevIntent, step: Step) -> StepState:
        there = any(i.uuid == payload.intent.uuid
                    for i in domxml.mdev_intents(domxml.parse(self._current_xml(payload.vm))))
        return StepState("after" if there == payload.writes else "before", token=payload.old_xml)

    def _create_mdev(self, payload: CreateMdev) -> str:
        """virNodeDeviceDefineXML + virNodeDeviceCreate (libvirt 7.3+), the persistent way `virsh nodedev-define`
        and `nodedev-start` take; a device that cannot start is undefined again, so nothing is left half-made."""
        unsupported = NotSupported(
            f"creating a mediated device is not supported on this connection ({self.target.label}): its libvirt "
            "driver has no virNodeDeviceDefineXML (libvirt's test driver, or libvirt older than 7.3); nothing was "
            "changed",
            remedy=f"create a {payload.type_id} device on the host (mdevctl define -u UUID -p "
                   f"{payload.parent.removeprefix('pci_').replace('_', ':', 2).replace('_', '.')} --type "
                   f"{payload.type_id}; mdevctl start -u UUID), then run the command again: gpupass gives a VM "
                   "a free device of the type")
        if payload.resume and (device := self._find_mdev(payload.uuid)) is not None:
            # A stopped run's device: started if it is stopped (virNodeDeviceCreate), left as it is if it runs or where
            # the connection cannot say (such a connection holds no stopped device: _inactive_mdevs)
            if self._mdev_active(device) is False:
                self._call(f"starting mediated device {payload.uuid}", device.create, 0)
            return payload.uuid
        # libvirt-python older than 7.3 has no binding for it at all (the libvirt driver's own refusal is below)
        define = getattr(self._connection(), "nodeDeviceDefineXML", None)
        if define is None:
            raise unsupported
        try:
            device = self._call(f"defining mediated device {payload.uuid}", define, payload.xml, 0)
        except NotSupported as exc:
            raise unsupported from exc
        try:
            self._call(f"starting mediated device {payload.uuid}", device.create, 0)
        except GpupassError:
            with _after_its_write():  # left defined if this fails too: the service reads it (_observe_mdev)
                self._call(f"undefining mediated device {payload.uuid}", device.undefine, 0)
            raise  # undefined again: nothing of the step is left (or, lost with its connection, read again)
        return payload.uuid

    def _find_mdev(self, uuid: str) -> Any:
        libvirt, conn = self._libvirt, self._connection()
        for device in self._call("listing mediated devices", conn.listAllDevices,
                                 libvirt.VIR_CONNECT_LIST_NODE_DEVICES_CAP_MDEV):
            mdev = parse_mdev_nodedev(self._call("reading a mediated device", device.XMLDesc, 0), device.name())
            if mdev is not None and mdev.uuid == uuid.lower():
                return device
        return None

    def _mdev_active(self, device: Any) -> bool | None:
        """Is the mediated device started (virNodeDeviceIsActive, libvirt 7.8)? None where the driver cannot say (the
        test driver: VIR_ERR_NO_SUPPORT) or the binding lacks it."""
        is_active = getattr(device, "isActive", None)
        if is_active is None:
            return None
        try:
            return bool(self._call("reading whether a mediated device is started", is_active))
        except NotSupported:
            return None

    def _remove_mdev(self, uuid: str) -> None:
        """Stop (virNodeDeviceDestroy) and undefine (virNodeDeviceUndefine) the device: two calls, so a failure of the
        second leaves it stopped and still defined, which a VM given it cannot start with. It is then started again
        (virNodeDeviceCreate) so that the step changed nothing; if that fails too, the error says exactly what is left.
        A device already stopped (such a failure before) is only undefined."""
        device = self._find_mdev(uuid)
        if device is None:
            return  # already gone: the end state is what was asked
        if self._mdev_active(device) is not False:
            self._call(f"stopping mediated device {uuid}", device.destroy)
        try:
            self._call(f"undefining mediated device {uuid}", device.undefine, 0)
        except (OperationFailed, NotSupported) as refused:  # (NotSupported: the test driver has no virNodeDeviceUndefine)
            try:
                self._call(f"starting mediated device {uuid} again", device.create, 0)
            except (OperationFailed, NotSupported) as not_started:
                raise _MdevLeftStopped(uuid, device.name(), refused, not_started) from refused
            if isinstance(refused, OperationFailed):
                refused.rolled_back = True  # started again: as it was
            raise

    def _define_share(self, payload: DefineShare) -> str:
        """Define the domain with its share changed; for an added share, check no other domain took the same
        mediated device meanwhile (libvirt refuses only at start): if one did, this run's change is undone."""
        current = self._current_xml(payload.vm)
        # After the run's own intent step the definition holds that intent, in libvirt's formatting: compared apart
        # from gpupass's intents (domxml.comparable), the definition must still be the planned one.
        if current != payload.old_xml and (payload.intent is None or
                                           domxml.comparable(current) != domxml.comparable(payload.old_xml)):
            raise Conflict(
                f"VM '{payload.vm}' was changed by someone else since the plan was made; nothing was changed",
                remedy="run the command again to plan from its current definition", rolled_back=True)
        self._define(payload.new_xml, "defining the new VM definition")
        if payload.adds:
            with _after_its_write():
                others = [name for name, xml in self._all_domain_xml().items()
                          if name != payload.vm and payload.uuid in domxml.read_facts(xml).mdevs]
                if others:
                    self._take_back_define(payload.old_xml, "undoing this run's change after another VM took the "
                                                            "device")
            if others:
                raise Conflict(f"mediated device {payload.uuid} was given to VM '{others[0]}' by another run at the "
                               f"same time; this run's change to VM '{payload.vm}' was undone",
                               remedy="run the command again: it picks another device", rolled_back=True)
        return current  # its undo defines this again: the run's intent with it, while its device may be on the host

    def _current_xml(self, vm: str) -> str:
        self._before_reading_definition()
        conn = self._connection()
        domain = self._call(f"looking up VM {vm!r}", conn.lookupByName, vm)
        xml: str = self._call(f"reading VM {vm!r}", domain.XMLDesc, self._libvirt.VIR_DOMAIN_XML_INACTIVE)
        return xml

    def _define(self, xml: str, action: str) -> None:
        domain = self._call(action, self._connection().defineXML, xml)
        self._after_define(domain, action)

    # Seams for a subclass that keeps a libvirt test-driver file in step (backends/kvm/lab/testdriver.py);
    # a real libvirtd keeps its own definitions, so the product backend does nothing here.
    def _before_reading_definition(self) -> None:
        """Called before a write step re-reads a VM's definition to guard against concurrent changes."""

    def _after_define(self, domain: Any, action: str) -> None:
        """Called with each domain this backend (re)defined."""

    def _check_unplugged(self, vm: str, domain: Any, hostdev_xml: str) -> None:
        """A live detach that libvirt answered is not yet a device gone: for a PCI device the guest OS must agree, and
        libvirt waits only so long for it, then returns success with the unplug still pending (libvirt 9.0.0
        src/qemu/qemu_hotplug.c: qemuDomainDetachDeviceLive lines 6088-6093, qemuDomainWaitForDeviceRemoval 5197-5235
        returning 0 after qemuDomainGetUnplugTimeout, 5 s on x86). The live definition says which: a device still
        there is reported, never a release done."""
        live = self._call(f"reading the live definition of VM {vm!r}", domain.XMLDesc, 0)
        if self._device_in(live, hostdev_xml):
            # Not rolled back: QEMU has no way to take an unplug request back, and the guest may still grant it.
            raise _UnplugPending(
                f"VM '{vm}' has not let go of the device: libvirt asked its guest to unplug it and stopped waiting "
                "(the request stays pending in the guest, which may still grant it); its persistent definition was "
                "not changed", remedy="release the device in the guest OS (or shut the VM down), then run the same "
                                      "command again; `virsh dumpxml VM` shows whether the VM still holds it",
                rolled_back=False)

    def _hotplug(self, vm: str, hostdev_xml: str, attach: bool) -> None:
        domain = self._call(f"looking up VM {vm!r}", self._connection().lookupByName, vm)
        flags = self._libvirt.VIR_DOMAIN_AFFECT_LIVE
        try:
            if attach:
                self._call(f"hot-plugging into VM {vm!r}", domain.attachDeviceFlags, hostdev_xml, flags)
            else:
                self._call(f"hot-unplugging from VM {vm!r}", domain.detachDeviceFlags, hostdev_xml, flags)
                with _after_its_write():  # the detach was answered: a failed read cannot say the device is still there
                    self._check_unplugged(vm, domain, hostdev_xml)
        except NotSupported as refused:  # the advice that fits a live change, next to translate()'s own
            raise NotSupported(refused.message, remedy="power the VM off and run the command again without --live; "
                               f"{refused.remedy}") from refused.__cause__


def _not_known(error: OperationFailed) -> None:
    """`error`, raised by a call a step made after one of its own writes went through (a read, a take-back, a claim's
    removal): the call's own word ("rolled back": the daemon refused that call) does not say what the step left. Not
    known (None): the service reads the host again (core/service.py `_observed`, then `observe`) and undoes what it
    finds there."""
    error.rolled_back = None


@contextlib.contextmanager
def _after_its_write() -> Iterator[None]:
    """Around the calls a step makes after one of its own writes went through: a failure there that says "rolled back"
    (a call the daemon refused: translate()) is made not known (_not_known). A Conflict keeps its own word (raised
    after this run's change was taken back), as does an error that already says its change is left (False)."""
    try:
        yield
    except OperationFailed as failed:
        if failed.rolled_back is True and not isinstance(failed, Conflict):
            _not_known(failed)
        raise


class _MdevLeftStopped(OperationFailed):
    """A mediated device's removal stopped it and could neither undefine it nor start it again."""

    def __init__(self, uuid: str, name: str, refused: GpupassError, not_started: GpupassError) -> None:
        super().__init__(
            f"mediated device {uuid} was stopped but could not be undefined ({refused.message}), and starting it again "
            f"failed too ({not_started.message}): it is defined and stopped, and a VM given it cannot start",
            remedy=f"on the host: `virsh nodedev-undefine {name}` (or `mdevctl undefine -u {uuid}`) to finish removing "
                   f"it, or `virsh nodedev-start {name}` (`mdevctl start -u {uuid}`) to keep it",
            rolled_back=False)


class _UnplugPending(OperationFailed):
    """libvirt asked the guest to let a device go and stopped waiting: the request stays with the guest."""


class _SecretsDenied(OperationFailed):
    """libvirt's access control refused this connection a secret (a gpupass claim)."""


class _NoSecretDriver(Exception):
    """The connection has no secret driver (the libvirt test driver: VIR_ERR_NO_SUPPORT)."""


_STATES = {0: PowerState.UNKNOWN, 1: PowerState.RUNNING, 2: PowerState.RUNNING, 3: PowerState.PAUSED,
           4: PowerState.RUNNING, 5: PowerState.OFF, 6: PowerState.OFF, 7: PowerState.SUSPENDED}


# virDomainState values of a domain that runs, whose live definition may differ from its stored one (libvirt
# include/libvirt/libvirt-domain.h: RUNNING 1, BLOCKED 2, PAUSED 3, SHUTDOWN 4 -- being shut down --, PMSUSPENDED 7).
_ACTIVE_STATES = frozenset({1, 2, 3, 4, 7})


def _vm(facts: domxml.DomainFacts, state: int, claims: list[claims.Claim],
        live_only: tuple[PciAddress, ...] = (), stored_only: tuple[PciAddress, ...] = ()) -> Vm:
    return Vm(
        name=facts.name,
        id=facts.uuid,
        power_state=_STATES.get(state, PowerState.UNKNOWN),
        firmware=facts.firmware,
        memory_bytes=facts.memory_bytes,
        memory_reserved_bytes=facts.memory_bytes if facts.locked_memory else None,
        mmio_window_bytes=facts.mmio_window_bytes,
        assigned=facts.hostdevs,
        hypervisor_hidden=facts.hypervisor_hidden,
        # A <hostdev> names its host device by PCI address. libvirt has no per-VM action at host shutdown (the
        # libvirt-guests service decides for all) and no Hyper-V-style dynamic memory setting: unknown.
        binding="address", stop_action=None, dynamic_memory=None,
        settings={"machine": facts.machine, "assigned_by_gpupass": [str(a) for a in facts.recorded],
                  "phys_bits": facts.phys_bits, **({"held_live_only": [str(a) for a in live_only]} if live_only else {}),
                  **({"held_stored_only": [str(a) for a in stored_only]} if stored_only else {})},
        unfinished=tuple(
            f"an assign of {', '.join(sorted(c.addresses))} started by {c.origin} stopped before its change was "
            "written; any `gpupass assign` or `release` of this VM clears it" for c in claims if c.choosing) + tuple(
            f"holds {address} only while it runs: the device is in its live definition but not in its stored one (an "
            "`assign --live` stopped between its hot-plug and its define, or a hot-plug by hand), so it leaves the VM "
            f"when the VM stops; `gpupass assign HOST {facts.name} {address} --live` writes it into the stored "
            "definition" for address in live_only) + tuple(
            f"holds {address} in its stored definition but not while it runs (a `release --live` stopped between its "
            "hot-unplug and its define, or a definition changed while the VM runs), so it comes back when the VM next "
            f"starts; `gpupass release HOST {facts.name} {address} --live` finishes the release" for address in stored_only),
    )


def _share_unfinished(mdev: MediatedDevice, holder: str | None, inactive: frozenset[str],
                      named: Mapping[str, tuple[str, domxml.MdevIntent]]) -> str:
    if mdev.uuid in named:
        return mdevstate.intent_share_note(*named[mdev.uuid])
    if mdev.uuid in inactive:
        return mdevstate.stopped_share_note(mdev, holder)
    return ""


def _with_mdev_notes(vms: list[Vm], holders: Mapping[str, str], listed: Mapping[str, MediatedDevice],
                     inactive: frozenset[str], intents: Mapping[str, Sequence[domxml.MdevIntent]],
                     cards: Mapping[str, str]) -> tuple[list[Vm], list[str]]:
    """What `status` shows about mediated devices: on each VM, the intents a stopped run left in its definition and the
    stopped devices it holds; on the host, the stopped devices no VM holds and no intent names (mdevstate.py)."""
    notes: dict[str, list[str]] = {vm: [mdevstate.intent_note(vm, i, listed, inactive) for i in intended]
                                   for vm, intended in intents.items()}
    named = mdevstate.intents_by_uuid(intents)
    host_notes = []
    for uuid in sorted(inactive - set(named)):
        device = listed.get(uuid)
        if device is None:
            continue
        gpu = cards.get(device.parent) or _card_of(device.parent)  # a VF's device is its card's
        if uuid in holders:
            notes.setdefault(holders[uuid], []).append(mdevstate.stopped_holder_note(holders[uuid], device, gpu))
        else:
            host_notes.append(mdevstate.stopped_host_note(device, gpu))
    if not any(notes.values()):
        return vms, host_notes
    return [records.replace(vm, unfinished=vm.unfinished + tuple(notes[vm.name])) if notes.get(vm.name) else vm
            for vm in vms], host_notes


def _card_of(parent: str) -> str:
    """The PCI address in a PCI node device's name (pci_DDDD_BB_SS_F, nodedev_name), as a command names it."""
    parts = parent.removeprefix("pci_").split("_")
    if len(parts) != 4:
        return parent
    return f"{parts[0]}:{parts[1]}:{parts[2]}.{parts[3]}"


def _fold_vf_mdev_types(physical_functions: Mapping[PciAddress, NodeDevice],
                        share_types: dict[PciAddress, tuple[ShareType, ...]]) -> dict[PciAddress, dict[str, list[str]]]:
    """NVIDIA vGPU up to release 16 on Ampere (A100, A30) makes each VF an mdev parent, one vGPU per VF
    (mdev_supported_types under the VF): the card offers what its VFs offer, each type's room the sum of theirs.
    Moves the VFs' types onto their PF (in `share_types`) and returns, per PF and type, the VFs (node device names)
    with room, where gpupass creates a device of the type."""
    parents: dict[PciAddress, dict[str, list[str]]] = {}
    for address, pf in physical_functions.items():
        on_vfs = [(vf, share_types.pop(vf)) for vf in pf.virtual_functions if vf in share_types]
        if not on_vfs:
            continue
        merged = {t.id: t for t in share_types.get(address, ())}
        rooms: dict[str, list[str]] = {}
        for vf, types in on_vfs:
            for t in types:
                if t.available:
                    rooms.setdefault(t.id, []).append(nodedev_name(vf))
                known = merged.get(t.id)
                merged[t.id] = t if known is None else records.replace(
                    known, available=None if known.available is None or t.available is None
                    else known.available + t.available)
        share_types[address] = tuple(merged.values())
        parents[address] = rooms
    return parents


# NVIDIA's SR-IOV GPUs (Ampere and later) give their VFs to VMs as vGPUs: a VF gets a vGPU type from the vGPU
# manager before a VM can use it (NVIDIA vGPU user guide; on vGPU 17+ through the VF's sysfs
# nvidia/current_vgpu_type, backends/kvm/nvidia.py). A plain VF of such a card is no share a VM can use, so it is not
# offered as one.
_VGPU_VF_VENDORS = (0x10DE,)


def _with_virtual_functions(gpu: Gpu, pf: NodeDevice, owners: Mapping[PciAddress, str],
                            sysfs_root: Path | None) -> Gpu:
    """An SR-IOV PF's VFs as shares (each free or held by the VM whose definition has it) and what can be given:
    the VF itself (`sriov-vf`) where a VM can use it as it is, or on NVIDIA's cards the vGPU types its VFs offer
    (read from the host's sysfs; where that cannot be read, `unread` says so)."""
    sharing = gpu.sharing
    if gpu.function.vendor_id not in _VGPU_VF_VENDORS:
        vfs = tuple(Share(str(a), SRIOV_VF_TYPE, ShareMode.SRIOV_VF, owners.get(a)) for a in pf.virtual_functions)
        return records.replace(gpu, sharing=records.replace(
            sharing, types=sharing.types + (virtual_function_type(pf.max_virtual_functions, len(vfs)),),
            shares=sharing.shares + vfs))
    states = {a: nvidia.read_vf_vgpu(a, sysfs_root) for a in pf.virtual_functions} if sysfs_root else {}
    names: dict[str, str] = {}
    room: dict[str, int] = {}
    shares: list[Share] = []
    for address in pf.virtual_functions:
        state = states.get(address)
        for type_id, name in state.creatable if state else ():
            names.setdefault(type_id, name)
            if state is not None and state.current is None:  # a VF with no type can take any type it lists
                room[type_id] = room.get(type_id, 0) + 1
        if state is not None and state.current is not None:
            shares.append(Share(str(address), state.current, ShareMode.VF_VGPU, owners.get(address)))
        else:
            shares.append(Share(str(address), SRIOV_VF_TYPE, ShareMode.SRIOV_VF, owners.get(address)))
    types = tuple(ShareType(type_id, name, ShareMode.VF_VGPU, available=room.get(type_id, 0),
                            description="NVIDIA vGPU type set on an SR-IOV virtual function (nvidia/current_vgpu_type)")
                  for type_id, name in sorted(names.items(), key=lambda item: int(item[0])))
    # A configured VF whose type no VF lists any more (a full card lists only the header) keeps its own type
    types += tuple(ShareType(t, t, ShareMode.VF_VGPU, available=0) for t in sorted({s.type_id for s in shares
                   if s.mode is ShareMode.VF_VGPU} - set(names)))
    if any(t.mode is ShareMode.MDEV for t in sharing.types):
        unread = ""  # vGPU up to 16: the VFs are mdev parents, their types already listed (_fold_vf_mdev_types)
    elif sysfs_root is None:
        unread = ("NVIDIA's vGPU types of this GPU's SR-IOV virtual functions are read from the host's sysfs "
                  "(/sys/bus/pci/devices/VF/nvidia/creatable_vgpu_types), which gpupass reads only on the host "
                  "itself (qemu:///system); over a remote URI they are not listed")
    elif pf.virtual_functions and not any(states.values()):
        unread = ("its virtual functions have no nvidia/creatable_vgpu_types: NVIDIA's vGPU manager (vGPU 17 or "
                  "later) is not serving them, so no vGPU type can be set (install or load it, then sriov-manage -e)")
    else:
        unread = ""
    # Which types each VF with no type lists, for the planner to pick a VF that can take the type asked for
    creatable = {str(a): [t for t, _ in state.creatable] for a, state in states.items()
                 if state is not None and state.current is None}
    return records.replace(
        gpu, sharing=records.replace(sharing, types=sharing.types + types,
                                         shares=sharing.shares + tuple(shares), unread=unread),
        extra={**gpu.extra, "vf_vgpu_creatable": creatable} if creatable else gpu.extra)


def _with_stale_holdings(vms: list[Vm], holders: list[claims.Holder]) -> list[Vm]:
    stale: dict[str, list[str]] = {}
    for holder, keeper in claims.stale_holdings(holders):
        stale.setdefault(holder.vm, []).append(
            f"holds {holder.address}, which VM '{keeper}' holds too: a run stopped before taking back the change "
            f"that lost; `gpupass release HOST {holder.vm} {holder.address}` finishes it")
    return [records.replace(vm, unfinished=vm.unfinished + tuple(stale[vm.name])) if vm.name in stale else vm
            for vm in vms]


def _essentials(xml: str, keep_claims: bool = False) -> tuple[object, ...]:
    """What a define changes, compared the way libvirt reports it back (it reformats the XML it is given)."""
    facts = domxml.read_facts(xml)
    claimed = tuple(sorted(c.token for c in domxml.claims_of(xml)[0])) if keep_claims else ()
    intents = tuple(sorted(domxml.mdev_intents(domxml.parse(xml)), key=lambda i: (i.uuid, i.removing)))
    return (facts.hostdevs, facts.mdevs, facts.recorded, facts.firmware, facts.mmio_window_bytes,
            facts.hypervisor_hidden, facts.locked_memory, claimed, intents)


def _with_sysfs_bars(function: PciFunction) -> PciFunction:
    bars = sysfs.read_bars(function.address)
    return records.replace(function, bars=bars) if bars is not None else function


def _mark_boot_vga(gpu: Gpu) -> Gpu:
    if sysfs.is_boot_vga(gpu.address):
        return records.replace(gpu, extra={**gpu.extra, "boot_vga": True})
    return gpu


def _pretty(xml: str) -> str:
    import xml.etree.ElementTree as ET

    root = domxml.parse(xml)
    for element in root.iter():
        if element.text is not None and not element.text.strip():
            element.text = None
        if element.tail is not None and not element.tail.strip():
            element.tail = None
    ET.indent(root, space="  ")
    return domxml.serialize(root) + "\n"
