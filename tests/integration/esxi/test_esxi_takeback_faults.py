"""Faults on the ESXi writes that take a change back: the reconfigure a run that lost a race for a GPU sends to undo
its own change, and the undo of a reconfigure whose answer was lost. A dropped reply and a killed client on that
take-back; then a frozen endpoint on the assign's passthrough switch. Each time the host is reported as it is, the GPU
is never left twice on one VM nor taken from the run that won, and a rerun converges."""

from __future__ import annotations

import json
import os
import subprocess
import time

import pytest

from gpupass.core.domain.request import AssignmentRequest, AssignOptions, ReleaseRequest
from gpupass.core.errors import Conflict, OperationFailed, PreflightFailed
from gpupass.core.service import execute

pytest.importorskip("pyVmomi")

from support.cli import GPUPASS  # noqa: E402
from support.esxi_faults import frozen_before_its_write  # noqa: E402
from tests.integration.esxi.test_esxi_backend import A100_ACTIVE, USER, plan, target  # noqa: E402

ESX02 = "esx02.lab.local"
# render01 is a BIOS VM: an A100 80GB needs EFI, which gpupass sets only when allowed
WINNER = AssignmentRequest("render01", (A100_ACTIVE,), AssignOptions(allow_firmware_change=True))


def _passthrough_devices(sim, vm):
    from tests.integration.esxi.test_esxi_host_rules import find_vm

    from pyVim.connect import Disconnect
    from pyVmomi import vim

    si = sim.connect()
    try:
        return [d.backing.id for d in find_vm(si, vm).config.hardware.device
                if isinstance(d, vim.vm.device.VirtualPCIPassthrough)]
    finally:
        Disconnect(si)


def _winner_assigns(sim):
    """Another admin's run gives the A100 to render01 (and wins: it wrote and read before anyone else held it)."""
    from gpupass.backends.esxi.backend import EsxiBackend

    with EsxiBackend(target(sim)) as winner:
        execute(winner, plan(winner, WINNER))


def test_a_lost_reply_to_a_losing_runs_take_back_is_read_back_and_reported_as_the_conflict_it_is(fresh_vcsim):
    """ml-train's assign writes the A100 with its claim after render01's run has taken it: it loses and reconfigures
    back, and that take-back's answer is lost. gpupass reads the VM back -- taken back -- and reports the conflict
    (exit 6, nothing of this run left), not an unknown outcome nor an undo by hand; the A100 is on render01 once and
    a rerun is refused before any write."""
    from gpupass.backends.esxi.backend import EsxiBackend

    sim = fresh_vcsim(username=USER)
    with EsxiBackend(target(sim)) as loser:
        before = loser.inventory().find_vm("ml-train")
        planned = plan(loser, AssignmentRequest("ml-train", (A100_ACTIVE,)))
        assert [s.action for s in planned.steps] == ["esxi.reconfigure"]

        def another_run_wins_first(step):
            _winner_assigns(sim)
            sim.drop_reply("ReconfigVM_Task", skip=1)   # this run's write answered, its take-back's answer lost

        with pytest.raises(Conflict) as caught:
            execute(loser, planned, on_step=another_run_wins_first)
        assert caught.value.rolled_back is True, caught.value.message
        assert "this run's change to VM 'ml-train' was undone" in caught.value.message, caught.value.message
        facts = loser.inventory()
        assert facts.find_vm("ml-train") == before and facts.find_vm("ml-train").unfinished == ()
        assert facts.find_vm("render01").assigned == (A100_ACTIVE,) and facts.find_vm("render01").unfinished == ()
        assert _passthrough_devices(sim, "render01") == [str(A100_ACTIVE)]
        assert _passthrough_devices(sim, "ml-train") == []
        with pytest.raises(PreflightFailed):                            # the same assign again: refused, no write
            execute(loser, plan(loser, AssignmentRequest("ml-train", (A100_ACTIVE,))))


def test_a_losing_runs_take_back_leaves_what_another_run_wrote_in_its_vm_meanwhile(fresh_vcsim):
    """Between the losing run's write and its take-back, an admin writes a key of their own in ml-train. The take-back
    sets back only what the run wrote, where the VM still holds it, with the changeVersion it read: the admin's key
    stays, the run's device, claim and settings go."""
    from pyVim.task import WaitForTask
    from pyVmomi import vim

    from gpupass.backends.esxi.backend import EsxiBackend
    from tests.integration.esxi.test_esxi_host_rules import find_vm

    sim = fresh_vcsim(username=USER)
    si = sim.connect()
    with EsxiBackend(target(sim)) as loser:
        before = loser.inventory().find_vm("ml-train")
        planned = plan(loser, AssignmentRequest("ml-train", (A100_ACTIVE,)))
        take_back = loser._restore

        def admin_writes_then_take_back(name, was):
            spec = vim.vm.ConfigSpec(extraConfig=[vim.option.OptionValue(key="guestinfo.owner", value="team-a")])
            WaitForTask(find_vm(si, "ml-train").ReconfigVM_Task(spec))
            return take_back(name, was)

        loser._restore = admin_writes_then_take_back
        with pytest.raises(Conflict):
            execute(loser, planned, on_step=lambda step: _winner_assigns(sim))
        extra = {o.key: o.value for o in find_vm(si, "ml-train").config.extraConfig}
        assert extra.get("guestinfo.owner") == "team-a", extra
        assert not any(k.startswith("gpupass.") for k in extra), extra
        assert loser.inventory().find_vm("ml-train") == before
        assert _passthrough_devices(sim, "render01") == [str(A100_ACTIVE)]


