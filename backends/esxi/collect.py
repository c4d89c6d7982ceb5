"""RetrievePropertiesEx over pyvmomi's own connection, its answer read by a lean reader.

Where `gpupass gpus` spends its time on a large vCenter: not in the request (one RetrievePropertiesEx) but in
pyvmomi's SOAP deserialiser, which calls Python for every start tag, end tag and text of the answer and
builds each data object through its checked constructor (50 hosts and 500 VMs of the simulator answer with
100,000 elements: 0.6-0.8 s of CPU here, 95% of an inventory read; tests/bench/bench_esxi.py). This module sends the same request through the same pooled
HTTPS connection, session cookie and TLS context as pyvmomi (SoapStubAdapter.GetConnection, which verifies
as the session was set up to), lets ElementTree's C parser build the tree, and turns it into the same
pyvmomi types pyvmomi would (DataObject subclasses, ManagedObject references bound to the session, typed
arrays, enums), looking each type's properties up once instead of once per element.

One difference, asked for explicitly: with `devices=` the `config.hardware.device` arrays keep only the
devices of those types; the others (disks, controllers, NICs: most of a VM's answer) are skipped unread. The
inventory asks for VirtualPCIPassthrough only, the one device type it looks at.

A SOAP fault, and any answer this reader does not know how to read exactly (a fault nested in the result, a
namespace prefix bound twice), goes to pyvmomi's own deserialiser with the same bytes, so errors are raised
as pyvmomi raises them. tests/integration/esxi/test_esxi_collect.py checks the two readers agree on the lab's
inventory.
"""

from __future__ import annotations

import contextlib
import gc
import io
import logging
import re
import zlib
from typing import Any, Callable, Iterator
from xml.etree import ElementTree

log = logging.getLogger("gpupass.esxi")

_XSI_TYPE = "{http://www.w3.org/2001/XMLSchema-instance}type"
_XSD = "http://www.w3.org/2001/XMLSchema"
_SOAP_BODY = "{http://schemas.xmlsoap.org/soap/envelope/}Body"
_DEVICES = "config.hardware.device"
_DECLARATION = re.compile(rb"""xmlns(?::([A-Za-z_][\w.-]*))?\s*=\s*["']([^"']*)["']""")


_DATA, _ARRAY, _REFERENCE, _SCALAR = "data object", "array", "reference", "scalar"


class Unreadable(Exception):
    """An answer the lean reader does not read exactly: pyvmomi's deserialiser reads it instead."""


def post(stub: Any, mo: Any, method: str, args: list[Any]) -> tuple[Any, bytes]:
    """Send one SOAP request as SoapStubAdapter.InvokeMethod does; (method info, body of a 200 answer).

    A 500 answer (a SOAP fault) is read by pyvmomi and raised; any other status raises HTTPException, as
    pyvmomi does."""
    from http.client import HTTPException
    from http.cookies import SimpleCookie

    from pyVmomi import SoapAdapter

    info = type(mo)._GetMethodInfo(method)
    headers = {"Cookie": stub.cookie, "SOAPAction": stub.versionId,
               "Content-Type": f"text/xml; charset={SoapAdapter.XML_ENCODING}", "User-Agent": "gpupass (pyvmomi)"}
    headers.update(getattr(stub, "_customHeaders", None) or {})
    request = stub.SerializeRequest(mo, info, args)
    for modifier in getattr(stub, "requestModifierList", ()):
        request = modifier(request)
    conn = stub.GetConnection()
    try:
        conn.request("POST", stub.path, request, headers)
        response = conn.getresponse()
        body = response.read()
    except Exception:
        conn.close()
        stub.DropConnections()  # as pyvmomi: the server may be sick, drop the pooled connections
        raise
    cookie = response.getheader("Set-Cookie") or response.getheader("set-cookie")
    if cookie:  # the server may renew the session cookie on any answer: keep it, as pyvmomi does
        stub.cookie = cookie
        session = SimpleCookie(cookie).get(SoapAdapter.COOKIE_NAME)
        if session:
            SoapAdapter.StubAdapterBase.SetSessionId(stub, session.value)
    if response.status not in (200, 500):
        conn.close()
        raise HTTPException(f"{response.status} {response.reason}")
    stub.ReturnConnection(conn)
    encoding = (response.getheader("Content-Encoding") or "identity").lower()
    if encoding in ("gzip", "deflate"):
        body = zlib.decompress(body, zlib.MAX_WBITS | 32)  # gzip or zlib, detected from the header
    if response.status == 500:
        fault = SoapAdapter.SoapResponseDeserializer(stub).Deserialize(io.BytesIO(body), info.result)
        raise fault
    return info, body


