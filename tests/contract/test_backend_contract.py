"""The backend contract (gpupass.core.testing.contract) against the in-tree backends (conftest.ENVIRONMENTS)."""

from gpupass.core.service import execute
from gpupass.core.testing.contract import *  # noqa: F401,F403 - the contract's tests and its `backend` fixture
from gpupass.core.testing.contract import assign_request, plan


def test_execute_verifies_with_the_vms_read_back_not_the_whole_host(backend_env, backend):
    """Beyond the contract (the port's default read_back reads the whole host, which is correct): the in-tree
    backends read back only the VM they changed."""
    inventory_calls = []
    original = backend.inventory

    def counting_inventory():
        inventory_calls.append(1)
        return original()

    result = plan(backend, assign_request(backend_env))
    backend.inventory = counting_inventory
    try:
        outcome = execute(backend, result)
    finally:
        del backend.inventory
    assert inventory_calls == [] and backend_env.free_gpu in outcome.vm_after.assigned
