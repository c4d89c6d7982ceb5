"""The vSphere endpoint killed with one of gpupass's writes on the wire, modelled as docs/faults.md says: the
simulator restarted at once with its inventory (vcsim's `/gpupass/restart`), the call lost with the process or carried
out before it died, its connection closed unanswered and every session gone -- the host's configuration kept, as a
hostd/vpxd restart keeps it (assumed; tests/integration/esxi/test_esxi_endpoint_killed.py kills the process itself,
where nothing can be read afterwards). gpupass logs in again, reads the host back and reports it exactly -- undone,
done, or partial with what is left -- `status` shows what is left, and the same command again converges.

Steps: the assign's intent record, the reboot step's ExitMaintenanceMode_Task (and a rerun's exit-maintenance step),
the take-back of a run that lost the race, the release's passthrough switch-back and its record removal, the vGPU
assign's and release's reconfigure, the host graphics change (UpdateGraphicsConfig, RestartService); then the other
writes: the assign reconfigure and passthrough switch, EnterMaintenanceMode_Task, RebootHost_Task, the release
reconfigure and its undo."""

from __future__ import annotations

import pytest

from gpupass.core.domain.request import AssignmentRequest, AssignOptions, ReleaseOptions, ReleaseRequest
from gpupass.core.errors import Conflict, GpupassError, OperationFailed, PreflightFailed
from gpupass.core.service import execute

pytest.importorskip("pyVmomi")

from support.esxi_faults import restarted_when_held  # noqa: E402
from tests.integration.esxi.test_esxi_backend import A100_ACTIVE, USER, plan, target  # noqa: E402
from tests.integration.esxi.test_esxi_host_rules import T4, _t4_held_by_vmkernel, find_vm  # noqa: E402

ESX01, ESX02 = "esx01.lab.local", "esx02.lab.local"
OUTCOMES = [True, False]
IDS = ["carried-out", "lost"]


def _backend(sim):
    from gpupass.backends.esxi.backend import EsxiBackend

    return EsxiBackend(target(sim))


def _run(backend, planned, **kwargs):
    """The run's outcome: None when it finished, else its error (as the CLI would report it)."""
    try:
        execute(backend, planned, **kwargs)
    except GpupassError as error:
        return error
    return None


def _device(sim, host, pci_id):
    h = next(h for h in sim.state()["hosts"] if h["name"] == host)
    return next(d for d in h["devices"] if d["id"] == str(pci_id))


def _vm(sim, name):
    with _backend(sim) as fresh:
        return fresh.inventory().find_vm(name)


def _cli_status(sim):
    """`gpupass status` as an admin runs it (its own process), the text it prints."""
    import os
    import subprocess

    from support.cli import GPUPASS

    shown = subprocess.run([*GPUPASS, "status", f"esxi://administrator%40vsphere.local@127.0.0.1:{sim.port}/Lab",
                            "--ca-file", str(sim.ca_file)], env={**os.environ, "GPUPASS_PASSWORD": sim.password},
                           capture_output=True, text=True, stdin=subprocess.DEVNULL)
    assert shown.returncode == 0, shown.stdout + shown.stderr
    return shown.stdout


def _facts(sim):
    with _backend(sim) as fresh:
        return fresh.inventory()


# -- the assign's intent record ----------------------------------------------------------------------------------

