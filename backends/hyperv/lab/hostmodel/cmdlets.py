"""The cmdlets the model understands: real names, real parameter names/types, parameter binding.

Messages marked (real) are the texts Windows PowerShell 5.1 / the Hyper-V module print;
those marked (approx) could not be confirmed from public sources and are close paraphrases
(see backends/hyperv/README.md).
"""
from __future__ import annotations

import dataclasses
import json
import re
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable

from .model import (PCI_DEVICE_TYPES, SNAPSHOT_TYPES, STOP_ACTIONS, VM_STATES, HostModel, HyperVError,
                    GpuPartition, PartitionableGpu, PnpDevice, VirtualMachine, partitionable_gpu_name)
from . import devpkeys
from .devpkeys import DevPropKey
from .values import ErrorRecord, PSEnum, PSObject, from_json_value, ps_json_dumps, to_json_value, to_string

if TYPE_CHECKING:  # pragma: no cover
    from .interp import Interpreter

HV = "Microsoft.HyperV.PowerShell.Commands."
VEX = "Microsoft.HyperV.PowerShell.VirtualizationException"
PBE = "System.Management.Automation.ParameterBindingException"
CIMEX = "Microsoft.Management.Infrastructure.CimException"


@dataclass
class Param:
    name: str
    type: str = "string"          # string string[] switch bool int uint16 uint32 uint64 enum:<T> object vm[]
    mandatory: bool = False       # cmdlets without a documentation page only (their one parameter set)
    position: int | None = None
    aliases: tuple[str, ...] = ()
    pipeline: bool = False        # the parameter the model binds pipeline input to
    # From the cmdlet's documentation page (cmdlet_docs.py) for the Hyper-V and PnpDevice cmdlets:
    sets: dict[str, tuple[bool, int | None]] = field(default_factory=dict)   # set -> (mandatory, position)
    wildcards: bool = False       # "Accept wildcard characters"
    doc_type: str = ""            # the documented .NET type, e.g. String[]
    implemented: bool = True      # False: documented, accepted by binding, not modelled (refused when used)


_COMMON_DOC = "about_CommonParameters (MicrosoftDocs/PowerShell-Docs, reference/5.1)"
# Common parameters every cmdlet has; the model acts on -ErrorAction and accepts -Verbose/-Debug, the others
# bind (so no NamedParameterNotFound) and are refused as not modelled.
COMMON = [Param("ErrorAction", "enum:ActionPreference", aliases=("ea",)), Param("Verbose", "switch", aliases=("vb",)),
          Param("Debug", "switch", aliases=("db",))] + [
    Param(n, "object", aliases=(a,), implemented=False) for n, a in (
        ("ErrorVariable", "ev"), ("WarningAction", "wa"), ("WarningVariable", "wv"), ("InformationAction", "infa"),
        ("InformationVariable", "iv"), ("OutVariable", "ov"), ("OutBuffer", "ob"), ("PipelineVariable", "pv"))]
SHOULD_PROCESS = [Param("Confirm", "switch", aliases=("cf",)), Param("WhatIf", "switch", aliases=("wi",))]
ALL_SETS = "__AllParameterSets"

ENUMS = {
    "StopAction": ("Microsoft.HyperV.PowerShell.StopAction", STOP_ACTIONS),
    "ActionPreference": ("System.Management.Automation.ActionPreference",
                         {"SilentlyContinue": 0, "Stop": 1, "Continue": 2, "Inquire": 3, "Ignore": 4, "Suspend": 5}),
}
_NET_TYPES = {"string": "System.String", "string[]": "System.String[]", "bool": "System.Boolean",
              "int": "System.Int32", "uint16": "System.UInt16", "uint32": "System.UInt32", "uint64": "System.UInt64",
              "switch": "System.Management.Automation.SwitchParameter", "object": "System.Object",
              "vm[]": "Microsoft.HyperV.PowerShell.VirtualMachine[]"}
_RANGES = {"int": (-2**31, 2**31 - 1), "uint16": (0, 2**16 - 1), "uint32": (0, 2**32 - 1), "uint64": (0, 2**64 - 1)}


class _Bind(Exception):
    pass


