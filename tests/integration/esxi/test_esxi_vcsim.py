"""The vSphere simulator behaves like ESXi/vCenter for GPU passthrough (real pyvmomi, verified TLS)."""

from __future__ import annotations

import ssl
import time

import pytest

from gpupass.backends.esxi.lab.simulator import make_tls_material

pytest.importorskip("pyVmomi")
from pyVim.connect import SmartConnect  # noqa: E402
from pyVim.task import WaitForTask  # noqa: E402
from pyVmomi import vim, vmodl  # noqa: E402

PT = vim.vm.device.VirtualPCIPassthrough


def find(si, kind, name):
    view = si.content.viewManager.CreateContainerView(si.content.rootFolder, [kind], True)
    try:
        for obj in view.view:
            if obj.name == name:
                return obj
    finally:
        view.Destroy()
    raise LookupError(name)


def count(si, kind):
    view = si.content.viewManager.CreateContainerView(si.content.rootFolder, [kind], True)
    try:
        return len(view.view)
    finally:
        view.Destroy()


def gpus(host):
    return {d.id: d for d in host.hardware.pciDevice if (d.vendorId & 0xFFFF) == 0x10DE}


def passthru(host):
    return {p.id: p for p in host.config.pciPassthruInfo}


def config_target(host):
    return host.parent.environmentBrowser.QueryConfigTarget(host=host)


def backing_for(host, pci_id):
    (info,) = [p for p in config_target(host).pciPassthrough if p.pciDevice.id == pci_id]
    dev = info.pciDevice
    return PT.DeviceBackingInfo(id=dev.id, deviceId=format(dev.deviceId & 0xFFFF, "x"), systemId=info.systemId,
                                vendorId=dev.vendorId, deviceName=dev.deviceName)


def add_device_spec(backing, **extra):
    change = vim.vm.device.VirtualDeviceSpec(operation=vim.vm.device.VirtualDeviceSpec.Operation.add,
                                             device=PT(key=-1, backing=backing))
    return vim.vm.ConfigSpec(deviceChange=[change], **extra)


def mmio(size_gb):
    return [vim.option.OptionValue(key="pciPassthru.use64bitMMIO", value="TRUE"),
            vim.option.OptionValue(key="pciPassthru.64bitMMIOSizeGB", value=str(size_gb))]


def extra(vm):
    return {o.key: o.value for o in vm.config.extraConfig if o.key != "govcsim"}  # the simulator's marker


def passthrough_devices(vm):
    return [d for d in vm.config.hardware.device if isinstance(d, PT)]


# -- connection, TLS, login ------------------------------------------------------------------


def test_api_version_is_negotiated_as_7_0_3(vcsim, connect):
    si = connect(vcsim)
    assert si.content.about.apiVersion == "7.0.3.0"
    assert si._stub.version == "vim.version.v7_0_3_0"
    assert si.content.about.apiType == "VirtualCenter"
    assert vcsim.url == f"https://127.0.0.1:{vcsim.port}/sdk"


def test_wrong_password_is_refused(vcsim):
    with pytest.raises(vim.fault.InvalidLogin):
        SmartConnect(host=vcsim.host, port=vcsim.port, user=vcsim.username, pwd=vcsim.password + "x",
                     sslContext=vcsim.ssl_context())


def test_untrusted_certificate_fails_verification(vcsim, tmp_path):
    other_ca = make_tls_material(tmp_path)["ca"]  # a different CA than the one that signed the server
    ctx = ssl.create_default_context(cafile=str(other_ca))
    with pytest.raises(ssl.SSLCertVerificationError):
        SmartConnect(host=vcsim.host, port=vcsim.port, user=vcsim.username, pwd=vcsim.password, sslContext=ctx)


def test_control_endpoint_needs_credentials(vcsim):
    import urllib.error
    import urllib.request

    with pytest.raises(urllib.error.HTTPError) as err:
        urllib.request.urlopen(f"https://127.0.0.1:{vcsim.port}/gpupass/state", context=vcsim.ssl_context())
    assert err.value.code == 401


# -- inventory -------------------------------------------------------------------------------


