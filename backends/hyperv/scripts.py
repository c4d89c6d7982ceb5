"""PowerShell scripts the Hyper-V backend sends through pywinrm's ``run_ps``.

Rules every builder follows:

* values (VM names, location paths, ...) reach PowerShell only through :func:`ps_quote`: a single-quoted
  literal with every single-quote character doubled (PowerShell also treats the typographic quotes
  U+2018..U+201B as single quotes, so those are doubled too); numbers are formatted by Python as plain
  decimal integers; nothing is ever interpolated into double-quoted strings;
* each script is at most :data:`MAX_SCRIPT_CHARS` characters (pywinrm sends ``powershell -encodedcommand``
  through cmd.exe, whose 8,191 character line limit allows about 3,000 characters of script); a builder
  raises :class:`ScriptTooLarge` rather than emit a longer one;
* every script prints exactly one line of JSON (``ConvertTo-Json -Compress``) on stdout.
"""
from __future__ import annotations

import base64
import json
from dataclasses import dataclass
from typing import Sequence

MAX_SCRIPT_CHARS = 3000
CMD_LINE_LIMIT = 8191
STOP_ACTIONS = ("TurnOff", "Save", "ShutDown")
_QUOTES = "'\u2018\u2019\u201a\u201b"


class ScriptTooLarge(ValueError):
    """The script would not fit on cmd.exe's command line; split the work (e.g. fewer devices per call)."""


def ps_quote(value: str) -> str:
    """``value`` as a PowerShell single-quoted string literal (verbatim: no expansion of ``$``/backtick)."""
    if not isinstance(value, str):
        raise TypeError(f"ps_quote needs a str, got {type(value).__name__}")
    if "\x00" in value:
        raise ValueError("NUL cannot be passed in a PowerShell command line")
    return "'" + "".join(c + c if c in _QUOTES else c for c in value) + "'"


def ps_int(value: int) -> str:
    """A non-negative integer as a PowerShell literal (bool and float refused)."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError(f"expected a non-negative int, got {value!r}")
    return str(value)


def command_line_length(script: str) -> int:
    """Length of the cmd.exe line pywinrm's run_ps produces for ``script``."""
    return len("powershell -encodedcommand ") + len(base64.b64encode(script.encode("utf-16-le")))


def _check(script: str, what: str, max_chars: int | None) -> str:
    if max_chars is not None and (len(script) > max_chars or command_line_length(script) > CMD_LINE_LIMIT):
        raise ScriptTooLarge(f"{what} script is {len(script)} characters (limit {max_chars}); "
                             "send fewer devices per script")
    return script


def _lines(*parts: str) -> str:
    return "\n".join(p for p in parts if p)


# ---------------------------------------------------------------------------- the restore record
# Hyper-V keeps no record of a VM's settings from before a device was assigned, so gpupass keeps one in the VM's
# own notes (Set-VM -Notes, a String in both of Set-VM's parameter sets: MicrosoftDocs/windows-powershell-docs,
# docset/winserver2022-ps/Hyper-V/Set-VM.md; kept by Hyper-V as Msvm_VirtualSystemSettingData.Notes and read back
# as Get-VM's .Notes). It travels with the VM, not with how the host was spelled, and the assign script writes it
# in the same Set-VM call that changes the settings, so a reply lost after the script ran cannot lose it. The
# admin's own notes stay as they are: the record is one line after them, between two markers (its JSON names the
# VM's id, so a record copied to another VM with its notes is not that VM's). The release script reads it back,
# checks it before it changes anything (RECORD_DAMAGE says what it found wrong) and takes it out of the notes in the
# Set-VM call that restores the settings.
RECORD_BEGIN = "[gpupass restore record: do not edit]"
RECORD_END = "[end of gpupass record]"
# A GPU partition count change's intent (partition_count_script): one more line in the notes of the VM the partition is
# for, ``COUNT_BEGIN{"VMId", "Gpu": instance path, "From": count before, "To": count after}RECORD_END``, written before
# Set-VMHostPartitionableGpu and taken out by the partition add that follows (or by the count set back), so that a run
# stopped between the two leaves on the host who changed the count and what it was (records.count_changes).
COUNT_BEGIN = "[gpupass GPU-P count]"
# A release of GPU partitions from more than one GPU is one step (one script) per GPU (plan_release_share): its first
# script writes the release's intent before its removal, one more line ``RELEASE_BEGIN{"VMId", "Gpus": [instance
# paths]}RECORD_END``, and a removal after which the VM holds no partition of any GPU it names takes it out again (the
# last step's, or a rerun's); the undo putting the first step's partitions back settles it (_settle_release_note). A run
# stopped between its steps (its client killed) leaves it, so `status` shows the release unfinished and names the
# release that finishes it (records.partition_releases). The inventory reads both GPU-P notes from the first one on
# (GPU_P_NOTES).
RELEASE_BEGIN = "[gpupass GPU-P release]"
GPU_P_NOTES = "[gpupass GPU-P "
# JSON of the five settings is about 150 characters, plus the location paths a release is taking back while it runs
# (about 55 characters each, as many as fit one script); a longer "record" is not one gpupass wrote.
RECORD_MAX_CHARS = 1500
RECORD_DAMAGE = {
    "end": f"it has no end marker {RECORD_END!r} within {RECORD_MAX_CHARS} characters (cut, or edited)",
    "json": "it is not the JSON gpupass writes",
    "value": "it holds a stop action, MMIO size or cache setting Set-VM would refuse",
    "vm": "it was written for another VM (its VMId is not this VM's: copied with the notes?)",
}


# --------------------------------------------------------------------------- inventory
# PCI device properties asked by GUID and property id, as Microsoft's SurveyDDA.ps1 does (works on every
# locale and build; a misspelt name fails with "Element not found"). pciprop.h: DEFINE_PCI_DEVICE_DEVPKEY.
PCI_DEVICE_FMTID = "{3AB22E31-8264-4b4e-9AF5-A8D2D8E33E62}"
PROPERTY_IDS = {"Rmrr": 34,          # DEVPKEY_PciDevice_RequiresReservedMemoryRegion
                "Acs": 31,           # DEVPKEY_PciDevice_AcsCompatibleUpHierarchy
                "DeviceType": 1,     # DEVPKEY_PciDevice_DeviceType
                "Interrupts": 14}    # DEVPKEY_PciDevice_InterruptSupport
# PCI base classes this tool treats as GPUs: 0x03 display controllers, 0x12 processing accelerators.
GPU_BASE_CLASSES = ("03", "12")


