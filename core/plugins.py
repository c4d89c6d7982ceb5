"""Loads plugins (entry point group `gpupass`) and collects what they register."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Iterable

import pluggy

from gpupass.core import hookspecs
from gpupass.core.errors import BackendUnavailable
from gpupass.core.ports import Backend, LabHost

ENTRY_POINT_GROUP = "gpupass"


@dataclass(frozen=True)
class RegisteredRule:
    rule: Callable
    operations: tuple[str, ...]
    platforms: tuple[str, ...] | None
    plugin: str


@dataclass
class Registry:
    backends: list[type[Backend]] = field(default_factory=list)
    rules: list[RegisteredRule] = field(default_factory=list)
    lab_hosts: list[LabHost] = field(default_factory=list)
    # Which plugin registered each backend class, for `gpupass plugins`.
    backend_plugins: dict[type[Backend], str] = field(default_factory=dict)
    # Plugin name -> distribution version, for plugins found by entry point.
    versions: dict[str, str] = field(default_factory=dict)
    # Plugins that failed to load and schemes claimed twice: shown by `gpupass plugins`, never fatal.
    problems: list[str] = field(default_factory=list)

    def backend_for(self, scheme: str) -> type[Backend]:
        for backend in self.backends:
            if scheme in backend.schemes:
                return backend
        known = ", ".join(sorted(s for b in self.backends for s in b.schemes)) or "none"
        raise BackendUnavailable(
            f"no backend handles URIs of scheme '{scheme}://' (known schemes: {known})",
            remedy="check the URI, or install the plugin for that platform (`gpupass plugins` lists them)",
        )

    def rules_for(self, operation: str, platform: str) -> list[Callable]:
        return [
            r.rule
            for r in self.rules
            if operation in r.operations and (r.platforms is None or platform in r.platforms)
        ]

    def lab_host(self, name: str) -> LabHost | None:
        return next((lab for lab in self.lab_hosts if lab.name == name), None)


def make_plugin_manager(extra_plugins: Iterable[object] = (), load_entry_points: bool = True) -> pluggy.PluginManager:
    pm = pluggy.PluginManager("gpupass")
    pm.add_hookspecs(hookspecs)
    from gpupass.core import builtin_rules

    pm.register(builtin_rules, name="gpupass.core")
    if load_entry_points:
        _load_entry_points(pm)
    for plugin in extra_plugins:
        pm.register(plugin)
    pm.check_pending()
    return pm


def _load_entry_points(pm: pluggy.PluginManager) -> None:
    """Like pluggy's load_setuptools_entrypoints, but one broken plugin cannot break every command."""
    from importlib.metadata import distributions

    pm.gpupass_load_problems = []  # type: ignore[attr-defined]
    pm.gpupass_versions = {}  # type: ignore[attr-defined]
    for dist in distributions():
        for entry_point in dist.entry_points:
            if entry_point.group != ENTRY_POINT_GROUP or pm.get_plugin(entry_point.name) is not None:
                continue
            try:
                plugin = entry_point.load()
                pm.register(plugin, name=entry_point.name)
            except Exception as exc:  # a plugin's bug is reported, not raised
                pm.gpupass_load_problems.append(
                    f"plugin {entry_point.name!r} ({dist.metadata['Name']} {dist.version}) failed to load: "
                    f"{type(exc).__name__}: {exc}")
                continue
            pm.gpupass_versions[entry_point.name] = dist.version


def collect(pm: pluggy.PluginManager) -> Registry:
    registry = Registry(versions=dict(getattr(pm, "gpupass_versions", {})),
                        problems=list(getattr(pm, "gpupass_load_problems", [])))
    for impl in pm.hook.gpupass_register_backends.get_hookimpls():
        def register_backend(backend: type[Backend], _plugin: str = impl.plugin_name) -> None:
            for other in registry.backends:
                for scheme in set(other.schemes) & set(backend.schemes):
                    registry.problems.append(
                        f"scheme '{scheme}://' is claimed by {registry.backend_plugins[other]!r} and {_plugin!r}; "
                        f"{registry.backend_plugins[other]!r} handles it")
            registry.backends.append(backend)
            registry.backend_plugins[backend] = _plugin

        impl.function(register=register_backend)
    for impl in pm.hook.gpupass_register_rules.get_hookimpls():
        def register_rule(rule: Callable, operations: Iterable[str] = ("assign",),
                          platforms: Iterable[str] | None = None, _plugin: str = impl.plugin_name) -> None:
            registry.rules.append(
                RegisteredRule(rule, tuple(operations), tuple(platforms) if platforms else None, _plugin)
            )

        impl.function(register=register_rule)
    pm.hook.gpupass_register_lab_hosts(register=registry.lab_hosts.append)
    return registry


_default: tuple[pluggy.PluginManager, Registry] | None = None


def default_registry() -> Registry:
    """The registry of every installed plugin, loaded once per process."""
    global _default
    if _default is None:
        pm = make_plugin_manager()
        _default = (pm, collect(pm))
    return _default[1]


def default_plugin_manager() -> pluggy.PluginManager:
    default_registry()
    assert _default is not None
    return _default[0]


def register(plugin: object, name: str | None = None) -> None:
    """Register a plugin object at run time (library use, tests) and refresh the default registry."""
    global _default
    pm = default_plugin_manager()
    pm.register(plugin, name=name)
    pm.check_pending()
    _default = (pm, collect(pm))


def reset_default() -> None:
    global _default
    _default = None
