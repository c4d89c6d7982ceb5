"""Loads plugins (entry point groups `gpupass` and, for the labs, `gpupass.labs`) and collects what they
register.

Finding plugins means reading every installed distribution's entry points, and loading them imports every
backend: together most of a short command's start-up. So the full scan's result is kept in a plugin index
(what each entry point registers: schemes, platforms, rules' platforms, lab hosts, and which of its functions
pluggy called for each hook, in pluggy's order) in the cache folder, and a command about one host loads only
the plugins that host needs (`scoped_registry`) and calls those functions in that order, without building a
plugin manager: pluggy, with the inspect module it imports, would cost a `gpupass gpus` ~8 ms (issue 11). The
index is written only by a full scan, in which pluggy has checked every hook implementation against its
specification; it is rebuilt whenever a folder on sys.path changes (installing, upgrading or removing a
distribution changes its site-packages folder), and by every `gpupass plugins`, which always scans.
"""

from __future__ import annotations

import functools
import importlib
import marshal
import os
import sys
import types
from _thread import RLock, allocate_lock  # threading's locks, without importing threading
from typing import TYPE_CHECKING, Any, Callable, Iterable

from gpupass.core import hookspecs
from gpupass.core.errors import BackendUnavailable
from gpupass.core.records import field, record

# Named in annotations only: loading the plugins a host needs does not load the planning model.
if TYPE_CHECKING:
    from pathlib import Path

    import pluggy

    from gpupass.core.domain.context import CheckContext
    from gpupass.core.domain.findings import Finding
    from gpupass.core.ports import Backend, LabHost

ENTRY_POINT_GROUP = "gpupass"
# A preflight rule: reads the context, yields findings (core/domain/rules.py).
Rule = Callable[["CheckContext"], Iterable["Finding"]]
# Labs (demonstration hosts) register apart from backends, so a package without its labs still works.
LAB_ENTRY_POINT_GROUP = "gpupass.labs"
# Plugin names in pluggy are unique across groups: a lab's entry point is registered under this prefix.
_GROUP_PREFIX = {ENTRY_POINT_GROUP: "", LAB_ENTRY_POINT_GROUP: "labs:"}


_rules_lock = RLock()


@record(frozen=True)
class RegisteredRule:
    rule: Rule
    operations: tuple[str, ...]
    platforms: tuple[str, ...] | None
    plugin: str


@record
class Registry:
    backends: list[type[Backend]] = field(default_factory=list)
    lab_hosts: list[LabHost] = field(default_factory=list)
    # Which plugin registered each backend class, for `gpupass plugins`.
    backend_plugins: dict[type[Backend], str] = field(default_factory=dict)
    # Plugin name -> distribution version, for plugins found by entry point.
    versions: dict[str, str] = field(default_factory=dict)
    # Plugins that failed to load and schemes claimed twice: shown by `gpupass plugins`, never fatal.
    problems: list[str] = field(default_factory=list)
    # Lab host name -> the plugin that registered it.
    lab_plugins: dict[str, str] = field(default_factory=dict)

    def backend_for(self, scheme: str) -> type[Backend]:
        claimants = [backend for backend in self.backends if scheme in backend.schemes]
        if len(claimants) > 1:
            # One rule: a scheme two plugins claim is refused on every command that uses it (and listed by
            # `gpupass plugins`), never silently given to whichever plugin loaded first.
            names = " and ".join(repr(self.backend_plugins.get(b, b.__name__)) for b in claimants)
            raise BackendUnavailable(
                f"URIs of scheme '{scheme}://' are claimed by the plugins {names}; gpupass will not guess which "
                "one handles them",
                remedy="uninstall one of them (`gpupass plugins` lists both)")
        if claimants:
            return claimants[0]
        known = ", ".join(sorted(s for b in self.backends for s in b.schemes)) or "none"
        raise BackendUnavailable(
            f"no backend handles URIs of scheme '{scheme}://' (known schemes: {known})",
            remedy="check the URI, or install the plugin for that platform (`gpupass plugins` lists them)",
        )

    # The plugins' rule hooks, called the first time `rules` is read: a command that only reads a host (`gpus`)
    # never loads the preflight rules (nor the planning model they import).
    pending_rules: list[Callable[[], object]] = field(default_factory=list, repr=False)
    _rules: list[RegisteredRule] = field(default_factory=list, repr=False)

    @property
    def rules(self) -> list[RegisteredRule]:
        with _rules_lock:  # a fleet's workers share one registry: the hooks run once, and all before any reads
            while self.pending_rules:
                self.pending_rules.pop(0)()
        return self._rules

    def rules_for(self, operation: str, platform: str) -> list[Rule]:
        return [
            r.rule
            for r in self.rules
            if operation in r.operations and (r.platforms is None or platform in r.platforms)
        ]

    def lab_host(self, name: str) -> LabHost | None:
        return next((lab for lab in self.lab_hosts if lab.name == name), None)


