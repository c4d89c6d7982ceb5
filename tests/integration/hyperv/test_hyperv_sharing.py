"""Hyper-V GPU partitioning (GPU-P), read only: gpupass lists a partitionable GPU's partition types and the VMs
holding partitions, and refuses to give such a GPU whole to a VM.

The host model serves Get-VMHostPartitionableGpu and Get-VMGpuPartitionAdapter with the parameters their pages in
Microsoft's cmdlet reference document; the partitionable GPU is the one of a real published output
(tests/fixtures/real/sharing/get-vmhostpartitionablegpu-rtx-exhyperv.txt), checked against that output here. The
CLI talks to the model through real pywinrm and our WS-Management endpoint.
"""
from __future__ import annotations

import json
import os
import re
from pathlib import Path

import pytest

from gpupass.backends.hyperv import partitioning, scripts
from gpupass.backends.hyperv.addressing import address_map
from gpupass.backends.hyperv.lab.hostmodel import lab_host, run_script
from gpupass.backends.hyperv.lab.hostmodel.lab import (A100_1_LOC, A100_2_LOC, GPUP_HOLDER, MI300X_LOC, RTX_GPUP_INSTANCE,
                                                   RTX_GPUP_LOC, T4_LOC, T4_NO_DRIVER_LOC, partitioned_lab_host)
from gpupass.backends.hyperv.lab.hostmodel.model import partitionable_gpu_name
from gpupass.core.domain.sharing import ShareMode
from hyperv_helpers import PASSWORD, USER
from support.cli import gpupass

CORPUS = Path(__file__).resolve().parents[2] / "fixtures" / "real" / "sharing"
RTX = str(address_map([A100_1_LOC, A100_2_LOC, T4_LOC, T4_NO_DRIVER_LOC, MI300X_LOC, RTX_GPUP_LOC])[RTX_GPUP_LOC])


def format_list(name: str) -> dict[str, str]:
    """A Format-List output: 'Key : value' lines, a wrapped value continued on lines that start with spaces."""
    fields: dict[str, str] = {}
    last = None
    for line in (CORPUS / name).read_text(encoding="utf-8").splitlines():
        if line.startswith("#") or line.startswith("PS ") or not line.strip():
            continue
        m = re.match(r"^(\w+)\s+: (.*)$", line)
        if m:
            last = m[1]
            fields[last] = m[2]
        elif last and line.startswith(" "):
            fields[last] += line.strip()
    return fields


REAL_GPU = format_list("get-vmhostpartitionablegpu-rtx-exhyperv.txt")
REAL_ADAPTER = format_list("get-vmgpupartitionadapter-docs-issue-3226.txt")


def test_the_real_partitionable_gpu_name_points_to_its_pnp_instance():
    name = REAL_GPU["Name"]
    assert partitioning.instance_id_of(name) == RTX_GPUP_INSTANCE
    # the model names a partitionable GPU exactly as Windows did in the real output
    assert partitionable_gpu_name(RTX_GPUP_INSTANCE) == name
    assert partitioning.instance_id_of("GPUDeviceIDName") is None     # the docs' placeholder is no interface path


def as_json(fields: dict[str, str]) -> dict[str, object]:
    """A Format-List record as ConvertTo-Json would give it: {a, b} lists, numbers, True/False."""
    out: dict[str, object] = {}
    for key, text in fields.items():
        if text.startswith("{") and text.endswith("}"):
            out[key] = [int(c) for c in text.strip("{}").split(",") if c.strip()]
        elif text.isdigit():
            out[key] = int(text)
        elif text in ("True", "False"):
            out[key] = text == "True"
        else:
            out[key] = text
    return out


def test_what_gpupass_concludes_from_the_real_output():
    record = as_json(REAL_GPU)
    sharing = partitioning.sharing_of(record, [])
    (kind,) = sharing.types
    assert (kind.id, kind.mode, kind.max_instances, kind.available) == ("partitions-32", ShareMode.GPU_PARTITION, 32, 32)
    assert kind.framebuffer_bytes is None    # TotalVRAM 1000000000 = the whole GPU: driver units
    assert sharing.offered and not sharing.in_use
    held = partitioning.sharing_of(record, ["vdi01", "vdi02"])
    assert held.types[0].available == 30 and held.holders == ("vdi01", "vdi02")
    facts = partitioning.facts_of(record)
    assert (facts["valid_partition_counts"], facts["partition_count"]) == ([32], 32)
    assert facts["resources"]["vram"] == {"total": 1000000000, "available": 1000000000, "min": 0,
                                          "max": 1000000000, "optimal": 1000000000}
    assert facts["resources"]["encode"]["max"] == 2**64 - 1          # 18446744073709551615: not limited
    assert facts["supports_incoming_live_migration"] is False