def test_a_lost_reply_to_the_undo_of_a_release_is_read_back_and_the_vm_holds_the_device_once(fresh_vcsim):
    """The release's reconfigure carried out and its answer lost; gpupass reads it back and takes it back -- and the
    answer to that take-back is lost too. It reads the VM again: the device is back (once, never added a second time),
    so the release is reported rolled back, not "undo by hand"; the same release again finishes."""
    from tests.integration.esxi.test_esxi_release_faults import _assigned

    sim = fresh_vcsim(username=USER)
    backend, before, assigned = _assigned(sim)
    try:
        release = plan(backend, ReleaseRequest("ml-train"))
        sim.drop_reply("ReconfigVM_Task")
        sim.drop_reply("ReconfigVM_Task")                                # the release's and its undo's
        with pytest.raises(OperationFailed) as caught:
            execute(backend, release)
        assert caught.value.rolled_back is True, caught.value.message
        assert "what vSphere had applied of it was taken back" in caught.value.message, caught.value.message
        assert backend.inventory().find_vm("ml-train") == assigned
        assert _passthrough_devices(sim, "ml-train") == [str(A100_ACTIVE)]
        execute(backend, plan(backend, ReleaseRequest("ml-train")))
        assert backend.inventory().find_vm("ml-train") == before
    finally:
        backend.close()


class KilledLoser:
    """A real `gpupass assign` of the A100 to ml-train in its own process, which loses the race to render01's run and
    is killed (SIGKILL) with its take-back on the wire."""

    def __init__(self, fresh_vcsim):
        self.sim = fresh_vcsim(username=USER)
        self.uri = f"esxi://administrator%40vsphere.local@127.0.0.1:{self.sim.port}/Lab"
        self.env = {**os.environ, "GPUPASS_PASSWORD": self.sim.password}

    def gpupass(self, *args):
        return subprocess.run([*GPUPASS, *args, "--ca-file", str(self.sim.ca_file)], env=self.env,
                              capture_output=True, text=True, stdin=subprocess.DEVNULL)

    def _wait_held(self, call, client):
        deadline = time.monotonic() + 60
        while self.sim.held() != call:
            assert time.monotonic() < deadline and client.poll() is None, f"{call} never reached the simulator"
            time.sleep(0.05)

    def killed_during_take_back(self, discard):
        """The assign is held just before its write (QueryConfigTarget, the call before its ReconfigVM_Task) while
        render01's run wins; then its second ReconfigVM_Task, the take-back, is held, the client killed, and the
        take-back carried out or (`discard`) lost on the way."""
        import signal

        sim = self.sim
        sim.hold("QueryConfigTarget")
        client = subprocess.Popen([*GPUPASS, "assign", self.uri, "ml-train", f"{ESX02}/{A100_ACTIVE}", "--yes",
                                   "--ca-file", str(sim.ca_file)], env=self.env, stdout=subprocess.DEVNULL,
                                  stderr=subprocess.DEVNULL, stdin=subprocess.DEVNULL)
        try:
            self._wait_held("QueryConfigTarget", client)
            _winner_assigns(sim)
            sim.hold("ReconfigVM_Task", skip=1)          # its write goes; its take-back waits
            sim.release()
            self._wait_held("ReconfigVM_Task", client)
            client.send_signal(signal.SIGKILL)
            assert client.wait(30) == -signal.SIGKILL
        finally:
            sim.release(discard=discard)
            if client.poll() is None:
                client.kill()
                client.wait(30)
        deadline = time.monotonic() + 10
        while sim.held() and time.monotonic() < deadline:
            time.sleep(0.05)

    def status(self):
        status = self.gpupass("status", self.uri, "--json")
        assert status.returncode == 0, status.stdout + status.stderr
        return {v["name"]: v for v in json.loads(status.stdout)["vms"]}


