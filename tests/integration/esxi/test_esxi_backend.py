"""The ESXi backend through the core service and the CLI, against the vSphere simulator (real pyvmomi, TLS)."""

from __future__ import annotations


import pytest

from gpupass.backends.esxi.lab.simulator import make_tls_material
from gpupass.core import plugins
from gpupass.core.domain.inventory import Firmware, PowerState
from gpupass.core.domain.mmio import GiB
from gpupass.core.domain.pci import PciAddress
from gpupass.core.domain.request import AssignmentRequest, AssignOptions, ReleaseOptions, ReleaseRequest
from gpupass.core.domain.select import GpuSelector
from gpupass.core.errors import AuthenticationFailed, ConnectionFailed, NotSupported, OperationFailed, PreflightFailed
from gpupass.core.service import execute, make_plan
from gpupass.core.target import Secret, Target, TlsOptions

pytest.importorskip("pyVmomi")

USER = "administrator@vsphere.local"
H100 = PciAddress.parse("0000:3b:00.0")
A100_ACTIVE = PciAddress.parse("0000:3b:00.0")
A100_OFF = PciAddress.parse("0000:af:00.0")
T4 = PciAddress.parse("0000:d8:00.0")


def registry():
    # The plugin comes through its entry point, exactly as a third-party backend's would.
    registry = plugins.default_registry()
    assert any(b.platform == "esxi" for b in registry.backends), "the esxi entry point is not installed"
    return registry


def target(sim, password=None, ca_file=None, verify=True) -> Target:
    return Target(uri=f"esxi://administrator%40vsphere.local@127.0.0.1:{sim.port}/Lab", name="vcsim",
                  password=Secret(password or sim.password),
                  tls=TlsOptions(verify=verify, ca_file=str(ca_file or sim.ca_file)))


@pytest.fixture
def sim(fresh_vcsim):
    return fresh_vcsim(username=USER)


@pytest.fixture
def backend(sim):
    from gpupass.backends.esxi.backend import EsxiBackend

    b = EsxiBackend(target(sim))
    yield b
    b.close()


def plan(backend, request):
    return make_plan(backend, backend.inventory(), request, registry())


def codes(result, blocking=True):
    return {f.code for f in result.findings if f.blocks or not blocking}


def gpu(facts, location, address):
    return next(g for g in facts.gpus if g.location == location and g.address == address)


def test_inventory_in_one_property_collector_read(backend):
    facts = backend.inventory()
    first = backend.round_trips
    # service content, the datacenter lookup, the container view, ONE RetrievePropertiesEx, view.Destroy
    assert first <= 6
    backend.inventory()
    assert backend.round_trips - first <= 4  # the datacenter and content are cached
    h100 = gpu(facts, "esx01.lab.local", H100)
    assert h100.model == "NVIDIA H100 SXM5 80GB" and h100.assigned_to == "cad-ws"
    assert (h100.passthrough.capable, h100.passthrough.enabled, h100.passthrough.active) == (True, True, True)
    assert gpu(facts, "esx02.lab.local", A100_OFF).passthrough.enabled is False
    assert h100.function.vendor_id == 0x10DE and h100.function.class_code == 0x030200
    assert h100.bars is not None  # from the catalog: vSphere does not report BARs
    cad = facts.find_vm("cad-ws")
    assert cad.location == "esx01.lab.local" and cad.assigned == (H100,)
    assert cad.mmio_window_bytes == 256 * GiB and cad.memory_reserved_bytes == cad.memory_bytes
    assert facts.find_vm("web01").power_state is PowerState.RUNNING
    assert facts.find_vm("render01").firmware is Firmware.BIOS
    assert facts.find_vm("snap01").snapshots == 1
    assert facts.host.settings["hosts"]["esx02.lab.local"]["cluster"] == "gpu-cluster"


def test_signed_16_bit_ids_are_masked(backend):
    facts = backend.inventory()
    intel = [f for (loc, _), f in facts.functions.items() if f.vendor_id == 0x8086]
    assert intel, "the simulator's Intel chipset functions (vendorId -32634 on the wire)"
    assert all(0 <= f.vendor_id <= 0xFFFF and 0 <= f.device_id <= 0xFFFF for f in facts.functions.values())