def retrieve(collector: Any, specs: list[Any], options: Any, on_request: Callable[[], None], *,
             devices: tuple[type, ...] | None = None) -> list[Any]:
    """Every ObjectContent of RetrievePropertiesEx(specs, options) and its ContinueRetrievePropertiesEx calls,
    each request counted with on_request(). `devices`: keep only these types in config.hardware.device."""
    from gpupass.backends.esxi.connection import safe_moid

    stub = collector._stub

    def call(method: str, args: list[Any]) -> Any:
        on_request()
        log.debug("SOAP %s on %s", method, safe_moid(collector))  # as every other request (connection.connect)
        return read(stub, *post(stub, collector, method, args), devices=devices)

    objects: list[Any] = []
    result = call("RetrievePropertiesEx", [specs, options])
    while result is not None:
        objects.extend(result.objects)
        if not result.token:
            break
        result = call("ContinueRetrievePropertiesEx", [result.token])
    return objects


def read(stub: Any, info: Any, body: bytes, *, devices: tuple[type, ...] | None = None) -> Any:
    """The RetrieveResult in a RetrievePropertiesEx/ContinueRetrievePropertiesEx answer (None if empty)."""
    try:
        with collector_paused():
            return _Reader(stub, body, devices).result(info.result)
    except Unreadable as why:
        log.debug("lean reader: %s; pyvmomi reads this answer", why)
        from pyVmomi import SoapAdapter

        result = SoapAdapter.SoapResponseDeserializer(stub).Deserialize(io.BytesIO(body), info.result)
        if result is not None and devices is not None:
            for content in result.objects:
                for prop in content.propSet:
                    if prop.name == _DEVICES and prop.val is not None:
                        kept = [d for d in prop.val if isinstance(d, devices)]
                        del prop.val[:]
                        prop.val.extend(kept)
        return result


@contextlib.contextmanager
def collector_paused() -> Iterator[None]:
    """The cyclic garbage collector off while one answer becomes objects. Reading builds a tree and the
    objects from it, none of them garbage yet, and the collector, run every 700 new objects, walks them all
    again and again: with it on, a 50-host/500-VM answer took 2-3x as long here. Put back as it was found."""
    was = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was:
            gc.enable()


def read_element(stub: Any, prefixes: dict[str, str], element: Any, static: type) -> Any:
    """One element of an answer read as pyVmomi reads it (the lean read path's devices, when a write needs
    them: lean.to_pyvmomi); `prefixes`: the answer's namespace declarations."""
    reader = _Reader.__new__(_Reader)
    reader.setup(stub, prefixes, None)
    with collector_paused():
        return reader.value(element, static)  # Unreadable: the caller reads the object with pyVmomi instead


