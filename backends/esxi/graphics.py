"""Switching an ESXi host's graphics configuration: a planned host step with an undo.

What vSphere says (vSphere Web Services API reference, as govmomi `vim25/types` carries it; the Broadcom JSON API
reference for HostGraphicsConfig):

* `HostGraphicsManager.UpdateGraphicsConfig(config)` (API 6.5) takes a whole `HostGraphicsConfig`:
  `hostDefaultGraphicsType` shared | sharedDirect ("This default value can be overridden by specifying graphics type
  for an individual device"), `sharedPassthruAssignmentPolicy` performance ("assign VM to GPU with fewest VMs") |
  consolidation ("group like VMs on GPU until fully loaded") and `deviceType[]` (deviceId, graphicsType). So the step
  sends the whole configuration it wants, and its undo the whole configuration it found.
* When it takes effect: vSphere Resource Management 6.5/6.7, "Configuring Host Graphics" and "Configuring Graphics
  Devices": "After clicking OK, you must restart Xorg on the host"; F. Denneman's real session does the same by hand
  (`esxcli graphics host set --default-type SharedPassthru`, then `/etc/init.d/xorg restart`,
  tests/fixtures/real/sharing/esxcli-graphics-denneman-a100.txt). The API's way is
  `HostServiceSystem.RestartService("xorg")`: "xorg" ("X.Org Server", of the esx-xserver VIB) is a service of a real
  host's configuration (govmomi `simulator/esx/host_config_info.go`). A host reboot applies it too (assumed: the
  configuration is persistent). gpupass restarts Xorg in the same step and reads graphicsInfo back: a device still
  running the old type afterwards fails the step, which sets the old configuration back.
* Refused while VMs use the device: "Configuring Graphics Devices", prerequisite "Virtual machines must be powered
  off" ("Configuring Host Graphics": "should be powered off"). gpupass blocks a plan that takes a GPU running vGPU
  VMs out of shared direct (`esxi-graphics-in-use`), as the host refuses it (the fault ESXi returns is assumed).
"""

from __future__ import annotations

from typing import Any, Mapping

from gpupass.backends.esxi.steps import HostGraphicsChange
from gpupass.core.domain.findings import Finding, blocker, info
from gpupass.core.domain.plan import Step
from gpupass.core.errors import UsageError

SHARED, SHARED_DIRECT = "shared", "sharedDirect"
# HostGraphicsConfigGraphicsType_enum and HostGraphicsConfigSharedPassthruAssignmentPolicy_enum (API reference)
GRAPHICS_TYPES = (SHARED, SHARED_DIRECT)
POLICIES = ("performance", "consolidation")
# graphicsInfo types that no configuration changes: no host driver ("basic") and passthrough-active ("direct")
_FIXED = ("basic", "direct")


def _choice(value: str, allowed: tuple[str, ...], what: str) -> str:
    if value not in allowed:
        raise UsageError(f"{what} {value!r} is not one of {', '.join(allowed)}",
                         remedy=f"give {' or '.join(allowed)} (vSphere's HostGraphicsConfig values)")
    return value


def wanted_config(current: Mapping[str, Any], default_type: str | None, policy: str | None,
                  device_types: Mapping[str, str | None] | None) -> tuple[str, str, dict[str, str]]:
    """The configuration to set: the current one (`settings.hosts[HOST].graphics`, vgpu.settings_of) with the
    changes asked for; a device type of None drops that device's override (it follows the host default again)."""
    default = _choice(default_type, GRAPHICS_TYPES, "default graphics type") if default_type else \
        str(current.get("default_type") or SHARED)
    chosen_policy = _choice(policy, POLICIES, "assignment policy") if policy else \
        str(current.get("assignment_policy") or "performance")
    devices = dict(current.get("device_types") or {})
    known = set(current.get("active_types") or {})
    for device, graphics_type in (device_types or {}).items():
        if known and device not in known:
            raise UsageError(f"{device} is not a graphics device of this host",
                             remedy="name one of " + ", ".join(sorted(known)))
        if graphics_type is None:
            devices.pop(device, None)
        else:
            devices[device] = _choice(graphics_type, GRAPHICS_TYPES, f"graphics type of {device}")
    return default, chosen_policy, dict(sorted(devices.items()))


def effective_type(device: str, active: str, default: str, devices: Mapping[str, str]) -> str:
    """The type `device` runs once a configuration is in effect (a passthrough or driverless device keeps its own)."""
    return active if active in _FIXED else devices.get(device, default)


def findings(host: str, current: Mapping[str, Any], default: str, devices: Mapping[str, str]) -> list[Finding]:
    out: list[Finding] = []
    running = current.get("running_vgpus") or {}
    for device, active in sorted((current.get("active_types") or {}).items()):
        after = effective_type(device, active, default, devices)
        if active == SHARED_DIRECT and after != SHARED_DIRECT and running.get(device):
            out.append(blocker(
                "esxi-graphics-in-use",
                f"GPU {device} of host {host} runs {running[device]} vGPU VM(s); its graphics type cannot change while "
                "they use it (vSphere Resource Management, Configuring Graphics Devices: \"Virtual machines must be "
                "powered off\")", "power those VMs off (or migrate them), then plan again", subject=device))
    return out


def step(host: str, current: Mapping[str, Any], default: str, policy: str, devices: Mapping[str, str]) -> Step | None:
    """The host step, or None where the host already runs that configuration."""
    active = current.get("active_types") or {}
    configured = (current.get("default_type"), current.get("assignment_policy"), dict(current.get("device_types") or {}))
    in_effect = all(t in _FIXED or t == effective_type(d, t, str(current.get("default_type")),
                                                      configured[2]) for d, t in active.items())
    if configured == (default, policy, dict(devices)) and in_effect:
        return None
    changes = [f"hostDefaultGraphicsType {current.get('default_type')} -> {default}"
               if current.get("default_type") != default else f"hostDefaultGraphicsType {default}",
               f"sharedPassthruAssignmentPolicy {current.get('assignment_policy')} -> {policy}"
               if current.get("assignment_policy") != policy else f"sharedPassthruAssignmentPolicy {policy}"]
    changes += [f"deviceType {d} = {t}" for d, t in devices.items()]
    switched = [d for d, t in sorted(active.items()) if effective_type(d, t, default, devices) != t]
    return Step(
        action="esxi.graphics",
        description=f"set the graphics configuration of host {host} and restart its Xorg so it takes effect"
                    + (f" ({', '.join(switched)} to {', '.join(sorted({effective_type(d, active[d], default, devices) for d in switched}))})"
                       if switched else ""),
        undo="set the configuration found before back (UpdateGraphicsConfig) and restart Xorg again",
        changes=tuple(changes) + ("RestartService xorg",),
        preview=f"HostGraphicsManager.UpdateGraphicsConfig on {host}: {{hostDefaultGraphicsType={default}, "
                f"sharedPassthruAssignmentPolicy={policy}, deviceType=["
                + ", ".join(f"{{deviceId={d}, graphicsType={t}}}" for d, t in devices.items())
                + f"]}}; HostServiceSystem.RestartService(id=xorg) on {host}; then read config.graphicsInfo to confirm\n",
        payload=HostGraphicsChange(host, default, policy, tuple(devices.items())))


def note_restart(host: str) -> Finding:
    return info("esxi-graphics-xorg-restart",
                f"the change restarts Xorg on host {host} (\"After clicking OK, you must restart Xorg on the host\", "
                "vSphere Resource Management): VMs using shared (vSGA) 3D graphics there may lose it until it is back")
