"""Faults on ESXi undos (docs/faults.md's `... undo` rows) and on a rerun's exit from maintenance mode. Each run rolls
back because a reply was dropped after vSphere carried the write out (read back, found done, undone); then the undo
under test gets the second fault -- the client killed with it on the wire, the endpoint killed (restarted with its
state) with it on the wire, the endpoint frozen before it, or its reply dropped (tests/support/esxi_undo_faults.py).
Each time the host is exactly as before, or what is left is reported and shown by `status`, and the same command again
converges.

The undos: an assign's passthrough switch-back and the removal of its intent record (cad-ws and the T4 on esx01,
which switches passthrough at once); a release's record put back; a vGPU take-back; a host graphics change set back;
a rerun's exit from the maintenance mode a stopped run left, taken back by EnterMaintenanceMode_Task.
"""

from __future__ import annotations

import json
import subprocess

import pytest

from gpupass.core.domain.request import AssignmentRequest, ReleaseOptions, ReleaseRequest
from gpupass.core.errors import OperationFailed
from gpupass.core.plugins import default_registry
from gpupass.core.service import execute, make_plan

pytest.importorskip("pyVmomi")

from support.cli import GPUPASS  # noqa: E402
from support.esxi_undo_faults import (UndoRun, dropped_reply_of_the_undo, frozen_before_the_undo,  # noqa: E402
                                      killed_with_the_undo_held, restarted_when_held_at_the_undo)
from tests.integration.esxi.test_esxi_backend import USER, target  # noqa: E402
from tests.integration.esxi.test_esxi_host_rules import T4  # noqa: E402

ESX01 = "esx01.lab.local"
REQUEST = AssignmentRequest("cad-ws", (T4,))


def _lab(fresh_vcsim, first, undo):
    sim = fresh_vcsim(username=USER)
    run = UndoRun(sim, target(sim), REQUEST, ["assign", "", "cad-ws", str(T4)], first, undo)
    run.args[1] = run.uri
    return run


def passthrough_undo(fresh_vcsim):
    """The VM's reconfigure (the second ReconfigVM_Task, after the intent record's) carried out, its reply dropped: read
    back and taken back, then the switch-back (the second UpdatePassthruConfig) and the record's removal."""
    return _lab(fresh_vcsim, ("ReconfigVM_Task", 1), ("UpdatePassthruConfig", 1))


def intent_undo(fresh_vcsim):
    """The passthrough switch carried out, its reply dropped: read back, switched back, then the intent record's
    removal (the second ReconfigVM_Task)."""
    return _lab(fresh_vcsim, ("UpdatePassthruConfig", 0), ("ReconfigVM_Task", 1))


def t4(run):
    host = next(h for h in run.sim.state()["hosts"] if h["name"] == ESX01)
    return next(d for d in host["devices"] if d["id"] == str(T4))


def cad_ws(run):
    """cad-ws as `gpupass status --json` shows it."""
    shown = subprocess.run([*GPUPASS, "status", run.uri, "--json", "--ca-file", str(run.sim.ca_file)], env=run.env,
                           capture_output=True, text=True, stdin=subprocess.DEVNULL)
    assert shown.returncode == 0, shown.stdout + shown.stderr
    return next(v for v in json.loads(shown.stdout)["vms"] if v["name"] == "cad-ws")


def exactly_before(run):
    vm = cad_ws(run)
    assert str(T4) not in vm["assigned"] and vm["unfinished"] == [], vm
    assert (t4(run)["enabled"], t4(run)["active"]) == (False, False)


def the_intent_shown(run, passthrough_on):
    vm = cad_ws(run)
    assert str(T4) not in vm["assigned"] and len(vm["unfinished"]) == 1, vm
    assert "run the same `gpupass assign` again" in vm["unfinished"][0], vm["unfinished"]
    assert t4(run)["enabled"] is passthrough_on


def a_rerun_converges(run):
    again = subprocess.run([*GPUPASS, *run.args, "--yes", "--ca-file", str(run.sim.ca_file)], env=run.env,
                           capture_output=True, text=True, stdin=subprocess.DEVNULL)
    assert again.returncode == 0, again.stdout + again.stderr
    vm = cad_ws(run)
    assert str(T4) in vm["assigned"] and vm["unfinished"] == [], vm


