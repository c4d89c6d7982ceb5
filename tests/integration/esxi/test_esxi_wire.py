"""The read path's own SOAP session (backends/esxi/wire.py, lean.py) against pyVmomi on the simulator: the same
objects and facts from the same bytes, the same version, the same errors for the same faults (issue 11)."""

from __future__ import annotations

import dataclasses
import io
import ssl
import subprocess
import sys
import textwrap

import pytest

from gpupass.backends.esxi.lab.simulator import lab_config, make_tls_material
from gpupass.core.errors import AuthenticationFailed, ConnectionFailed, NotFound
from support.frozen_endpoint import freeze, thaw
from tests.integration.esxi.test_esxi_backend import target

pytest.importorskip("pyVmomi")

USER = "administrator@vsphere.local"
HOSTILE = "vdi <'\"&> ]]> ; $(x) ünï"


@pytest.fixture
def sim(fresh_vcsim):
    config = lab_config()
    config["vms"].append({"name": HOSTILE, "host": "esx02.lab.local", "power_state": "poweredOff",
                          "memory_mb": 4096, "extra_config": {"note": HOSTILE}})
    return fresh_vcsim(config, username=USER)


@pytest.fixture
def backend(sim):
    from gpupass.backends.esxi.backend import EsxiBackend

    b = EsxiBackend(target(sim))
    yield b
    b.close()


def _answer(backend):
    """The inventory's RetrievePropertiesEx answer as the lean session received it, and its lean objects."""
    backend.inventory()
    body = backend._wire.last_body
    objects, token = _lean_objects(body)
    assert token is None
    return body, objects


def _lean_objects(body):
    from xml.etree import ElementTree

    from gpupass.backends.esxi import lean, wire

    envelope = ElementTree.fromstring(body)
    answer = envelope.find(f"{{{wire.SOAPENV}}}Body")[0]
    return lean.Reader(body).result(answer)


def _pyvmomi_objects(backend, body):
    """pyVmomi's own deserialiser on the same bytes: its ObjectContents, devices kept whole."""
    from pyVmomi import SoapAdapter, vmodl

    info = vmodl.query.PropertyCollector._GetMethodInfo("RetrievePropertiesEx")
    return SoapAdapter.SoapResponseDeserializer(backend._session._stub).Deserialize(io.BytesIO(body), info.result).objects


def assert_agrees(lean_value, slow, path):
    """A lean value against pyVmomi's: a reference names the same object; a data object has pyVmomi's type and
    every field SCHEMA reads equal (arrays item by item); a scalar is equal (an enum: its text)."""
    from pyVmomi.VmomiSupport import DataObject, ManagedObject

    from gpupass.backends.esxi import lean

    if isinstance(slow, ManagedObject):
        assert isinstance(lean_value, lean.Ref), path
        assert (lean_value.type, lean_value.value) == (type(slow)._wsdlName, slow._moId), path
    elif isinstance(slow, list):
        assert isinstance(lean_value, list) and len(lean_value) == len(slow), path
        for index, (a, b) in enumerate(zip(lean_value, slow, strict=True)):
            assert_agrees(a, b, f"{path}[{index}]")
    elif isinstance(slow, DataObject):
        assert isinstance(lean_value, lean.Data) and lean_value._wsdlName == type(slow)._wsdlName, path
        fields = lean._plan(lean_value._wsdlName)[3]
        assert fields, f"{path}: a data object of no field read"
        for attribute, *_ in fields.values():
            assert_agrees(getattr(lean_value, attribute), getattr(slow, attribute), f"{path}.{attribute}")
    else:
        assert lean_value == slow and type(lean_value) in (str, int, bool, float, type(None)), \
            f"{path}: {lean_value!r} != {slow!r}"


def test_the_lean_objects_are_pyvmomis_objects_field_for_field(backend):
    from pyVmomi import vim

    body, objects = _answer(backend)
    slow = _pyvmomi_objects(backend, body)
    assert len(objects) == len(slow) > 10
    devices_seen = 0
    for mine, theirs in zip(objects, slow, strict=True):
        assert_agrees(mine.obj, theirs.obj, "obj")
        assert [p.name for p in mine.propSet] == [p.name for p in theirs.propSet]
        for prop, other in zip(mine.propSet, theirs.propSet, strict=True):
            value = other.val
            if prop.name == "config.hardware.device":  # only the passthrough devices are read
                value = [d for d in value if isinstance(d, vim.vm.device.VirtualPCIPassthrough)]
                devices_seen += len(value)
            assert_agrees(prop.val, value, f"{mine.obj.value}.{prop.name}")
    assert devices_seen >= 2


