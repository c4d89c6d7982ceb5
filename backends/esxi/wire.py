"""The read path's own vSphere SOAP session: http.client + ssl + ElementTree, no pyVmomi.

Why: `gpupass gpus` on a vCenter is a handful of requests (login, the datacenter, a container view, one
RetrievePropertiesEx, logout), and importing pyVmomi and its type tables cost more than the requests
themselves (about 40 ms of CPU here, with pyVim's SmartConnect opening a TLS connection of its own for the
version probe and the ServiceContent read a second time). This module speaks those requests itself:

- the same version negotiation as pyVim's SmartConnect (GET /sdk/vimServiceVersions.xml, the newest version
  pyVmomi knows that the server lists, pyVim/connect.py __FindSupportedVersion), on the same kept-alive
  connection as the SOAP calls;
- every request built structurally with ElementTree (names and passwords are element text, escaped by the
  serializer), in the element order of the vSphere WSDL, as pyVmomi's serializer writes them;
- TLS exactly as the pyVmomi session: `connection.ssl_context(target)` (verifying by default, the given CA
  file, --insecure only when asked for); a TLS failure is raised as ssl raises it, never retried without TLS.

Anything else goes to pyVmomi, from the same bytes: a SOAP fault (HTTP 500) is deserialised by pyVmomi's own
SoapResponseDeserializer and raised as pyVmomi raises it (vim.fault.NotAuthenticated, InvalidLogin, ...), so
errors.translate maps it by type as before; an answer this module does not read exactly is read by pyVmomi too.
Writes use a pyVmomi stub that shares this session's cookie (`pyvmomi_stub`): no second login.
"""

from __future__ import annotations

import http.client
import io
import logging
import zlib
from typing import Any, Callable
from xml.etree import ElementTree

log = logging.getLogger("gpupass.esxi")

SOAPENV = "http://schemas.xmlsoap.org/soap/envelope/"
XSI = "http://www.w3.org/2001/XMLSchema-instance"
VIM = "urn:vim25"
_BODY = f"{{{SOAPENV}}}Body"
_XSI_TYPE = f"{{{XSI}}}type"

# pyVmomi's vim25 versions, newest first: (the id the server lists, pyVmomi's version name). What pyVim's
# SmartConnect tries in this order (GetServiceVersions('vim25') with VmomiSupport.versionIdMap); checked
# against the installed pyVmomi by tests/unit/test_esxi_wire.py, so a pyVmomi upgrade that adds one shows.
VIM25_VERSIONS: tuple[tuple[str, str], ...] = (
    ("9.1.1.0", "vim.version.v9_1_1_0"), ("m5CA1EF4D", "vim.version.v9_1_0_1"), ("9.1.0.0", "vim.version.v9_1_0_0"),
    ("9.0.0.0", "vim.version.v9_0_0_0"), ("8.0.3.1", "vim.version.v8_0_3_1"), ("8.0.3.0", "vim.version.v8_0_3_0"),
    ("8.0.2.0", "vim.version.v8_0_2_0"), ("8.0.1.0", "vim.version.v8_0_1_0"), ("8.0.0.2", "vim.version.v8_0_0_2"),
    ("8.0.0.1", "vim.version.v8_0_0_1"), ("8.0.0.0", "vim.version.v8_0_0_0"), ("7.0.3.2", "vim.version.v7_0_3_2"),
    ("7.0.3.1", "vim.version.v7_0_3_1"), ("7.0.3.0", "vim.version.v7_0_3_0"), ("7.0.2.1", "vim.version.v7_0_2_1"),
    ("7.0.2.0", "vim.version.v7_0_2_0"), ("7.0.1.1", "vim.version.v7_0_1_1"), ("7.0.1.0", "vim.version.v7_0_1_0"),
    ("7.0.0.2", "vim.version.v7_0_0_2"), ("7.0.0.0", "vim.version.v7_0"), ("6.9.1", "vim.version.v6_9_1"),
    ("6.8.7", "vim.version.v6_8_7"), ("6.7.3", "vim.version.version15"), ("6.7.2", "vim.version.version14"),
    ("6.7.1", "vim.version.version13"), ("6.7", "vim.version.version12"), ("6.5", "vim.version.version11"),
    ("6.0", "vim.version.version10"), ("5.5", "vim.version.version9"), ("5.1", "vim.version.version8"),
    ("5.0", "vim.version.version7"), ("4.1", "vim.version.version6"), ("4.0", "vim.version.version5"),
    ("2.5u2server", "vim.version.version4"), ("2.5u2", "vim.version.version3"), ("2.5", "vim.version.version2"),
    ("2.0", "vim.version.version1"),
)


