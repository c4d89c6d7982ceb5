"""The KVM backend end to end against libvirt's test driver: inventory, plan, execute, rollback, guard."""

from __future__ import annotations

import dataclasses

import pytest

libvirt = pytest.importorskip("libvirt", reason="libvirt-python is not installed (pip install 'gpupass[kvm]')")

from gpupass.backends.kvm.lab import testhost
from gpupass.core.domain.inventory import Firmware, PowerState
from gpupass.core.domain.pci import PciAddress
from gpupass.core.domain.plan import Plan
from gpupass.core.domain.request import AssignmentRequest, AssignOptions, ReleaseOptions, ReleaseRequest
from gpupass.core.errors import ConnectionFailed, NotFound, NotSupported, OperationFailed, PreflightFailed
from gpupass.core.service import execute, make_plan

A = PciAddress.parse
H100, A100, RTX4090, RTX3090 = A("0000:42:00.0"), A("0000:41:00.0"), A("0000:01:00.0"), A("0000:02:00.0")


def plan_for(backend, request, registry) -> Plan:
    return make_plan(backend, backend.inventory(), request, registry)


def codes(plan: Plan) -> set[str]:
    return {finding.code for finding in plan.findings}


# -- inventory ---------------------------------------------------------------------------------------

def test_lab_inventory_reports_gpus_companions_groups_and_owners(lab):
    facts = lab.inventory()
    assert facts.host.iommu_enabled is True and facts.host.platform == "kvm"
    gpus = {gpu.address: gpu for gpu in facts.gpus}
    # 00:02.0 is an SR-IOV PF: its four VFs (00:02.1-00:02.4) are its shares, neither GPUs nor companions
    assert sorted(gpus) == [A("00:02.0"), RTX4090, RTX3090, A100, H100, A("81:00.0")]
    assert gpus[A("00:02.0")].companions == () and len(gpus[A("00:02.0")].sharing.shares) == 4
    assert [str(c.address) for c in gpus[RTX4090].companions] == ["0000:01:00.1"]
    assert [str(c.address) for c in gpus[RTX3090].companions] == ["0000:02:00.1"]
    assert gpus[H100].companions == () and gpus[A100].companions == ()
    assert {a: g.iommu_group.number for a, g in gpus.items()} == {RTX4090: 14, RTX3090: 15, A100: 20, H100: 21,
                                                                  A("81:00.0"): 30, A("00:02.0"): 40}
    assert gpus[RTX3090].iommu_group.members == (A("00:17.0"), A("02:00.0"), A("02:00.1"))
    assert {a: g.assigned_to for a, g in gpus.items()} == {RTX4090: "cad-ws", RTX3090: None, A100: None, H100: None,
                                                           A("81:00.0"): None, A("00:02.0"): None}  # the P40 is shared (vdi01's vGPU)
    assert gpus[H100].model == "NVIDIA H100 PCIe"
    # libvirt's test driver drops <driver><name> from node device XML; the backend reads it from the host file.
    assert gpus[H100].function.driver == "nvidia"
    assert facts.function(A("00:17.0")).driver == "ahci"
    # The test driver is not this machine: BARs come from the catalog, never from local sysfs.
    assert sum(bar.size for bar in gpus[H100].bars) == (128 << 30) + (48 << 20)
    assert facts.function(A("00:17.0")).kind == "SATA controller"
    assert facts.function(A("00:01.0")).is_bridge


def test_lab_inventory_reports_vms(lab):
    vms = {vm.name: vm for vm in lab.inventory().vms}
    assert sorted(vms) == ["cad-ws", "ml-train", "render01", "vdi01", "web01"]
    assert vms["web01"].power_state is PowerState.RUNNING
    assert all(vms[name].is_off for name in ("cad-ws", "ml-train", "render01", "vdi01"))
    assert vms["render01"].firmware is Firmware.BIOS and vms["ml-train"].firmware is Firmware.EFI
    assert vms["ml-train"].memory_bytes == 64 << 30
    assert vms["cad-ws"].assigned == (RTX4090, A("01:00.1"))
    assert vms["ml-train"].settings["machine"] == "q35"
    assert vms["ml-train"].id == "6f1d2c8e-3b1a-4c52-9a57-0c1e7d2f8a01"


