"""Read and edit libvirt domain XML structurally (ElementTree), never by string formatting.

Everything gpupass adds is recorded in the domain's own <metadata>, so a release removes exactly that and
restores what an assign replaced, even from another machine or months later.
"""

from __future__ import annotations

import io
import re
import xml.etree.ElementTree as ET
from typing import Iterator

from gpupass.core.domain.claims import Claim, Holder
from gpupass.core.domain.inventory import Firmware
from gpupass.core.domain.mmio import KiB, MiB
from gpupass.core.domain.pci import PciAddress, PciFunction
from gpupass.backends.kvm.nodedev import address_from_attributes
from gpupass.backends.kvm import physbits
from gpupass.core.records import field, record

NS = "https://gpupass.dev/xmlns/libvirt-assignment/1"
FWCFG_MMIO_ENTRY = "opt/ovmf/X-PciMmio64Mb"
HYPERV_VENDOR_ID = "gpupass0000"  # libvirt allows at most 12 characters

_UNITS = {"b": 1, "bytes": 1, "k": KiB, "kib": KiB, "kb": 1000, "m": MiB, "mib": MiB, "mb": 1000**2,
          "g": 1 << 30, "gib": 1 << 30, "gb": 1000**3, "t": 1 << 40, "tib": 1 << 40, "tb": 1000**4}


def _q(tag: str) -> str:
    return f"{{{NS}}}{tag}"


def parse(xml: str) -> ET.Element:
    """Parse once, registering the document's own namespace prefixes so they survive serialisation.

    Inventory parses every domain of the host: a document that declares no prefix (most) is parsed by
    fromstring alone; one that does is parsed by a single iterparse pass that reports its prefixes.
    """
    if "xmlns:" in xml:
        events = ET.iterparse(io.StringIO(xml), events=("start-ns",))
        for _event, (prefix, uri) in events:
            if prefix and not re.fullmatch(r"ns\d+", prefix):
                ET.register_namespace(prefix, uri)
        root = events.root  # type: ignore[attr-defined]  # set once parsing is done; typeshed omits it
    else:
        root = ET.fromstring(xml)
    ET.register_namespace("gpupass", NS)
    ET.register_namespace("qemu", QEMU_NS)
    element: ET.Element = root
    return element


def _child(parent: ET.Element, path: str) -> ET.Element:
    """`parent.find(path)` where the definition must have it (libvirt always writes it back)."""
    found = parent.find(path)
    if found is None:
        from gpupass.core.errors import OperationFailed

        raise OperationFailed(f"the domain definition has no <{path}>, which libvirt always writes",
                              remedy="read the VM again (`virsh dumpxml --inactive VM`); nothing was changed",
                              rolled_back=True)  # a parse: after a step's own write, _after_its_write says not known
    return found


def serialize(root: ET.Element) -> str:
    return ET.tostring(root, encoding="unicode")


def _size(element: ET.Element | None, default_unit: str = "KiB") -> int | None:
    if element is None or element.text is None:
        return None
    unit = element.get("unit", default_unit).lower()
    return int(element.text.strip()) * _UNITS.get(unit, KiB)


@record(frozen=True)
class DomainFacts:
    name: str
    uuid: str
    firmware: Firmware
    machine: str
    memory_bytes: int
    locked_memory: bool
    hostdevs: tuple[PciAddress, ...]
    mmio_window_bytes: int | None
    hypervisor_hidden: bool
    recorded: tuple[PciAddress, ...] = field(default_factory=tuple)
    # The vCPU's physical address bits (backends/kvm/physbits.py): a number, or "host".
    phys_bits: int | str = 40
    # UUIDs of the mediated devices (vGPU shares) the domain holds (<hostdev type='mdev'>).
    mdevs: tuple[str, ...] = ()


def firmware_of(root: ET.Element) -> Firmware:
    os_element = root.find("os")
    if os_element is None:
        return Firmware.BIOS
    if os_element.get("firmware") == "efi":
        return Firmware.EFI
    loader = os_element.find("loader")
    if loader is not None and (loader.get("type") == "pflash" or "OVMF" in (loader.text or "").upper()):
        return Firmware.EFI
    return Firmware.BIOS


