# Licensed under the Apache License, Version 2.0 (see the LICENSE file of gpupass).
"""The connection options every gpupass module takes, documented once."""


class ModuleDocFragment:
    DOCUMENTATION = r"""
options:
  host:
    description:
      - The host as gpupass names it - a URI (V(qemu:///system), V(qemu+ssh://admin@node7/system),
        V(esxi://administrator%40vsphere.local@vc.example.com/DC1), V(hyperv://admin@hv01)), a host from gpupass's
        config file, a lab host (V(lab-kvm), V(lab-esxi), V(lab-hyperv)) or a snapshot file (read-only).
      - When left out, O(hostname) (or E(VMWARE_HOST)) builds an C(esxi://) or C(hyperv://) URI, and failing that
        E(LIBVIRT_DEFAULT_URI) names a libvirt host.
    type: str
  platform:
    description:
      - Which kind of URI O(hostname) builds. Ignored when O(host) is given.
    type: str
    choices: [esxi, hyperv]
    default: esxi
  hostname:
    description:
      - The vCenter/ESXi or Hyper-V host name, when O(host) is not given.
      - For ESXi, falls back to E(VMWARE_HOST), as in community.vmware.
    type: str
  username:
    description:
      - The user for O(hostname). For ESXi, falls back to E(VMWARE_USER).
    type: str
    aliases: [user]
  password:
    description:
      - The password. For ESXi, falls back to E(VMWARE_PASSWORD).
      - When left out, gpupass finds it as its CLI does - E(GPUPASS_PASSWORD_<HOST>), the config file's
        C(password_env), or the keyring.
      - Never logged (C(no_log)).
    type: str
    aliases: [pass, pwd]
  port:
    description:
      - The port for O(hostname). For ESXi, falls back to E(VMWARE_PORT).
    type: int
  datacenter:
    description:
      - The vCenter datacenter, for an ESXi O(hostname).
    type: str
  validate_certs:
    description:
      - Verify the host's TLS certificate. On by default; V(false) must be asked for.
      - For ESXi, falls back to E(VMWARE_VALIDATE_CERTS).
    type: bool
  ca_file:
    description:
      - A CA bundle that signed the host's certificate (a private CA), instead of turning verification off.
    type: path
  config:
    description:
      - gpupass's config file (named hosts); default C(~/.config/gpupass/config.toml) or E(GPUPASS_CONFIG).
    type: path
requirements:
  - gpupass, with the SDK of the platform (C(pip install 'gpupass[all]')), in the interpreter that runs the module
notes:
  - "Run the module where gpupass can reach the hypervisor, usually with C(delegate_to: localhost)."
"""
