"""The host model's PowerShell subset: real cmdlet/parameter behaviour, refusal of what it does not know."""
from __future__ import annotations

import json

import pytest

from gpupass.backends.hyperv.lab.hostmodel import (HostModel, ScriptError, UnsupportedConstruct, lab_host,
                                               run_script)
from gpupass.backends.hyperv.lab.hostmodel.lab import A100_1_LOC, A100_2_LOC, T4_LOC
from hyperv_helpers import G, M


def run(model, script):
    return run_script(model, script)


@pytest.mark.parametrize("script,param,cmdlet", [
    ("Set-VM -Name 'ml-train' -AutomaticStopActon TurnOff", "AutomaticStopActon", "SetVM"),
    ("Get-VM -VMNme 'ml-train'", "VMNme", "GetVM"),
    ("Dismount-VMHostAssignableDevice -Path 'x' -Force", "Path", "DismountVMHostAssignableDevice"),
    ("Add-VMAssignableDevice -LocationPath 'x' -VMNames 'ml-train'", "VMNames", "AddVMAssignableDevice"),
])
def test_unknown_parameter_fails_with_the_real_error(lab, script, param, cmdlet):
    before = lab.to_json()
    r = run(lab, "$ErrorActionPreference = 'Stop'\n" + script + "\n'not reached'")
    assert r.exit_code == 1 and "not reached" not in r.stdout
    err = r.errors[0]
    assert err.message == f"A parameter cannot be found that matches parameter name '{param}'."
    assert err.fqid == f"NamedParameterNotFound,Microsoft.HyperV.PowerShell.Commands.{cmdlet}"
    assert "ParameterBindingException" in err.format()
    assert lab.to_json() == before


def test_pnp_cmdlet_unknown_parameter(lab):
    r = run(lab, "Get-PnpDevice -Klass Display")
    assert r.errors[0].fqid == "NamedParameterNotFound,Get-PnpDevice"


def test_parameter_prefix_and_alias(lab):
    r = run(lab, "(Get-VM -VMName 'web01').State.ToString(); (Get-VM -Na 'web01').Generation")
    assert r.stdout.split() == ["Running", "2"]


def test_missing_mandatory_parameter(lab):
    r = run(lab, "Add-VMAssignableDevice -VMName 'ml-train'")
    assert r.exit_code == 1
    assert r.errors[0].message == ("Cannot process command because of one or more missing mandatory parameters: "
                                   "LocationPath.")
    assert r.errors[0].fqid.startswith("MissingMandatoryParameter,")


def test_wrong_types_fail(lab):
    r = run(lab, "Set-VM -Name 'ml-train' -GuestControlledCacheTypes 'yes'")
    assert "Boolean parameters accept only Boolean values" in r.errors[0].message
    r = run(lab, "Set-VM -Name 'ml-train' -LowMemoryMappedIoSpace 5000000000")
    assert 'Value was either too large or too small for a UInt32.' in r.errors[0].message
    r = run(lab, "Set-VM -Name 'ml-train' -AutomaticStopAction Pause")
    assert r.errors[0].message.endswith("TurnOff, Save, ShutDown\"")
    assert lab.vm("ml-train").automatic_stop_action == "Save"


def test_size_units_parse(lab):
    r = run(lab, "Set-VM -Name 'ml-train' -LowMemoryMappedIoSpace 3Gb -HighMemoryMappedIoSpace 33280Mb\n"
                 "$x = 33280Mb\n$x\n(Get-VM 'ml-train').LowMemoryMappedIoSpace")
    assert r.exit_code == 0, r.stderr
    assert lab.vm("ml-train").low_mmio == 3 * G and lab.vm("ml-train").high_mmio == 33280 * M
    assert r.stdout.split() == [str(33280 * M), str(3 * G)]


@pytest.mark.parametrize("script", [
    "Get-VM -Name 'a",                    # unterminated string
    "foreach ($x in ) { }",
    "try { Get-VM }",                     # try without catch/finally
    "$x = (1 + ",
    "if ($true) { 'x'",
])
def test_syntax_errors_refused(lab, script):
    with pytest.raises(ScriptError):
        run(lab, script)


@pytest.mark.parametrize("script", [
    '$x = "a $y b"',                      # interpolation
    '$x = "tick`n"',                      # escape
    "Get-VM | Where-Object { $_.Name -eq 'x' }",   # script block
    "& 'Get-VM'",
    "function f { 1 }",
    "while ($true) { }",
    "[System.IO.File]::ReadAllText('c:\\x')",
    "$x = 'a' -replace 'a', 'b'",
    "Get-VM > out.txt",
    "$env:PATH",
    "'a'.GetType()",
])
def test_unsupported_constructs_refused_before_running(lab, script):
    before = lab.to_json()
    with pytest.raises(UnsupportedConstruct):
        run(lab, "Set-VM -Name 'ml-train' -AutomaticStopAction TurnOff\n" + script)
    assert lab.to_json() == before        # nothing ran


