"""Hyper-V GPU partitioning beyond one default partition: the host's GPU-P capabilities (Get-VMHostPartitionableGpu's
counts and per-partition limits, which Windows the host runs), the partition settings a share request may carry
(Add-VMGpuPartitionAdapter's -Min/-Max/-OptimalPartition<R>), and changing the host's partition count
(Set-VMHostPartitionableGpu -PartitionCount) as a planned step with its undo.

Everything runs through real pywinrm against the host model, which binds each cmdlet's parameters from its page in
Microsoft's cmdlet reference (winserver2022-ps) and parses every script with tree-sitter-powershell.
"""
from __future__ import annotations

import json
import os

import pytest

from gpupass.backends.hyperv import partitioning, scripts
from gpupass.backends.hyperv.addressing import address_map
from gpupass.backends.hyperv.lab.hostmodel import run_script
from gpupass.backends.hyperv.lab.hostmodel.lab import (A100_1_LOC, A100_2_LOC, GPUP_HOLDER, MI300X_LOC, RTX_GPUP_INSTANCE,
                                                   RTX_GPUP_LOC, T4_LOC, T4_NO_DRIVER_LOC, partitioned_lab_host)
from gpupass.backends.hyperv.lab.hostmodel.model import GpuPartition, partitionable_gpu_name
from gpupass.backends.hyperv.steps import RemovePartitions
from gpupass.core.domain.plan import Step
from gpupass.core.errors import UsageError
from hyperv_helpers import PASSWORD, USER
from support.cli import gpupass

RTX = str(address_map([A100_1_LOC, A100_2_LOC, T4_LOC, T4_NO_DRIVER_LOC, MI300X_LOC, RTX_GPUP_LOC])[RTX_GPUP_LOC])
PATH = partitionable_gpu_name(RTX_GPUP_INSTANCE)
ENV = {**os.environ, "GPUPASS_PASSWORD": PASSWORD}


@pytest.fixture
def host(endpoint_factory):
    def start(model=None):
        model = model or partitioned_lab_host()
        ep = endpoint_factory(model, "basic")
        return model, f"hyperv+http://{USER}@127.0.0.1:{ep.port}/?transport=basic"
    return start


def run(*args, expect=0):
    result = gpupass(*args, expect=expect, env=ENV)
    return json.loads(result.stdout) if "--json" in args and result.stdout.strip() else result


def free_model(counts=(8, 16, 32)):
    """The lab's GPU-P GPU with no partition held and several valid counts (32 set now)."""
    model = partitioned_lab_host()
    model.vm(GPUP_HOLDER).gpu_partitions.clear()
    model.partitionable[0].valid_partition_counts = list(counts)
    return model


# ------------------------------------------------------------------ what the host says it supports
def test_gpus_json_shows_the_hosts_partition_limits_and_its_windows(host):
    model, uri = host()
    document = run("gpus", uri, "--json")
    gpu = next(g for g in document["gpus"] if g["address"] == RTX)
    facts = gpu["extra"]["gpu_partitioning"]
    assert facts["instance_path"] == PATH and facts["valid_partition_counts"] == [32] and facts["partition_count"] == 32
    assert facts["resources"]["vram"]["max"] == 1000000000 and facts["resources"]["vram"]["min"] == 0
    assert facts["supports_incoming_live_migration"] is False
    settings = document["host"]["settings"]
    assert settings["os"] == {"caption": model.os_caption, "build": model.os_build, "product_type": 3}
    assert settings["gpu_partitioning"] == "available" and settings["gpu_partitioning_os_documented"] is True


def test_a_host_without_gpu_partitioning_says_so_and_refuses_a_share(host):
    model, uri = host()
    # As on Windows 10 (no Get-VMHostPartitionableGpu, Easy-GPU-PV issue #224): the cmdlet fails every time
    for n in range(1, 4):
        model.inject_fault("Get-VMHostPartitionableGpu", nth=1)
        if n == 1:
            text = run("gpus", uri).stdout
            assert "sharing: GPU partitioning is not supported on this host" in text
        elif n == 2:
            refused = run("check", uri, "ml-train", RTX, "--share", "partitions-32", expect=1)    # not supported
            assert "GPU partitioning is not supported on this host" in refused.stderr
        else:
            settings = run("gpus", uri, "--json")["host"]["settings"]
            assert settings["gpu_partitioning"] == "unavailable" and settings["gpu_partitioning_read"] is False


def test_a_host_whose_gpus_offer_no_partitioning_says_which_driver_is_missing(host):
    model = partitioned_lab_host()
    model.vm(GPUP_HOLDER).gpu_partitions.clear()
    model.partitionable.clear()
    model, uri = host(model)
    refused = run("check", uri, "ml-train", RTX, "--share", "partitions-32", expect=1)
    assert "no GPU of this host offers GPU partitioning" in refused.stderr
    assert run("gpus", uri, "--json")["host"]["settings"]["gpu_partitioning"] == "no-partitionable-gpu"