@pytest.mark.parametrize("carried", OUTCOMES, ids=IDS)
def test_the_endpoint_killed_with_the_intent_record_on_the_wire(fresh_vcsim, carried):
    """cad-ws's assign of the T4 writes its intent record (its own ReconfigVM_Task) before the passthrough switch; the
    endpoint dies with it. gpupass logs in again and reads the VM: the record there (carried out) is removed, or none
    was written -- either way exactly as before, reported rolled back; the same assign again gives the T4."""
    sim = fresh_vcsim(username=USER)
    request = AssignmentRequest("cad-ws", (T4,))
    before, t4 = _vm(sim, "cad-ws"), _device(sim, ESX01, T4)
    with _backend(sim) as backend:
        planned = plan(backend, request)
        assert [s.action for s in planned.steps] == ["esxi.intent", "esxi.passthrough", "esxi.reconfigure"]
        sim.hold("ReconfigVM_Task")
        with restarted_when_held(sim, "ReconfigVM_Task", carried=carried) as restarted:
            error = _run(backend, planned)
        assert restarted
    assert isinstance(error, OperationFailed) and error.rolled_back is True, error
    assert "recording in VM 'cad-ws'" in error.message and "not known" in error.message, error.message
    assert _vm(sim, "cad-ws") == before and _device(sim, ESX01, T4) == t4        # exactly as it was, no record
    with _backend(sim) as again:
        execute(again, plan(again, request))
        vm = again.inventory().find_vm("cad-ws")
    assert T4 in vm.assigned and vm.unfinished == ()


# -- ExitMaintenanceMode_Task: the reboot step's, and a rerun's exit-maintenance step -----------------------------

def _rebooting_lab(fresh_vcsim):
    from pyVim.connect import Disconnect
    from pyVim.task import WaitForTask

    sim = fresh_vcsim(_t4_held_by_vmkernel(), username=USER)
    si = sim.connect()
    WaitForTask(find_vm(si, "web01").PowerOffVM_Task())  # maintenance mode waits for a host without running VMs
    Disconnect(si)
    return sim, AssignmentRequest("cad-ws", (T4,), AssignOptions(allow_host_reboot=True))


def test_the_endpoint_killed_with_exit_maintenance_carried_out_is_learnt_from_vcenter_and_the_assign_finishes(
        fresh_vcsim):
    """The reboot done, ExitMaintenanceMode_Task carried out as the endpoint dies: gpupass logs in again, finds the
    task in TaskManager.recentTask ended well and goes on -- the assign is done, nothing unfinished, one reboot."""
    sim, request = _rebooting_lab(fresh_vcsim)
    with _backend(sim) as backend:
        planned = plan(backend, request)
        sim.hold("ExitMaintenanceMode_Task")
        with restarted_when_held(sim, "ExitMaintenanceMode_Task", carried=True) as restarted:
            error = _run(backend, planned)
        assert restarted
    assert error is None, error
    facts = _facts(sim)
    vm = facts.find_vm("cad-ws")
    assert T4 in vm.assigned and vm.unfinished == () and facts.maintenance[ESX01] is False, (vm, facts.maintenance)
    assert _device(sim, ESX01, T4)["active"] is True


def test_the_endpoint_killed_with_exit_maintenance_lost_is_reported_with_the_host_as_read_back_and_a_rerun_finishes(
        fresh_vcsim):
    """ExitMaintenanceMode_Task lost with the endpoint: vCenter lists no such task, so nothing more is sent to the host
    (a blind cleanup could race it); the error says so with the host as read back -- rebooted, the T4 active, in the
    maintenance mode the run put it in; `status` shows the run's intent and the maintenance mode; the same assign again
    takes the host out (its exit-maintenance step: killed too, carried out, learnt from vCenter) and finishes."""
    sim, request = _rebooting_lab(fresh_vcsim)
    with _backend(sim) as backend:
        planned = plan(backend, request)
        sim.hold("ExitMaintenanceMode_Task")
        with restarted_when_held(sim, "ExitMaintenanceMode_Task", carried=False) as restarted:
            error = _run(backend, planned)
        assert restarted
    assert isinstance(error, OperationFailed) and error.rolled_back is False, error
    assert "vCenter lists no such task" in error.message, error.message
    assert f"nothing more was sent to host {ESX01}" in error.message, error.message
    assert "in maintenance mode" in error.message, error.message
    facts = _facts(sim)
    vm = facts.find_vm("cad-ws")
    assert T4 not in vm.assigned and facts.maintenance[ESX01] is True, (vm, facts.maintenance)
    assert _device(sim, ESX01, T4)["active"] is True and _device(sim, ESX01, T4)["enabled"] is True
    assert len(vm.unfinished) == 1 and f"host {ESX01} is in maintenance mode" in vm.unfinished[0], vm.unfinished
    status = _cli_status(sim)
    assert "UNFINISHED" in status and f"host {ESX01} is in maintenance mode" in " ".join(status.split()), status
    with _backend(sim) as again:
        rerun = plan(again, request)
        assert [s.action for s in rerun.steps] == ["esxi.intent", "esxi.exit-maintenance", "esxi.reconfigure"]
        sim.hold("ExitMaintenanceMode_Task")
        with restarted_when_held(sim, "ExitMaintenanceMode_Task", carried=True) as restarted:
            error = _run(again, rerun)
        assert restarted and error is None, error
    facts = _facts(sim)
    vm = facts.find_vm("cad-ws")
    assert T4 in vm.assigned and vm.unfinished == () and facts.maintenance[ESX01] is False


