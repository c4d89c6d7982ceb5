"""Real published ESXi outputs (tests/fixtures/real/esxi/) turned into hosts the simulator serves or text
gpupass parses, with what a correct tool concludes about each."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from gpupass.backends.esxi.lab.simulator import GIB, MIB
from gpupass.core.domain.mmio import GiB, mmio_need
from gpupass.core.domain.pci import Bar, PciAddress
from gpupass.core.domain.request import AssignmentRequest, AssignOptions
from gpupass.core.service import execute, make_plan

pytest.importorskip("pyVmomi")
from pyVim.task import WaitForTask  # noqa: E402
from pyVmomi import vim  # noqa: E402

from tests.integration.esxi.test_esxi_backend import USER, registry, target  # noqa: E402

CORPUS = Path(__file__).resolve().parents[2] / "fixtures" / "real" / "esxi"


def body(name: str) -> list[str]:
    """The file's lines after its header (source, what, how verbatim)."""
    lines = (CORPUS / name).read_text(encoding="utf-8").splitlines()
    return [line for line in lines if not line.startswith(("# ", "<!-- "))]


def one_host(devices, *, rebind=False, vms=()):
    """A vCenter (datacenter Lab) with one host carrying `devices` (simulator config schema)."""
    return {"mode": "vcenter", "datacenter": "Lab", "datastore": "datastore1", "clusters": ["c"],
            "hosts": [{"name": "esx.real.local", "cluster": "c", "memory_mb": 512 * 1024,
                       "rebind_without_reboot": rebind, "gpus": devices}],
            "vms": [{"name": "vm1", "host": "esx.real.local", "power_state": "poweredOff", "firmware": "efi",
                     "guest_id": "ubuntu64Guest", "num_cpus": 4, "memory_mb": 16384}, *vms]}


def backend_for(sim):
    from gpupass.backends.esxi.backend import EsxiBackend

    return EsxiBackend(target(sim))


def find_vm(si, name):
    view = si.content.viewManager.CreateContainerView(si.content.rootFolder, [vim.VirtualMachine], True)
    try:
        return next(vm for vm in view.view if vm.name == name)
    finally:
        view.Destroy()


def vmx_id_to_address(vmx_id: str) -> PciAddress:
    """ESXi writes pciPassthruN.id as %05d:%03d:%02d.%d, every field decimal (encs-esxi-vmx-decimal-id.md)."""
    domain, bus, rest = vmx_id.split(":")
    slot, function = rest.split(".")
    return PciAddress(int(domain), int(bus), int(slot), int(function))


# -- the corpus itself ---------------------------------------------------------------------------


def test_every_corpus_file_names_its_source_and_is_indexed():
    index = (CORPUS / "INDEX.md").read_text(encoding="utf-8")
    files = sorted(p.name for p in CORPUS.iterdir() if p.name != "INDEX.md")
    assert len(files) >= 6
    for name in files:
        first = (CORPUS / name).read_text(encoding="utf-8").splitlines()[0]
        assert re.match(r"^(# |<!-- )Source: \S", first), f"{name}: the first line must name the source"
        assert f"| `{name}` |" in index, f"{name} is not listed in INDEX.md"
    listed = re.findall(r"^\| `([^`]+)` \|", index, re.M)
    assert sorted(listed) == files, "INDEX.md lists a file that is not there"


# -- dell-kb-000199172-vmware.log: the 917504-page limit ------------------------------------------