@pytest.mark.parametrize("caption, documented", [
    ("Microsoft Windows Server 2022 Datacenter", False), ("Microsoft Windows 11 Pro", False),
    ("Microsoft Windows Server 2025 Standard", True), ("Microsoft Azure Stack HCI", True)])
def test_preflight_warns_where_microsoft_does_not_document_gpu_partitioning(host, caption, documented):
    model = partitioned_lab_host()
    model.os_caption = caption
    model, uri = host(model)
    plan = run("plan", uri, "ml-train", RTX, "--share", "partitions-32", "--json")
    codes = {f["code"] for f in plan["findings"]}
    assert ("hyperv-gpu-partitioning-os" in codes) is (not documented)
    assert not plan["blocked"]
    kept = [f["feature"] for f in plan["features_kept"]]
    lost = [f["feature"] for f in plan["features_lost"]]
    assert kept == ["live migration, on Windows Server 2025 and Azure Stack HCI 24H2 hosts"]
    assert "SupportsIncomingLiveMigration False" in plan["features_kept"][0]["reason"]
    # "Currently, GPU partitioning on Azure Stack HCI doesn't support live migration of VMs" (22H2, 23H2)
    assert lost == (["live migration, on Azure Stack HCI 22H2 and 23H2"] if "Azure Stack HCI" in caption else [])


# ------------------------------------------------------------------ partition settings
def test_partition_settings_are_planned_given_and_read_back(host):
    model, uri = host()
    args = ("ml-train", RTX, "--share", "partitions-32", "--share-option", "minpartitionvram=100000000",
            "--share-option", "OptimalPartitionVRAM=200000000", "--share-option", "MaxPartitionVRAM=300000000")
    plan = run("plan", uri, *args, "--json")
    (step,) = plan["steps"]
    assert not plan["blocked"]
    assert ("-MinPartitionVRAM 100000000 -MaxPartitionVRAM 300000000 -OptimalPartitionVRAM 200000000 -Passthru"
            in step["preview"])
    assert "MinPartitionVRAM 100000000" in step["description"]
    run("assign", uri, *args, "--yes")
    (adapter,) = model.vm("ml-train").gpu_partitions
    assert adapter.settings == {"MinPartitionVRAM": 100000000, "OptimalPartitionVRAM": 200000000,
                                "MaxPartitionVRAM": 300000000}
    run("release", uri, "ml-train", RTX, "--yes")
    assert model.vm("ml-train").gpu_partitions == []


@pytest.mark.parametrize("options, problem", [
    (("MaxPartitionVRAM=2000000000",), "outside what GPU"),             # the GPU's MaxPartitionVRAM is 1000000000
    (("MinPartitionCompute=600", "MaxPartitionCompute=500"), "is more than MaxPartitionCompute 500"),
    (("MinPartitionVRAM=700", "OptimalPartitionVRAM=600"), "is more than OptimalPartitionVRAM 600"),
])
def test_partition_settings_outside_the_gpus_limits_are_refused_before_any_change(host, options, problem):
    model, uri = host()
    args = [a for o in options for a in ("--share-option", o)]
    result = run("check", uri, "ml-train", RTX, "--share", "partitions-32", *args, "--json", expect=3)
    (finding,) = [f for f in result["findings"] if f["code"] == "hyperv-partition-setting"]
    assert finding["severity"] == "blocker" and problem in finding["message"]
    run("assign", uri, "ml-train", RTX, "--share", "partitions-32", *args, "--yes", expect=3)
    assert model.vm("ml-train").gpu_partitions == []


@pytest.mark.parametrize("option, expect, code", [
    ("MinPartitionVRAM=-1", "not a whole number", 2), ("MinPartitionVRAM=1;Remove-VM", "not a whole number", 2),
    ("MinPartitionVRAM=\uff11\uff12", "not a whole number", 2),        # fullwidth digits: isdigit(), not ASCII
    ("MinPartitionVRAM=18446744073709551616", "not a whole number", 2),    # 2**64: no UInt64
    ("MinPartitionVRAM=$(Stop-Computer)", "not a whole number", 2),
    ("PartitionCount=4", "not supported on hyperv", 1), ("Min'PartitionVRAM=1", "not supported on hyperv", 1),
    ("MinPartitionVRAM", "is not NAME=VALUE", 2),
])
def test_hostile_or_unknown_share_options_are_refused_with_the_fix(host, option, expect, code):
    model, uri = host()
    result = run("plan", uri, "ml-train", RTX, "--share", "partitions-32", "--share-option", option, expect=code)
    assert expect in result.stderr
    assert model.vm("ml-train").gpu_partitions == [] and "Add-VMGpuPartitionAdapter" not in model.calls