@dataclass
class Cmdlet:
    """A cmdlet the model runs. With ``doc`` (a page in cmdlet_docs.CMDLETS) its parameters, aliases,
    parameter sets, positions, mandatory flags and wildcard flags are the documented ones; ``params`` then
    only says which of them the model implements and with what type."""
    name: str
    fqid_suffix: str
    params: list[Param]
    func: Callable[..., list[Any]]
    confirm_impact_high: bool = False
    collects_pipeline: bool = False
    doc: str | None = None
    all_params: list[Param] = field(init=False)
    set_names: list[str] = field(init=False)
    default_set: str = field(init=False)

    def __post_init__(self) -> None:
        self.params = [dataclasses.replace(p, sets=dict(p.sets)) for p in self.params]   # never share a Param
        if self.doc is None:
            for p in self.params:
                p.sets = {ALL_SETS: (p.mandatory, p.position)}
            self.set_names, self.default_set = [ALL_SETS], ALL_SETS
            self.all_params = self.params + SHOULD_PROCESS + COMMON
            return
        from .cmdlet_docs import CMDLETS
        page = CMDLETS[self.doc]
        mine = {p.name.lower(): p for p in self.params}
        documented: list[Param] = []
        for name, entry in page["parameters"].items():
            p = mine.pop(name.lower(), None)
            if p is None:
                # -WhatIf/-Confirm act as PowerShell's ShouldProcess does; any other undeclared one is not modelled
                p = Param(name, "switch") if name in ("WhatIf", "Confirm") else Param(name, "object", implemented=False)
            p.aliases = tuple(entry["aliases"])
            p.sets = {s: (v["required"], v["position"]) for s, v in entry["sets"].items()}
            p.wildcards, p.doc_type = entry["wildcards"], entry["type"]
            documented.append(p)
        if mine:
            raise ValueError(f"{self.name}: parameters {sorted(mine)} are not in {page['source']}")
        self.params = documented
        self.set_names, self.default_set = list(page["sets"]), page["default_set"]
        self.all_params = documented + COMMON

    def _sets_with(self, interp: "Interpreter", node: Any, params: list[Param]) -> list[str]:
        """The parameter sets that contain every parameter in ``params`` (common parameters are in all)."""
        sets = [s for s in self.set_names if all(not p.sets or s in p.sets for p in params)]
        if not sets:
            raise self._ambiguous(interp, node)
        return sets

    def _ambiguous(self, interp: "Interpreter", node: Any) -> Exception:
        # (real) Windows PowerShell 5.1's text for AmbiguousParameterSet
        return self._err(interp, node, "Parameter set cannot be resolved using the specified named parameters.",
                         "AmbiguousParameterSet")

    # -- errors ---------------------------------------------------------
    def _err(self, interp: "Interpreter", node: Any, msg: str, fq: str, cat: str = "InvalidArgument",
             exc: str = PBE, target: str = "") -> Exception:
        from .interp import _Terminating
        return _Terminating(ErrorRecord(msg, f"{fq},{self.fqid_suffix}", cat, exc, target, self.name,
                                        **interp._where(node)))

    def _find(self, interp: "Interpreter", node: Any, pname: str) -> Param:
        low = pname.lower()
        for p in self.all_params:
            if p.name.lower() == low or low in (a.lower() for a in p.aliases):
                return p
        hits = [p for p in self.all_params if p.name.lower().startswith(low)
                or any(a.lower().startswith(low) for a in p.aliases)]
        if len(hits) == 1 and low:
            return hits[0]
        if len(hits) > 1:
            raise self._err(interp, node, f"Parameter cannot be processed because the parameter name '{pname}' is "
                            f"ambiguous. Possible matches include: {' '.join('-' + p.name for p in hits)}.",
                            "AmbiguousParameter")
        raise self._err(interp, node, f"A parameter cannot be found that matches parameter name '{pname}'.",
                        "NamedParameterNotFound")

    def _convert(self, interp: "Interpreter", node: Any, p: Param, v: Any) -> Any:
        t = p.type
        if t == "object":
            if v is None and any(mandatory for mandatory, _ in p.sets.values()):
                # (real) PowerShell refuses $null for a mandatory parameter without [AllowNull()]
                raise self._err(interp, node, f"Cannot bind argument to parameter '{p.name}' because it is null.",
                                "ParameterArgumentValidationErrorNullNotAllowed", "InvalidData")
            return v
        if t == "switch":
            if isinstance(v, (bool, int)):
                return bool(v)
            raise self._err(interp, node, f"Cannot process argument transformation on parameter '{p.name}'. Cannot "
                            f"convert value \"{to_string(v)}\" to type \"System.Management.Automation.SwitchParameter\". "
                            "Boolean parameters accept only Boolean values and numbers, such as $True, $False, 1 or 0.",
                            "ParameterArgumentTransformationError")
        if t == "bool":
            if isinstance(v, bool) or (isinstance(v, int) and not isinstance(v, PSEnum)):
                return bool(v)
            raise self._err(interp, node, f"Cannot process argument transformation on parameter '{p.name}'. Cannot "
                            f"convert value \"{'System.String' if isinstance(v, str) else to_string(v)}\" to type "
                            "\"System.Boolean\". Boolean parameters accept only Boolean values and numbers, such as "
                            "$True, $False, 1 or 0.", "ParameterArgumentTransformationError")
        if t == "string":
            if isinstance(v, list):
                if len(v) == 1:
                    v = v[0]
                else:
                    raise self._err(interp, node, f"Cannot convert 'System.Object[]' to the type 'System.String' "
                                    f"required by parameter '{p.name}'. Specified method is not supported.",
                                    "CannotConvertArgument")
            if v is None:
                raise self._err(interp, node, f"Cannot bind argument to parameter '{p.name}' because it is an empty "
                                "string." if p.mandatory else f"Cannot bind argument to parameter '{p.name}' because it is null.",
                                "ParameterArgumentValidationErrorEmptyStringNotAllowed", "InvalidData")
            s = to_string(v)
            if p.mandatory and s == "":
                raise self._err(interp, node, f"Cannot bind argument to parameter '{p.name}' because it is an empty "
                                "string.", "ParameterArgumentValidationErrorEmptyStringNotAllowed", "InvalidData")
            return s
        if t == "string[]":
            items = v if isinstance(v, list) else [v]
            if any(x is None for x in items):
                raise self._err(interp, node, f"Cannot bind argument to parameter '{p.name}' because it is null.",
                                "ParameterArgumentValidationErrorNullNotAllowed", "InvalidData")
            return [to_string(x) for x in items]
        if t in _RANGES:
            from .interp import _num
            net = _NET_TYPES[t]
            try:
                if isinstance(v, bool) or isinstance(v, list):
                    raise ValueError("Input string was not in a correct format.")
                n = _num(v)
                if isinstance(n, float):
                    n = int(round(n))
                lo, hi = _RANGES[t]
                if not lo <= n <= hi:
                    raise ValueError(f"Value was either too large or too small for a {net.split('.')[1]}.")
                return n
            except ValueError as e:
                reason = str(e) if "too large" in str(e) else "Input string was not in a correct format."
                raise self._err(interp, node, f"Cannot bind parameter '{p.name}'. Cannot convert value "
                                f"\"{to_string(v)}\" to type \"{net}\". Error: \"{reason}\"",
                                "CannotConvertArgumentNoMessage") from e
        if t.startswith("enum:"):
            ename = t[5:]
            net, values = ENUMS[ename]
            if isinstance(v, PSEnum):
                v = v.name
            if isinstance(v, int) and not isinstance(v, bool):
                for k, n in values.items():
                    if n == v:
                        return PSEnum(net, k, n)
            if isinstance(v, str):
                for k, n in values.items():
                    if k.lower() == v.lower():
                        return PSEnum(net, k, n)
            raise self._err(interp, node, f"Cannot bind parameter '{p.name}'. Cannot convert value \"{to_string(v)}\" "
                            f"to type \"{net}\". Error: \"Unable to match the identifier name {to_string(v)} to a valid "
                            "enumerator name. Specify one of the following enumerator names and try again:\n"
                            f"{', '.join(values)}\"", "CannotConvertArgumentNoMessage")
        if t == "vm[]":
            items = v if isinstance(v, list) else [v]
            if not all(isinstance(x, PSObject) and x.typename == "Microsoft.HyperV.PowerShell.VirtualMachine"
                       for x in items):
                raise self._err(interp, node, f"Cannot bind parameter '{p.name}'. Cannot convert the "
                                f"\"{to_string(v)}\" value of type \"{type(v).__name__}\" to type "
                                "\"Microsoft.HyperV.PowerShell.VirtualMachine\".", "CannotConvertArgument")
            return items
        raise AssertionError(t)

    # -- invoke ---------------------------------------------------------
    def invoke(self, interp: "Interpreter", name_node: Any, tokens: list[tuple], input_items: list[Any] | None) -> list[Any]:
        bound: dict[str, Any] = {}
        positional: list[tuple[Any, Any]] = []
        i = 0
        while i < len(tokens):
            kind, pname, node, value, has_value = tokens[i]
            if kind == "arg":
                positional.append((node, value))
                i += 1
                continue
            p = self._find(interp, node, pname)
            if p.name in bound:
                raise self._err(interp, node, f"Cannot bind parameter because parameter '{p.name}' is specified "
                                "more than once. To provide multiple values to parameters that can accept multiple "
                                "values, use the array syntax. For example, \"-parameter value1,value2,value3\".",
                                "ParameterAlreadyBound")
            if p.type == "switch":
                bound[p.name] = self._convert(interp, node, p, value) if has_value else True
                i += 1
                continue
            if not has_value:
                if i + 1 < len(tokens) and tokens[i + 1][0] == "arg":
                    value = tokens[i + 1][3]
                    i += 1
                else:
                    raise self._err(interp, node, f"Missing an argument for parameter '{p.name}'. Specify a parameter "
                                    f"of type '{_NET_TYPES.get(p.type, ENUMS.get(p.type[5:], ('System.Object',))[0])}' "
                                    "and try again.", "MissingArgument")
            bound[p.name] = self._convert(interp, node, p, value)
            i += 1
        pipe_param = next((p for p in self.params if p.pipeline), None)
        # Parameter sets (about_Parameter_Sets): the named parameters narrow the sets; positional arguments
        # bind by the positions of the default set if it is still possible, else of the first remaining set.
        by_name = {p.name: p for p in self.all_params}
        candidates = self._sets_with(interp, name_node, [by_name[n] for n in bound])
        for node, value in positional:
            chosen = self.default_set if self.default_set in candidates else candidates[0]
            free = sorted((p for p in self.params if p.name not in bound and chosen in p.sets
                           and p.sets[chosen][1] is not None), key=lambda p: p.sets[chosen][1])  # type: ignore
            if not free:
                raise self._err(interp, node, "A positional parameter cannot be found that accepts argument "
                                f"'{to_string(value)}'.", "PositionalParameterNotFound")
            bound[free[0].name] = self._convert(interp, node, free[0], value)
            candidates = self._sets_with(interp, name_node, [by_name[n] for n in bound])
        if input_items is not None and pipe_param is None:
            for item in input_items:
                interp._write_error(ErrorRecord(
                    "The input object cannot be bound to any parameters for the command either because the command "
                    "does not take pipeline input or the input and its properties do not match any of the parameters "
                    "that take pipeline input.", f"InputObjectNotBound,{self.fqid_suffix}", "InvalidArgument", PBE,
                    to_string(item), self.name, **interp._where(name_node)), interp._eap(None))
            return []
        given = set(bound) | ({pipe_param.name} if pipe_param is not None and input_items is not None else set())
        if pipe_param is not None and input_items is not None:
            candidates = [c for c in candidates if c in pipe_param.sets] or candidates
        complete = [c for c in candidates
                    if all(p.name in given for p in self.params if p.sets.get(c, (False, None))[0])]
        if not complete:
            pick = self.default_set if self.default_set in candidates else candidates[0]
            missing = [p.name for p in self.params if p.sets.get(pick, (False, None))[0] and p.name not in given]
            raise self._err(interp, name_node, "Cannot process command because of one or more missing mandatory "
                            f"parameters: {' '.join(missing)}.", "MissingMandatoryParameter")
        if len(complete) > 1 and self.default_set not in complete:
            raise self._ambiguous(interp, name_node)
        unmodelled = [n for n in bound if not by_name[n].implemented]
        if unmodelled:
            # Not Windows behaviour: the parameter exists (docs) but the lab model does not act on it.
            raise self._err(interp, name_node, f"The lab host model does not implement -{unmodelled[0]} of "
                            f"{self.name} (documented, not modelled).", "ModelLimitation", "NotImplemented",
                            "System.NotImplementedException")
        action = bound.pop("ErrorAction", None)
        action_name = action.name if isinstance(action, PSEnum) else None
        if self.confirm_impact_high and bound.get("Confirm", True) is not False and not bound.get("WhatIf"):
            # A ConfirmImpact=High cmdlet prompts; a WinRM shell cannot answer.
            raise self._err(interp, name_node, "PowerShell is in NonInteractive mode. Read and Prompt functionality "
                            "is not available.", "System.Management.Automation.PSInvalidOperationException",
                            "InvalidOperation", "System.Management.Automation.PSInvalidOperationException")
        if bound.get("WhatIf"):
            return []
        ctx = _Ctx(interp, self, name_node, interp._eap(action_name))
        try:
            interp.model.check_fault(self.name)
            if self.collects_pipeline or pipe_param is None or input_items is None:
                if pipe_param is not None and input_items is not None:
                    if not input_items:
                        return []
                    bound[pipe_param.name] = input_items[0] if len(input_items) == 1 else input_items
                return self.func(ctx, interp.model, **_kw(bound))
            out: list[Any] = []
            for item in input_items:
                b = dict(bound)
                b[pipe_param.name] = self._convert(interp, name_node, pipe_param, item)
                out.extend(self.func(ctx, interp.model, **_kw(b)))
            return out
        except HyperVError as e:
            rec = interp._record(e, self.name, name_node)
            if e.kind == "terminating":
                from .interp import _Terminating
                raise _Terminating(rec) from e
            interp._write_error(rec, ctx.action)
            return []