def test_the_facts_from_the_lean_objects_are_those_from_pyvmomis(backend):
    from gpupass.backends.esxi import inventory as inv

    body, objects = _answer(backend)
    lean_facts = inv.read(objects, "esxi://x", "esxi", "vcsim")[0]
    slow_facts = inv.read(_pyvmomi_objects(backend, body), "esxi://x", "esxi", "vcsim")[0]
    assert lean_facts == slow_facts
    assert lean_facts.find_vm(HOSTILE) is not None and lean_facts.find_vm("cad-ws").assigned


def test_a_device_bound_for_a_write_is_the_device_pyvmomi_reads(backend):
    from pyVmomi import SoapAdapter, vim

    body, _ = _answer(backend)
    raw = backend._vms["cad-ws"]
    bound = backend._bound(raw.devices)
    theirs = [d for o in _pyvmomi_objects(backend, body) if o.obj._moId == raw.ref.value for p in o.propSet
              if p.name == "config.hardware.device" for d in p.val
              if isinstance(d, vim.vm.device.VirtualPCIPassthrough)]
    assert len(bound) == len(theirs) == 1
    assert SoapAdapter.Serialize(bound[0]) == SoapAdapter.Serialize(theirs[0])
    assert bound[0].backing._wsdlName == "VirtualPCIPassthroughDeviceBackingInfo"
    host = backend._host_ref("esx01.lab.local")
    assert isinstance(host, vim.HostSystem) and host._stub is backend._session._stub


def test_an_answer_the_lean_reader_does_not_read_goes_to_pyvmomi_and_gives_the_same_facts(backend, caplog):
    """A property the server could not read comes as a missingSet with its fault: pyVmomi reads that answer."""
    import logging

    from gpupass.backends.esxi import wire

    body, objects = _answer(backend)
    first = objects[0].obj
    broken = body.replace(
        f'<obj type="{first.type}">{first.value}</obj>'.encode(),
        f'<obj type="{first.type}">{first.value}</obj><missingSet><path>snapshot</path><fault>'
        '<fault xmlns:XMLSchema-instance="http://www.w3.org/2001/XMLSchema-instance" '
        'XMLSchema-instance:type="NoPermission"><privilegeId>System.Read</privilegeId></fault>'
        '</fault></missingSet>'.encode(), 1)
    assert broken != body
    with pytest.raises(wire.Unexpected):
        _lean_objects(broken)
    caplog.set_level(logging.DEBUG, logger="gpupass.esxi")
    read, token = backend._pyvmomi_result(broken, wire.Unexpected("test"))
    assert token is None and len(read) == len(objects)
    from gpupass.backends.esxi import inventory as inv

    assert inv.read(read, "esxi://x", "esxi", "vcsim")[0] == inv.read(objects, "esxi://x", "esxi", "vcsim")[0]


def test_the_version_is_the_one_pyvims_smartconnect_picks(sim, backend, connect):
    backend.inventory()
    assert backend._wire.version_name == connect(sim)._stub.version == "vim.version.v7_0_3_0"
    assert backend.ex_api_version() == (7, 0, 3, 0)