def rolled_back_exactly(error, run):
    assert isinstance(error, OperationFailed) and error.rolled_back is True, error
    exactly_before(run)


# -- the passthrough switch-back ------------------------------------------------------------------------------------
@pytest.mark.parametrize("discard", [False, True], ids=["carried-out", "lost-on-the-way"])
def test_a_client_killed_with_the_passthrough_undo_on_the_wire(fresh_vcsim, discard):
    """Carried out: the T4 switched back, the run's record still in the VM (its removal never sent): `status` shows
    it. Lost: the T4 still on, the record there too. Either way the same assign again finishes."""
    run = passthrough_undo(fresh_vcsim)
    killed_with_the_undo_held(run, discard=discard)
    the_intent_shown(run, passthrough_on=discard)
    a_rerun_converges(run)


@pytest.mark.parametrize("carried", [True, False], ids=["carried-out", "lost"])
def test_the_endpoint_killed_with_the_passthrough_undo_on_the_wire(fresh_vcsim, carried):
    """No answer to the switch-back: gpupass logs in again and reads the host -- switched back, or switched once more
    -- then removes its record: exactly as before, reported rolled back."""
    run = passthrough_undo(fresh_vcsim)
    error = restarted_when_held_at_the_undo(run, carried=carried)
    rolled_back_exactly(error, run)
    a_rerun_converges(run)


def test_an_endpoint_frozen_before_the_passthrough_undo(fresh_vcsim):
    """The switch-back and everything after it get no answer within the timeout: reported not rolled back, with the
    steps left; thawed, the host switches the T4 back, and the record stays for `status`; the same assign finishes."""
    run = passthrough_undo(fresh_vcsim)
    error = frozen_before_the_undo(run, "disabling passthrough", 1, carried_out=lambda: not t4(run)["enabled"])
    assert "could not be undone" in error.message and "enable passthrough" in error.message, error.message
    the_intent_shown(run, passthrough_on=False)
    a_rerun_converges(run)


def test_a_dropped_reply_to_the_passthrough_undo_is_read_back(fresh_vcsim):
    run = passthrough_undo(fresh_vcsim)
    error = dropped_reply_of_the_undo(run)
    rolled_back_exactly(error, run)
    a_rerun_converges(run)


# -- the removal of the intent record --------------------------------------------------------------------------------
@pytest.mark.parametrize("discard", [False, True], ids=["carried-out", "lost-on-the-way"])
def test_a_client_killed_with_the_intent_undo_on_the_wire(fresh_vcsim, discard):
    """Carried out: exactly as before (the T4 switched back first). Lost: the record stays, `status` shows it with the
    T4 off. Either way the same assign again finishes."""
    run = intent_undo(fresh_vcsim)
    killed_with_the_undo_held(run, discard=discard)
    if discard:
        the_intent_shown(run, passthrough_on=False)
    else:
        exactly_before(run)
    a_rerun_converges(run)


@pytest.mark.parametrize("carried", [True, False], ids=["carried-out", "lost"])
def test_the_endpoint_killed_with_the_intent_undo_on_the_wire(fresh_vcsim, carried):
    """No answer to the record's removal: gpupass logs in again and reads the VM -- removed, or removed once more:
    exactly as before, reported rolled back."""
    run = intent_undo(fresh_vcsim)
    error = restarted_when_held_at_the_undo(run, carried=carried)
    rolled_back_exactly(error, run)
    a_rerun_converges(run)


def test_an_endpoint_frozen_before_the_intent_undo(fresh_vcsim):
    """The removal gets no answer within the timeout: reported not rolled back, the record's removal named; thawed,
    the host removes it: exactly as before; the same assign then converges."""
    run = intent_undo(fresh_vcsim)

    def removed():
        with run.backend() as backend:
            return not backend.inventory().find_vm("cad-ws").unfinished

    error = frozen_before_the_undo(run, "recording in VM 'cad-ws'", 2, carried_out=removed)
    assert "could not be undone" in error.message and "record in VM 'cad-ws'" in error.message, error.message
    exactly_before(run)
    a_rerun_converges(run)