def _kw(bound: dict[str, Any]) -> dict[str, Any]:
    return {k.lower(): v for k, v in bound.items() if k not in ("Confirm", "WhatIf", "Verbose", "Debug")}


class _Ctx:
    def __init__(self, interp: "Interpreter", cmd: Cmdlet, node: Any, action: str):
        self.interp, self.cmd, self.node, self.action = interp, cmd, node, action

    def error(self, e: HyperVError) -> None:
        """Write a non-terminating error and let the cmdlet go on with its next input."""
        self.interp._write_error(self.interp._record(e, self.cmd.name, self.node), self.action)


# ---------------------------------------------------------------- object views
def _vm_obj(model: HostModel, v: VirtualMachine) -> PSObject:
    o = PSObject({
        "Name": v.name, "VMName": v.name, "VMId": v.vm_id, "ComputerName": model.name,
        "Generation": v.generation,
        "State": PSEnum("Microsoft.HyperV.PowerShell.VMState", v.state, VM_STATES[v.state]),
        "MemoryStartup": v.memory_startup, "DynamicMemoryEnabled": v.dynamic_memory_enabled,
        "AutomaticStopAction": PSEnum("Microsoft.HyperV.PowerShell.StopAction", v.automatic_stop_action,
                                      STOP_ACTIONS[v.automatic_stop_action]),
        "LowMemoryMappedIoSpace": v.low_mmio, "HighMemoryMappedIoSpace": v.high_mmio,
        "GuestControlledCacheTypes": v.guest_controlled_cache_types,
        # The VM's notes as Set-VM -Notes set them (an empty string for a VM that has none: lab assumption,
        # a VM created without notes).
        "Notes": v.notes,
    }, typename="Microsoft.HyperV.PowerShell.VirtualMachine")
    return o


def _pnp_obj(d: PnpDevice) -> PSObject:
    iid = d.instance_id
    # Win32_PnPEntity: PNPClass (shown as Class) is empty while no driver is installed, as the real outputs of
    # driver-less GPUs show ("Error  3D Video Controller", tests/fixtures/real/hyperv/).
    o = PSObject({"Class": d.pnp_class or None, "FriendlyName": d.friendly_name, "InstanceId": iid, "DeviceID": iid,
                  "Status": d.status, "Present": d.present and not d.dismounted, "Problem": 28 if not d.pnp_class else 0 if d.enabled else 22,
                  "HardwareID": d.hardware_ids, "CompatibleID": d.compatible_ids,
                  "Manufacturer": "NVIDIA" if d.vendor_id == 0x10DE else ""},
                 typename="Microsoft.Management.Infrastructure.CimInstance#ROOT/cimv2/Win32_PnPEntity")
    o.device = d  # type: ignore[attr-defined]
    return o


def _assignable_obj(model: HostModel, d: PnpDevice, vm: str | None) -> PSObject:
    # Property names as Get-VMHostAssignableDevice prints them (tests/fixtures/real/hyperv/
    # oshins-2015-get-vmhostassignabledevice.txt: InstanceID, LocationPath, CimSession, ComputerName, IsDeleted)
    props = {"InstanceID": d.dismounted_instance_id, "LocationPath": d.location_path, "Name": d.friendly_name,
             "ComputerName": model.name, "IsDeleted": False}
    if vm is not None:
        props["VMName"] = vm
    return PSObject(props, typename="Microsoft.HyperV.PowerShell.VMAssignedDevice" if vm else
                    "Microsoft.HyperV.PowerShell.VMHostAssignableDevice")


def _vm_not_found(name: str, cmd: str) -> HyperVError:
    # (real) Hyper-V module message
    return HyperVError(f'Hyper-V was unable to find a virtual machine with name "{name}".',
                       f"InvalidParameter,{HV}{cmd}", "InvalidArgument", VEX, name)


def _resolve_vms(ctx: _Ctx, model: HostModel, names: list[str] | None, vms: list[PSObject] | None,
                 cmd: str) -> list[VirtualMachine]:
    """-Name/-VMName take wildcards; -VM objects resolve by VMId.

    Get-VM.md documents wildcards for -Name; the other pages' -VMName say "Accept wildcard characters: False",
    yet Microsoft's own Hyper-V tests call ``Get-VMAssignableDevice *`` (microsoft/lisa, NVMe DDA cleanup
    script), so the model matches -VMName as a wildcard pattern too (docs/hyperv.md: unverified on Windows)."""
    out: list[VirtualMachine] = []
    for n in names or []:
        hits = [v for v in model.vms if _wild(n, v.name)]
        if not hits:
            ctx.error(_vm_not_found(n, cmd))
        out.extend(h for h in hits if h not in out)
    for o in vms or []:
        vid, name = to_string(o.get("VMId")), to_string(o.get("Name"))
        hit = next((v for v in model.vms if vid and v.vm_id == vid), None) or \
            next((v for v in model.vms if not vid and v.name.lower() == name.lower()), None)
        if hit is None:
            ctx.error(_vm_not_found(name, cmd))
        elif hit not in out:
            out.append(hit)
    return out


def _invalid_state(vm: VirtualMachine, cmd: str, what: str = "") -> HyperVError:
    # (real) the Hyper-V module's text for a change refused in the VM's current state
    return HyperVError("The operation cannot be performed while the virtual machine is in its current state.",
                       f"InvalidState,{HV}{cmd}", "InvalidOperation", VEX, vm.name)


def _device_not_found(model: HostModel, what: str, cmd: str) -> HyperVError:
    # (real) as Add-VMAssignableDevice prints it for a location path that is not dismounted / not present
    return HyperVError(f"The specified device '{what}' was not found on server '{model.name}'.",
                       f"ObjectNotFound,{HV}{cmd}", "ObjectNotFound", VEX, what)


# ---------------------------------------------------------------- Hyper-V cmdlets
def get_vmhost(ctx: _Ctx, model: HostModel) -> list[Any]:
    return [PSObject({"Name": model.name, "ComputerName": model.name, "IovSupport": model.iov_support,
                      "IovSupportReasons": list(model.iov_support_reasons) or None},
                     typename="Microsoft.HyperV.PowerShell.VMHost")]


def get_vm(ctx: _Ctx, model: HostModel, name: list[str] | None = None) -> list[Any]:
    if name is None:
        return [_vm_obj(model, v) for v in model.vms]
    out = []
    for n in name:
        hits = [v for v in model.vms if _wild(n, v.name)]
        if not hits and not any(c in n for c in "*?["):
            ctx.error(_vm_not_found(n, "GetVM"))
        out.extend(_vm_obj(model, v) for v in hits)
    return out


def _wild(pat: str, s: str) -> bool:
    from .interp import _like
    return _like(s, pat)


def set_vm(ctx: _Ctx, model: HostModel, name: list[str] | None = None, vm: list[PSObject] | None = None,
           automaticstopaction: PSEnum | None = None, guestcontrolledcachetypes: bool | None = None,
           lowmemorymappediospace: int | None = None, highmemorymappediospace: int | None = None,
           notes: str | None = None, passthru: bool = False) -> list[Any]:
    if name is None and vm is None:
        raise HyperVError("Cannot process command because of one or more missing mandatory parameters: Name.",
                          f"MissingMandatoryParameter,{HV}SetVM", "InvalidArgument", PBE, kind="terminating")
    out = []
    for v in _resolve_vms(ctx, model, name, vm, "SetVM"):
        if v.state != "Off":
            ctx.error(_invalid_state(v, "SetVM"))
            continue
        if lowmemorymappediospace is not None and lowmemorymappediospace < 0:
            continue
        if automaticstopaction is not None:
            v.automatic_stop_action = automaticstopaction.name
        if guestcontrolledcachetypes is not None:
            v.guest_controlled_cache_types = guestcontrolledcachetypes
        if lowmemorymappediospace is not None:
            v.low_mmio = lowmemorymappediospace
        if highmemorymappediospace is not None:
            v.high_mmio = highmemorymappediospace
        if notes is not None:
            v.notes = notes
        if passthru:
            out.append(_vm_obj(model, v))
    return out