# The record of one VM ($v), appended to $vms; its devices' owner noted in $own. Shared by the inventory
# and read_vm_script, so a VM read back after a change is described exactly as the inventory describes it.
# Record: the text of its notes after gpupass's RECORD_BEGIN, no more than a record can hold with its end marker; null
# where the notes hold no record, so a host with many VMs answers with its gpupass records only -- every one of them,
# so `status` sees each unfinished release (its intent) and each VM a stopped run left with a record but no device,
# whatever its settings, in this one script (records.py reads them). The notes are what Set-VM -Notes wrote ("Specifies
# notes to be associated with the virtual machine", a String: Set-VM.md, MicrosoftDocs/windows-powershell-docs
# docset/winserver2022-ps/Hyper-V), read back as the VirtualMachine object's Notes property -- which Get-VM.md does not
# list (it names the output type only): assumed from Hyper-V's Msvm_VirtualSystemSettingData.Notes and the public
# scripts that read it (`Get-VM | Select-Object Name, Notes`), as the release script's own check (_READ_RECORD) does.
# IndexOf/Substring are System.String's methods; not -like, to which the marker's brackets are wildcards (about_Wildcards).
RECORD_READ_CHARS = RECORD_MAX_CHARS + len(RECORD_END)
_VM_RECORD = _lines(
    f"$t=[string]$v.Notes;$i=$t.IndexOf({ps_quote(RECORD_BEGIN)});$rc=$null",
    f"if($i -ge 0){{$rc=$t.Substring($i+{len(RECORD_BEGIN)});if($rc.Length -gt {RECORD_READ_CHARS}){{"
    f"$rc=$rc.Substring(0,{RECORD_READ_CHARS})}}}}",
    f"$ri=$null;$j=$t.IndexOf({ps_quote(GPU_P_NOTES)});if($j -ge 0){{$ri=$t.Substring($j)}}",
    "$ad=@()",
    "foreach($a in @(Get-VMAssignableDevice -VM $v)){$own[$a.LocationPath]=$v.Name;$ad+=$a.LocationPath}",
    "$gp=@();if($pg){foreach($a in @(Get-VMGpuPartitionAdapter -VM $v)){$gp+=$a.InstancePath}}",
    "$cp=@()",
    "foreach($c in @(Get-VMSnapshot -VM $v)){$cp+=[pscustomobject]@{Name=$c.Name;Type=$c.SnapshotType.ToString()}}",
    "$vms+=[pscustomobject]@{Name=$v.Name;Id=$v.VMId;Generation=$v.Generation;State=$v.State.ToString();"
    "MemoryStartup=$v.MemoryStartup;DynamicMemory=$v.DynamicMemoryEnabled;"
    "StopAction=$v.AutomaticStopAction.ToString();LowMmio=$v.LowMemoryMappedIoSpace;"
    "HighMmio=$v.HighMemoryMappedIoSpace;GuestCache=$v.GuestControlledCacheTypes;Checkpoints=$cp;Devices=$ad;"
    "Partitions=$gp;Record=$rc;Intent=$ri}",
)
# GPU-P: a host without Get-VMHostPartitionableGpu leaves $pg null: not read (see inventory_script); the VM records
# read their partition adapters only where some GPU is partitionable.
# Every property Msvm_PartitionableGpu documents (ValidPartitionCounts, PartitionCount, Total*, Available*,
# Min/Max/OptimalPartition* of VRAM, encode, decode, compute) and SupportsIncomingLiveMigration (the real output in
# tests/fixtures/real/sharing/), by Select-Object's wildcards, not the object's CimSession.
_PARTITIONABLE = ("try{$pg=@(Get-VMHostPartitionableGpu|Select-Object 'Name','*Partition*','Total*','Available*',"
                  "'Supports*')}catch{}")


def read_vm_script(vm_name: str, max_chars: int | None = MAX_SCRIPT_CHARS) -> str:
    """One VM's record as the inventory reports it, ``{"Vms": [record]}`` (empty when no VM has that name).

    The name is compared with -eq, not passed to -Name (which takes wildcards: 'web*' must not read web01).
    """
    s = _lines(
        "$ErrorActionPreference='Stop'",
        f"$n={ps_quote(vm_name)}",
        _PARTITIONABLE,
        "$own=@{}",
        "$vms=@()",
        "foreach($v in @(Get-VM)){",
        "if($v.Name -ne $n){continue}",
        _VM_RECORD,
        "}",
        "ConvertTo-Json -InputObject ([pscustomobject]@{Vms=$vms}) -Depth 4 -Compress",
    )
    return _check(s, "read VM", max_chars)


def owners_script(location_paths: Sequence[str], max_chars: int | None = MAX_SCRIPT_CHARS) -> str:
    """Which VM holds each of these devices now: ``{"Held": [{"Path", "Vm"}]}`` (a device no VM holds is not
    listed). A few cmdlet calls instead of the whole inventory, for telling a lost race from other failures."""
    s = _lines(
        "$ErrorActionPreference='Stop'",
        _paths(location_paths),
        "$h=@()",
        "foreach($v in @(Get-VM)){foreach($a in @(Get-VMAssignableDevice -VM $v)){",
        "if($l -contains $a.LocationPath){$h+=[pscustomobject]@{Path=$a.LocationPath;Vm=$v.Name}}}}",
        "ConvertTo-Json -InputObject ([pscustomobject]@{Held=$h}) -Depth 3 -Compress",
    )
    return _check(s, "owners", max_chars)