def test_a_dropped_reply_to_the_intent_undo_is_read_back(fresh_vcsim):
    run = intent_undo(fresh_vcsim)
    error = dropped_reply_of_the_undo(run)
    rolled_back_exactly(error, run)
    a_rerun_converges(run)


# -- the undo of a release's record removal (EndIntent): the record put back ------------------------------------------
# cad-ws holds the T4 (assigned first); `release --disable-host-passthrough`: the VM's reconfigure (its record in the
# same write), the switch-back, the record's removal. The removal carried out and its reply dropped: read back, done,
# so the release is undone from its end -- the record put back (the third ReconfigVM_Task) under test, the T4 on again,
# the device back.
RELEASE = ReleaseRequest("cad-ws", (T4,), ReleaseOptions(disable_host_passthrough=True))


def end_intent_undo(fresh_vcsim):
    sim = fresh_vcsim(username=USER)
    run = UndoRun(sim, target(sim), RELEASE, ["release", "", "cad-ws", str(T4), "--disable-host-passthrough"],
                  ("ReconfigVM_Task", 1), ("ReconfigVM_Task", 2))
    run.args[1] = run.uri
    with run.backend() as backend:
        execute(backend, make_plan(backend, backend.inventory(), REQUEST, default_registry()))
    assert str(T4) in cad_ws(run)["assigned"] and t4(run)["enabled"] is True
    return run


def assigned_exactly(run):
    vm = cad_ws(run)
    assert str(T4) in vm["assigned"] and vm["unfinished"] == [], vm
    assert (t4(run)["enabled"], t4(run)["active"]) == (True, True)


def released_with_the_record(run):
    """Released, passthrough off, the release's record back in the VM: `status` says how to finish."""
    vm = cad_ws(run)
    assert str(T4) not in vm["assigned"] and len(vm["unfinished"]) == 1, vm
    assert "release" in vm["unfinished"][0] and "is off" in vm["unfinished"][0], vm["unfinished"]
    assert t4(run)["enabled"] is False


def a_release_again_converges(run):
    again = subprocess.run([*GPUPASS, *run.args, "--yes", "--ca-file", str(run.sim.ca_file)], env=run.env,
                           capture_output=True, text=True, stdin=subprocess.DEVNULL)
    assert again.returncode == 0, again.stdout + again.stderr
    vm = cad_ws(run)
    assert str(T4) not in vm["assigned"] and vm["unfinished"] == [], vm
    assert t4(run)["enabled"] is False


@pytest.mark.parametrize("discard", [False, True], ids=["carried-out", "lost-on-the-way"])
def test_a_client_killed_with_the_end_intent_undo_on_the_wire(fresh_vcsim, discard):
    """Carried out: the record is back on the released VM, the T4 off: `status` says so and the same release again
    removes it. Lost: the release stands whole (the record gone): nothing for `status`, the release again converges."""
    run = end_intent_undo(fresh_vcsim)
    killed_with_the_undo_held(run, discard=discard)
    if discard:
        vm = cad_ws(run)
        assert str(T4) not in vm["assigned"] and vm["unfinished"] == [] and t4(run)["enabled"] is False, vm
    else:
        released_with_the_record(run)
    a_release_again_converges(run)


@pytest.mark.parametrize("carried", [True, False], ids=["carried-out", "lost"])
def test_the_endpoint_killed_with_the_end_intent_undo_on_the_wire(fresh_vcsim, carried):
    """No answer to the record's return: gpupass logs in again, reads the VM -- put back, or put back once more -- and
    undoes the rest: cad-ws holds the T4 as before, reported rolled back."""
    run = end_intent_undo(fresh_vcsim)
    error = restarted_when_held_at_the_undo(run, carried=carried)
    assert isinstance(error, OperationFailed) and error.rolled_back is True, error
    assigned_exactly(run)
    a_release_again_converges(run)