def get_vmsnapshot(ctx: _Ctx, model: HostModel, vmname: list[str] | None = None, vm: list[PSObject] | None = None,
                   name: str | None = None) -> list[Any]:
    vms = _resolve_vms(ctx, model, vmname, vm, "GetVMSnapshot") if (vmname is not None or vm is not None) \
        else model.vms
    out = []
    for v in vms:
        for c in v.checkpoints:
            if name is None or name.lower() == c.name.lower():
                out.append(PSObject({"Name": c.name, "VMName": v.name, "SnapshotType": PSEnum(
                    "Microsoft.HyperV.PowerShell.SnapshotType", c.snapshot_type, SNAPSHOT_TYPES[c.snapshot_type])},
                    typename="Microsoft.HyperV.PowerShell.VMSnapshot"))
    return out


def _require_device_path(locationpath: str | None, instancepath: str | None, cmd: str) -> None:
    if locationpath is None and instancepath is None:
        raise HyperVError("Cannot process command because of one or more missing mandatory parameters: "
                          "LocationPath.", f"MissingMandatoryParameter,{HV}{cmd}", "InvalidArgument", PBE,
                          kind="terminating")


def _dev_at(model: HostModel, locationpath: str | None, instancepath: str | None, cmd: str) -> PnpDevice:
    _require_device_path(locationpath, instancepath, cmd)
    d = None
    if locationpath is not None:
        d = model.device_by_location(locationpath)
    elif instancepath is not None:
        d = model.device_by_instance(instancepath)
    if d is None:
        raise _device_not_found(model, (locationpath if locationpath is not None else instancepath) or "", cmd)
    return d


def dismount_vmhost_assignable_device(ctx: _Ctx, model: HostModel, locationpath: str | None = None,
                                      instancepath: str | None = None, force: bool = False,
                                      passthru: bool = False) -> list[Any]:
    cmd = "DismountVMHostAssignableDevice"
    d = _dev_at(model, locationpath, instancepath, cmd)
    if not d.present:
        raise _device_not_found(model, d.location_path, cmd)
    if not model.iov_support:
        # (real) text of the VMMS event when the firmware withholds PCIe control
        raise HyperVError("The operation failed.\nThe current configuration does not allow for OS control of the PCI "
                          "Express bus. Please check your BIOS or UEFI settings.", f"InvalidOperation,{HV}{cmd}",
                          "InvalidOperation", VEX, d.location_path)
    if d.dismounted:
        raise HyperVError(f"The device at location path '{d.location_path}' is already dismounted.",  # (approx)
                          f"InvalidState,{HV}{cmd}", "InvalidOperation", VEX, d.location_path)
    if d.enabled:
        raise HyperVError(f"The operation failed.\nThe device '{d.friendly_name}' at location path "  # (approx)
                          f"'{d.location_path}' is still in use by the host. Disable it with Disable-PnpDevice "
                          "before dismounting it.", f"InvalidState,{HV}{cmd}", "InvalidOperation", VEX,
                          d.location_path)
    if d.rmrr:
        raise HyperVError(f"The operation failed.\nThe device at location path '{d.location_path}' requires a "  # (approx)
                          "reserved memory region (RMRR) and cannot be assigned to a virtual machine.",
                          f"InvalidOperation,{HV}{cmd}", "InvalidOperation", VEX, d.location_path)
    if not d.acs and not force:
        # (approx) -Force also overrides the ACS check (Microsoft's DDA blog series)
        raise HyperVError("The operation failed.\nThe device or a port above it does not support PCI Express Access "
                          "Control Services (ACS), so the device could reach other devices without going through "
                          "the IOMMU. Use -Force to dismount it anyway.", f"InvalidOperation,{HV}{cmd}",
                          "InvalidOperation", VEX, d.location_path)
    if not d.mitigation_driver and not force:
        # (real) as printed by Windows Server 2016 (the nested error repeats the first part)
        raise HyperVError("The operation failed.\nThe manufacturer of this device has not supplied any directives "
                          "for securing this device while exposing it to a virtual machine. The device should only "
                          "be exposed to trusted virtual machines.\nThis device is not supported when passed through "
                          "to a virtual machine.\nThe operation failed.\nThe manufacturer of this device has not "
                          "supplied any directives for securing this device while exposing it to a virtual machine.",
                          f"InvalidOperation,{HV}{cmd}", "InvalidOperation", VEX, d.location_path)
    d.dismounted = True
    return [_assignable_obj(model, d, None)] if passthru else []


def mount_vmhost_assignable_device(ctx: _Ctx, model: HostModel, locationpath: str | None = None,
                                   instancepath: str | None = None, passthru: bool = False) -> list[Any]:
    cmd = "MountVMHostAssignableDevice"
    d = _dev_at(model, locationpath, instancepath, cmd)
    # Rules assumed: Mount-VMHostAssignableDevice's page only says it mounts a device "physically present on the
    # virtual machine host" (Msvm_AssignableDeviceService.MountAssignableDevice: "so that it can be used by the host");
    # that it refuses a device that is not dismounted, or one a VM holds, is assumed from Microsoft's DDA guide, which
    # removes a device from its VM (Remove-VMAssignableDevice) before it mounts it back.
    if not d.dismounted:
        raise HyperVError(f"The device at location path '{d.location_path}' is not dismounted.",  # (approx)
                          f"InvalidState,{HV}{cmd}", "InvalidOperation", VEX, d.location_path)
    if d.assigned_vm:
        raise HyperVError(f"The device at location path '{d.location_path}' is assigned to virtual machine "  # (approx)
                          f"'{d.assigned_vm}'. Remove it from the virtual machine first.",
                          f"InvalidState,{HV}{cmd}", "InvalidOperation", VEX, d.location_path)
    d.dismounted = False
    d.enabled = False       # comes back in the state it was dismounted in: disabled
    return []


def get_vmhost_assignable_device(ctx: _Ctx, model: HostModel) -> list[Any]:
    return [_assignable_obj(model, d, None) for d in model.devices if d.dismounted and not d.assigned_vm]


def add_vm_assignable_device(ctx: _Ctx, model: HostModel, vmname: list[str] | None = None,
                             vm: list[PSObject] | None = None, locationpath: str | None = None,
                             instancepath: str | None = None, passthru: bool = False) -> list[Any]:
    cmd = "AddVMAssignableDevice"
    if vmname is None and vm is None:
        raise HyperVError("Cannot process command because of one or more missing mandatory parameters: VMName.",
                          f"MissingMandatoryParameter,{HV}{cmd}", "InvalidArgument", PBE, kind="terminating")
    _require_device_path(locationpath, instancepath, cmd)
    out = []
    for v in _resolve_vms(ctx, model, vmname, vm, cmd):
        d = _dev_at(model, locationpath, instancepath, cmd)
        fail = "Failed to add device 'Virtual Pci Express Port'."     # (approx) prefix of Add's own errors
        # Only a dismounted device no VM holds is added: Dismount-VMHostAssignableDevice's page (winserver2022-ps)
        # dismounts a device "making it available for assignment to a virtual machine"; a device on a VM is no longer
        # in Get-VMHostAssignableDevice's list (the real output in tests/fixtures/real/hyperv/ lists dismounted ones).
        if v.state != "Off":
            ctx.error(_invalid_state(v, cmd))
            continue
        if not d.dismounted:
            ctx.error(_device_not_found(model, d.location_path, cmd))
            continue
        if d.assigned_vm:
            # a device held by another VM is not in the host's assignable pool: same "not found" as Add prints
            ctx.error(_device_not_found(model, d.location_path, cmd))
            continue
        if v.dynamic_memory_enabled:
            ctx.error(HyperVError(f"{fail}\nVirtual machine '{v.name}' uses dynamic memory, which is not supported "  # (approx)
                                  "with assigned devices.", f"InvalidOperation,{HV}{cmd}", "InvalidOperation", VEX,
                                  v.name))
            continue
        d.assigned_vm = v.name
        if passthru:
            out.append(_assignable_obj(model, d, v.name))
    return out


