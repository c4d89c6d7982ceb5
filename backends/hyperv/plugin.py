"""Registers the Hyper-V backend with gpupass, exactly as a third-party plugin would.

Entry point (pyproject.toml, [project.entry-points.gpupass]): hyperv = "gpupass.backends.hyperv.plugin".
Importing this module stays cheap: pywinrm is imported only when a host is opened.
"""
from typing import Callable

from gpupass.core.hookspecs import hookimpl


@hookimpl
def gpupass_register_backends(register: Callable[..., None]) -> None:
    from gpupass.backends.hyperv.backend import HypervBackend

    register(HypervBackend)


@hookimpl
def gpupass_register_rules(register: Callable[..., None]) -> None:
    from gpupass.backends.hyperv.rules import RULES, SHARE_RULES

    for rule in RULES:
        register(rule, operations=("assign",), platforms=("hyperv",))
    for rule in SHARE_RULES:
        register(rule, operations=("assign-share",), platforms=("hyperv",))