def test_an_endpoint_frozen_before_the_end_intent_undo(fresh_vcsim):
    """The record's return and the undos after it get no answer: reported not rolled back, each named; thawed, the
    record is back on the released VM: `status` says so, and the same release again finishes."""
    run = end_intent_undo(fresh_vcsim)

    def record_back():
        with run.backend() as backend:
            return bool(backend.inventory().find_vm("cad-ws").unfinished)

    error = frozen_before_the_undo(run, "recording in VM 'cad-ws'", 2, carried_out=record_back)
    assert "could not be undone" in error.message and "put extraConfig gpupass.intent back" in error.message, \
        error.message
    released_with_the_record(run)
    a_release_again_converges(run)


def test_a_dropped_reply_to_the_end_intent_undo_is_read_back(fresh_vcsim):
    run = end_intent_undo(fresh_vcsim)
    error = dropped_reply_of_the_undo(run)
    assert isinstance(error, OperationFailed) and error.rolled_back is True, error
    assigned_exactly(run)
    a_release_again_converges(run)


# -- the take-back of a vGPU change (VgpuReconfigure undo: `_restore`) ----------------------------------------------
# infer01 (esx03) given a grid_p40-4c on the second P40: its one ReconfigVM_Task carried out, its reply dropped; read
# back and taken back (the second ReconfigVM_Task) -- the undo under test.
def vgpu_undo(fresh_vcsim):
    from tests.integration.esxi.test_esxi_vgpu_assign import assign

    sim = fresh_vcsim(username=USER)
    run = UndoRun(sim, target(sim), assign("infer01"),
                  ["assign", "", "infer01", "esx03.lab.local/0000:af:00.0", "--share", "grid_p40-4c"],
                  ("ReconfigVM_Task", 0), ("ReconfigVM_Task", 1))
    run.args[1] = run.uri
    run.before = infer01(run)  # type: ignore[attr-defined]
    assert run.before[0] == []  # type: ignore[attr-defined]
    return run


def infer01(run):
    """infer01's vGPUs, memory reservation (locked, MB) and gpupass's record, read with pyVmomi."""
    from pyVim.connect import Disconnect

    from tests.integration.esxi.test_esxi_vgpu_faults import _settings
    from tests.integration.esxi.test_esxi_vgpu_assign import vm_obj

    si = run.sim.connect()
    try:
        return _settings(vm_obj(si, "infer01"))
    finally:
        Disconnect(si)


def vgpu_before(run, settings):
    assert settings == run.before, settings


def vgpu_after(run, settings):
    assert settings[0] == ["grid_p40-4c"] and settings[1] is True and settings[3], settings  # vGPU, lock, record


def a_vgpu_assign_again_converges(run):
    again = subprocess.run([*GPUPASS, *run.args, "--yes", "--ca-file", str(run.sim.ca_file)], env=run.env,
                           capture_output=True, text=True, stdin=subprocess.DEVNULL)
    assert again.returncode == 0, again.stdout + again.stderr
    vgpu_after(run, infer01(run))


@pytest.mark.parametrize("discard", [False, True], ids=["carried-out", "lost-on-the-way"])
def test_a_client_killed_with_the_vgpu_take_back_on_the_wire(fresh_vcsim, discard):
    """Carried out: exactly as before. Lost: the vGPU stays with its reservation and record, exactly after the assign.
    Either way the same assign again converges (nothing to do in the second case)."""
    run = vgpu_undo(fresh_vcsim)
    killed_with_the_undo_held(run, discard=discard)
    (vgpu_after if discard else vgpu_before)(run, infer01(run))
    a_vgpu_assign_again_converges(run)


@pytest.mark.parametrize("carried", [True, False], ids=["carried-out", "lost"])
def test_the_endpoint_killed_with_the_vgpu_take_back_on_the_wire(fresh_vcsim, carried):
    """Read back over a new session: taken back -- reported rolled back, exactly as before -- or not: reported not
    rolled back with the VM holding the vGPU (exactly after the assign); the same assign again converges."""
    run = vgpu_undo(fresh_vcsim)
    error = restarted_when_held_at_the_undo(run, carried=carried)
    assert isinstance(error, OperationFailed) and error.rolled_back is carried, error
    (vgpu_before if carried else vgpu_after)(run, infer01(run))
    if not carried:
        assert "still holds it" in error.message, error.message
    a_vgpu_assign_again_converges(run)