class _Reader:
    def __init__(self, stub: Any, body: bytes, devices: tuple[type, ...] | None) -> None:
        # Namespace declarations, for the prefixes inside attribute values (xsi:type="xsd:int"), which the tree
        # does not keep. A prefix bound to two namespaces anywhere (or a declaration-like text in a value)
        # sends the answer to pyvmomi, whose parser follows the scopes.
        prefixes: dict[str, str] = {}
        for prefix, uri in set(_DECLARATION.findall(body)):
            if prefixes.setdefault(prefix.decode(), uri.decode()) != uri.decode():
                raise Unreadable(f"namespace prefix {prefix.decode()!r} bound to two namespaces")
        self.setup(stub, prefixes, devices)
        try:
            self.root = ElementTree.fromstring(body)
        except ElementTree.ParseError as error:
            raise Unreadable(f"not XML: {error}") from None

    def setup(self, stub: Any, prefixes: dict[str, str], devices: tuple[type, ...] | None) -> None:
        from pyVmomi import VmomiSupport as vs

        self.vs = vs
        self.stub = stub
        self.version = stub.version
        self.devices = devices
        self.guids = not stub.SupportServerGUIDs()
        self.prefixes = prefixes
        default = self.prefixes.get("", vs.XMLNS_VMODL_BASE)
        self.default_ns = default
        self.types: dict[str, type] = {}
        self.plans: dict[tuple[Any, str | None], tuple[Any, str]] = {}
        self.dynamic_property = vs.GetVmodlType("vmodl.DynamicProperty")

    def result(self, result_type: type) -> Any:
        body = self.root.find(_SOAP_BODY)
        if body is None or len(body) != 1 or not body[0].tag.endswith("Response"):
            raise Unreadable("no single *Response element in the SOAP body")
        values = [child for child in body[0] if _local(child.tag) == "returnval"]
        if not values:
            return None
        return self.value(values[0], result_type)

    # -- types ------------------------------------------------------------------------------------
    def wsdl_type(self, qualified: str) -> type:
        """The pyvmomi type of an xsi:type or a reference's type attribute ("xsd:int", "HostSystem")."""
        found = self.types.get(qualified)
        if found is None:
            prefix, _, name = qualified.rpartition(":")
            ns = self.prefixes.get(prefix) if prefix else self.default_ns
            if ns is None:
                raise Unreadable(f"unknown namespace prefix in {qualified!r}")
            if name.endswith("ManagedObjectReference"):  # a reference: its type attribute names the class
                name = name[:-len("Reference")]
            try:
                found = self.vs.GetWsdlType(ns, name)
            except KeyError:
                if ns == _XSD:
                    raise Unreadable(f"unknown XML schema type {qualified!r}") from None
                try:  # as pyvmomi's LookupWsdlType: a type of another namespace known by its name
                    found = self.vs.GuessWsdlType(name)
                except KeyError:
                    raise Unreadable(f"unknown type {qualified!r}") from None
            self.types[qualified] = found
        return found

    # -- values -----------------------------------------------------------------------------------
    def value(self, element: Any, static: Any) -> Any:
        dynamic = element.get(_XSI_TYPE)
        plan = self.plans.get((static, dynamic))
        if plan is None:
            plan = self.plans[(static, dynamic)] = self.plan(static, dynamic)
        kind, form = plan
        if form is _DATA:
            return self.data_object(element, kind)
        if form is _ARRAY:
            array = kind()
            item = kind.Item
            leaf = _leaf(item)
            for child in element:
                if leaf is not None and child.get(_XSI_TYPE) is None:
                    array.append(leaf(child.text or ""))
                else:
                    array.append(self.value(child, item))
            return array
        if form is _REFERENCE:
            cls = self.wsdl_type(element.get("type") or "")
            guid = element.get("serverGuid") if self.guids else None
            return cls(element.text or "", self.stub, guid)
        return _scalar(self.vs, kind, element.text or "", self)

    def plan(self, static: Any, dynamic: str | None) -> tuple[Any, str]:
        """The type an element is read as, and in which form, as SoapDeserializer.StartElementHandler picks it:
        its xsi:type unless the static type is a type name, a method or a property path (or both are arrays);
        an array's item type without one; then widened to the session's API version."""
        vs = self.vs
        kind = static
        if dynamic is not None:
            if static is not type and static is not vs.ManagedMethod and static is not vs.PropertyPath:
                found = self.wsdl_type(dynamic)
                if not (issubclass(found, list) and issubclass(static, list)):
                    kind = found
        elif issubclass(static, list):
            kind = static.Item
        kind = vs.GetCompatibleType(kind, self.version)
        if issubclass(kind, vs.ManagedObject):
            return kind, _REFERENCE
        if issubclass(kind, list):
            return kind, _ARRAY
        if issubclass(kind, vs.DataObject):
            if issubclass(kind, Exception):
                raise Unreadable(f"a fault ({kind.__name__}) in the answer")
            return kind, _DATA
        return kind, _SCALAR

    def data_object(self, element: Any, kind: Any) -> Any:
        obj = kind.__new__(kind)
        fields = obj.__dict__
        constants, arrays = _defaults(kind)
        fields.update(constants)
        for name, array_type in arrays:
            fields[name] = array_type()
        props = _properties(kind)
        devices_only = None
        for child in element:
            prop = props.get(child.tag)
            if prop is None:
                prop = props[child.tag] = _property(kind, child.tag)
            name, static, is_list, leaf = prop
            if leaf is not None and child.get(_XSI_TYPE) is None:  # most elements: a number, a string, an enum
                value = leaf(child.text or "")
            elif devices_only is not None and name == "val":
                fields[name] = self.devices_of(child, static, devices_only)
                continue
            else:
                value = self.value(child, static)
            if is_list and not isinstance(value, list):
                fields[name].append(value)
            else:
                fields[name] = value
            if name == "name" and kind is self.dynamic_property and self.devices is not None and value == _DEVICES:
                devices_only = self.devices
        return obj

    def devices_of(self, element: Any, static: Any, keep: tuple[type, ...]) -> Any:
        """config.hardware.device with only the devices of the kept types: the others are not read."""
        dynamic = element.get(_XSI_TYPE)
        array_type: Any = self.wsdl_type(dynamic) if dynamic is not None else static
        if not issubclass(array_type, list):
            return self.value(element, static)
        array = array_type()
        for child in element:
            kind = child.get(_XSI_TYPE)
            if kind is not None and issubclass(self.wsdl_type(kind), keep):
                array.append(self.value(child, array_type.Item))
        return array


def _local(tag: str) -> str:
    return tag.rpartition("}")[2]


