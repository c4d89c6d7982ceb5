"""The vSphere simulator's NVIDIA vGPU ("shared direct") host, spoken to by real pyvmomi.

What each rule stands on is in backends/esxi/lab/vcsim/vgpu.go; these tests hold the simulator to it.
"""

from __future__ import annotations

import pytest

from gpupass.backends.esxi.lab.simulator import P40_VGPU_TYPES, lab_config

pytest.importorskip("pyVmomi")
from pyVim.task import WaitForTask  # noqa: E402
from pyVmomi import vim, vmodl  # noqa: E402

PT = vim.vm.device.VirtualPCIPassthrough
ESX03 = "esx03.lab.local"
P40_A, P40_B = "0000:3b:00.0", "0000:af:00.0"
HOSTILE = "vgpu <'\"&> ; $(x) `y` \\ vm"


def find(si, kind, name):
    view = si.content.viewManager.CreateContainerView(si.content.rootFolder, [kind], True)
    try:
        return next(obj for obj in view.view if obj.name == name)
    finally:
        view.Destroy()


def graphics(host):
    return {g.pciId: g for g in host.config.graphicsInfo}


def on_gpu(host, pci_id):
    return sorted(vm.name for vm in graphics(host)[pci_id].vm)


def add_vgpu(vm, profile):
    spec = vim.vm.ConfigSpec(deviceChange=[vim.vm.device.VirtualDeviceSpec(
        operation=vim.vm.device.VirtualDeviceSpec.Operation.add, device=PT(key=-1, backing=PT.VmiopBackingInfo(vgpu=profile)))])
    WaitForTask(vm.ReconfigVM_Task(spec))


def reserve_all(vm):
    WaitForTask(vm.ReconfigVM_Task(vim.vm.ConfigSpec(memoryReservationLockedToMax=True)))


def new_vm(cfg, name, *, vgpus=(), memory_mb=4096, reserved=True, on=False):
    cfg["vms"].append({"name": name, "host": ESX03, "firmware": "efi", "memory_mb": memory_mb,
                       "memory_reservation_locked_to_max": reserved, "vgpus": list(vgpus),
                       "power_state": "poweredOn" if on else "poweredOff"})


def test_host_reports_graphics_config_info_and_profiles(vcsim, connect):
    host = find(connect(vcsim), vim.HostSystem, ESX03)
    config = host.config.graphicsConfig
    assert (config.hostDefaultGraphicsType, config.sharedPassthruAssignmentPolicy) == ("sharedDirect", "performance")
    assert list(host.config.sharedPassthruGpuTypes) == [name for name, *_ in P40_VGPU_TYPES]
    info = graphics(host)
    assert {info[a].graphicsType for a in (P40_A, P40_B)} == {"sharedDirect"}
    assert info[P40_A].memorySizeInKB == 24 * 1024 * 1024 and info[P40_A].deviceName == "GP102GL [Tesla P40]"
    assert on_gpu(host, P40_A) == ["vdi01"] and on_gpu(host, P40_B) == []  # placed at power-on, performance policy
    manager = host.configManager.graphicsManager
    assert list(manager.sharedPassthruGpuTypes) == list(host.config.sharedPassthruGpuTypes)
    assert manager.IsSharedGraphicsActive() is False  # shared *direct* is not vSGA


def test_a_host_without_vgpu_manager_reports_basic_and_direct(vcsim, connect):
    host = find(connect(vcsim), vim.HostSystem, "esx02.lab.local")
    info = graphics(host)
    assert info["0000:3b:00.0"].graphicsType == "direct"  # passthrough-active
    assert info["0000:af:00.0"].graphicsType == "basic"  # "no host driver"
    assert not host.config.sharedPassthruGpuTypes
    assert host.config.graphicsConfig.hostDefaultGraphicsType == "shared"


