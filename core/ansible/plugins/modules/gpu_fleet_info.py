#!/usr/bin/python
# Licensed under the Apache License, Version 2.0 (see the LICENSE file of gpupass).
"""Ansible module: free GPUs across many hosts, for `when:` and `loop:`."""

from __future__ import annotations

DOCUMENTATION = r"""
module: gpu_fleet_info
short_description: Free GPUs across KVM, ESXi and Hyper-V hosts, and the hosts that can take a VM now
description:
  - Reads many hosts at once (bounded concurrency, a deadline per host) and returns every GPU with its owner and
    whether it can be given to a VM now - free, passthrough active (no host reboot needed), alone in its IOMMU
    group, nothing that C(gpupass check) would block on.
  - With O(model), also returns the hosts that can take a VM with O(count) such GPUs now, best first.
  - A host that cannot be read is one row in RV(unreadable) with its error; the module fails for it only with
    O(fail_on_unreadable).
  - Reads only; never changes a host. Credentials come from gpupass's config file, the environment
    (E(GPUPASS_PASSWORD_<HOST>)) or the keyring, per host.
  - Shared GPUs (vGPU profiles, mediated devices, GPU partitions) are not modelled yet; only whole GPUs are.
version_added: 0.1.0
author: gpupass maintainers
options:
  hosts:
    description: The hosts, as gpupass names them (URIs, names from its config file, lab hosts).
    type: list
    elements: str
    required: true
  model:
    description:
      - Only GPUs of this model - words of the model name (V(A100 80GB) matches "NVIDIA A100 PCIe 80GB") or a
        vendor:device id (V(10de:20b5)).
    type: str
  count:
    description: With O(model), the number of such GPUs a VM needs on one host.
    type: int
    default: 1
  concurrency:
    description: Hosts read at the same time.
    type: int
    default: 8
  timeout:
    description: Seconds each host may take.
    type: float
    default: 60
  fail_on_unreadable:
    description: Fail when any host could not be read, instead of returning it in RV(unreadable).
    type: bool
    default: false
  validate_certs:
    description: Verify the hosts' TLS certificates. On by default.
    type: bool
    default: true
  ca_file:
    description: A CA bundle that signed the hosts' certificates.
    type: path
  config:
    description: gpupass's config file (named hosts); default C(~/.config/gpupass/config.toml) or E(GPUPASS_CONFIG).
    type: path
requirements:
  - gpupass, with the SDKs of the platforms (C(pip install 'gpupass[all]')), in the interpreter that runs the module
attributes:
  check_mode:
    support: full
"""

EXAMPLES = r"""
- name: Where can a VM with two A100 80GB go now?
  gpupass.gpupass.gpu_fleet_info:
    hosts: [node7, node8, vcenter, hv01]
    model: A100 80GB
    count: 2
  delegate_to: localhost
  run_once: true
  register: fleet

- name: Give the VM the GPUs of the best host
  gpupass.gpupass.gpu_assignment:
    host: "{{ fleet.candidates[0].host }}"
    vm: train-42
    gpus: "{{ fleet.candidates[0].free[:2] }}"
  delegate_to: localhost
  when: fleet.candidates | length > 0

- name: One line per free GPU
  ansible.builtin.debug:
    msg: "{{ item.host }} {{ item.qualified_address }} {{ item.name }}"
  loop: "{{ fleet.free }}"
"""

RETURN = r"""
gpus:
  description: Every GPU of every host read.
  returned: always
  type: list
  elements: dict
  contains:
    host:
      description: 'The host as named in O(hosts).'
      type: str
    platform:
      description: 'kvm, esxi or hyperv.'
      type: str
    address:
      description: 'PCI address.'
      type: str
    qualified_address:
      description: 'The address as gpupass prints and takes it back (with the ESXi host in a vCenter).'
      type: str
    name:
      description: 'Model name.'
      type: str
    ids:
      description: 'vendor:device.'
      type: str
    assigned_to:
      description: 'The VM that holds it, or null.'
      type: str
    assignable_now:
      description: 'Whether it can be given to a VM now (what C(gpupass check) would say).'
      type: bool
free:
  description: The entries of RV(gpus) that can be given to a VM now (and match O(model) when given).
  returned: always
  type: list
  elements: dict
candidates:
  description: With O(model), the hosts that can take a VM with O(count) such GPUs now, best first.
  returned: always
  type: list
  elements: dict
  contains:
    host:
      description: 'The host as named in O(hosts).'
      type: str
    location:
      description: 'The ESXi host inside a vCenter, or null.'
      type: str
    free:
      description: 'The free matching GPUs'' addresses as gpupass takes them back.'
      type: list
    models:
      description: 'Their model names.'
      type: list
hosts:
  description: One row per host read - its platform and number of GPUs, or its error.
  returned: always
  type: list
  elements: dict
unreadable:
  description: The hosts that could not be read, each with its error (kind, message, remedy).
  returned: always
  type: list
  elements: dict
"""