def inventory_script(max_chars: int | None = MAX_SCRIPT_CHARS) -> str:
    """One script that reports the whole host as JSON::

        {"Host": {"Name", "IovSupport", "IovSupportReasons"},
         "Functions": [Fn, ...],
         "Vms": [{"Name", "Id", "Generation", "State", "MemoryStartup", "DynamicMemory", "StopAction",
                  "LowMmio", "HighMmio", "GuestCache", "Checkpoints": [{"Name", "Type"}],
                  "Devices": [location path, ...], "Partitions": [GPU-P instance path, ...],
                  "Record": the notes after RECORD_BEGIN (at most RECORD_READ_CHARS) or null}],
         "Partitionable": [{"Name", "ValidPartitionCounts", "PartitionCount", "Total<R>", "Available<R>",
                            "Min/Max/OptimalPartition<R>" (R: VRAM, Encode, Decode, Compute),
                            "SupportsIncomingLiveMigration"}] or null,
         "Os": {"Caption", "BuildNumber", "ProductType"}}

    where Fn (one PCI function) is ``{"InstanceId", "Name", "Class", "ClassCode", "Status", "Present",
    "LocationPath", "Slot", "Mem" (the memory ranges the device holds, flattened: [start0, end0, start1, end1, ...],
    inclusive bounds; empty while it holds none), "Interrupts" (bitmask
    1 line, 2 MSI, 4 MSI-X), "Rmrr", "Acs" (0 none .. 3 supported), "DeviceType" (2 = PCIe endpoint),
    "Dismounted", "Owner" (VM name or null)}``, one for each PCI function in a slot that holds a GPU: the GPUs
    and their companions, grouped by the backend (one pass here would not leave room on the command line for the
    VMs' records).  The survey values are null for a function that is not
    present (dismounted or gone): Windows reads them from the running device.

    Mem is read as Microsoft's SurveyDDA.ps1 reads a device's MMIO need (MicrosoftDocs/Virtualization-Documentation
    ``hyperv-tools/DiscreteDeviceAssignment/SurveyDDA.ps1``: the Win32_DeviceMemoryAddress instances its
    Win32_PnPAllocatedResource associations name, EndingAddress - StartingAddress each), through the same
    association from the Win32_PnPEntity that Get-PnpDevice returns.  Win32_PnPAllocatedResource lists "the resources
    that are in-use by a specific device" (its reference page on learn.microsoft.com), so a disabled, dismounted or
    absent device holds none (SurveyDDA.ps1 itself skips a disabled device: "Device is Disabled, unable to check
    resource requirements"): the backend then falls back to the catalog, marked as an estimate.

    GPUs are the functions whose PCI class code (``CC_xxxx`` in the hardware or compatible ids, "Identifiers
    for PCI Devices") starts with 03 or 12, not PnP class "Display": a GPU without a host driver, as
    Microsoft's DDA guides prepare one, has an empty Class and Status Error.  ``ClassCode`` is the hex
    text after ``CC_`` (6 or 4 digits).  Companions are the other PCI functions in the GPU's slot (same
    location path up to the function number), e.g. its HDMI audio controller.

    VMs are passed as objects (``-VM``), never by name: ``-VMName`` takes wildcards, so a VM called
    ``gpu[1]`` would not find itself.  State/StopAction/Type are enum names.  ``Present: false`` with
    ``Dismounted: false`` is a ghost PnP entry; with ``Dismounted: true`` a device given up for assignment.

    GPU partitioning: Partitionable is Get-VMHostPartitionableGpu's properties per GPU (Select-Object with wildcards:
    "Wildcards are permitted", Select-Object's page in PowerShell-Docs reference/5.1), null where that cmdlet failed
    or does not exist (it is in the winserver2022-ps docset; Windows 10 has
    none, Easy-GPU-PV issue #224): the try keeps DDA inventory working there.  Os is Win32_OperatingSystem's Caption,
    BuildNumber and ProductType (which Windows: Microsoft documents GPU-P for Windows Server 2025 and Azure Stack
    HCI).  The script stays under MAX_SCRIPT_CHARS (cmd.exe's line, see the module docstring): Host and Os are
    Select-Object copies, and class codes are matched with -like, to leave room for these.  Partitions are the InstancePath of
    each of the VM's Get-VMGpuPartitionAdapter objects, read only where some GPU is partitionable.
    """
    s = _lines(
        "$ErrorActionPreference='Stop'",
        "$h=Get-VMHost",
        # Which Windows: GPU partitioning is documented for Windows Server 2025 and Azure Stack HCI hosts (see
        # partitioning.py); Win32_OperatingSystem's Caption, BuildNumber and ProductType (its reference page).
        "$os=Get-CimInstance Win32_OperatingSystem|Select-Object 'Caption','BuildNumber','ProductType'",
        _PARTITIONABLE,
        "$own=@{}",
        "$vms=@()",
        "foreach($v in @(Get-VM)){",
        _VM_RECORD,
        "}",
        "$dis=@{}",
        "foreach($a in @(Get-VMHostAssignableDevice)){$dis[$a.LocationPath]=$true}",
        "$all=@(Get-PnpDevice -InstanceId 'PCI\\*' -ErrorAction SilentlyContinue)",
        "$lp=@{}",
        "if($all){foreach($q in @(Get-PnpDeviceProperty -InstanceId $all.InstanceId "
        "-KeyName 'DEVPKEY_Device_LocationPaths')){$lp[$q.InstanceId]=@($q.Data)[0]}}",
        "$cc=@{}",
        "$slots=@{}",
        "foreach($d in $all){$c='';foreach($x in @($d.HardwareID)+@($d.CompatibleID)){$i=$x.IndexOf('CC_')",
        "if($i -ge 0 -and -not $c){$c=$x.Substring($i+3)}}",
        "$cc[$d.InstanceId]=$c;$p=$lp[$d.InstanceId]",
        "if($p -and (" + " -or ".join(f"$c -like '{b}*'" for b in GPU_BASE_CLASSES)
        + ")){$slots[$p.Substring(0,$p.Length-3)]=$true}}",
        "$fs=@()",
        "$on=@()",
        "foreach($d in $all){$p=$lp[$d.InstanceId]",
        "if($p -and $slots.ContainsKey($p.Substring(0,$p.Length-3))){$fs+=$d;if($d.Present){$on+=$d.InstanceId}}}",
        "$kp=@{}",
        "foreach($n in " + ",".join(str(n) for n in PROPERTY_IDS.values()) + "){$t=@{}",
        f"if($on){{foreach($q in @(Get-PnpDeviceProperty -InstanceId $on -KeyName ('{PCI_DEVICE_FMTID} '+$n))){{"
        "$t[$q.InstanceId]=$q.Data}}",
        "$kp[$n]=$t}",
        "$fns=@()",
        "foreach($d in $fs){",
        "$id=$d.InstanceId;$p=$lp[$id];$sl=$p.Substring(0,$p.Length-3)",
        "$m=@()",
        "if($d.Present){foreach($r in @(Get-CimAssociatedInstance -InputObject $d -ResultClassName "
        "'Win32_DeviceMemoryAddress')){$m+=$r.StartingAddress,$r.EndingAddress}}",
        "$fns+=[pscustomobject]@{InstanceId=$id;Name=$d.FriendlyName;Class=$d.Class;ClassCode=$cc[$id];"
        "Status=$d.Status;Present=$d.Present;LocationPath=$p;Slot=$sl;Mem=$m;"
        + ";".join(f"{k}=$kp[{n}][$id]" for k, n in PROPERTY_IDS.items()) + ";"
        "Dismounted=($dis.ContainsKey($p) -or $own.ContainsKey($p));Owner=$own[$p]}",
        "}",
        "[pscustomobject]@{Host=($h|Select-Object 'Name','IovSupport','IovSupportReasons');Functions=$fns;Vms=$vms;"
        "Partitionable=$pg;Os=$os}|ConvertTo-Json -Depth 6 -Compress",
    )
    return _check(s, "inventory", max_chars)


# --------------------------------------------------------------------------- assign / release
@dataclass(frozen=True)
class VmSettings:
    """The VM settings DDA changes; what the release script restores."""
    stop_action: str
    low_mmio: int
    high_mmio: int
    guest_cache: bool

    def __post_init__(self) -> None:
        if self.stop_action not in STOP_ACTIONS:
            raise ValueError(f"stop_action must be one of {STOP_ACTIONS}")
        ps_int(self.low_mmio)
        ps_int(self.high_mmio)
        if self.low_mmio > 2**32 - 1:
            raise ValueError("low MMIO is a UInt32")


# Hyper-V's -Name/-VMName take wildcards (Get-VM.md: "Accept wildcard characters: True"): a VM called 'web*'
# must not select web01, and one called 'gpu[1]' would not match itself.  Find the VM by exact name with -eq,
# which is case-insensitive (about_Comparison_Operators) as VM names are to their admins (Virtual Server API docs:
# "Virtual machine names are case-insensitive"), pass the object with -VM, refuse a missing or duplicated name.  Where a cmdlet has
# no -VM (Remove-VMAssignableDevice, per its documentation page), pass what Get-VMAssignableDevice -VM returned.
_FIND_VM = _lines(
    "$v=@();foreach($x in @(Get-VM)){if($x.Name -eq $n){$v+=$x}}",
    # None: Get-VM says so itself, with its own error id (InvalidParameter,...GetVM), which errors.py reads as
    # NotFound; a name with wildcard characters matches quietly or not at all, and the throw says it.
    "if($v.Count -ne 1){if(!$v){$x=Get-VM -Name $n}throw (''+$v.Count+' VMs named '+$n)}",
    "$v=$v[0]",
)


def _paths(location_paths: Sequence[str], allow_none: bool = False) -> str:
    if not location_paths and not allow_none:
        raise ValueError("no device location path given")
    if len(set(p.lower() for p in location_paths)) != len(location_paths):
        raise ValueError("duplicate location path")
    return "$l=@(" + ",".join(ps_quote(p) for p in location_paths) + ")"


# Maps each location path to its PnP instance id (so callers pass location paths only).
_IID_MAP = _lines(
    "$m=@{}",
    "$all=@(Get-PnpDevice -InstanceId 'PCI\\*')",
    "foreach($q in @(Get-PnpDeviceProperty -InstanceId $all.InstanceId -KeyName 'DEVPKEY_Device_LocationPaths'))"
    "{$m[@($q.Data)[0]]=$q.InstanceId}",
    "foreach($p in $l){if(-not $m.ContainsKey($p)){throw ('No PCI device at location path '+$p)}}",
)