def test_gpus_listed_with_esxi_ids(vcsim, connect):
    si = connect(vcsim)
    esx01, esx02 = find(si, vim.HostSystem, "esx01.lab.local"), find(si, vim.HostSystem, "esx02.lab.local")
    g1, g2 = gpus(esx01), gpus(esx02)
    assert sorted(g1) == ["0000:3b:00.0", "0000:d8:00.0"]
    assert sorted(g2) == ["0000:3b:00.0", "0000:af:00.0"]
    h100 = g1["0000:3b:00.0"]
    # signed 16-bit in the API, exactly as ESXi sends them
    assert (h100.vendorId, h100.deviceId, h100.classId) == (0x10DE, 0x2330, 0x0302)
    assert (h100.bus, h100.slot, h100.function) == (0x3B, 0, 0)
    assert h100.deviceName == "GH100 [H100 SXM5 80GB]" and h100.vendorName == "NVIDIA Corporation"
    assert g1["0000:d8:00.0"].deviceId & 0xFFFF == 0x1EB8
    assert {d.deviceId & 0xFFFF for d in g2.values()} == {0x20B5}
    # an Intel chipset device from the template reads negative, like on ESXi
    assert any(d.vendorId == -32634 for d in esx01.hardware.pciDevice)

    p1, p2 = passthru(esx01), passthru(esx02)
    assert (p1["0000:3b:00.0"].passthruCapable, p1["0000:3b:00.0"].passthruEnabled,
            p1["0000:3b:00.0"].passthruActive) == (True, True, True)
    assert (p1["0000:d8:00.0"].passthruEnabled, p1["0000:d8:00.0"].passthruActive) == (False, False)
    assert (p2["0000:af:00.0"].passthruEnabled, p2["0000:af:00.0"].passthruActive) == (False, False)
    assert p1["0000:3b:00.0"].dependentDevice == "0000:3b:00.0"
    assert not p1["0000:00:00.0"].passthruCapable
    assert esx01.configManager.pciPassthruSystem is not None


def test_vms_match_the_lab(vcsim, connect):
    si = connect(vcsim)
    ml, render, web = (find(si, vim.VirtualMachine, n) for n in ("ml-train", "render01", "web01"))
    cad, snap = find(si, vim.VirtualMachine, "cad-ws"), find(si, vim.VirtualMachine, "snap01")
    assert (ml.runtime.powerState, ml.config.firmware, ml.config.hardware.memoryMB) == ("poweredOff", "efi", 65536)
    assert (render.config.firmware, render.config.hardware.memoryMB) == ("bios", 16384)
    assert web.runtime.powerState == "poweredOn"
    assert snap.snapshot is not None and snap.snapshot.rootSnapshotList[0].name == "before-upgrade"
    assert ml.snapshot is None
    (dev,) = passthrough_devices(cad)
    assert isinstance(dev.backing, PT.DeviceBackingInfo)
    assert (dev.backing.id, dev.backing.deviceId, dev.backing.vendorId) == ("0000:3b:00.0", "2330", 0x10DE)
    assert dev.backing.systemId == vcsim.state()["hosts"][0]["system_id"]
    assert (dev.key, dev.deviceInfo.label, dev.controllerKey) == (13000, "PCI device 0", 100)
    assert cad.runtime.host.name == "esx01.lab.local"


def test_query_config_target_lists_only_active_devices(vcsim, connect):
    si = connect(vcsim)
    esx02 = find(si, vim.HostSystem, "esx02.lab.local")
    target = config_target(esx02)
    assert [p.pciDevice.id for p in target.pciPassthrough] == ["0000:3b:00.0"]
    info = target.pciPassthrough[0]
    assert isinstance(info, vim.vm.PciPassthroughInfo)
    assert info.pciDevice.deviceId == 0x20B5 and info.systemId
    assert [(d.vendorId & 0xFFFF, d.deviceId & 0xFFFF) for d in target.dynamicPassthrough] == [(0x10DE, 0x20B5)]
    # without a host: every host of the cluster
    both = esx02.parent.environmentBrowser.QueryConfigTarget()
    assert sorted(p.pciDevice.deviceId & 0xFFFF for p in both.pciPassthrough) == [0x20B5, 0x2330]


# -- passthrough workflow --------------------------------------------------------------------


