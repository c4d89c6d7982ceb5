#!/usr/bin/python
# Licensed under the Apache License, Version 2.0 (see the LICENSE file of gpupass).
"""Ansible module: a VM holds (state=present) or does not hold (state=absent) physical GPUs."""

from __future__ import annotations

DOCUMENTATION = r"""
module: gpu_assignment
short_description: Give physical GPUs to a VM, or give them back to the host, on KVM, ESXi or Hyper-V
description:
  - Makes a VM hold the named GPUs (O(state=present)) or not hold them (O(state=absent)), with gpupass's whole
    workflow - preflight checks before anything changes, an ordered plan, every step undone if a later one fails,
    and a read-back of the VM afterwards.
  - Idempotent - a VM that already holds the GPUs (or no longer holds them) is reported with C(changed=false)
    and nothing is written.
  - In check mode the plan is computed and returned and nothing is written.
  - In diff mode the VM's definition before and after is returned (in check mode, the planned changes).
  - A blocked assignment (a GPU in a shared IOMMU group, a VM that must be off, a host that needs a reboot, ...)
    fails with every preflight finding (its stable C(code), C(severity), C(message) and C(remedy)) in
    RV(findings).
  - Shared GPUs (vGPU profiles, mediated devices, GPU partitions) are not modelled yet; only whole-GPU
    passthrough is.
version_added: 0.1.0
author: gpupass maintainers
extends_documentation_fragment:
  - gpupass.gpupass.connection
options:
  vm:
    description: The VM's name on the host.
    type: str
    required: true
  gpus:
    description:
      - The GPUs, each as gpupass accepts it - a PCI address (V(0000:42:00.0), V(42:00.0)), an ESXi host-qualified
        address (V(esx02.lab.local/0000:3b:00.0)), a model (V(H100)), a vendor:device id (V(10de:2331)), or a
        virsh node device name (V(pci_0000_42_00_0)).
      - Required with O(state=present). With O(state=absent), leaving it out releases every GPU the VM holds.
    type: list
    elements: str
    default: []
  state:
    description: Whether the VM holds the GPUs.
    type: str
    choices: [present, absent]
    default: present
  include_companions:
    description: Give the cards' companion functions (HDMI audio, USB-C) to the VM too, as the IOMMU requires.
    type: bool
    default: true
  allow_firmware_change:
    description: Allow switching a BIOS VM to EFI when the BARs need it (a BIOS-installed guest will not boot).
    type: bool
    default: false
  allow_host_reboot:
    description: Allow a plan that reboots the host to enable passthrough (an ESXi host without deviceRebindWithoutRebootSupported, which the API has since vSphere 7.0).
    type: bool
    default: false
  hide_hypervisor:
    description: Hide the hypervisor from the guest (old NVIDIA consumer drivers, "Code 43"). KVM and ESXi.
    type: bool
    default: false
  live:
    description: Hot-plug into (or unplug from) a running VM where the platform can (KVM).
    type: bool
    default: false
  dynamic:
    description: Bind by vendor/device instead of host address (ESXi Dynamic DirectPath I/O).
    type: bool
    default: false
  bar_sizes:
    description:
      - Every BAR of a GPU whose host cannot report them and that gpupass's catalog does not know, as C(lspci -vv)
        lists its memory regions, keyed by address, for example C(0000:41:00.0) with value C(16M+64G+32M).
    type: dict
  disable_host_passthrough:
    description: With O(state=absent), also switch host passthrough off for the device (ESXi; needs a reboot).
    type: bool
    default: false
attributes:
  check_mode:
    support: full
  diff_mode:
    support: full
"""

EXAMPLES = r"""
- name: Give the H100 to ml-train (plan, preflight, apply, roll back on failure)
  gpupass.gpupass.gpu_assignment:
    host: qemu+ssh://admin@node7/system
    vm: ml-train
    gpus: ["0000:42:00.0"]
  delegate_to: localhost

- name: An ESXi VM on a vCenter named by community.vmware's variables, allowing the switch to EFI
  gpupass.gpupass.gpu_assignment:
    datacenter: DC1
    vm: cad-ws
    gpus: [esx02.lab.local/0000:3b:00.0]
    allow_firmware_change: true
  delegate_to: localhost

- name: Give every GPU back to the host
  gpupass.gpupass.gpu_assignment:
    host: hyperv://admin@hv01
    vm: render01
    state: absent
  delegate_to: localhost

- name: A blocked assignment fails with gpupass's findings
  gpupass.gpupass.gpu_assignment:
    host: lab-kvm
    vm: ml-train
    gpus: ["02:00.0"]
  delegate_to: localhost
  register: attempt
  ignore_errors: true

- name: Say why
  ansible.builtin.debug:
    msg: "{{ item.code }}: {{ item.remedy }}"
  loop: "{{ attempt.findings | selectattr('severity', 'equalto', 'blocker') }}"
  when: attempt is failed
"""

RETURN = r"""
plan:
  description: The plan gpupass made (and, unless in check mode, carried out).
  returned: always, unless the host, VM or GPU could not be found
  type: dict
  contains:
    steps:
      description: 'Ordered steps with what each changes and its undo.'
      type: list
    findings:
      description: 'Preflight findings (code, severity, message, remedy).'
      type: list
    needs_vm_off:
      description: 'Whether a step needs the VM off.'
      type: bool
    needs_host_reboot:
      description: 'Whether a step reboots the host.'
      type: bool
    features_lost:
      description: 'What the VM can no longer do while it holds the GPU.'
      type: list
    mmio:
      description: 'The MMIO window the GPUs need and the one the VM gets.'
      type: dict
vm:
  description: The VM as read back after the change.
  returned: when something was changed
  type: dict
findings:
  description: The preflight findings, when a blocker stopped the change.
  returned: failed (preflight)
  type: list
  elements: dict
error:
  description: gpupass's kind of error (usage, not-found, preflight-failed, operation-failed, connection-failed...).
  returned: failed
  type: str
remedy:
  description: What to do about the failure.
  returned: failed
  type: str
rolled_back:
  description: After a failed step, whether every earlier step was undone (false means the host needs a look).
  returned: failed (operation)
  type: bool
"""