def assign_script(vm_name: str, location_paths: Sequence[str], low_mmio: int, high_mmio: int,
                  stop_action: str = "TurnOff", guest_cache: bool = True, force: bool = True,
                  record: VmSettings | None = None, max_chars: int | None = MAX_SCRIPT_CHARS) -> str:
    """Give the devices at ``location_paths`` (a GPU and its companions, or several GPUs) to ``vm_name``.

    Steps: ``Set-VM -AutomaticStopAction -GuestControlledCacheTypes -LowMemoryMappedIoSpace
    -HighMemoryMappedIoSpace -Notes`` (MMIO sizes in bytes; the notes gain the restore record, see RECORD_BEGIN,
    unless they hold one already: a second GPU keeps the settings from before the first; ``record`` is recorded
    instead of the VM's settings now: a record an older gpupass kept on the workstation), then per device
    ``Disable-PnpDevice``, ``Dismount-VMHostAssignableDevice [-Force]``, ``Add-VMAssignableDevice``.  If any step
    fails, every device is taken back as far as it got (Remove-VMAssignableDevice, Mount-VMHostAssignableDevice,
    Enable-PnpDevice, in that order) and the VM's previous settings and notes are restored (Set-VM is one
    Hyper-V settings change, treated as atomic).  Prints ``{"ok": true, "previous": {"VMId", "StopAction",
    "LowMmio", "HighMmio", "GuestCache"}}`` or ``{"ok": false, "error", "errorId", "step", "undoErrors": [...],
    "previous": ...}`` and exits 1 on failure.
    """
    if stop_action not in STOP_ACTIONS:
        raise ValueError(f"stop_action must be one of {STOP_ACTIONS}")
    recorded = "$o" if record is None else (
        "([pscustomobject]@{VMId=[string]$v.VMId;StopAction=" + ps_quote(record.stop_action)
        + f";LowMmio={ps_int(record.low_mmio)};HighMmio={ps_int(record.high_mmio)};GuestCache="
        + ("$true" if record.guest_cache else "$false") + "})")
    s = _lines(
        "$ErrorActionPreference='Stop'",
        "$n=" + ps_quote(vm_name),
        _paths(location_paths),
        "$gb=" + ps_quote(RECORD_BEGIN),
        "$st=@{}",
        "$set=$false",
        "$o=$null",
        "$step='lookup'",
        "try{",
        _FIND_VM,
        "$o=[pscustomobject]@{VMId=[string]$v.VMId;StopAction=$v.AutomaticStopAction.ToString();"
        "LowMmio=$v.LowMemoryMappedIoSpace;HighMmio=$v.HighMemoryMappedIoSpace;GuestCache=$v.GuestControlledCacheTypes}",
        # The record goes after the admin's notes, on a line of its own; one already there is kept.
        "$gt=[string]$v.Notes;$gn=$gt",
        "if($gt.IndexOf($gb) -lt 0){if($gt){$gn+=" + ps_quote("\n") + "}",
        "$gn+=$gb+(ConvertTo-Json " + recorded + " -Compress)+" + ps_quote(RECORD_END) + "}",
        _IID_MAP,
        "$step='Set-VM'",
        f"Set-VM -VM $v -AutomaticStopAction {stop_action} -GuestControlledCacheTypes "
        f"${'true' if guest_cache else 'false'} -LowMemoryMappedIoSpace {ps_int(low_mmio)} "
        f"-HighMemoryMappedIoSpace {ps_int(high_mmio)} -Notes $gn",
        "$set=$true",
        "foreach($p in $l){",
        "$st[$p]=0",
        "$step='Disable-PnpDevice '+$p",
        "Disable-PnpDevice -InstanceId $m[$p] -Confirm:$false",
        "$st[$p]=1",
        "$step='Dismount-VMHostAssignableDevice '+$p",
        "Dismount-VMHostAssignableDevice -LocationPath $p" + (" -Force" if force else ""),
        "$st[$p]=2",
        "$step='Add-VMAssignableDevice '+$p",
        "Add-VMAssignableDevice -LocationPath $p -VM $v",
        "$st[$p]=3",
        "}",
        "$r=[pscustomobject]@{ok=$true;previous=$o}",
        "}catch{",
        "$e=$_",
        "$u=@()",
        "foreach($p in $l){if($st.ContainsKey($p)){$s=$st[$p]",
        "try{if($s -ge 3){Get-VMAssignableDevice -VM $v -LocationPath $p|Remove-VMAssignableDevice}",
        "if($s -ge 2){Mount-VMHostAssignableDevice -LocationPath $p}",
        "if($s -ge 1){Enable-PnpDevice -InstanceId $m[$p] -Confirm:$false}}",
        "catch{$u+=$p+': '+$_.Exception.Message}}}",
        "if($set){try{Set-VM -VM $v -AutomaticStopAction $o.StopAction -GuestControlledCacheTypes $o.GuestCache "
        "-LowMemoryMappedIoSpace $o.LowMmio -HighMemoryMappedIoSpace $o.HighMmio -Notes $gt}",
        "catch{$u+='Set-VM: '+$_.Exception.Message}}",
        "$r=[pscustomobject]@{ok=$false;error=$e.Exception.Message;errorId=$e.FullyQualifiedErrorId;step=$step;"
        "undoErrors=$u;previous=$o}",
        "}",
        "ConvertTo-Json -InputObject $r -Depth 4 -Compress",
        "if(-not $r.ok){exit 1}",
    )
    return _check(s, "assign", max_chars)


# Reads the record from $v's notes into $gk (its JSON text: $gj) and computes $gn, the notes without it (and without
# the line break gpupass put before it); $gr names what is damaged (a RECORD_DAMAGE key) and stops the script before
# any change -- unless $gz says a damaged record may be left alone (a release that keeps other devices on the VM
# neither restores from it nor records its intent in it). $gk, $gj, $gr and $rs start undefined, which PowerShell
# reads as $null (without Set-StrictMode, about_Variables).
# The casts refuse what Set-VM's -LowMemoryMappedIoSpace (UInt32) and -HighMemoryMappedIoSpace (UInt64) would.
_READ_RECORD = _lines(
    "$gt=[string]$v.Notes;$gn=$gt;$gi=$gt.IndexOf($gb)",
    "if($gi -ge 0){$x=$gt.Substring($gi+$gb.Length);$j=$x.IndexOf(" + ps_quote(RECORD_END) + ");$gr='end'",
    f"if($j -ge 0 -and $j -le {RECORD_MAX_CHARS}){{$gr='json';try{{$gj=$x.Substring(0,$j);$gk=ConvertFrom-Json $gj",
    "$gr='value';$q=[uint32]$gk.LowMmio;$q=[uint64]$gk.HighMmio",
    "if(@(" + ",".join(ps_quote(a) for a in STOP_ACTIONS) + ") -contains $gk.StopAction -and ($gk.GuestCache -eq "
    "$true -or $gk.GuestCache -eq $false)){$gr='vm'}",
    "if($gr -eq 'vm' -and [string]$gk.VMId -eq [string]$v.VMId){$gr=$null}}catch{}}",
    # backend.py says what is damaged (RECORD_DAMAGE[$gr])
    "if($gr){$gk=$null;$gj=$null;if(!$gz){throw 'damaged gpupass record'}}else{",
    f"$j+=$gb.Length+{len(RECORD_END)};if($gi -gt 0){{if($gt.Substring($gi-1,1) -eq {ps_quote(chr(10))}){{$gi-=1;$j+=1}}}}",
    "$gn=$gt.Substring(0,$gi)+$gt.Substring($gi+$j);$rs='notes'}}",
)


# Set-VM of the settings in the record ($gk) and the notes without it ($gn): what a release that leaves the VM without
# devices ends with.
_RESTORE_SETTINGS = ("Set-VM -VM $v -AutomaticStopAction $gk.StopAction -GuestControlledCacheTypes $gk.GuestCache "
                     "-LowMemoryMappedIoSpace $gk.LowMmio -HighMemoryMappedIoSpace $gk.HighMmio -Notes $gn")


# The release's intent: the record's JSON ($gj, read by _READ_RECORD) gains "Releasing", the location paths in $l, in
# place (the rest of the notes stays as it is).
_WRITE_INTENT = ("Set-VM -VM $v -Notes ($gt.Replace($gj,$gj.Substring(0,$gj.Length-1)+" + ps_quote(',"Releasing":')
                 + "+(ConvertTo-Json -InputObject @($l) -Compress)+'}'))")