def test_unknown_cmdlet_is_command_not_found(lab):
    r = run(lab, "Invoke-Expression 'Get-VM'")
    assert r.exit_code == 1
    assert r.errors[0].fqid == "CommandNotFoundException"
    assert r.errors[0].message.startswith("The term 'Invoke-Expression' is not recognized")


def test_error_action_semantics(lab):
    r = run(lab, "Get-VM -Name 'nope'\n'continued'")
    assert r.stdout.strip() == "continued" and len(r.errors) == 1
    r = run(lab, "Get-VM -Name 'nope' -ErrorAction SilentlyContinue\n'quiet'")
    assert r.stdout.strip() == "quiet" and r.errors == []
    r = run(lab, "$ErrorActionPreference = 'Stop'\nGet-VM -Name 'nope'\n'not reached'")
    assert r.stdout == "" and r.exit_code == 1
    r = run(lab, "$ErrorActionPreference = 'Stop'\ntry { Get-VM -Name 'nope' } catch { $_.FullyQualifiedErrorId }")
    assert r.stdout.strip() == "InvalidParameter,Microsoft.HyperV.PowerShell.Commands.GetVM" and r.exit_code == 0
    r = run(lab, "try { throw 'boom' } catch { 'caught ' + $_.Exception.Message } finally { 'finally' }")
    assert r.stdout.split("\n")[:2] == ["caught boom", "finally"]
    r = run(lab, "throw 'boom'\n'not reached'")
    assert r.exit_code == 1 and r.stdout == "" and r.errors[0].message == "boom"
    r = run(lab, "'x'\nexit 3")
    assert r.exit_code == 3


def test_base64_json_and_convertto_json(lab):
    import base64
    data = base64.b64encode(json.dumps({"vm": "ml-train", "paths": [A100_2_LOC]}).encode()).decode()
    r = run(lab, f"$d = [Text.Encoding]::UTF8.GetString([Convert]::FromBase64String('{data}')) | ConvertFrom-Json\n"
                 "ConvertTo-Json -InputObject @{ vm = $d.vm; n = $d.paths.Count; p = $d.paths[0] } -Compress")
    assert json.loads(r.stdout) == {"vm": "ml-train", "n": 1, "p": A100_2_LOC}
    # enums serialise as numbers (Windows PowerShell 5.1), .ToString() gives the name
    r = run(lab, "$v = Get-VM -Name 'web01'\nConvertTo-Json -InputObject @($v.State, $v.State.ToString()) -Compress")
    assert json.loads(r.stdout) == [2, "Running"]


def test_dda_state_rules(lab):
    # running VM
    r = run(lab, "Set-VM -Name 'web01' -AutomaticStopAction TurnOff")
    assert r.exit_code == 1 and r.errors[0].fqid == "InvalidState,Microsoft.HyperV.PowerShell.Commands.SetVM"
    assert r.errors[0].message == "The operation cannot be performed while the virtual machine is in its current state."
    # no ACS: only -Force dismounts it
    nacs = lab.device_by_location(A100_2_LOC)
    nacs.acs, nacs.mitigation_driver, nacs.enabled = False, True, False
    assert "Access Control Services" in run(lab, f"Dismount-VMHostAssignableDevice -LocationPath '{A100_2_LOC}'").errors[0].message
    nacs.acs, nacs.mitigation_driver, nacs.enabled = True, False, True
    # enabled device cannot be dismounted
    r = run(lab, f"Dismount-VMHostAssignableDevice -LocationPath '{A100_2_LOC}' -Force")
    assert r.exit_code == 1 and "Disable-PnpDevice" in r.errors[0].message
    # without -Force and no vendor mitigation driver
    iid = lab.device_by_location(A100_2_LOC).instance_id
    assert run(lab, f"Disable-PnpDevice -InstanceId '{iid}' -Confirm:$false").exit_code == 0
    r = run(lab, f"Dismount-VMHostAssignableDevice -LocationPath '{A100_2_LOC}'")
    assert "has not supplied any directives for securing this device" in r.errors[0].message
    # Disable-PnpDevice without -Confirm:$false cannot prompt over WinRM
    r = run(lab, f"Enable-PnpDevice -InstanceId '{iid}'")
    assert "NonInteractive" in r.errors[0].message
    # not dismounted -> Add fails; running VM -> Add fails; dynamic memory -> Add fails
    r = run(lab, f"Add-VMAssignableDevice -LocationPath '{A100_2_LOC}' -VMName 'ml-train'")
    assert r.exit_code == 1
    assert r.errors[0].message == f"The specified device '{A100_2_LOC}' was not found on server 'HV-LAB01'."
    assert run(lab, f"Dismount-VMHostAssignableDevice -LocationPath '{A100_2_LOC}' -Force").exit_code == 0
    assert "current state" in run(lab, f"Add-VMAssignableDevice -LocationPath '{A100_2_LOC}' -VMName 'web01'").errors[0].message
    assert "dynamic memory" in run(lab, f"Add-VMAssignableDevice -LocationPath '{A100_2_LOC}' -VMName 'dyn-mem'").errors[0].message
    # already assigned elsewhere
    assert "was not found on server" in run(lab, f"Add-VMAssignableDevice -LocationPath '{A100_1_LOC}' -VMName 'ml-train'").errors[0].message
    # RMRR device cannot be dismounted
    t4 = lab.device_by_location(T4_LOC)
    t4.enabled = False
    assert "RMRR" in run(lab, f"Dismount-VMHostAssignableDevice -LocationPath '{T4_LOC}' -Force").errors[0].message
    # IOV unsupported host
    lab.iov_support = False
    assert "does not allow for OS control of the PCI Express bus" in run(
        lab, f"Dismount-VMHostAssignableDevice -LocationPath '{T4_LOC}' -Force").errors[0].message


