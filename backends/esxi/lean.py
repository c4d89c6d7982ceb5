"""The inventory's RetrievePropertiesEx answer read without pyVmomi: only the fields the inventory uses.

`wire.Session` fetches the answer and ElementTree has parsed it; this module turns the properties into light
objects with the attribute names pyVmomi's objects have (`dev.vendorId`, `info.passthruActive`,
`backing.allowedDevice[0].deviceId`), typed as the vSphere API types them (SCHEMA: xsd:short, xsd:boolean,
arrays ...), so `inventory.read` reads either kind. Fields SCHEMA does not name are not read at all, and of
`config.hardware.device` only the VirtualPCIPassthrough devices are kept (as `collect.retrieve` does): that, and
no type table to load, is what makes it cheaper than pyVmomi's objects.

Exactness: SCHEMA's types, bases and field types are checked against pyVmomi's type tables, and the objects
against pyVmomi's reading of the lab's whole inventory (tests/unit/test_esxi_lean.py,
tests/integration/esxi/test_esxi_wire.py). Anything else raises wire.Unexpected and the whole answer is read by
pyVmomi (collect.read) from the same bytes: a type SCHEMA does not know (a newer subtype, say), a fault or a
missing property in the result, a namespace prefix bound twice. A passthrough device keeps its element, so a
write gets the exact pyVmomi device from it (`to_pyvmomi`).
"""

from __future__ import annotations

import re
from typing import Any, Callable

from xml.etree import ElementTree

from gpupass.backends.esxi.wire import VIM, XSI, Ref, Unexpected

__all__ = ["VIM", "Ref", "Unexpected", "Data", "SCHEMA", "ENUMS", "KEPT_DEVICE", "is_a", "retrieve", "to_pyvmomi"]

_XSI_TYPE = f"{{{XSI}}}type"
_XSD = "http://www.w3.org/2001/XMLSchema"
_NS = f"{{{VIM}}}"
_DECLARATION = re.compile(rb"""xmlns(?::([A-Za-z_][\w.-]*))?\s*=\s*["']([^"']*)["']""")
_DEVICES = "config.hardware.device"
KEPT_DEVICE = "VirtualPCIPassthrough"

# field kinds: xsd:string (and enums: their value is the text), xsd:int/short/long, xsd:boolean
S, I, B = "str", "int", "bool"  # noqa: E741 - the kinds read as short as the table needs them
REF, DATA = "ref", "data"