def _under(parent: ET.Element, *tags: str) -> Iterator[ET.Element]:
    """parent.iterfind("a/b/c") for plain tags: the elements at that path, in document order.

    A walk over the children instead of an ElementPath query: every read of a host asks each domain's definition
    a dozen such questions, and the queries (with their [@attr='value'] predicates) cost several times the walk
    (tests/bench/bench_fleet.py; a fleet reads every domain of every host)."""
    if not tags:
        yield parent
        return
    first, rest = tags[0], tags[1:]
    for child in parent:
        if child.tag == first:
            yield from _under(child, *rest)


def _subsystem_hostdevs(root: ET.Element, kind: str) -> Iterator[ET.Element]:
    """findall("devices/hostdev[@mode='subsystem'][@type=KIND]")."""
    return (hostdev for hostdev in _under(root, "devices", "hostdev")
            if hostdev.get("mode") == "subsystem" and hostdev.get("type") == kind)


def pci_hostdevs(root: ET.Element) -> list[tuple[ET.Element, PciAddress]]:
    found = []
    for hostdev in _subsystem_hostdevs(root, "pci"):
        source = next(_under(hostdev, "source", "address"), None)
        if source is not None:
            found.append((hostdev, address_from_attributes(source)))
    return found


def mdev_hostdevs(root: ET.Element) -> tuple[str, ...]:
    """The mediated devices a domain holds: <hostdev mode='subsystem' type='mdev'><source><address uuid=.../>
    (libvirt docs/formatdomain.rst, "Host device assignment", mdev). UUIDs lower-cased as sysfs names them."""
    return tuple(address.get("uuid", "").lower()
                 for hostdev in _subsystem_hostdevs(root, "mdev") for address in _under(hostdev, "source", "address")
                 if address.get("uuid"))


def _root_controller(root: ET.Element) -> ET.Element | None:
    controllers = [c for c in _under(root, "devices", "controller") if c.get("type") == "pci"]
    for model in ("pcie-root", "pci-root"):
        element = next((c for c in controllers if c.get("model") == model), None)
        if element is not None:
            return element
    return None


QEMU_NS = "http://libvirt.org/schemas/domain/qemu/1.0"
FWCFG_PREFIX = f"name={FWCFG_MMIO_ENTRY},string="


def _fwcfg_arg(root: ET.Element) -> ET.Element | None:
    """The <qemu:arg> holding OVMF's X-PciMmio64Mb (libvirt reserves opt/ovmf/ names in <sysinfo>)."""
    for arg in _under(root, f"{{{QEMU_NS}}}commandline", f"{{{QEMU_NS}}}arg"):
        if arg.get("value", "").startswith(FWCFG_PREFIX):
            return arg
    return None


def mmio_window(root: ET.Element) -> int | None:
    arg = _fwcfg_arg(root)
    value = arg.get("value", "") if arg is not None else ""
    if value[len(FWCFG_PREFIX):].isdigit():
        return int(value[len(FWCFG_PREFIX):]) * MiB
    controller = _root_controller(root)
    hole = controller.find("pcihole64") if controller is not None else None
    return _size(hole)


def read_facts(xml: str) -> DomainFacts:
    return facts_of(parse(xml))


def facts_of(root: ET.Element) -> DomainFacts:
    """read_facts of a parsed definition (the inventory parses each domain once for facts and claims)."""
    record = next(_under(root, "metadata", _q("assignment")), None)
    recorded = tuple(PciAddress.parse(d.get("address", "")) for d in _under(record, _q("device"))) \
        if record is not None else ()
    machine_type = next(_under(root, "os", "type"), None)
    return DomainFacts(
        name=root.findtext("name", ""),
        uuid=root.findtext("uuid", ""),
        firmware=firmware_of(root),
        machine=machine_type.get("machine", "") if machine_type is not None else "",
        memory_bytes=_size(root.find("memory")) or 0,
        locked_memory=next(_under(root, "memoryBacking", "locked"), None) is not None,
        hostdevs=tuple(address for _, address in pci_hostdevs(root)),
        mmio_window_bytes=mmio_window(root),
        hypervisor_hidden=any(h.get("state") == "on" for h in _under(root, "features", "kvm", "hidden")),
        recorded=recorded,
        phys_bits=physbits.guest_phys_bits(root),
        mdevs=mdev_hostdevs(root),
    )