def test_enable_reboot_assign_release_restores_the_vm_exactly(backend, sim):
    before = backend.inventory().find_vm("ml-train")
    blocked = plan(backend, AssignmentRequest("ml-train", (A100_OFF,)))
    assert "host-reboot-required" in codes(blocked)
    result = plan(backend, AssignmentRequest("ml-train", (A100_OFF,), AssignOptions(allow_host_reboot=True)))
    assert not result.blocked
    assert [s.action for s in result.steps] == ["esxi.intent", "esxi.passthrough", "esxi.reboot", "esxi.reconfigure"]
    assert result.needs_host_reboot
    preview = result.steps[-1].preview
    assert "pciPassthru.64bitMMIOSizeGB: (unset) -> 256" in preview and "memoryReservationLockedToMax" in preview
    outcome = execute(backend, result)
    vm = outcome.facts_after.find_vm("ml-train")
    assert vm.assigned == (A100_OFF,) and vm.memory_reserved_bytes == vm.memory_bytes
    assert vm.mmio_window_bytes == 256 * GiB
    assert gpu(outcome.facts_after, "esx02.lab.local", A100_OFF).passthrough.active
    release = plan(backend, ReleaseRequest("ml-train"))
    after = execute(backend, release).facts_after
    assert after.find_vm("ml-train") == before


def test_assign_of_an_active_gpu_is_one_reconfigure_and_release_removes_the_keys(backend):
    facts = backend.inventory()
    assert facts.find_vm("cad-ws").mmio_window_bytes == 256 * GiB
    result = plan(backend, AssignmentRequest("ml-train", (A100_ACTIVE,)))
    assert not result.blocked, [f for f in result.findings if f.blocks]
    assert [s.action for s in result.steps] == ["esxi.reconfigure"]
    execute(backend, result)
    execute(backend, plan(backend, ReleaseRequest("ml-train")))
    vm = backend.inventory().find_vm("ml-train")
    assert vm.mmio_window_bytes is None and vm.memory_reserved_bytes == 0 and vm.assigned == ()


def test_dynamic_directpath(backend):
    result = plan(backend, AssignmentRequest("ml-train", (A100_ACTIVE,), AssignOptions(dynamic=True)))
    assert "DynamicBackingInfo allowedDevice=10de:20b5" in result.steps[-1].preview
    facts = execute(backend, result).facts_after
    vm = facts.find_vm("ml-train")
    assert vm.binding == "dynamic" and vm.assigned == (A100_ACTIVE,)
    execute(backend, plan(backend, ReleaseRequest("ml-train")))
    assert backend.inventory().find_vm("ml-train").assigned == ()


def test_dynamic_is_not_supported_before_vsphere_7(fresh_vcsim):
    from gpupass.backends.esxi.backend import EsxiBackend

    old = fresh_vcsim(username=USER, api_version="6.7.3")
    with EsxiBackend(target(old)) as b:
        with pytest.raises(NotSupported, match="Dynamic DirectPath"):
            plan(b, AssignmentRequest("ml-train", (A100_ACTIVE,), AssignOptions(dynamic=True)))


@pytest.mark.parametrize("vm, address, options, code", [
    ("snap01", A100_ACTIVE, AssignOptions(), "esxi-snapshots"),
    ("web01", T4, AssignOptions(allow_host_reboot=True), "vm-not-off"),
    ("render01", A100_ACTIVE, AssignOptions(), "firmware-bios-large-bar"),
    ("ml-train", A100_OFF, AssignOptions(), "host-reboot-required"),
    ("ml-train", T4, AssignOptions(allow_host_reboot=True), "esxi-gpu-on-other-host"),
])
def test_blocking_findings(backend, vm, address, options, code):
    result = plan(backend, AssignmentRequest(vm, (address,), options))
    assert code in codes(result)
    with pytest.raises(PreflightFailed):
        execute(backend, result)