# The intent taken out of the record again ($i2: where it starts in the record's JSON; -1: there is none).
_DROP_INTENT = ("$i2=$gj.IndexOf(" + ps_quote(',"Releasing":') + ");if($i2 -ge 0){"
                "Set-VM -VM $v -Notes ($gt.Replace($gb+$gj,$gb+$gj.Substring(0,$i2)+'}'))}")


def release_script(vm_name: str, location_paths: Sequence[str], legacy: VmSettings | None = None,
                   max_chars: int | None = MAX_SCRIPT_CHARS) -> str:
    """Take the devices at ``location_paths`` back from ``vm_name`` and give them to the host.

    Per device: ``Remove-VMAssignableDevice``, ``Mount-VMHostAssignableDevice``, ``Enable-PnpDevice``; then, only if
    every device came back and the VM is left without any assigned device (counted when the script starts: a
    device another admin gave it since still needs its MMIO space), one ``Set-VM`` restores the settings of the
    restore record in the VM's notes (see RECORD_BEGIN) and takes the record out of the notes.  ``legacy`` is
    restored where the notes hold no record (settings an older gpupass kept on the workstation).  A damaged record
    stops the script before any change (``recordDamage``: a RECORD_DAMAGE key).  Stops at the first failure (later
    devices untouched) and reports how far each device got.  Prints ``{"ok", "released": [paths] (on success), "stage": {path:
    "removed"|"mounted"|"enabled"}, "restored": "notes"|"legacy"|null, "error", "errorId", "step",
    "recordDamage", "intentLeft" (it failed before taking any device and could not take its intent out again)}``;
    exits 1 on failure. An intent an earlier release left in the record stays where it is: the plan takes it out
    first (HypervBackend.plan_release), as this script has no room left for it (a 64-character name, a GPU with its
    companion and a legacy record fill MAX_SCRIPT_CHARS).
    """
    fallback = ""
    if legacy is not None:
        fallback = ("if(-not $gk){$gk=[pscustomobject]@{StopAction=" + ps_quote(legacy.stop_action)
                    + f";LowMmio={ps_int(legacy.low_mmio)};HighMmio={ps_int(legacy.high_mmio)};GuestCache="
                    + ("$true" if legacy.guest_cache else "$false") + "};$rs='legacy'}")
    s = _lines(
        "$ErrorActionPreference='Stop'",
        "$n=" + ps_quote(vm_name),
        _paths(location_paths),
        "$gb=" + ps_quote(RECORD_BEGIN),
        "$g=@{}",
        "$step='Get-VM'",
        "try{",
        _FIND_VM,
        "$w=0;foreach($a in @(Get-VMAssignableDevice -VM $v)){if($l -notcontains $a.LocationPath){$w+=1}}",
        "$step='restore record';$gz=$w -gt 0",
        _READ_RECORD,
        "if($w -eq 0){" + fallback + "}",
        # The intent, before the first change: the record names the devices this release takes, so a release stopped
        # half-way (its client killed, its script failing with nobody left to give the devices back) is shown by
        # `status` and finished by the same release again (finish_release_script).
        "if($gj){" + _WRITE_INTENT + "}",
        "foreach($p in $l){",
        "$step='Remove-VMAssignableDevice '+$p",
        "Remove-VMAssignableDevice -VMAssignableDevice (Get-VMAssignableDevice -VM $v -LocationPath $p)",
        "$g[$p]='removed'",
        "$step='Mount-VMHostAssignableDevice '+$p",
        "Mount-VMHostAssignableDevice -LocationPath $p",
        "$g[$p]='mounted'",
        "}",
        "$step='lookup'",
        _IID_MAP,
        "foreach($p in $l){",
        "$step='Enable-PnpDevice '+$p",
        "Enable-PnpDevice -InstanceId $m[$p] -Confirm:$false",
        "$g[$p]='enabled'",
        "}",
        "if($w -gt 0){$rs=$null}",
        "if($rs){$step='Set-VM'",
        _RESTORE_SETTINGS + "}",
        # a VM that keeps other devices keeps its record, as it was before the intent
        "elseif($gj){$step='Set-VM';Set-VM -VM $v -Notes $gt}",
        # every device came back: all of $l
        "$r=[pscustomobject]@{ok=$true;released=$l;stage=$g;restored=$rs}",
        "}catch{",
        "$e=$_",
        # stopped before it took any device: nothing to finish, so the intent goes too; where that fails as well the
        # intent stays (intentLeft: the backend reads the host again rather than say "nothing was changed"; $il starts
        # undefined, $null, as $gk does)
        "if($gj -and $g.Count -eq 0){try{Set-VM -VM $v -Notes $gt}catch{$il=1}}",
        "$r=[pscustomobject]@{ok=$false;stage=$g;error=$e.Exception.Message;"
        "errorId=$e.FullyQualifiedErrorId;step=$step;recordDamage=$gr;intentLeft=$il}",
        "}",
        "ConvertTo-Json -InputObject $r -Depth 4 -Compress",
        "if(-not $r.ok){exit 1}",
    )
    return _check(s, "release", max_chars)


def finish_release_script(vm_name: str, location_paths: Sequence[str], max_chars: int | None = MAX_SCRIPT_CHARS) -> str:
    """Finish a release of ``vm_name`` that stopped half-way, for the devices its intent named (``location_paths``):
    each one no VM holds goes back to the host -- ``Mount-VMHostAssignableDevice`` where it is still dismounted, then
    ``Enable-PnpDevice`` -- and, if the VM is left without any assigned device, one ``Set-VM`` restores the settings
    of its restore record and takes the record out of its notes; otherwise the intent alone is taken out of the record.

    A device some VM holds now is left where it is (another run assigned it since: Hyper-V adds a device to a VM only
    while it is dismounted from the host -- Dismount-VMHostAssignableDevice's page: dismounting makes a device
    "available for assignment to a virtual machine" -- and mounts back only one no VM holds (assumed: the pages do not
    say it; Microsoft's DDA guide removes a device from its VM before it mounts it)) and reported in ``taken``. The
    record is checked before the first change, as the release script does. Prints ``{"ok", "stage": {path:
    "mounted"|"enabled"}, "taken": [{"Path", "Vm"}], "restored": "notes"|null, "error", "errorId", "step",
    "recordDamage"}``; exits 1 on failure."""
    s = _lines(
        "$ErrorActionPreference='Stop'",
        "$n=" + ps_quote(vm_name),
        _paths(location_paths, allow_none=True),
        "$gb=" + ps_quote(RECORD_BEGIN),
        "$g=@{}",
        "$h=@()",
        "$gk=$null",
        "$gj=$null",
        "$gr=$null",
        "$rs=$null",
        "$step='Get-VM'",
        "try{",
        _FIND_VM,
        "$step='restore record'",
        _READ_RECORD,
        "$step='owners'",
        "$o=@{};foreach($x in @(Get-VM)){foreach($a in @(Get-VMAssignableDevice -VM $x)){$o[$a.LocationPath]=$x.Name}}",
        "$f=@();foreach($p in $l){if($o.ContainsKey($p)){$h+=[pscustomobject]@{Path=$p;Vm=$o[$p]}}else{$f+=$p}}",
        "$d=@();foreach($a in @(Get-VMHostAssignableDevice)){$d+=$a.LocationPath}",
        "$l=$f",
        "foreach($p in $l){if($d -contains $p){$step='Mount-VMHostAssignableDevice '+$p",
        "Mount-VMHostAssignableDevice -LocationPath $p",
        "$g[$p]='mounted'}}",
        "$step='lookup'",
        _IID_MAP,
        "foreach($p in $l){",
        "$step='Enable-PnpDevice '+$p",
        "Enable-PnpDevice -InstanceId $m[$p] -Confirm:$false",
        "$g[$p]='enabled'",
        "}",
        "if(@(Get-VMAssignableDevice -VM $v).Count -gt 0){$rs=$null}",
        "if($rs){$step='Set-VM'",
        _RESTORE_SETTINGS + "}",
        "elseif($gj){$step='Set-VM -Notes'",
        _DROP_INTENT + "}",
        "$r=[pscustomobject]@{ok=$true;stage=$g;taken=$h;restored=$rs}",
        "}catch{",
        "$r=[pscustomobject]@{ok=$false;stage=$g;taken=$h;error=$_.Exception.Message;errorId=$_.FullyQualifiedErrorId;"
        "step=$step;recordDamage=$gr}",
        "}",
        "ConvertTo-Json -InputObject $r -Depth 4 -Compress",
        "if(-not $r.ok){exit 1}",
    )
    return _check(s, "finish release", max_chars)


