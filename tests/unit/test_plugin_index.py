"""A command about one host loads only that host's plugins, from the plugin index (issue 11: start-up)."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from gpupass.core import plugins


@pytest.fixture(autouse=True)
def own_cache_folder(tmp_path, monkeypatch):
    """These tests write and break the cache; the rest of the suite shares it (the simulator's build too)."""
    monkeypatch.setenv("GPUPASS_CACHE_DIR", str(tmp_path / "cache"))


def _full_then_forget():
    full = plugins.default_registry()  # scans the entry points and writes the index
    plugins.reset_default()
    return full


def _platform_rules(registry, platform):
    return [(r.rule, r.operations, r.plugin) for r in registry.rules
            if r.platforms is None or platform in r.platforms]


def test_a_scheme_loads_its_platforms_plugins_with_the_same_rules_in_the_same_order():
    full = _full_then_forget()
    scoped = plugins.scoped_registry(scheme="test")
    assert scoped is not None
    assert [b.platform for b in scoped.backends] == ["kvm"]
    assert scoped.backend_for("qemu+ssh") is full.backend_for("qemu+ssh")
    assert _platform_rules(scoped, "kvm") == _platform_rules(full, "kvm")
    assert not plugins.has_default()


def test_a_lab_host_loads_its_plugin():
    _full_then_forget()
    scoped = plugins.scoped_registry(lab="lab-kvm")
    assert scoped is not None and scoped.lab_host("lab-kvm") is not None
    assert {b.platform for b in scoped.backends} == {"kvm"}


def test_what_the_index_does_not_know_means_every_plugin():
    _full_then_forget()
    assert plugins.scoped_registry(scheme="nosuch") is None
    assert plugins.scoped_registry(lab="lab-nosuch") is None


def test_an_install_makes_the_index_stale(monkeypatch, tmp_path):
    _full_then_forget()
    assert plugins.scoped_registry(scheme="test") is not None
    (tmp_path / "site").mkdir()  # a new folder on sys.path, as installing into a new prefix would add
    monkeypatch.setattr(sys, "path", [sys.path[0], str(tmp_path / "site"), *sys.path[1:]])
    assert plugins.scoped_registry(scheme="test") is None


def test_no_index_until_a_full_scan_and_a_broken_index_is_ignored():
    assert plugins.scoped_registry(scheme="test") is None
    _full_then_forget()
    path = plugins._index_path()
    path.write_bytes(b"not marshal")
    assert plugins.scoped_registry(scheme="test") is None


def _loaded_by(args: list[str]) -> set[str]:
    code = ("import sys\nfrom gpupass.core.cli.main import cli\n"
            f"try:\n    cli({args!r}, prog_name='gpupass')\nexcept SystemExit:\n    pass\n"
            "print(sorted(sys.modules), file=sys.stderr)\n")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=dict(os.environ),
                            check=True)
    return set(eval(result.stderr.strip().splitlines()[-1]))


def test_gpus_on_a_kvm_host_imports_no_other_backend_and_scans_no_entry_point():
    _loaded_by(["plugins"])  # the first command after an install scans and writes the index
    loaded = _loaded_by(["gpus", "lab-kvm", "--json"])
    assert "gpupass.backends.kvm.backend" in loaded
    assert not {m for m in loaded if m.startswith(("gpupass.backends.esxi", "gpupass.backends.hyperv"))}
    assert "importlib.metadata" not in loaded


def test_plugins_lists_everything_with_an_index_in_place():
    _loaded_by(["plugins"])
    loaded = _loaded_by(["plugins"])
    assert {"gpupass.backends.kvm.plugin", "gpupass.backends.esxi.plugin", "gpupass.backends.hyperv.plugin"} <= loaded


def test_each_environment_keeps_its_own_index(monkeypatch, tmp_path):
    """Two virtualenvs sharing one cache folder must not overwrite each other's index (each would then find the
    other's stale and scan every entry point on every command)."""
    _full_then_forget()
    here = plugins._index_path()
    manager = plugins.make_plugin_manager()
    registry = plugins.collect(manager)
    (tmp_path / "other-site").mkdir()
    with monkeypatch.context() as other:
        other.setattr(sys, "path", [sys.path[0], str(tmp_path / "other-site")])
        assert plugins._index_path() != here
        plugins._write_index(manager, registry)  # what that environment's own full scan would write
        assert plugins._index_path().exists()
    assert here.exists() and plugins.scoped_registry(scheme="test") is not None