def test_gpu_of_cad_ws_is_assigned_elsewhere(fresh_vcsim):
    from gpupass.backends.esxi.backend import EsxiBackend
    from gpupass.backends.esxi.lab.simulator import lab_config

    config = lab_config()
    config["vms"].append({"name": "cad-2", "host": "esx01.lab.local", "power_state": "poweredOff",
                          "firmware": "efi", "memory_mb": 8192})
    other = fresh_vcsim(config, username=USER)
    with EsxiBackend(target(other)) as b:
        assert "gpu-assigned-elsewhere" in codes(plan(b, AssignmentRequest("cad-2", (H100,))))


def test_bios_vm_with_firmware_change_allowed_gets_efi_and_back(backend):
    before = backend.inventory().find_vm("render01")
    result = plan(backend, AssignmentRequest("render01", (A100_ACTIVE,), AssignOptions(allow_firmware_change=True,
                                                                                        hide_hypervisor=True)))
    assert not result.blocked
    assert "firmware: bios -> efi" in result.steps[-1].preview
    vm = execute(backend, result).facts_after.find_vm("render01")
    assert vm.firmware is Firmware.EFI and vm.hypervisor_hidden
    assert execute(backend, plan(backend, ReleaseRequest("render01"))).facts_after.find_vm("render01") == before


def test_wrong_password(sim):
    from gpupass.backends.esxi.backend import EsxiBackend

    with pytest.raises(AuthenticationFailed):
        EsxiBackend(target(sim, password="wrong")).inventory()


def test_untrusted_certificate(sim, tmp_path):
    from gpupass.backends.esxi.backend import EsxiBackend

    other_ca = make_tls_material(tmp_path)["ca"]
    with pytest.raises(ConnectionFailed, match="not trusted"):
        EsxiBackend(target(sim, ca_file=other_ca)).inventory()
    # --insecure is explicit and works
    with EsxiBackend(target(sim, ca_file=other_ca, verify=False)) as b:
        assert b.inventory().find_vm("ml-train")


def test_host_vanishing_mid_operation_leaves_the_vm_as_it_was(backend, sim):
    before = backend.inventory().find_vm("ml-train")
    result = plan(backend, AssignmentRequest("ml-train", (A100_ACTIVE,)))
    sim.disconnect_host("esx02.lab.local", after="ReconfigVM_Task")
    with pytest.raises(OperationFailed) as err:
        execute(backend, result)
    assert err.value.rolled_back
    assert "HostNotConnected" in err.value.message
    sim.reconnect_host("esx02.lab.local")
    assert backend.inventory().find_vm("ml-train") == before


def test_release_can_disable_host_passthrough(backend):
    execute(backend, plan(backend, AssignmentRequest("ml-train", (A100_ACTIVE,))))
    release = plan(backend, ReleaseRequest("ml-train", options=ReleaseOptions(disable_host_passthrough=True)))
    assert [s.action for s in release.steps] == ["esxi.reconfigure", "esxi.passthrough", "esxi.end-intent"]
    facts = execute(backend, release).facts_after
    state = gpu(facts, "esx02.lab.local", A100_ACTIVE).passthrough
    assert state.enabled is False and state.active is True  # until the next reboot


def test_features_lost_are_reported(backend):
    result = plan(backend, AssignmentRequest("ml-train", (A100_ACTIVE,)))
    features = {f.feature for f in result.features_lost}
    assert {"vMotion", "Fault Tolerance", "suspend / resume", "nested virtualization"} <= features


def test_cli_gpus_and_plan(sim, tmp_path, monkeypatch):
    from click.testing import CliRunner

    from gpupass.core.cli.main import cli

    registry()
    monkeypatch.setenv("GPUPASS_PASSWORD", sim.password)
    uri = f"esxi://administrator%40vsphere.local@127.0.0.1:{sim.port}/Lab"
    runner = CliRunner()
    result = runner.invoke(cli, ["--ca-file", str(sim.ca_file), "gpus", uri, "--json"])
    assert result.exit_code == 0, result.output
    assert sim.password not in result.output
    result = runner.invoke(cli, ["--ca-file", str(sim.ca_file), "plan", uri, "ml-train", "0000:3b:00.0",
                                 "--show-changes"])
    assert result.exit_code == 0, result.output
    assert "ReconfigVM_Task" in result.output and "vMotion" in result.output


