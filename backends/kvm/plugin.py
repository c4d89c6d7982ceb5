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
    from gpupass.backends.kvm.rules import RULES, SHARE_RULES
    from gpupass.core.domain.sharing import ASSIGN_SHARE

    for rule in RULES:
        register(rule, operations=("assign",), platforms=("kvm",))
    for rule in SHARE_RULES:
        register(rule, operations=(ASSIGN_SHARE,), platforms=("kvm",))