def test_enable_passthrough_is_active_only_after_reboot(fresh_vcsim, connect):
    si = connect(fresh_vcsim())
    host = find(si, vim.HostSystem, "esx01.lab.local")
    # applyNow=False: "not without rebooting", even on a host that could rebind at once
    host.configManager.pciPassthruSystem.UpdatePassthruConfig(
        config=[vim.host.PciPassthruConfig(id="0000:d8:00.0", passthruEnabled=True, applyNow=False)])
    t4 = passthru(host)["0000:d8:00.0"]
    assert (t4.passthruEnabled, t4.passthruActive) == (True, False)
    assert "0000:d8:00.0" not in [p.pciDevice.id for p in config_target(host).pciPassthrough]

    with pytest.raises(vim.fault.InvalidState):  # ESXi: maintenance mode first (unless force)
        WaitForTask(host.RebootHost_Task(force=False))
    web01 = find(si, vim.VirtualMachine, "web01")
    with pytest.raises(vim.fault.Timedout) as err:  # a running VM keeps the host out of maintenance mode
        WaitForTask(host.EnterMaintenanceMode_Task(timeout=0))
    assert "web01" in err.value.msg
    WaitForTask(web01.PowerOffVM_Task())
    WaitForTask(host.EnterMaintenanceMode_Task(timeout=0))
    assert host.runtime.inMaintenanceMode
    with pytest.raises(vim.fault.InvalidHostState):  # nothing starts on a host in maintenance mode
        WaitForTask(web01.PowerOnVM_Task())
    WaitForTask(host.RebootHost_Task(force=False))
    t4 = passthru(host)["0000:d8:00.0"]
    assert (t4.passthruEnabled, t4.passthruActive) == (True, True)
    assert "0000:d8:00.0" in [p.pciDevice.id for p in config_target(host).pciPassthrough]
    WaitForTask(host.ExitMaintenanceMode_Task(timeout=0))
    WaitForTask(web01.PowerOnVM_Task())

    # disabling: still active until the next reboot
    host.configManager.pciPassthruSystem.UpdatePassthruConfig(
        config=[vim.host.PciPassthruConfig(id="0000:d8:00.0", passthruEnabled=False, applyNow=False)])
    assert passthru(host)["0000:d8:00.0"].passthruActive
    WaitForTask(host.RebootHost_Task(force=True))
    assert not passthru(host)["0000:d8:00.0"].passthruActive
    assert web01.runtime.powerState == "poweredOff"  # a forced reboot kills the running VMs


def test_unknown_or_incapable_device_is_rejected(vcsim, connect):
    si = connect(vcsim)
    host = find(si, vim.HostSystem, "esx01.lab.local")
    with pytest.raises(vim.fault.HostConfigFault):
        host.configManager.pciPassthruSystem.UpdatePassthruConfig(
            config=[vim.host.PciPassthruConfig(id="0000:99:00.0", passthruEnabled=True)])
    with pytest.raises(vim.fault.HostConfigFault):
        host.configManager.pciPassthruSystem.UpdatePassthruConfig(
            config=[vim.host.PciPassthruConfig(id="0000:00:00.0", passthruEnabled=True)])


def test_add_device_to_powered_off_vm_shows_backing(fresh_vcsim, connect):
    sim = fresh_vcsim()
    si = connect(sim)
    vm, host = find(si, vim.VirtualMachine, "ml-train"), find(si, vim.HostSystem, "esx02.lab.local")
    backing = backing_for(host, "0000:3b:00.0")
    WaitForTask(vm.ReconfigVM_Task(spec=add_device_spec(backing)))
    (dev,) = passthrough_devices(vm)
    b = dev.backing
    assert isinstance(b, PT.DeviceBackingInfo)
    assert (b.id, b.deviceId, b.vendorId, b.deviceName) == ("0000:3b:00.0", "20b5", 0x10DE, "GA100 [A100 PCIe 80GB]")
    assert b.systemId == backing.systemId
    assert dev.deviceInfo.label == "PCI device 0" and dev.key >= 13000

    # and it comes off again (powered off)
    remove = vim.vm.device.VirtualDeviceSpec(operation=vim.vm.device.VirtualDeviceSpec.Operation.remove, device=dev)
    WaitForTask(vm.ReconfigVM_Task(spec=vim.vm.ConfigSpec(deviceChange=[remove])))
    assert passthrough_devices(vm) == []


def test_add_device_to_powered_on_vm_fails(vcsim, connect):
    si = connect(vcsim)
    vm, host = find(si, vim.VirtualMachine, "web01"), find(si, vim.HostSystem, "esx01.lab.local")
    with pytest.raises(vim.fault.InvalidPowerState) as err:
        WaitForTask(vm.ReconfigVM_Task(spec=add_device_spec(backing_for(host, "0000:3b:00.0"))))
    assert err.value.existingState == "poweredOn"
    assert "current state" in err.value.msg
    assert passthrough_devices(vm) == []