def test_a_host_without_iommu_groups_blocks_with_iommu_off(tmp_path, open_backend, registry):
    uri = testhost.write_host(tmp_path / "no-iommu.xml",
                              [testhost.gpu("0000:41:00.0", 0x1EB8, "TU104GL [Tesla T4]", group=None)],
                              [testhost.domain("vm1")])
    backend = open_backend(uri)
    facts = backend.inventory()
    assert facts.host.iommu_enabled is False
    assert "IOMMU group" in facts.host.iommu_reasons[0]
    assert facts.gpus[0].iommu_group is None
    plan = make_plan(backend, facts, AssignmentRequest("vm1", (A("41:00.0"),)), registry)
    assert plan.blocked and "iommu-off" in codes(plan)
    with pytest.raises(PreflightFailed):
        execute(backend, plan)


def test_a_host_without_pci_devices_cannot_tell_about_the_iommu(tmp_path, open_backend):
    backend = open_backend(testhost.write_host(tmp_path / "empty.xml", [], [testhost.domain("vm1")]))
    facts = backend.inventory()
    assert facts.host.iommu_enabled is None and facts.gpus == ()


def test_unknown_vm_and_unknown_gpu_are_not_found(lab, registry):
    with pytest.raises(NotFound):
        plan_for(lab, AssignmentRequest("no-such-vm", (H100,)), registry)
    with pytest.raises(NotFound):
        plan_for(lab, AssignmentRequest("ml-train", (A("0000:77:00.0"),)), registry)


@pytest.mark.parametrize("content", [None, "<node><device><name>computer</name></device></node>"],
                         ids=["missing-file", "no-system-uuid"])
def test_a_host_libvirt_cannot_open_is_a_connection_failure(tmp_path, open_backend, content):
    path = tmp_path / "host.xml"
    if content is not None:
        path.write_text(content)
    with pytest.raises(ConnectionFailed) as caught:
        open_backend(path).inventory()
    assert str(path) in caught.value.message


# -- assign and release through the service -----------------------------------------------------------

CASES = {
    "h100-mmio": ("ml-train", H100, AssignOptions()),
    "a100-efi-switch-and-hiding": ("render01", A100, AssignOptions(allow_firmware_change=True, hide_hypervisor=True)),
}


@pytest.mark.parametrize("vm, gpu, options", CASES.values(), ids=CASES.keys())
def test_assign_then_release_leaves_the_definition_identical(lab, registry, vm, gpu, options, domain_xml):
    before = domain_xml(lab, vm)
    plan = plan_for(lab, AssignmentRequest(vm, (gpu,), options), registry)
    assert not plan.blocked and not plan.nothing_to_do
    outcome = execute(lab, plan)
    assert outcome.facts_after.find_vm(vm).assigned == (gpu,)
    assert next(g for g in outcome.facts_after.gpus if g.address == gpu).assigned_to == vm
    assigned = domain_xml(lab, vm)
    assert "gpupass:assignment" in assigned and assigned != before

    release = plan_for(lab, ReleaseRequest(vm), registry)
    assert [step.action for step in release.steps] == ["kvm.define-domain"]
    execute(lab, release)

    assert domain_xml(lab, vm) == before


def test_companions_move_together_and_come_back_out_exactly(lab, registry, domain_xml):
    """The RTX 4090 + audio: released from cad-ws (not a gpupass assignment), then assigned to ml-train."""
    before_cad = domain_xml(lab, "cad-ws")
    execute(lab, plan_for(lab, ReleaseRequest("cad-ws", (RTX4090,)), registry))
    assert lab.inventory().find_vm("cad-ws").assigned == ()
    assert "<hostdev" not in domain_xml(lab, "cad-ws") and before_cad != domain_xml(lab, "cad-ws")

    before = domain_xml(lab, "ml-train")
    plan = plan_for(lab, AssignmentRequest("ml-train", (RTX4090,), AssignOptions(bar_sizes={RTX4090: 32 << 30})),
                    registry)
    assert "companions-included" in codes(plan) and not plan.blocked
    execute(lab, plan)
    assigned = domain_xml(lab, "ml-train")
    assert assigned.count("<hostdev ") == 2 and "pcie-root-port" in assigned and "multifunction='on'" in assigned
    assert lab.inventory().find_vm("ml-train").assigned == (RTX4090, A("01:00.1"))

    execute(lab, plan_for(lab, ReleaseRequest("ml-train"), registry))
    assert domain_xml(lab, "ml-train") == before


