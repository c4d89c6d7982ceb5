"""Device property keys as Windows defines them: friendly name <-> ``{fmtid} pid``.

Sources (Windows SDK headers):
* ``pciprop.h`` (PCI device properties, seed GUID {3AB22E31-8264-4b4e-9AF5-A8D2D8E33E62}), as mirrored in
  marlersoft/microsoft_windows_sdk_cpp ``shared/pciprop.h`` @16b53593a29860fea1706e7a862b2145c0f1b6ee and in
  microsoft/windows-rs' generated bindings (``DEVPKEY_PciDevice_*``); the ids 1, 31 and 34 are also the ones
  Microsoft's SurveyDDA.ps1 asks for (MicrosoftDocs/Virtualization-Documentation,
  ``hyperv-tools/DiscreteDeviceAssignment/SurveyDDA.ps1``).
* ``devpkey.h`` (device properties), same mirror, ``shared/devpkey.h``.

``Get-PnpDeviceProperty -KeyName`` takes either form (docset/winserver2022-ps/PnpDevice/Get-PnpDeviceProperty.md,
Examples 3 and 4) and reports the friendly name in ``KeyName`` whichever form was asked (Example 3's output).
Only names from these headers exist: ``DEVPKEY_PciDevice_Requires_Reserved_Memory_Region`` is not one of them.
"""
from __future__ import annotations

import re
from dataclasses import dataclass

PCI_DEVICE = "3AB22E31-8264-4B4E-9AF5-A8D2D8E33E62"      # pciprop.h DEFINE_PCI_DEVICE_DEVPKEY
DEVICE = "A45C254E-DF1C-4EFD-8020-67D146A850E0"          # devpkey.h DEVPKEY_Device_* (SPDRP_ properties)
DEVICE_STATUS = "4340A6C5-93FA-4706-972C-7B648008A5A7"   # devpkey.h status, problem code, relations
DEVICE_OTHER = "540B947E-8B40-45BC-A8A2-6A0B894CBDA2"    # devpkey.h "Other Device properties"


@dataclass(frozen=True)
class DevPropKey:
    name: str
    fmtid: str
    pid: int

    @property
    def key(self) -> str:
        return f"{{{self.fmtid}}} {self.pid}"


_PCI = {  # pciprop.h, DEFINE_PCI_DEVICE_DEVPKEY(DEVPKEY_PciDevice_<name>, pid)
    "DeviceType": 1, "CurrentSpeedAndMode": 2, "BaseClass": 3, "SubClass": 4, "ProgIf": 5,
    "CurrentPayloadSize": 6, "MaxPayloadSize": 7, "MaxReadRequestSize": 8, "CurrentLinkSpeed": 9,
    "CurrentLinkWidth": 10, "MaxLinkSpeed": 11, "MaxLinkWidth": 12, "ExpressSpecVersion": 13,
    "InterruptSupport": 14, "InterruptMessageMaximum": 15, "BarTypes": 16, "AERCapabilityPresent": 17,
    "FirmwareErrorHandling": 18, "Uncorrectable_Error_Mask": 19, "Uncorrectable_Error_Severity": 20,
    "Correctable_Error_Mask": 21, "ECRC_Errors": 22, "Error_Reporting": 23, "RootError_Reporting": 24,
    "S0WakeupSupported": 25, "SriovSupport": 26, "Label_Id": 27, "Label_String": 28, "AcsSupport": 29,
    "AriSupport": 30, "AcsCompatibleUpHierarchy": 31, "AcsCapabilityRegister": 32, "AtsSupport": 33,
    "RequiresReservedMemoryRegion": 34, "AtomicsSupported": 35, "SupportedLinkSubState": 36, "OnPostPath": 37,
    "D3ColdSupport": 38,
}
_DEVICE = {  # devpkey.h, DEFINE_DEVPROPKEY(DEVPKEY_Device_<name>, 0xa45c254e, ..., pid)
    "DeviceDesc": 2, "HardwareIds": 3, "CompatibleIds": 4, "Service": 6, "Class": 9, "ClassGuid": 10,
    "Driver": 11, "ConfigFlags": 12, "Manufacturer": 13, "FriendlyName": 14, "LocationInfo": 15, "PDOName": 16,
    "Capabilities": 17, "UINumber": 18, "UpperFilters": 19, "LowerFilters": 20, "BusTypeGuid": 21,
    "LegacyBusType": 22, "BusNumber": 23, "EnumeratorName": 24, "Security": 25, "SecuritySDS": 26, "DevType": 27,
    "Exclusive": 28, "Characteristics": 29, "Address": 30, "UINumberDescFormat": 31, "PowerData": 32,
    "RemovalPolicy": 33, "RemovalPolicyDefault": 34, "RemovalPolicyOverride": 35, "InstallState": 36,
    "LocationPaths": 37, "BaseContainerId": 38,
}
_STATUS = {"DevNodeStatus": 2, "ProblemCode": 3, "EjectionRelations": 4, "RemovalRelations": 5, "PowerRelations": 6,
           "BusRelations": 7, "Parent": 8, "Children": 9, "Siblings": 10, "TransportRelations": 11,
           "ProblemStatus": 12}
_OTHER = {"Numa_Proximity_Domain": 1, "DHP_Rebalance_Policy": 2, "Numa_Node": 3, "BusReportedDeviceDesc": 4,
          "IsPresent": 5, "HasProblem": 6, "ConfigurationId": 7, "ReportedDeviceIdsHash": 8,
          "PhysicalDeviceLocation": 9, "BiosDeviceName": 10, "DriverProblemDesc": 11, "DebuggerSafe": 12,
          "PostInstallInProgress": 13, "Stack": 14, "ExtendedConfigurationIds": 15, "IsRebootRequired": 16,
          "FirmwareDate": 17, "FirmwareVersion": 18, "FirmwareRevision": 19, "DependencyProviders": 20,
          "DependencyDependents": 21, "SoftRestartSupported": 22, "ExtendedAddress": 23, "AssignedToGuest": 24,
          "CreatorProcessId": 25}

KEYS: tuple[DevPropKey, ...] = tuple(
    [DevPropKey(f"DEVPKEY_PciDevice_{n}", PCI_DEVICE, p) for n, p in _PCI.items()]
    + [DevPropKey(f"DEVPKEY_Device_{n}", DEVICE, p) for n, p in _DEVICE.items()]
    + [DevPropKey(f"DEVPKEY_Device_{n}", DEVICE_STATUS, p) for n, p in _STATUS.items()]
    + [DevPropKey(f"DEVPKEY_Device_{n}", DEVICE_OTHER, p) for n, p in _OTHER.items()])
_BY_NAME = {k.name.lower(): k for k in KEYS}
_BY_ID = {(k.fmtid, k.pid): k for k in KEYS}
_GUID_PID = re.compile(r"^\s*\{([0-9A-Fa-f]{8}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{12})\}\s+(\d+)\s*$")


def lookup(key: str) -> DevPropKey | None:
    """The key ``key`` names (``DEVPKEY_...`` or ``{fmtid} pid``, as Get-PnpDeviceProperty takes them), or None."""
    hit = _BY_NAME.get(key.strip().lower())
    if hit is not None:
        return hit
    m = _GUID_PID.match(key)
    if m:
        return _BY_ID.get((m.group(1).upper(), int(m.group(2))))
    return None


__all__ = ["DEVICE", "DevPropKey", "KEYS", "PCI_DEVICE", "lookup"]
