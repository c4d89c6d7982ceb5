"""Registers the hyperv lab host with gpupass (entry point group `gpupass.labs`, see pyproject.toml).

Separate from the backend's plugin, so a package without its labs still works.
"""
from gpupass.core.hookspecs import hookimpl


@hookimpl
def gpupass_register_lab_hosts(register):
    from gpupass.backends.hyperv.lab.host import HypervLab

    register(HypervLab())
