"""Registers the KVM backend with gpupass, exactly as a third-party plugin would (see pyproject.toml).

Importing this module must stay cheap: libvirt is imported only when a host is opened.
"""

from typing import Callable

from gpupass.core.hookspecs import hookimpl


@hookimpl
def gpupass_register_backends(register: Callable[..., None]) -> None:
    from gpupass.backends.kvm.backend import KvmBackend

    register(KvmBackend)


@hookimpl
def gpupass_register_rules(register: Callable[..., None]) -> None:
    from gpupass.backends.kvm.rules import RULES

    for rule in RULES:
        register(rule, operations=("assign",), platforms=("kvm",))
