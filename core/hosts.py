"""Turn what the user typed as HOST (a URI, a config name, a lab name) into a Target and a backend."""

from __future__ import annotations

from dataclasses import replace

from gpupass.core import paths
from gpupass.core.config import Config
from gpupass.core.credentials import resolve_password
from gpupass.core.errors import BackendUnavailable, UsageError
from gpupass.core.plugins import Registry
from gpupass.core.ports import Backend
from gpupass.core.target import Target, TlsOptions


def resolve_target(text: str, config: Config, registry: Registry, tls: TlsOptions | None = None) -> Target:
    lab = registry.lab_host(text)
    if lab is not None:
        return lab.target(paths.data_dir())
    entry = config.hosts.get(text)
    if entry is not None:
        target = Target(
            uri=entry.uri,
            name=entry.name,
            tls=TlsOptions(verify=not entry.insecure, ca_file=entry.ca_file),
            options=dict(entry.options),
        )
    elif "://" in text or text.startswith("test:"):
        target = Target(uri=text)
    else:
        labs = ", ".join(lab.name for lab in registry.lab_hosts)
        raise UsageError(
            f"unknown host {text!r}",
            remedy=f"give a URI such as qemu:///system or esxi://user@vcenter, a host name from the config file, "
                   f"or a lab host ({labs or 'none installed'})",
        )
    if tls is not None and (not tls.verify or tls.ca_file):
        target = replace(target, tls=TlsOptions(verify=tls.verify and target.tls.verify,
                                                ca_file=tls.ca_file or target.tls.ca_file))
    password = resolve_password(target.name or target.hostname or text, entry, target.username)
    return replace(target, password=password)


def open_backend(target: Target, registry: Registry) -> Backend:
    backend_class = registry.backend_for(target.scheme)
    if not backend_class.sdk_available():
        missing = ", ".join(backend_class.sdk_modules)
        raise BackendUnavailable(
            f"the {backend_class.platform} backend needs the Python module(s) {missing}, which are not installed",
            remedy=backend_class.install_hint(),
        )
    return backend_class(target)