def test_an_endpoint_frozen_before_the_vgpu_take_back(fresh_vcsim):
    """The take-back gets no answer, nor does the read after it: reported not known; thawed, the host takes the vGPU
    back: exactly as before; the same assign again converges."""
    run = vgpu_undo(fresh_vcsim)
    error = frozen_before_the_undo(run, "restoring VM 'infer01'", 1, carried_out=lambda: infer01(run)[0] == [])
    assert "taking back the change to VM 'infer01'" in error.message, error.message
    vgpu_before(run, infer01(run))
    a_vgpu_assign_again_converges(run)


def test_a_dropped_reply_to_the_vgpu_take_back_is_read_back(fresh_vcsim):
    run = vgpu_undo(fresh_vcsim)
    error = dropped_reply_of_the_undo(run)
    assert isinstance(error, OperationFailed) and error.rolled_back is True, error
    vgpu_before(run, infer01(run))
    a_vgpu_assign_again_converges(run)


# -- the undo of a host graphics change (HostGraphicsChange undo) ------------------------------------------------------
# esx03's second P40 in shared (vSGA) mode; infer01's vGPU assign with --allow-host-sharing-change: the intent record,
# the host switched to shared direct (UpdateGraphicsConfig, Xorg restarted), the vGPU. The vGPU's reconfigure carried
# out, its reply dropped (the second ReconfigVM_Task): taken back, then the graphics configuration set back (the second
# UpdateGraphicsConfig, then Xorg restarted) -- the undo under test -- and the record removed.
def graphics_undo(fresh_vcsim):
    from gpupass.backends.esxi.lab.simulator import lab_config
    from tests.integration.esxi.test_esxi_vgpu_host_change import request

    cfg = lab_config()
    next(g for g in cfg["hosts"][2]["gpus"] if g["address"] == "0000:af:00.0")["graphics_type"] = "shared"
    sim = fresh_vcsim(cfg, username=USER)
    run = UndoRun(sim, target(sim), request(True),
                  ["assign", "", "infer01", "esx03.lab.local/0000:af:00.0", "--share", "P40-4C",
                   "--allow-host-sharing-change"], ("ReconfigVM_Task", 1), ("UpdateGraphicsConfig", 1))
    run.args[1] = run.uri
    run.before = esx03(run)  # type: ignore[attr-defined]
    return run


def esx03(run):
    """esx03's graphics (configured and in effect) and infer01's vGPUs and unfinished runs, as gpupass reads them."""
    with run.backend() as backend:
        facts = backend.inventory()
        graphics = facts.host.settings["hosts"]["esx03.lab.local"]["graphics"]
        vm = facts.find_vm("infer01")
    return ({k: graphics.get(k) for k in ("default_type", "assignment_policy", "device_types", "active_types")},
            infer01(run)[0], vm.unfinished)


def graphics_before(run):
    assert esx03(run) == run.before  # type: ignore[attr-defined]


def the_share_intent_shown(run):
    _, vgpus, unfinished = esx03(run)
    assert vgpus == [] and len(unfinished) == 1 and "vGPU assign" in unfinished[0], unfinished


def a_graphics_assign_again_converges(run):
    again = subprocess.run([*GPUPASS, *run.args, "--yes", "--ca-file", str(run.sim.ca_file)], env=run.env,
                           capture_output=True, text=True, stdin=subprocess.DEVNULL)
    assert again.returncode == 0, again.stdout + again.stderr
    graphics, vgpus, unfinished = esx03(run)
    assert vgpus == ["grid_p40-4c"] and unfinished == () and \
        graphics["active_types"]["0000:af:00.0"] == "sharedDirect", (graphics, vgpus, unfinished)


@pytest.mark.parametrize("discard", [False, True], ids=["carried-out", "lost-on-the-way"])
def test_a_client_killed_with_the_graphics_undo_on_the_wire(fresh_vcsim, discard):
    """Killed with the set-back on the wire (carried out after, or lost): the run's record stays, and `status` says
    the host's graphics may hold its change; the same assign again finishes."""
    run = graphics_undo(fresh_vcsim)
    killed_with_the_undo_held(run, discard=discard)
    the_share_intent_shown(run)
    a_graphics_assign_again_converges(run)