def test_add_inactive_or_foreign_device_fails(vcsim, connect):
    si = connect(vcsim)
    vm, host = find(si, vim.VirtualMachine, "render01"), find(si, vim.HostSystem, "esx02.lab.local")
    good = backing_for(host, "0000:3b:00.0")
    inactive = PT.DeviceBackingInfo(id="0000:af:00.0", deviceId="20b5", systemId=good.systemId, vendorId=0x10DE,
                                    deviceName="GA100 [A100 PCIe 80GB]")
    with pytest.raises(vim.fault.InvalidDeviceBacking) as err:
        WaitForTask(vm.ReconfigVM_Task(spec=add_device_spec(inactive)))
    assert "not an active passthrough device" in err.value.msg
    # the H100 exists and is active, but on the other host (systemId of esx01)
    foreign = backing_for(find(si, vim.HostSystem, "esx01.lab.local"), "0000:3b:00.0")
    with pytest.raises(vim.fault.InvalidDeviceBacking):
        WaitForTask(vm.ReconfigVM_Task(spec=add_device_spec(foreign)))
    assert passthrough_devices(vm) == []


def test_power_on_needs_full_memory_reservation_mmio_and_a_free_device(fresh_vcsim, connect):
    si = connect(fresh_vcsim())
    host = find(si, vim.HostSystem, "esx02.lab.local")
    ml, render = find(si, vim.VirtualMachine, "ml-train"), find(si, vim.VirtualMachine, "render01")
    for vm in (ml, render):
        WaitForTask(vm.ReconfigVM_Task(spec=add_device_spec(backing_for(host, "0000:3b:00.0"))))

    with pytest.raises(vim.fault.GenericVmConfigFault) as err:
        WaitForTask(ml.PowerOnVM_Task())
    assert "memory reservation (sched.mem.min) should be equal to memsize(65536)" in err.value.msg
    assert ml.runtime.powerState == "poweredOff"
    WaitForTask(ml.ReconfigVM_Task(spec=vim.vm.ConfigSpec(memoryReservationLockedToMax=True)))

    # A100 80GB: 128 GiB BAR (+ 32 MiB + 16 MiB) -> far beyond the 917504 pages without 64-bit MMIO,
    # and 128 GB of 64-bit window is not enough either
    with pytest.raises(vim.fault.GenericVmConfigFault) as err:
        WaitForTask(ml.PowerOnVM_Task())
    assert ("PCIPassthru: total number of pages needed (33566720) exceeds limit (917504), failing."
            " Module 'DevicePowerOn' power on failed.") == err.value.msg
    WaitForTask(ml.ReconfigVM_Task(spec=vim.vm.ConfigSpec(extraConfig=mmio(128))))
    with pytest.raises(vim.fault.GenericVmConfigFault) as err:
        WaitForTask(ml.PowerOnVM_Task())
    assert ("Error message from esx02.lab.local: The firmware could not allocate 134250496 KB of PCI MMIO."
            " Increase the size of PCI MMIO and try again.") == err.value.msg  # 128 GiB + 32 MiB: the 64-bit BARs
    WaitForTask(ml.ReconfigVM_Task(spec=vim.vm.ConfigSpec(extraConfig=mmio(256))))
    assert extra(ml) == {"pciPassthru.use64bitMMIO": "TRUE", "pciPassthru.64bitMMIOSizeGB": "256"}
    WaitForTask(ml.PowerOnVM_Task())
    assert ml.runtime.powerState == "poweredOn"

    # the same GPU configured on a second VM: that VM cannot start while the first runs
    WaitForTask(render.ReconfigVM_Task(spec=vim.vm.ConfigSpec(
        memoryAllocation=vim.ResourceAllocationInfo(reservation=16384))))
    with pytest.raises(vim.fault.GenericVmConfigFault) as err:
        WaitForTask(render.PowerOnVM_Task())
    assert "already in use by virtual machine ml-train" in err.value.msg
    WaitForTask(ml.PowerOffVM_Task())
    WaitForTask(render.ReconfigVM_Task(spec=vim.vm.ConfigSpec(extraConfig=mmio(256))))
    with pytest.raises(vim.fault.GenericVmConfigFault) as err:  # render01 is BIOS
        WaitForTask(render.PowerOnVM_Task())
    assert "use EFI firmware" in err.value.msg
    WaitForTask(render.ReconfigVM_Task(spec=vim.vm.ConfigSpec(firmware="efi", extraConfig=mmio(256))))
    WaitForTask(render.PowerOnVM_Task())