# The core's own rules are a plugin too, registered first under this name (not found by entry point).
CORE_PLUGIN = "gpupass.core"
HOOKS = ("gpupass_register_backends", "gpupass_register_rules", "gpupass_register_lab_hosts")


def make_plugin_manager(extra_plugins: Iterable[object] = (), load_entry_points: bool = True) -> pluggy.PluginManager:
    import pluggy

    pm = pluggy.PluginManager(hookspecs.PROJECT)
    pm.add_hookspecs(hookspecs)
    from gpupass.core import builtin_rules

    pm.register(builtin_rules, name=CORE_PLUGIN)
    if load_entry_points:
        _load_entry_points(pm)
    for plugin in extra_plugins:
        pm.register(plugin)
    pm.check_pending()
    return pm


def _load_entry_points(pm: pluggy.PluginManager) -> None:
    """Like pluggy's load_setuptools_entrypoints, but one broken plugin cannot break every command."""
    from importlib.metadata import distributions

    problems: list[str] = []
    versions: dict[str, str] = {}
    entry_points: dict[str, str] = {}
    # Kept on the manager for collect() and the plugin index, which may be given a manager built elsewhere.
    pm.gpupass_load_problems = problems  # type: ignore[attr-defined]
    pm.gpupass_versions = versions  # type: ignore[attr-defined]
    pm.gpupass_entry_points = entry_points  # type: ignore[attr-defined]
    for dist in distributions():
        for entry_point in dist.entry_points:
            if entry_point.group not in _GROUP_PREFIX:
                continue
            name = _GROUP_PREFIX[entry_point.group] + entry_point.name
            if pm.get_plugin(name) is not None:
                continue
            try:
                plugin = entry_point.load()
                pm.register(plugin, name=name)
            except Exception as exc:  # a plugin's bug is reported, not raised
                problems.append(
                    f"plugin {name!r} ({dist.metadata['Name']} {dist.version}) failed to load: "
                    f"{type(exc).__name__}: {exc}")
                continue
            versions[name] = dist.version
            entry_points[name] = entry_point.value


class _Impl:
    """A hook implementation as collect() reads it: pluggy's HookImpl, or one the plugin index recorded."""

    __slots__ = ("function", "plugin_name")

    def __init__(self, function: Callable[..., Any], plugin_name: str) -> None:
        self.function, self.plugin_name = function, plugin_name


def collect(pm: pluggy.PluginManager) -> Registry:
    registry = Registry(versions=dict(getattr(pm, "gpupass_versions", {})),
                        problems=list(getattr(pm, "gpupass_load_problems", [])))
    return _collect(registry, {name: getattr(pm.hook, name).get_hookimpls() for name in HOOKS})


def _collect(registry: Registry, impls: dict[str, list[Any]]) -> Registry:
    """Call each hook's implementations, in pluggy's order (HookCaller.get_hookimpls), with their register."""
    for impl in impls["gpupass_register_backends"]:
        def register_backend(backend: type[Backend], _plugin: str = impl.plugin_name) -> None:
            for other in registry.backends:
                for scheme in set(other.schemes) & set(backend.schemes):
                    registry.problems.append(
                        f"scheme '{scheme}://' is claimed by {registry.backend_plugins[other]!r} and {_plugin!r}; "
                        "commands refuse its URIs until one of them is uninstalled")
            registry.backends.append(backend)
            registry.backend_plugins[backend] = _plugin

        impl.function(register=register_backend)
    for impl in impls["gpupass_register_rules"]:
        def register_rule(rule: Rule, operations: Iterable[str] = ("assign",),
                          platforms: Iterable[str] | None = None, _plugin: str = impl.plugin_name) -> None:
            registry._rules.append(
                RegisteredRule(rule, tuple(operations), tuple(platforms) if platforms else None, _plugin)
            )

        registry.pending_rules.append(functools.partial(impl.function, register=register_rule))
    # In pluggy's call order (last registered first), as `pm.hook.gpupass_register_lab_hosts(...)` would.
    for impl in reversed(impls["gpupass_register_lab_hosts"]):
        def register_lab(lab: LabHost, _plugin: str = impl.plugin_name) -> None:
            registry.lab_hosts.append(lab)
            registry.lab_plugins[lab.name] = _plugin

        impl.function(register=register_lab)
    return registry