def test_a_share_option_without_a_share_is_a_usage_error(host):
    model, uri = host()
    result = run("plan", uri, "ml-train", RTX, "--share-option", "MinPartitionVRAM=1", expect=2)
    assert "no --share" in result.stderr


def test_the_script_builder_refuses_what_is_no_partition_setting():
    with pytest.raises(ValueError):
        scripts.partition_add_script("vm", PATH, [("PartitionCount", 4)])
    with pytest.raises(ValueError):
        scripts.partition_add_script("vm", PATH, [("MinPartitionVRAM", -1)])
    with pytest.raises(ValueError):
        scripts.partition_add_script("vm", PATH, [("MinPartitionVRAM", 2**64)])
    with pytest.raises(ValueError):
        scripts.partition_add_script("vm", PATH, [("MinPartitionVRAM", 1), ("MinPartitionVRAM", 2)])
    with pytest.raises(UsageError):
        partitioning.request_settings({"MinPartitionVRAM": "1e9"})
    # a hostile VM name and GPU path reach PowerShell only as quoted literals
    script = scripts.partition_add_script("x'; Remove-VM *; '", "\\\\?\\PCI#'$(x)'", [("MaxPartitionVRAM", 5)])
    assert "$n='x''; Remove-VM *; '''" in script and "$ip='\\\\?\\PCI#''$(x)'''" in script


def test_a_release_undone_gives_the_partition_back_with_its_settings(open_backend_basic):
    model = partitioned_lab_host()
    settings = {"MinPartitionVRAM": 1000, "MaxPartitionVRAM": 1100, "OptimalPartitionVRAM": 1000}   # issue #3226's
    model.vm("ml-train").gpu_partitions.append(GpuPartition(PATH, settings=dict(settings)))
    backend = open_backend_basic(model)
    step = Step(action="hyperv.remove-gpu-partition", description="", undo="", payload=RemovePartitions("ml-train", PATH, 1))
    token = backend.apply(step)
    assert model.vm("ml-train").gpu_partitions == [] and token[0]["MinPartitionVRAM"] == 1000
    backend.undo(step, token)
    (again,) = model.vm("ml-train").gpu_partitions
    assert {k: v for k, v in again.settings.items() if k in settings} == settings


# ------------------------------------------------------------------ the host's partition count
def test_another_partition_count_is_a_planned_host_step_with_its_undo(host):
    model, uri = host(free_model())
    plan = run("plan", uri, "ml-train", RTX, "--share", "partitions-16", "--json")
    assert not plan["blocked"]
    assert [s["action"] for s in plan["steps"]] == ["hyperv.set-partition-count", "hyperv.add-gpu-partition"]
    assert "Set-VMHostPartitionableGpu -HostPartitionableGpu $g -PartitionCount $k" in plan["steps"][0]["preview"]
    (note,) = [f for f in plan["findings"] if f["code"] == "hyperv-partition-count-change"]
    assert note["severity"] == "info" and "sets it to 16" in note["message"]
    gpus = run("gpus", uri, "--json")["gpus"]
    types = {t["id"]: t["available"] for g in gpus if g["address"] == RTX for t in g["sharing"]["types"]}
    assert types == {"partitions-8": 8, "partitions-16": 16, "partitions-32": 32}
    run("assign", uri, "ml-train", RTX, "--share", "partitions-16", "--yes")
    assert model.partitionable[0].partition_count == 16 and len(model.vm("ml-train").gpu_partitions) == 1


def test_a_failed_add_sets_the_partition_count_back(host):
    model, uri = host(free_model())
    model.inject_fault("Add-VMGpuPartitionAdapter")
    result = run("assign", uri, "ml-train", RTX, "--share", "partitions-8", "--yes", expect=1)
    assert "Add-VMGpuPartitionAdapter" in result.stderr
    assert model.partitionable[0].partition_count == 32 and model.vm("ml-train").gpu_partitions == []
    assert model.calls.count("Set-VMHostPartitionableGpu") == 2      # to 8, and back to 32


def test_the_count_script_changes_nothing_while_a_vm_holds_a_partition_or_another_admin_changed_it():
    model = free_model()
    model.vm(GPUP_HOLDER).gpu_partitions.append(GpuPartition(PATH))
    result = run_script(model, scripts.partition_count_script(PATH, 16, 32))
    data = json.loads(result.stdout)
    assert result.exit_code == 1 and data["ok"] is False and data["held"] == [GPUP_HOLDER]
    assert model.partitionable[0].partition_count == 32 and "Set-VMHostPartitionableGpu" not in model.calls
    model.vm(GPUP_HOLDER).gpu_partitions.clear()
    moved = json.loads(run_script(model, scripts.partition_count_script(PATH, 16, 8)).stdout)    # it is 32, not 8
    assert moved["ok"] is False and "not 8" in moved["error"] and model.partitionable[0].partition_count == 32
    done = json.loads(run_script(model, scripts.partition_count_script(PATH, 16, 32)).stdout)
    assert done == {"ok": True, "previous": 32, "count": 16} and model.partitionable[0].partition_count == 16