def test_running_vm_rules(fresh_vcsim, connect):
    si = connect(fresh_vcsim())
    cad, web = find(si, vim.VirtualMachine, "cad-ws"), find(si, vim.VirtualMachine, "web01")
    esx02 = find(si, vim.HostSystem, "esx02.lab.local")
    with pytest.raises(vim.fault.DisallowedMigrationDeviceAttached):  # DirectPath I/O pins the VM
        WaitForTask(cad.RelocateVM_Task(spec=vim.vm.RelocateSpec(host=esx02)))
    assert cad.runtime.host.name == "esx01.lab.local"
    WaitForTask(cad.PowerOnVM_Task())
    with pytest.raises(vim.fault.SnapshotIncompatibleDeviceInVm):
        WaitForTask(cad.CreateSnapshot_Task(name="s", memory=True, quiesce=False))
    with pytest.raises(vim.fault.InvalidPowerState):
        WaitForTask(web.ReconfigVM_Task(spec=vim.vm.ConfigSpec(firmware="efi")))
    assert web.config.firmware == "bios"


def test_extra_config_keys_are_replaced_and_removed(fresh_vcsim, connect):
    si = connect(fresh_vcsim())
    cad = find(si, vim.VirtualMachine, "cad-ws")
    WaitForTask(cad.ReconfigVM_Task(spec=vim.vm.ConfigSpec(extraConfig=[
        vim.option.OptionValue(key="pciPassthru.64bitMMIOSizeGB", value="512"),
        vim.option.OptionValue(key="hypervisor.cpuid.v0", value="FALSE")])))
    assert extra(cad) == {"pciPassthru.use64bitMMIO": "TRUE", "pciPassthru.64bitMMIOSizeGB": "512",
                          "hypervisor.cpuid.v0": "FALSE"}
    WaitForTask(cad.ReconfigVM_Task(spec=vim.vm.ConfigSpec(extraConfig=[
        vim.option.OptionValue(key="hypervisor.cpuid.v0", value="")])))
    assert "hypervisor.cpuid.v0" not in extra(cad)


def test_vm_holding_a_device_powers_on(fresh_vcsim, connect):
    sim = fresh_vcsim()
    si = connect(sim)
    WaitForTask(find(si, vim.VirtualMachine, "cad-ws").PowerOnVM_Task())
    owners = {d["id"]: d.get("owner") for d in sim.state()["hosts"][0]["devices"]}
    assert owners["0000:3b:00.0"] == "cad-ws"


def test_dynamic_directpath_backing_round_trips(fresh_vcsim, connect):
    si = connect(fresh_vcsim())
    vm = find(si, vim.VirtualMachine, "ml-train")
    backing = PT.DynamicBackingInfo(allowedDevice=[PT.AllowedDevice(vendorId=0x10DE, deviceId=0x20B5)])
    WaitForTask(vm.ReconfigVM_Task(spec=add_device_spec(backing, memoryReservationLockedToMax=True,
                                                        extraConfig=mmio(256))))
    (dev,) = passthrough_devices(vm)
    assert isinstance(dev.backing, PT.DynamicBackingInfo)
    assert not dev.backing.customLabel
    assert [(a.vendorId, a.deviceId) for a in dev.backing.allowedDevice] == [(0x10DE, 0x20B5)]
    WaitForTask(vm.PowerOnVM_Task())
    (dev,) = passthrough_devices(vm)
    assert dev.backing.assignedId == "0000:3b:00.0"  # the only active A100 on esx02


def test_dynamic_custom_label_must_equal_the_devices_label(fresh_vcsim, connect):
    """API reference, VirtualPCIPassthroughDynamicBackingInfo.customLabel: "If set, the device must also
    have the same customLabel attribute set" -- a label no host device carries finds no device."""
    from gpupass.backends.esxi.lab.simulator import lab_config

    cfg = lab_config()
    cfg["hosts"][1]["gpus"][0]["hardware_label"] = "training"
    si = connect(fresh_vcsim(cfg))
    host, vm = find(si, vim.HostSystem, "esx02.lab.local"), find(si, vim.VirtualMachine, "ml-train")
    dynamic = config_target(host).dynamicPassthrough
    assert [(d.deviceId & 0xFFFF, d.customLabel) for d in dynamic] == [(0x20B5, "training")]
    backing = PT.DynamicBackingInfo(allowedDevice=[PT.AllowedDevice(vendorId=0x10DE, deviceId=0x20B5)],
                                    customLabel="gpupass-0000:3b:00.0")
    WaitForTask(vm.ReconfigVM_Task(spec=add_device_spec(backing, memoryReservationLockedToMax=True,
                                                        extraConfig=mmio(256))))
    with pytest.raises(vim.fault.GenericVmConfigFault) as err:
        WaitForTask(vm.PowerOnVM_Task())
    assert 'with the label "gpupass-0000:3b:00.0"' in err.value.msg
    (dev,) = passthrough_devices(vm)
    dev.backing.customLabel = "training"
    change = vim.vm.device.VirtualDeviceSpec(operation=vim.vm.device.VirtualDeviceSpec.Operation.edit, device=dev)
    WaitForTask(vm.ReconfigVM_Task(spec=vim.vm.ConfigSpec(deviceChange=[change])))
    WaitForTask(vm.PowerOnVM_Task())
    assert passthrough_devices(vm)[0].backing.assignedId == "0000:3b:00.0"


