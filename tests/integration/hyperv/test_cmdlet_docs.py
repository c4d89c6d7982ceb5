"""The host model binds the Hyper-V and PnpDevice cmdlets' parameters as Microsoft documents them.

The table the model uses (hostmodel/cmdlet_docs.py) is checked against the checked-in extract of the pages
(tests/fixtures/docs/windows-powershell-docs/, SYNTAX and PARAMETERS sections verbatim, with path and commit),
and the model's own parameter lists against the table; then binding is shown to refuse what Windows refuses.
"""
from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from gpupass.backends.hyperv import scripts as S
from gpupass.backends.hyperv.lab.hostmodel import lab_host, run_script
from gpupass.backends.hyperv.lab.hostmodel import cmdlet_docs
from gpupass.backends.hyperv.lab.hostmodel.cmdlets import CMDLETS, COMMON
from gpupass.backends.hyperv.lab.hostmodel.docs_extract import PAGES, parse_page
from gpupass.backends.hyperv.lab.hostmodel.lab import A100_1_LOC, A100_2_LOC

EXTRACT = Path(__file__).resolve().parents[2] / "fixtures" / "docs" / "windows-powershell-docs"
# model type -> the documented .NET type it converts to
TYPES = {"string": "String", "string[]": "String[]", "switch": "SwitchParameter", "bool": "Boolean",
         "uint16": "UInt16", "uint32": "UInt32", "uint64": "UInt64", "enum:StopAction": "StopAction", "vm[]": "VirtualMachine[]"}
OBJECT_TYPES = {"CimInstance[]", "VMAssignedDevice[]", "VMGpuPartitionAdapter[]", "VMHostPartitionableGpu[]"}      # passed through as the objects other cmdlets return


def test_the_table_is_the_checked_in_extract_of_the_docs():
    assert set(cmdlet_docs.CMDLETS) == {Path(p).stem for p in PAGES}
    for name, entry in cmdlet_docs.CMDLETS.items():
        page = EXTRACT / entry["source"]
        text = page.read_text(encoding="utf-8")
        header = text.splitlines()[0]
        assert header == (f"<!-- MicrosoftDocs/windows-powershell-docs {entry['source']} @{cmdlet_docs.COMMIT}: "
                          "the SYNTAX and PARAMETERS sections, verbatim -->")
        assert {"source": entry["source"], **parse_page(text)} == entry, name


def test_the_model_declares_only_documented_parameters_with_their_types():
    documented = {c for c in cmdlet_docs.CMDLETS}
    for cmdlet in CMDLETS.values():
        if cmdlet.doc is None:
            assert cmdlet.name not in documented
            continue
        page = cmdlet_docs.CMDLETS[cmdlet.doc]["parameters"]
        assert [p.name for p in cmdlet.params] == list(page)        # every documented parameter binds
        for p in cmdlet.params:
            doc = page[p.name]
            assert p.aliases == tuple(doc["aliases"]) and p.wildcards == doc["wildcards"]
            assert p.sets == {s: (v["required"], v["position"]) for s, v in doc["sets"].items()}
            if p.implemented:
                assert TYPES.get(p.type) == doc["type"] or (p.type == "object" and doc["type"] in OBJECT_TYPES), \
                    (cmdlet.name, p.name, p.type, doc["type"])
            if p.pipeline:
                assert doc["pipeline"].startswith("True"), (cmdlet.name, p.name)
        assert {p.name for p in cmdlet.all_params} == set(page) | {c.name for c in COMMON}


def run(script: str, model=None):
    return run_script(model or lab_host(), script)


def fqid(r) -> str:
    return r.errors[0].fqid.split(",")[0]


def test_an_undocumented_parameter_is_not_found():
    r = run("Get-VM -Bogus 1")
    assert fqid(r) == "NamedParameterNotFound"
    assert r.errors[0].message == "A parameter cannot be found that matches parameter name 'Bogus'."
    # Get-VM has no -WhatIf (it changes nothing; its page lists none)
    assert fqid(run("Get-VM -WhatIf")) == "NamedParameterNotFound"