# type -> (base type or None, {field: (kind, data type, is array)}), from the vSphere API reference (as pyVmomi's
# _typeinfo_vim has it; tests/unit/test_esxi_lean.py compares every entry with pyVmomi's).
SCHEMA: dict[str, tuple[str | None, dict[str, tuple[str, str | None, bool]]]] = {
    "HostPciDevice": (None, {"id": (S, None, False), "classId": (I, None, False), "vendorId": (I, None, False),
                             "deviceId": (I, None, False), "deviceName": (S, None, False)}),
    "HostPciPassthruInfo": (None, {"id": (S, None, False), "passthruEnabled": (B, None, False),
                                   "passthruCapable": (B, None, False), "passthruActive": (B, None, False)}),
    "HostSriovInfo": ("HostPciPassthruInfo", {}),
    "ComputeResourceConfigInfo": (None, {}),
    "ClusterConfigInfoEx": ("ComputeResourceConfigInfo", {"dasConfig": (DATA, "ClusterDasConfigInfo", False),
                                                          "drsConfig": (DATA, "ClusterDrsConfigInfo", False)}),
    "ClusterDasConfigInfo": (None, {"enabled": (B, None, False)}),
    "ClusterDrsConfigInfo": (None, {"enabled": (B, None, False), "defaultVmBehavior": (S, None, False)}),
    "VirtualMachineSnapshotInfo": (None, {"rootSnapshotList": (DATA, "VirtualMachineSnapshotTree", True)}),
    "VirtualMachineSnapshotTree": (None, {"childSnapshotList": (DATA, "VirtualMachineSnapshotTree", True)}),
    "OptionValue": (None, {"key": (S, None, False), "value": (DATA, None, False)}),  # value: xsd:anyType
    "VirtualDevice": (None, {"key": (I, None, False), "backing": (DATA, "VirtualDeviceBackingInfo", False)}),
    "VirtualPCIPassthrough": ("VirtualDevice", {}),
    "VirtualDeviceBackingInfo": (None, {}),
    "VirtualDeviceDeviceBackingInfo": ("VirtualDeviceBackingInfo", {"deviceName": (S, None, False)}),
    "VirtualPCIPassthroughDeviceBackingInfo": ("VirtualDeviceDeviceBackingInfo", {
        "id": (S, None, False), "deviceId": (S, None, False), "systemId": (S, None, False),
        "vendorId": (I, None, False)}),
    "VirtualPCIPassthroughDynamicBackingInfo": ("VirtualDeviceDeviceBackingInfo", {
        "allowedDevice": (DATA, "VirtualPCIPassthroughAllowedDevice", True), "customLabel": (S, None, False),
        "assignedId": (S, None, False)}),
    "VirtualPCIPassthroughAllowedDevice": (None, {"vendorId": (I, None, False), "deviceId": (I, None, False)}),
    "VirtualPCIPassthroughPluginBackingInfo": ("VirtualDeviceBackingInfo", {}),
    "VirtualPCIPassthroughVmiopBackingInfo": ("VirtualPCIPassthroughPluginBackingInfo", {"vgpu": (S, None, False)}),
    "VirtualPCIPassthroughDvxBackingInfo": ("VirtualDeviceBackingInfo", {}),
    "HostGraphicsInfo": (None, {"pciId": (S, None, False), "graphicsType": (S, None, False),
                                "memorySizeInKB": (I, None, False), "vm": (REF, None, True)}),
    "HostGraphicsConfig": (None, {"hostDefaultGraphicsType": (S, None, False),
                                  "sharedPassthruAssignmentPolicy": (S, None, False),
                                  "deviceType": (DATA, "HostGraphicsConfigDeviceType", True)}),
    "HostGraphicsConfigDeviceType": (None, {"deviceId": (S, None, False), "graphicsType": (S, None, False)}),
}
# Enumerations the inventory's properties can carry as an xsi:type: read as their text (pyVmomi's enum values
# are str subclasses equal to it).
ENUMS = frozenset({"VirtualMachinePowerState", "HostSystemConnectionState", "VirtualMachineFaultToleranceState",
                   "DrsBehavior", "HostGraphicsConfigGraphicsType", "HostGraphicsConfigSharedPassthruAssignmentPolicy",
                   "HostGraphicsInfoGraphicsType"})
_XSD_SCALARS: dict[str, Callable[[str], Any]] = {}
# managed object types -> their bases, for references (vSphere API reference: ClusterComputeResource extends
# ComputeResource); any other managed type is only itself
MANAGED_BASES = {"ClusterComputeResource": ("ComputeResource",)}


def _boolean(text: str) -> bool:
    lowered = text.strip().lower()
    if lowered in ("true", "1"):
        return True
    if lowered in ("false", "0"):
        return False
    raise Unexpected(f"not a boolean: {text!r}")


