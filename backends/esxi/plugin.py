"""Registers the ESXi backend with gpupass, exactly as a third-party plugin would.

Entry point (pyproject.toml, [project.entry-points.gpupass]): esxi = "gpupass.backends.esxi.plugin".
Importing this module stays cheap: pyvmomi is imported only when a host is opened.
"""
from typing import Callable

from gpupass.core.hookspecs import hookimpl


@hookimpl
def gpupass_register_backends(register: Callable[..., None]) -> None:
    from gpupass.backends.esxi.backend import EsxiBackend

    register(EsxiBackend)


@hookimpl
def gpupass_register_rules(register: Callable[..., None]) -> None:
    from gpupass.backends.esxi.rules import RULES

    from gpupass.backends.esxi.rules import VGPU_RULES

    for rule in RULES:
        register(rule, operations=("assign",), platforms=("esxi",))
    for rule in VGPU_RULES:  # a vGPU (a share request: core/domain/share_rules.py has the neutral rules)
        register(rule, operations=("assign-share",), platforms=("esxi",))
