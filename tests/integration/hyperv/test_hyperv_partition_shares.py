"""Hyper-V GPU partitioning (GPU-P) as a share: check, plan, assign and release a partition through real pywinrm
against the host model, which binds Add-/Remove-VMGpuPartitionAdapter's parameters from their pages in Microsoft's
cmdlet reference (winserver2022-ps) and parses every script with tree-sitter-powershell."""
from __future__ import annotations

import json
import os

import pytest

from gpupass.backends.hyperv import scripts
from gpupass.backends.hyperv.addressing import address_map
from gpupass.backends.hyperv.lab.hostmodel import run_script
from gpupass.backends.hyperv.lab.hostmodel.lab import (A100_1_LOC, A100_2_LOC, GPUP_HOLDER, MI300X_LOC, RTX_GPUP_INSTANCE,
                                                   RTX_GPUP_LOC, T4_LOC, T4_NO_DRIVER_LOC, partitioned_lab_host)
from gpupass.backends.hyperv.lab.hostmodel.model import VirtualMachine, partitionable_gpu_name
from hyperv_helpers import PASSWORD, USER
from support.cli import gpupass

RTX = str(address_map([A100_1_LOC, A100_2_LOC, T4_LOC, T4_NO_DRIVER_LOC, MI300X_LOC, RTX_GPUP_LOC])[RTX_GPUP_LOC])
PATH = partitionable_gpu_name(RTX_GPUP_INSTANCE)
ENV = {**os.environ, "GPUPASS_PASSWORD": PASSWORD}


@pytest.fixture
def host(endpoint_factory):
    model = partitioned_lab_host()
    ep = endpoint_factory(model, "basic")
    return model, f"hyperv+http://{USER}@127.0.0.1:{ep.port}/?transport=basic"


def run(*args, expect=0):
    result = gpupass(*args, expect=expect, env=ENV)
    return json.loads(result.stdout) if "--json" in args and result.stdout.strip() else result


def test_a_partition_is_given_and_taken_back(host):
    model, uri = host
    plan = run("plan", uri, "ml-train", RTX, "--share", "partitions-32", "--json")
    assert not plan["blocked"] and [s["action"] for s in plan["steps"]] == ["hyperv.add-gpu-partition"]
    assert "Add-VMGpuPartitionAdapter -VM $v -InstancePath $ip -Passthru" in plan["steps"][0]["preview"]
    assert plan["features_kept"] and plan["features_lost"] == []
    done = run("assign", uri, "ml-train", RTX, "--share", "partitions-32", "--yes", "--json")
    assert done["changed"]
    assert [a.instance_path for a in model.vm("ml-train").gpu_partitions] == [PATH]
    again = run("assign", uri, "ml-train", RTX, "--share", "partitions-32", "--yes", "--json")
    assert again["changed"] is False and again["plan"]["nothing_to_do"]
    released = run("release", uri, "ml-train", RTX, "--yes", "--json")
    assert released["changed"] and released["plan"]["operation"] == "release-share"
    assert model.vm("ml-train").gpu_partitions == [] and len(model.vm(GPUP_HOLDER).gpu_partitions) == 1


def test_preflight_refuses_another_partition_count_and_a_running_vm(host):
    model, uri = host
    model.partitionable[0].valid_partition_counts = [16, 32]
    findings = {f["code"] for f in run("check", uri, "ml-train", RTX, "--share", "partitions-16", "--json",
                                       expect=3)["findings"]}
    # web01 holds a 1/32 partition; how many 1/16 partitions would fit the host does not say
    assert findings == {"hyperv-partition-count", "share-type-mixed", "share-capacity-unknown",
                        "hyperv-gpu-paravirtualization"}      # the lab's GPU is the ExHyperV one: \GPUPARAV
    model.vm("ml-train").state = "Running"
    assert {f["code"] for f in run("check", uri, "ml-train", RTX, "--share", "partitions-32", "--json",
                                   expect=3)["findings"]} == {"vm-not-off", "hyperv-gpu-paravirtualization"}


def test_a_gpu_with_every_partition_held_refuses_one_more(host):
    model, uri = host
    model.partitionable[0].partition_count = 1
    model.partitionable[0].valid_partition_counts = [1]
    findings = {f["code"] for f in run("check", uri, "ml-train", RTX, "--share", "partitions-1", "--json",
                                       expect=3)["findings"]}
    assert findings == {"share-capacity-exhausted", "hyperv-gpu-paravirtualization"}


