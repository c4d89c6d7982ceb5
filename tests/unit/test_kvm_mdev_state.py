"""What status and assign are told about mediated devices defined but not started (backends/kvm/mdevstate.py), from
what the inventory read: the listing of every device and the listing of the stopped ones (which a real libvirtd
answers and the test driver refuses, tests/integration/libvirtd/test_kvm_mdev_intents_libvirtd.py and
tests/integration/kvm/test_kvm_mdev_intents.py). No daemon here holds a stopped device (no mdevctl, no mdev parent),
so these states are given as the two listings would give them."""

from __future__ import annotations

from gpupass.backends.kvm import domxml
from gpupass.backends.kvm.backend import _share_unfinished, _with_mdev_notes
from gpupass.backends.kvm.nodedev import MediatedDevice, parse_mdev_nodedev
from gpupass.core.domain.inventory import Firmware, PowerState, Vm
from gpupass.core.domain.sharing import Share, ShareMode, Sharing

PARENT = "pci_0000_81_00_0"
HELD = MediatedDevice(PARENT, "nvidia-46", "aaaaaaaa-0000-4000-8000-000000000001", "mdev_aaaa_0000_81_00_0")
IDLE = MediatedDevice(PARENT, "nvidia-46", "aaaaaaaa-0000-4000-8000-000000000002", "mdev_bbbb_0000_81_00_0")
RUNNING = MediatedDevice(PARENT, "nvidia-46", "aaaaaaaa-0000-4000-8000-000000000003", "mdev_cccc_0000_81_00_0")
LISTED = {m.uuid: m for m in (HELD, IDLE, RUNNING)}
STOPPED = frozenset({HELD.uuid, IDLE.uuid})


def vm(name: str) -> Vm:
    return Vm(name=name, power_state=PowerState.OFF, firmware=Firmware.EFI, memory_bytes=1 << 30)


def test_a_stopped_device_is_never_free_and_says_which_command_starts_it():
    holders = {HELD.uuid: "vdi01"}
    shares = tuple(Share(m.uuid, m.type_id, ShareMode.MDEV, holders.get(m.uuid),
                         _share_unfinished(m, holders.get(m.uuid), STOPPED, {})) for m in LISTED.values())
    sharing = Sharing(shares=shares)
    assert [s.id for s in sharing.free("nvidia-46")] == [RUNNING.uuid]
    by_id = {s.id: s.unfinished for s in shares}
    assert "VM 'vdi01' cannot start with it" in by_id[HELD.uuid] and "virsh nodedev-start mdev_aaaa" in by_id[HELD.uuid]
    assert "given to no VM" in by_id[IDLE.uuid] and "virsh nodedev-undefine mdev_bbbb_0000_81_00_0" in by_id[IDLE.uuid]
    assert by_id[RUNNING.uuid] == ""


def test_status_shows_a_stopped_device_on_the_vm_holding_it_and_one_no_vm_holds_on_the_host():
    vms, host_notes = _with_mdev_notes([vm("vdi01"), vm("web01")], {HELD.uuid: "vdi01", RUNNING.uuid: "web01"},
                                       LISTED, STOPPED, {}, {})
    notes = {v.name: v.unfinished for v in vms}
    (held,) = notes["vdi01"]
    assert f"holds mediated device {HELD.uuid} of GPU 0000:81:00.0, which is defined on the host but not started" in \
        held and "`gpupass release HOST vdi01 0000:81:00.0` takes it back" in held, held
    assert notes["web01"] == ()
    (idle,) = host_notes
    assert IDLE.uuid in idle and "virsh nodedev-start mdev_bbbb_0000_81_00_0" in idle


def test_an_intent_names_its_device_whatever_state_the_host_reports():
    intent = domxml.MdevIntent(IDLE.uuid, PARENT, "nvidia-46", "0000:81:00.0")
    vms, host_notes = _with_mdev_notes([vm("ml-train")], {}, {IDLE.uuid: IDLE}, STOPPED, {"ml-train": (intent,)}, {})
    (note,) = vms[0].unfinished
    assert "which is defined on the host but not started (mdev_bbbb_0000_81_00_0)" in note, note
    assert host_notes == []  # the VM's note names it: not twice
    gone = domxml.MdevIntent("aaaaaaaa-0000-4000-8000-00000000ffff", PARENT, "nvidia-46", "0000:81:00.0", True)
    vms, _ = _with_mdev_notes([vm("ml-train")], {}, LISTED, STOPPED, {"ml-train": (gone,)}, {})
    assert "a release of the nvidia-46 vGPU" in vms[0].unfinished[0] and "is not on the host" in vms[0].unfinished[0]


def test_a_device_of_a_virtual_function_is_named_by_its_card():
    on_vf = MediatedDevice("pci_0000_41_00_5", "nvidia-471", "aaaaaaaa-0000-4000-8000-000000000009", "mdev_x")
    _, (note,) = _with_mdev_notes([], {}, {on_vf.uuid: on_vf}, frozenset({on_vf.uuid}), {},
                                  {"pci_0000_41_00_5": "0000:41:00.0"})
    assert "on GPU 0000:41:00.0" in note, note


def test_the_intent_record_round_trips_and_compares_apart_from_formatting():
    xml = "<domain><name>a</name><devices/></domain>"
    intent = domxml.MdevIntent(IDLE.uuid, PARENT, "nvidia-46", "0000:81:00.0", removing=True)
    recorded = domxml.with_mdev_intent(xml, intent).xml
    assert domxml.mdev_intents(domxml.parse(recorded)) == (intent,)
    assert domxml.without_mdev_intent(recorded, IDLE.uuid) == domxml.serialize(domxml.parse(xml))
    reformatted = recorded.replace("<devices />", "<devices>\n    </devices>").replace("><", ">\n  <")
    assert domxml.comparable(reformatted) == domxml.comparable(xml)
    assert domxml.comparable(xml) != domxml.comparable(xml.replace("<name>a", "<name>b"))


def test_the_node_device_name_comes_with_a_mediated_device():
    xml = ("<device><name>mdev_6f1d_0000_81_00_0</name><parent>pci_0000_81_00_0</parent><capability type='mdev'>"
           "<type id='nvidia-46'/><uuid>6F1D2C8E-5A1B-4E0C-8D1F-7A2B3C4D5E02</uuid></capability></device>")
    assert parse_mdev_nodedev(xml) == MediatedDevice(PARENT, "nvidia-46", "6f1d2c8e-5a1b-4e0c-8d1f-7a2b3c4d5e02",
                                                     "mdev_6f1d_0000_81_00_0")
