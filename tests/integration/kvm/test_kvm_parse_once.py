"""Inventory parses each domain definition once (issue 11: per-object cost on hosts with many VMs)."""

import xml.etree.ElementTree as ET

import pytest

from gpupass.backends.kvm import domxml
from gpupass.backends.kvm.lab import testhost
from gpupass.backends.kvm.backend import KvmBackend
from gpupass.core.target import Target

pytest.importorskip("libvirt", reason="libvirt-python is not installed (pip install 'gpupass[kvm]')")


@pytest.fixture
def domain_parses(monkeypatch):
    """Counts ElementTree parses of <domain> documents, whichever entry point parses them."""
    counted: list[str] = []
    real_fromstring, real_iterparse = ET.fromstring, ET.iterparse

    def note(text: str) -> None:
        if text.lstrip().startswith("<domain"):
            counted.append(text)

    def fromstring(text, *args, **kwargs):
        note(text)
        return real_fromstring(text, *args, **kwargs)

    def iterparse(source, *args, **kwargs):
        note(source.getvalue() if hasattr(source, "getvalue") else "")
        return real_iterparse(source, *args, **kwargs)

    monkeypatch.setattr(ET, "fromstring", fromstring)
    monkeypatch.setattr(ET, "iterparse", iterparse)
    return counted


def test_inventory_parses_each_domain_once(tmp_path, domain_parses):
    functions, vms = testhost.generated_host(gpus=2, other_functions=3, domains=6)
    uri = testhost.write_host(tmp_path / "host.xml", functions, vms)
    with KvmBackend(Target(uri=uri)) as backend:
        facts = backend.inventory()
    assert len(facts.vms) == 6 and len(domain_parses) == 6


def test_a_document_with_its_own_prefixes_is_parsed_once_and_keeps_them(domain_parses):
    xml = ("<domain type='kvm' xmlns:qemu='http://libvirt.org/schemas/domain/qemu/1.0'><name>q</name>"
           "<qemu:commandline><qemu:arg value='-x'/></qemu:commandline></domain>")
    root = domxml.parse(xml)
    assert len(domain_parses) == 1
    assert "qemu:commandline" in domxml.serialize(root)
