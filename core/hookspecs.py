"""The plugin contract. A backend is a plugin: it implements these hooks and is found by entry point.

docs/plugins.md shows these signatures as they are here (tests/unit/test_plugin_docs.py checks it).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Iterable, Protocol

import pluggy

if TYPE_CHECKING:  # importing a plugin's hooks stays cheap: the ports load only when a backend is used
    from gpupass.core.plugins import Rule
    from gpupass.core.ports import Backend, LabHost

hookspec = pluggy.HookspecMarker("gpupass")
hookimpl = pluggy.HookimplMarker("gpupass")


class RegisterBackend(Protocol):
    def __call__(self, backend: type[Backend], /) -> None: ...


class RegisterRule(Protocol):
    def __call__(self, rule: Rule, operations: Iterable[str] = ("assign",),
                 platforms: Iterable[str] | None = None) -> None: ...


class RegisterLabHost(Protocol):
    def __call__(self, lab: LabHost, /) -> None: ...


@hookspec
def gpupass_register_backends(register: RegisterBackend) -> None:
    """Call register(BackendClass) for each gpupass.core.ports.Backend subclass the plugin provides."""


@hookspec
def gpupass_register_rules(register: RegisterRule) -> None:
    """Call register(rule, operations=("assign",), platforms=("kvm",)) to add preflight rules."""


@hookspec
def gpupass_register_lab_hosts(register: RegisterLabHost) -> None:
    """Call register(lab_host) for each gpupass.core.ports.LabHost that `gpupass lab` manages."""