def test_many_hosts_of_one_scheme_share_one_registry_built_once(monkeypatch):
    """A fleet of a thousand URIs must not build a plugin manager per host (issue 11: fleet), even when its
    workers all ask at the same moment."""
    import threading

    from gpupass.core.config import Config
    from gpupass.core.hosts import registry_for_host

    _full_then_forget()
    builds = []
    real_build = plugins._build_scoped

    def counting_build(**kwargs):
        builds.append(kwargs)
        return real_build(**kwargs)

    monkeypatch.setattr(plugins, "_build_scoped", counting_build)
    found, start = [], threading.Barrier(40)

    def ask(index):
        start.wait()
        found.append(registry_for_host(f"test:///nowhere/host-{index}.xml", Config(path=None)))

    threads = [threading.Thread(target=ask, args=(i,)) for i in range(40)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(found) == 40 and len({id(r) for r in found}) == 1 and builds == [{"scheme": "test", "lab": None}]
    assert [b.platform for b in found[0].backends] == ["kvm"] and not plugins.has_default()
    assert registry_for_host("lab-kvm", Config(path=None)).lab_host("lab-kvm") is not None  # a lab: its own


# -- a scoped registry calls the hooks pluggy found, in pluggy's order, without pluggy ---------------------------

@pytest.mark.parametrize("options", [{}, {"tryfirst": True}, {"trylast": True}, {"optionalhook": True},
                                     {"specname": "gpupass_register_rules"}, {"wrapper": True},
                                     {"hookwrapper": True}, {"tryfirst": True, "optionalhook": True}])
def test_the_hookimpl_marker_sets_what_pluggys_sets(options):
    """Plugins mark their hooks with gpupass.core.hookspecs.hookimpl, which does not import pluggy; the attribute it
    sets must be the one the installed pluggy's own marker sets, or pluggy would not see the hooks (or see them
    differently)."""
    import pluggy

    from gpupass.core import hookspecs

    def ours():
        pass

    def pluggys():
        pass

    hookspecs.hookimpl(**options)(ours)
    pluggy.HookimplMarker("gpupass")(**options)(pluggys)
    assert ours.gpupass_impl == pluggys.gpupass_impl  # type: ignore[attr-defined]
    assert hookspecs.hookimpl(ours) is ours  # bare @hookimpl, as the backends write it


@pytest.mark.parametrize("options", [{}, {"firstresult": True}, {"historic": True},
                                     {"warn_on_impl": DeprecationWarning("old")}])
def test_the_hookspec_marker_sets_what_pluggys_sets(options):
    import pluggy

    from gpupass.core import hookspecs

    def ours():
        pass

    def pluggys():
        pass

    hookspecs.hookspec(**options)(ours)
    pluggy.HookspecMarker("gpupass")(**options)(pluggys)
    assert ours.gpupass_spec == pluggys.gpupass_spec  # type: ignore[attr-defined]
    with pytest.raises(ValueError, match="historic firstresult"):
        hookspecs.hookspec(firstresult=True, historic=True)(ours)


def test_a_command_about_one_host_builds_no_plugin_manager():
    def run(code: str) -> str:
        return subprocess.run([sys.executable, "-c", "import sys\nfrom gpupass.core import plugins\n" + code],
                              capture_output=True, text=True, env=dict(os.environ), check=True).stdout

    run("plugins.default_registry()")  # the full scan writes the index (in the subprocesses' environment)
    result = run("registry = plugins.scoped_registry(scheme='qemu+ssh')\n"
                 "print(registry.backend_for('qemu+ssh').platform, len(registry.pending_rules),"
                 " sorted(m for m in sys.modules if m.split('.')[0] in ('pluggy', 'inspect')))\n")
    platform, rules, loaded = result.split(" ", 2)
    assert platform == "kvm" and int(rules) > 0 and loaded.strip() == "[]"


PLUGINS = {
    # Registered in this order. Two plugins claim the scheme zz; `first`'s backends hook is tryfirst and `late`'s
    # rules hook trylast, which moves them in pluggy's list of implementations (get_hookimpls: trylast ones first,
    # tryfirst ones last), and collect() takes them in that list's order.
    "first": '''
from gpupass.core.hookspecs import hookimpl

class First:
    platform, schemes = "zz", ("zz",)

@hookimpl(tryfirst=True)
def gpupass_register_backends(register):
    register(First)

@hookimpl
def gpupass_register_rules(register):
    register(lambda ctx: [], platforms=("zz",))
''',
    "plain": '''
from gpupass.core.hookspecs import hookimpl

@hookimpl(specname="gpupass_register_rules")
def rules_under_another_name(register):
    register(lambda ctx: [], platforms=("zz",))
''',
    "late": '''
from gpupass.core.hookspecs import hookimpl

class Late:
    platform, schemes = "zz", ("zz",)

@hookimpl
def gpupass_register_backends(register):
    register(Late)

@hookimpl(trylast=True)
def gpupass_register_rules(register):
    register(lambda ctx: [], platforms=("zz",))
''',
}


@pytest.fixture
def three_plugins(tmp_path, monkeypatch):
    """A manager as a full scan builds it, with three plugin modules found by entry point, and its index written."""
    import importlib

    for name, source in PLUGINS.items():
        (tmp_path / f"zz_{name}.py").write_text(source)
    monkeypatch.syspath_prepend(str(tmp_path))
    manager = plugins.make_plugin_manager(load_entry_points=False)
    modules = {}
    for name in PLUGINS:
        modules[name] = importlib.import_module(f"zz_{name}")
        manager.register(modules[name], name=name)
    manager.gpupass_entry_points = {name: f"zz_{name}" for name in PLUGINS}
    manager.gpupass_versions = {name: "1.0" for name in PLUGINS}
    yield manager, modules
    for name in PLUGINS:
        sys.modules.pop(f"zz_{name}", None)


def test_a_scoped_registry_calls_the_hooks_in_pluggys_order(three_plugins):
    manager, _ = three_plugins
    full = plugins.collect(manager)
    plugins._write_index(manager, full)
    scoped = plugins._build_scoped(scheme="zz", lab=None)
    assert scoped is not None
    assert [b.__name__ for b in scoped.backends] == [b.__name__ for b in full.backends] == ["Late", "First"]
    assert "claimed by 'late' and 'first'" in scoped.problems[0]
    assert [(r.plugin, r.platforms) for r in scoped.rules] == [(r.plugin, r.platforms) for r in full.rules]
    assert [r.plugin for r in scoped.rules if r.platforms == ("zz",)] == ["late", "first", "plain"]
    assert scoped.problems == full.problems and scoped.versions == {"late": "1.0", "plain": "1.0", "first": "1.0"}


def test_a_hook_the_index_does_not_know_means_a_full_scan(three_plugins):
    """An editable checkout whose plugin gained a hook since the index was written: pluggy must see it."""
    from gpupass.core.hookspecs import hookimpl

    manager, modules = three_plugins
    plugins._write_index(manager, plugins.collect(manager))
    modules["plain"].gpupass_register_lab_hosts = hookimpl(lambda register: None)
    assert plugins._build_scoped(scheme="zz", lab=None) is None


def test_a_hook_wrapper_is_left_to_pluggy(three_plugins):
    from gpupass.core.hookspecs import hookimpl

    manager, modules = three_plugins

    def wrapping(register):
        yield

    modules["plain"].gpupass_register_backends = hookimpl(wrapper=True)(wrapping)
    manager.unregister(name="plain")
    manager.register(modules["plain"], name="plain")
    plugins._write_index(manager, plugins.collect(manager))
    assert plugins._build_scoped(scheme="zz", lab=None) is None


def test_a_plugin_whose_attributes_raise_is_left_to_pluggy(three_plugins):
    """Writing the index must never break the full scan that writes it."""
    from gpupass.core.hookspecs import hookimpl

    manager, _ = three_plugins

    class Touchy:
        @property
        def boom(self):
            raise RuntimeError("read me and I fail")

        @hookimpl
        def gpupass_register_lab_hosts(self, register):
            pass

    manager.register(Touchy(), name="touchy")
    plugins._write_index(manager, plugins.collect(manager))
    assert plugins._read_index()["hooks"]["gpupass_register_lab_hosts"] is None
    assert plugins._build_scoped(scheme="zz", lab=None) is None
