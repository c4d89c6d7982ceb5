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

import ipaddress
import os
import re
from dataclasses import dataclass
from typing import Mapping
from urllib.parse import quote, unquote, urlsplit

from gpupass.core.target import Secret, Target, TlsOptions

DEFAULT_HOST_VARIABLES = ("GPUPASS_HOST", "LIBVIRT_DEFAULT_URI", "GOVC_URL", "VMWARE_HOST")
_FALSE = {"0", "false", "no", "off"}
# A DNS name (RFC 1123: letters, digits and hyphens in dot-separated labels of 1-63; an underscore too, which
# Windows hosts' names carry) -- no space, scheme, user, port or path.
_HOSTNAME = re.compile(r"(?=.{1,253}\.?$)[A-Za-z0-9_](?:[A-Za-z0-9_-]{0,61}[A-Za-z0-9_])?"
                       r"(?:\.[A-Za-z0-9_](?:[A-Za-z0-9_-]{0,61}[A-Za-z0-9_])?)*\.?")


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
        host = f"[{self.host}]" if ":" in self.host else self.host  # an IPv6 address, bracketed in a URI (RFC 3986)
        netloc = (quote(self.user, safe="") + "@" if self.user else "") + host
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
    return VsphereEnv("VMWARE_HOST", _bare_host(host), _port(port), env.get("VMWARE_USER") or None,
                      env.get("VMWARE_PASSWORD"), insecure=not validate, ca_file=None, datacenter=None)


def _bare_host(value: str) -> str:
    """VMWARE_HOST as community.vmware reads it: "the hostname or IP address of the vSphere vCenter or ESXi server"
    (its `vmware` doc fragment, option `hostname`), nothing else. A space, a scheme, a user, a port or a path in it
    would otherwise be pasted into the URI gpupass builds and blamed on something else ("names no user")."""
    from gpupass.core.errors import UsageError

    bare = value[1:-1] if value.startswith("[") and value.endswith("]") else value
    try:
        return str(ipaddress.ip_address(bare))  # an IPv4 or IPv6 address, bracketed or not
    except ValueError:
        pass
    if not _HOSTNAME.fullmatch(value):
        raise UsageError(f"$VMWARE_HOST is {value!r}, which is not a host name or an IP address",
                         remedy="set VMWARE_HOST to the vCenter's or ESXi host's name alone, e.g. vc.example.com (the "
                                "port goes in VMWARE_PORT, the user in VMWARE_USER), or name the host")
    return value


def _port(value: str) -> int | None:
    from gpupass.core.errors import UsageError

    if not value:
        return None
    if not (value.isascii() and value.isdigit() and len(value) <= 5 and 1 <= int(value) <= 65535):
        raise UsageError(f"$VMWARE_PORT is {value!r}, not a port number from 1 to 65535",
                         remedy="set VMWARE_PORT to the vCenter's HTTPS port (443 by default), or unset it")
    return int(value)


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
    for described in (govc(env), _ansible_if_usable(env)):
        if described and hostname and described.host.lower() == hostname.lower() and described.password is not None:
            variable = "GOVC_PASSWORD" if described.source == "GOVC_URL" else "VMWARE_PASSWORD"
            return variable, Secret(described.password)
    return None


def _ansible_if_usable(env: Mapping[str, str] | None) -> VsphereEnv | None:
    """Ansible's variables when they describe a host: a VMWARE_HOST that is not one names no host, so it gives no
    password to a host named another way (the default host read from it is refused with the reason)."""
    from gpupass.core.errors import UsageError

    try:
        return ansible(env)
    except UsageError:
        return None
