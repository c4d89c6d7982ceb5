"""The plugin contract. A backend is a plugin: it implements these hooks and is found by entry point."""

import pluggy

hookspec = pluggy.HookspecMarker("gpupass")
hookimpl = pluggy.HookimplMarker("gpupass")


@hookspec
def gpupass_register_backends(register):
    """Call register(BackendClass) for each gpupass.core.ports.Backend subclass the plugin provides."""


@hookspec
def gpupass_register_rules(register):
    """Call register(rule, operations=("assign",), platforms=("kvm",)) to add preflight rules."""


@hookspec
def gpupass_register_lab_hosts(register):
    """Call register(lab_host) for each gpupass.core.ports.LabHost that `gpupass lab` manages."""
