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
