"""The environment variables admins already set for virsh, govc and Ansible's VMware modules.

Default host, when a command's HOST is left out (first one set wins):
  1. GPUPASS_HOST            any HOST gpupass accepts (URI, config name, lab name)
  2. LIBVIRT_DEFAULT_URI     virsh's default connection (libvirt: "Connection URIs", default URI)
  3. GOVC_URL                govc's vCenter/ESXi; with GOVC_USERNAME, GOVC_PASSWORD, GOVC_INSECURE,
                             GOVC_TLS_CA_CERTS, GOVC_DATACENTER (govc README, "Usage")
  4. VMWARE_HOST             Ansible community.vmware; with VMWARE_USER, VMWARE_PASSWORD, VMWARE_PORT,
                             VMWARE_VALIDATE_CERTS (community.vmware module docs, "vmware" doc fragment)

Passwords for an esxi:// host gpupass has no other password for: GOVC_PASSWORD (or the password in
GOVC_URL) when GOVC_URL names that host, then VMWARE_PASSWORD when VMWARE_HOST names it. gpupass's own sources
(password_env, GPUPASS_PASSWORD_<HOST>, GPUPASS_PASSWORD, keyring, config) come first.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Mapping
from urllib.parse import quote, unquote, urlsplit

from gpupass.core.target import Secret, Target, TlsOptions

DEFAULT_HOST_VARIABLES = ("GPUPASS_HOST", "LIBVIRT_DEFAULT_URI", "GOVC_URL", "VMWARE_HOST")
_FALSE = {"0", "false", "no", "off"}


@dataclass(frozen=True)
class VsphereEnv:
    """One vSphere endpoint described by govc's or Ansible's variables."""

    source: str  # "GOVC_URL" or "VMWARE_HOST"
    host: str
    port: int | None
    user: str | None
    password: str | None
    insecure: bool
    ca_file: str | None
    datacenter: str | None

    def target(self) -> Target:
        netloc = (quote(self.user, safe="") + "@" if self.user else "") + self.host
        netloc += f":{self.port}" if self.port else ""
        path = "/" + quote(self.datacenter, safe="") if self.datacenter else ""
        return Target(uri=f"esxi://{netloc}{path}", name=self.host,
                      password=Secret(self.password) if self.password is not None else None,
                      tls=TlsOptions(verify=not self.insecure, ca_file=self.ca_file))


def govc(env: Mapping[str, str] | None = None) -> VsphereEnv | None:
    env = os.environ if env is None else env
    url = env.get("GOVC_URL", "").strip()
    if not url:
        return None
    try:
        parts = urlsplit(url if "://" in url else "https://" + url)
        port = parts.port
    except ValueError as exc:  # an unclosed [, a bracketed non-address, a port out of range (never the password)
        from gpupass.core.errors import UsageError

        raise UsageError(f"$GOVC_URL is not a usable URL: {exc}",
                         remedy="set it as govc reads it (https://USER@HOST/sdk, or HOST), or unset it") from exc
    if not parts.hostname:
        return None
    # govc: a user or password in GOVC_URL wins over GOVC_USERNAME / GOVC_PASSWORD.
    user = unquote(parts.username) if parts.username else env.get("GOVC_USERNAME") or None
    password = unquote(parts.password) if parts.password else env.get("GOVC_PASSWORD")
    return VsphereEnv("GOVC_URL", parts.hostname, port, user, password,
                      insecure=env.get("GOVC_INSECURE", "").strip().lower() not in _FALSE | {""},
                      ca_file=env.get("GOVC_TLS_CA_CERTS") or None, datacenter=env.get("GOVC_DATACENTER") or None)


def ansible(env: Mapping[str, str] | None = None) -> VsphereEnv | None:
    env = os.environ if env is None else env
    host = env.get("VMWARE_HOST", "").strip()
    if not host:
        return None
    port = env.get("VMWARE_PORT", "").strip()
    # Ansible validates certificates unless VMWARE_VALIDATE_CERTS is false.
    validate = env.get("VMWARE_VALIDATE_CERTS", "true").strip().lower() not in _FALSE
    return VsphereEnv("VMWARE_HOST", host, int(port) if port.isdigit() else None, env.get("VMWARE_USER") or None,
                      env.get("VMWARE_PASSWORD"), insecure=not validate, ca_file=None, datacenter=None)


def default_host(env: Mapping[str, str] | None = None) -> tuple[str, str] | None:
    """(variable, value) of the first default-host variable set, or None."""
    env = os.environ if env is None else env
    for variable in DEFAULT_HOST_VARIABLES:
        value = env.get(variable, "").strip()
        if value:
            return variable, value
    return None


def vsphere_password(hostname: str | None, env: Mapping[str, str] | None = None) -> tuple[str, Secret] | None:
    """(variable, password) for an esxi host from govc's or Ansible's variables, when they name that host."""
    for described in (govc(env), ansible(env)):
        if described and hostname and described.host.lower() == hostname.lower() and described.password is not None:
            variable = "GOVC_PASSWORD" if described.source == "GOVC_URL" else "VMWARE_PASSWORD"
            return variable, Secret(described.password)
    return None