def test_remove_vmassignabledevice_has_no_vm_parameter():
    # The page lists -VMName and -VMAssignableDevice; "-VM" is a prefix of both, so PowerShell cannot choose.
    r = run(f"$v=Get-VM -Name 'cad-ws'\nRemove-VMAssignableDevice -LocationPath '{A100_1_LOC}' -VM $v")
    assert fqid(r) == "AmbiguousParameter"
    assert "-VMName" in r.errors[0].message and "-VMAssignableDevice" in r.errors[0].message


def test_the_release_script_removes_through_the_object_set():
    lab = lab_host()
    assert run(S.release_script("cad-ws", [A100_1_LOC], None), lab).exit_code == 0
    assert lab.device_by_location(A100_1_LOC).assigned_vm is None
    # a device the VM does not hold: Get-VMAssignableDevice returns nothing and Remove refuses the $null
    r = run(S.release_script("ml-train", [A100_2_LOC], None), lab)
    assert r.exit_code == 1
    assert "because it is null" in json.loads(r.stdout)["error"]


def test_a_documented_parameter_the_model_does_not_implement_is_refused_as_such():
    r = run("Get-VM -ComputerName 'hv02'")
    assert fqid(r) == "ModelLimitation" and "does not implement -ComputerName" in r.errors[0].message


def test_parameter_sets_are_resolved_as_documented():
    # -Name (set Name) and -VM (set VMObject) never share a set
    r = run("$v=Get-VM -Name 'ml-train'\nSet-VM -Name 'ml-train' -VM $v -Passthru")
    assert fqid(r) == "AmbiguousParameterSet"
    assert r.errors[0].message == "Parameter set cannot be resolved using the specified named parameters."
    # -VMName is mandatory in Get-VMSnapshot's default set
    r = run("Get-VMSnapshot")
    assert fqid(r) == "MissingMandatoryParameter" and r.errors[0].message.endswith("parameters: VMName.")
    # positional: Get-VMSnapshot [-VMName] <String[]> [[-Name] <String>]
    lab = lab_host()
    from gpupass.backends.hyperv.lab.hostmodel import Checkpoint
    lab.vm("render01").checkpoints.append(Checkpoint("before-driver"))
    r = run("Get-VMSnapshot render01 before-driver | ConvertTo-Json -Compress", lab)
    assert json.loads(r.stdout)["Name"] == "before-driver"


def test_get_vm_name_takes_wildcards_as_documented():
    r = run("Get-VM -Name 'ml-*' | ConvertTo-Json -Compress")
    assert json.loads(r.stdout)["Name"] == "ml-train"
    assert cmdlet_docs.CMDLETS["Get-VM"]["parameters"]["Name"]["wildcards"] is True


def test_get_pnpdeviceproperty_takes_a_piped_device():
    # the InputObject (cdxml) set, as SurveyDDA.ps1 uses it ($pcidev | Get-PnpDeviceProperty $key)
    r = run("Get-PnpDevice -InstanceId 'PCI\\VEN_10DE&DEV_20B5*' -PresentOnly | Get-PnpDeviceProperty "
            "'{3AB22E31-8264-4b4e-9AF5-A8D2D8E33E62}  34' | ConvertTo-Json -Compress")
    assert r.exit_code == 0, [e.format() for e in r.errors]
    got = json.loads(r.stdout)
    assert got["KeyName"] == "DEVPKEY_PciDevice_RequiresReservedMemoryRegion" and got["Data"] is False


@pytest.mark.parametrize("cmdlet", sorted(cmdlet_docs.CMDLETS))
def test_every_page_is_named_in_the_model(cmdlet):
    assert CMDLETS[cmdlet.lower()].doc == cmdlet
    assert re.fullmatch(r"docset/winserver2022-ps/(Hyper-V|PnpDevice)/" + re.escape(cmdlet) + r"\.md",
                        cmdlet_docs.CMDLETS[cmdlet]["source"])
