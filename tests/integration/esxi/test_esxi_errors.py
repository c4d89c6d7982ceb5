"""vSphere faults provoked on the simulator through real pyvmomi, translated by fault TYPE
(backends/esxi/errors.py): the core's error type, with the vmodl fault itself kept as the cause. (An untrusted
certificate: tests/integration/esxi/test_esxi_backend.py.)"""

from __future__ import annotations

import pytest

pytest.importorskip("pyVmomi")

from pyVmomi import vim, vmodl  # noqa: E402

from gpupass.backends.esxi.errors import OutcomeUnknown  # noqa: E402
from gpupass.core.errors import AuthenticationFailed, Conflict, NotFound, OperationFailed  # noqa: E402
from tests.integration.esxi.test_esxi_backend import target  # noqa: E402
from tests.integration.esxi.test_esxi_vcsim import add_device_spec, backing_for  # noqa: E402


@pytest.fixture
def sim(fresh_vcsim):
    return fresh_vcsim(username="administrator@vsphere.local")


@pytest.fixture
def backend(sim):
    from gpupass.backends.esxi.backend import EsxiBackend

    b = EsxiBackend(target(sim))
    b.inventory()
    yield b
    b.close()


def task_error(backend, start, kind):
    """Run a task the simulator fails; return the core's error after checking its vSphere cause."""
    with pytest.raises(kind) as caught:
        backend._wait(start(), "the task", "the VM")
    return caught.value


def fault_of(error, fault):
    cause = error.__cause__ or error.__context__  # connecting raises `from None`: the fault is the context
    assert isinstance(cause, fault), cause
    return error


def test_a_wrong_password_is_authentication_failed(sim):
    from gpupass.backends.esxi.backend import EsxiBackend

    with pytest.raises(AuthenticationFailed) as caught:
        EsxiBackend(target(sim, password="wrong")).inventory()
    fault_of(caught.value, vim.fault.InvalidLogin)


def test_a_session_that_was_logged_out_is_authentication_failed(backend):
    backend._service_content.sessionManager.Logout()
    with pytest.raises(AuthenticationFailed) as caught:
        backend._call("reading the VMs", lambda: backend._vm_ref("ml-train").config.name)
    fault_of(caught.value, vim.fault.NotAuthenticated)


def test_a_device_added_to_a_running_vm_is_operation_failed_power_it_off(backend):
    vm, host = backend._vm_ref("web01"), backend._host_ref("esx01.lab.local")
    error = task_error(backend, lambda: vm.ReconfigVM_Task(spec=add_device_spec(backing_for(host, "0000:3b:00.0"))),
                       OperationFailed)
    fault_of(error, vim.fault.InvalidPowerState)
    assert error.remedy == "power the VM off first" and error.rolled_back is True  # not performed


def test_a_device_that_is_not_active_is_operation_failed_check_passthrough(backend):
    vm, host = backend._vm_ref("render01"), backend._host_ref("esx02.lab.local")
    good = backing_for(host, "0000:3b:00.0")
    inactive = vim.vm.device.VirtualPCIPassthrough.DeviceBackingInfo(
        id="0000:af:00.0", deviceId="20b5", systemId=good.systemId, vendorId=0x10DE, deviceName="A100")
    error = task_error(backend, lambda: vm.ReconfigVM_Task(spec=add_device_spec(inactive)), OperationFailed)
    fault_of(error, vim.fault.InvalidDeviceBacking)
    assert "not an active passthrough device" in error.remedy and error.rolled_back is True


def test_a_reboot_outside_maintenance_mode_is_operation_failed_invalid_state(backend):
    host = backend._host_ref("esx01.lab.local")
    error = task_error(backend, lambda: host.RebootHost_Task(force=False), OperationFailed)
    fault_of(error, vim.fault.InvalidState)
    assert "maintenance mode" in error.remedy and error.rolled_back is True


def test_a_maintenance_mode_that_times_out_is_an_outcome_not_known_timedout(backend):
    """Timedout: "thrown when a server abandons an operation that is taking longer than expected" -- abandoned, not
    undone: the error claims nothing (no rolled_back), so the service reads the host again."""
    host = backend._host_ref("esx01.lab.local")  # web01 runs there
    error = task_error(backend, lambda: host.EnterMaintenanceMode_Task(timeout=0), OutcomeUnknown)
    fault_of(error, vim.fault.Timedout)
    assert not hasattr(error, "rolled_back") and error.to_dict()["error"] == "operation-failed"


def test_a_power_on_the_vm_config_refuses_is_an_outcome_not_known(backend):
    """GenericVmConfigFault, "thrown when a running virtual machine reports an error": nothing says the operation
    changed nothing, so the error claims nothing and the host is read again."""
    vm, host = backend._vm_ref("ml-train"), backend._host_ref("esx02.lab.local")
    backend._wait(vm.ReconfigVM_Task(spec=add_device_spec(backing_for(host, "0000:3b:00.0"))), "adding", "ml-train")
    error = task_error(backend, lambda: vm.PowerOnVM_Task(), OutcomeUnknown)
    fault_of(error, vim.fault.GenericVmConfigFault)
    assert not hasattr(error, "rolled_back")


def test_a_stale_change_version_is_conflict(backend):
    vm = backend._vm_ref("ml-train")
    stale = vm.config.changeVersion
    backend._wait(vm.ReconfigVM_Task(spec=vim.vm.ConfigSpec(annotation="someone else")), "their change", "ml-train")
    error = task_error(backend, lambda: vm.ReconfigVM_Task(spec=vim.vm.ConfigSpec(annotation="mine",
                                                                                  changeVersion=stale)), Conflict)
    fault_of(error, vim.fault.ConcurrentAccess)
    assert error.rolled_back is True  # changeVersion refused it: not applied


def test_an_object_removed_meanwhile_is_not_found(backend):
    vm = backend._vm_ref("ml-train")
    backend._wait(vm.Destroy_Task(), "removing the VM", "ml-train")
    with pytest.raises(NotFound) as caught:
        backend._call("reading the VM", lambda: vm.config.name)
    fault_of(caught.value, vmodl.fault.ManagedObjectNotFound)
