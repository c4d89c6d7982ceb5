"""The lean read path's tables against pyVmomi's own (backends/esxi/lean.py, wire.py), and its requests built
structurally (issue 11). Against the simulator: tests/integration/esxi/test_esxi_wire.py."""

from __future__ import annotations

from xml.etree import ElementTree

import pytest

from gpupass.backends.esxi import lean, wire

pytest.importorskip("pyVmomi")

HOSTILE = ["<dc x='1'>&amp;]]>", 'it\'s "quoted"', "ünïcødé—名前", "a\tb", "n" * 300 + "<&>"]


def _pyvmomi_type(name):
    from pyVmomi import VmomiSupport

    return VmomiSupport.GetWsdlType(wire.VIM, name)


@pytest.mark.parametrize("name", sorted(lean.SCHEMA))
def test_every_schema_type_has_pyvmomis_base_and_field_types(name):
    from pyVmomi import VmomiSupport as vs

    kind = _pyvmomi_type(name)
    base, fields = lean.SCHEMA[name]
    parent = kind.__mro__[1].__dict__.get("_wsdlName")
    assert parent == (base or "DynamicData"), f"{name}: pyVmomi's base is {parent}"
    for field, (form, data, many) in fields.items():
        info = kind._GetPropertyInfo(field)
        assert issubclass(info.type, list) == many, f"{name}.{field}"
        item = info.type.Item if many else info.type
        if form == lean.S:
            assert item is str or issubclass(item, vs.Enum), f"{name}.{field}: {item}"
        elif form == lean.I:
            assert item is not bool and (item is vs.long or issubclass(item, int)), f"{name}.{field}: {item}"
        elif form == lean.B:
            assert item is bool, f"{name}.{field}: {item}"
        elif form == lean.REF:
            assert issubclass(item, vs.ManagedObject), f"{name}.{field}: {item}"
        elif data is None:  # xsd:anyType: the element names its type
            assert item is object, f"{name}.{field}: {item}"
        else:
            assert item is _pyvmomi_type(data), f"{name}.{field}: {item}"


@pytest.mark.parametrize("name", sorted(lean.ENUMS))
def test_every_enum_read_as_text_is_a_pyvmomi_enum(name):
    from pyVmomi import VmomiSupport as vs

    assert issubclass(_pyvmomi_type(name), vs.Enum)


def test_the_managed_bases_are_pyvmomis():
    for name, bases in lean.MANAGED_BASES.items():
        assert {c.__dict__.get("_wsdlName") for c in _pyvmomi_type(name).__mro__} >= set(bases)


def test_the_version_table_is_pyvmomis_vim25_list_in_its_order():
    """What pyVim's SmartConnect tries, newest first: a pyVmomi upgrade that adds a version fails here."""
    from pyVmomi.VmomiSupport import GetServiceVersions, versionIdMap

    theirs = [(versionIdMap[name], name) for name in GetServiceVersions("vim25") if name.startswith("vim.version.")]
    assert list(wire.VIM25_VERSIONS) == theirs


def test_the_version_picked_is_the_newest_both_know():
    document = b"""<?xml version="1.0"?><namespaces version="1.0"><namespace><name>urn:vim25</name>
        <version>99.0.0.0</version><priorVersions><version>6.0</version><version>8.0.2.0</version>
        <version>7.0.3.0</version></priorVersions></namespace></namespaces>"""
    assert wire.pick_version(document) == ("8.0.2.0", "vim.version.v8_0_2_0")
    assert wire.pick_version(b"<html>not found</html>") is None
    assert wire.pick_version(b'<namespaces version="2.0"/>') is None


@pytest.mark.parametrize("text", HOSTILE)
def test_a_request_carries_any_text_exactly(text):
    body = wire.envelope("FindByInventoryPath", wire.Ref("SearchIndex", text), [wire.element("inventoryPath", text)])
    root = ElementTree.fromstring(body)
    call = root.find(f"{{{wire.SOAPENV}}}Body")[0]
    assert call.tag == f"{{{wire.VIM}}}FindByInventoryPath"
    this, path = list(call)
    assert (this.get("type"), this.text, path.tag, path.text) == ("SearchIndex", text, f"{{{wire.VIM}}}inventoryPath",
                                                                  text)


