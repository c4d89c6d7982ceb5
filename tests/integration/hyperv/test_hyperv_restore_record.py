"""The restore record travels with the VM (issue 10 item 3): the settings from before an assignment are kept in the
VM's own notes, written by the assign script's Set-VM, read back, checked and removed by the release script's.

The host model runs the real scripts (parsed with tree-sitter-powershell); the backend tests go over real pywinrm.
"""
from __future__ import annotations

import copy
import functools
import json
import uuid

import pytest

from gpupass.backends.hyperv import scripts as S
from gpupass.backends.hyperv.addressing import address_map
from gpupass.backends.hyperv.backend import HypervBackend
from gpupass.backends.hyperv.lab.hostmodel import HostModel, lab_host, run_script
from gpupass.backends.hyperv.lab.hostmodel.cmdlet_docs import CMDLETS
from gpupass.backends.hyperv.lab.hostmodel.lab import A100_1_LOC, A100_2_LOC, MI300X_LOC
from gpupass.core import plugins
from gpupass.core.domain.request import AssignmentRequest, ReleaseRequest
from gpupass.core.errors import OperationFailed
from gpupass.core.service import execute, make_plan
from gpupass.core.target import Secret, Target
from hyperv_helpers import PASSWORD, USER, G, M
from support.race import RacePool

ADDR = address_map([A100_1_LOC, A100_2_LOC, MI300X_LOC])
ML_TRAIN_ID = "6f1c1a52-3f0e-4d5e-9a51-0c8e6b7d1a01"


def run(model: HostModel, script: str) -> tuple[int, dict]:
    result = run_script(model, script)
    return result.exit_code, json.loads(result.stdout.strip().splitlines()[-1])


# -- the host model: Set-VM -Notes as the cmdlet reference defines it -----------------------------------------------
def test_set_vm_notes_is_bound_as_documented():
    notes = CMDLETS["Set-VM"]["parameters"]["Notes"]
    # Set-VM.md: -Notes <String>, in both parameter sets (Name and VMObject), named, not mandatory
    assert notes["type"] == "String" and set(notes["sets"]) == {"Name", "VMObject"}
    assert all(not s["required"] and s["position"] is None for s in notes["sets"].values())
    model = lab_host()
    code, out = run(model, "Set-VM -Name 'ml-train' -Notes 'it''s mine'\n"
                           "ConvertTo-Json -InputObject ([pscustomobject]@{n=(Get-VM -Name 'ml-train').Notes}) -Compress")
    assert code == 0 and out == {"n": "it's mine"} and model.vm("ml-train").notes == "it's mine"
    result = run_script(model, "Set-VM -Name 'ml-train' -Notes")      # a String parameter needs its value
    assert result.errors and model.vm("ml-train").notes == "it's mine"


# -- the scripts on the model ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("notes", ["", "backup: tape 3", "ends with a line break\n", "two\r\nlines",
                                   "it's $(Remove-VM *) [gpupass", "\u65e5\u672c " * 300])
def test_assign_then_release_leaves_the_admins_notes_exactly(notes):
    model = lab_host()
    model.vm("ml-train").notes = notes
    before = model.to_dict()
    code, out = run(model, S.assign_script("ml-train", [A100_2_LOC], 3 * G, 200 * G))
    assert code == 0, out
    vm = model.vm("ml-train")
    assert vm.notes.startswith(notes) and vm.notes.endswith(S.RECORD_END)
    record = json.loads(vm.notes[vm.notes.index(S.RECORD_BEGIN) + len(S.RECORD_BEGIN):-len(S.RECORD_END)])
    assert record == {"VMId": ML_TRAIN_ID, "StopAction": "Save", "LowMmio": 128 * M, "HighMmio": 512 * M,
                      "GuestCache": False}
    code, out = run(model, S.release_script("ml-train", [A100_2_LOC]))
    assert code == 0 and out["restored"] == "notes", out
    assert model.to_dict() == before