# -- the take-back of a run that lost the race -----------------------------------------------------------------------

WINNER = AssignmentRequest("render01", (A100_ACTIVE,), AssignOptions(allow_firmware_change=True))


def _winner_assigns(sim):
    with _backend(sim) as winner:
        execute(winner, plan(winner, WINNER))


@pytest.mark.parametrize("carried", OUTCOMES, ids=IDS)
def test_the_endpoint_killed_with_a_losing_runs_take_back_on_the_wire(fresh_vcsim, carried):
    """ml-train's assign writes the A100 after render01's run took it: it loses and reconfigures back, and the endpoint
    dies with that take-back. Carried out: read back, taken back -- the conflict it is, exit 6, ml-train exactly as it
    was. Lost: read back, ml-train still holds the A100 render01 holds -- said so, not rolled back, the release that
    finishes it named; `status` shows it on ml-train and that release leaves render01's A100 alone."""
    from tests.integration.esxi.test_esxi_takeback_faults import _passthrough_devices

    sim = fresh_vcsim(username=USER)
    before = _vm(sim, "ml-train")
    with _backend(sim) as loser:
        planned = plan(loser, AssignmentRequest("ml-train", (A100_ACTIVE,)))

        def another_run_wins_first(step):
            _winner_assigns(sim)
            sim.hold("ReconfigVM_Task", skip=1)   # this run's write goes; its take-back waits

        with restarted_when_held(sim, "ReconfigVM_Task", carried=carried) as restarted:
            error = _run(loser, planned, on_step=another_run_wins_first)
        assert restarted
    assert _passthrough_devices(sim, "render01") == [str(A100_ACTIVE)]
    if carried:
        assert isinstance(error, Conflict) and error.rolled_back is True, error
        assert "this run's change to VM 'ml-train' was undone" in error.message, error.message
        facts = _facts(sim)
        assert facts.find_vm("ml-train") == before and facts.find_vm("render01").unfinished == ()
        with _backend(sim) as again, pytest.raises(PreflightFailed):  # the same assign again: refused, no write
            execute(again, plan(again, AssignmentRequest("ml-train", (A100_ACTIVE,))))
        return
    assert isinstance(error, OperationFailed) and error.rolled_back is False, error
    assert "taking this run's change to VM 'ml-train' back failed" in error.message, error.message
    assert "read back, the VM still holds it" in error.message, error.message
    assert "gpupass release HOST ml-train" in error.remedy, error.remedy
    vm = _vm(sim, "ml-train")
    assert vm.assigned == (A100_ACTIVE,), vm
    assert any("which VM 'render01' holds too" in n for n in vm.unfinished), vm.unfinished
    assert "which VM 'render01' holds too" in " ".join(_cli_status(sim).split())
    with _backend(sim) as again:
        execute(again, plan(again, ReleaseRequest("ml-train", (A100_ACTIVE,))))
    facts = _facts(sim)
    assert facts.find_vm("ml-train").assigned == () and facts.find_vm("ml-train").unfinished == ()
    assert facts.find_vm("render01").assigned == (A100_ACTIVE,) and facts.find_vm("render01").unfinished == ()
    assert _passthrough_devices(sim, "render01") == [str(A100_ACTIVE)]