def drop_intent_script(vm_name: str, max_chars: int | None = MAX_SCRIPT_CHARS) -> str:
    """Take a release's intent (``Releasing``) out of ``vm_name``'s restore record, leaving the record as the assign
    wrote it: after gpupass gave a failed release's devices back to the VM. Prints ``{"ok", "error", "errorId",
    "step"}``; exits 1 on failure."""
    s = _lines(
        "$ErrorActionPreference='Stop'",
        "$n=" + ps_quote(vm_name),
        "$gb=" + ps_quote(RECORD_BEGIN),
        "$gk=$null",
        "$gj=$null",
        "$gr=$null",
        "$rs=$null",
        "$step='Get-VM'",
        "try{",
        _FIND_VM,
        "$step='restore record'",
        _READ_RECORD,
        "$step='Set-VM -Notes'",
        "if($gj){" + _DROP_INTENT + "}",
        "$r=[pscustomobject]@{ok=$true}",
        "}catch{",
        "$r=[pscustomobject]@{ok=$false;error=$_.Exception.Message;errorId=$_.FullyQualifiedErrorId;step=$step;"
        "recordDamage=$gr}",
        "}",
        "ConvertTo-Json -InputObject $r -Depth 4 -Compress",
        "if(-not $r.ok){exit 1}",
    )
    return _check(s, "drop intent", max_chars)


def readd_script(vm_name: str, location_paths: Sequence[str], max_chars: int | None = MAX_SCRIPT_CHARS) -> str:
    """Give devices that are still dismounted (a release removed them from the VM, then failed) back to
    ``vm_name`` with ``Add-VMAssignableDevice``.  Prints ``{"ok", "added": [paths], "changed" (on failure: some were
    added), "error", "errorId", "step"}``; exits 1 on failure."""
    s = _lines(
        "$ErrorActionPreference='Stop'",
        "$n=" + ps_quote(vm_name),
        _paths(location_paths),
        "$ok=@()",
        "$step='Get-VM'",
        "try{",
        _FIND_VM,
        "foreach($p in $l){",
        "$step='Add-VMAssignableDevice '+$p",
        "Add-VMAssignableDevice -LocationPath $p -VM $v",
        "$ok+=$p",
        "}",
        "$r=[pscustomobject]@{ok=$true;added=$ok}",
        "}catch{",
        "$r=[pscustomobject]@{ok=$false;added=$ok;changed=($ok.Count -gt 0);error=$_.Exception.Message;"
        "errorId=$_.FullyQualifiedErrorId;step=$step}",
        "}",
        "ConvertTo-Json -InputObject $r -Depth 4 -Compress",
        "if(-not $r.ok){exit 1}",
    )
    return _check(s, "re-add", max_chars)


__all__ = ["CMD_LINE_LIMIT", "GPU_BASE_CLASSES", "PCI_DEVICE_FMTID", "PROPERTY_IDS", "MAX_SCRIPT_CHARS", "RECORD_BEGIN",
           "RECORD_DAMAGE", "RECORD_END", "RECORD_MAX_CHARS", "STOP_ACTIONS", "ScriptTooLarge", "VmSettings",
           "assign_script", "command_line_length", "drop_intent_script", "finish_release_script", "inventory_script",
           "owners_script", "ps_int", "ps_quote", "readd_script", "COUNT_BEGIN", "count_set_back_script",
           "release_script", "RELEASE_BEGIN", "GPU_P_NOTES"]


# --------------------------------------------------------------------------- GPU partitioning (GPU-P)
# Add-/Set-VMGpuPartitionAdapter's partition settings (their pages, winserver2022-ps: UInt64 each), the only names
# a builder writes after a dash; values go through ps_int.
PARTITION_SETTINGS = tuple(f"{level}Partition{what}" for what in ("VRAM", "Encode", "Decode", "Compute")
                           for level in ("Min", "Max", "Optimal"))


def _partition_settings(settings: Sequence[tuple[str, int]]) -> str:
    names = [name for name, _ in settings]
    if len(set(names)) != len(names):
        raise ValueError("a partition setting is given twice")
    for name, value in settings:
        if name not in PARTITION_SETTINGS:
            raise ValueError(f"{name!r} is no partition setting of Add-VMGpuPartitionAdapter")
        ps_int(value)
        if value > 2**64 - 1:
            raise ValueError(f"{name} is a UInt64")
    return "".join(f" -{name} {ps_int(value)}" for name, value in settings)


# Reads $v's partition count intent (COUNT_BEGIN): $gc its notes, $cq the intent (ConvertFrom-Json; $null where there is
# none), $cn the notes without it (and without the line break gpupass put before it). A damaged intent throws.
_READ_COUNT_INTENT = _lines(
    f"$gc=[string]$v.Notes;$cn=$gc;$cq=$null;$ci=$gc.IndexOf({ps_quote(COUNT_BEGIN)})",
    f"if($ci -ge 0){{$x=$gc.Substring($ci);$cj=$x.IndexOf({ps_quote(RECORD_END)});if($cj -lt 0){{"
    "throw 'damaged gpupass partition count note'}",
    f"$cv=$x.Substring({len(COUNT_BEGIN)},$cj-{len(COUNT_BEGIN)});$cq=ConvertFrom-Json $cv;$cj+={len(RECORD_END)}",
    f"if($ci -gt 0){{if($gc.Substring($ci-1,1) -eq {ps_quote(chr(10))}){{$ci-=1;$cj+=1}}}}",
    "$cn=$gc.Substring(0,$ci)+$gc.Substring($ci+$cj)}",
)
# Reads $v's partition release intent (RELEASE_BEGIN), as _READ_COUNT_INTENT does the count's: $ra its notes, $rq the
# intent ($null where there is none), $rn the notes without it.
_READ_RELEASE_INTENT = _lines(
    f"$ra=[string]$v.Notes;$rn=$ra;$rq=$null;$rk=$ra.IndexOf({ps_quote(RELEASE_BEGIN)})",
    f"if($rk -ge 0){{$x=$ra.Substring($rk);$rj=$x.IndexOf({ps_quote(RECORD_END)});if($rj -lt 0){{"
    "throw 'damaged gpupass partition release note'}",
    f"$rv=$x.Substring({len(RELEASE_BEGIN)},$rj-{len(RELEASE_BEGIN)});$rq=ConvertFrom-Json $rv;$rj+={len(RECORD_END)}",
    f"if($rk -gt 0){{if($ra.Substring($rk-1,1) -eq {ps_quote(chr(10))}){{$rk-=1;$rj+=1}}}}",
    "$rn=$ra.Substring(0,$rk)+$ra.Substring($rk+$rj)}",
)
# The release intent taken out where the VM holds no partition of any GPU it names; best effort (a note left is shown
# by `status` with the release that takes it out).
# $v is read again first: a Set-VM -Notes earlier in the same script may not show in an object Get-VM returned before
# it (the cmdlet pages do not say).
_DROP_RELEASE_INTENT = ("try{" + _FIND_VM + "\n" + _READ_RELEASE_INTENT + "\nif($rq){$rh=$false;foreach($a in @(Get-VMGpuPartitionAdapter "
                        "-VM $v)){if(@($rq.Gpus) -contains $a.InstancePath){$rh=$true}};if(-not $rh){"
                        "Set-VM -VM $v -Notes $rn}}}catch{}")