def _property(kind: Any, tag: str) -> tuple[str, Any, bool, Callable[[str], Any] | None]:
    """(attribute, static type, is an array, reader of a leaf value) of the property a child tag names."""
    try:
        info = kind._GetPropertyInfo(_local(tag))
    except AttributeError:
        raise Unreadable(f"{kind.__name__} has no property {_local(tag)!r}") from None
    is_list = issubclass(info.type, list)
    return info.name, info.type, is_list, _leaf(info.type.Item if is_list else info.type)


_LEAVES: dict[type, Callable[[str], Any] | None] = {}


def _leaf(kind: type) -> Callable[[str], Any] | None:
    """How a value of this static type is read from its text, when the element names no xsi:type: None
    for everything that is not a plain number, string, boolean or enum (read by _Reader.value)."""
    if kind in _LEAVES:
        return _LEAVES[kind]
    from pyVmomi import VmomiSupport as vs

    reader: Callable[[str], Any] | None
    if issubclass(kind, (list, vs.DataObject, vs.ManagedObject)) or kind in (
            object, type, vs.ManagedMethod, vs.PropertyPath, vs.binary, vs.datetime):
        reader = None
    elif kind is str:
        reader = str
    elif kind is bool:
        reader = _boolean
    elif issubclass(kind, vs.Enum):
        def reader(text: str, enum: type = kind) -> Any:
            try:
                return getattr(enum, text)
            except AttributeError:
                raise Unreadable(f"{text!r} is no {enum.__name__}") from None
    elif kind is vs.long or issubclass(kind, (int, float)):
        def reader(text: str, number: type = kind) -> Any:
            try:
                return number(text)
            except ValueError:
                raise Unreadable(f"{text!r} is no {number.__name__}") from None
    else:
        reader = None
    _LEAVES[kind] = reader
    return reader


def _boolean(text: str) -> bool:
    if text == "true" or text == "1" or text.lower() == "true":
        return True
    if text == "false" or text == "0" or text.lower() == "false":
        return False
    raise Unreadable(f"not a boolean: {text!r}")


_DEFAULTS: dict[type, tuple[dict[str, Any], list[tuple[str, type]]]] = {}
_PROPERTIES: dict[Any, dict[str, tuple[str, Any, bool, Callable[[str], Any] | None]]] = {}


def _properties(kind: Any) -> dict[str, tuple[str, Any, bool, Callable[[str], Any] | None]]:
    found = _PROPERTIES.get(kind)
    if found is None:
        found = _PROPERTIES[kind] = {}
    return found


def _defaults(kind: type) -> tuple[dict[str, Any], list[tuple[str, type]]]:
    """What DataObject.__init__ sets each property to before any is given (VmomiSupport.DataObject.__init__):
    a fresh typed array (the second list), None for optional ones and enums, False, "", 0 of the type."""
    found = _DEFAULTS.get(kind)
    if found is None:
        from pyVmomi import VmomiSupport as vs

        constants: dict[str, Any] = {}
        arrays: list[tuple[str, type]] = []
        for prop in kind._GetPropertyList():  # type: ignore[attr-defined]
            ptype = prop.type
            if issubclass(ptype, list):
                constants[prop.name] = None  # keeps the constructor's attribute order; replaced by a fresh array
                arrays.append((prop.name, ptype))
            elif prop.flags & vs.F_OPTIONAL or issubclass(ptype, vs.Enum):
                constants[prop.name] = None
            elif ptype is bool:
                constants[prop.name] = False
            elif issubclass(ptype, str):
                constants[prop.name] = ""
            elif ptype is vs.long or issubclass(ptype, (int, float)):
                constants[prop.name] = ptype(0)
            else:
                constants[prop.name] = None
        found = _DEFAULTS[kind] = (constants, arrays)
    return found


def _scalar(vs: Any, kind: type, text: str, reader: _Reader) -> Any:
    """A leaf value, as SoapDeserializer.EndElementHandler reads one."""
    if kind is str:
        return text
    if kind is bool:
        return _boolean(text)
    if issubclass(kind, vs.Enum):
        try:
            return getattr(kind, text)
        except AttributeError:
            raise Unreadable(f"{text!r} is no {kind.__name__}") from None
    if kind is type:
        return reader.wsdl_type(text) if text else None
    if kind is vs.datetime:
        from pyVmomi import Iso8601

        when = Iso8601.ParseISO8601(text)
        if not when:
            raise Unreadable(f"not a date: {text!r}")
        return when
    if kind is vs.binary:
        import base64

        return vs.binary(base64.b64decode(text))
    if kind is vs.ManagedMethod:
        raise Unreadable("a method name")  # none in what the inventory asks for
    try:
        return kind(text)
    except (TypeError, ValueError):
        raise Unreadable(f"{text!r} is no {kind.__name__}") from None