def hostdev_element(function: PciFunction, guest: tuple[int, int] | None = None, multifunction: bool = False,
                    managed: bool = True) -> ET.Element:
    hostdev = ET.Element("hostdev", {"mode": "subsystem", "type": "pci", "managed": "yes" if managed else "no"})
    source = ET.SubElement(hostdev, "source")
    address = function.address
    ET.SubElement(source, "address", {
        "domain": f"0x{address.domain:04x}", "bus": f"0x{address.bus:02x}",
        "slot": f"0x{address.slot:02x}", "function": f"0x{address.function:x}",
    })
    if guest is not None:
        bus, slot = guest
        attributes = {"type": "pci", "domain": "0x0000", "bus": f"0x{bus:02x}", "slot": f"0x{slot:02x}",
                      "function": f"0x{address.function:x}"}
        if multifunction:
            attributes["multifunction"] = "on"
        ET.SubElement(hostdev, "address", attributes)
    return hostdev


@record
class Edit:
    xml: str
    changes: list[str]


@record(frozen=True)
class AssignSettings:
    cards: tuple[tuple[PciFunction, ...], ...]
    set_efi: bool = False
    mmio_window_bytes: int | None = None
    hide_hypervisor: bool = False
    # managed='no': the device stays on its host driver at VM start (NVIDIA's vGPU VFs stay bound to nvidia; with
    # managed='yes' libvirt would detach them and bind vfio-pci, libvirt docs/formatdomain.rst "managed").
    managed: bool = True


def _record(root: ET.Element) -> ET.Element:
    metadata = root.find("metadata")
    if metadata is None:
        metadata = ET.Element("metadata")
        # libvirt puts <metadata> right after name/uuid/title/description; keep that order.
        anchor = max((i for i, child in enumerate(root) if child.tag in ("name", "uuid", "title", "description")),
                     default=-1)
        root.insert(anchor + 1, metadata)
    record = metadata.find(_q("assignment"))
    if record is None:
        record = ET.SubElement(metadata, _q("assignment"))
        record.set("created-metadata", "yes" if len(metadata) == 1 else "no")
    return record


def _remember(record: ET.Element, what: str, value: str | None) -> None:
    """Keep the value a setting had before gpupass first changed it (absent = None)."""
    if record.find(f"{_q('previous')}[@setting='{what}']") is not None:
        return
    attributes = {"setting": what}
    if value is not None:
        attributes["value"] = value
    ET.SubElement(record, _q("previous"), attributes)


def _used_guest_slots(root: ET.Element, bus: int) -> set[int]:
    used = set()
    for address in root.iter("address"):
        if address.get("type") == "pci" and int(address.get("bus", "0"), 16) == bus:
            used.add(int(address.get("slot", "0"), 16))
    return used


def _next_controller_index(root: ET.Element) -> int:
    indexes = [int(c.get("index", "0")) for c in root.findall("devices/controller[@type='pci']")]
    return max(indexes, default=0) + 1


def _insert_device(root: ET.Element, element: ET.Element) -> None:
    devices = root.find("devices")
    if devices is None:
        devices = ET.SubElement(root, "devices")
    # Group with devices of the same kind, as libvirt formats them.
    same = [i for i, child in enumerate(devices) if child.tag == element.tag]
    devices.insert(same[-1] + 1 if same else len(devices), element)