def _write_release_note(paths: Sequence[str]) -> str:
    """$v's notes set to $rn (its notes without a release note: _READ_RELEASE_INTENT) plus the note of a release of the
    partitions of the GPUs `paths`: their JSON made here (json.dumps: exact), the VM's id (a GUID) joined in on the host."""
    return _lines(
        "$rs=$rn;if($rs){$rs+=" + ps_quote(chr(10)) + "}",
        "Set-VM -VM $v -Notes ($rs+" + ps_quote(RELEASE_BEGIN + '{"VMId":"') + "+[string]$v.VMId+"
        + ps_quote('","Gpus":' + json.dumps(list(paths), separators=(",", ":")) + "}" + RECORD_END) + ")",
    )


def _settle_release_note(paths: Sequence[str]) -> str:
    """After the undo of a release's first step put its partitions back: the release's note (of the GPUs `paths`) out
    of $v's notes where the VM holds a partition of each of them again (nothing of the release is left), or written
    there where it does not (a later step's removal is left: `status` shows it with the release that finishes it).
    Best effort."""
    return ("try{" + _FIND_VM + "\n" + _READ_RELEASE_INTENT + "\n$rh=@{};foreach($a in @(Get-VMGpuPartitionAdapter "
            "-VM $v)){$rh[$a.InstancePath]=1};$rz=$true;foreach($q in @(" + ",".join(ps_quote(p) for p in paths)
            + ")){if(-not $rh.ContainsKey($q)){$rz=$false}}\nif($rz){if($rq){Set-VM -VM $v -Notes $rn}}else{"
            + _write_release_note(paths) + "}}catch{}")
# The intent of GPU $ip taken out of $v's notes, where it names that GPU; best effort (a failure here leaves a note the
# next count change or partition release takes out, and `status` reads: records.count_changes).
_DROP_COUNT_INTENT = "try{" + _READ_COUNT_INTENT + "\nif($cq -and $cq.Gpu -eq $ip){Set-VM -VM $v -Notes $cn}}catch{}"
# The partitionable GPU named $ip ($g) and the VMs that hold a partition of it ($hv).
_FIND_PARTITIONABLE = _lines(
    "$g=$null;foreach($q in @(Get-VMHostPartitionableGpu)){if($q.Name -eq $ip){$g=$q}}",
    "if(-not $g){throw ('No partitionable GPU named '+$ip)}",
    "foreach($x in @(Get-VM)){foreach($a in @(Get-VMGpuPartitionAdapter -VM $x)){if($a.InstancePath -eq $ip){"
    "$hv+=$x.Name}}}",
)


def partition_add_script(vm_name: str, instance_path: str, settings: Sequence[tuple[str, int]] = (),
                         max_chars: int | None = MAX_SCRIPT_CHARS, release: Sequence[str] = ()) -> str:
    """Give ``vm_name`` one partition of the GPU whose Get-VMHostPartitionableGpu Name is ``instance_path``:
    ``Add-VMGpuPartitionAdapter -VM $v -InstancePath $ip [-MinPartitionVRAM N ...] -Passthru`` (its page: -InstancePath
    "can be obtained from the "Name" property of the command Get-VMHostPartitionableGpu"; with no partition settings
    Hyper-V "assigns a full partition"; ``settings`` are (PARTITION_SETTINGS name, value) pairs). Prints
    ``{"ok": true, "id": the new adapter's Id}`` or ``{"ok": false, "error", "errorId", "step"}`` and exits 1 on
    failure (one cmdlet: nothing to undo when it fails). ``release``: it puts back the last partition the first step of
    a release of the partitions of these GPUs took (its undo): the release's note (RELEASE_BEGIN) is then settled
    (_settle_release_note)."""
    s = _lines(
        "$ErrorActionPreference='Stop'",
        "$n=" + ps_quote(vm_name),
        "$ip=" + ps_quote(instance_path),
        "$step='lookup'",
        "try{",
        _FIND_VM,
        "$step='Add-VMGpuPartitionAdapter'",
        "$a=Add-VMGpuPartitionAdapter -VM $v -InstancePath $ip" + _partition_settings(settings) + " -Passthru",
        "$r=[pscustomobject]@{ok=$true;id=$a.Id}",
        # the count change before it (if any) is done with: its intent goes (COUNT_BEGIN)
        _DROP_COUNT_INTENT,
        _settle_release_note(release) if release else "",
        "}catch{",
        "$r=[pscustomobject]@{ok=$false;error=$_.Exception.Message;errorId=$_.FullyQualifiedErrorId;step=$step}",
        "}",
        "ConvertTo-Json -InputObject $r -Depth 4 -Compress",
        "if(-not $r.ok){exit 1}",
    )
    return _check(s, "partition add", max_chars)


def partition_remove_script(vm_name: str, instance_path: str, count: int, adapter_id: str | None = None,
                            max_chars: int | None = MAX_SCRIPT_CHARS, intent: Sequence[str] = (),
                            ends_release: bool = False) -> str:
    """Take ``count`` partitions of the GPU ``instance_path`` back from ``vm_name`` (the adapter ``adapter_id`` only,
    when given): the VM's Get-VMGpuPartitionAdapter objects whose InstancePath is the GPU's, each piped to
    ``Remove-VMGpuPartitionAdapter`` (its Object parameter set). Refuses, changing nothing, when the VM holds fewer.
    Prints ``{"ok", "removed": [{"Id", "MinPartitionVRAM", ... (the adapter's partition settings, as
    Get-VMGpuPartitionAdapter printed them in the real output of windows-powershell-docs issue #3226)}], "changed" (on
    failure: some were removed), "error", "errorId", "step"}``; exits 1 on failure. The settings let an undo add the
    partition back as it was.

    ``intent``: the instance paths of every GPU a release of several GPUs' partitions takes back (the first step's
    script): written into the VM's notes (RELEASE_BEGIN) after the checks and before the first removal, and taken out
    again if nothing was removed when it fails. ``ends_release``: the last step of such a release, or a release of a VM
    whose notes hold one (a rerun finishing it): after its removal it takes the intent out where the VM holds no
    partition of any GPU the intent names (each part only where asked: a script holds about 3,000 characters)."""
    match = "$a.InstancePath -eq $ip" + (" -and $a.Id -eq $id" if adapter_id is not None else "")
    s = _lines(
        "$ErrorActionPreference='Stop'",
        "$n=" + ps_quote(vm_name),
        "$ip=" + ps_quote(instance_path),
        "$id=" + ps_quote(adapter_id) if adapter_id is not None else "",
        "$k=" + ps_int(count),
        "$d=@();$wi=$false",
        "$step='lookup'",
        "try{",
        _FIND_VM,
        "$g=@();foreach($a in @(Get-VMGpuPartitionAdapter -VM $v)){if(" + match + "){$g+=$a}}",
        "if($g.Count -lt $k){throw ('VM '+$n+' holds '+$g.Count+' partition(s) of '+$ip+', not '+$k)}",
        "" if not intent else _lines(
            _READ_RELEASE_INTENT,
            "$step='Set-VM -Notes'",
            _write_release_note(intent),
            "$wi=$true"),
        "$step='Remove-VMGpuPartitionAdapter'",
        "$i=0;foreach($a in $g){if($i -lt $k){Remove-VMGpuPartitionAdapter -VMGpuPartitionAdapter $a",
        "$d+=($a|Select-Object 'Id','MinPartition*','MaxPartition*','OptimalPartition*')};$i=$i+1}",
        "$r=[pscustomobject]@{ok=$true;removed=$d}",
        # a count change's intent an assign stopped before it could take out (COUNT_BEGIN) goes with its partition
        # after the intent's Set-VM, the VM read again for the count note's (see _DROP_RELEASE_INTENT)
        "try{" + _FIND_VM + "\n" + _DROP_COUNT_INTENT + "}catch{}" if intent else _DROP_COUNT_INTENT,
        _DROP_RELEASE_INTENT if ends_release else "",
        "}catch{",
        # nothing removed: the intent it wrote goes (a removal made keeps it: the release is part done)
        "if($wi -and $d.Count -eq 0){try{Set-VM -VM $v -Notes $ra;$wi=$false}catch{}}",
        "$r=[pscustomobject]@{ok=$false;removed=$d;changed=($d.Count -gt 0 -or $wi);error=$_.Exception.Message;"
        "errorId=$_.FullyQualifiedErrorId;step=$step}",
        "}",
        "ConvertTo-Json -InputObject $r -Depth 4 -Compress",
        "if(-not $r.ok){exit 1}",
    )
    return _check(s, "partition remove", max_chars)


