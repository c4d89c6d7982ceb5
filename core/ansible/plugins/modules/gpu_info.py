#!/usr/bin/python
# Licensed under the Apache License, Version 2.0 (see the LICENSE file of gpupass).
"""Ansible module: a host's GPUs and VMs, read by gpupass."""

from __future__ import annotations

DOCUMENTATION = r"""
module: gpu_info
short_description: A hypervisor host's GPUs and VMs, as gpupass sees them
description:
  - Reads one KVM (libvirt), ESXi/vCenter or Hyper-V host and returns its GPUs (companion functions, IOMMU group,
    BARs and MMIO need, passthrough state, the VM that holds each) and its VMs (power state, firmware, memory,
    the PCI devices they hold).
  - Reads only; never changes the host. Works in check mode.
  - Each GPU's RV(gpus[].sharing) lists the vGPU types it offers and the shares VMs hold, where gpupass reads them
    (KVM mediated devices today).
version_added: 0.1.0
author: gpupass maintainers
extends_documentation_fragment:
  - gpupass.gpupass.connection
options:
  free_only:
    description:
      - Return only GPUs that no VM holds.
    type: bool
    default: false
attributes:
  check_mode:
    support: full
"""

EXAMPLES = r"""
- name: Read the GPUs of a libvirt host over SSH
  gpupass.gpupass.gpu_info:
    host: qemu+ssh://admin@node7/system
  delegate_to: localhost
  register: node7

- name: Read a vCenter with community.vmware's variables (VMWARE_HOST, VMWARE_USER, VMWARE_PASSWORD)
  gpupass.gpupass.gpu_info:
    datacenter: DC1
  delegate_to: localhost
  register: vcenter

- name: Show who holds each GPU
  ansible.builtin.debug:
    msg: "{{ item.address }} {{ item.model }} -> {{ item.assigned_to | default('free', true) }}"
  loop: "{{ node7.gpus }}"
"""

RETURN = r"""
host:
  description: The host as gpupass reads it.
  returned: always
  type: dict
  contains:
    name:
      description: 'The host''s name.'
      type: str
    uri:
      description: 'The host''s URI.'
      type: str
    platform:
      description: 'kvm, esxi or hyperv.'
      type: str
    iommu_enabled:
      description: 'Whether the IOMMU is on (null when the platform does not say).'
      type: bool
gpus:
  description: One entry per GPU (PCI class 03h display controller or 12h processing accelerator).
  returned: always
  type: list
  elements: dict
  contains:
    address:
      description: 'PCI address (on Hyper-V derived from the LocationPath).'
      type: str
    location:
      description: 'The ESXi host inside a vCenter; null elsewhere.'
      type: str
    name:
      description: 'The GPU''s model name.'
      type: str
    vendor_id:
      description: 'PCI vendor id (hex).'
      type: str
    device_id:
      description: 'PCI device id (hex).'
      type: str
    iommu_group:
      description: 'IOMMU group number (KVM).'
      type: int
    companions:
      description: 'Addresses of the card''s other functions that go with it.'
      type: list
    bars:
      description: 'The BARs (index, size, 64bit), null when the host does not report them.'
      type: list
    mmio_bytes:
      description: 'The 64-bit and 32-bit MMIO the card needs in the guest.'
      type: dict
    passthrough:
      description: 'Capable / enabled / active on the host and why not.'
      type: dict
    assigned_to:
      description: 'The VM that holds the GPU, or null.'
      type: str
    sharing:
      description: 'What the GPU offers for sharing (modes, types with instances left) and the shares it holds.'
      type: dict
vms:
  description: The host's VMs.
  returned: always
  type: list
  elements: dict
  contains:
    name:
      description: 'The VM''s name.'
      type: str
    power_state:
      description: 'running, off, ...'
      type: str
    firmware:
      description: 'bios or efi.'
      type: str
    assigned:
      description: 'PCI addresses the VM holds.'
      type: list
"""

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.gpupass.gpupass.plugins.module_utils.gpupass_common import (
    CONNECTION_ARGUMENT_SPEC,
    Connection,
    fail_on_missing_gpupass,
    run_guarded,
)


ARGUMENT_SPEC = dict(CONNECTION_ARGUMENT_SPEC, free_only=dict(type="bool", default=False))


def main() -> None:
    module = AnsibleModule(argument_spec=ARGUMENT_SPEC, supports_check_mode=True)
    fail_on_missing_gpupass(module)

    def read() -> None:
        from gpupass.core import serialize

        with Connection(module) as backend:
            facts = backend.inventory()
        gpus = [g for g in facts.gpus if not (module.params["free_only"] and g.assigned_to)]
        module.exit_json(changed=False, host=serialize.host_to_dict(facts.host),
                         gpus=[serialize.gpu_to_dict(g) for g in gpus],
                         vms=[serialize.vm_to_dict(v) for v in facts.vms])

    run_guarded(module, read)


if __name__ == "__main__":
    main()
