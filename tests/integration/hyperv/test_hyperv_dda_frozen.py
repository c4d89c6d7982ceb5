"""The endpoint frozen (SIGSTOP) just before each Hyper-V DDA write -- the assign script, the release script, the script
that finishes a stopped release -- and thawed after gpupass gave up (issue 10's fault matrix; the same helper as the
GPU-P rows, tests/support/hyperv_faults.py).

gpupass must say the outcome is not known (rolled_back false: the host could not be read back either), never that
the VM is as it was. The thawed endpoint runs the script that was waiting, whole; the host is then exactly after the
command, with nothing for `status` to show, and the same command again has nothing to do.
"""
from __future__ import annotations

import pytest

from gpupass.backends.hyperv import scripts as S
from gpupass.backends.hyperv.addressing import address_map
from gpupass.backends.hyperv.backend import HypervBackend
from gpupass.backends.hyperv.lab.hostmodel import lab_host, run_script
from gpupass.backends.hyperv.lab.hostmodel.lab import A100_2_LOC
from gpupass.core import plugins
from gpupass.core.domain.request import AssignmentRequest, ReleaseRequest
from gpupass.core.service import execute, make_plan
from gpupass.core.target import Secret, Target
from hyperv_helpers import PASSWORD, USER, G

GPU = address_map([A100_2_LOC])[A100_2_LOC]
ASSIGN = AssignmentRequest("ml-train", (GPU,))
RELEASE = ReleaseRequest("ml-train")


def assigned(model):
    """`model` with ml-train holding the A100 as gpupass's assign script leaves it (its record in its notes)."""
    assert run_script(model, S.assign_script("ml-train", [A100_2_LOC], 3 * G, 200 * G)).exit_code == 0
    return model


def stopped_release(model):
    """`model` with ml-train's release stopped after Remove-VMAssignableDevice (the host failed its mount)."""
    assigned(model)
    model.inject_fault("Mount-VMHostAssignableDevice")
    assert run_script(model, S.release_script("ml-train", [A100_2_LOC])).exit_code == 1
    model.clear_faults()
    return model


@pytest.fixture
def frozen_lab(tmp_path):
    from support.hyperv_faults import endpoint_process

    def start(model):
        started = endpoint_process(tmp_path, model, USER, PASSWORD)
        endpoint = stack.enter_context(started)
        return endpoint, Target(uri=f"hyperv+http://{USER}@127.0.0.1:{endpoint.port}/?transport=basic", name="hv",
                                password=Secret(PASSWORD))

    import contextlib

    with contextlib.ExitStack() as stack:
        yield start


def holder(endpoint):
    return endpoint.model().device_by_location(A100_2_LOC).assigned_vm


def settled(target, request, original=None):
    """The host read again: nothing unfinished, the same request has nothing to do."""
    with HypervBackend(target) as again:
        facts = again.inventory()
        assert all(vm.unfinished == () for vm in facts.vms), [vm.unfinished for vm in facts.vms]
        assert make_plan(again, facts, request, plugins.default_registry()).nothing_to_do


def test_an_endpoint_frozen_before_the_assign_script_is_reported_unknown_and_the_thawed_host_assigns(frozen_lab):
    from support.hyperv_faults import frozen_before_its_write

    original = lab_host()
    endpoint, target = frozen_lab(lab_host())
    error = frozen_before_its_write(endpoint, target, ASSIGN, "Add-VMAssignableDevice",
                                    lambda: holder(endpoint) == "ml-train")
    assert "could not be read again" in error.message
    vm = endpoint.model().vm("ml-train")
    assert holder(endpoint) == "ml-train" and vm.automatic_stop_action == "TurnOff" and S.RECORD_BEGIN in vm.notes
    settled(target, ASSIGN)
    with HypervBackend(target) as release:                  # the record the thawed script wrote restores everything
        execute(release, make_plan(release, release.inventory(), RELEASE, plugins.default_registry()))
    assert endpoint.model().to_dict() == original.to_dict()


def test_an_endpoint_frozen_before_the_release_script_is_reported_unknown_and_the_thawed_host_releases(frozen_lab):
    from support.hyperv_faults import frozen_before_its_write

    original = lab_host().to_dict()
    endpoint, target = frozen_lab(assigned(lab_host()))
    frozen_before_its_write(endpoint, target, RELEASE, "Remove-VMAssignableDevice",
                            lambda: holder(endpoint) is None and S.RECORD_BEGIN not in endpoint.model().vm("ml-train").notes)
    assert endpoint.model().to_dict() == original            # released exactly: device back, settings restored
    settled(target, RELEASE)


def test_an_endpoint_frozen_before_the_finishing_release_is_reported_unknown_and_the_thawed_host_finishes(frozen_lab):
    from support.hyperv_faults import frozen_before_its_write

    original = lab_host().to_dict()
    endpoint, target = frozen_lab(stopped_release(lab_host()))
    with HypervBackend(target) as first:
        assert first.inventory().find_vm("ml-train").unfinished       # the stopped release is shown
    frozen_before_its_write(endpoint, target, RELEASE, "Mount-VMHostAssignableDevice",
                            lambda: S.RECORD_BEGIN not in endpoint.model().vm("ml-train").notes)
    assert endpoint.model().to_dict() == original
    settled(target, RELEASE)