def add_gpus(xml: str, settings: AssignSettings) -> Edit:
    root = parse(xml)
    record = _record(root)
    changes: list[str] = []
    present = {address for _, address in pci_hostdevs(root)}
    os_type = root.find("os/type")
    q35 = "q35" in (os_type.get("machine", "") if os_type is not None else "")
    for card in settings.cards:
        missing = [f for f in card if f.address not in present]
        if not missing:
            continue
        if len(missing) < len(card):
            from gpupass.core.errors import NotSupported

            held = ", ".join(str(f.address) for f in card if f.address in present)
            raise NotSupported(
                f"the VM already holds {held} without the rest of the card "
                f"({', '.join(str(f.address) for f in missing)}); a card's functions must sit together",
                remedy=f"release {card[0].address} from the VM, then assign it again with its companions",
            )
        guest: tuple[int, int] | None = None
        if q35:
            # Each card gets its own root port, recorded, so a release removes it again. Left to itself,
            # libvirt adds a pcie-root-port at define time for a hostdev without a guest address when no
            # spare port is free, and that port would stay behind after the release.
            index = _next_controller_index(root)
            _insert_device(root, ET.Element("controller", {"type": "pci", "index": str(index), "model": "pcie-root-port"}))
            ET.SubElement(record, _q("controller"), {"index": str(index)})
            guest = (index, 0)
            what = f"the card's {len(card)} functions together" if len(card) > 1 else "the card"
            changes.append(f"add PCIe root port {index} to hold {what}")
        elif len(card) > 1:
            free = [s for s in range(0x10, 0x20) if s not in _used_guest_slots(root, 0)]
            if not free:
                from gpupass.core.errors import NotSupported

                raise NotSupported(
                    f"no free slot 0x10-0x1f on guest PCI bus 0 to keep the {len(card)} functions of "
                    f"{card[0].address} together",
                    remedy="free a slot (remove an unused device) or use a q35 VM",
                )
            guest = (0, free[0])
        first = min(f.address.function for f in card)
        for function in missing:
            multifunction = guest is not None and len(card) > 1 and function.address.function == first
            _insert_device(root, hostdev_element(function, guest, multifunction, settings.managed))
            ET.SubElement(record, _q("device"), {"address": str(function.address)})
            where = f" as guest function {function.address.function}" if guest and len(card) > 1 else ""
            managed = "yes" if settings.managed else "no"
            changes.append(f"add <hostdev managed='{managed}'> {function.address} ({function.kind}){where}")
    if settings.set_efi:
        os_element = root.find("os")
        if os_element is None:
            os_element = ET.SubElement(root, "os")
        if os_element.find("loader") is not None:
            from gpupass.core.errors import NotSupported

            raise NotSupported(
                "switching firmware is not supported on kvm for a domain with an explicit <loader>",
                remedy="set the EFI loader by hand (virsh edit) and run the assignment again",
            )
        _remember(record, "firmware", os_element.get("firmware"))
        os_element.set("firmware", "efi")
        changes.append("set <os firmware='efi'> (OVMF)")
        if root.find("features/acpi") is None:
            _remember(record, "acpi", None)
            _features(root, record).append(ET.Element("acpi"))
            changes.append("enable <acpi/> (UEFI needs it on x86)")
    if settings.mmio_window_bytes is not None:
        changes.extend(_set_mmio_window(root, record, settings.mmio_window_bytes))
    if settings.hide_hypervisor:
        changes.extend(_hide_hypervisor(root, record))
    return Edit(serialize(root), changes)