# -- the release's passthrough switch-back and its record removal --------------------------------------------------

def _released_with_a_restart(fresh_vcsim, call, skip, carried):
    from tests.integration.esxi.test_esxi_release_faults import _assigned

    sim = fresh_vcsim(username=USER)
    backend, before, assigned = _assigned(sim)
    a100 = _device(sim, ESX02, A100_ACTIVE)
    request = ReleaseRequest("ml-train", options=ReleaseOptions(disable_host_passthrough=True))
    try:
        planned = plan(backend, request)
        assert [s.action for s in planned.steps] == ["esxi.reconfigure", "esxi.passthrough", "esxi.end-intent"]
        sim.hold(call, skip=skip)
        with restarted_when_held(sim, call, carried=carried) as restarted:
            error = _run(backend, planned)
        assert restarted
    finally:
        backend.close()
    return sim, request, before, assigned, a100, error


@pytest.mark.parametrize("carried", OUTCOMES, ids=IDS)
def test_the_endpoint_killed_with_the_release_switch_back_on_the_wire(fresh_vcsim, carried):
    """The release took the A100 from ml-train; the endpoint dies with UpdatePassthruConfig (passthrough off). gpupass
    logs in again and reads the host: switched off (carried out) -- switched on again -- or not; then the reconfigure is
    taken back: exactly as before the release, reported rolled back; the same release again converges."""
    sim, request, before, assigned, a100, error = _released_with_a_restart(fresh_vcsim, "UpdatePassthruConfig", 0,
                                                                           carried)
    assert isinstance(error, OperationFailed) and error.rolled_back is True, error
    assert "disabling passthrough" in error.message and "not known" in error.message, error.message
    assert _vm(sim, "ml-train") == assigned and _device(sim, ESX02, A100_ACTIVE) == a100
    with _backend(sim) as again:
        execute(again, plan(again, request))
    vm = _vm(sim, "ml-train")
    assert vm.assigned == () and vm.unfinished == () and _device(sim, ESX02, A100_ACTIVE)["enabled"] is False


@pytest.mark.parametrize("carried", OUTCOMES, ids=IDS)
def test_the_endpoint_killed_with_the_release_record_removal_on_the_wire(fresh_vcsim, carried):
    """The release's last ReconfigVM_Task (its record removed, after the switch-back) dies with the endpoint. Read back:
    removed (carried out) or still there -- either way the release is taken back whole (record, switch-back,
    reconfigure): exactly as before it, reported rolled back; the same release again converges."""
    sim, request, before, assigned, a100, error = _released_with_a_restart(fresh_vcsim, "ReconfigVM_Task", 1, carried)
    assert isinstance(error, OperationFailed) and error.rolled_back is True, error
    assert "not known" in error.message, error.message
    assert _vm(sim, "ml-train") == assigned and _device(sim, ESX02, A100_ACTIVE) == a100
    with _backend(sim) as again:
        execute(again, plan(again, request))
    vm = _vm(sim, "ml-train")
    assert vm.assigned == () and vm.unfinished == () and _device(sim, ESX02, A100_ACTIVE)["enabled"] is False


# -- vGPU: the reconfigure, and the host graphics change before it ---------------------------------------------------