def test_a_losing_run_killed_with_its_take_back_on_the_wire_carried_out_leaves_the_winner_alone(fresh_vcsim):
    """Killed with its take-back on the wire, which vSphere then carries out: ml-train is exactly as it was (claim
    gone), render01 keeps the A100 once, `status` has nothing unfinished, and the same assign again is refused."""
    lab = KilledLoser(fresh_vcsim)
    lab.killed_during_take_back(discard=False)
    vms = lab.status()
    assert vms["ml-train"]["assigned"] == [] and vms["ml-train"]["unfinished"] == [], vms["ml-train"]
    assert vms["render01"]["assigned"] == [str(A100_ACTIVE)] and vms["render01"]["unfinished"] == []
    assert _passthrough_devices(lab.sim, "render01") == [str(A100_ACTIVE)]
    again = lab.gpupass("assign", lab.uri, "ml-train", f"{ESX02}/{A100_ACTIVE}", "--yes")
    assert again.returncode != 0 and "render01" in again.stdout + again.stderr, again.stdout + again.stderr
    assert _passthrough_devices(lab.sim, "ml-train") == []


def test_a_losing_run_killed_with_its_take_back_lost_is_shown_by_status_and_the_release_it_names_converges(
        fresh_vcsim):
    """The same kill, the take-back lost on the way: ml-train still holds the A100 render01 holds. `status` says so
    on ml-train with the release that finishes it; that release leaves the A100 on render01 alone, once."""
    lab = KilledLoser(fresh_vcsim)
    lab.killed_during_take_back(discard=True)
    vms = lab.status()
    assert vms["ml-train"]["assigned"] == [str(A100_ACTIVE)], vms["ml-train"]
    notes = vms["ml-train"]["unfinished"] + vms["render01"]["unfinished"]
    assert any("which VM 'render01' holds too" in n for n in notes), notes
    release = lab.gpupass("release", lab.uri, "ml-train", f"{ESX02}/{A100_ACTIVE}", "--yes")
    assert release.returncode == 0, release.stdout + release.stderr
    vms = lab.status()
    assert vms["ml-train"]["assigned"] == [] and vms["ml-train"]["unfinished"] == []
    assert vms["render01"]["assigned"] == [str(A100_ACTIVE)] and vms["render01"]["unfinished"] == []
    assert _passthrough_devices(lab.sim, "render01") == [str(A100_ACTIVE)]


def test_an_endpoint_frozen_on_the_passthrough_switch_is_reported_as_unknown_and_a_rerun_converges(fresh_vcsim):
    """Frozen with UpdatePassthruConfig about to go (the assign's host step, after its intent record): gpupass gives
    up after the host's timeout, cannot read the host back nor undo its record, and says so; the thawed endpoint
    switches the T4 on; `status` shows the assign's intent, and the same assign again finishes it."""
    from gpupass.backends.esxi.backend import EsxiBackend
    from tests.integration.esxi.test_esxi_host_rules import T4

    sim = fresh_vcsim(username=USER)
    request = AssignmentRequest("cad-ws", (T4,))
    with EsxiBackend(target(sim)) as again:
        def switched():
            return next(g for g in again.inventory().gpus if g.address == T4).passthrough.enabled

        error = frozen_before_its_write(sim, target(sim), request, switched, action="enabling passthrough")
        assert "enable passthrough" in error.message and "could not be undone" in error.message, error.message
        assert "once the host answers" in error.remedy, error.remedy
        vm = again.inventory().find_vm("cad-ws")
        assert T4 not in vm.assigned and len(vm.unfinished) == 1, vm
        assert "run the same `gpupass assign` again" in vm.unfinished[0]
        execute(again, plan(again, request))
        vm = again.inventory().find_vm("cad-ws")
        assert T4 in vm.assigned and vm.unfinished == ()


def _release_killed_in_its_undo(fresh_vcsim, discard):
    """A real `gpupass release --disable-host-passthrough` whose reconfigure vSphere carries out with the answer lost:
    gpupass reads it back and sends the undo (its second ReconfigVM_Task), with which it is killed (SIGKILL); the undo
    is then carried out or (`discard`) lost on the way."""
    from support.cli import killed_with_call_held
    from tests.integration.esxi.test_esxi_release_faults import KilledRelease

    lab = KilledRelease(fresh_vcsim)
    lab.sim.drop_reply("ReconfigVM_Task")
    killed_with_call_held(lab.sim, "ReconfigVM_Task", lab.release, lab.env, skip=1, discard=discard)
    return lab


def test_a_release_killed_with_its_undo_on_the_wire_carried_out_is_exactly_as_it_was(fresh_vcsim):
    """The undo carried out after the kill: ml-train holds the A100 once with its record, passthrough still on,
    nothing unfinished (the release's record went with the undo); the same release again finishes."""
    lab = _release_killed_in_its_undo(fresh_vcsim, discard=False)
    vm = lab.ml_train()
    assert vm["assigned"] == [str(A100_ACTIVE)] and vm["unfinished"] == [], vm
    assert _passthrough_devices(lab.sim, "ml-train") == [str(A100_ACTIVE)]
    assert lab.a100()["enabled"] is True
    lab.rerun_finishes(["esxi.reconfigure", "esxi.passthrough", "esxi.end-intent"])