def test_a_second_gpu_keeps_the_settings_from_before_the_first():
    model = lab_host()
    before = model.to_dict()
    assert run(model, S.assign_script("ml-train", [A100_2_LOC], 3 * G, 200 * G))[0] == 0
    first = model.vm("ml-train").notes
    assert run(model, S.assign_script("ml-train", [MI300X_LOC], 3 * G, 500 * G))[0] == 0
    assert model.vm("ml-train").notes == first
    # releasing one of them leaves the settings (the other still needs the MMIO space) and the record
    code, out = run(model, S.release_script("ml-train", [A100_2_LOC]))
    assert code == 0 and out["restored"] is None
    assert model.vm("ml-train").notes == first and model.vm("ml-train").high_mmio == 500 * G
    code, out = run(model, S.release_script("ml-train", [MI300X_LOC]))
    assert code == 0 and out["restored"] == "notes" and model.to_dict() == before


def _assigned_with_record(edit) -> HostModel:
    model = lab_host()
    model.vm("ml-train").notes = "admin's text"
    assert run(model, S.assign_script("ml-train", [A100_2_LOC], 3 * G, 200 * G))[0] == 0
    vm = model.vm("ml-train")
    vm.notes = edit(vm.notes)
    return model


@pytest.mark.parametrize("edit,damage", [
    (lambda n: n[:-5], "end"),                                                          # truncated
    (lambda n: n.replace(S.RECORD_END, ""), "end"),                                    # end marker deleted
    (lambda n: n.replace('"StopAction"', '"Stop Action"'), "value"),                   # a key edited
    (lambda n: n.replace('"Save"', '"Hibernate"'), "value"),                            # not a stop action
    (lambda n: n.replace(str(512 * M), "-1"), "value"),                                 # Set-VM takes a UInt64
    (lambda n: n.replace(str(128 * M), str(2**32)), "value"),                           # low MMIO is a UInt32
    (lambda n: n.replace('"GuestCache":false', '"GuestCache":"no"'), "value"),
    (lambda n: n.replace("{", "{{"), "json"),                                           # not JSON any more
    (lambda n: n.replace(ML_TRAIN_ID, str(uuid.UUID(int=7))), "vm"),                    # another VM's record
    (lambda n: n.replace(S.RECORD_END, " " * S.RECORD_MAX_CHARS + S.RECORD_END), "end"),  # longer than any record
])
def test_a_damaged_record_stops_the_release_before_any_change(edit, damage):
    model = _assigned_with_record(edit)
    before = model.to_dict()
    code, out = run(model, S.release_script("ml-train", [A100_2_LOC]))
    assert code == 1 and out["ok"] is False and out["recordDamage"] == damage and out["stage"] == {}
    assert model.to_dict() == before                   # the device is still on the VM: nothing half done
    assert damage in S.RECORD_DAMAGE


def test_a_release_that_keeps_other_devices_does_not_need_the_record():
    model = _assigned_with_record(lambda n: n[:-5])
    assert run(model, S.assign_script("ml-train", [MI300X_LOC], 3 * G, 500 * G))[0] == 0
    code, out = run(model, S.release_script("ml-train", [A100_2_LOC]))
    assert code == 0 and out["restored"] is None


# -- the backend over WinRM -----------------------------------------------------------------------------------------
@pytest.fixture
def endpoint(endpoint_factory):
    """NTLM: Basic over plain HTTP is allowed to 127.0.0.1 only, and these tests also say `localhost`."""
    return lambda model: endpoint_factory(model, "ntlm")


def _backend(port: int, host: str = "127.0.0.1", state_file=None) -> HypervBackend:
    options = {"state_file": str(state_file)} if state_file else {}
    return HypervBackend(Target(uri=f"hyperv+http://{USER}@{host}:{port}/", name=f"{host}:{port}",
                                password=Secret(PASSWORD), options=options))


def _plan_release(backend, vm="ml-train"):
    plan = make_plan(backend, backend.inventory(), ReleaseRequest(vm), plugins.default_registry())
    return lambda: execute(backend, plan)


