"""Fixtures for the KVM backend against libvirt's test driver (`test:///ABS/PATH.xml`): real libvirt, no daemon."""

from __future__ import annotations

import shutil
from importlib import resources
from pathlib import Path

import pytest

libvirt = pytest.importorskip("libvirt", reason="libvirt-python is not installed (pip install 'gpupass[kvm]')")

from gpupass.backends.kvm.lab.testdriver import LabKvmBackend as KvmBackend  # noqa: E402
from gpupass.core.plugins import default_registry  # noqa: E402
from gpupass.core.target import Target  # noqa: E402


@pytest.fixture
def lab_file(tmp_path) -> Path:
    """A private copy of the shipped lab-kvm host."""
    source = resources.files("gpupass.backends.kvm.lab").joinpath("lab-kvm.xml")
    path = tmp_path / "lab-kvm.xml"
    with resources.as_file(source) as original:
        shutil.copyfile(original, path)
    return path


@pytest.fixture
def registry():
    return default_registry()


@pytest.fixture
def open_backend():
    opened = []

    def open_(uri_or_path, **options) -> KvmBackend:
        uri = uri_or_path if str(uri_or_path).startswith("test://") else f"test://{Path(uri_or_path).resolve()}"
        backend = KvmBackend(Target(uri=uri, name="t", options=options))
        opened.append(backend)
        return backend

    yield open_
    for backend in opened:
        backend.close()


@pytest.fixture
def lab(lab_file, open_backend) -> KvmBackend:
    return open_backend(lab_file)


def _domain_xml(backend: KvmBackend, name: str) -> str:
    """The persistent definition as the backend's own connection sees it (each test-driver open has its own state)."""
    domain = backend._connection()._wrapped.lookupByName(name)
    return domain.XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE)


@pytest.fixture
def domain_xml():
    return _domain_xml