def test_rebind_host_applies_passthrough_at_once(fresh_vcsim, connect):
    """HostPciPassthruConfig.applyNow (API 7.0): unset -> decided by deviceRebindWithoutRebootSupported;
    applied at once where the host can, otherwise at the next reboot."""
    si = connect(fresh_vcsim())
    esx01, esx02 = find(si, vim.HostSystem, "esx01.lab.local"), find(si, vim.HostSystem, "esx02.lab.local")
    assert esx01.capability.deviceRebindWithoutRebootSupported is True
    assert esx02.capability.deviceRebindWithoutRebootSupported is False

    esx01.configManager.pciPassthruSystem.UpdatePassthruConfig(
        config=[vim.host.PciPassthruConfig(id="0000:d8:00.0", passthruEnabled=True)])  # applyNow unset
    t4 = passthru(esx01)["0000:d8:00.0"]
    assert (t4.passthruEnabled, t4.passthruActive) == (True, True)
    assert "0000:d8:00.0" in [p.pciDevice.id for p in config_target(esx01).pciPassthrough]

    # the same call with applyNow=True on the host that cannot rebind: pending until its reboot
    esx02.configManager.pciPassthruSystem.UpdatePassthruConfig(
        config=[vim.host.PciPassthruConfig(id="0000:af:00.0", passthruEnabled=True, applyNow=True)])
    a100 = passthru(esx02)["0000:af:00.0"]
    assert (a100.passthruEnabled, a100.passthruActive) == (True, False)

    # a device a running VM holds is not switched off under it: only at the next reboot
    cad = find(si, vim.VirtualMachine, "cad-ws")
    WaitForTask(cad.PowerOnVM_Task())
    esx01.configManager.pciPassthruSystem.UpdatePassthruConfig(
        config=[vim.host.PciPassthruConfig(id="0000:3b:00.0", passthruEnabled=False, applyNow=True)])
    h100 = passthru(esx01)["0000:3b:00.0"]
    assert (h100.passthruEnabled, h100.passthruActive) == (False, True)
    WaitForTask(cad.PowerOffVM_Task())
    esx01.configManager.pciPassthruSystem.UpdatePassthruConfig(
        config=[vim.host.PciPassthruConfig(id="0000:3b:00.0", passthruEnabled=False, applyNow=True)])
    assert passthru(esx01)["0000:3b:00.0"].passthruActive is False


def test_mmio_without_use64bit_is_limited_to_917504_pages(fresh_vcsim, connect):
    """Dell KB 000199172's real vmware.log: without pciPassthru.use64bitMMIO the pages of all passthrough
    BARs are limited to 917504 (3.5 GiB); a 4 GiB-BAR card already fails, a 256 MiB one (T4) does not."""
    from gpupass.backends.esxi.lab.simulator import GIB, MIB, lab_config

    cfg = lab_config()
    gpus = cfg["hosts"][1]["gpus"]
    gpus[0]["bars"] = [16 * MIB, 4 * GIB, 32 * MIB]      # 4 GiB + 48 MiB: 1060864 pages
    gpus[1].update(passthru_enabled=True, passthru_active=True, bars=[16 * MIB, 256 * MIB, 32 * MIB])
    si = connect(fresh_vcsim(cfg))
    host, vm = find(si, vim.HostSystem, "esx02.lab.local"), find(si, vim.VirtualMachine, "ml-train")
    WaitForTask(vm.ReconfigVM_Task(spec=add_device_spec(backing_for(host, "0000:3b:00.0"),
                                                        memoryReservationLockedToMax=True)))
    with pytest.raises(vim.fault.GenericVmConfigFault) as err:
        WaitForTask(vm.PowerOnVM_Task())
    assert "total number of pages needed (1060864) exceeds limit (917504)" in err.value.msg
    WaitForTask(vm.ReconfigVM_Task(spec=vim.vm.ConfigSpec(extraConfig=mmio(8))))
    WaitForTask(vm.PowerOnVM_Task())
    WaitForTask(vm.PowerOffVM_Task())

    small = find(si, vim.VirtualMachine, "snap01")  # no use64bitMMIO: 304 MiB of BARs fit
    WaitForTask(small.ReconfigVM_Task(spec=add_device_spec(backing_for(host, "0000:af:00.0"),
                                                           memoryReservationLockedToMax=True)))
    WaitForTask(small.PowerOnVM_Task())
    assert small.runtime.powerState == "poweredOn"