def test_gpus_reads_without_importing_pyvmomi(sim):
    """The whole read, login to logout, in a process that never imports pyVmomi (the import alone was ~40 ms)."""
    program = textwrap.dedent(f"""
        import sys
        from gpupass.backends.esxi.backend import EsxiBackend
        from gpupass.core.target import Secret, Target, TlsOptions
        uri = "esxi://administrator%40vsphere.local@127.0.0.1:{sim.port}/Lab"
        with EsxiBackend(Target(uri=uri, password=Secret(sys.stdin.read()),
                                tls=TlsOptions(ca_file={str(sim.ca_file)!r}))) as backend:
            facts = backend.inventory()
        assert facts.find_vm("cad-ws").assigned, facts
        print(sorted(m for m in sys.modules if m.split(".")[0] in ("pyVmomi", "pyVim")))
    """)
    done = subprocess.run([sys.executable, "-c", program], input=sim.password, capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"


# -- faults: the same error as through pyVmomi ---------------------------------------------------------
def _pyvmomi_connect(sim, password=None, context=None):
    from pyVim.connect import SmartConnect

    return SmartConnect(host="127.0.0.1", port=sim.port, user=USER, pwd=password or sim.password,
                        sslContext=context or sim.ssl_context())


def test_a_wrong_password_is_invalid_login_on_both_paths(sim):
    from pyVmomi import vim

    from gpupass.backends.esxi.backend import EsxiBackend

    with pytest.raises(vim.fault.InvalidLogin):
        _pyvmomi_connect(sim, password="<wrong & ]]>")
    with pytest.raises(AuthenticationFailed) as caught:
        EsxiBackend(target(sim, password="<wrong & ]]>")).inventory()
    assert isinstance(caught.value.__context__, vim.fault.InvalidLogin)


def test_a_logged_out_session_is_not_authenticated_on_both_paths(backend):
    """The same request (FindByInventoryPath) on a session logged out meanwhile: NotAuthenticated through either."""
    from pyVmomi import vim

    backend.inventory()
    backend._service_content.sessionManager.Logout()  # through pyVmomi, on the same session
    backend._root = backend._view = None  # (the view died with the session: the server says the object is gone)
    with pytest.raises(AuthenticationFailed) as lean_error:
        backend.inventory()  # the lean path
    assert isinstance(lean_error.value.__cause__, vim.fault.NotAuthenticated)
    with pytest.raises(AuthenticationFailed) as slow_error:
        backend._call("finding the datacenter", backend._service_content.searchIndex.FindByInventoryPath, "Lab")
    assert isinstance(slow_error.value.__cause__, vim.fault.NotAuthenticated)
    assert lean_error.value.message == slow_error.value.message


def test_a_self_signed_certificate_is_refused_with_verification_on_both_paths(sim, tmp_path):
    from gpupass.backends.esxi.backend import EsxiBackend

    other_ca = make_tls_material(tmp_path)["ca"]
    with pytest.raises(ssl.SSLCertVerificationError):
        _pyvmomi_connect(sim, context=ssl.create_default_context(cafile=str(other_ca)))
    with pytest.raises(ConnectionFailed, match="not trusted") as caught:
        EsxiBackend(target(sim, ca_file=other_ca)).inventory()
    assert isinstance(caught.value.__context__, ssl.SSLCertVerificationError)
    # the system CAs do not know the simulator's CA either: no fallback to an unverified connection
    with pytest.raises(ConnectionFailed, match="not trusted"):
        EsxiBackend(dataclasses.replace(target(sim), tls=dataclasses.replace(target(sim).tls, ca_file=None))
                    ).inventory()


def test_a_frozen_endpoint_is_a_timeout_on_both_paths(sim, backend):
    from gpupass.backends.esxi.backend import EsxiBackend

    quick = EsxiBackend(dataclasses.replace(target(sim), timeout=1.0))
    try:
        quick.inventory()
        assert quick._session._stub is quick._wire.pyvmomi_stub()  # pyVmomi on the same session, to compare
        # bound before: a request that got no answer leaves its session unused (EsxiBackend._lost), so the next call
        # through the backend would log in again -- the pyVmomi path is asked on the first session's stub
        vm = quick._vm_ref("ml-train")
        freeze(sim.pid)
        try:
            with pytest.raises(ConnectionFailed, match="did not answer within 1s") as lean_error:
                quick.inventory()
            assert quick._wire is None  # dropped, not used again
            with pytest.raises(ConnectionFailed, match="did not answer within 1s") as slow_error:
                quick._call("reading a VM", lambda: vm.config.name)
        finally:
            thaw(sim.pid)
        assert isinstance(lean_error.value.__cause__, TimeoutError)
        assert isinstance(slow_error.value.__cause__, TimeoutError)
    finally:
        quick.close()


def test_a_hostile_datacenter_name_reaches_the_server_as_text(sim):
    """The name is element text: the simulator searched for exactly it and found nothing (no parse fault)."""
    from gpupass.backends.esxi.backend import EsxiBackend
    from gpupass.core.target import Target

    hostile = dataclasses.replace(target(sim), uri=f"esxi://administrator%40vsphere.local@127.0.0.1:{sim.port}/"
                                                   "%3Cdc%20x%3D'1'%3E%26amp%3B%5D%5D%3E")
    assert isinstance(hostile, Target)
    with EsxiBackend(hostile) as backend, pytest.raises(NotFound) as caught:
        backend.inventory()
    assert "<dc x='1'>&amp;]]>" in caught.value.message