def test_second_assign_has_no_write_steps_and_says_so(lab, registry, domain_xml):
    request = AssignmentRequest("ml-train", (H100,))
    execute(lab, plan_for(lab, request, registry))
    after_first = domain_xml(lab, "ml-train")
    again = plan_for(lab, request, registry)
    assert again.nothing_to_do and not again.blocked
    assert not any(step.writes for step in again.steps)
    outcome = execute(lab, again)
    assert outcome.applied == ()
    assert domain_xml(lab, "ml-train") == after_first
    # And a release of a VM that holds nothing is a no-op too.
    execute(lab, plan_for(lab, ReleaseRequest("ml-train"), registry))
    assert plan_for(lab, ReleaseRequest("ml-train"), registry).nothing_to_do


def test_partial_release_keeps_the_other_gpu(lab, registry):
    execute(lab, plan_for(lab, AssignmentRequest("ml-train", (H100, A100)), registry))
    assert set(lab.inventory().find_vm("ml-train").assigned) == {A100, H100}
    execute(lab, plan_for(lab, ReleaseRequest("ml-train", (A100,)), registry))
    vm = lab.inventory().find_vm("ml-train")
    assert vm.assigned == (H100,) and vm.settings["assigned_by_gpupass"] == [str(H100)]
    assert vm.mmio_window_bytes == 256 << 30  # the window sized for both (192 GiB -> 256 GiB) stays until the last GPU leaves


def test_running_vm_and_gpu_of_another_vm_are_blocked(lab, registry):
    running = plan_for(lab, AssignmentRequest("web01", (H100,)), registry)
    assert "vm-not-off" in codes(running) and running.blocked
    taken = plan_for(lab, AssignmentRequest("ml-train", (RTX4090,)), registry)
    assert "gpu-assigned-elsewhere" in codes(taken)
    shared = plan_for(lab, AssignmentRequest("ml-train", (RTX3090,)), registry)
    assert "iommu-group-shared" in codes(shared)
    bios = plan_for(lab, AssignmentRequest("render01", (A100,)), registry)
    assert "firmware-bios-large-bar" in codes(bios)


# -- failures part-way leave the definition as it was ----------------------------------------------

def test_a_definition_libvirt_rejects_is_reported_and_changes_nothing(lab, registry, domain_xml):
    before = domain_xml(lab, "ml-train")
    plan = plan_for(lab, AssignmentRequest("ml-train", (H100,)), registry)
    define = plan.steps[0]
    # Slot 0x40 does not exist on a PCI bus: libvirt's parser (not gpupass) refuses the document.
    broken = define.payload.new_xml.replace("slot=\"0x00\"", "slot=\"0x40\"")
    assert broken != define.payload.new_xml
    bad_plan = dataclasses.replace(plan, steps=(dataclasses.replace(
        define, payload=dataclasses.replace(define.payload, new_xml=broken)),))
    with pytest.raises(OperationFailed) as caught:
        execute(lab, bad_plan)
    assert caught.value.rolled_back
    assert isinstance(caught.value.__cause__, OperationFailed)
    assert caught.value.__cause__.__cause__.get_error_code() == libvirt.VIR_ERR_XML_ERROR
    assert domain_xml(lab, "ml-train") == before


def test_a_failing_second_step_undoes_the_first(lab, registry, domain_xml):
    """Step 1 redefines ml-train; step 2 hot-plugs into running web01, which the test driver refuses."""
    before_ml, before_web = domain_xml(lab, "ml-train"), domain_xml(lab, "web01")
    define = plan_for(lab, AssignmentRequest("ml-train", (H100,)), registry).steps[0]
    hotplug = lab._hotplug_step("web01", lab.inventory().gpus[2].function, attach=True)
    plan = Plan("assign", "t", "kvm", "ml-train", (), (define, hotplug), ())
    with pytest.raises(OperationFailed) as caught:
        execute(lab, plan)
    assert caught.value.rolled_back and "1 completed step(s) were undone" in caught.value.message
    assert isinstance(caught.value.__cause__, NotSupported)
    assert caught.value.__cause__.__cause__.get_error_code() == libvirt.VIR_ERR_NO_SUPPORT
    assert domain_xml(lab, "ml-train") == before_ml and domain_xml(lab, "web01") == before_web