def partition_count_script(instance_path: str, count: int, previous: int, vm_name: str | None = None,
                           max_chars: int | None = MAX_SCRIPT_CHARS) -> str:
    """Set the partition count of the GPU whose Get-VMHostPartitionableGpu Name is ``instance_path`` to ``count``
    (``Set-VMHostPartitionableGpu -HostPartitionableGpu $g -PartitionCount N``: its Object parameter set, fed with the
    Get-VMHostPartitionableGpu object). Before the change it checks that the count is still ``previous`` (else another
    admin changed it: nothing is done) and that no VM holds a partition of the GPU (Windows Admin Center refuses that:
    "You must first unassign the partition from the VM", Microsoft's "Partition and assign GPUs to a virtual
    machine"); after it, the count is read back.

    ``vm_name``: the VM the partition is for. Its notes then gain the intent (COUNT_BEGIN: the GPU, the count before and
    after) before Set-VMHostPartitionableGpu -- replacing one of the same GPU a stopped run left; one naming another GPU
    stops the script before any change -- and lose it again if the cmdlet fails. Prints ``{"ok", "previous", "count",
    "held": [VM names], "changed" (on failure: the count set, or the intent left in the notes), "error", "errorId",
    "step"}``; exits 1 on failure."""
    intent = "" if vm_name is None else _lines(
        _READ_COUNT_INTENT,
        "if($cq -and $cq.Gpu -ne $ip){throw ('VM '+$n+' has an unfinished GPU partition count change of '+$cq.Gpu+"
        "' (gpupass status)')}",
        "$step='Set-VM -Notes'",
        "$cs=$cn;if($cs){$cs+=" + ps_quote(chr(10)) + "}",
        "Set-VM -VM $v -Notes ($cs+" + ps_quote(COUNT_BEGIN) + "+(ConvertTo-Json -InputObject ([pscustomobject]@{"
        "VMId=[string]$v.VMId;Gpu=$ip;From=$o;To=$k}) -Compress)+" + ps_quote(RECORD_END) + ")",
        "$w=$true",
    )
    s = _lines(
        "$ErrorActionPreference='Stop'",
        "$ip=" + ps_quote(instance_path),
        f"$k={ps_int(count)};$o={ps_int(previous)}",
        "" if vm_name is None else "$n=" + ps_quote(vm_name),
        "$hv=@();$w=$false;$z=$false",
        "$step='lookup'",
        "try{",
        "" if vm_name is None else _FIND_VM,
        _FIND_PARTITIONABLE,
        "if($g.PartitionCount -ne $o){throw ('The partition count of '+$ip+' is '+$g.PartitionCount+', not '+$o)}",
        "if($hv.Count -gt 0){throw ('VMs hold partitions of '+$ip)}",
        intent,
        "$step='Set-VMHostPartitionableGpu'",
        "Set-VMHostPartitionableGpu -HostPartitionableGpu $g -PartitionCount $k",
        "$z=$true",
        "$c=$null;foreach($q in @(Get-VMHostPartitionableGpu)){if($q.Name -eq $ip){$c=$q.PartitionCount}}",
        "if($c -ne $k){throw ('The partition count of '+$ip+' is '+$c+' after the change, not '+$k)}",
        "$r=[pscustomobject]@{ok=$true;previous=$o;count=$c}",
        "}catch{",
        # the cmdlet failed: the count is as it was, so the intent goes (once it ran, the count may be changed: kept)
        "if($w -and -not $z){try{Set-VM -VM $v -Notes $gc;$w=$false}catch{}}",
        "$r=[pscustomobject]@{ok=$false;held=$hv;changed=($w -or $z);error=$_.Exception.Message;"
        "errorId=$_.FullyQualifiedErrorId;step=$step}",
        "}",
        "ConvertTo-Json -InputObject $r -Depth 4 -Compress",
        "if(-not $r.ok){exit 1}",
    )
    return _check(s, "partition count", max_chars)


def count_set_back_script(instance_path: str, back_to: int, changed_to: int, vm_name: str, strict: bool = True,
                          max_chars: int | None = MAX_SCRIPT_CHARS) -> str:
    """Undo a partition count change made for ``vm_name`` (partition_count_script with its intent): where the count of
    the GPU ``instance_path`` is ``changed_to`` and no VM holds a partition of it, ``Set-VMHostPartitionableGpu
    -PartitionCount back_to`` (read back after); where it is ``back_to`` already, no change; then the intent of that GPU
    is taken out of the VM's notes. Any other count, or a VM holding a partition: ``strict`` (an undo) fails before any
    change; otherwise (a release finishing what a stopped run left) the count stays as it is and only the intent goes.
    Prints ``{"ok", "count" (now), "setBack", "held": [VM names], "changed" (on failure: the count was set back),
    "error", "errorId", "step"}``; exits 1 on failure."""
    keep = "throw ('The partition count of '+$ip+' is '+$g.PartitionCount+', not '+$o+', or VMs hold partitions')" \
        if strict else "$c=$g.PartitionCount"
    s = _lines(
        "$ErrorActionPreference='Stop'",
        "$ip=" + ps_quote(instance_path),
        f"$k={ps_int(back_to)};$o={ps_int(changed_to)}",
        "$n=" + ps_quote(vm_name),
        "$hv=@();$b=$false",
        "$step='lookup'",
        "try{",
        _FIND_VM,
        _FIND_PARTITIONABLE,
        "$c=$g.PartitionCount",
        "if($c -ne $k){if($c -eq $o -and $hv.Count -eq 0){",
        "$step='Set-VMHostPartitionableGpu'",
        "Set-VMHostPartitionableGpu -HostPartitionableGpu $g -PartitionCount $k",
        "$b=$true",
        "$c=$null;foreach($q in @(Get-VMHostPartitionableGpu)){if($q.Name -eq $ip){$c=$q.PartitionCount}}",
        "if($c -ne $k){throw ('The partition count of '+$ip+' is '+$c+' after the change, not '+$k)}",
        "}else{" + keep + "}}",
        "$step='Set-VM -Notes'",
        _READ_COUNT_INTENT,
        "if($cq -and $cq.Gpu -eq $ip){Set-VM -VM $v -Notes $cn}",
        "$r=[pscustomobject]@{ok=$true;count=$c;setBack=$b;held=$hv}",
        "}catch{",
        "$r=[pscustomobject]@{ok=$false;setBack=$b;changed=$b;held=$hv;error=$_.Exception.Message;"
        "errorId=$_.FullyQualifiedErrorId;step=$step}",
        "}",
        "ConvertTo-Json -InputObject $r -Depth 4 -Compress",
        "if(-not $r.ok){exit 1}",
    )
    return _check(s, "partition count set back", max_chars)
