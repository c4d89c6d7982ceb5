"""The plugin contract. A backend is a plugin: it implements these hooks and is found by entry point.

docs/plugins.md shows these signatures as they are here (tests/unit/test_plugin_docs.py checks it).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Callable, Iterable, Mapping, Protocol, TypeVar, overload

if TYPE_CHECKING:  # importing a plugin's hooks stays cheap: the ports load only when a backend is used
    from gpupass.core.plugins import Rule
    from gpupass.core.ports import Backend, LabHost

PROJECT = "gpupass"
_F = TypeVar("_F", bound=Callable[..., object])


class HookimplMarker:
    """`pluggy.HookimplMarker("gpupass")` without importing pluggy: it sets on the function the attribute pluggy's
    marker sets (`gpupass_impl`, the same options), which a PluginManager reads when it registers the plugin.

    A command about one host calls its plugin's hooks as the plugin index recorded them, without pluggy (which
    imports inspect: ~8 ms of a `gpupass gpus` that should cost little more than a hand-written libvirt script,
    issue 11), but every plugin module imports this marker. tests/unit/test_plugin_index.py checks both markers set
    the same attribute, for every option, with the installed pluggy."""

    __slots__ = ("project_name",)

    def __init__(self, project_name: str) -> None:
        self.project_name = project_name

    @overload
    def __call__(self, function: _F, hookwrapper: bool = ..., optionalhook: bool = ..., tryfirst: bool = ...,
                 trylast: bool = ..., specname: str | None = ..., wrapper: bool = ...) -> _F: ...

    @overload
    def __call__(self, function: None = ..., hookwrapper: bool = ..., optionalhook: bool = ..., tryfirst: bool = ...,
                 trylast: bool = ..., specname: str | None = ..., wrapper: bool = ...) -> Callable[[_F], _F]: ...

    def __call__(self, function: _F | None = None, hookwrapper: bool = False, optionalhook: bool = False,
                 tryfirst: bool = False, trylast: bool = False, specname: str | None = None,
                 wrapper: bool = False) -> _F | Callable[[_F], _F]:
        def mark(func: _F) -> _F:
            setattr(func, self.project_name + "_impl", {
                "wrapper": wrapper, "hookwrapper": hookwrapper, "optionalhook": optionalhook, "tryfirst": tryfirst,
                "trylast": trylast, "specname": specname})
            return func

        return mark if function is None else mark(function)


class HookspecMarker:
    """`pluggy.HookspecMarker("gpupass")` without importing pluggy (see HookimplMarker): the `gpupass_spec`
    attribute that PluginManager.add_hookspecs reads."""

    __slots__ = ("project_name",)

    def __init__(self, project_name: str) -> None:
        self.project_name = project_name

    def __call__(self, function: _F | None = None, firstresult: bool = False, historic: bool = False,
                 warn_on_impl: Warning | None = None, warn_on_impl_args: Mapping[str, Warning] | None = None,
                 ) -> Any:
        def mark(func: _F) -> _F:
            if historic and firstresult:
                raise ValueError("cannot have a historic firstresult hook")
            setattr(func, self.project_name + "_spec", {
                "firstresult": firstresult, "historic": historic, "warn_on_impl": warn_on_impl,
                "warn_on_impl_args": warn_on_impl_args})
            return func

        return mark if function is None else mark(function)


hookspec = HookspecMarker(PROJECT)
hookimpl = HookimplMarker(PROJECT)


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