def remove_vm_assignable_device(ctx: _Ctx, model: HostModel, vmname: list[str] | None = None,
                                vmassignabledevice: Any = None, locationpath: str | None = None,
                                instancepath: str | None = None, passthru: bool = False) -> list[Any]:
    cmd = "RemoveVMAssignableDevice"
    if vmassignabledevice is not None:
        # Object set: the VMAssignedDevice objects Get-VMAssignableDevice returned
        items = vmassignabledevice if isinstance(vmassignabledevice, list) else [vmassignabledevice]
        for item in items:
            if not (isinstance(item, PSObject) and item.typename == "Microsoft.HyperV.PowerShell.VMAssignedDevice"):
                raise HyperVError(f"Cannot bind parameter 'VMAssignableDevice'. Cannot convert the \"{to_string(item)}\" "
                                  "value of type \"" + type(item).__name__ + "\" to type "
                                  "\"Microsoft.HyperV.PowerShell.VMAssignedDevice\".",
                                  f"CannotConvertArgument,{HV}{cmd}", "InvalidArgument", PBE, kind="terminating")
            _remove_assigned(ctx, model, to_string(item.get("VMName")), to_string(item.get("LocationPath")), None, cmd)
        return []
    for v in _resolve_vms(ctx, model, vmname, None, cmd):
        _remove_assigned(ctx, model, v.name, locationpath, instancepath, cmd)
    return []


def _remove_assigned(ctx: _Ctx, model: HostModel, vm_name: str, locationpath: str | None,
                     instancepath: str | None, cmd: str) -> None:
    v = model.vm(vm_name)
    if v is None:
        ctx.error(_vm_not_found(vm_name, cmd))
        return
    devs = [d for d in model.devices if d.assigned_vm and d.assigned_vm.lower() == v.name.lower()
            and (locationpath is None or d.location_path.lower() == locationpath.lower())
            and (instancepath is None or d.dismounted_instance_id.lower() == instancepath.lower())]
    if not devs:
        ctx.error(HyperVError(f"No assigned device at location path '{locationpath}' was found on virtual "  # (approx)
                              f"machine '{v.name}'.", f"ObjectNotFound,{HV}{cmd}", "ObjectNotFound", VEX,
                              locationpath or ""))
        return
    if v.state != "Off":
        ctx.error(_invalid_state(v, cmd))
        return
    for d in devs:
        d.assigned_vm = None


def get_vm_assignable_device(ctx: _Ctx, model: HostModel, vmname: list[str] | None = None,
                             vm: list[PSObject] | None = None, locationpath: str | None = None) -> list[Any]:
    vms = _resolve_vms(ctx, model, vmname, vm, "GetVMAssignableDevice")
    return [_assignable_obj(model, d, v.name) for v in vms for d in model.devices
            if d.assigned_vm and d.assigned_vm.lower() == v.name.lower()
            and (locationpath is None or d.location_path.lower() == locationpath.lower())]


# ---------------------------------------------------------------- GPU partitioning
def _partitionable_obj(model: HostModel, g: PartitionableGpu) -> PSObject:
    """Get-VMHostPartitionableGpu's object: the properties and order of the real output
    (tests/fixtures/real/sharing/get-vmhostpartitionablegpu-rtx-exhyperv.txt; Msvm_PartitionableGpu for the types).
    Available* = Total* less an equal share per partition held: a lab assumption, no real output shows a GPU
    with partitions held."""
    name = partitionable_gpu_name(g.instance_id)
    held = sum(1 for v in model.vms for a in v.gpu_partitions if a.instance_path.lower() == name.lower())
    props: dict[str, Any] = {"Name": name, "ValidPartitionCounts": list(g.valid_partition_counts),
                             "PartitionCount": g.partition_count}
    for what, total in (("VRAM", g.total_vram), ("Encode", g.total_encode), ("Decode", g.total_decode),
                        ("Compute", g.total_compute)):
        props[f"Total{what}"] = total
        props[f"Available{what}"] = total - total // max(g.partition_count, 1) * held
        if what == "VRAM":
            props["SupportsIncomingLiveMigration"] = False
        props[f"MinPartition{what}"] = 0
        props[f"MaxPartition{what}"] = total
        props[f"OptimalPartition{what}"] = total
    props.update({"ComputerName": model.name, "IsDeleted": False})
    return PSObject(props, typename="Microsoft.HyperV.PowerShell.VMHostPartitionableGpu")


def get_vmhost_partitionable_gpu(ctx: _Ctx, model: HostModel, name: str | None = None) -> list[Any]:
    out = [_partitionable_obj(model, g) for g in model.partitionable
           if model.device_by_instance(g.instance_id) is not None]
    if name is None:
        return out
    hits = [o for o in out if to_string(o.get("Name")).lower() == name.lower()]
    if not hits:
        # (approx) wording: no real output of a -Name that matches nothing has been found
        ctx.error(HyperVError(f"Unable to find a partitionable GPU with name '{name}'.",
                              f"InvalidParameter,{HV}GetVMHostPartitionableGpu", "ObjectNotFound", VEX, name))
    return hits


def _partitions_held(model: HostModel, g: PartitionableGpu) -> list[str]:
    name = partitionable_gpu_name(g.instance_id).lower()
    return [v.name for v in model.vms for a in v.gpu_partitions if a.instance_path.lower() == name]


def set_vmhost_partitionable_gpu(ctx: _Ctx, model: HostModel, name: str | None = None,
                                 hostpartitionablegpu: Any = None, partitioncount: int | None = None,
                                 passthru: bool = False) -> list[Any]:
    """Set-VMHostPartitionableGpu (its page, winserver2022-ps): "configures the host partitionable GPU to the number of
    partitions supported by the manufacturer"; -Name is Get-VMHostPartitionableGpu's Name (Microsoft's "Partition and
    assign GPUs to a virtual machine": ``Set-VMHostPartitionableGpu -Name "<GPU-name>" -PartitionCount <count>``, the
    count "one of the supported counts from the ValidPartitionCounts value"). The same article documents Windows Admin
    Center refusing a GPU whose partition "is already assigned to a VM" ("You must first unassign the partition");
    the model refuses the cmdlet then too, and a count outside ValidPartitionCounts. Both errors' wording is assumed
    (approx): no real output of either was found."""
    cmd = "SetVMHostPartitionableGpu"
    if hostpartitionablegpu is not None:
        items = hostpartitionablegpu if isinstance(hostpartitionablegpu, list) else [hostpartitionablegpu]
        names = [to_string(i.get("Name")) if isinstance(i, PSObject) else to_string(i) for i in items]
    elif name is not None:
        names = [name]
    else:
        names = [partitionable_gpu_name(g.instance_id) for g in model.partitionable]
    out = []
    for wanted in names:
        g = next((g for g in model.partitionable if model.device_by_instance(g.instance_id) is not None
                  and partitionable_gpu_name(g.instance_id).lower() == wanted.lower()), None)
        if g is None:
            ctx.error(HyperVError(f"Unable to find a partitionable GPU with name '{wanted}'.",  # (approx)
                                  f"InvalidParameter,{HV}{cmd}", "ObjectNotFound", VEX, wanted))
            continue
        if partitioncount is not None and partitioncount != g.partition_count:
            if partitioncount not in g.valid_partition_counts:
                ctx.error(HyperVError(f"The partition count {partitioncount} is not valid for this GPU. Valid counts: "  # (approx)
                                      + ", ".join(map(str, g.valid_partition_counts)) + ".",
                                      f"InvalidParameter,{HV}{cmd}", "InvalidArgument", VEX, wanted))
                continue
            held = _partitions_held(model, g)
            if held:
                ctx.error(HyperVError("The partition count cannot be changed while GPU partitions are assigned to "  # (approx)
                                      f"virtual machines ({', '.join(sorted(set(held)))}).",
                                      f"InvalidOperation,{HV}{cmd}", "InvalidOperation", VEX, wanted))
                continue
            g.partition_count = partitioncount
        if passthru:
            out.append(_partitionable_obj(model, g))
    return out


def get_vm_gpu_partition_adapter(ctx: _Ctx, model: HostModel, vmname: list[str] | None = None,
                                 vm: list[PSObject] | None = None, adapterid: str | None = None) -> list[Any]:
    """One object per partition adapter; a VM without one gives nothing. InstancePath and Id are the properties
    tools read from it (ExHyperV: ``Get-VMGpuPartitionAdapter -VMName .. | Select InstancePath,Id``); the
    cmdlet page documents no output properties. The Partition* settings are as a real output shows them
    (MicrosoftDocs/windows-powershell-docs issue #3226); their lab values, Name and the form of Id are assumed."""
    out = []
    for v in _resolve_vms(ctx, model, vmname, vm, "GetVMGpuPartitionAdapter"):
        for a in v.gpu_partitions:
            if adapterid is not None and _adapter_id(v, a).lower() != adapterid.lower():
                continue
            out.append(_adapter_obj(model, v, a))
    return out


def _adapter_id(v: VirtualMachine, a: GpuPartition) -> str:
    return f"Microsoft:{v.vm_id.upper()}\\{a.adapter_id}"