def test_live_assign_to_a_running_vm_fails_cleanly_on_a_driver_without_hotplug(tmp_path, open_backend, registry,
                                                                             domain_xml):
    uri = testhost.write_host(tmp_path / "live.xml", [testhost.gpu("0000:41:00.0", 0x1EB8, "TU104GL [Tesla T4]", 5)],
                              [testhost.domain("busy", running=True)])
    backend = open_backend(uri)
    before = domain_xml(backend, "busy")
    plan = plan_for(backend, AssignmentRequest("busy", (A("41:00.0"),), AssignOptions(live=True)), registry)
    assert "live-change" in codes(plan) and not plan.blocked
    assert [step.action for step in plan.steps if step.writes] == ["kvm.hotplug", "kvm.define-domain"]
    with pytest.raises(OperationFailed) as caught:
        execute(backend, plan)
    assert isinstance(caught.value.__cause__, NotSupported) and caught.value.rolled_back
    assert domain_xml(backend, "busy") == before
    # Without --live the running VM is refused before anything is sent.
    assert "vm-not-off" in codes(plan_for(backend, AssignmentRequest("busy", (A("41:00.0"),)), registry))


def test_a_hostdev_is_told_in_a_running_vms_live_definition_by_its_source_address(tmp_path, open_backend):
    """What the hot-plug's read-back asks after a lost reply (KvmBackend._live_holds, test_kvm_hotplug_readback_
    libvirtd.py): is the <hostdev> in the running VM's live definition (XMLDesc without VIR_DOMAIN_XML_INACTIVE)?
    A live device carries what libvirt adds (QEMU's alias and guest address); the device's source address tells it."""
    from gpupass.backends.kvm import domxml
    from gpupass.backends.kvm.steps import Hotplug
    from gpupass.core.domain.pci import PciFunction

    uri = testhost.write_host(tmp_path / "live.xml", [testhost.gpu("0000:41:00.0", 0x1EB8, "TU104GL [Tesla T4]", 5),
                                                      testhost.gpu("0000:42:00.0", 0x1EB8, "TU104GL [Tesla T4]", 6)],
                              [testhost.domain("busy", running=True, hostdevs=["0000:41:00.0"])])
    backend = open_backend(uri)
    live = backend._connection().lookupByName("busy").XMLDesc(0)
    assert live.startswith("<domain type='test' id='1'>")  # the live definition: the domain runs (an ID)
    held, other = (PciFunction(A(a), 0x10DE, 0x1EB8, 0x030200) for a in ("41:00.0", "42:00.0"))
    assert backend._live_holds(Hotplug("busy", domxml.hostdev_xml(held), attach=True))
    assert not backend._live_holds(Hotplug("busy", domxml.hostdev_xml(other), attach=True))
    assert not backend._device_in(live, "<input type='tablet' bus='usb'/>")  # no source address: never "there"


def test_a_device_a_running_vm_holds_only_live_is_shown_and_the_same_assign_live_writes_it_without_plugging_again(
        tmp_path, open_backend, registry, domain_xml):
    """An `assign --live` stopped between its hot-plug and its define (killed) leaves the GPU in the running VM's live
    definition and not in its stored one. libvirt's test driver makes that state for real: a running domain whose
    stored definition is replaced without the device keeps it in its live one (a define of a running domain becomes
    its next definition: libvirt 9.0.0 src/conf/domain_conf.c, virDomainObjAssignDef lines 4034-4047). `status`
    shows it on the VM with the command that finishes it, another VM's assign of the GPU is refused, and the same
    `assign --live` again writes the device into the stored definition without plugging it in twice (the test driver
    has no hot-plug at all: a hot-plug step would fail)."""
    uri = testhost.write_host(tmp_path / "live.xml", [testhost.gpu("0000:41:00.0", 0x1EB8, "TU104GL [Tesla T4]", 5)],
                              [testhost.domain("busy", running=True, hostdevs=["0000:41:00.0"]),
                               testhost.domain("other")])
    backend = open_backend(uri)
    conn = backend._connection()._wrapped
    stored = conn.lookupByName("busy").XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE)
    conn.defineXML(stored.replace(stored[stored.index("<hostdev"):stored.index("</hostdev>") + len("</hostdev>")], ""))
    facts = backend.inventory()
    busy = facts.find_vm("busy")
    assert busy.assigned == () and busy.settings["held_live_only"] == ["0000:41:00.0"]
    note, = busy.unfinished
    assert note.startswith("holds 0000:41:00.0 only while it runs: the device is in its live definition but not in "
                           "its stored one") and "`gpupass assign HOST busy 0000:41:00.0 --live`" in note
    gpu, = facts.gpus
    assert gpu.assigned_to == "busy"
    assert "gpu-assigned-elsewhere" in codes(plan_for(backend, AssignmentRequest("other", (A("41:00.0"),)), registry))
    plan = plan_for(backend, AssignmentRequest("busy", (A("41:00.0"),), AssignOptions(live=True)), registry)
    assert not plan.blocked and [s.action for s in plan.steps if s.writes] == ["kvm.define-domain"]
    execute(backend, plan)
    again = backend.inventory().find_vm("busy")
    assert again.assigned == (A("41:00.0"),) and again.unfinished == () and "held_live_only" not in again.settings