def _assign(backend, vm="ml-train", address=ADDR[A100_2_LOC]):
    registry = plugins.default_registry()
    return execute(backend, make_plan(backend, backend.inventory(), AssignmentRequest(vm, (address,)), registry))


def _release(backend, vm="ml-train", *addresses):
    registry = plugins.default_registry()
    return execute(backend, make_plan(backend, backend.inventory(), ReleaseRequest(vm, tuple(addresses)), registry))


def test_assign_by_one_name_release_by_another_restores_exactly(endpoint, tmp_path):
    model = lab_host()
    model.vm("ml-train").notes = "owner: data team"
    before = model.to_dict()
    ep = endpoint(model)
    _assign(_backend(ep.port, "127.0.0.1", tmp_path / "a.json"))
    assert model.vm("ml-train").automatic_stop_action == "TurnOff"
    # another spelling of the host, another workstation's (empty) local records: the record is on the VM
    _release(_backend(ep.port, "localhost", tmp_path / "b.json"))
    assert model.to_dict() == before
    assert not (tmp_path / "a.json").exists() and not (tmp_path / "b.json").exists()   # nothing kept locally


def test_release_after_the_host_restarted_on_another_port_restores_exactly(endpoint, tmp_path):
    model = lab_host()
    before = model.to_dict()
    first = endpoint(model)
    _assign(_backend(first.port))
    restarted = endpoint(HostModel.from_json(model.to_json()))   # the lab's saved state, a new port
    first.stop()
    assert restarted.port != first.port
    _release(_backend(restarted.port, "localhost"))
    assert restarted.model.to_dict() == before


def test_a_damaged_record_is_reported_and_nothing_changes(endpoint):
    model = lab_host()
    ep = endpoint(model)
    backend = _backend(ep.port)
    _assign(backend)
    model.vm("ml-train").notes = model.vm("ml-train").notes[:-3]          # cut by hand
    before = model.to_dict()
    with pytest.raises(OperationFailed) as caught:
        _release(_backend(ep.port))
    assert caught.value.rolled_back is True
    assert S.RECORD_DAMAGE["end"] in caught.value.message and "Set-VM -Notes" in caught.value.remedy
    assert model.to_dict() == before


def _legacy_file(path, port: int, settings: dict) -> None:
    path.write_text(json.dumps({f"127.0.0.1:{port}": {ML_TRAIN_ID: settings}}))


def _assigned_by_an_older_gpupass(model, port: int, tmp_path):
    """What an older version left: the device on ml-train, its settings changed, the record in the local file."""
    assert run(model, S.assign_script("ml-train", [A100_2_LOC], 3 * G, 200 * G))[0] == 0
    model.vm("ml-train").notes = ""
    state = tmp_path / "previous-settings.json"
    _legacy_file(state, port, {"stop_action": "Save", "low_mmio": 128 * M, "high_mmio": 512 * M,
                               "guest_cache": False})
    return state


def test_a_record_an_older_gpupass_kept_locally_is_restored_once(endpoint, tmp_path):
    """Assigned by a gpupass that kept the record on the workstation: the release restores it and forgets it."""
    model = lab_host()
    before = model.to_dict()
    ep = endpoint(model)
    state = _assigned_by_an_older_gpupass(model, ep.port, tmp_path)
    _release(_backend(ep.port, state_file=state))
    assert model.to_dict() == before
    assert json.loads(state.read_text()) == {}


def test_a_further_assign_moves_the_local_record_onto_the_vm(endpoint, tmp_path):
    model = lab_host()
    before = model.to_dict()
    ep = endpoint(model)
    state = _assigned_by_an_older_gpupass(model, ep.port, tmp_path)
    _assign(_backend(ep.port, state_file=state), address=ADDR[MI300X_LOC])
    assert json.loads(state.read_text()) == {} and S.RECORD_BEGIN in model.vm("ml-train").notes
    # from now on any workstation, any spelling of the host, restores it
    _release(_backend(ep.port, "localhost"))
    assert model.to_dict() == before