def test_a_failed_add_leaves_the_vm_as_it_was(host):
    model, uri = host
    model.inject_fault("Add-VMGpuPartitionAdapter")
    result = run("assign", uri, "ml-train", RTX, "--share", "partitions-32", "--yes", expect=1)
    assert "Add-VMGpuPartitionAdapter" in result.stderr
    assert model.vm("ml-train").gpu_partitions == []


def test_hostile_vm_names_reach_powershell_as_text(host):
    model, uri = host
    for name in ("gpu[1]", "a'b\u2019c", "$(Stop-Computer)", "web*"):
        model.vms.append(VirtualMachine(name))
        run("assign", uri, name, RTX, "--share", "partitions-32", "--yes")
        assert [a.instance_path for a in model.vm(name).gpu_partitions] == [PATH]
        run("release", uri, name, "--yes")
        assert model.vm(name).gpu_partitions == []
    assert len(model.vm(GPUP_HOLDER).gpu_partitions) == 1   # 'web*' touched nothing of web01


def test_the_cmdlets_bind_as_their_pages_document():
    model = partitioned_lab_host()
    # -VMName set, partition settings (UInt64), -Passthru returns the adapter with its Id
    out = run_script(model, f"$a=Add-VMGpuPartitionAdapter -VMName 'ml-train' -InstancePath {scripts.ps_quote(PATH)} "
                            "-MinPartitionVRAM 80000000 -MaxPartitionVRAM 100000000 -OptimalPartitionVRAM 100000000 "
                            "-Passthru;ConvertTo-Json -InputObject $a -Compress")
    adapter = json.loads(out.stdout)
    assert adapter["MaxPartitionVRAM"] == 100000000 and adapter["InstancePath"] == PATH
    # -AdapterId of the VMObject set
    run_script(model, f"Remove-VMGpuPartitionAdapter -VM (Get-VM -Name 'ml-train') -AdapterId {scripts.ps_quote(adapter['Id'])}")
    assert model.vm("ml-train").gpu_partitions == []
    # an unknown GPU is an error, and a parameter no page documents does not bind
    bad = run_script(model, "Add-VMGpuPartitionAdapter -VMName 'ml-train' -InstancePath 'nope'")
    assert "nope" in bad.stderr and "AddVMGpuPartitionAdapter" in bad.stderr
    unknown = run_script(model, "Add-VMGpuPartitionAdapter -VMName 'ml-train' -PartitionSizeMB 512")
    assert "NamedParameterNotFound" in unknown.stderr and "PartitionSizeMB" in unknown.stderr
    assert model.vm("ml-train").gpu_partitions == []


def test_fleet_find_profile_counts_the_free_partitions(host):
    model, uri = host
    document = run("fleet", "find", "--profile", "partitions-32", "--hosts", uri, "--json")
    (row,) = document["capacity"]
    assert (row["gpu"], row["type"], row["mode"], row["free"]) == (RTX, "partitions-32", "gpu-partition", 31)
    run("assign", uri, "ml-train", RTX, "--share", "partitions-32", "--yes")
    assert run("fleet", "find", "--profile", "partitions-32", "--hosts", uri, "--json")["capacity"][0]["free"] == 30
    # the GPU holds partitions: fleet find --model agrees with check that it cannot be given whole
    assert run("fleet", "find", "--model", "10de:2504", "--hosts", uri, "--json", expect=3)["candidates"] == []


def test_export_apply_round_trip_keeps_partitions_then_a_file_adds_and_removes_one(host, tmp_path):
    """export/apply carry GPU partitions: the exported file applies as a no-op, and an entry adds/removes one."""
    model, uri = host
    path = tmp_path / "gpus.yaml"
    gpupass("export", uri, "-o", str(path), env=ENV)
    exported = path.read_text()
    assert f"vm: {GPUP_HOLDER}\n  shares:\n  - gpu: \"{RTX}\"" in exported
    assert run("apply", str(path), "--yes", "--json") == {"file": str(path), "changed": False, "results": []}
    path.write_text(exported + f'- host: "{uri}"\n  vm: ml-train\n  shares: [{{gpu: "{RTX}", type: partitions-32}}]\n')
    applied = run("apply", str(path), "--yes", "--json")
    assert [(r["operation"], r["vm"], r["share"], r["applied"]) for r in applied["results"]] == [
        ("assign", "ml-train", "partitions-32", True)]
    assert [a.instance_path for a in model.vm("ml-train").gpu_partitions] == [PATH]
    assert run("diff", str(path), "--json")["in_sync"] is True
    path.write_text(exported)  # ml-train no longer listed: its partition is given back
    run("apply", str(path), "--yes")
    assert model.vm("ml-train").gpu_partitions == [] and len(model.vm(GPUP_HOLDER).gpu_partitions) == 1