def test_config_target_lists_profiles_and_7_0_3_profile_info(vcsim, connect, fresh_vcsim):
    host = find(connect(vcsim), vim.HostSystem, ESX03)
    target = host.parent.environmentBrowser.QueryConfigTarget(host=host)
    assert [t.vgpu for t in target.sharedGpuPassthroughTypes] == [name for name, *_ in P40_VGPU_TYPES]
    info = {p.profileName: p for p in target.vgpuProfileInfo}
    assert sorted(info) == ["grid_p40-4c", "grid_p40-6c", "grid_p40-8c"]  # compute class only
    four = info["grid_p40-4c"]
    assert (four.fbSizeInGib, four.profileSharing, four.profileClass) == (4, "timeSliced", "compute")
    assert four.deviceVendorId == 0x10DE | 0x1B38 << 16  # vendor in the low 16 bits, device above
    old = fresh_vcsim(api_version="7.0.2.0")
    host = find(connect(old), vim.HostSystem, ESX03)
    target = host.parent.environmentBrowser.QueryConfigTarget(host=host)
    assert target.sharedGpuPassthroughTypes and not target.vgpuProfileInfo  # vgpuProfileInfo is API 7.0.3


def test_reconfigure_refuses_a_profile_the_host_does_not_offer_and_a_running_vm(fresh_vcsim, connect):
    si = connect(fresh_vcsim())
    infer = find(si, vim.VirtualMachine, "infer01")
    with pytest.raises(vim.fault.InvalidDeviceBacking) as err:
        add_vgpu(infer, "grid_a100-4c")
    assert "not offered by host esx03.lab.local" in err.value.msg
    with pytest.raises(vim.fault.InvalidDeviceBacking):
        add_vgpu(find(si, vim.VirtualMachine, "ml-train"), "grid_p40-4c")  # esx02 offers none
    with pytest.raises(vim.fault.InvalidPowerState):
        add_vgpu(find(si, vim.VirtualMachine, "vdi01"), "grid_p40-2b")
    add_vgpu(infer, "grid_p40-4c")
    (device,) = [d for d in infer.config.hardware.device if isinstance(d, PT)]
    assert isinstance(device.backing, PT.VmiopBackingInfo) and device.backing.vgpu == "grid_p40-4c"


def test_power_on_needs_all_memory_reserved_then_places_by_policy(fresh_vcsim, connect):
    si = connect(fresh_vcsim())
    host, infer = find(si, vim.HostSystem, ESX03), find(si, vim.VirtualMachine, "infer01")
    add_vgpu(infer, "grid_p40-4c")
    with pytest.raises(vim.fault.GenericVmConfigFault) as err:
        WaitForTask(infer.PowerOnVM_Task())
    assert "memory reservation" in err.value.msg
    reserve_all(infer)
    WaitForTask(infer.PowerOnVM_Task())
    # performance: the GPU with the fewest VMs; the first P40 also runs a 2B, another profile
    assert on_gpu(host, P40_B) == ["infer01"]
    WaitForTask(infer.PowerOffVM_Task())
    assert on_gpu(host, P40_B) == []  # a powered-off VM holds no GPU


def test_one_profile_per_gpu_and_its_maximum(fresh_vcsim, connect):
    cfg = lab_config()
    for index in range(4):
        new_vm(cfg, f"c8-{index}", vgpus=["grid_p40-8c"])
    si = connect(fresh_vcsim(cfg))
    host = find(si, vim.HostSystem, ESX03)
    for index in range(3):
        WaitForTask(find(si, vim.VirtualMachine, f"c8-{index}").PowerOnVM_Task())
    # 8C fits 3 times on a 24 GiB P40 (max_instance=3 in the real mdevctl output); the other P40 runs a 2B
    assert on_gpu(host, P40_B) == ["c8-0", "c8-1", "c8-2"]
    with pytest.raises(vim.fault.GenericVmConfigFault) as err:
        WaitForTask(find(si, vim.VirtualMachine, "c8-3").PowerOnVM_Task())
    assert "no graphics device of host esx03.lab.local has room for vGPU 'grid_p40-8c'" in err.value.msg
    WaitForTask(find(si, vim.VirtualMachine, "vdi01").PowerOffVM_Task())  # the 2B leaves the first P40
    WaitForTask(find(si, vim.VirtualMachine, "c8-3").PowerOnVM_Task())
    assert on_gpu(host, P40_A) == ["c8-3"]