# -- failure injection and scale --------------------------------------------------------------


def test_host_vanishes_mid_operation(fresh_vcsim, connect):
    sim = fresh_vcsim()
    si = connect(sim)
    vm, host = find(si, vim.VirtualMachine, "ml-train"), find(si, vim.HostSystem, "esx02.lab.local")
    backing = backing_for(host, "0000:3b:00.0")  # step 1 works
    sim.disconnect_host("esx02.lab.local", after="ReconfigVM_Task")
    assert host.runtime.connectionState == "connected"
    with pytest.raises(vmodl.fault.HostNotConnected):  # step 2: the host is gone
        WaitForTask(vm.ReconfigVM_Task(spec=add_device_spec(backing)))
    assert host.runtime.connectionState == "disconnected"
    assert vm.runtime.connectionState == "disconnected"
    with pytest.raises(vmodl.fault.HostNotConnected):
        host.configManager.pciPassthruSystem.UpdatePassthruConfig(
            config=[vim.host.PciPassthruConfig(id="0000:af:00.0", passthruEnabled=True)])
    with pytest.raises(vmodl.fault.HostNotConnected):
        config_target(host)
    sim.reconnect_host("esx02.lab.local")
    WaitForTask(vm.ReconfigVM_Task(spec=add_device_spec(backing)))
    assert len(passthrough_devices(vm)) == 1


def test_standalone_esx_mode(fresh_vcsim, connect):
    cfg = {"mode": "esx", "hosts": [{"name": "esx-solo.lab.local", "gpus": [
        {"address": "0000:65:00.0", "vendor_id": "0x10de", "device_id": "0x2684", "class_id": "0x0300",
         "device_name": "AD102 [GeForce RTX 4090]", "vendor_name": "NVIDIA Corporation",
         "passthru_enabled": True, "passthru_active": True,
         "functions": [{"address": "0000:65:00.1", "vendor_id": "0x10de", "device_id": "0x22ba",
                        "class_id": "0x0403", "device_name": "AD102 High Definition Audio Controller",
                        "passthru_enabled": True, "passthru_active": True}]}]}],
        "vms": [{"name": "gamer", "host": "esx-solo.lab.local", "firmware": "efi", "memory_mb": 16384}]}
    si = connect(fresh_vcsim(cfg))
    assert si.content.about.apiType == "HostAgent"
    host = find(si, vim.HostSystem, "esx-solo.lab.local")
    assert host.configManager.pciPassthruSystem._moId == "ha-pcipassthrusystem"
    p = passthru(host)
    assert p["0000:65:00.1"].dependentDevice == "0000:65:00.1"
    # companion functions are toggled one by one, not with the GPU
    host.configManager.pciPassthruSystem.UpdatePassthruConfig(
        config=[vim.host.PciPassthruConfig(id="0000:65:00.0", passthruEnabled=False)])
    p = passthru(host)
    assert (p["0000:65:00.0"].passthruEnabled, p["0000:65:00.1"].passthruEnabled) == (False, True)
    assert sorted(i.pciDevice.id for i in config_target(host).pciPassthrough) == ["0000:65:00.0", "0000:65:00.1"]


def test_scale_vcenter_with_50_hosts_and_500_vms(fresh_vcsim, connect):
    t0 = time.monotonic()
    sim = fresh_vcsim({"mode": "vcenter", "hosts": []}, scale_hosts=50, scale_vms=500)
    started = time.monotonic() - t0
    si = connect(sim)
    assert count(si, vim.HostSystem) == 50
    assert count(si, vim.VirtualMachine) == 500
    assert started < 30, started