def _adapter_obj(model: HostModel, v: VirtualMachine, a: GpuPartition) -> PSObject:
    props: dict[str, Any] = {"InstancePath": a.instance_path, "Id": _adapter_id(v, a),
                             "Name": "GPU Partition", "VMName": v.name, "VMId": v.vm_id,
                             "ComputerName": model.name, "IsDeleted": False}
    for what in ("VRAM", "Encode", "Decode", "Compute"):
        props.update({f"CurrentPartition{what}": 1000000000, f"MinPartition{what}": 0,
                      f"MaxPartition{what}": 1000000000, f"OptimalPartition{what}": 1000000000})
        props.update({k: val for k, val in a.settings.items() if k.endswith(what)})
    return PSObject(props, typename="Microsoft.HyperV.PowerShell.VMGpuPartitionAdapter")


PARTITION_SETTINGS = tuple(f"{level}Partition{what}" for what in ("VRAM", "Encode", "Decode", "Compute")
                           for level in ("Min", "Max", "Optimal"))


def add_vm_gpu_partition_adapter(ctx: _Ctx, model: HostModel, vmname: list[str] | None = None,
                                 vm: list[PSObject] | None = None, instancepath: str | None = None,
                                 passthru: bool = False, **settings: int | None) -> list[Any]:
    """Add-VMGpuPartitionAdapter (its page in windows-powershell-docs, winserver2022-ps): "With no parameter, it
    assigns a full partition from an assignable GPU to a VM"; -InstancePath names the GPU ("the GPU device ID name on
    the host", Get-VMHostPartitionableGpu's Name). The model gives one of the GPU's PartitionCount partitions and
    refuses when all are held; the wording of its errors is assumed (approx): no real output of either was found.
    Whether Hyper-V refuses a running VM is not documented on the page: the model does not refuse it."""
    cmd = "AddVMGpuPartitionAdapter"
    out = []
    for v in _resolve_vms(ctx, model, vmname, vm, cmd):
        gpus = [g for g in model.partitionable if model.device_by_instance(g.instance_id) is not None]
        if instancepath is not None:
            gpus = [g for g in gpus if partitionable_gpu_name(g.instance_id).lower() == instancepath.lower()]
            if not gpus:
                ctx.error(HyperVError(f"Unable to find a partitionable GPU with instance path '{instancepath}'.",  # (approx)
                                      f"InvalidParameter,{HV}{cmd}", "ObjectNotFound", VEX, instancepath))
                continue
        free = [g for g in gpus if sum(1 for o in model.vms for a in o.gpu_partitions
                                       if a.instance_path.lower() == partitionable_gpu_name(g.instance_id).lower())
                < g.partition_count]
        if not free:
            ctx.error(HyperVError("Failed to add a GPU partition adapter: no partition of the GPU is available.",  # (approx)
                                  f"InvalidOperation,{HV}{cmd}", "InvalidOperation", VEX, v.name))
            continue
        given = {name: int(value) for name, value in
                 ((n, settings.get(n.lower())) for n in PARTITION_SETTINGS) if value is not None}
        adapter = GpuPartition(partitionable_gpu_name(free[0].instance_id), settings=given)
        v.gpu_partitions.append(adapter)
        if passthru:
            out.append(_adapter_obj(model, v, adapter))
    return out


def remove_vm_gpu_partition_adapter(ctx: _Ctx, model: HostModel, vmname: list[str] | None = None,
                                    vm: list[PSObject] | None = None, adapterid: str | None = None,
                                    vmgpupartitionadapter: Any = None, passthru: bool = False) -> list[Any]:
    """Remove-VMGpuPartitionAdapter: "removes an assigned graphic processing unit partition from a virtual machine and
    releases that partition back to the host GPU" (its page); by VM (every adapter, or the one -AdapterId names) or
    the Object set with what Get-VMGpuPartitionAdapter returned."""
    cmd = "RemoveVMGpuPartitionAdapter"
    targets: list[tuple[VirtualMachine, str | None]] = []
    if vmgpupartitionadapter is not None:
        items = vmgpupartitionadapter if isinstance(vmgpupartitionadapter, list) else [vmgpupartitionadapter]
        for item in items:
            if not (isinstance(item, PSObject) and item.typename == "Microsoft.HyperV.PowerShell.VMGpuPartitionAdapter"):
                raise HyperVError(f"Cannot bind parameter 'VMGpuPartitionAdapter'. Cannot convert the \"{to_string(item)}\" "
                                  "value of type \"" + type(item).__name__ + "\" to type "
                                  "\"Microsoft.HyperV.PowerShell.VMGpuPartitionAdapter\".",
                                  f"CannotConvertArgument,{HV}{cmd}", "InvalidArgument", PBE, kind="terminating")
            owner = next((o for o in model.vms if o.vm_id == to_string(item.get("VMId"))), None)
            if owner is None:
                ctx.error(_vm_not_found(to_string(item.get("VMName")), cmd))
                continue
            targets.append((owner, to_string(item.get("Id"))))
    else:
        targets = [(v, adapterid) for v in _resolve_vms(ctx, model, vmname, vm, cmd)]
    for v, wanted in targets:
        gone = [a for a in v.gpu_partitions if wanted is None or _adapter_id(v, a).lower() == wanted.lower()]
        if wanted is not None and not gone:
            ctx.error(HyperVError(f"No GPU partition adapter with id '{wanted}' was found on virtual machine "  # (approx)
                                  f"'{v.name}'.", f"ObjectNotFound,{HV}{cmd}", "ObjectNotFound", VEX, wanted))
            continue
        for a in gone:
            v.gpu_partitions.remove(a)
    return []


# ---------------------------------------------------------------- PnP cmdlets (CDXML module PnpDevice)
def _pnp_not_found(where: str, cmd: str) -> HyperVError:
    # (real) CDXML cmdletization "not found" message
    return HyperVError("No matching Win32_PnPEntity objects found by CIM query for instances of the "
                       "ROOT\\cimv2\\Win32_PnPEntity class on the  CIM server: SELECT * FROM Win32_PnPEntity  WHERE "
                       f"{where}. Verify query parameters and retry.", f"CmdletizationQuery_NotFound,{cmd}",
                       "ObjectNotFound", "Microsoft.PowerShell.Cmdletization.Cim.CimJobException", "Win32_PnPEntity")


def _like_clause(field_: str, vals: list[str]) -> str:
    return "(" + " OR ".join(f"({field_} LIKE '{v}')" for v in vals) + ")"


def get_pnp_device(ctx: _Ctx, model: HostModel, instanceid: list[str] | None = None, class_: list[str] | None = None,
                   friendlyname: list[str] | None = None, presentonly: bool = False) -> list[Any]:
    devs = list(model.devices)
    if presentonly:
        devs = [d for d in devs if d.present and not d.dismounted]
    if instanceid is not None:
        out = []
        for iid in instanceid:
            hit = [d for d in devs if _wild(iid, d.instance_id)]
            if not hit:
                ctx.error(_pnp_not_found(f"((DeviceId LIKE '{iid}'))", "Get-PnpDevice"))
            out.extend(hit)
        devs = out
    if class_ is not None:
        hit = [d for d in devs if any(_wild(c, d.pnp_class) for c in class_)]
        if not hit:
            ctx.error(_pnp_not_found(_like_clause("PNPClass", class_), "Get-PnpDevice"))
        devs = hit
    if friendlyname is not None:
        devs = [d for d in devs if any(_wild(f, d.friendly_name) for f in friendlyname)]
    return [_pnp_obj(d) for d in devs]


def _acpi_path(d: PnpDevice) -> str:
    return "ACPI(_SB_)#ACPI(PCI0)#" + "#".join(p.replace("PCI(", "ACPI(").replace(")", ")") for p in
                                                d.location_path.split("#")[1:])


def _prop(d: PnpDevice, key: DevPropKey) -> tuple[str, Any] | None:
    """The modelled value of ``key`` on ``d`` as (Type, Data); None for a real key the model has no value for."""
    intr = (1 if d.line_interrupt else 0) | (6 if d.msi else 0)   # pciprop.h: 1 LineBased, 2 Msi, 4 MsiX
    table: dict[str, tuple[str, Any]] = {
        "DEVPKEY_Device_LocationPaths": ("StringList", [d.location_path, _acpi_path(d)]),
        "DEVPKEY_Device_FriendlyName": ("String", d.friendly_name),
        "DEVPKEY_Device_HardwareIds": ("StringList", d.hardware_ids),
        "DEVPKEY_Device_CompatibleIds": ("StringList", d.compatible_ids),
        # (type assumed) pciprop.h gives no type for the class bytes; SurveyDDA.ps1 compares BaseClass to 3
        "DEVPKEY_PciDevice_BaseClass": ("Byte", d.pci_class >> 16),
        "DEVPKEY_PciDevice_SubClass": ("Byte", (d.pci_class >> 8) & 0xFF),
        "DEVPKEY_PciDevice_ProgIf": ("Byte", d.pci_class & 0xFF),
        "DEVPKEY_PciDevice_RequiresReservedMemoryRegion": ("Boolean", d.rmrr),
        # pciprop.h: 0 NotSupported .. 3 Supported
        "DEVPKEY_PciDevice_AcsCompatibleUpHierarchy": ("UInt32", 3 if d.acs else 0),
        "DEVPKEY_PciDevice_DeviceType": ("UInt32", PCI_DEVICE_TYPES[d.device_type]),
        "DEVPKEY_PciDevice_InterruptSupport": ("UInt32", intr),
    }
    if d.pnp_class:
        table["DEVPKEY_Device_Class"] = ("String", d.pnp_class)
    return table.get(key.name)


