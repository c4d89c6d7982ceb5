"""`lab-esxi`: up in the background (by PID), a target that trusts exactly its CA, state kept while up, down."""

from __future__ import annotations

import stat

import pytest

pytest.importorskip("pyVmomi")


def test_lab_up_target_assign_down(vcsim_binary, tmp_path):
    from gpupass.backends.esxi.backend import EsxiBackend
    from gpupass.backends.esxi.lab.host import EsxiLab
    from gpupass.core.domain.pci import PciAddress
    from gpupass.core.domain.request import AssignmentRequest
    from gpupass.core.plugins import default_registry
    from gpupass.core.service import execute, make_plan

    lab = EsxiLab()
    assert not lab.is_up(tmp_path)
    try:
        assert "serving" in lab.up(tmp_path)
        assert lab.is_up(tmp_path)
        password = tmp_path / "lab" / "esxi" / "password"
        assert stat.S_IMODE(password.stat().st_mode) == 0o600
        target = lab.target(tmp_path)
        assert target.uri.startswith("esxi://administrator%40vsphere.local@127.0.0.1:") and target.tls.verify
        assert password.read_text().strip() not in target.uri
        with EsxiBackend(target) as backend:
            facts = backend.inventory()
            plan = make_plan(backend, facts, AssignmentRequest("ml-train", (PciAddress.parse("0000:3b:00.0"),)),
                             default_registry())
            execute(backend, plan)
        with EsxiBackend(lab.target(tmp_path)) as again:  # state kept while up
            assert again.inventory().find_vm("ml-train").assigned
        lab.reset(tmp_path)
        with EsxiBackend(lab.target(tmp_path)) as fresh:
            assert fresh.inventory().find_vm("ml-train").assigned == ()
    finally:
        lab.down(tmp_path)
    assert not lab.is_up(tmp_path)