@pytest.mark.parametrize("carried", OUTCOMES, ids=IDS)
def test_the_endpoint_killed_with_the_vgpu_reconfigure_on_the_wire(fresh_vcsim, carried):
    """infer01's vGPU assign (one ReconfigVM_Task: the vGPU, the reservation, gpupass's record) dies with the endpoint:
    read back, taken back (carried out) or found not made -- exactly as before, rolled back; the same assign again
    gives the vGPU."""
    from tests.integration.esxi.test_esxi_vgpu_assign import assign, backend_for

    sim = fresh_vcsim()
    with backend_for(sim) as backend:
        before = backend.inventory().find_vm("infer01")
        planned = plan(backend, assign("infer01"))
        assert [s.action for s in planned.steps] == ["esxi.vgpu"]
        sim.hold("ReconfigVM_Task")
        with restarted_when_held(sim, "ReconfigVM_Task", carried=carried) as restarted:
            error = _run(backend, planned)
        assert restarted
    assert isinstance(error, OperationFailed) and error.rolled_back is True, error
    assert "not known" in error.message, error.message
    with backend_for(sim) as again:
        assert again.inventory().find_vm("infer01") == before
        execute(again, plan(again, assign("infer01")))
        vm = again.inventory().find_vm("infer01")
        assert vm.unfinished == () and any(g.sharing.held_by("infer01") for g in again.inventory().gpus)


@pytest.mark.parametrize("call", ["UpdateGraphicsConfig", "RestartService"])
@pytest.mark.parametrize("carried", OUTCOMES, ids=IDS)
def test_the_endpoint_killed_with_the_host_graphics_change_on_the_wire(fresh_vcsim, call, carried):
    """infer01's vGPU assign with --allow-host-sharing-change: its intent record, then the host's graphics change
    (UpdateGraphicsConfig, then RestartService "xorg"), then the VM's reconfigure. The endpoint dies with one of the
    host calls: gpupass logs in again, reads the host's graphics configuration -- changed (set back, Xorg restarted) or
    not -- and the run's record goes: exactly as before, rolled back; the same assign again converges."""
    from gpupass.backends.esxi.lab.simulator import lab_config
    from tests.integration.esxi.test_esxi_vgpu_backend import backend_for
    from tests.integration.esxi.test_esxi_vgpu_host_change import B, gpu, request

    cfg = lab_config()
    next(g for g in cfg["hosts"][2]["gpus"] if g["address"] == B)["graphics_type"] = "shared"
    sim = fresh_vcsim(cfg)
    with backend_for(sim) as backend:
        facts = backend.inventory()
        before, settings = facts.find_vm("infer01"), facts.host.settings
        planned = plan(backend, request(True))
        assert [s.action for s in planned.steps] == ["esxi.intent", "esxi.graphics", "esxi.vgpu"], planned.steps
        sim.hold(call)
        with restarted_when_held(sim, call, carried=carried) as restarted:
            error = _run(backend, planned)
        assert restarted
    assert isinstance(error, OperationFailed) and error.rolled_back is True, error
    assert "not known" in error.message, error.message
    with backend_for(sim) as again:
        facts = again.inventory()
        assert facts.find_vm("infer01") == before and facts.host.settings == settings
        assert gpu(facts).sharing.host_change  # still in shared mode: the switch set back (or never made)
        execute(again, plan(again, request(True)))
        facts = again.inventory()
        assert facts.find_vm("infer01").unfinished == () and not gpu(facts).sharing.host_change


@pytest.mark.parametrize("carried", OUTCOMES, ids=IDS)
def test_the_endpoint_killed_with_the_vgpu_release_reconfigure_on_the_wire(fresh_vcsim, carried):
    """infer01's vGPU release (one ReconfigVM_Task: the vGPU, the reservation and gpupass's record taken back) dies
    with the endpoint: read back -- released, so put back (carried out), or found not made -- the VM exactly as it was
    with its vGPU, rolled back; the same release again converges."""
    from tests.integration.esxi.test_esxi_vgpu_assign import assign, backend_for, release

    sim = fresh_vcsim()
    with backend_for(sim) as backend:
        original = backend.inventory().find_vm("infer01")
        execute(backend, plan(backend, assign("infer01")))
        held = backend.inventory().find_vm("infer01")
        planned = plan(backend, release("infer01"))
        assert [s.action for s in planned.steps] == ["esxi.vgpu"]
        sim.hold("ReconfigVM_Task")
        with restarted_when_held(sim, "ReconfigVM_Task", carried=carried) as restarted:
            error = _run(backend, planned)
        assert restarted
    assert isinstance(error, OperationFailed) and error.rolled_back is True, error
    assert "not known" in error.message, error.message
    with backend_for(sim) as again:
        assert again.inventory().find_vm("infer01") == held
        execute(again, plan(again, release("infer01")))
        assert again.inventory().find_vm("infer01") == original