def test_the_model_prints_the_real_outputs_properties():
    model = partitioned_lab_host()
    model.vm(GPUP_HOLDER).gpu_partitions.clear()        # the real output holds no partition
    result = run_script(model, "ConvertTo-Json -InputObject @(Get-VMHostPartitionableGpu) -Depth 3 -Compress")
    (gpu,) = json.loads(result.stdout)
    assert [k for k in REAL_GPU if k != "CimSession"] == list(gpu)
    for key, real in REAL_GPU.items():
        if key not in ("CimSession", "ComputerName"):
            shown = gpu[key]
            shown = "{" + ", ".join(map(str, shown)) + "}" if isinstance(shown, list) else str(shown)
            assert shown == real, key
    adapters = run_script(partitioned_lab_host(), "ConvertTo-Json -InputObject @(Get-VMGpuPartitionAdapter "
                                                  f"-VMName {scripts.ps_quote(GPUP_HOLDER)}) -Compress")
    (adapter,) = json.loads(adapters.stdout)
    assert set(REAL_ADAPTER) <= set(adapter) and adapter["InstancePath"] == REAL_GPU["Name"]


def test_the_inventory_script_reads_partitions_and_fits_the_command_line():
    script = scripts.inventory_script()
    assert "Get-VMHostPartitionableGpu" in script and "Get-VMGpuPartitionAdapter -VM $v" in script
    assert len(script) <= scripts.MAX_SCRIPT_CHARS
    data = json.loads(run_script(partitioned_lab_host(), script).stdout)
    assert [(v["Name"], v["Partitions"]) for v in data["Vms"] if v["Partitions"]] == [(GPUP_HOLDER, [REAL_GPU["Name"]])]
    assert json.loads(run_script(lab_host(), script).stdout)["Partitionable"] == []


@pytest.fixture
def hyperv_uri(endpoint_factory):
    def start(model):
        ep = endpoint_factory(model, "basic")
        return f"hyperv+http://{USER}@127.0.0.1:{ep.port}/?transport=basic"
    return start


ENV = {**os.environ, "GPUPASS_PASSWORD": PASSWORD}


def test_gpus_json_shows_the_partitions_and_who_holds_them(hyperv_uri):
    document = json.loads(gpupass("gpus", hyperv_uri(partitioned_lab_host()), "--json", env=ENV).stdout)
    gpus = {g["address"]: g for g in document["gpus"]}
    sharing = gpus[RTX]["sharing"]
    assert sharing["modes"] == ["gpu-partition"]
    assert [(t["id"], t["max_instances"], t["available"]) for t in sharing["types"]] == [("partitions-32", 32, 31)]
    assert sharing["shares"] == [{"id": f"{GPUP_HOLDER}/gpu-partition-1", "type": "partitions-32",
                                  "mode": "gpu-partition", "holder": GPUP_HOLDER}]
    assert gpus[RTX]["assigned_to"] is None              # a partition holder does not own the whole GPU
    assert all(not g.get("sharing", {}).get("types") for a, g in gpus.items() if a != RTX)


def test_a_gpu_holding_a_partition_is_not_given_whole(hyperv_uri):
    result = gpupass("check", hyperv_uri(partitioned_lab_host()), "ml-train", RTX, "--json", expect=3, env=ENV)
    findings = {f["code"]: f for f in json.loads(result.stdout)["findings"]}
    assert findings["gpu-shared"]["severity"] == "blocker" and f"'{GPUP_HOLDER}'" in findings["gpu-shared"]["message"]


def test_a_partitionable_gpu_holding_none_can_be_given_whole(hyperv_uri):
    model = partitioned_lab_host()
    model.vm(GPUP_HOLDER).gpu_partitions.clear()
    result = gpupass("check", hyperv_uri(model), "ml-train", RTX, "--json", expect=None, env=ENV)
    findings = {f["code"]: f for f in json.loads(result.stdout)["findings"]}
    assert "gpu-shared" not in findings and findings["gpu-sharing-withdrawn"]["severity"] == "info"


def test_a_host_that_cannot_say_leaves_partitions_unknown(open_backend_basic):
    model = partitioned_lab_host()
    # As on a host before Windows Server 2022, which has no Get-VMHostPartitionableGpu: the inventory still works
    model.inject_fault("Get-VMHostPartitionableGpu")
    facts = open_backend_basic(model).inventory()
    assert facts.host.settings["gpu_partitioning_read"] is False
    assert all(not g.sharing.offered and not g.sharing.in_use for g in facts.gpus)
    assert len(facts.gpus) == 6


