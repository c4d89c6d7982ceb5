"""Keep a libvirt test-driver host file in step with changes, so the lab persists between commands.

The test driver loads its file on every open and keeps changes in memory only; LabKvmBackend writes each
redefined domain back into the file, under a lock, atomically, when its target has the option
``persist_test_state`` (the `lab-kvm` host sets it).
"""

from __future__ import annotations

import fcntl
import os
import xml.etree.ElementTree as ET
from pathlib import Path

from typing import Any

from gpupass.backends.kvm import domxml
from gpupass.backends.kvm.backend import KvmBackend

TEST_NS = "http://libvirt.org/schemas/domain/test/1.0"
SHUTOFF = 5


def file_of(uri: str) -> Path | None:
    prefix = "test://"
    if not uri.startswith(prefix) or uri == "test:///default":
        return None
    return Path(uri[len(prefix):])


class LabKvmBackend(KvmBackend):
    """The KVM backend, plus writing each definition back into the test-driver file it was opened on."""

    def _persists(self) -> Path | None:
        path = file_of(self.target.uri)
        return path if path is not None and self.target.options.get("persist_test_state") else None

    # A test-driver host stands for a host read from afar, unless its target names a folder laid out like the host's
    # /sys/bus/pci/devices (option `sysfs_root`) and a file of `nvidia-smi -q` text (option `nvidia_smi_q`): then
    # the backend reads NVIDIA's per-VF vGPU files and MIG mode from those, as it reads the real ones on a local host.
    def _host_sysfs(self) -> Path | None:
        root = self.target.options.get("sysfs_root")
        return Path(str(root)) if root else super()._host_sysfs()

    def _host_mig_modes(self) -> dict[Any, bool | None]:
        from gpupass.backends.kvm import nvidia

        query = self.target.options.get("nvidia_smi_q")
        return nvidia.mig_modes(Path(str(query)).read_text()) if query else super()._host_mig_modes()

    def _before_reading_definition(self) -> None:
        if self._persists() is not None:
            # A test-driver connection loads the host file once; another gpupass process may have written
            # the lab file since. Reopen so the guard compares with what is in the file now (every define
            # is already in the file, so nothing of this session is lost).
            self.close()

    def _after_define(self, domain: Any, action: str) -> None:
        path = self._persists()
        if path is not None:
            save_domain(path, self._call(action, domain.XMLDesc, self._libvirt.VIR_DOMAIN_XML_INACTIVE))


def save_domain(node_file: Path, domain_xml: str) -> None:
    lock_path = node_file.with_name(node_file.name + ".lock")
    with open(lock_path, "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        ET.register_namespace("test", TEST_NS)
        node = domxml.parse(node_file.read_text(encoding="utf-8"))
        new = domxml.parse(domain_xml)
        name = new.findtext("name")
        for index, old in enumerate(list(node)):
            if old.tag == "domain" and old.findtext("name") == name:
                runstate = old.find(f"{{{TEST_NS}}}runstate")
                if runstate is not None:
                    new.append(runstate)
                node.remove(old)
                node.insert(index, new)
                break
        else:
            runstate = ET.SubElement(new, f"{{{TEST_NS}}}runstate")
            runstate.text = str(SHUTOFF)
            node.append(new)
        ET.indent(node)
        _unindent_metadata(node)
        temporary = node_file.with_name(node_file.name + ".new")
        temporary.write_text(domxml.serialize(node) + "\n", encoding="utf-8")
        os.replace(temporary, node_file)



def remove_domain(node_file: Path, name: str) -> None:
    """Undefine the domain `name` from the lab file, as another admin's `virsh undefine` would on a host (a
    test-driver connection keeps its changes to itself, so the file is where the lab host's domains live)."""
    lock_path = node_file.with_name(node_file.name + ".lock")
    with open(lock_path, "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        ET.register_namespace("test", TEST_NS)
        node = domxml.parse(node_file.read_text(encoding="utf-8"))
        doomed = [d for d in node if d.tag == "domain" and d.findtext("name") == name]
        if not doomed:
            raise KeyError(name)
        for domain in doomed:
            node.remove(domain)
        temporary = node_file.with_name(node_file.name + ".new")
        temporary.write_text(domxml.serialize(node) + "\n", encoding="utf-8")
        os.replace(temporary, node_file)

def _unindent_metadata(node: ET.Element) -> None:
    """libvirt keeps whitespace inside <metadata> as it finds it and only indents metadata it formats itself,
    so whitespace added by ET.indent would make a reloaded domain's XMLDesc differ from the one defined."""
    for metadata in node.iterfind("domain/metadata"):
        for element in metadata.iter():
            if element.text is not None and not element.text.strip():
                element.text = None
            if element is not metadata and element.tail is not None and not element.tail.strip():
                element.tail = None