# -- the other writes, under the same model (test_esxi_endpoint_killed.py kills the process on them) ---------------

@pytest.mark.parametrize("carried", OUTCOMES, ids=IDS)
def test_the_endpoint_killed_with_the_assign_reconfigure_on_the_wire(fresh_vcsim, carried):
    """ml-train's assign of the A100 (one ReconfigVM_Task: the device, its claim and the settings) dies with the
    endpoint: read back over a new session, taken back or not made -- exactly as before, claim included, rolled back;
    the same assign again gives the A100."""
    sim = fresh_vcsim(username=USER)
    request = AssignmentRequest("ml-train", (A100_ACTIVE,))
    before = _vm(sim, "ml-train")
    with _backend(sim) as backend:
        planned = plan(backend, request)
        assert [s.action for s in planned.steps] == ["esxi.reconfigure"]
        sim.hold("ReconfigVM_Task")
        with restarted_when_held(sim, "ReconfigVM_Task", carried=carried) as restarted:
            error = _run(backend, planned)
        assert restarted
    assert isinstance(error, OperationFailed) and error.rolled_back is True, error
    assert "reconfiguring VM 'ml-train'" in error.message and "not known" in error.message, error.message
    assert _vm(sim, "ml-train") == before
    with _backend(sim) as again:
        execute(again, plan(again, request))
        assert again.inventory().find_vm("ml-train").assigned == (A100_ACTIVE,)


@pytest.mark.parametrize("carried", OUTCOMES, ids=IDS)
def test_the_endpoint_killed_with_the_assign_passthrough_switch_on_the_wire(fresh_vcsim, carried):
    """cad-ws's assign of the T4: its intent record written, the endpoint dies with UpdatePassthruConfig (applyNow). The
    host read back over a new session: switched (then switched off again) or not; the record removed -- the T4 and the
    VM exactly as before, rolled back; the same assign again gives the T4."""
    sim = fresh_vcsim(username=USER)
    request = AssignmentRequest("cad-ws", (T4,))
    before, t4 = _vm(sim, "cad-ws"), _device(sim, ESX01, T4)
    with _backend(sim) as backend:
        planned = plan(backend, request)
        sim.hold("UpdatePassthruConfig")
        with restarted_when_held(sim, "UpdatePassthruConfig", carried=carried) as restarted:
            error = _run(backend, planned)
        assert restarted
    assert isinstance(error, OperationFailed) and error.rolled_back is True, error
    assert "enabling passthrough" in error.message and "not known" in error.message, error.message
    assert _vm(sim, "cad-ws") == before and _device(sim, ESX01, T4) == t4
    with _backend(sim) as again:
        execute(again, plan(again, request))
        assert T4 in again.inventory().find_vm("cad-ws").assigned