@pytest.mark.parametrize("carried", [True, False], ids=["carried-out", "lost"])
def test_the_endpoint_killed_with_the_graphics_undo_on_the_wire(fresh_vcsim, carried):
    """No answer to the set-back: gpupass logs in again, reads the configuration and what runs -- set back and in
    effect, or set once more -- and removes its record: exactly as before, reported rolled back."""
    run = graphics_undo(fresh_vcsim)
    error = restarted_when_held_at_the_undo(run, carried=carried)
    assert isinstance(error, OperationFailed) and error.rolled_back is True, error
    graphics_before(run)
    a_graphics_assign_again_converges(run)


def test_an_endpoint_frozen_before_the_graphics_undo(fresh_vcsim):
    """The set-back and the record's removal get no answer: reported not rolled back, each named; thawed, the host has
    the configuration back (not yet in effect) and the record stays for `status`; the same assign again finishes."""
    run = graphics_undo(fresh_vcsim)

    def set_back():
        return esx03(run)[0]["device_types"] == run.before[0]["device_types"]  # type: ignore[attr-defined]

    error = frozen_before_the_undo(run, "changing the graphics configuration", 2, carried_out=set_back)
    assert "could not be undone" in error.message and "graphics" in error.message, error.message
    the_share_intent_shown(run)
    a_graphics_assign_again_converges(run)


def test_a_dropped_reply_to_the_graphics_undo_is_read_back(fresh_vcsim):
    run = graphics_undo(fresh_vcsim)
    error = dropped_reply_of_the_undo(run)
    assert isinstance(error, OperationFailed) and error.rolled_back is True, error
    graphics_before(run)
    a_graphics_assign_again_converges(run)


# -- a rerun's exit from the maintenance mode a stopped run left (ExitMaintenance), and its undo ---------------------
# A first `assign --allow-host-reboot` of the T4 (held by the VMkernel: it needs the reboot) killed with its
# ExitMaintenanceMode_Task lost on the way: esx01 rebooted, left in maintenance mode, the run's record in cad-ws. The
# same assign again: its record, the host taken out of maintenance mode, the VM's reconfigure.
def stopped_in_maintenance(fresh_vcsim):
    from pyVim.task import WaitForTask

    from support.cli import killed_with_call_held
    from tests.integration.esxi.test_esxi_reboot_faults import Lab
    from tests.integration.esxi.test_esxi_reboot_step_faults import REQUEST as REBOOT_REQUEST
    from tests.integration.esxi.test_esxi_host_rules import find_vm

    lab = Lab(fresh_vcsim)
    WaitForTask(find_vm(lab.si, "web01").PowerOffVM_Task())  # maintenance mode waits for a host without running VMs
    killed_with_call_held(lab.sim, "ExitMaintenanceMode_Task", lab.assign, lab.env, discard=True)
    assert lab.host.runtime.inMaintenanceMode is True and lab.t4()["active"] is True
    run = UndoRun(lab.sim, target(lab.sim), REBOOT_REQUEST, lab.assign[:-2] + ["--allow-host-reboot"],
                  ("ReconfigVM_Task", 1), ("EnterMaintenanceMode_Task", 0))
    run.lab = lab  # type: ignore[attr-defined]
    return run


def in_maintenance(run):
    """esx01's maintenance mode as gpupass reads it (over a session of its own: an endpoint restart ends the others)."""
    with run.backend() as backend:
        return backend.inventory().host.settings["hosts"][ESX01]["maintenance_mode"]


def in_maintenance_with_a_record(run, maintenance):
    vm = cad_ws(run)
    assert str(T4) not in vm["assigned"] and len(vm["unfinished"]) == 1, vm
    assert in_maintenance(run) is maintenance


def the_rerun_finishes(run):
    a_rerun_converges(run)
    assert in_maintenance(run) is False