def test_dell_kb_limit_is_the_backends_budget_and_the_simulators_message(fresh_vcsim):
    from gpupass.backends.esxi.backend import EsxiBackend

    line = body("dell-kb-000199172-vmware.log")[0]
    needed, limit = map(int, re.search(r"pages needed \((\d+)\) exceeds limit \((\d+)\)", line).groups())
    assert limit * 4096 == EsxiBackend.mmio_policy.budget_without_window == 3584 * MIB
    # "a GPU with 16 GB BARs": 16 GiB + 16 MiB + 32 MiB is 4206592 pages; ESXi counted 2 more.
    bars = (Bar(0, 16 * MIB, False), Bar(1, 16 * GIB, True), Bar(3, 32 * MIB, True))
    assert 0 <= needed - sum(b.size for b in bars) // 4096 <= 2
    policy = EsxiBackend.mmio_policy
    assert not policy.fits(mmio_need(bars), None)           # gpupass predicts this very failure
    assert policy.window_for(mmio_need(bars)) == 32 * GiB   # and sets use64bitMMIO with 32 GB

    cfg = one_host([{"address": "0000:3b:00.0", "vendor_id": "0x10de", "device_id": "0x20b5", "class_id": "0x0302",
                     "device_name": "GPU", "passthru_enabled": True, "passthru_active": True,
                     "bars": [16 * MIB, 16 * GIB, 32 * MIB]}])
    cfg["vms"][0]["passthrough"] = ["0000:3b:00.0"]
    cfg["vms"][0]["memory_reservation_locked_to_max"] = True
    sim = fresh_vcsim(cfg)
    with pytest.raises(vim.fault.GenericVmConfigFault) as err:
        WaitForTask(find_vm(sim.connect(), "vm1").PowerOnVM_Task())
    real = re.sub(r"\d+", "N", line.split("I005: ", 1)[1])
    assert real in re.sub(r"\d+", "N", err.value.msg)  # the simulator says what ESXi says


# -- p40-vmware-log-bars.log: a 32 GiB BAR --------------------------------------------------------