def test_a_damaged_local_file_is_reported_not_read_as_empty(endpoint, tmp_path):
    model = lab_host()
    ep = endpoint(model)
    assert run(model, S.assign_script("ml-train", [A100_2_LOC], 3 * G, 200 * G))[0] == 0
    model.vm("ml-train").notes = ""
    state = tmp_path / "previous-settings.json"
    state.write_text('{"127.0.0.1:')
    before = model.to_dict()
    with pytest.raises(OperationFailed) as caught:
        _release(_backend(ep.port, state_file=state))
    assert "damaged" in caught.value.message and model.to_dict() == before


def test_a_lost_reply_to_a_release_is_read_back_not_assumed(endpoint):
    """The host ran the release but its reply was lost: gpupass reads the host, sees the release there and undoes
    it with the rest (the VM gets its device back, and the record again), never reporting "unknown" for it."""
    model = lab_host()
    ep = endpoint(model)
    backend = _backend(ep.port)
    _assign(backend)
    before = model.to_dict()
    go = _plan_release(_backend(ep.port))
    ep.drop_next_receive()
    with pytest.raises(OperationFailed) as caught:
        go()
    assert caught.value.rolled_back is True and "the failed step had gone through and was undone" in caught.value.message
    assert model.to_dict() == before


def test_a_lost_reply_to_a_release_that_did_not_run_is_read_back_as_before(endpoint):
    model = lab_host()
    ep = endpoint(model)
    backend = _backend(ep.port)
    _assign(backend)
    before = model.to_dict()
    go = _plan_release(_backend(ep.port))
    model.inject_fault("Remove-VMAssignableDevice")      # the release stops at its first device ...
    ep.drop_next_receive()                                # ... and its reply is lost too
    with pytest.raises(OperationFailed) as caught:
        go()
    assert caught.value.rolled_back is True and "the VM is as it was" in caught.value.message
    assert model.to_dict() == before


@pytest.mark.parametrize("round_", range(3))
def test_concurrent_pairs_lose_no_record(endpoint, round_):
    """Two admins at once: two VMs, one GPU each, assigned together and released together (separate processes,
    separate WinRM sessions): both VMs get exactly their own settings back."""
    model = lab_host()
    twin = copy.deepcopy(model.vm("ml-train"))
    twin.name, twin.vm_id, twin.automatic_stop_action, twin.high_mmio = "ml-twin", str(uuid.uuid4()), "ShutDown", G
    model.vms.append(twin)
    before = model.to_dict()
    ep = endpoint(model)
    gpu_of = {"ml-train": ADDR[A100_2_LOC], "ml-twin": ADDR[MI300X_LOC]}

    with RacePool(2) as pool:
        assigns = pool.round(functools.partial(_assign_in_a_worker, ep.port, gpu_of), list(gpu_of))
        assert [(run.kind, run.exit_code) for run in assigns] == [("applied", 0)] * 2, assigns
        assert all(S.RECORD_BEGIN in model.vm(vm).notes for vm in gpu_of)
        releases = pool.round(functools.partial(_release_in_a_worker, ep.port), list(gpu_of))
        assert [(run.kind, run.exit_code) for run in releases] == [("applied", 0)] * 2, releases
    assert model.to_dict() == before


def _assign_in_a_worker(port: int, gpu_of: dict, vm: str):
    """A RacePool worker's run (module-level: the spawned worker imports it by name): its own WinRM session."""
    backend = _backend(port)
    plan = make_plan(backend, backend.inventory(), AssignmentRequest(vm, (gpu_of[vm],)), plugins.default_registry())
    return lambda: execute(backend, plan)


def _release_in_a_worker(port: int, vm: str):
    """The release from another spelling of the host (localhost): the record is found by the VM, not the name."""
    backend = _backend(port, "localhost")
    plan = make_plan(backend, backend.inventory(), ReleaseRequest(vm), plugins.default_registry())
    return lambda: execute(backend, plan)