def test_a_device_a_running_vm_holds_only_in_its_stored_definition_is_shown_and_release_live_does_not_unplug_it(
        tmp_path, open_backend, registry):
    """A `release --live` stopped between its hot-unplug and its define leaves the GPU in the running VM's stored
    definition and not in its live one (it would come back at the next start). The test driver makes that state: a
    running domain whose stored definition gains the device. `status` shows it with the command that finishes it, and
    that `release --live` takes it out of the stored definition without unplugging it again (which libvirt would
    refuse: the device is not there)."""
    uri = testhost.write_host(tmp_path / "stored.xml", [testhost.gpu("0000:41:00.0", 0x1EB8, "TU104GL [Tesla T4]", 5)],
                              [testhost.domain("busy", running=True)])
    backend = open_backend(uri)
    conn = backend._connection()._wrapped
    stored = conn.lookupByName("busy").XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE)
    hostdev = ("<hostdev mode='subsystem' type='pci' managed='yes'><source><address domain='0x0000' bus='0x41' "
               "slot='0x00' function='0x0'/></source></hostdev>")
    conn.defineXML(stored.replace("</devices>", hostdev + "</devices>"))
    busy = backend.inventory().find_vm("busy")
    assert busy.assigned == (A("41:00.0"),) and busy.settings["held_stored_only"] == ["0000:41:00.0"]
    note, = busy.unfinished
    assert note.startswith("holds 0000:41:00.0 in its stored definition but not while it runs") and \
        "`gpupass release HOST busy 0000:41:00.0 --live` finishes the release" in note
    plan = plan_for(backend, ReleaseRequest("busy", (A("41:00.0"),), ReleaseOptions(live=True)), registry)
    assert not plan.blocked and [s.action for s in plan.steps if s.writes] == ["kvm.define-domain"]
    execute(backend, plan)
    again = backend.inventory().find_vm("busy")
    assert again.assigned == () and again.unfinished == ()


def test_a_change_made_by_someone_else_after_planning_is_not_overwritten(lab, registry, domain_xml):
    plan = plan_for(lab, AssignmentRequest("ml-train", (H100,)), registry)
    theirs = domain_xml(lab, "ml-train").replace("<vcpu placement='static'>8</vcpu>",
                                                 "<vcpu placement='static'>16</vcpu>")
    assert "16</vcpu>" in theirs
    lab._connection()._wrapped.defineXML(theirs)
    with pytest.raises(OperationFailed) as caught:
        execute(lab, plan)
    assert "changed by someone else" in caught.value.__cause__.message
    assert domain_xml(lab, "ml-train") == theirs
    # Planning again from the new definition works and keeps their change.
    execute(lab, plan_for(lab, AssignmentRequest("ml-train", (H100,)), registry))
    assert "16</vcpu>" in domain_xml(lab, "ml-train")


# -- hostile VM names in the test driver --------------------------------------------------------------

HOSTILE = ["it's \"quoted\"", "<name>&amp;<x y='1'>", "end]]>x", "ünïcødé—名前", "n" * 1200 + "<&>"]


def test_hostile_vm_names_round_trip_through_libvirt(tmp_path, open_backend, registry, domain_xml):
    uri = testhost.write_host(tmp_path / "hostile.xml", [testhost.gpu("0000:42:00.0", 0x2331, "GH100", 21)],
                              [testhost.domain(name) for name in HOSTILE])
    backend = open_backend(uri)
    assert sorted(vm.name for vm in backend.inventory().vms) == sorted(HOSTILE)
    for name in HOSTILE:
        before = domain_xml(backend, name)
        plan = plan_for(backend, AssignmentRequest(name, (H100,)), registry)
        assert plan.vm == name and not plan.blocked
        execute(backend, plan)
        facts = backend.inventory()
        assert facts.find_vm(name).assigned == (H100,)
        assert [vm.name for vm in facts.vms if vm.assigned] == [name]
        execute(backend, plan_for(backend, ReleaseRequest(name), registry))
        assert domain_xml(backend, name) == before