_default: tuple[pluggy.PluginManager, Registry] | None = None


def default_registry() -> Registry:
    """The registry of every installed plugin, loaded once per process."""
    global _default
    if _default is None:
        pm = make_plugin_manager()
        _default = (pm, collect(pm))
        _write_index(pm, _default[1])
    return _default[1]


def has_default() -> bool:
    """Whether this process has loaded (or been given, by `register`) its full set of plugins."""
    return _default is not None


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
    _scoped.clear()


# -- the plugin index -------------------------------------------------------------------------------------
INDEX_VERSION = 2  # 2: each hook's implementations, in pluggy's order


def _index_path() -> Path:
    from gpupass.core import paths

    # marshal's format belongs to the interpreter's version: one index per version. And one per environment
    # (the folders on sys.path): two virtualenvs (or a venv and a pipx install) sharing one cache folder would
    # otherwise overwrite each other's index on every command, and each would find the other's stale and scan.
    version = f"{sys.version_info[0]}.{sys.version_info[1]}"
    return paths.cache_dir() / f"plugin-index-{version}-{environment_key()}.marshal"


def environment_key() -> str:
    """A short name for this environment: the folders on sys.path that say what is installed (not when they
    last changed: that is the fingerprint inside the index)."""
    import zlib

    return f"{zlib.crc32(chr(0).join(_installed_folders()).encode('utf-8', 'surrogateescape')):08x}"


def _installed_folders() -> list[str]:
    # sys.path[0] is the running script's folder or the current one: it says nothing about what is installed
    # (and differs between `gpupass`, `python -m` and `python -c`), so it is left out unless -P removed it.
    return sys.path if sys.flags.safe_path else sys.path[1:]


def _fingerprint() -> list[tuple[str, int]]:
    """The folders on sys.path and when each last changed: an install, upgrade or removal changes one."""
    stamps = []
    for entry in _installed_folders():
        try:
            stamps.append((entry, os.stat(entry or ".").st_mtime_ns))
        except OSError:
            continue
    return stamps


def _write_index(pm: pluggy.PluginManager, registry: Registry) -> None:
    entry_points: dict[str, str] = getattr(pm, "gpupass_entry_points", {})
    if not entry_points:
        return  # a registry without entry points (a test's) says nothing about what is installed
    plugins = []
    for name, value in entry_points.items():
        rules = [r for r in registry.rules if r.plugin == name]
        plugins.append({
            "name": name, "value": value, "version": registry.versions.get(name),
            "backends": [{"platform": b.platform, "schemes": list(b.schemes)}
                         for b in registry.backends if registry.backend_plugins[b] == name],
            "rules_all": any(r.platforms is None for r in rules),
            "rule_platforms": sorted({p for r in rules for p in (r.platforms or ())}),
            "labs": {lab.name: lab.platform for lab in registry.lab_hosts if registry.lab_plugins.get(lab.name) == name},
        })
    index = {"version": INDEX_VERSION, "fingerprint": _fingerprint(), "plugins": plugins,
             "hooks": {name: _recorded(getattr(pm.hook, name).get_hookimpls()) for name in HOOKS}}
    _scoped.clear()  # built from the index this one replaces
    path = _index_path()
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        temporary = path.with_name(f"{path.name}.{os.getpid()}.tmp")
        temporary.write_bytes(marshal.dumps(index))
        os.replace(temporary, path)
    except OSError:
        pass  # no cache folder we may write: every command scans, as before


def _recorded(impls: list[Any]) -> list[tuple[str, str]] | None:
    """(plugin name, attribute name) of each implementation pluggy found for one hook, in its order; None when an
    implementation is not a plain attribute of its plugin (a scoped registry then falls back to a full scan)."""
    recorded = []
    for impl in impls:
        if impl.hookwrapper or impl.wrapper:
            return None  # wraps the other calls: only pluggy calls it as it must be called
        try:
            names = [name for name in dir(impl.plugin) if _is_same(getattr(impl.plugin, name, None), impl.function)]
        except Exception:  # noqa: BLE001 - a plugin object whose attributes raise: pluggy alone reads it
            return None
        if len(names) != 1:
            return None
        recorded.append((impl.plugin_name, names[0]))
    return recorded


def _marked(plugin: object) -> list[str]:
    """The attributes of a plugin that pluggy's PluginManager.register takes for hook implementations: routines
    carrying the project's hookimpl mark (a dict)."""
    marker = hookspecs.PROJECT + "_impl"
    return [name for name in dir(plugin) if isinstance(getattr(getattr(plugin, name, None), marker, None), dict)]