def _integer(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise Unexpected(f"not an integer: {text!r}") from None


def _float(text: str) -> float:
    try:
        return float(text)
    except ValueError:
        raise Unexpected(f"not a number: {text!r}") from None


_XSD_SCALARS.update({"string": str, "int": _integer, "long": _integer, "short": _integer, "byte": _integer,
                     "boolean": _boolean, "float": _float, "double": _float})
_LEAF: dict[str, Callable[[str], Any]] = {S: str, I: _integer, B: _boolean}


class Data:
    """A data object of one vSphere type: the SCHEMA fields as attributes (None, or [] for an array, when the
    answer leaves them out, as pyVmomi's defaults)."""
    _wsdl_names: frozenset[str] = frozenset()
    _wsdlName = ""

    def __repr__(self) -> str:
        return f"{self._wsdlName}({', '.join(f'{k}={v!r}' for k, v in vars(self).items() if not k.startswith('_'))})"


class Array(list):  # type: ignore[type-arg]
    """A typed array (`ArrayOfHostPciDevice`): a list, as pyVmomi's arrays are."""


_CLASSES: dict[str, type] = {}
_Tags = dict[str, tuple[str, Callable[[str], Any] | None, str | None, bool]]
_PLANS: dict[str, tuple[type, dict[str, Any], tuple[str, ...], _Tags]] = {}


def _class(name: str) -> type:
    found = _CLASSES.get(name)
    if found is None:
        names = {name}
        base = SCHEMA[name][0]
        while base is not None:
            names.add(base)
            base = SCHEMA[base][0]
        found = _CLASSES[name] = type(name, (Data,), {"_wsdl_names": frozenset(names), "_wsdlName": name})
    return found


def _plan(name: str) -> tuple[type, dict[str, Any], tuple[str, ...], _Tags]:
    """(class, defaults of the single fields, the array fields, {qualified tag: (attribute, leaf reader, data
    type, is array)}) of a type."""
    found = _PLANS.get(name)
    if found is None:
        fields: dict[str, tuple[str, str | None, bool]] = {}
        chain = [name]
        while SCHEMA[chain[-1]][0] is not None:
            chain.append(SCHEMA[chain[-1]][0])  # type: ignore[arg-type]
        for kind in reversed(chain):
            fields.update(SCHEMA[kind][1])
        defaults: dict[str, Any] = {field: None for field, (_, _, many) in fields.items() if not many}
        tags: _Tags = {_NS + field: (field, _LEAF.get(kind), data if kind == DATA else kind, many)
                for field, (kind, data, many) in fields.items()}
        arrays = tuple(field for field, (_, _, many) in fields.items() if many)
        found = _PLANS[name] = (_class(name), defaults, arrays, tags)
    return found


def is_a(obj: Any, wsdl_name: str) -> bool:
    """isinstance by vSphere type name, for a lean object, a wire.Ref or a pyVmomi object alike."""
    names = getattr(type(obj), "_wsdl_names", None)
    if names is not None:
        return wsdl_name in names
    if isinstance(obj, Ref):
        return obj.type == wsdl_name or wsdl_name in MANAGED_BASES.get(obj.type, ())
    kind = type(obj)
    names = _PYVMOMI_NAMES.get(kind)
    if names is None:  # a pyVmomi class: the vSphere names of it and its bases
        names = _PYVMOMI_NAMES[kind] = frozenset(c.__dict__["_wsdlName"] for c in kind.__mro__
                                                 if "_wsdlName" in c.__dict__)
    return wsdl_name in names


_PYVMOMI_NAMES: dict[type, frozenset[str]] = {}


class ObjectContent:
    __slots__ = ("obj", "propSet")

    def __init__(self, obj: Ref, props: list[Any]) -> None:
        self.obj, self.propSet = obj, props


class Property:
    __slots__ = ("name", "val")

    def __init__(self, name: str, val: Any) -> None:
        self.name, self.val = name, val


class Reader:
    """One answer's objects. `prefixes`: the namespace declarations of the answer, for the prefixes inside
    xsi:type values (`xsd:int`), which the tree does not keep."""

    def __init__(self, body: bytes) -> None:
        self.names: dict[str, tuple[str, str]] = {}
        self.prefixes: dict[str, str] = {}
        for prefix, uri in set(_DECLARATION.findall(body)):
            if self.prefixes.setdefault(prefix.decode(), uri.decode()) != uri.decode():
                raise Unexpected(f"namespace prefix {prefix.decode()!r} bound to two namespaces")

    def result(self, answer: ElementTree.Element) -> tuple[list[ObjectContent], str | None]:
        """(ObjectContents, token) of a RetrievePropertiesEx/ContinueRetrievePropertiesEx answer."""
        value = answer.find(_NS + "returnval")
        if value is None:
            return [], None
        objects: list[ObjectContent] = []
        token = None
        for child in value:
            if child.tag == _NS + "objects":
                objects.append(self.object_content(child))
            elif child.tag == _NS + "token":
                token = child.text
            else:
                raise Unexpected(f"RetrieveResult.{child.tag}")
        return objects, token

    def object_content(self, node: ElementTree.Element) -> ObjectContent:
        obj: Ref | None = None
        props: list[Any] = []
        for child in node:
            tag = child.tag
            if tag == _NS + "propSet":
                name = child.findtext(_NS + "name")
                val = child.find(_NS + "val")
                if name is None or len(child) > 2:
                    raise Unexpected("a property without a name")
                props.append(Property(name, None if val is None else self.typed(val, devices=name == _DEVICES)))
            elif tag == _NS + "obj":
                obj = self.ref(child)
            else:  # missingSet (a property the server could not read, with its fault): pyVmomi reads those
                raise Unexpected(f"ObjectContent.{tag}")
        if obj is None:
            raise Unexpected("an ObjectContent without its object")
        return ObjectContent(obj, props)

    def type_name(self, qualified: str) -> tuple[str, str]:
        """(namespace, name) of an xsi:type value (remembered: one answer names a few dozen types)."""
        found = self.names.get(qualified)
        if found is None:
            prefix, _, name = qualified.rpartition(":")
            namespace = self.prefixes.get(prefix) if prefix else self.prefixes.get("", VIM)
            if namespace is None:
                raise Unexpected(f"unknown namespace prefix in {qualified!r}")
            found = self.names[qualified] = (namespace, name)
        return found

    @staticmethod
    def ref(node: ElementTree.Element) -> Ref:
        kind = node.get("type")
        if not kind or node.text is None:
            raise Unexpected("a reference without a type or an id")
        return Ref(kind, node.text)

    def typed(self, node: ElementTree.Element, *, devices: bool = False) -> Any:
        """A value that names its type (a property's val, an OptionValue's value)."""
        dynamic = node.get(_XSI_TYPE)
        if dynamic is None:
            raise Unexpected(f"{node.tag} names no type")
        namespace, name = self.type_name(dynamic)
        text = node.text or ""
        if namespace == _XSD:
            reader = _XSD_SCALARS.get(name)
            if reader is None:
                raise Unexpected(f"xsd:{name}")
            return reader(text)
        if namespace != VIM:
            raise Unexpected(f"type {dynamic!r} of namespace {namespace}")
        if name == "ManagedObjectReference":
            return self.ref(node)
        if name in ENUMS:
            return text
        if name in SCHEMA:
            return self.data(node, name)
        if name.startswith("ArrayOf"):
            item = name[len("ArrayOf"):]
            array = Array()
            if item == "ManagedObjectReference":
                array.extend(self.ref(child) for child in node)
            elif item == "String":
                array.extend(child.text or "" for child in node)
            elif item == "VirtualDevice" and devices:
                for child in node:  # only the passthrough devices: the others are not read
                    kind = child.get(_XSI_TYPE)
                    if kind is not None and self.type_name(kind) == (VIM, KEPT_DEVICE):
                        device = self.data(child, KEPT_DEVICE)
                        device._element, device._prefixes = child, self.prefixes
                        array.append(device)
            elif item in SCHEMA:
                array.extend(self.data(child, item) for child in node)
            else:
                raise Unexpected(f"type {name!r}")
            return array
        raise Unexpected(f"type {name!r}")

    def data(self, node: ElementTree.Element, static: str) -> Any:
        dynamic = node.get(_XSI_TYPE)
        name = static
        if dynamic is not None:
            namespace, name = self.type_name(dynamic)
            if namespace != VIM or name not in SCHEMA:
                raise Unexpected(f"type {dynamic!r}")
        cls, defaults, arrays, tags = _plan(name)
        obj: Any = cls.__new__(cls)  # type: ignore[call-overload]  # a Data subclass (_class)
        fields = obj.__dict__
        fields.update(defaults)
        for attribute in arrays:
            fields[attribute] = Array()
        for child in node:
            plan = tags.get(child.tag)
            if plan is None:
                continue  # a field the inventory does not read
            attribute, leaf, kind, many = plan
            if leaf is not None:
                value: Any = leaf(child.text or "")
            elif kind == REF:
                value = self.ref(child)
            elif kind is None:  # xsd:anyType: the element names its type
                value = self.typed(child)
            else:
                value = self.data(child, kind)
            if many:
                fields[attribute].append(value)
            else:
                fields[attribute] = value
        return obj


def retrieve(session: Any, view: Ref, props: list[tuple[str, list[str]]], max_objects: int,
             fallback: Callable[[bytes, Exception], tuple[list[Any], str | None]]) -> list[Any]:
    """Every ObjectContent of RetrievePropertiesEx through the view and its continuations. An answer this module
    does not read exactly goes to `fallback(body, why)` (pyVmomi's reading of the same bytes)."""
    objects: list[Any] = []
    answer = session.retrieve_properties(view, props, max_objects)
    while True:
        body = session.last_body
        try:
            found, token = Reader(body).result(answer)
        except Unexpected as why:
            found, token = fallback(body, why)
        objects.extend(found)
        if not token:
            return objects
        answer = session.retrieve_properties(view, props, max_objects, token=token)


def to_pyvmomi(value: Any, stub: Any) -> Any:
    """The pyVmomi object for a lean one, bound to `stub`: a reference becomes the managed object; a kept device
    is read from its element by collect's pyVmomi reader (exactly what pyVmomi reads from those bytes)."""
    if isinstance(value, Ref):
        from pyVmomi import VmomiSupport

        return VmomiSupport.GetWsdlType(VIM, value.type)(value.value, stub)
    if isinstance(value, list):
        return [to_pyvmomi(v, stub) for v in value]
    element = getattr(value, "_element", None)
    if element is not None:
        from pyVmomi import VmomiSupport

        from gpupass.backends.esxi import collect

        return collect.read_element(stub, value._prefixes, element, VmomiSupport.GetWsdlType(VIM, "VirtualDevice"))
    return value