@pytest.mark.parametrize("call", ["EnterMaintenanceMode_Task", "RebootHost_Task"])
@pytest.mark.parametrize("carried", OUTCOMES, ids=IDS)
def test_the_endpoint_killed_with_a_host_task_of_the_reboot_step_on_the_wire(fresh_vcsim, call, carried):
    """The reboot step's EnterMaintenanceMode_Task or RebootHost_Task dies with the endpoint. Carried out: the task
    found in TaskManager.recentTask over a new session, ended well -- the assign goes on and is done (one reboot).
    Lost: vCenter lists no such task, so nothing more is sent to the host; the error gives the host as read back, the
    run's switch and intent are kept for `status`, and the same assign again finishes."""
    sim, request = _rebooting_lab(fresh_vcsim)
    with _backend(sim) as backend:
        planned = plan(backend, request)
        sim.hold(call)
        with restarted_when_held(sim, call, carried=carried) as restarted:
            error = _run(backend, planned)
        assert restarted
    facts = _facts(sim)
    vm = facts.find_vm("cad-ws")
    if carried:
        assert error is None, error
        assert T4 in vm.assigned and vm.unfinished == () and facts.maintenance[ESX01] is False, vm
        assert _device(sim, ESX01, T4)["active"] is True
        return
    assert isinstance(error, OperationFailed) and error.rolled_back is False, error
    assert "vCenter lists no such task" in error.message, error.message
    assert f"nothing more was sent to host {ESX01}" in error.message and "read back:" in error.message, error.message
    assert T4 not in vm.assigned and len(vm.unfinished) == 1, vm
    assert _device(sim, ESX01, T4)["enabled"] is True and _device(sim, ESX01, T4)["active"] is False
    assert facts.maintenance[ESX01] is (call == "RebootHost_Task"), facts.maintenance  # entered, or never
    with _backend(sim) as again:
        execute(again, plan(again, request))
    facts = _facts(sim)
    vm = facts.find_vm("cad-ws")
    assert T4 in vm.assigned and vm.unfinished == () and facts.maintenance[ESX01] is False
    assert _device(sim, ESX01, T4)["active"] is True


@pytest.mark.parametrize("carried", OUTCOMES, ids=IDS)
def test_the_endpoint_killed_with_the_release_reconfigure_on_the_wire(fresh_vcsim, carried):
    """ml-train's release of the A100 (one ReconfigVM_Task) dies with the endpoint: read back, put back or not made --
    exactly as before the release, record included, rolled back; the same release again restores the VM."""
    from tests.integration.esxi.test_esxi_release_faults import _assigned

    sim = fresh_vcsim(username=USER)
    backend, before, assigned = _assigned(sim)
    try:
        planned = plan(backend, ReleaseRequest("ml-train"))
        sim.hold("ReconfigVM_Task")
        with restarted_when_held(sim, "ReconfigVM_Task", carried=carried) as restarted:
            error = _run(backend, planned)
        assert restarted
    finally:
        backend.close()
    assert isinstance(error, OperationFailed) and error.rolled_back is True, error
    assert _vm(sim, "ml-train") == assigned
    with _backend(sim) as again:
        execute(again, plan(again, ReleaseRequest("ml-train")))
    assert _vm(sim, "ml-train") == before


@pytest.mark.parametrize("carried", OUTCOMES, ids=IDS)
def test_the_endpoint_killed_with_the_undo_of_a_release_on_the_wire(fresh_vcsim, carried):
    """The release's reconfigure carried out with its answer lost; its undo (the second ReconfigVM_Task) dies with the
    endpoint. Read back over a new session: carried out -- the A100 back once with its record, reported rolled back;
    lost -- the VM still released, said so (`rolled_back` false), and that is the release done: `status` has nothing
    unfinished and the same release again has nothing to do."""
    from tests.integration.esxi.test_esxi_release_faults import _assigned

    sim = fresh_vcsim(username=USER)
    backend, before, assigned = _assigned(sim)
    try:
        planned = plan(backend, ReleaseRequest("ml-train"))
        sim.hold("ReconfigVM_Task", skip=1)   # the release's goes (its answer dropped), the undo waits
        sim.drop_reply("ReconfigVM_Task")
        with restarted_when_held(sim, "ReconfigVM_Task", carried=carried) as restarted:
            error = _run(backend, planned)
        assert restarted
    finally:
        backend.close()
    assert isinstance(error, OperationFailed), error
    if carried:
        assert error.rolled_back is True, error.message
        assert _vm(sim, "ml-train") == assigned
        with _backend(sim) as again:
            execute(again, plan(again, ReleaseRequest("ml-train")))
    else:
        assert error.rolled_back is False, error.message
        assert "read back, the VM still holds it" in error.message, error.message
        with _backend(sim) as again:
            assert plan(again, ReleaseRequest("ml-train")).steps == ()
    assert _vm(sim, "ml-train") == before