def test_the_model_refuses_a_count_the_gpu_does_not_offer():
    model = free_model(counts=(16, 32))
    result = run_script(model, scripts.partition_count_script(PATH, 4, 32))
    assert result.exit_code == 1 and model.partitionable[0].partition_count == 32
    assert "not valid for this GPU" in json.loads(result.stdout)["error"]


@pytest.fixture
def open_backend_basic(endpoint_factory, tmp_path):
    from gpupass.backends.hyperv.backend import HypervBackend
    from gpupass.core.target import Secret, Target

    def open_(model):
        ep = endpoint_factory(model, "basic")
        return HypervBackend(Target(uri=f"hyperv+http://{USER}@127.0.0.1:{ep.port}/?transport=basic", name="hv-gpup",
                                    password=Secret(PASSWORD), options={"state_file": str(tmp_path / "s.json")}))
    return open_


def test_select_object_in_the_model_copies_the_properties_its_patterns_name():
    model = partitioned_lab_host()
    out = run_script(model, "ConvertTo-Json -InputObject @(Get-VMHostPartitionableGpu|Select-Object 'Name',"
                            "'*Partition*','Nothing','Total*') -Compress")
    (gpu,) = json.loads(out.stdout)
    assert list(gpu)[:3] == ["Name", "ValidPartitionCounts", "PartitionCount"]
    assert "CimSession" not in gpu and "ComputerName" not in gpu and gpu["Nothing"] is None
    assert gpu["TotalVRAM"] == 1000000000 and "AvailableVRAM" not in gpu


def test_a_lost_reply_to_the_count_change_is_read_back_and_undone(endpoint_factory, tmp_path):
    from gpupass.backends.hyperv.backend import HypervBackend
    from gpupass.core import plugins
    from gpupass.core.domain.request import AssignmentRequest
    from gpupass.core.domain.request import AssignOptions
    from gpupass.core.errors import OperationFailed
    from gpupass.core.service import execute, make_plan
    from gpupass.core.target import Secret, Target

    ep = endpoint_factory(free_model(), "basic")
    backend = HypervBackend(Target(uri=f"hyperv+http://{USER}@127.0.0.1:{ep.port}/?transport=basic", name="hv-gpup",
                                   password=Secret(PASSWORD), options={"state_file": str(tmp_path / "s.json")}))
    facts = backend.inventory()
    gpu = next(g for g in facts.gpus if g.sharing.offered)
    plan = make_plan(backend, facts, AssignmentRequest("ml-train", (gpu.address,), AssignOptions(share="partitions-8")),
                     plugins.default_registry())
    ep.drop_next_receive()         # the host changes the count; its reply is lost
    with pytest.raises(OperationFailed) as caught:
        execute(backend, plan)
    assert caught.value.rolled_back is True
    assert ep.model.partitionable[0].partition_count == 32 and ep.model.vm("ml-train").gpu_partitions == []


def test_a_paravirtualized_gpu_is_a_warning_that_says_settings_are_ignored(host):
    model, uri = host()          # the lab's GPU is named as the ExHyperV host's: ...\GPUPARAV
    plan = run("plan", uri, "ml-train", RTX, "--share", "partitions-32", "--share-option", "MaxPartitionVRAM=5",
               "--json")
    (finding,) = [f for f in plan["findings"] if f["code"] == "hyperv-gpu-paravirtualization"]
    assert finding["severity"] == "warning" and "settings asked for are ignored" in finding["message"]
    assert not plan["blocked"]
    gpu = next(g for g in run("gpus", uri, "--json")["gpus"] if g["address"] == RTX)
    assert gpu["extra"]["gpu_partitioning"]["paravirtualization"] is True


def test_fleet_find_counts_another_count_only_while_no_partition_is_held(host):
    model, uri = host(free_model())
    (row,) = run("fleet", "find", "--profile", "partitions-16", "--hosts", uri, "--json")["capacity"]
    assert (row["gpu"], row["free"]) == (RTX, 16)        # the count can be changed: nobody holds a partition
    run("assign", uri, "ml-train", RTX, "--share", "partitions-32", "--yes")
    (row,) = run("fleet", "find", "--profile", "partitions-16", "--hosts", uri, "--json", expect=3)["capacity"]
    assert row["free"] == 0                               # a 1/32 partition is held: no 1/16 until it is given back