class Unexpected(Exception):
    """An answer this module does not read exactly: pyVmomi reads it instead."""


class Ref:
    """A managed object reference as the server wrote it (`<x type="HostSystem">host-27</x>`). (A plain class:
    a frozen dataclass costs a millisecond more of start-up.)"""
    __slots__ = ("type", "value")

    def __init__(self, type: str, value: str) -> None:  # noqa: A002 - the attribute's name in the API
        self.type, self.value = type, value

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Ref) and (self.type, self.value) == (other.type, other.value)

    def __hash__(self) -> int:
        return hash((self.type, self.value))

    def __repr__(self) -> str:
        return f"Ref({self.type!r}, {self.value!r})"

    @property
    def _moId(self) -> str:  # noqa: N802 - the name pyVmomi's references use, so the inventory reads both
        return self.value

    @property
    def _wsdlName(self) -> str:  # noqa: N802
        return self.type


def element(tag: str, text: str | None = None, **attributes: str) -> ElementTree.Element:
    node = ElementTree.Element(tag, attributes)
    node.text = text
    return node


def ref_element(tag: str, ref: Ref) -> ElementTree.Element:
    return element(tag, ref.value, type=ref.type)


def envelope(method: str, this: Ref, arguments: list[ElementTree.Element]) -> bytes:
    """The request body: `<METHOD xmlns="urn:vim25"><_this type=..>..</_this>ARGUMENTS</METHOD>` in a SOAP
    envelope, serialised by ElementTree (every text and attribute escaped by it)."""
    root = ElementTree.Element(f"{{{SOAPENV}}}Envelope")
    body = ElementTree.SubElement(root, _BODY)
    call = ElementTree.SubElement(body, method, {"xmlns": VIM})  # the vim25 names below are unqualified
    call.append(ref_element("_this", this))
    call.extend(arguments)
    document: bytes = ElementTree.tostring(root, encoding="UTF-8", xml_declaration=True)
    return document


def read_ref(node: ElementTree.Element | None) -> Ref | None:
    if node is None:
        return None
    kind = node.get("type")
    if not kind or node.text is None:
        raise Unexpected(f"a reference without a type or an id: {node.tag}")
    return Ref(kind, node.text)


def pick_version(document: bytes) -> tuple[str, str] | None:
    """(version id, pyVmomi version name): the newest of VIM25_VERSIONS the server lists in its
    vimServiceVersions.xml, as pyVim's __VersionIsSupported reads it (any namespace's version or priorVersions)."""
    try:
        root = ElementTree.fromstring(document)
    except ElementTree.ParseError:
        return None
    if root.tag != "namespaces" or root.get("version") != "1.0":
        return None
    listed = set()
    for namespace in root.findall("namespace"):
        listed.add(namespace.findtext("version"))
        listed.update(v.text for v in namespace.findall("priorVersions/version"))
    return next(((vid, name) for vid, name in VIM25_VERSIONS if vid in listed), None)