# -- typed steps: the payload's type picks the handler, the action label is only a label -------------

def test_steps_carry_typed_payloads_and_run_by_their_type_whatever_their_label(backend):
    import dataclasses

    from gpupass.backends.esxi.steps import Intent, Passthrough, Reboot, Reconfigure

    result = plan(backend, AssignmentRequest("ml-train", (A100_OFF,), AssignOptions(allow_host_reboot=True)))
    assert [type(s.payload) for s in result.steps] == [Intent, Passthrough, Reboot, Reconfigure]
    passthrough = result.steps[1].payload
    assert passthrough.host == "esx02.lab.local" and passthrough.enable and str(A100_OFF) in passthrough.ids
    relabelled = dataclasses.replace(result, steps=tuple(dataclasses.replace(s, action="x") for s in result.steps))
    assert execute(backend, relabelled).facts_after.find_vm("ml-train").assigned == (A100_OFF,)


def test_a_payload_the_esxi_backend_does_not_know_is_refused_and_changes_nothing(backend):
    import dataclasses

    before = backend.inventory().find_vm("ml-train")
    result = plan(backend, AssignmentRequest("ml-train", (A100_ACTIVE,)))
    unknown = dataclasses.replace(result.steps[-1], payload={"vm": "ml-train", "changes": {}})
    with pytest.raises(OperationFailed) as caught:
        execute(backend, dataclasses.replace(result, steps=(unknown,)))
    assert "cannot carry out a step of type dict" in caught.value.message
    assert backend.inventory().find_vm("ml-train") == before


def test_every_esxi_payload_type_survives_a_snapshot_round_trip(backend, sim, tmp_path):
    from pyVim.task import WaitForTask
    from pyVmomi import vim

    from gpupass.backends.esxi import claims as esxi_claims
    from tests.integration.esxi.test_esxi_host_rules import find_vm
    from tests.support.snapshots import payload_types, payloads_survive_a_snapshot

    # render01 carries the intent of a run stopped after putting esx02 in maintenance mode for its reboot: an
    # assign to it plans the step that takes the host out again (ExitMaintenance)
    si = sim.connect()
    left = esxi_claims.encode_intent("assign", [str(A100_OFF)], ["reboot host esx02.lab.local"], ["esx02.lab.local"])
    WaitForTask(find_vm(si, "render01").ReconfigVM_Task(vim.vm.ConfigSpec(
        extraConfig=[vim.option.OptionValue(key=esxi_claims.INTENT_KEY, value=left)])))
    WaitForTask(find_vm(si, "render01").runtime.host.EnterMaintenanceMode_Task(timeout=0))
    requests = [AssignmentRequest("render01", (A100_ACTIVE,), AssignOptions(allow_firmware_change=True)),
                AssignmentRequest("ml-train", (A100_OFF,), AssignOptions(allow_host_reboot=True)),
                AssignmentRequest("ml-train", (A100_ACTIVE,)),
                ReleaseRequest("cad-ws", options=ReleaseOptions(disable_host_passthrough=True)),
                # a vGPU on the shared-direct host (backends/esxi/shares.py)
                AssignmentRequest("infer01", (GpuSelector("esx03.lab.local/0000:af:00.0"),),
                                  AssignOptions(share="grid_p40-4c"))]
    # the host graphics switch is planned by ex_plan_host_graphics, from the facts alone (backends/esxi/graphics.py)
    graphics = [lambda b, facts: b.ex_plan_host_graphics(facts, "esx03.lab.local", assignment_policy="consolidation",
                                                         device_types={"0000:af:00.0": "shared"})]
    assert payloads_survive_a_snapshot(backend, requests, tmp_path, graphics) == payload_types("esxi")