def test_consolidation_fills_one_gpu_first(fresh_vcsim, connect):
    cfg = lab_config()
    cfg["hosts"][2]["graphics"]["assignment_policy"] = "consolidation"
    for index in range(2):
        new_vm(cfg, f"b2-{index}", vgpus=["grid_p40-2b"])
    si = connect(fresh_vcsim(cfg))
    host = find(si, vim.HostSystem, ESX03)
    for index in range(2):
        WaitForTask(find(si, vim.VirtualMachine, f"b2-{index}").PowerOnVM_Task())
    assert on_gpu(host, P40_A) == ["b2-0", "b2-1", "vdi01"] and on_gpu(host, P40_B) == []


def test_update_graphics_config(fresh_vcsim, connect):
    si = connect(fresh_vcsim())
    host = find(si, vim.HostSystem, ESX03)
    manager = host.configManager.graphicsManager
    with pytest.raises(vmodl.fault.InvalidArgument):
        manager.UpdateGraphicsConfig(vim.host.GraphicsConfig(hostDefaultGraphicsType="direct",
                                                             sharedPassthruAssignmentPolicy="performance"))
    with pytest.raises(vim.fault.HostConfigFault):  # vdi01 runs a vGPU on the first P40
        manager.UpdateGraphicsConfig(vim.host.GraphicsConfig(hostDefaultGraphicsType="shared",
                                                             sharedPassthruAssignmentPolicy="performance"))
    # the idle P40 only: back to shared (vSGA) graphics; it offers no profiles then
    manager.UpdateGraphicsConfig(vim.host.GraphicsConfig(
        hostDefaultGraphicsType="sharedDirect", sharedPassthruAssignmentPolicy="consolidation",
        deviceType=[vim.host.GraphicsConfig.DeviceType(deviceId=P40_B, graphicsType="shared")]))
    # configured at once, in effect after Xorg restarts ("After clicking OK, you must restart Xorg on the host")
    assert graphics(host)[P40_B].graphicsType == "sharedDirect" and manager.IsSharedGraphicsActive() is False
    with pytest.raises(vim.fault.NotFound):
        host.configManager.serviceSystem.RestartService("no-such-service")
    host.configManager.serviceSystem.RestartService("xorg")
    assert graphics(host)[P40_B].graphicsType == "shared" and manager.IsSharedGraphicsActive() is True
    config = host.config.graphicsConfig
    assert config.sharedPassthruAssignmentPolicy == "consolidation"
    assert [(d.deviceId, d.graphicsType) for d in config.deviceType] == [(P40_B, "shared")]
    infer = find(si, vim.VirtualMachine, "infer01")
    add_vgpu(infer, "grid_p40-2b")
    reserve_all(infer)
    WaitForTask(infer.PowerOnVM_Task())
    assert on_gpu(host, P40_A) == ["infer01", "vdi01"]  # the shared P40 takes no vGPU


def test_passthrough_and_vgpu_exclude_each_other(fresh_vcsim, connect):
    si = connect(fresh_vcsim())
    host = find(si, vim.HostSystem, ESX03)
    system = host.configManager.pciPassthruSystem
    with pytest.raises(vim.fault.HostConfigFault) as err:  # vdi01 runs a vGPU on it
        system.UpdatePassthruConfig([vim.host.PciPassthruConfig(id=P40_A, passthruEnabled=True)])
    assert "runs vGPUs" in err.value.msg
    system.UpdatePassthruConfig([vim.host.PciPassthruConfig(id=P40_B, passthruEnabled=True)])
    # esx03 cannot rebind at once: the switch waits for a reboot (a running VM keeps it out of maintenance mode)
    WaitForTask(find(si, vim.VirtualMachine, "vdi01").PowerOffVM_Task())
    WaitForTask(host.EnterMaintenanceMode_Task(timeout=0))
    WaitForTask(host.RebootHost_Task(force=False))
    WaitForTask(host.ExitMaintenanceMode_Task(timeout=0))
    info = graphics(host)
    assert info[P40_B].graphicsType == "direct" and info[P40_A].graphicsType == "sharedDirect"
    assert list(host.config.sharedPassthruGpuTypes)  # the other P40 still offers them


def test_hostile_vm_name_holds_a_vgpu(fresh_vcsim, connect):
    cfg = lab_config()
    new_vm(cfg, HOSTILE, vgpus=["grid_p40-6c"], on=True)
    si = connect(fresh_vcsim(cfg))
    host = find(si, vim.HostSystem, ESX03)
    assert on_gpu(host, P40_B) == [HOSTILE]