def test_bad_inventory_is_reported_with_the_simulator_log(vcsim_binary):
    from gpupass.backends.esxi.lab.simulator import SimulatorError, VCSim

    cfg = {"mode": "vcenter", "hosts": [{"name": "esx01"}], "vms": [{"name": "x", "host": "nope"}]}
    with pytest.raises(SimulatorError, match='unknown host "nope"'):
        VCSim(cfg, binary=vcsim_binary).start()


def test_stop_ends_the_process(vcsim_binary):
    import os

    from gpupass.backends.esxi.lab.simulator import VCSim

    with VCSim(binary=vcsim_binary) as sim:
        pid = sim.pid
        os.kill(pid, 0)
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)


def test_host_disconnected_now_and_from_the_config(fresh_vcsim, connect):
    cfg = __import__("gpupass.backends.esxi.lab.simulator", fromlist=["lab_config"]).lab_config()
    cfg["hosts"][1]["connected"] = False
    sim = fresh_vcsim(cfg)
    si = connect(sim)
    assert find(si, vim.HostSystem, "esx02.lab.local").runtime.connectionState == "disconnected"
    assert find(si, vim.VirtualMachine, "ml-train").runtime.connectionState == "disconnected"
    sim.disconnect_host("esx01.lab.local")
    with pytest.raises(vmodl.fault.HostNotConnected) as err:
        WaitForTask(find(si, vim.VirtualMachine, "cad-ws").PowerOnVM_Task())
    assert "esx01.lab.local" in err.value.msg
    connected = {h["name"]: h["connected"] for h in sim.state()["hosts"]}
    assert connected == {"esx01.lab.local": False, "esx02.lab.local": False, "esx03.lab.local": True}


def test_passthru_system_properties(vcsim, connect):
    si = connect(vcsim)
    pts = find(si, vim.HostSystem, "esx02.lab.local").configManager.pciPassthruSystem
    info = {p.id: p for p in pts.pciPassthruInfo}
    assert info["0000:3b:00.0"].passthruActive and not info["0000:af:00.0"].passthruEnabled
    pts.Refresh()


def test_reboot_takes_time_when_configured(fresh_vcsim, connect):
    from gpupass.backends.esxi.lab.simulator import lab_config

    cfg = lab_config()
    cfg["hosts"][1]["reboot_seconds"] = 0.5
    si = connect(fresh_vcsim(cfg))
    host = find(si, vim.HostSystem, "esx02.lab.local")
    host.configManager.pciPassthruSystem.UpdatePassthruConfig(
        config=[vim.host.PciPassthruConfig(id="0000:af:00.0", passthruEnabled=True)])
    boot = host.runtime.bootTime
    WaitForTask(host.RebootHost_Task(force=True))  # ends when the reboot starts, as in vCenter
    assert host.runtime.connectionState == "notResponding"
    with pytest.raises(vmodl.fault.HostNotReachable):
        config_target(host)
    deadline = time.monotonic() + 10
    while host.runtime.connectionState != "connected":
        assert time.monotonic() < deadline, "host did not come back"
        time.sleep(0.05)
    assert passthru(host)["0000:af:00.0"].passthruActive
    assert host.runtime.bootTime > boot


def test_a_rebooting_host_still_reports_connected_during_the_lag(fresh_vcsim, connect):
    """vCenter notices a host going down only when its heartbeats stop (Broadcom KB 435077: every 10 s,
    60 s window): right after RebootHost_Task the host may still say connected with the old state."""
    from gpupass.backends.esxi.lab.simulator import lab_config

    cfg = lab_config()
    cfg["hosts"][1].update(reboot_seconds=0.3, reboot_lag_seconds=0.4)
    si = connect(fresh_vcsim(cfg))
    host = find(si, vim.HostSystem, "esx02.lab.local")
    host.configManager.pciPassthruSystem.UpdatePassthruConfig(
        config=[vim.host.PciPassthruConfig(id="0000:af:00.0", passthruEnabled=True)])
    boot = host.runtime.bootTime
    WaitForTask(host.RebootHost_Task(force=True))
    assert host.runtime.connectionState == "connected" and host.runtime.bootTime == boot
    assert not passthru(host)["0000:af:00.0"].passthruActive
    seen = set()
    deadline = time.monotonic() + 10
    while host.runtime.bootTime == boot or host.runtime.connectionState != "connected":
        seen.add(host.runtime.connectionState)
        assert time.monotonic() < deadline, "host did not come back"
        time.sleep(0.02)
    assert "notResponding" in seen
    assert passthru(host)["0000:af:00.0"].passthruActive