@pytest.fixture
def open_backend_basic(endpoint_factory, tmp_path):
    from gpupass.backends.hyperv.backend import HypervBackend
    from gpupass.core.target import Secret, Target

    def open_(model):
        ep = endpoint_factory(model, "basic")
        return HypervBackend(Target(uri=f"hyperv+http://{USER}@127.0.0.1:{ep.port}/?transport=basic", name="hv-gpup",
                                    password=Secret(PASSWORD), options={"state_file": str(tmp_path / "s.json")}))
    return open_


def test_snapshots_keep_the_partitions(hyperv_uri, tmp_path):
    uri, snapshot = hyperv_uri(partitioned_lab_host()), tmp_path / "gpup.json"
    gpupass("snapshot", uri, "-o", str(snapshot), env=ENV)
    live = {g["address"]: g for g in json.loads(gpupass("gpus", uri, "--json", env=ENV).stdout)["gpus"]}
    offline = {g["address"]: g for g in json.loads(gpupass("gpus", str(snapshot), "--json").stdout)["gpus"]}
    assert offline[RTX]["sharing"] == live[RTX]["sharing"] and offline[RTX]["sharing"]["shares"]


def ms_docs_records() -> list[list[dict[str, str]]]:
    """Microsoft's sample outputs (partition-assign-vm-gpu.md): per block, its Format-List records."""
    text = (CORPUS / "get-vmhostpartitionablegpu-ms-docs-partition-count.txt").read_text(encoding="utf-8")
    blocks: list[list[dict[str, str]]] = [[]]
    for line in text.splitlines():
        if line.startswith("# ----"):
            blocks.append([])
        elif line.startswith("#") or line.startswith("PS "):
            continue
        elif not line.strip():
            if blocks[-1] and blocks[-1][-1]:
                blocks[-1].append({})
        else:
            m = re.match(r"^(\w+)\s+: (.*)$", line)
            assert m, line
            if not blocks[-1]:
                blocks[-1].append({})
            blocks[-1][-1][m[1]] = m[2]
    return [[r for r in block if r] for block in blocks]


def test_microsofts_published_partition_counts_map_to_gpus_and_types():
    before, after, adapters = ms_docs_records()
    # Names without "\GPUPARAV" (unlike the ExHyperV output) still point to their PnP instances
    assert [partitioning.instance_id_of(r["Name"]) for r in before] == [
        "PCI\\VEN_10DE&DEV_25B6&SUBSYS_157E10DE&REV_A1\\4&18416DC3&0&0000",
        "PCI\\VEN_10DE&DEV_25B6&SUBSYS_157E10DE&REV_A1\\4&5906F5E&0&0010"]
    (adapter,) = adapters
    assert partitioning.instance_id_of(adapter["InstancePath"]) == partitioning.instance_id_of(before[0]["Name"])
    # "{16, 8, 4, 2...}": the counts PowerShell printed (it cut the list); after -PartitionCount 4
    record = as_json({k: v.replace("...", "") for k, v in after[0].items()})
    assert record["ValidPartitionCounts"] == [16, 8, 4, 2] and record["PartitionCount"] == 4
    free = partitioning.sharing_of(record, [])
    assert [(t.id, t.available) for t in free.types] == [("partitions-2", 2), ("partitions-4", 4), ("partitions-8", 8),
                                                         ("partitions-16", 16)]
    held = partitioning.sharing_of(record, ["vm1"])     # a partition held: the count cannot change, 3 of 4 left
    assert [(t.id, t.available) for t in held.types] == [("partitions-2", None), ("partitions-4", 3),
                                                         ("partitions-8", None), ("partitions-16", None)]
    assert partitioning.facts_of(record)["resources"]["vram"]["max"] is None     # not printed there: unknown


def test_gpu_paravirtualization_is_told_from_gpu_partitioning_by_the_name():
    # GPU-PV names end in \GPUPARAV, GPU-P (SR-IOV) ones do not (Easy-GPU-PV issue #49); both published outputs agree
    text = (CORPUS / "get-vmpartitionablegpu-gpuparav-easy-gpu-pv-49.txt").read_text(encoding="utf-8")
    (line,) = [x for x in text.splitlines() if x.startswith("Name")]
    name = line.split(" : ", 1)[1].replace("**", "")        # the author's Markdown bold
    assert partitioning.instance_id_of(name) == "PCI\\VEN_10DE&DEV_1CB3&SUBSYS_11BE103C&REV_A1\\4&1F221E6C&0&0000"
    assert partitioning.facts_of({"Name": name})["paravirtualization"] is True
    assert partitioning.facts_of(as_json(REAL_GPU))["paravirtualization"] is True          # ExHyperV, a Windows host
    before, _, _ = ms_docs_records()
    assert not any(partitioning.is_paravirtualization(r["Name"]) for r in before)      # Microsoft's Windows Server samples
