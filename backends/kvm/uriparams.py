"""Which libvirt URI query parameters gpupass passes on, and why the others are refused.

Source: libvirt docs/uri.rst, "Transport configuration" (libvirt/libvirt, the remote driver's extra
parameters). libvirt says "Any others are passed unmodified through to the back end", so an unknown name is
refused rather than guessed at. gpupass reads hosts; even a read-only `gpupass diff` opens a connection, so
nothing in a URI may start a program or turn a verification off:

- ``command``  (ssh transport: "Path to the ssh binary to use"; ext transport: "The external command
  launched to tunnel the data") runs a local program of the URI's choosing: refused. So is the whole
  ``+ext`` transport (not among the KVM backend's schemes).
- ``netcat``   ("The name of the netcat command on the remote machine") runs a program of the URI's choosing
  on the host: refused.
- ``no_verify`` (ssh: auto-accept new host keys; tls: "disables client checks of the server's certificate"),
  ``known_hosts_verify`` other than ``normal`` ("auto" accepts new keys, "ignore" disables checking) and
  ``tls_priority`` (a GnuTLS priority string, which can re-enable old protocol versions): verification is on
  unless the admin changes libvirt's own configuration, never through a URI gpupass was handed.
- Accepted, with their values checked: ``name`` (the remote virConnectOpen name), ``mode``
  (auto|direct|legacy), ``proxy`` (auto|netcat|native: which of libvirt's own proxies the remote side uses),
  ``socket``, ``keyfile``, ``known_hosts``, ``pkipath`` (absolute paths of files to read, as the docs advise
  for known_hosts), ``known_hosts_verify=normal``, ``no_tty`` (stops ssh asking for a password) and
  ``sshauth`` (the order of ssh authentication methods).
"""

from __future__ import annotations

from gpupass.core.uri import absolute_path, one_of, parameters

_SSH_AUTH_METHODS = {"agent", "privkey", "password", "keyboard-interactive"}


def _libvirt_uri(value: str) -> str | None:
    return None if "://" in value or value.endswith(":///") else "it must be a libvirt URI such as qemu:///system"


def _flag(value: str) -> str | None:
    return None if value.isdigit() else "it must be 0 or 1"


def _ssh_auth(value: str) -> str | None:
    unknown = set(value.split(",")) - _SSH_AUTH_METHODS
    return f"unknown method(s) {', '.join(sorted(unknown))}" if unknown else None


ALLOWED = {
    "name": _libvirt_uri,
    "mode": one_of("auto", "direct", "legacy"),
    "proxy": one_of("auto", "netcat", "native"),
    "socket": absolute_path,
    "keyfile": absolute_path,
    "known_hosts": absolute_path,
    "pkipath": absolute_path,
    "known_hosts_verify": one_of("normal"),
    "no_tty": _flag,
    "sshauth": _ssh_auth,
}

REFUSED = {
    "command": "it names a program for gpupass to run on this machine",
    "netcat": "it names a program to run on the host",
    "no_verify": "it turns host key or certificate verification off",
    "tls_priority": "it can enable old TLS versions",
}


def check(uri: str) -> None:
    from urllib.parse import parse_qsl, urlsplit

    from gpupass.core.errors import UsageError

    for name, _ in parse_qsl(urlsplit(uri).query, keep_blank_values=True):
        if name in REFUSED:
            raise UsageError(f"the libvirt URI parameter {name}= is refused: {REFUSED[name]}",
                             remedy=f"remove {name}= from the URI; set such things in ~/.ssh/config or libvirt.conf "
                                    "on this machine, where they are the admin's own choice")
    parameters(uri, ALLOWED, "KVM (libvirt)")
