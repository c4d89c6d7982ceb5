"""libvirt errors provoked on the test driver, translated by error code (backends/kvm/errors.py): the core's
error type, and libvirt's own error (code and domain) kept as the cause."""

from __future__ import annotations

import pytest

libvirt = pytest.importorskip("libvirt", reason="libvirt-python is not installed (pip install 'gpupass[kvm]')")

from gpupass.backends.kvm.steps import DefineDomain  # noqa: E402
from gpupass.core.domain.plan import Step  # noqa: E402
from gpupass.core.errors import ConnectionFailed, NotFound, OperationFailed  # noqa: E402


def cause_code(error: BaseException) -> int:
    cause = error.__cause__
    assert isinstance(cause, libvirt.libvirtError), cause
    return cause.get_error_code()


def test_a_vm_that_is_not_there_is_not_found(lab):
    step = Step("kvm.define-domain", "d", "u", payload=DefineDomain("no-such-vm", "<domain/>", "<domain/>"))
    with pytest.raises(NotFound) as caught:
        lab.apply(step)
    assert cause_code(caught.value) == libvirt.VIR_ERR_NO_DOMAIN


def test_a_node_device_that_is_not_there_is_not_found(lab):
    conn = lab._connection()
    with pytest.raises(NotFound) as caught:
        lab._call("looking up a device", conn.nodeDeviceLookupByName, "pci_0000_99_00_0")
    assert cause_code(caught.value) == libvirt.VIR_ERR_NO_NODE_DEVICE


def test_a_document_libvirt_cannot_parse_is_operation_failed(lab):
    with pytest.raises(OperationFailed) as caught:
        lab._define("<domain type='test'><name>x</name><memory>oops</memory></domain>", "defining")
    assert cause_code(caught.value) == libvirt.VIR_ERR_XML_ERROR  # "an os <type> must be specified"
    assert type(caught.value) is OperationFailed


def test_a_host_that_cannot_be_opened_is_connection_failed_whatever_the_code(tmp_path, open_backend):
    backend = open_backend(f"test://{tmp_path}/missing.xml")
    with pytest.raises(ConnectionFailed) as caught:
        backend.inventory()
    assert isinstance(caught.value.__cause__, libvirt.libvirtError)