class Session:
    """One logged-in vSphere session over one kept-alive HTTPS connection; every SOAP call counted."""

    def __init__(self, host: str, port: int, context: Any, timeout: float | None,
                 on_request: Callable[[], None]) -> None:
        self.host, self.port, self.context, self.timeout = host, port, context, timeout
        self.on_request = on_request
        self.cookie: str | None = None
        self.version_id = ""
        self.version_name = ""
        self.content_body = b""  # the RetrieveServiceContent answer, for pyVmomi's ServiceContent (writes)
        self.content: dict[str, Any] = {}
        self.last_body = b""
        self._conn: http.client.HTTPSConnection | None = None
        self._stub: Any = None

    # -- transport --------------------------------------------------------------------------------
    def _connection(self) -> http.client.HTTPSConnection:
        if self._stub is not None:  # one pool for both: pyVmomi's (see pyvmomi_stub)
            conn: http.client.HTTPSConnection = self._stub.GetConnection()
            return conn
        if self._conn is None:
            self._conn = http.client.HTTPSConnection(self.host, self.port, context=self.context, timeout=self.timeout)
        return self._conn

    def _exchange(self, method: str, path: str, body: bytes | None, headers: dict[str, str]) -> tuple[int, str, bytes]:
        conn: http.client.HTTPSConnection = self._connection()
        try:
            conn.request(method, path, body, headers)
            response = conn.getresponse()
            data = response.read()
        except Exception:
            conn.close()
            self.drop()  # as pyvmomi: the server may be sick; the next request opens a new connection
            raise
        cookie = response.getheader("Set-Cookie")
        if cookie:  # the server may set or renew the session cookie on any answer; kept whole, as pyvmomi does
            self.cookie = cookie
            if self._stub is not None:
                self._stub.cookie = cookie
        if response.will_close:
            conn.close()
            if conn is self._conn:
                self._conn = None
        elif self._stub is not None:
            self._stub.ReturnConnection(conn)
        encoding = (response.getheader("Content-Encoding") or "identity").lower()
        if encoding in ("gzip", "deflate"):
            data = zlib.decompress(data, zlib.MAX_WBITS | 32)  # gzip or zlib, detected from the header
        return response.status, response.reason, data

    def drop(self) -> None:
        """Close the connection(s): this session's own, and pyVmomi's pool once a write made one."""
        if self._conn is not None:
            self._conn.close()
            self._conn = None
        if self._stub is not None:
            self._stub.DropConnections()

    def call(self, method: str, this: Ref, arguments: list[ElementTree.Element], *,
             counted: bool = True) -> ElementTree.Element:
        """Send one request; the `<METHOD>Response` element of a 200 answer. A fault is raised by pyVmomi.
        Every request is logged; `counted` ones (all but the login's two, as the backends count round trips
        after login) also go to on_request()."""
        from gpupass.backends.esxi.connection import safe_moid

        if counted:
            self.on_request()
        log.debug("SOAP %s on %s", method, safe_moid(this.value))
        headers = {"Content-Type": "text/xml; charset=UTF-8", "SOAPAction": f"urn:vim25/{self.version_id}",
                   "Accept-Encoding": "gzip, deflate", "User-Agent": "gpupass"}
        cookie = self._stub.cookie if self._stub is not None else self.cookie  # pyVmomi may have renewed it
        if cookie:
            headers["Cookie"] = cookie
        status, reason, data = self._exchange("POST", "/sdk", envelope(method, this, arguments), headers)
        self.last_body = data
        if status == 500:
            raise self._pyvmomi_result(this, method, data)  # returns the fault pyVmomi read; anything else raised
        if status != 200:
            raise http.client.HTTPException(f"{status} {reason}")
        try:
            root = ElementTree.fromstring(data)
        except ElementTree.ParseError:
            raise self._pyvmomi_result(this, method, data) from None
        body = root.find(_BODY)
        if body is None or len(body) != 1 or body[0].tag != f"{{{VIM}}}{method}Response":
            raise self._pyvmomi_result(this, method, data)
        return body[0]

    def _pyvmomi_result(self, this: Ref, method: str, data: bytes) -> BaseException:
        """What pyVmomi makes of an answer this module does not read: its fault (raised by the caller), or, for
        an answer pyVmomi reads as a result after all, Unexpected (the read path then goes to pyVmomi)."""
        from pyVmomi import SoapAdapter, VmomiSupport

        info = VmomiSupport.GetWsdlType(VIM, this.type)._GetMethodInfo(method)
        result = SoapAdapter.SoapResponseDeserializer(self.pyvmomi_stub()).Deserialize(io.BytesIO(data), info.result)
        if isinstance(result, BaseException):
            return result
        return Unexpected(f"{method}: an answer pyVmomi reads but this reader does not")

    # -- session ----------------------------------------------------------------------------------
    def login(self, user: str, password: str) -> None:
        status, _, data = self._exchange("GET", "/sdk/vimServiceVersions.xml", None, {"User-Agent": "gpupass"})
        picked = pick_version(data) if status == 200 else None
        if picked is None:
            from gpupass.core.errors import ConnectionFailed

            raise ConnectionFailed(f"{self.host}:{self.port} lists no vSphere API version this gpupass speaks "
                                   "(/sdk/vimServiceVersions.xml)",
                                   remedy="check that the URI names a vCenter or ESXi host and its HTTPS port")
        self.version_id, self.version_name = picked
        answer = self.call("RetrieveServiceContent", Ref("ServiceInstance", "ServiceInstance"), [], counted=False)
        self.content = read_service_content(answer)
        self.content_body = self.last_body  # read by pyVmomi only if a write needs the ServiceContent
        self.call("Login", self.content["sessionManager"],
                  [element("userName", user), element("password", password)], counted=False)

    def logout(self) -> None:
        try:
            if self.cookie and "sessionManager" in self.content:
                self.call("Logout", self.content["sessionManager"], [])
        finally:
            self.drop()

    def pyvmomi_stub(self) -> Any:
        """A pyVmomi SoapStubAdapter on this session (its cookie, version and TLS context): what writes use. From
        then on both send through its connection pool, which starts with this session's open connection: a
        write goes out on the connection the reads used (a first request on a new connection to a frozen
        endpoint would never leave the TLS handshake), and costs no new handshake."""
        if self._stub is None:
            from pyVmomi import SoapStubAdapter

            self._stub = SoapStubAdapter(host=self.host, port=self.port, version=self.version_name, path="/sdk",
                                         sslContext=self.context, httpConnectionTimeout=self.timeout)
            self._stub.cookie = self.cookie
            if self._conn is not None:  # the login's connection, kept alive: a write needs no new TLS handshake
                self._stub.ReturnConnection(self._conn)
                self._conn = None
        return self._stub

    def pyvmomi_content(self) -> Any:
        """pyVmomi's ServiceContent, read from the RetrieveServiceContent answer of the login (no request)."""
        from pyVmomi import SoapAdapter, vim

        return SoapAdapter.SoapResponseDeserializer(self.pyvmomi_stub()).Deserialize(
            io.BytesIO(self.content_body), vim.ServiceInstanceContent)

    # -- the read path's calls --------------------------------------------------------------------
    def find_by_inventory_path(self, path: str) -> Ref | None:
        answer = self.call("FindByInventoryPath", self.content["searchIndex"], [element("inventoryPath", path)])
        return read_ref(answer.find(f"{{{VIM}}}returnval"))

    def create_container_view(self, container: Ref, kinds: tuple[str, ...]) -> Ref:
        answer = self.call("CreateContainerView", self.content["viewManager"],
                           [ref_element("container", container), *(element("type", k) for k in kinds),
                            element("recursive", "true")])
        view = read_ref(answer.find(f"{{{VIM}}}returnval"))
        if view is None:
            raise Unexpected("CreateContainerView answered no view")
        return view

    def retrieve_properties(self, view: Ref, props: list[tuple[str, list[str]]], max_objects: int,
                            method: str = "RetrievePropertiesEx", token: str | None = None) -> ElementTree.Element:
        """RetrievePropertiesEx of `props` (type, paths) of every object in the container view, or
        ContinueRetrievePropertiesEx(token): the answer element."""
        collector = self.content["propertyCollector"]
        if token is not None:
            return self.call("ContinueRetrievePropertiesEx", collector, [element("token", token)])
        spec = element("specSet")
        for kind, paths in props:  # PropertyFilterSpec: propSet, objectSet (WSDL order)
            prop = ElementTree.SubElement(spec, "propSet")
            prop.append(element("type", kind))
            prop.extend(element("pathSet", p) for p in paths)
        objects = ElementTree.SubElement(spec, "objectSet")
        objects.append(ref_element("obj", view))
        objects.append(element("skip", "true"))
        traversal = ElementTree.SubElement(objects, "selectSet", {_XSI_TYPE: "TraversalSpec"})
        traversal.extend([element("name", "view"), element("type", "ContainerView"), element("path", "view"),
                          element("skip", "false")])
        options = element("options")
        options.append(element("maxObjects", str(max_objects)))
        return self.call(method, collector, [spec, options])


def read_service_content(answer: ElementTree.Element) -> dict[str, Any]:
    """The references the read path uses, and about.apiType/apiVersion, from RetrieveServiceContent."""
    value = answer.find(f"{{{VIM}}}returnval")
    if value is None:
        raise Unexpected("RetrieveServiceContent answered no content")
    content: dict[str, Any] = {}
    for name in ("rootFolder", "propertyCollector", "viewManager", "searchIndex", "sessionManager"):
        ref = read_ref(value.find(f"{{{VIM}}}{name}"))
        if ref is None:
            raise Unexpected(f"the service content has no {name}")
        content[name] = ref
    content["apiType"] = value.findtext(f"{{{VIM}}}about/{{{VIM}}}apiType") or ""
    content["apiVersion"] = value.findtext(f"{{{VIM}}}about/{{{VIM}}}apiVersion") or ""
    return content