@pytest.mark.parametrize("discard", [False, True], ids=["carried-out", "lost-on-the-way"])
def test_a_client_killed_with_a_reruns_exit_from_maintenance_on_the_wire(fresh_vcsim, discard):
    """The rerun killed with its ExitMaintenanceMode_Task on the wire: out of maintenance mode (carried out) or still
    in it (lost); the record shown by `status` either way; the same assign once more finishes."""
    from support.cli import killed_with_call_held

    run = stopped_in_maintenance(fresh_vcsim)
    killed_with_call_held(run.sim, "ExitMaintenanceMode_Task", [*run.args, "--yes"], run.env, discard=discard)
    in_maintenance_with_a_record(run, maintenance=discard)
    the_rerun_finishes(run)


def test_an_endpoint_frozen_before_a_reruns_exit_from_maintenance(fresh_vcsim):
    """Frozen with the rerun's ExitMaintenanceMode_Task about to go: its end cannot be learnt, so nothing more is sent
    to the host; thawed, the host leaves maintenance mode; the record stays for `status`; the same assign finishes."""
    from support.esxi_faults import frozen_before_its_write

    run = stopped_in_maintenance(fresh_vcsim)
    error = frozen_before_its_write(run.sim, run.target, run.request,
                                    lambda: not in_maintenance(run), action="taking host")
    assert f"nothing more was sent to host {ESX01}" in error.message, error.message
    in_maintenance_with_a_record(run, maintenance=False)
    the_rerun_finishes(run)


@pytest.mark.parametrize("discard", [False, True], ids=["carried-out", "lost-on-the-way"])
def test_a_client_killed_with_the_exit_maintenance_undo_on_the_wire(fresh_vcsim, discard):
    """The rerun rolled back (a dropped reply to its reconfigure) and killed with the undo of its exit --
    EnterMaintenanceMode_Task -- on the wire: back in maintenance mode (carried out) or not (lost); the record shown
    by `status`; the same assign finishes."""
    run = stopped_in_maintenance(fresh_vcsim)
    killed_with_the_undo_held(run, discard=discard)
    in_maintenance_with_a_record(run, maintenance=not discard)
    the_rerun_finishes(run)


@pytest.mark.parametrize("carried", [True, False], ids=["carried-out", "lost"])
def test_the_endpoint_killed_with_the_exit_maintenance_undo_on_the_wire(fresh_vcsim, carried):
    """Carried out: found done in vCenter's recent tasks over a new session, the stopped run's record put back --
    exactly as before the rerun, rolled back. Lost: vCenter lists no such task, so nothing more is sent (the record's
    undo waits too): reported not rolled back with the host as read back; `status` shows the record. Either way the
    same assign finishes."""
    run = stopped_in_maintenance(fresh_vcsim)
    error = restarted_when_held_at_the_undo(run, carried=carried)
    assert isinstance(error, OperationFailed) and error.rolled_back is carried, error
    in_maintenance_with_a_record(run, maintenance=carried)
    the_rerun_finishes(run)


def test_an_endpoint_frozen_before_the_exit_maintenance_undo(fresh_vcsim):
    """The undo's EnterMaintenanceMode_Task waits at the frozen endpoint: its end not learnt, nothing more sent,
    reported not rolled back; thawed, the host is back in maintenance mode with the record; the same assign finishes."""
    run = stopped_in_maintenance(fresh_vcsim)
    error = frozen_before_the_undo(run, "putting host", 1, carried_out=lambda: in_maintenance(run))
    assert f"nothing more was sent to host {ESX01}" in error.message, error.message
    in_maintenance_with_a_record(run, maintenance=True)
    the_rerun_finishes(run)


def test_a_dropped_reply_to_the_exit_maintenance_undo_is_learnt_from_vcenter(fresh_vcsim):
    """The undo's reply dropped: its task found done in vCenter's recent tasks, the stopped run's record put back --
    exactly as before the rerun, rolled back; the same assign finishes."""
    run = stopped_in_maintenance(fresh_vcsim)
    error = dropped_reply_of_the_undo(run)
    assert isinstance(error, OperationFailed) and error.rolled_back is True, error
    in_maintenance_with_a_record(run, maintenance=True)
    the_rerun_finishes(run)
