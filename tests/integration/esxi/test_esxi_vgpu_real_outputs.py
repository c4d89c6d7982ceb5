"""The ESXi vGPU outputs of the real-output corpus (tests/fixtures/real/sharing/) against the vSphere simulator and the
ESXi backend: what a real host printed is what lab-esxi reports and what gpupass derives."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from gpupass.backends.esxi import vgpu
from gpupass.backends.esxi.lab.simulator import lab_config
from gpupass.core.domain.pci import PciAddress
from gpupass.core.domain.sharing import ShareMode, ShareType, neutral_profile
from gpupass.core.service import execute

pytest.importorskip("pyVmomi")
from pyVmomi import vim  # noqa: E402

from tests.integration.esxi.test_esxi_vgpu_backend import ESX03, backend_for  # noqa: E402

CORPUS = Path(__file__).resolve().parents[2] / "fixtures" / "real" / "sharing"
DENNEMAN = CORPUS / "esxcli-graphics-denneman-a100.txt"
# esxcli's words for the API's values: the vSphere Client offers "Shared: VMware shared virtual graphics" and
# "Shared Direct: Vendor shared passthrough graphics" (vSphere Resource Management, Configuring Host Graphics), the
# API HostGraphicsConfigGraphicsType shared | sharedDirect; the post sets "Shared Direct" and esxcli prints
# "SharedPassthru".
ESXCLI_TYPES = {"Shared": "shared", "SharedPassthru": "sharedDirect", "Basic": "basic"}
ESXCLI_POLICIES = {"Performance": "performance", "Consolidation": "consolidation"}


def esxcli_blocks(text: str) -> dict[str, list[dict[str, str]]]:
    """Each `% esxcli ...` command of a transcript with the `Key: value` records it printed."""
    out: dict[str, list[dict[str, str]]] = {}
    command = None
    for line in text.splitlines():
        if line.startswith("% "):
            command = line[2:].strip()
            out.setdefault(command, []).append({})
        elif command and ":" in line and not line.startswith("#"):
            key, _, value = line.strip().partition(":")
            out[command][-1][key.strip()] = value.strip()
    return out


def test_esxcli_host_get_is_what_the_lab_host_reports(vcsim):
    (first, *_), = [v for k, v in esxcli_blocks(DENNEMAN.read_text(encoding="utf-8")).items()
                    if k == "esxcli graphics host get"]
    real = (ESXCLI_TYPES[first["Default Graphics Type"]], ESXCLI_POLICIES[first["Shared Passthru Assignment Policy"]])
    backend = backend_for(vcsim)
    try:
        graphics = backend.inventory().host.settings["hosts"][ESX03]["graphics"]
    finally:
        backend.close()
    assert (graphics["default_type"], graphics["assignment_policy"]) == real == ("sharedDirect", "performance")


def test_a_gpu_without_the_vgpu_manager_is_basic_with_no_memory_and_no_vm(vcsim, connect):
    (record,) = esxcli_blocks(DENNEMAN.read_text(encoding="utf-8"))["esxcli graphics device list"]
    assert (record["Graphics Type"], record["Memory Size in KB"], record["Number of VMs"]) == ("Basic", "0", "0")
    # esx02's second A100 PCIe 80GB, at the address of the post's A100 PCIe 40GB, has no vGPU manager either
    si = connect(vcsim)
    view = si.content.viewManager.CreateContainerView(si.content.rootFolder, [vim.HostSystem], True)
    host = next(h for h in view.view if h.name == "esx02.lab.local")
    view.Destroy()
    info = next(i for i in host.config.graphicsInfo if PciAddress.parse(i.pciId) == PciAddress.parse("0000:af:00.0"))
    assert (info.graphicsType, info.memorySizeInKB, list(info.vm or ())) == (
        ESXCLI_TYPES[record["Graphics Type"]], int(record["Memory Size in KB"]), [])
    assert record["0000"] == "af:00.0"  # the device's line, `0000:af:00.0`, read as a record


def test_the_switch_by_hand_is_the_plans_step_and_it_makes_the_host_offer_profiles(fresh_vcsim):
    text = DENNEMAN.read_text(encoding="utf-8")
    # set the default type, then restart Xorg: the same two actions as API calls, in one step
    assert text.index("esxcli graphics host set --default-type SharedPassthru") < text.index("/etc/init.d/xorg restart")
    cfg = lab_config()
    cfg["hosts"][2]["graphics"]["default_type"] = "shared"  # before the switch: VMware shared graphics (vSGA)
    for vm in cfg["vms"]:
        if vm["name"] == "vdi01":
            vm["power_state"] = "poweredOff"  # a vGPU cannot run on a GPU in shared mode
    backend = backend_for(fresh_vcsim(cfg))
    try:
        facts = backend.inventory()
        assert not any(g.sharing.offered for g in facts.gpus if g.location == ESX03)
        plan = backend.ex_plan_host_graphics(facts, ESX03, default_type=ESXCLI_TYPES["SharedPassthru"])
        (step,) = plan.steps
        assert step.changes[0] == "hostDefaultGraphicsType shared -> sharedDirect"
        assert step.changes[-1] == "RestartService xorg"
        execute(backend, plan)
        after = backend.inventory()
        p40s = [g for g in after.gpus if g.location == ESX03 and g.model.endswith("[Tesla P40]")]
        assert len(p40s) == 2 and all(g.sharing.modes == (ShareMode.VGPU_PROFILE,) for g in p40s)
        assert after.host.settings["hosts"][ESX03]["graphics"]["default_type"] == "sharedDirect"
    finally:
        backend.close()


def published_p40_rows() -> list[tuple[str, int]]:
    text = (CORPUS / "vgpucapacity-powercli-p40-profiles.txt").read_text(encoding="utf-8")
    return [(name, int(per_gpu)) for name, per_gpu in re.findall(r'vGPUname="(grid_p40-\w+)";vGPUperGPU=(\d+)', text)]


def test_the_published_p40_profiles_fit_as_gpupass_derives_them():
    rows = published_p40_rows()
    assert len(rows) == 8
    first = {}
    for name, per_gpu in rows:
        first.setdefault(name, per_gpu)  # the repeated grid_p40-4q row (8 per GPU) is the file's typo for 3Q
    address = PciAddress.parse("0000:3b:00.0")
    graphics = vgpu.HostGraphics(default_type="sharedDirect", assignment_policy="performance",
                                 profiles=tuple(first),
                                 devices={address: vgpu.GraphicsDevice(address, "sharedDirect", 24 << 30)})
    sharing = vgpu.sharing_of(graphics, address, {address: (0x10de, 0x1b38)}, {}, {})
    assert {t.id: t.max_instances for t in sharing.types} == first
    assert {t.id: t.available for t in sharing.types} == first  # nothing runs on it yet
    # the lab's P40 profiles (from the real `mdevctl types` of a P40) follow the same rule
    from gpupass.backends.esxi.lab.simulator import P40_VGPU_TYPES

    for name, framebuffer_mb, most, _ in P40_VGPU_TYPES:
        assert vgpu.profile_framebuffer(name) == framebuffer_mb << 20 and (24 << 10) // framebuffer_mb == most


def test_a_newer_boards_profile_name_is_read_like_the_grid_ones():
    text = (CORPUS / "esxi-a5000-vgx-plugin-power-on.txt").read_text(encoding="utf-8")
    (profile,) = set(re.findall(r"“(nvidia_[a-z0-9]+-\d+[a-z]\d*)”", text))
    assert profile == "nvidia_rtxa5000-1b"
    assert vgpu.profile_framebuffer(profile) == 1 << 30
    assert neutral_profile(profile) == "rtxa5000-1b"
    offered = ShareType(profile, profile, ShareMode.VGPU_PROFILE)
    assert offered.answers_to("RTXA5000-1B") and offered.answers_to("NVIDIA RTXA5000-1B")