from typing import TYPE_CHECKING, Any

from ansible.module_utils.basic import AnsibleModule

if TYPE_CHECKING:  # gpupass itself is imported when the module runs (a missing one is reported)
    from gpupass.core.domain.inventory import HostFacts

from ansible_collections.gpupass.gpupass.plugins.module_utils.gpupass_common import (
    fail_on_missing_gpupass,
    run_guarded,
)

ARGUMENT_SPEC = dict(
    hosts=dict(type="list", elements="str", required=True),
    model=dict(type="str"),
    count=dict(type="int", default=1),
    concurrency=dict(type="int", default=8),
    timeout=dict(type="float", default=60),
    fail_on_unreadable=dict(type="bool", default=False),
    validate_certs=dict(type="bool", default=True),
    ca_file=dict(type="path"),
    config=dict(type="path"),
)


def main() -> None:
    module = AnsibleModule(argument_spec=ARGUMENT_SPEC, supports_check_mode=True)
    fail_on_missing_gpupass(module)
    run_guarded(module, lambda: survey(module))


def survey(module: AnsibleModule) -> None:
    import gpupass
    from gpupass.core.domain.select import qualified
    from gpupass.core.errors import UsageError
    from gpupass.core.fleet import assignable, find, gather, matches_model
    from gpupass.core.plugins import default_registry

    params = module.params
    if params["count"] < 1:
        raise UsageError("count must be at least 1", remedy="e.g. count: 2")
    names = list(dict.fromkeys(h.strip() for h in params["hosts"] if h.strip()))  # each host read once
    if not names:
        raise UsageError("hosts is empty", remedy="name at least one host")
    registry = default_registry()

    def read(name: str) -> tuple[HostFacts, int]:
        with gpupass.open_host(name, config=params["config"], insecure=not params["validate_certs"],
                               ca_file=params["ca_file"]) as host:
            return host.inventory(), host.round_trips

    results = gather(names, read, concurrency=params["concurrency"], timeout=params["timeout"])
    gpus: list[dict[str, Any]] = []
    rows: list[dict[str, Any]] = []
    unreadable: list[dict[str, Any]] = []
    for result in results:
        if result.facts is None:
            error = result.error.to_dict() if result.error is not None else {"message": "no facts and no error"}
            unreadable.append({"host": result.host, "error": error})
            rows.append({"host": result.host, "ok": False, "error": error})
            continue
        facts = result.facts
        rows.append({"host": result.host, "ok": True, "platform": facts.host.platform, "gpus": len(facts.gpus)})
        for gpu in facts.gpus:
            gpus.append({"host": result.host, "platform": facts.host.platform, "address": str(gpu.address),
                         "qualified_address": qualified(gpu), "location": gpu.location or None,
                         "name": gpu.model or gpu.function.name, "ids": gpu.function.ids,
                         "assigned_to": gpu.assigned_to, "assignable_now": assignable(facts, gpu, registry),
                         "_matches": not params["model"] or matches_model(gpu, params["model"])})
    free = [g for g in gpus if g["assignable_now"] and g["_matches"]]
    for row in gpus:
        del row["_matches"]
    candidates: list[dict[str, Any]] = []
    if params["model"]:
        candidates = [{"host": c.host, "location": c.location or None, "free": [qualified(g) for g in c.gpus],
                       "models": sorted({g.model for g in c.gpus})}
                      for c in find(results, params["model"], params["count"], registry)]
    document = dict(changed=False, gpus=gpus, free=free, candidates=candidates, hosts=rows, unreadable=unreadable)
    if unreadable and params["fail_on_unreadable"]:
        module.fail_json(msg="could not read " + ", ".join(u["host"] for u in unreadable), **document)
    module.exit_json(**document)


if __name__ == "__main__":
    main()