def _is_same(value: object, function: Callable[..., Any]) -> bool:
    # a plugin object's method is a new bound method at each getattr: equal, not identical
    return value is function or (isinstance(value, types.MethodType) and value == function)


def _read_index() -> dict[str, Any] | None:
    try:
        index = marshal.loads(_index_path().read_bytes())
    except (OSError, ValueError, EOFError, TypeError):
        return None
    if not isinstance(index, dict) or index.get("version") != INDEX_VERSION:
        return None
    if [tuple(stamp) for stamp in index.get("fingerprint", ())] != _fingerprint():
        return None
    return index


def _load(value: str) -> object:
    """What an entry point's value names: `module` or `module:attribute.path` (as EntryPoint.load)."""
    module_name, _, attributes = value.partition(":")
    target: object = importlib.import_module(module_name.strip())
    for attribute in filter(None, attributes.strip().split(".")):
        target = getattr(target, attribute)
    return target


# Scoped registries already built in this process, by environment (the folders on sys.path), scheme and lab: a fleet
# of a thousand qemu+ssh hosts builds one plugin manager, not one per host (and its workers, asking at once, wait
# for that one rather than each building its own).
_scoped: dict[tuple[tuple[str, ...], str | None, str | None], Registry] = {}
_scoped_lock = allocate_lock()


def scoped_registry(*, scheme: str | None = None, lab: str | None = None) -> Registry | None:
    """A registry of the plugins one host needs: the backends of its platform and the rules that apply to
    it (the lab host's plugin too, for a lab host). None when the index cannot tell (missing, stale, or the
    scheme or lab unknown to it): the caller then loads every plugin, which also rebuilds the index.
    Built once per process for each scheme or lab."""
    key = (tuple(_installed_folders()), scheme, lab)
    with _scoped_lock:
        if key not in _scoped:
            registry = _build_scoped(scheme=scheme, lab=lab)
            if registry is None:
                return None  # not kept: the full scan the caller now makes writes an index that can tell
            _scoped[key] = registry
        return _scoped[key]


def _build_scoped(*, scheme: str | None, lab: str | None) -> Registry | None:
    index = _read_index()
    if index is None:
        return None
    entries = index["plugins"]
    needed: set[str] = set()
    if lab is not None:
        owner = next((entry for entry in entries if lab in entry["labs"]), None)
        if owner is None:
            return None
        platform = owner["labs"][lab]
        needed.add(owner["name"])
    else:
        claimants = [entry for entry in entries if any(scheme in b["schemes"] for b in entry["backends"])]
        if not claimants:
            return None  # the full registry's error lists every scheme that is installed
        platform = next(b["platform"] for b in claimants[0]["backends"] if scheme in b["schemes"])
        needed.update(entry["name"] for entry in claimants)
    for entry in entries:
        if (any(b["platform"] == platform for b in entry["backends"]) or entry["rules_all"]
                or platform in entry["rule_platforms"]):
            needed.add(entry["name"])
    hooks = index["hooks"]
    if any(hooks[name] is None for name in HOOKS):
        return None
    from gpupass.core import builtin_rules

    loaded: dict[str, object] = {CORE_PLUGIN: builtin_rules}
    try:
        for entry in entries:
            if entry["name"] in needed:
                loaded[entry["name"]] = _load(entry["value"])
        recorded = {(plugin, attribute) for name in HOOKS for plugin, attribute in hooks[name]}
        if any((name, attribute) not in recorded for name, plugin in loaded.items() for attribute in _marked(plugin)):
            return None  # a hook implementation the index does not know (an editable checkout): pluggy must see it
        # The functions pluggy called in the full scan, in its order (restricted to these plugins, as a manager of
        # only these would order them), so the first claimant of a scheme still wins.
        impls = {name: [_Impl(getattr(loaded[plugin], attribute), plugin)
                        for plugin, attribute in hooks[name] if plugin in loaded] for name in HOOKS}
    except Exception:  # noqa: BLE001 - a plugin that no longer loads: the full scan reports it properly
        return None
    registry = _collect(Registry(versions={entry["name"]: entry["version"] for entry in entries
                                           if entry["name"] in needed}), impls)
    if (lab is not None and registry.lab_host(lab) is None) or (
            scheme is not None and not any(scheme in b.schemes for b in registry.backends)):
        return None  # the plugins changed without an install (an editable checkout): do not trust the index
    return registry