def get_pnp_device_property(ctx: _Ctx, model: HostModel, instanceid: list[str] | None = None,
                            keyname: list[str] | None = None, inputobject: Any = None) -> list[Any]:
    out = []
    if inputobject is not None:       # InputObject (cdxml) set: a device from Get-PnpDevice, piped
        device = getattr(inputobject, "device", None)
        if device is None:
            raise HyperVError("The input object is not a Win32_PnPEntity instance (lab model).",
                              "ModelLimitation,Get-PnpDeviceProperty", "InvalidArgument", PBE, kind="terminating")
        instanceid = [device.instance_id]
    for iid in instanceid or []:
        d = model.device_by_instance(iid)
        if d is None:
            ctx.error(_pnp_not_found(f"((DeviceId LIKE '{iid}'))", "Get-PnpDeviceProperty"))
            continue
        for name in keyname or []:
            key = devpkeys.lookup(name)
            if key is None:
                # (approx) a key Windows does not define: Win32 ERROR_NOT_FOUND (1168), "Element not found."
                # The record's form (ObjectNotFound, CimException, "Windows System Error 1168,<cmdlet>") is the one
                # real CDXML cmdlets print for 1168 (New-SRPartnership in Microsoft's Storage Replica
                # troubleshooting docs); that Get-PnpDeviceProperty answers an unknown key with it is unconfirmed.
                ctx.error(HyperVError("Element not found. ", "Windows System Error 1168,Get-PnpDeviceProperty",
                                      "ObjectNotFound", CIMEX, name))
                continue
            p = _prop(d, key)
            if p is None:
                raise HyperVError(f"The lab host model has no value for device property {key.name} "
                                  "(a real key the model does not model).", "ModelLimitation,Get-PnpDeviceProperty",
                                  "NotImplemented", "System.NotImplementedException", name, kind="terminating")
            out.append(PSObject({"InstanceId": d.instance_id, "KeyName": key.name, "Type": p[0], "Data": p[1]},
                                typename="Microsoft.Management.Infrastructure.CimInstance#ROOT/cimv2/Win32_PnPDeviceProperty"))
    return out


def _set_enabled(ctx: _Ctx, model: HostModel, instanceid: list[str], enabled: bool, cmd: str,
                 passthru: bool) -> list[Any]:
    out = []
    for iid in instanceid:
        d = model.device_by_instance(iid)
        if d is None or d.dismounted or not d.present:
            ctx.error(_pnp_not_found(f"((DeviceId LIKE '{iid}'))", cmd))
            continue
        d.enabled = enabled
        if passthru:
            out.append(_pnp_obj(d))
    return out


def disable_pnp_device(ctx: _Ctx, model: HostModel, instanceid: list[str] | None = None,
                       passthru: bool = False) -> list[Any]:
    return _set_enabled(ctx, model, instanceid or [], False, "Disable-PnpDevice", passthru)


def enable_pnp_device(ctx: _Ctx, model: HostModel, instanceid: list[str] | None = None,
                      passthru: bool = False) -> list[Any]:
    return _set_enabled(ctx, model, instanceid or [], True, "Enable-PnpDevice", passthru)


def get_cim_associated_instance(ctx: _Ctx, model: HostModel, inputobject: Any = None,
                                resultclassname: str | None = None) -> list[Any]:
    d = getattr(inputobject, "device", None)
    if d is None:
        raise HyperVError("The WS-Management service cannot process the request because the input object is not a "
                          "CIM instance.", "HRESULT 0x80338000,Microsoft.Management.Infrastructure.CimCmdlets."
                          "GetCimAssociatedInstanceCommand", "InvalidArgument", CIMEX)
    if resultclassname is not None and resultclassname.lower() != "win32_devicememoryaddress":
        return []
    if not d.holds_resources:
        return []            # disabled, dismounted or absent: no resources in use (PnpDevice.holds_resources)
    out = []
    for start, size in memory_ranges(model)[d.instance_id]:
        out.append(PSObject({"StartingAddress": start, "EndingAddress": start + size - 1,
                             "Name": f"0x{start:016X}-0x{start + size - 1:016X}"},
                            typename="Microsoft.Management.Infrastructure.CimInstance#ROOT/cimv2/Win32_DeviceMemoryAddress"))
    return out


# Where the modelled host firmware places BARs: 32-bit ones in a window below 4 GiB, the others from 1 TiB up, each
# naturally aligned (a BAR is aligned to its size, PCI spec), devices in model order so the ranges never overlap.
_LOW_WINDOW = 0x80000000
_HIGH_WINDOW = 1 << 40