# -- round trips ---------------------------------------------------------------------------------------

def test_round_trips_are_counted_and_deterministic(lab_file, open_backend):
    first, second = open_backend(lab_file), open_backend(lab_file)
    first.inventory()
    second.inventory()
    # open + list devices + 14 device XMLs (the SR-IOV PF and its 4 VFs among them) + domain stats + 5 domain XMLs
    # + the live XML of the one that runs + list mediated devices + their 3 XMLs + list the stopped ones (refused by
    # the test driver, VIR_ERR_INVALID_ARG: asked once per connection, KvmBackend._inactive_mdevs)
    assert first.round_trips == second.round_trips == 1 + 1 + 14 + 1 + 5 + 1 + 1 + 3 + 1
    first.inventory()
    assert first.round_trips == 28 + 26  # the connection is reused, and the refused listing is not asked again


# -- typed steps: the payload's type picks the handler, the action label is only a label -------------

def test_a_step_is_carried_out_by_its_payload_type_whatever_its_label(lab, registry, domain_xml):
    from gpupass.backends.kvm.steps import DefineDomain

    plan = plan_for(lab, AssignmentRequest("ml-train", (H100,)), registry)
    define = plan.steps[0]
    assert isinstance(define.payload, DefineDomain) and define.payload.vm == "ml-train"
    relabelled = dataclasses.replace(plan, steps=(dataclasses.replace(define, action="anything"),))
    execute(lab, relabelled)
    assert H100 in lab.inventory().find_vm("ml-train").assigned
    # undo goes by the type too: it defines the old XML again
    lab.undo(dataclasses.replace(define, action="kvm.hotplug"), define.payload.old_xml)
    assert H100 not in lab.inventory().find_vm("ml-train").assigned


def test_a_payload_the_backend_does_not_know_is_refused_and_changes_nothing(lab, registry, domain_xml):
    before = domain_xml(lab, "ml-train")
    plan = plan_for(lab, AssignmentRequest("ml-train", (H100,)), registry)
    unknown = dataclasses.replace(plan.steps[0], payload={"vm": "ml-train", "new_xml": "<domain/>"})
    with pytest.raises(OperationFailed) as caught:
        execute(lab, dataclasses.replace(plan, steps=(unknown,)))
    assert "cannot carry out a step of type dict" in caught.value.message
    assert domain_xml(lab, "ml-train") == before


def test_every_kvm_payload_type_survives_a_snapshot_round_trip(lab, tmp_path):
    from tests.support.snapshots import payload_types, payloads_survive_a_snapshot

    from gpupass.backends.kvm import domxml

    # render01 holds a share whose mediated device gpupass created: its release undefines the device (RemoveMdev)
    created = domxml.add_mdev(lab._current_xml("render01"), "6f1d2c8e-5a1b-4e0c-8d1f-7a2b3c4d5e02", created=True)
    lab._define(created.xml, "test: a share gpupass created")
    p40 = A("81:00.0")
    requests = [AssignmentRequest("ml-train", (H100,)), AssignmentRequest("web01", (A100,), AssignOptions(live=True)),
                ReleaseRequest("cad-ws"), ReleaseRequest("cad-ws", options=ReleaseOptions(live=True)),
                # a type with no free device: CreateMdev + DefineShare (planned although preflight blocks it)
                AssignmentRequest("ml-train", (p40,), AssignOptions(share="P40-4C")),
                ReleaseRequest("render01")]
    seen = payloads_survive_a_snapshot(lab, requests, tmp_path)
    # an NVIDIA vGPU on a VF: SetVfVgpuType (on a host whose per-VF vGPU files are read from a folder)
    from gpupass.core.target import Target
    from tests.integration.kvm.test_kvm_vf_vgpu import A10, a10_host

    uri, options = a10_host(tmp_path)
    vgpu_host = type(lab)(Target(uri=uri, name="a10", options=options))
    try:
        seen |= payloads_survive_a_snapshot(
            vgpu_host, [AssignmentRequest("vm1", (A10,), AssignOptions(share="A10-2Q"))], tmp_path)
    finally:
        vgpu_host.close()
    # DropClaim removes a libvirt secret, which the test driver has none of: its round trip is checked on a real
    # libvirtd (test_kvm_fault_matrix_libvirtd.py, the release that finishes a killed one).
    from gpupass.backends.kvm.steps import DropClaim

    assert seen == payload_types("kvm") - {DropClaim}