from typing import TYPE_CHECKING, Any

from ansible.module_utils.basic import AnsibleModule

if TYPE_CHECKING:  # gpupass itself is imported when the module runs (a missing one is reported)
    from gpupass.core.domain.inventory import Vm
    from gpupass.core.domain.plan import Plan

from ansible_collections.gpupass.gpupass.plugins.module_utils.gpupass_common import (
    CONNECTION_ARGUMENT_SPEC,
    Connection,
    fail_from_error,
    fail_on_missing_gpupass,
    run_guarded,
)

ARGUMENT_SPEC = dict(
    CONNECTION_ARGUMENT_SPEC,
    vm=dict(type="str", required=True),
    gpus=dict(type="list", elements="str", default=[]),
    state=dict(type="str", choices=["present", "absent"], default="present"),
    include_companions=dict(type="bool", default=True),
    allow_firmware_change=dict(type="bool", default=False),
    allow_host_reboot=dict(type="bool", default=False),
    hide_hypervisor=dict(type="bool", default=False),
    live=dict(type="bool", default=False),
    dynamic=dict(type="bool", default=False),
    bar_sizes=dict(type="dict"),
    disable_host_passthrough=dict(type="bool", default=False),
)


def assignment_options(params: dict[str, Any]) -> dict[str, Any]:
    """The module's options as the Python API's assign options."""
    return dict(include_companions=params["include_companions"], allow_firmware_change=params["allow_firmware_change"],
                hide_hypervisor=params["hide_hypervisor"], live=params["live"], dynamic=params["dynamic"],
                allow_host_reboot=params["allow_host_reboot"], bar_sizes=params["bar_sizes"] or {})


def vm_definition(vm: Vm | None) -> str:
    """What the VM's definition says about passthrough, as YAML-like lines for Ansible's diff."""
    if vm is None:
        return ""
    lines = [f"name: {vm.name}", f"power_state: {vm.power_state.value}", f"firmware: {vm.firmware.value}",
             f"memory_bytes: {vm.memory_bytes}", f"memory_reserved_bytes: {vm.memory_reserved_bytes}",
             f"mmio_window_bytes: {vm.mmio_window_bytes}", f"hypervisor_hidden: {vm.hypervisor_hidden}",
             "pci_devices:"]
    lines += [f"  - {address}" for address in sorted(str(a) for a in vm.assigned)]
    if vm.settings:
        lines.append("settings:")
        lines += [f"  {key}: {value}" for key, value in sorted(vm.settings.items())]
    return "\n".join(lines) + "\n"


def planned_changes(plan: Plan) -> str:
    lines = [f"# gpupass {plan.operation} on {plan.host}, VM {plan.vm}: planned, not applied"]
    for number, step in enumerate(plan.steps, 1):
        if not step.writes:
            continue
        flags = [flag for flag, on in (("VM off", step.needs_vm_off), ("host reboot", step.needs_host_reboot)) if on]
        lines.append(f"step {number}: {step.description}" + (f" [{', '.join(flags)}]" if flags else ""))
        lines += [f"  {change}" for change in step.changes]
    return "\n".join(lines) + "\n"


def main() -> None:
    module = AnsibleModule(argument_spec=ARGUMENT_SPEC, supports_check_mode=True)
    fail_on_missing_gpupass(module)
    run_guarded(module, lambda: converge(module))


def converge(module: AnsibleModule) -> None:
    from gpupass.core import serialize
    from gpupass.core.errors import PreflightFailed, UsageError

    params = module.params
    if params["state"] == "present" and not params["gpus"]:
        raise UsageError("state=present needs the GPUs to give", remedy="list them in gpus, e.g. gpus: ['42:00.0']")
    with Connection(module) as host:
        if params["state"] == "present":
            plan = host.plan(params["vm"], *params["gpus"], **assignment_options(params))
        else:
            plan = host.plan_release(params["vm"], *params["gpus"], live=params["live"],
                                     disable_host_passthrough=params["disable_host_passthrough"])
        result: dict[str, Any] = {"plan": serialize.plan_to_dict(plan)}
        if plan.blocked:
            fail_from_error(module, PreflightFailed(f"preflight found blocking problems for VM {plan.vm!r} on "
                                                    f"{plan.host}; nothing was changed", list(plan.findings)), **result)
        if plan.nothing_to_do:
            module.exit_json(changed=False, **result)
        if module.check_mode:
            if module._diff:
                result["diff"] = {"prepared": planned_changes(plan)}
            module.exit_json(changed=True, **result)
        before = vm_definition(host.inventory().find_vm(plan.vm)) if module._diff else ""
        vm_after = host.apply(plan).vm_after  # the VM as the host reports it after the change
    result["vm"] = serialize.vm_to_dict(vm_after) if vm_after else None
    if module._diff:
        result["diff"] = {"before": before, "after": vm_definition(vm_after),
                          "before_header": f"{plan.host}: {plan.vm}", "after_header": f"{plan.host}: {plan.vm}"}
    module.exit_json(changed=True, **result)


if __name__ == "__main__":
    main()