def test_a_release_killed_with_its_undo_lost_is_released_and_status_shows_the_switch_back_left(fresh_vcsim):
    """The undo lost on the way: the release's reconfigure stands (device off the VM, settings restored) with its
    record, passthrough still on -- `status` says so, and the same release again switches it off and clears it."""
    lab = _release_killed_in_its_undo(fresh_vcsim, discard=True)
    vm = lab.ml_train()
    assert vm["assigned"] == [] and len(vm["unfinished"]) == 1, vm
    assert f"passthrough of {A100_ACTIVE} on host {ESX02} is still on" in vm["unfinished"][0], vm
    lab.rerun_finishes(["esxi.passthrough", "esxi.end-intent"])


def test_an_endpoint_frozen_on_a_losing_runs_take_back_is_reported_not_known_and_status_tells_the_truth_after(
        fresh_vcsim):
    """ml-train's assign loses the race to render01's run (which wins between its plan and its write) and sends its
    take-back to a frozen endpoint: gpupass gives up after the host's timeout, cannot read the VM back either, and says
    the take-back's outcome is not known (rolled_back false; the release that finishes it named). Thawed, the endpoint
    carries the take-back out: ml-train exactly as it was, render01 keeps the A100 once, `status` has nothing
    unfinished, and the same assign again is refused before any write."""
    import dataclasses

    from gpupass.backends.esxi.backend import EsxiBackend
    from support.frozen_endpoint import frozen_before_its_write as frozen

    sim = fresh_vcsim(username=USER)
    with EsxiBackend(target(sim)) as reader:
        before = reader.inventory().find_vm("ml-train")
    loser = EsxiBackend(dataclasses.replace(target(sim), timeout=1.0))
    config_target = loser._config_target

    def another_run_wins_first(host, ids):  # just before the loser's write: render01's run takes the A100
        _winner_assigns(sim)
        return config_target(host, ids)

    loser._config_target = another_run_wins_first
    error = frozen(sim.pid, loser, AssignmentRequest("ml-train", (A100_ACTIVE,)),
                   lambda: _passthrough_devices(sim, "ml-train") == [], sends="_call",
                   is_the_write=lambda what, *args, **kwargs: str(what).startswith("restoring VM"))
    assert "taking this run's change to VM 'ml-train' back failed" in error.message, error.message
    assert "whether it was taken back is not known" in error.message, error.message
    assert "gpupass status HOST" in error.remedy, error.remedy
    with EsxiBackend(target(sim)) as again:
        facts = again.inventory()
        assert facts.find_vm("ml-train") == before and facts.find_vm("ml-train").unfinished == ()
        assert facts.find_vm("render01").assigned == (A100_ACTIVE,) and facts.find_vm("render01").unfinished == ()
        assert _passthrough_devices(sim, "render01") == [str(A100_ACTIVE)]
        with pytest.raises(PreflightFailed):
            execute(again, plan(again, AssignmentRequest("ml-train", (A100_ACTIVE,))))


def test_an_endpoint_frozen_on_the_undo_of_a_release_is_reported_not_known_and_a_rerun_converges(fresh_vcsim):
    """The release's reconfigure carried out with its answer lost; gpupass reads it back and sends the undo -- to a
    frozen endpoint. It gives up after the host's timeout and says the undo's outcome is not known (rolled_back
    false), never "as it was". Thawed, the endpoint carries the undo out: ml-train holds the A100 once with its record,
    `status` has nothing unfinished; the same release again converges."""
    from gpupass.backends.esxi.backend import EsxiBackend
    from tests.integration.esxi.test_esxi_release_faults import _assigned

    sim = fresh_vcsim(username=USER)
    backend, before, assigned = _assigned(sim)
    backend.close()
    sim.drop_reply("ReconfigVM_Task")                                    # the release's answer lost
    error = frozen_before_its_write(sim, target(sim), ReleaseRequest("ml-train"),
                                    lambda: _passthrough_devices(sim, "ml-train") == [str(A100_ACTIVE)],
                                    action="restoring VM")
    assert "whether it was taken back is not known" in error.message, error.message
    with EsxiBackend(target(sim)) as again:
        assert again.inventory().find_vm("ml-train") == assigned        # the undo carried out: as before the release
        assert _passthrough_devices(sim, "ml-train") == [str(A100_ACTIVE)]
        execute(again, plan(again, ReleaseRequest("ml-train")))
        assert again.inventory().find_vm("ml-train") == before