def test_p40_bars_from_the_log_need_use64bitmmio_and_power_on_with_gpupass_window(fresh_vcsim):
    from gpupass.backends.esxi.backend import EsxiBackend

    lines = body("p40-vmware-log-bars.log")
    sizes = [int(m) for m in re.findall(r"size (\d+)", "\n".join(lines))]
    assert sizes == [16 * MIB, 32 * GIB, 32 * MIB]
    # "type 2" is the 32-bit BAR0, "type 3" the 64-bit prefetchable ones (flags 12)
    bars = tuple(Bar(int(i), int(size), t == "3")
                 for i, t, size in re.findall(r"barIndex (\d+) type (\d) \S+ \S+ size (\d+)", "\n".join(lines)))
    policy = EsxiBackend.mmio_policy
    assert not policy.fits(mmio_need(bars), None)
    window_gb = policy.window_for(mmio_need(bars)) // GiB
    assert window_gb == 64  # 32 GiB + 32 MiB packed, rounded up to a power of two

    address = re.search(r"Device (\S+) barIndex", lines[0]).group(1)
    cfg = one_host([{"address": address, "vendor_id": "0x10de", "device_id": "0x1b38", "class_id": "0x0302",
                     "vendor_name": "NVIDIA Corporation", "device_name": "GP102GL [Tesla P40]",
                     "passthru_enabled": True, "passthru_active": True,
                     "bars": [{"size": b.size, "bits": 64 if b.is_64bit else 32} for b in bars]}])
    cfg["vms"][0].update(passthrough=[address], memory_reservation_locked_to_max=True)
    sim = fresh_vcsim(cfg)
    vm = find_vm(sim.connect(), "vm1")
    with pytest.raises(vim.fault.GenericVmConfigFault) as err:  # as in the Dell KB's log
        WaitForTask(vm.PowerOnVM_Task())
    assert f"pages needed ({sum(sizes) // 4096}) exceeds limit (917504)" in err.value.msg
    half = [vim.option.OptionValue(key="pciPassthru.use64bitMMIO", value="TRUE"),
            vim.option.OptionValue(key="pciPassthru.64bitMMIOSizeGB", value=str(window_gb // 2))]
    WaitForTask(vm.ReconfigVM_Task(spec=vim.vm.ConfigSpec(extraConfig=half)))
    with pytest.raises(vim.fault.GenericVmConfigFault):  # 32 GB: one BAR alone fills it
        WaitForTask(vm.PowerOnVM_Task())
    WaitForTask(vm.ReconfigVM_Task(spec=vim.vm.ConfigSpec(extraConfig=[
        vim.option.OptionValue(key="pciPassthru.64bitMMIOSizeGB", value=str(window_gb))])))
    WaitForTask(vm.PowerOnVM_Task())


def test_gpupass_plan_for_the_p40_bars_powers_on(fresh_vcsim):
    """The same card through gpupass: --bar-size with the three BARs of the log -> use64bitMMIO, 64 GB."""
    lines = body("p40-vmware-log-bars.log")
    sizes = tuple(int(m) for m in re.findall(r"size (\d+)", "\n".join(lines)))
    address = PciAddress.parse(re.search(r"Device (\S+) barIndex", lines[0]).group(1))
    cfg = one_host([{"address": str(address), "vendor_id": "0x10de", "device_id": "0x1b38", "class_id": "0x0302",
                     "device_name": "GP102GL [Tesla P40]", "passthru_enabled": True, "passthru_active": True,
                     "bars": list(sizes)}])
    sim = fresh_vcsim(cfg, username=USER)
    backend = backend_for(sim)
    try:
        request = AssignmentRequest("vm1", (address,), AssignOptions(bar_sizes={address: sizes}))
        result = make_plan(backend, backend.inventory(), request, registry())
        assert "pciPassthru.64bitMMIOSizeGB: (unset) -> 64" in result.steps[-1].preview
        execute(backend, result)
        WaitForTask(find_vm(sim.connect(), "vm1").PowerOnVM_Task())
    finally:
        backend.close()


# -- govmomi-pr-2092-govc-device-pci.txt: what QueryConfigTarget offers ----------------------------


def test_govc_device_pci_rows_have_the_shape_the_backend_and_simulator_use(vcsim):
    rows = [line.split() for line in body("govmomi-pr-2092-govc-device-pci.txt") if re.match(r"^[0-9a-f]{8}-", line)]
    assert len(rows) == 2
    uuid = r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$"
    for system_id, address, *_ in rows:
        assert re.match(uuid, system_id)
        assert str(PciAddress.parse(address)) == address  # the host id form gpupass sends as backing.id
    si = vcsim.connect()
    host = find_vm(si, "ml-train").runtime.host
    for info in host.parent.environmentBrowser.QueryConfigTarget(host=host).pciPassthrough:
        assert re.match(uuid, info.systemId) and str(PciAddress.parse(info.pciDevice.id)) == info.pciDevice.id


# -- vmx-gtx1050ti-pcipassthru.vmx (+ encs-esxi-vmx-decimal-id.md): GPU and audio go together ---------


def test_vmx_ids_are_decimal_and_gpupass_adds_the_gpu_with_its_audio_function(fresh_vcsim):
    encs = "\n".join(body("encs-esxi-vmx-decimal-id.md"))
    assert vmx_id_to_address(re.search(r'pciPassthru0.id\s+= "([^"]+)"', encs).group(1)) == \
        PciAddress.parse("0000:0d:00.0")
    vmx = dict(re.findall(r'^(\S+) = "([^"]*)"$', "\n".join(body("vmx-gtx1050ti-pcipassthru.vmx")), re.M))
    functions = []
    for n in (0, 1):
        address = vmx_id_to_address(vmx[f"pciPassthru{n}.id"])
        functions.append((address, int(vmx[f"pciPassthru{n}.vendorId"], 16), int(vmx[f"pciPassthru{n}.deviceId"], 16)))
    (gpu_addr, _, gpu_dev), (audio_addr, _, audio_dev) = functions
    assert (str(gpu_addr), str(audio_addr)) == ("0000:02:00.0", "0000:02:00.1")
    # class codes are not in the .vmx: VGA (0x0300) and HDMI audio (0x0403) assumed for 10de:1c82/10de:0fb9
    cfg = one_host([{"address": str(gpu_addr), "vendor_id": "0x10de", "device_id": f"0x{gpu_dev:04x}",
                     "class_id": "0x0300", "vendor_name": "NVIDIA Corporation", "device_name": "GP107",
                     "passthru_enabled": True, "passthru_active": True,
                     "functions": [{"address": str(audio_addr), "vendor_id": "0x10de",
                                    "device_id": f"0x{audio_dev:04x}", "class_id": "0x0403",
                                    "device_name": "GP107GL High Definition Audio Controller",
                                    "passthru_enabled": True, "passthru_active": True}]}])
    sim = fresh_vcsim(cfg, username=USER)
    backend = backend_for(sim)
    try:
        facts = backend.inventory()
        (gpu,) = [g for g in facts.gpus if g.address == gpu_addr]
        assert [str(c.address) for c in gpu.companions] == [str(audio_addr)]
        result = make_plan(backend, facts, AssignmentRequest("vm1", (gpu_addr,)), registry())
        execute(backend, result)
        vm = find_vm(sim.connect(), "vm1")
        backings = [d.backing for d in vm.config.hardware.device if isinstance(d, vim.vm.device.VirtualPCIPassthrough)]
        # like ESXi's own .vmx: both functions, one system id, device ids as hex
        assert sorted((b.id, b.deviceId) for b in backings) == [(str(gpu_addr), "1c82"), (str(audio_addr), "fb9")]
        assert len({b.systemId for b in backings}) == 1
    finally:
        backend.close()


# -- esxcli-hardware-pci-list-vmware-communities.txt: ids as signed shorts, no GPU ------------------


def parse_esxcli_pci_list(lines):
    devices, current = [], None
    for line in lines:
        if re.match(r"^[0-9a-f]{4}:", line):
            current = {}
            devices.append(current)
        elif current is not None and ":" in line:
            key, value = line.strip().split(":", 1)
            current[key] = value.strip()
    return devices


def test_esxcli_devices_served_as_signed_shorts_are_read_back_and_are_not_gpus(fresh_vcsim):
    devices = parse_esxcli_pci_list(body("esxcli-hardware-pci-list-vmware-communities.txt"))
    assert [d["Address"] for d in devices] == ["0000:02:00.1", "0000:04:00.0"]
    served = []
    for d in devices:
        passthru = d["Configured Owner"] == "VM Passthru"
        served.append({"address": d["Address"], "vendor_id": d["Vendor ID"], "device_id": d["Device ID"],
                       "sub_vendor_id": d["SubVendor ID"], "sub_device_id": d["SubDevice ID"],
                       "class_id": d["Device Class"], "vendor_name": d["Vendor Name"], "device_name": d["Device Name"],
                       "passthru_capable": d["Passthru Capable"] == "true", "passthru_enabled": passthru,
                       "passthru_active": d["Current Owner"] == "VM Passthru"})
    sim = fresh_vcsim(one_host(served), username=USER)
    si = sim.connect()
    host = find_vm(si, "vm1").runtime.host
    wire = {d.id: d for d in host.hardware.pciDevice}
    assert wire["0000:02:00.1"].vendorId == 0x8086 - 0x10000 == -32634  # xsd:short on the wire
    backend = backend_for(sim)
    try:
        facts = backend.inventory()
        read = {str(a): f for (_, a), f in facts.functions.items()}
        assert (read["0000:02:00.1"].vendor_id, read["0000:02:00.1"].device_id) == (0x8086, 0x1528)
        assert (read["0000:04:00.0"].vendor_id, read["0000:04:00.0"].device_id) == (0x1000, 0x0087)
        # an Ethernet controller and a SAS HBA are not GPUs, passthrough or not (the simulator's own host
        # template adds a VMware SVGA adapter, which is one)
        assert not {str(g.address) for g in facts.gpus} & {"0000:02:00.1", "0000:04:00.0"}
    finally:
        backend.close()


# -- esxcli-pcipassthru-list-r750xs.txt: the enabled flags ------------------------------------------


def test_pcipassthru_table_flags_are_what_gpupass_reads(fresh_vcsim):
    rows = [line.split() for line in body("esxcli-pcipassthru-list-r750xs.txt") if re.match(r"^[0-9a-f]{4}:", line)]
    table = {address: enabled == "true" for address, enabled in rows}
    assert table == {"0000:03:00.0": False, "0000:04:00.0": False, "0000:04:00.1": False, "0000:65:00.0": False}
    # The table names no device class; served here as 3D controllers so gpupass lists them (assumed).
    served = [{"address": a, "vendor_id": "0x10de", "device_id": "0x1eb8", "class_id": "0x0302",
               "passthru_enabled": enabled} for a, enabled in table.items()]
    sim = fresh_vcsim(one_host(served), username=USER)
    backend = backend_for(sim)
    try:
        facts = backend.inventory()
        read = {str(g.address): g.passthrough.enabled for g in facts.gpus if str(g.address) in table}
        assert read == {a: e for a, e in table.items() if a.endswith(".0")}  # 04:00.1 is 04:00.0's companion
        (g04,) = [g for g in facts.gpus if str(g.address) == "0000:04:00.0"]
        assert [str(c.address) for c in g04.companions] == ["0000:04:00.1"]
        blocked = make_plan(backend, facts, AssignmentRequest("vm1", (PciAddress.parse("0000:03:00.0"),)), registry())
        assert "host-reboot-required" in {f.code for f in blocked.findings if f.blocks}
    finally:
        backend.close()


# -- encs-esxi-8u3-pcipassthru-apply-now.md: enabled and active at once ------------------------------


def test_apply_now_makes_the_device_active_at_once_like_esxi_8u3(fresh_vcsim):
    text = "\n".join(body("encs-esxi-8u3-pcipassthru-apply-now.md"))
    address = re.search(r"--device-id=(\S+) --enable=true --apply-now", text).group(1)
    assert "Configured Owner: VM Passthru" in text and "Current Owner: VM Passthru" in text
    cfg = one_host([{"address": address, "vendor_id": "0x11ab", "device_id": "0xbe00", "class_id": "0x0200",
                     "passthru_enabled": False}], rebind=True)
    sim = fresh_vcsim(cfg)
    si = sim.connect()
    host = find_vm(si, "vm1").runtime.host
    host.configManager.pciPassthruSystem.UpdatePassthruConfig(
        config=[vim.host.PciPassthruConfig(id=address, passthruEnabled=True, applyNow=True)])
    (info,) = [p for p in host.config.pciPassthruInfo if p.id == address]
    assert (info.passthruEnabled, info.passthruActive) == (True, True)  # configured and current owner: passthru


def test_a_device_the_vmkernel_holds_stays_pending_after_apply_now(fresh_vcsim):
    text = " ".join(body("encs-esxi-8u3-pcipassthru-apply-now.md"))
    assert "If the device shows as pending rather than enabled, reboot the host" in text
    cfg = one_host([{"address": "0000:0d:00.0", "vendor_id": "0x11ab", "device_id": "0xbe00", "class_id": "0x0200",
                     "passthru_enabled": False, "vmkernel_in_use": True}], rebind=True)
    host = find_vm(fresh_vcsim(cfg).connect(), "vm1").runtime.host
    host.configManager.pciPassthruSystem.UpdatePassthruConfig(
        config=[vim.host.PciPassthruConfig(id="0000:0d:00.0", passthruEnabled=True, applyNow=True)])
    (info,) = [p for p in host.config.pciPassthruInfo if p.id == "0000:0d:00.0"]
    assert (info.passthruEnabled, info.passthruActive) == (True, False)  # pending: a reboot activates it
    WaitForTask(host.RebootHost_Task(force=True))
    (info,) = [p for p in host.config.pciPassthruInfo if p.id == "0000:0d:00.0"]
    assert info.passthruActive


# -- govmomi-issue-2773-pcipassthrough-13000.txt: the first passthrough device's key ----------------


def test_the_simulator_keys_a_new_passthrough_device_13000_like_the_real_vcenter(fresh_vcsim):
    name = re.search(r"\$vm (pcipassthrough-\d+),", " ".join(body("govmomi-issue-2773-pcipassthrough-13000.txt")))
    kind, key = name.group(1).split("-")
    sim = fresh_vcsim(username=USER)
    backend = backend_for(sim)
    try:
        execute(backend, make_plan(backend, backend.inventory(),
                                   AssignmentRequest("ml-train", (PciAddress.parse("0000:3b:00.0"),)), registry()))
        vm = find_vm(sim.connect(), "ml-train")
        (dev,) = [d for d in vm.config.hardware.device if isinstance(d, vim.vm.device.VirtualPCIPassthrough)]
        assert (type(dev).__name__.split(".")[-1].lower(), dev.key) == ("virtualpcipassthrough", int(key))
        assert kind == "pcipassthrough"  # govc's name for VirtualPCIPassthrough
    finally:
        backend.close()


# -- l4-esxi-firmware-could-not-allocate-pci-mmio.md: a 64-bit window one BAR too small -----------------


def test_an_l4_needs_more_than_a_32_gb_window_as_esxi_said():
    """ESXi refused one L4 with pciPassthru.64bitMMIOSizeGB = 32: 'The firmware could not allocate 33587200 KB of
    PCI MMIO'. 33587200 KB is 32 GiB + 32 MiB: the L4's two 64-bit BARs, packed; its 32-bit BAR0 is not counted
    against the 64-bit window. gpupass packs the same BARs, finds 32 GB too small and asks for 64, the value the
    author found to work."""
    from gpupass.backends.esxi.backend import EsxiBackend

    text = "\n".join(body("l4-esxi-firmware-could-not-allocate-pci-mmio.md"))
    kb = int(re.search(r"The firmware could not allocate (\d+) KB of PCI MMIO", text).group(1))
    assert "64bitMMIOSizeGB設定32會開不起來" in text and "單張L4設定為64" in text
    assert kb * 1024 == 32 * GIB + 32 * MIB
    need = mmio_need((Bar(0, 16 * MIB, False), Bar(1, 32 * GIB, True), Bar(3, 32 * MIB, True)))
    assert need.high_packed == kb * 1024
    policy = EsxiBackend.mmio_policy
    assert not policy.fits(need, 32 * GiB)
    assert policy.window_for(need) == 64 * GiB


# -- catalog layouts read from real lspci outputs (tests/fixtures/real/kvm/), planned on ESXi ----------


@pytest.mark.parametrize("device_id, name, window_gb", [
    ("0x2236", "A10", 64),               # 16M + 32G + 32M (scargall-2024-a10-lspci.txt)
    ("0x26b9", "L40S", 128),             # 16M + 64G + 32M (cloud-hypervisor-vfio-l40s.txt)
    ("0x20b2", "A100 SXM4 80GB", 256),   # 16M + 128G + 32M (linux-pci-2021-8x-a100-80gb-guest-bars.txt)
])
def test_catalog_layouts_from_real_outputs_size_the_esxi_window(fresh_vcsim, device_id, name, window_gb):
    """vSphere reports no BAR sizes, so gpupass sizes pciPassthru.64bitMMIOSizeGB from the catalog: no --bar-size
    needed for these cards, and the VM powers on in the simulator, which checks the BARs against the window."""
    from gpupass.core.domain import catalog

    known = catalog.lookup(0x10DE, int(device_id, 16))
    address = PciAddress.parse("0000:3b:00.0")
    cfg = one_host([{"address": str(address), "vendor_id": "0x10de", "device_id": device_id, "class_id": "0x0302",
                     "device_name": name, "passthru_enabled": True, "passthru_active": True,
                     "bars": [{"size": bar.size, "bits": 64 if bar.is_64bit else 32} for bar in known.bars]}])
    sim = fresh_vcsim(cfg, username=USER)
    backend = backend_for(sim)
    try:
        result = make_plan(backend, backend.inventory(), AssignmentRequest("vm1", (address,)), registry())
        assert "bar-size-unknown" not in {f.code for f in result.findings}
        assert f"pciPassthru.64bitMMIOSizeGB: (unset) -> {window_gb}" in result.steps[-1].preview
        execute(backend, result)
        WaitForTask(find_vm(sim.connect(), "vm1").PowerOnVM_Task())
    finally:
        backend.close()


# -- l4-esxi-firmware-could-not-allocate-pci-mmio.md: only the 64-bit BARs count against the window ------------

# One NVIDIA L4: BAR1 32 GiB and BAR3 32 MiB are the 64-bit BARs the real message counts (33587200 KB = 32 GiB +
# 32 MiB); BAR0 16 MiB 32-bit is assumed (NVIDIA's usual layout: no published lspci of an L4 was found).
L4_BARS = (Bar(0, 16 * MIB, False), Bar(1, 32 * GIB, True), Bar(3, 32 * MIB, True))


def bars_config(bars):
    return [{"size": b.size, "bits": 64 if b.is_64bit else 32} for b in bars]


def mmio_vm(window_gb):
    return {"name": "vm2", "host": "esx.real.local", "power_state": "poweredOff", "firmware": "efi",
            "guest_id": "ubuntu64Guest", "num_cpus": 4, "memory_mb": 16384, "memory_reservation_locked_to_max": True,
            "passthrough": ["0000:b5:00.0"],
            "extra_config": {"pciPassthru.use64bitMMIO": "TRUE", "pciPassthru.64bitMMIOSizeGB": str(window_gb)}}


def test_l4_with_a_32_gb_window_is_refused_in_esxis_words_and_64_powers_on(fresh_vcsim):
    from gpupass.backends.esxi.backend import EsxiBackend

    (line,) = [x for x in body("l4-esxi-firmware-could-not-allocate-pci-mmio.md") if "could not allocate" in x]
    real = line.split("錯誤訊息：", 1)[1].strip()
    kb = int(re.search(r"allocate (\d+) KB", real).group(1))
    assert kb * 1024 == sum(b.size for b in L4_BARS if b.is_64bit)  # the 64-bit BARs, BAR0 not counted

    cfg = one_host([{"address": "0000:b5:00.0", "vendor_id": "0x10de", "device_id": "0x27b8", "class_id": "0x0302",
                     "device_name": "AD104GL [L4]", "passthru_enabled": True, "passthru_active": True,
                     "bars": bars_config(L4_BARS)}], vms=[mmio_vm(32)])
    cfg["hosts"][0]["name"] = "r760-l4.linkone.lab"
    cfg["vms"][1]["host"] = cfg["vms"][0]["host"] = "r760-l4.linkone.lab"
    sim = fresh_vcsim(cfg)
    vm = find_vm(sim.connect(), "vm2")
    with pytest.raises(vim.fault.GenericVmConfigFault) as err:
        WaitForTask(vm.PowerOnVM_Task())
    assert err.value.msg == real  # host name, 33587200 KB and all: what ESXi said
    assert vm.runtime.powerState == "poweredOff"

    # gpupass's ESXi sizing counts the same BARs: 32 GiB + 32 MiB, a power of two up, is the 64 GB the notes use
    policy = EsxiBackend.mmio_policy
    assert not policy.fits(mmio_need(L4_BARS), 32 * GiB)
    window_gb = policy.window_for(mmio_need(L4_BARS)) // GiB
    assert window_gb == 64
    WaitForTask(vm.ReconfigVM_Task(spec=vim.vm.ConfigSpec(extraConfig=[
        vim.option.OptionValue(key="pciPassthru.64bitMMIOSizeGB", value=str(window_gb))])))
    WaitForTask(vm.PowerOnVM_Task())
    assert vm.runtime.powerState == "poweredOn"


def test_a_32_bit_bar_does_not_count_against_the_64_bit_window(fresh_vcsim):
    """A 32 GiB 64-bit BAR and a 16 MiB 32-bit one: counting every BAR (the simulator before) needed 33 GB; ESXi
    counts the 64-bit BAR only, so exactly 32 GB powers on. The same BARs without widths (a config written before
    the simulator knew them) still count as 64-bit and are refused."""
    from gpupass.backends.esxi.backend import EsxiBackend

    bars = (Bar(0, 16 * MIB, False), Bar(1, 32 * GIB, True))
    policy = EsxiBackend.mmio_policy
    assert policy.fits(mmio_need(bars), 32 * GiB) and policy.window_for(mmio_need(bars)) == 32 * GiB

    device = {"address": "0000:b5:00.0", "vendor_id": "0x10de", "device_id": "0x27b8", "class_id": "0x0302",
              "device_name": "GPU", "passthru_enabled": True, "passthru_active": True}
    sim = fresh_vcsim(one_host([dict(device, bars=bars_config(bars))], vms=[mmio_vm(32)]))
    vm = find_vm(sim.connect(), "vm2")
    WaitForTask(vm.PowerOnVM_Task())
    assert vm.runtime.powerState == "poweredOn"

    old = fresh_vcsim(one_host([dict(device, bars=[b.size for b in bars])], vms=[mmio_vm(32)]))
    vm = find_vm(old.connect(), "vm2")
    with pytest.raises(vim.fault.GenericVmConfigFault) as err:
        WaitForTask(vm.PowerOnVM_Task())
    assert f"could not allocate {(32 * GIB + 16 * MIB) // 1024} KB of PCI MMIO" in err.value.msg


@pytest.mark.parametrize("bar, problem", [
    ({"size": 16 * MIB, "bits": 48}, "bits must be 32 or 64"),
    ({"size": 4 * GIB, "bits": 32}, "too large for a 32-bit BAR"),
    ({"size": 16 * MIB}, "bits must be 32 or 64"),
])
def test_a_bar_of_impossible_width_is_refused_by_the_simulator(fresh_vcsim, bar, problem):
    from gpupass.backends.esxi.lab.simulator import SimulatorError

    device = {"address": "0000:b5:00.0", "vendor_id": "0x10de", "device_id": "0x27b8", "class_id": "0x0302",
              "device_name": "GPU", "bars": [bar]}
    with pytest.raises(SimulatorError, match=problem):
        fresh_vcsim(one_host([device]))