def test_a_retrieve_request_is_pyvmomis_filter_spec():
    """The PropertyFilterSpec the lean session sends reads back through pyVmomi's deserialiser as the spec
    inventory.retrieve_view builds: the same types, paths, traversal and options."""
    from pyVmomi import SoapAdapter, vmodl

    sent = []

    class Recorder(wire.Session):
        def call(self, method, this, arguments):
            sent.append(wire.envelope(method, this, arguments))
            return None

    session = Recorder("h", 443, None, 1.0, lambda: None)
    session.content = {"propertyCollector": wire.Ref("PropertyCollector", "propertyCollector")}
    session.retrieve_properties(wire.Ref("ContainerView", "session[x]v-1"), [("HostSystem", ["name", "parent"]),
                                                                             ("VirtualMachine", ["config.firmware"])], 7)
    call = ElementTree.fromstring(sent[0]).find(f"{{{wire.SOAPENV}}}Body")[0]
    spec_xml = ElementTree.tostring(call.find(f"{{{wire.VIM}}}specSet"))
    spec = SoapAdapter.Deserialize(spec_xml, vmodl.query.PropertyCollector.FilterSpec)
    assert [(p.type._wsdlName, list(p.pathSet)) for p in spec.propSet] == [("HostSystem", ["name", "parent"]),
                                                                         ("VirtualMachine", ["config.firmware"])]
    (objects,) = spec.objectSet
    assert (objects.obj._moId, objects.skip) == ("session[x]v-1", True)
    (traversal,) = objects.selectSet
    assert isinstance(traversal, vmodl.query.PropertyCollector.TraversalSpec)
    assert (traversal.name, traversal.type._wsdlName, traversal.path, traversal.skip) == ("view", "ContainerView",
                                                                                         "view", False)
    assert call.find(f"{{{wire.VIM}}}options/{{{wire.VIM}}}maxObjects").text == "7"


def test_is_a_reads_lean_objects_references_and_pyvmomi_objects_alike():
    from pyVmomi import vim

    cluster = wire.Ref("ClusterComputeResource", "domain-c7")
    assert lean.is_a(cluster, "ComputeResource") and lean.is_a(cluster, "ClusterComputeResource")
    assert not lean.is_a(wire.Ref("HostSystem", "host-1"), "ComputeResource")
    assert lean.is_a(vim.ClusterComputeResource("domain-c7"), "ComputeResource")
    vmiop = lean._class("VirtualPCIPassthroughVmiopBackingInfo")()
    assert lean.is_a(vmiop, "VirtualPCIPassthroughPluginBackingInfo") and lean.is_a(vmiop, "VirtualDeviceBackingInfo")
    assert not lean.is_a(vmiop, "VirtualPCIPassthroughDeviceBackingInfo")
    assert not lean.is_a(None, "HostSystem")


def test_an_unknown_type_or_a_prefix_bound_twice_is_left_to_pyvmomi():
    value = ElementTree.fromstring(
        f'<val xmlns="{wire.VIM}" xmlns:xsi="{wire.XSI}" xsi:type="HostNewerThanThisTable"><x>1</x></val>')
    with pytest.raises(wire.Unexpected):
        lean.Reader(b"").typed(value)
    with pytest.raises(wire.Unexpected):
        lean.Reader(b'<a xmlns:p="urn:one"><b xmlns:p="urn:two"/></a>')


def test_every_pyvmomi_version_name_stands_for_its_release():
    """ex_api_version reads the negotiated version name: the "versionN" names by pyVmomi's own release ids (an
    ESXi 6.7 U3 endpoint, version15, is 6.7.3: the graphics properties, vSphere 6.5+, are asked for)."""
    from pyVmomi.VmomiSupport import versionIdMap

    from gpupass.backends.esxi.backend import _api_release

    assert _api_release("vim.version.version15") == (6, 7, 3)
    assert _api_release("vim.version.version13") == (6, 7, 1)
    assert _api_release("vim.version.version11") == (6, 5)
    assert _api_release("vim.version.version4") == (2, 5)  # 2.5u2server
    assert _api_release("vim.version.v9_1_0_1") == (9, 1, 0, 1)  # its id is an internal build tag
    assert _api_release("vim.version.v7_0") == (7, 0)
    assert _api_release("vim.version.unknown") == (5,)
    for version_id, name in wire.VIM25_VERSIONS:
        if version_id[:1].isdigit():
            numbers = [int(p) for p in version_id.split("u")[0].split(".")]
            found = list(_api_release(name))
            while numbers[-1:] == [0]:
                numbers.pop()
            while found[-1:] == [0]:
                found.pop()
            assert found == numbers, name
            assert versionIdMap[name] == version_id
