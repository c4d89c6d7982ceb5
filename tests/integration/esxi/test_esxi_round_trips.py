"""An ESXi change is verified with one read of the VM, and vSphere itself guards it against a concurrent
change (ConfigSpec.changeVersion), on the simulator with real pyvmomi (issue 11)."""

from __future__ import annotations

import pytest

from gpupass.core import plugins
from gpupass.core.domain.pci import PciAddress
from gpupass.core.domain.request import AssignmentRequest
from gpupass.core.errors import Conflict
from gpupass.core.service import execute, make_plan
from gpupass.core.target import Secret, Target, TlsOptions

pytest.importorskip("pyVmomi")

USER = "administrator@vsphere.local"
A100_ACTIVE = PciAddress.parse("0000:3b:00.0")


@pytest.fixture
def sim(fresh_vcsim):
    return fresh_vcsim(username=USER)


@pytest.fixture
def backend(sim):
    from gpupass.backends.esxi.backend import EsxiBackend

    b = EsxiBackend(Target(uri=f"esxi://administrator%40vsphere.local@127.0.0.1:{sim.port}/Lab",
                           password=Secret(sim.password), tls=TlsOptions(ca_file=str(sim.ca_file))))
    yield b
    b.close()


def _vm(si, name):
    from pyVmomi import vim

    view = si.content.viewManager.CreateContainerView(si.content.rootFolder, [vim.VirtualMachine], True)
    try:
        return next(vm for vm in view.view if vm.name == name)
    finally:
        view.Destroy()


def _plan(backend):
    return make_plan(backend, backend.inventory(), AssignmentRequest("ml-train", (A100_ACTIVE,)),
                     plugins.default_registry())


def test_a_gpus_session_is_six_counted_soap_calls_the_login_included(backend, caplog):
    """What `gpupass gpus` sends, every request counted: the login's RetrieveServiceContent and Login (the
    ServiceContent is not read again), the datacenter, the view, ONE RetrievePropertiesEx, and Logout. govc
    object.collect sends the same and a DestroyView (tests/bench/bench_esxi.py). None goes through pyVmomi."""
    import logging

    caplog.set_level(logging.DEBUG, logger="gpupass.esxi")
    backend.inventory()
    backend.close()
    assert soap_calls(caplog) == ["RetrieveServiceContent", "Login", "FindByInventoryPath", "CreateContainerView",
                                  "RetrievePropertiesEx", "Logout"]
    assert backend.round_trips == 4  # counted after login, as before (SmartConnect's two were not)
    assert backend._si is None  # the read path made no pyVmomi session


def test_an_assign_verifies_with_one_read_of_the_vm(backend):
    backend.inventory()
    before = backend.round_trips
    vm = backend.read_back("ml-train", (A100_ACTIVE,))
    assert backend.round_trips - before == 1 and vm.name == "ml-train" and vm.assigned == ()
    outcome = execute(backend, _plan(backend))
    assert outcome.vm_after.assigned == (A100_ACTIVE,)


def soap_calls(caplog) -> list[str]:
    """The SOAP requests the backend logged (connection.connect and collect.retrieve log each one)."""
    return [r.args[0] for r in caplog.records if r.name == "gpupass.esxi" and r.msg == "SOAP %s on %s"]


def test_an_assign_is_four_soap_calls_beyond_the_inventory_and_its_claim_check_is_its_read_back(
        backend, sim, connect, caplog):
    """QueryConfigTarget, ReconfigVM_Task (the change and the claim in one ConfigSpec, guarded by
    changeVersion), the task's info, and ONE RetrievePropertiesEx through the session's view that decides
    the claim and is the read-back: the verify reads nothing more."""
    import logging

    from pyVmomi import vim

    result = _plan(backend)
    caplog.set_level(logging.DEBUG, logger="gpupass.esxi")
    before = backend.round_trips
    outcome = execute(backend, result)
    # "Fetch" is how pyVmomi reads one property of one object (here the task's info)
    assert soap_calls(caplog) == ["QueryConfigTarget", "ReconfigVM_Task", "Fetch", "RetrievePropertiesEx"]
    assert backend.round_trips - before == 4
    assert outcome.vm_after.assigned == (A100_ACTIVE,)
    config = _vm(connect(sim), "ml-train").config
    extra = {o.key: o.value for o in config.extraConfig}
    assert "gpupass.claim" in extra and [d for d in config.hardware.device
                                         if isinstance(d, vim.vm.device.VirtualPCIPassthrough)]
    # written after the decision, the read is not used again: the next verify reads the VM itself
    before = backend.round_trips
    backend.read_back("ml-train", (A100_ACTIVE,))
    assert backend.round_trips - before == 1


def test_a_vm_changed_after_the_plan_is_refused_by_vsphere_and_the_other_change_kept(backend, sim, connect):
    from pyVmomi import vim

    result = _plan(backend)
    other_admin = connect(sim)
    vm = _vm(other_admin, "ml-train")
    task = vm.ReconfigVM_Task(vim.vm.ConfigSpec(extraConfig=[vim.option.OptionValue(key="owner", value="bob")]))
    while str(task.info.state) not in ("success", "error"):
        pass
    assert str(task.info.state) == "success"
    with pytest.raises(Conflict) as caught:
        execute(backend, result)
    assert caught.value.rolled_back
    config = _vm(other_admin, "ml-train").config
    assert {o.key: o.value for o in config.extraConfig}.get("owner") == "bob"
    assert not [d for d in config.hardware.device if isinstance(d, vim.vm.device.VirtualPCIPassthrough)]


def test_the_simulator_refuses_a_stale_change_version(sim, connect):
    from pyVmomi import vim

    vm = _vm(connect(sim), "ml-train")
    stale = vm.config.changeVersion
    assert stale
    first = vm.ReconfigVM_Task(vim.vm.ConfigSpec(changeVersion=stale, annotation="one"))
    while str(first.info.state) not in ("success", "error"):
        pass
    assert str(first.info.state) == "success" and vm.config.changeVersion != stale
    second = vm.ReconfigVM_Task(vim.vm.ConfigSpec(changeVersion=stale, annotation="two"))
    while str(second.info.state) not in ("success", "error"):
        pass
    assert isinstance(second.info.error, vim.fault.ConcurrentAccess) and vm.config.annotation == "one"