def memory_ranges(model: HostModel) -> dict[str, list[tuple[int, int]]]:
    """(start, size) of every BAR of every device, as a firmware that decodes above 4 GiB would place them."""
    low, high, out = _LOW_WINDOW, _HIGH_WINDOW, {}
    for dev in model.devices:
        ranges = []
        for i, size in enumerate(dev.bars):
            if i < dev.bars_below_4g:
                low = -(-low // size) * size
                if low + size > 1 << 32:
                    raise ValueError(f"lab model: the 32-bit BARs of {dev.instance_id} do not fit below 4 GiB")
                ranges.append((low, size))
                low += size
            else:
                high = -(-high // size) * size
                ranges.append((high, size))
                high += size
        out[dev.instance_id] = ranges
    return out


# ---------------------------------------------------------------- utility cmdlets
def convertto_json(ctx: _Ctx, model: HostModel, inputobject: Any = None, depth: int = 2,
                   compress: bool = False) -> list[Any]:
    val = to_json_value(inputobject, 1, depth) if not isinstance(inputobject, list) else \
        [to_json_value(x, 2, depth) for x in inputobject]
    return [ps_json_dumps(val, compress)]


def convertfrom_json(ctx: _Ctx, model: HostModel, inputobject: Any = None) -> list[Any]:
    items = inputobject if isinstance(inputobject, list) else [inputobject]
    text = "\n".join(to_string(x) for x in items)
    try:
        data = json.loads(text)
    except ValueError as e:
        raise HyperVError(f"Invalid JSON primitive: {text[:20]}.", "System.ArgumentException,Microsoft.PowerShell."
                          "Commands.ConvertFromJsonCommand", "NotSpecified", "System.ArgumentException",
                          kind="terminating") from e
    v = from_json_value(data)
    return list(v) if isinstance(v, list) else [v]


def select_object(ctx: _Ctx, model: HostModel, property: list[str] | None = None, inputobject: Any = None) -> list[Any]:
    """Select-Object -Property NAME,PATTERN,... (Windows PowerShell 5.1, Microsoft.PowerShell.Utility/Select-Object.md:
    "Specifies the properties to select. Wildcards are permitted."; a new object with copies of those properties).
    Each pattern adds the input's matching properties in the input's order; a plain name the input lacks is added
    with a null value, as PowerShell does; calculated properties (hashtables) are not modelled."""
    from .interp import wildcard_regex
    items = inputobject if isinstance(inputobject, list) else [inputobject]
    out = []
    for item in items:
        if not isinstance(item, PSObject):
            raise HyperVError("Select-Object of a value that is not an object is not modelled",
                              f"NotModelled,{HV}SelectObject", "NotImplemented", "System.NotImplementedException",
                              kind="terminating")
        picked: dict[str, Any] = {}
        for pattern in property or []:
            if not any(c in pattern for c in "*?["):
                picked.setdefault(next((k for k, _ in item.items() if k.lower() == pattern.lower()), pattern),
                                  item.get(pattern))
                continue
            rx = re.compile(wildcard_regex(pattern), re.I | re.S)
            for key, value in item.items():
                if rx.fullmatch(key) and key.lower() not in {k.lower() for k in picked}:
                    picked[key] = value
        out.append(PSObject(picked, typename="Selected." + item.typename))
    return out


def get_cim_instance(ctx: _Ctx, model: HostModel, classname: str | None = None) -> list[Any]:
    """Get-CimInstance -ClassName Win32_OperatingSystem only: its Caption, BuildNumber and ProductType (the class's
    reference page, CIMWin32Prov: ProductType 1 = work station, 2 = domain controller, 3 = server)."""
    if (classname or "").lower() != "win32_operatingsystem":
        raise HyperVError(f"Get-CimInstance of class {classname!r} is not modelled", f"NotModelled,{HV}GetCimInstance",
                          "NotImplemented", "System.NotImplementedException", kind="terminating")
    return [PSObject({"Caption": model.os_caption, "BuildNumber": model.os_build, "ProductType": model.os_product_type},
                     typename="Microsoft.Management.Infrastructure.CimInstance#root/cimv2/Win32_OperatingSystem")]


def write_output(ctx: _Ctx, model: HostModel, inputobject: Any = None) -> list[Any]:
    return list(inputobject) if isinstance(inputobject, list) else [inputobject]


def out_null(ctx: _Ctx, model: HostModel, inputobject: Any = None) -> list[Any]:
    return []


def _hv(name: str, cls: str, params: list[Param], func: Callable[..., list[Any]], **kw: Any) -> Cmdlet:
    return Cmdlet(name, HV + cls, params, func, **kw)


_LP = Param("LocationPath", "string")
_IP = Param("InstancePath", "string")

# The Hyper-V and PnpDevice cmdlets take their parameters, parameter sets, positions, aliases and mandatory flags
# from their pages in MicrosoftDocs/windows-powershell-docs (docset/winserver2022-ps/Hyper-V/<name>.md and
# PnpDevice/<name>.md, extracted in cmdlet_docs.py); the lists below only name the parameters the model acts on,
# with the type it converts to. A documented parameter not listed binds and is refused as not modelled; an
# undocumented one is NamedParameterNotFound, as on Windows.
_SW = "switch"
CMDLETS: dict[str, Cmdlet] = {c.name.lower(): c for c in [
    _hv("Get-VMHost", "GetVMHost", [], get_vmhost, doc="Get-VMHost"),
    _hv("Get-VM", "GetVM", [Param("Name", "string[]")], get_vm, doc="Get-VM"),
    _hv("Set-VM", "SetVM", [Param("Name", "string[]"), Param("VM", "vm[]"),
                            Param("AutomaticStopAction", "enum:StopAction"),
                            Param("GuestControlledCacheTypes", "bool"), Param("LowMemoryMappedIoSpace", "uint32"),
                            Param("HighMemoryMappedIoSpace", "uint64"), Param("Notes", "string"),
                            Param("Passthru", _SW)], set_vm, doc="Set-VM"),
    _hv("Get-VMSnapshot", "GetVMSnapshot", [Param("VMName", "string[]"), Param("VM", "vm[]"), Param("Name", "string")],
        get_vmsnapshot, doc="Get-VMSnapshot"),
    _hv("Dismount-VMHostAssignableDevice", "DismountVMHostAssignableDevice",
        [_LP, _IP, Param("Force", _SW), Param("Passthru", _SW)], dismount_vmhost_assignable_device,
        doc="Dismount-VMHostAssignableDevice"),
    _hv("Mount-VMHostAssignableDevice", "MountVMHostAssignableDevice", [_LP, _IP, Param("Passthru", _SW)],
        mount_vmhost_assignable_device, doc="Mount-VMHostAssignableDevice"),
    _hv("Get-VMHostAssignableDevice", "GetVMHostAssignableDevice", [], get_vmhost_assignable_device,
        doc="Get-VMHostAssignableDevice"),
    _hv("Add-VMAssignableDevice", "AddVMAssignableDevice",
        [Param("VMName", "string[]"), Param("VM", "vm[]"), _LP, _IP, Param("Passthru", _SW)],
        add_vm_assignable_device, doc="Add-VMAssignableDevice"),
    # No -VM here (docs): by name, or the Object set with what Get-VMAssignableDevice returned.
    _hv("Remove-VMAssignableDevice", "RemoveVMAssignableDevice",
        [Param("VMName", "string[]"), Param("VMAssignableDevice", "object", pipeline=True), _LP, _IP,
         Param("Passthru", _SW)],
        remove_vm_assignable_device, doc="Remove-VMAssignableDevice"),
    _hv("Get-VMAssignableDevice", "GetVMAssignableDevice", [Param("VMName", "string[]"), Param("VM", "vm[]"), _LP],
        get_vm_assignable_device, doc="Get-VMAssignableDevice"),
    # GPU partitioning: what the host offers, which VMs hold partitions, adding and removing one.
    _hv("Get-VMHostPartitionableGpu", "GetVMHostPartitionableGpu", [Param("Name", "string")],
        get_vmhost_partitionable_gpu, doc="Get-VMHostPartitionableGpu"),
    _hv("Get-VMGpuPartitionAdapter", "GetVMGpuPartitionAdapter",
        [Param("VMName", "string[]"), Param("VM", "vm[]"), Param("AdapterId", "string")],
        get_vm_gpu_partition_adapter, doc="Get-VMGpuPartitionAdapter"),
    _hv("Add-VMGpuPartitionAdapter", "AddVMGpuPartitionAdapter",
        [Param("VMName", "string[]"), Param("VM", "vm[]"), _IP, Param("Passthru", _SW),
         *(Param(name, "uint64") for name in PARTITION_SETTINGS)],
        add_vm_gpu_partition_adapter, doc="Add-VMGpuPartitionAdapter"),
    _hv("Set-VMHostPartitionableGpu", "SetVMHostPartitionableGpu",
        [Param("HostPartitionableGpu", "object", pipeline=True), Param("Name", "string"),
         Param("PartitionCount", "uint16"), Param("Passthru", _SW)],
        set_vmhost_partitionable_gpu, doc="Set-VMHostPartitionableGpu"),
    _hv("Remove-VMGpuPartitionAdapter", "RemoveVMGpuPartitionAdapter",
        [Param("VMName", "string[]"), Param("VM", "vm[]"), Param("AdapterId", "string"),
         Param("VMGpuPartitionAdapter", "object", pipeline=True), Param("Passthru", _SW)],
        remove_vm_gpu_partition_adapter, doc="Remove-VMGpuPartitionAdapter"),
    Cmdlet("Get-PnpDevice", "Get-PnpDevice", [Param("InstanceId", "string[]"), Param("Class", "string[]"),
                                              Param("FriendlyName", "string[]"), Param("PresentOnly", _SW)],
           lambda ctx, model, **kw: get_pnp_device(ctx, model, class_=kw.pop("class", None), **kw), doc="Get-PnpDevice"),
    Cmdlet("Get-PnpDeviceProperty", "Get-PnpDeviceProperty",
           [Param("InstanceId", "string[]"), Param("KeyName", "string[]"), Param("InputObject", "object", pipeline=True)],
           get_pnp_device_property, doc="Get-PnpDeviceProperty"),
    Cmdlet("Disable-PnpDevice", "Disable-PnpDevice", [Param("InstanceId", "string[]"), Param("PassThru", _SW)],
           disable_pnp_device, confirm_impact_high=True, doc="Disable-PnpDevice"),
    Cmdlet("Enable-PnpDevice", "Enable-PnpDevice", [Param("InstanceId", "string[]"), Param("PassThru", _SW)],
           enable_pnp_device, confirm_impact_high=True, doc="Enable-PnpDevice"),
    # Not from the Hyper-V/PnpDevice docsets: hand-written, one parameter set each.
    Cmdlet("Get-CimAssociatedInstance",
           "Microsoft.Management.Infrastructure.CimCmdlets.GetCimAssociatedInstanceCommand",
           [Param("InputObject", "object", mandatory=True, position=0, pipeline=True),
            Param("ResultClassName", "string")], get_cim_associated_instance),
    Cmdlet("ConvertTo-Json", "Microsoft.PowerShell.Commands.ConvertToJsonCommand",
           [Param("InputObject", "object", mandatory=True, position=0, pipeline=True), Param("Depth", "int"),
            Param("Compress", "switch")], convertto_json, collects_pipeline=True),
    Cmdlet("ConvertFrom-Json", "Microsoft.PowerShell.Commands.ConvertFromJsonCommand",
           [Param("InputObject", "object", mandatory=True, position=0, pipeline=True)], convertfrom_json,
           collects_pipeline=True),
    Cmdlet("Select-Object", "Microsoft.PowerShell.Commands.SelectObjectCommand",
           [Param("Property", "string[]", position=0), Param("InputObject", "object", pipeline=True)], select_object),
    Cmdlet("Get-CimInstance", "Microsoft.Management.Infrastructure.CimCmdlets.GetCimInstanceCommand",
           [Param("ClassName", "string", mandatory=True, position=0)], get_cim_instance),
    Cmdlet("Write-Output", "Microsoft.PowerShell.Commands.WriteOutputCommand",
           [Param("InputObject", "object", mandatory=True, position=0, pipeline=True)], write_output),
    Cmdlet("Out-Null", "Microsoft.PowerShell.Commands.OutNullCommand",
           [Param("InputObject", "object", position=0, pipeline=True)], out_null, collects_pipeline=True),
]}
