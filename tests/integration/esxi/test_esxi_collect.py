"""The lean reader of RetrievePropertiesEx answers (backends/esxi/collect.py) against pyvmomi's own SOAP
deserialiser, on the same bytes from the simulator: the same types and values; faults raised as pyvmomi
raises them; an answer it does not read exactly goes to pyvmomi (issue 11)."""

from __future__ import annotations

import io
import logging

import pytest

pytest.importorskip("pyVmomi")

FALLBACK = "lean reader: %s; pyvmomi reads this answer"


def _inventory_answer(si):
    """The bytes of the inventory's RetrievePropertiesEx (every property inventory.read asks for)."""
    from pyVmomi import vim, vmodl

    from gpupass.backends.esxi import collect, vgpu
    from gpupass.backends.esxi import inventory as inv

    content = si.content
    view = inv.container_view(content, content.rootFolder)
    pc = vmodl.query.PropertyCollector
    kinds = [(vim.HostSystem, inv.HOST_PROPS + [inv.REBIND_PROP] + vgpu.GRAPHICS_PROPS),
             (vim.ComputeResource, inv.COMPUTE_PROPS), (vim.ClusterComputeResource, inv.CLUSTER_PROPS),
             (vim.VirtualMachine, inv.VM_PROPS)]
    spec = pc.FilterSpec(objectSet=[pc.ObjectSpec(obj=view, skip=True, selectSet=[
        pc.TraversalSpec(name="view", type=vim.view.ContainerView, path="view", skip=False)])],
        propSet=[pc.PropertySpec(type=t, pathSet=p) for t, p in kinds])
    stub = content.propertyCollector._stub
    info, body = collect.post(stub, content.propertyCollector, "RetrievePropertiesEx",
                              [[spec], pc.RetrieveOptions(maxObjects=1000)])
    return stub, info, body


def _pyvmomi(stub, info, body):
    from pyVmomi import SoapAdapter

    return SoapAdapter.SoapResponseDeserializer(stub).Deserialize(io.BytesIO(body), info.result)


def assert_same(lean, slow, path="result"):
    """Same type, same attributes (in the constructor's order), same values; references: same object id, type
    and session."""
    from pyVmomi.VmomiSupport import DataObject, ManagedObject

    assert type(lean) is type(slow), f"{path}: {type(lean)} != {type(slow)}"
    if isinstance(slow, ManagedObject):
        assert (lean._moId, lean._stub, lean._serverGuid) == (slow._moId, slow._stub, slow._serverGuid), path
    elif isinstance(slow, list):
        assert len(lean) == len(slow), f"{path}: {len(lean)} != {len(slow)} items"
        for index, (a, b) in enumerate(zip(lean, slow, strict=True)):
            assert_same(a, b, f"{path}[{index}]")
    elif isinstance(slow, DataObject):
        assert list(vars(lean)) == list(vars(slow)), path
        for name in vars(slow):
            assert_same(getattr(lean, name), getattr(slow, name), f"{path}.{name}")
    else:
        assert lean == slow, f"{path}: {lean!r} != {slow!r}"


def _devices(result):
    return [d for o in result.objects for p in o.propSet if p.name == "config.hardware.device" for d in p.val]


def test_the_lean_reader_reads_the_lab_inventory_as_pyvmomi_does(vcsim, connect, caplog):
    from pyVmomi import vim

    from gpupass.backends.esxi import collect

    stub, info, body = _inventory_answer(connect(vcsim))
    caplog.set_level(logging.DEBUG, logger="gpupass.esxi")
    lean = collect.read(stub, info, body)
    assert not [r for r in caplog.records if r.msg == FALLBACK]  # read by the lean reader itself
    slow = _pyvmomi(stub, info, body)
    assert_same(lean, slow)
    # what was compared: every kind of value the inventory reads
    kinds = {type(d) for d in _devices(slow)}
    assert vim.vm.device.VirtualPCIPassthrough in kinds and vim.vm.device.VirtualVideoCard in kinds
    backings = {type(d.backing).__name__ for d in _devices(slow) if isinstance(d, vim.vm.device.VirtualPCIPassthrough)}
    assert {"vim.vm.device.VirtualPCIPassthrough.DeviceBackingInfo",
            "vim.vm.device.VirtualPCIPassthrough.VmiopBackingInfo"} <= backings
    names = {p.name for o in slow.objects for p in o.propSet}
    assert {"hardware.pciDevice", "config.pciPassthruInfo", "config.graphicsInfo", "configurationEx", "snapshot",
            "config.extraConfig", "runtime.host"} <= names


def test_asked_for_passthrough_devices_it_skips_the_others_and_reads_the_rest_the_same(vcsim, connect):
    from pyVmomi import vim

    from gpupass.backends.esxi import collect

    stub, info, body = _inventory_answer(connect(vcsim))
    passthrough = vim.vm.device.VirtualPCIPassthrough
    lean = collect.read(stub, info, body, devices=(passthrough,))
    slow = _pyvmomi(stub, info, body)
    before = len(_devices(slow))
    for o in slow.objects:
        for p in o.propSet:
            if p.name == "config.hardware.device":
                kept = [d for d in p.val if isinstance(d, passthrough)]
                del p.val[:]
                p.val.extend(kept)
    assert 0 < len(_devices(slow)) < before
    assert_same(lean, slow)


def test_an_answer_it_does_not_read_exactly_goes_to_pyvmomi(vcsim, connect, caplog):
    """A prefix bound to a second namespace inside the answer (made here from the simulator's answer): the lean
    reader does not follow scopes, so pyvmomi reads it, with the same result."""
    from gpupass.backends.esxi import collect

    stub, info, body = _inventory_answer(connect(vcsim))
    assert b"<returnval>" in body
    rebound = body.replace(b"<returnval>", b'<returnval xmlns:soapenc="urn:gpupass-test">', 1)
    caplog.set_level(logging.DEBUG, logger="gpupass.esxi")
    result = collect.read(stub, info, rebound)
    assert [r for r in caplog.records if r.msg == FALLBACK]
    assert_same(result, _pyvmomi(stub, info, body))


def test_a_fault_is_raised_as_pyvmomi_raises_it_and_the_request_counted(vcsim, connect):
    from pyVmomi import vim, vmodl

    from gpupass.backends.esxi import collect

    si = connect(vcsim)
    pc = vmodl.query.PropertyCollector
    gone = vim.Folder("group-gpupass-gone", si._stub)
    spec = pc.FilterSpec(objectSet=[pc.ObjectSpec(obj=gone, skip=False)],
                         propSet=[pc.PropertySpec(type=vim.Folder, pathSet=["name"])])
    requests = []
    with pytest.raises(vmodl.fault.ManagedObjectNotFound):
        collect.retrieve(si.content.propertyCollector, [spec], pc.RetrieveOptions(), lambda: requests.append(1))
    assert requests == [1]
    # the pooled connection is still good afterwards
    assert si.content.rootFolder.name