def _set_mmio_window(root: ET.Element, record: ET.Element, window: int) -> list[str]:
    changes = []
    controller = _root_controller(root)
    if controller is not None:
        hole = controller.find("pcihole64")
        _remember(record, "pcihole64", None if hole is None else f"{hole.text}:{hole.get('unit', 'KiB')}")
        if hole is None:
            hole = ET.SubElement(controller, "pcihole64")
        hole.set("unit", "KiB")
        hole.text = str(window // KiB)
        changes.append(f"set <pcihole64> to {window // KiB} KiB on the {controller.get('model')} controller")
    arg = _fwcfg_arg(root)
    _remember(record, "fwcfg-arg", None if arg is None else arg.get("value"))
    value = f"{FWCFG_PREFIX}{window // MiB}"
    if arg is None:
        commandline = root.find(f"{{{QEMU_NS}}}commandline")
        if commandline is None:
            _remember(record, "qemu-commandline", None)
            commandline = ET.SubElement(root, f"{{{QEMU_NS}}}commandline")
        ET.SubElement(commandline, f"{{{QEMU_NS}}}arg", {"value": "-fw_cfg"})
        arg = ET.SubElement(commandline, f"{{{QEMU_NS}}}arg")
    arg.set("value", value)
    changes.append(f"set OVMF's 64-bit MMIO aperture to {window // MiB} MiB (<qemu:commandline> -fw_cfg {value})")
    return changes


def _features(root: ET.Element, record: ET.Element) -> ET.Element:
    features = root.find("features")
    if features is None:
        _remember(record, "features", None)
        features = ET.Element("features")
        anchor = next((i for i, child in enumerate(root) if child.tag == "os"), len(root) - 1)
        root.insert(anchor + 1, features)
    return features


def _hide_hypervisor(root: ET.Element, record: ET.Element) -> list[str]:
    features = _features(root, record)
    kvm = features.find("kvm")
    if kvm is None:
        _remember(record, "kvm", None)
        kvm = ET.SubElement(features, "kvm")
    hidden = kvm.find("hidden")
    _remember(record, "kvm-hidden", None if hidden is None else hidden.get("state"))
    if hidden is None:
        hidden = ET.SubElement(kvm, "hidden")
    hidden.set("state", "on")
    hyperv = features.find("hyperv")
    if hyperv is None:
        _remember(record, "hyperv", None)
        hyperv = ET.SubElement(features, "hyperv", {"mode": "custom"})
    vendor = hyperv.find("vendor_id")
    _remember(record, "vendor_id", None if vendor is None else f"{vendor.get('state')}:{vendor.get('value', '')}")
    if vendor is None:
        vendor = ET.SubElement(hyperv, "vendor_id")
    vendor.set("state", "on")
    vendor.set("value", HYPERV_VENDOR_ID)
    return ["hide the KVM signature (<kvm><hidden state='on'/>) and set a Hyper-V vendor_id"]


def remove_gpus(xml: str, addresses: set[PciAddress]) -> Edit:
    root = parse(xml)
    devices = _child(root, "devices")
    record = root.find(f"metadata/{_q('assignment')}")
    changes = []
    freed_buses: set[int] = set()
    for hostdev, address in pci_hostdevs(root):
        if address in addresses:
            guest = hostdev.find("address")
            if guest is not None and guest.get("type") == "pci":
                freed_buses.add(int(guest.get("bus", "0"), 16))
            devices.remove(hostdev)
            changes.append(f"remove <hostdev> {address}")
    if record is None:
        return Edit(serialize(root), changes)
    for device in record.findall(_q("device")):
        if PciAddress.parse(device.get("address", "")) in addresses:
            record.remove(device)
    still_used = {int(a.get("bus", "0"), 16) for a in root.iter("address") if a.get("type") == "pci"}
    for controller_record in record.findall(_q("controller")):
        index = int(controller_record.get("index", "-1"))
        if index in freed_buses and index not in still_used:
            controller = root.find(f"devices/controller[@type='pci'][@index='{index}']")
            if controller is not None:
                devices.remove(controller)
                changes.append(f"remove PCIe root port {index} that gpupass added")
            record.remove(controller_record)
    _prune_claims(record, {str(a) for _, a in pci_hostdevs(root)})
    if record.find(_q("device")) is None:
        changes.extend(_restore_previous(root, record))
        _drop_record_if_empty(root, record)
    return Edit(serialize(root), changes)


def _drop_record_if_empty(root: ET.Element, record: ET.Element) -> None:
    """The record goes when it holds no device any more; what it says about mediated devices gpupass gave
    (<mdev>) stays while the VM holds them, alone."""
    if record.find(_q("device")) is not None:
        return
    kept = (_q("mdev"), _q("mdev-intent"))
    if any(record.find(tag) is not None for tag in kept):
        for child in list(record):
            if child.tag not in kept:
                record.remove(child)
        return
    metadata = _child(root, "metadata")
    metadata.remove(record)
    if len(metadata) == 0 and record.get("created-metadata") == "yes":
        root.remove(metadata)


# -- mediated devices (vGPU shares) ---------------------------------------------------------------------------
def mdev_hostdev_element(uuid: str) -> ET.Element:
    """<hostdev mode='subsystem' type='mdev' model='vfio-pci'><source><address uuid=.../></source></hostdev>
    (libvirt docs/formatdomain.rst, "Host device assignment", mdev: model is required, vfio-pci for a PCI
    device; libvirt never manages an mdev, so no managed='yes')."""
    hostdev = ET.Element("hostdev", {"mode": "subsystem", "type": "mdev", "model": "vfio-pci"})
    ET.SubElement(ET.SubElement(hostdev, "source"), "address", {"uuid": uuid})
    return hostdev


def add_mdev(xml: str, uuid: str, created: bool) -> Edit:
    """The domain holding mediated device `uuid`; the record says whether gpupass created the device, so a release
    undefines exactly the devices gpupass made and leaves those an admin made (mdevctl, virsh) on the host."""
    root = parse(xml)
    if uuid.lower() in mdev_hostdevs(root):
        return Edit(serialize(root), [])
    record = _record(root)
    ET.SubElement(record, _q("mdev"), {"uuid": uuid.lower(), "created": "yes" if created else "no"})
    _insert_device(root, mdev_hostdev_element(uuid.lower()))
    return Edit(serialize(root), [f"add <hostdev type='mdev'> {uuid.lower()}"])


def remove_mdev(xml: str, uuid: str) -> Edit:
    root = parse(xml)
    devices = _child(root, "devices")
    changes = []
    for hostdev in root.findall("devices/hostdev[@mode='subsystem'][@type='mdev']"):
        address = hostdev.find("source/address")
        if address is not None and address.get("uuid", "").lower() == uuid.lower():
            devices.remove(hostdev)
            changes.append(f"remove <hostdev type='mdev'> {uuid.lower()}")
    record = root.find(f"metadata/{_q('assignment')}")
    if record is not None:
        for element in record.findall(_q("mdev")):
            if element.get("uuid", "").lower() == uuid.lower():
                record.remove(element)
        _drop_record_if_empty(root, record)
    return Edit(serialize(root), changes)


@record(frozen=True)
class MdevIntent:
    """A mediated device a gpupass run is creating (or `removing`) for the VM whose definition
    records it, written there before the run's first call on the device and taken out by the define that ends the run
    (backends/kvm/mdevstate.py says why). `gpu`: the card's PCI address, as a command names it; `parent`: the node
    device the mediated device is made on (the card, or one of its VFs)."""

    uuid: str
    parent: str
    type_id: str
    gpu: str
    removing: bool = False


def with_mdev_intent(xml: str, intent: MdevIntent) -> Edit:
    root = parse(xml)
    record = _record(root)
    for old in record.findall(_q("mdev-intent")):
        if old.get("uuid", "").lower() == intent.uuid.lower():
            record.remove(old)
    ET.SubElement(record, _q("mdev-intent"), {"uuid": intent.uuid.lower(), "parent": intent.parent,
                                             "type": intent.type_id, "gpu": intent.gpu,
                                             "action": "remove" if intent.removing else "create"})
    return Edit(serialize(root), [f"record in the VM that gpupass is {'removing' if intent.removing else 'creating'} "
                                  f"mediated device {intent.uuid.lower()}"])


def without_mdev_intent(xml: str, uuid: str) -> str:
    root = parse(xml)
    record = root.find(f"metadata/{_q('assignment')}")
    if record is not None:
        for element in record.findall(_q("mdev-intent")):
            if element.get("uuid", "").lower() == uuid.lower():
                record.remove(element)
        _drop_record_if_empty(root, record)
    return serialize(root)


def mdev_intents(root: ET.Element) -> tuple[MdevIntent, ...]:
    return tuple(MdevIntent(e.get("uuid", "").lower(), e.get("parent", ""), e.get("type", ""), e.get("gpu", ""),
                            e.get("action") == "remove")
                 for e in _under(root, "metadata", _q("assignment"), _q("mdev-intent")))


def comparable(xml: str) -> str:
    """`xml` as a string two definitions can be compared by whatever way they were formatted (libvirt reformats what
    it is given, gpupass's metadata included), apart from gpupass's intents (MdevIntent), which a run writes and takes
    out on its way: whitespace-only text dropped, the intents taken out."""
    root = parse(xml)
    for uuid in {i.uuid for i in mdev_intents(root)}:
        root = parse(without_mdev_intent(serialize(root), uuid))
    for element in root.iter():
        if element.text is not None and not element.text.strip():
            element.text = None
        if element.tail is not None and not element.tail.strip():
            element.tail = None
    return serialize(root)


def with_vf_vgpu_type(xml: str, vf: str, type_id: str) -> str:
    """The record that gpupass set vGPU type `type_id` on virtual function `vf` for this VM (so a release clears
    exactly the types gpupass set and leaves an admin's)."""
    root = parse(xml)
    ET.SubElement(_record(root), _q("vf-vgpu"), {"address": vf, "type": type_id})
    return serialize(root)


def without_vf_vgpu_type(xml: str, vf: str) -> str:
    root = parse(xml)
    record = root.find(f"metadata/{_q('assignment')}")
    if record is not None:
        for element in record.findall(_q("vf-vgpu")):
            if element.get("address") == vf:
                record.remove(element)
        _drop_record_if_empty(root, record)
    return serialize(root)


def vf_vgpu_types_set_by_gpupass(root: ET.Element) -> dict[str, str]:
    return {e.get("address", ""): e.get("type", "") for e in root.findall(f"metadata/{_q('assignment')}/{_q('vf-vgpu')}")}


def mdevs_created_by_gpupass(root: ET.Element) -> tuple[str, ...]:
    return tuple(e.get("uuid", "").lower() for e in root.findall(f"metadata/{_q('assignment')}/{_q('mdev')}")
                 if e.get("created") == "yes")


def _restore_previous(root: ET.Element, record: ET.Element) -> list[str]:
    previous = {p.get("setting", ""): p.get("value") for p in record.findall(_q("previous"))}
    changes = []
    if "firmware" in previous:
        os_element = _child(root, "os")
        if previous["firmware"] is None:
            os_element.attrib.pop("firmware", None)
        else:
            os_element.set("firmware", previous["firmware"])
        changes.append(f"restore firmware ({previous['firmware'] or 'BIOS'})")
    if "pcihole64" in previous:
        controller = _root_controller(root)
        hole = controller.find("pcihole64") if controller is not None else None
        if controller is not None and hole is not None:
            saved = previous["pcihole64"]
            if saved is None:
                controller.remove(hole)
            else:
                text, unit = saved.rsplit(":", 1)
                hole.text, hole.attrib["unit"] = text, unit
        changes.append("restore the 64-bit PCI hole")
    if "fwcfg-arg" in previous:
        arg = _fwcfg_arg(root)
        commandline = root.find(f"{{{QEMU_NS}}}commandline")
        saved = previous["fwcfg-arg"]
        if arg is not None and commandline is not None and saved is None:
            args = list(commandline)
            position = args.index(arg)
            commandline.remove(arg)
            if position > 0 and args[position - 1].get("value") == "-fw_cfg":
                commandline.remove(args[position - 1])
        elif arg is not None and saved is not None:
            arg.set("value", saved)
        if "qemu-commandline" in previous and commandline is not None and len(commandline) == 0:
            root.remove(commandline)
        changes.append("restore OVMF's MMIO aperture")
    if "kvm-hidden" in previous:
        changes.append("restore the hypervisor signature settings")
    acpi = root.find("features/acpi")
    if "acpi" in previous and acpi is not None:
        _child(root, "features").remove(acpi)
    _restore_features(root, previous)
    return changes


def _restore_features(root: ET.Element, previous: dict[str, str | None]) -> None:
    features = root.find("features")
    if features is None:
        return
    if "kvm-hidden" not in previous:
        if "features" in previous and len(features) == 0:
            root.remove(features)
        return
    kvm, hyperv = features.find("kvm"), features.find("hyperv")
    if kvm is not None:
        hidden = kvm.find("hidden")
        saved = previous.get("kvm-hidden")
        if saved is None and hidden is not None:
            kvm.remove(hidden)
        elif hidden is not None and saved is not None:
            hidden.set("state", saved)
        if "kvm" in previous and len(kvm) == 0:
            features.remove(kvm)
    if hyperv is not None:
        vendor = hyperv.find("vendor_id")
        saved = previous.get("vendor_id")
        if saved is None and vendor is not None:
            hyperv.remove(vendor)
        elif vendor is not None and saved is not None:
            state, value = saved.split(":", 1)
            vendor.set("state", state)
            if value:
                vendor.set("value", value)
            else:
                vendor.attrib.pop("value", None)
        if "hyperv" in previous and len(hyperv) == 0:
            features.remove(hyperv)
    if "features" in previous and len(features) == 0:
        root.remove(features)


def hostdev_xml(function: PciFunction) -> str:
    return serialize(hostdev_element(function))



def planned_domain(name: str, memory_bytes: int, firmware: Firmware) -> str:
    """A minimal q35 definition standing in for a VM a migration tool has not created yet."""
    root = ET.Element("domain", {"type": "kvm"})
    ET.SubElement(root, "name").text = name
    ET.SubElement(root, "memory", {"unit": "KiB"}).text = str(memory_bytes // KiB)
    os_attributes = {"firmware": "efi"} if firmware is Firmware.EFI else {}
    os_element = ET.SubElement(root, "os", os_attributes)
    ET.SubElement(os_element, "type", {"arch": "x86_64", "machine": "q35"}).text = "hvm"
    ET.SubElement(ET.SubElement(root, "features"), "acpi")
    devices = ET.SubElement(root, "devices")
    ET.SubElement(devices, "controller", {"type": "pci", "index": "0", "model": "pcie-root"})
    return serialize(root)


# -- claims (gpupass.core.domain.claims): kept inside the assignment record of the VM they are about --------
def with_claim(xml: str, claim: Claim) -> str:
    """`xml` with `claim` in its record; claims of this VM still choosing (this run's own doorway, or one left
    by a run that stopped) are dropped, since only one run at a time can be working on one VM's definition."""
    root = parse(xml)
    record = _record(root)
    for old in record.findall(_q("claim")):
        if old.get("number") is None or old.get("token") == claim.token:
            record.remove(old)
    attributes = {"token": claim.token, "gpus": " ".join(sorted(claim.addresses)), "origin": claim.origin}
    if claim.number is not None:
        attributes["number"] = str(claim.number)
    record.insert(0, ET.Element(_q("claim"), attributes))
    return serialize(root)


def without_unfinished_claims(xml: str) -> str:
    root = parse(xml)
    record = root.find(f"metadata/{_q('assignment')}")
    if record is not None:
        for old in record.findall(_q("claim")):
            if old.get("number") is None:
                record.remove(old)
    return serialize(root)


def claims_of(xml: str) -> tuple[list[Claim], list[Holder]]:
    """The claims recorded in a domain, and the devices it holds with the claim (if any) that put each there."""
    return claims_in(parse(xml))


def claims_in(root: ET.Element) -> tuple[list[Claim], list[Holder]]:
    """claims_of a parsed definition."""
    vm = root.findtext("name", "")
    claims = []
    for element in _under(root, "metadata", _q("assignment"), _q("claim")):
        number = element.get("number")
        claims.append(Claim(vm, element.get("token", ""), frozenset(element.get("gpus", "").split()),
                            int(number) if number and number.isdigit() else None, element.get("origin", "")))
    holders = []
    for _, address in pci_hostdevs(root):
        covering = [c for c in claims if str(address) in c.addresses and not c.choosing]
        holders.append(Holder(vm, str(address), min(covering, key=Claim.order) if covering else None))
    return claims, holders


def _prune_claims(record: ET.Element, held: set[str]) -> None:
    for claim in record.findall(_q("claim")):
        if claim.get("number") is not None and not set(claim.get("gpus", "").split()) & held:
            record.remove(claim)