def test_mount_back_comes_disabled(lab):
    r = run(lab, f"Remove-VMAssignableDevice -LocationPath '{A100_1_LOC}' -VMName 'cad-ws'\n"
                 f"Mount-VMHostAssignableDevice -LocationPath '{A100_1_LOC}'\n"
                 f"(Get-PnpDevice -InstanceId '{lab.device_by_location(A100_1_LOC).instance_id}').Status")
    assert r.exit_code == 0, r.stderr
    assert r.stdout.strip() == "Error"


def test_pnp_not_found_message(lab):
    r = run(lab, "Get-PnpDevice -Class Net")
    assert r.errors[0].fqid == "CmdletizationQuery_NotFound,Get-PnpDevice"
    assert "No matching Win32_PnPEntity objects found by CIM query" in r.errors[0].message


def test_lab_contents(lab):
    gpus = {(d.vendor_id, d.device_id) for d in lab.devices}
    assert gpus == {(0x10DE, 0x20B5), (0x10DE, 0x1EB8), (0x1002, 0x74A1)}
    assert {d.friendly_name: d.pci_class for d in lab.devices if not d.pnp_class} == {
        "3D Video Controller": 0x030200, "PCI Device": 0x120000}
    assert sum(1 for d in lab.devices if d.device_id == 0x20B5) == 2
    assert lab.device_by_location(T4_LOC).rmrr
    assert lab.device_by_location(A100_1_LOC).assigned_vm == "cad-ws"
    vm = {v.name: v for v in lab.vms}
    assert (vm["ml-train"].generation, vm["ml-train"].state, vm["ml-train"].dynamic_memory_enabled) == (2, "Off", False)
    assert (vm["render01"].generation, vm["render01"].state) == (1, "Off")
    assert vm["web01"].state == "Running"
    assert vm["cad-ws"].state == "Off"
    assert (vm["dyn-mem"].generation, vm["dyn-mem"].dynamic_memory_enabled) == (2, True)


def test_model_json_roundtrip(lab):
    run(lab, "Set-VM -Name 'ml-train' -AutomaticStopAction TurnOff")
    text = lab.to_json()
    again = HostModel.from_json(text)
    assert again.to_json() == text
    assert again.vm("ml-train").automatic_stop_action == "TurnOff"
    assert json.loads(text)["devices"][0]["assigned_vm"] == "cad-ws"
    with pytest.raises(ValueError):
        HostModel.from_dict({"devices": [{"bogus": 1}]})
    assert lab_host().to_json() == lab_host().to_json()


def test_mangled_scripts_fail_cleanly():
    """Randomly damaged builder scripts are refused (ScriptError) or run to a PowerShell-style result;
    the interpreter itself never crashes."""
    import random
    from gpupass.backends.hyperv import scripts as S
    rng = random.Random(20261125)
    bases = [S.inventory_script(), S.assign_script("ml-train", [A100_2_LOC], 3 * G, 33280 * M),
             S.release_script("cad-ws", [A100_1_LOC], S.VmSettings("Save", 128 * M, 512 * M, False))]
    refused = ran = 0
    for _ in range(300):
        s = rng.choice(bases)
        for _ in range(rng.randint(1, 3)):
            a = rng.randrange(len(s))
            b = min(len(s), a + rng.randint(1, 12))
            op = rng.random()
            if op < 0.4:
                s = s[:a] + s[b:]
            elif op < 0.7:
                s = s[:a] + rng.choice(["'", "(", ")", "{", "}", "$", "-", "1", ",", ";", "\n", " -Force", "@()"]) + s[a:]
            else:
                s = s[:a] + s[b:b + rng.randint(1, 12)] + s[a:]
        try:
            r = run_script(lab_host(), s)
        except ScriptError:
            refused += 1
            continue
        ran += 1
        assert isinstance(r.stdout, str) and isinstance(r.exit_code, int)
    assert refused >= 50 and ran >= 50     # each outcome at least a sixth of the runs
