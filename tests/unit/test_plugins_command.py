"""`gpupass plugins`: what is installed, from which distribution, and what is missing to use it."""

from __future__ import annotations

import importlib.util
import json
from importlib.metadata import version

import pytest
from click.testing import CliRunner

from gpupass.backends.kvm.backend import KvmBackend
from gpupass.core import plugins
from gpupass.core.cli.main import cli
from gpupass.core.errors import BackendUnavailable
from gpupass.core.hookspecs import hookimpl
from gpupass.core.hosts import open_backend
from gpupass.core.plugins import collect, make_plugin_manager
from gpupass.core.target import Target
from support.fakes import FakeBackend, FakePlugin

MISSING_MODULE = "gpupass_test_sdk_that_is_not_installed"


class NoSdkBackend(FakeBackend):
    """A backend whose SDK is not installed: listing it is fine, opening a host of its scheme is not."""

    platform = "nosdk"
    schemes = ("nosdk", "nosdk+tls")
    description = "needs an SDK that is not installed"
    sdk_modules = (MISSING_MODULE,)
    extra = "nosdk"
    opened = 0

    def __init__(self, target):
        type(self).opened += 1
        super().__init__(target)


class NoSdkPlugin:
    @hookimpl
    def gpupass_register_backends(self, register):
        register(NoSdkBackend)


def run(*args: str):
    return CliRunner().invoke(cli, list(args), catch_exceptions=False)


def backends_by_plugin(result) -> dict[str, dict]:
    assert result.exit_code == 0, result.output
    return {row["plugin"]: row for row in json.loads(result.stdout)["backends"]}


@pytest.fixture
def with_fakes():
    plugins.register(FakePlugin(), name="fake")
    plugins.register(NoSdkPlugin(), name="nosdk")
    NoSdkBackend.opened = 0


def test_json_lists_the_kvm_backend_with_schemes_version_and_sdk_state():
    rows = backends_by_plugin(run("plugins", "--json"))
    kvm = rows["kvm"]
    assert kvm["platform"] == "kvm"
    assert kvm["schemes"] == list(KvmBackend.schemes) and "qemu" in kvm["schemes"] and "test" in kvm["schemes"]
    # The version is the distribution's that provides the entry point: gpupass itself for the in-tree backend.
    assert kvm["version"] == version("gpupass")
    assert kvm["sdk_modules"] == ["libvirt"]
    installed = importlib.util.find_spec("libvirt") is not None
    assert kvm["sdk_installed"] is installed
    assert kvm["install"] == (None if installed else "pip install 'gpupass[kvm]'")
    assert kvm["description"]


def test_json_lists_lab_hosts_and_rules_with_the_plugin_that_registered_them():
    document = json.loads(run("plugins", "--json").stdout)
    labs = {lab["name"]: lab for lab in document["lab_hosts"]}
    assert {"name": "lab-kvm", "platform": "kvm"}.items() <= labs["lab-kvm"].items()
    rules = {(r["rule"], r["plugin"]): r for r in document["rules"]}
    assert rules[("iommu_enabled", "gpupass.core")]["platforms"] is None
    assert rules[("boot_display", "kvm")] == {"rule": "boot_display", "plugin": "kvm", "operations": ["assign"],
                                              "platforms": ["kvm"]}


def test_table_lists_the_kvm_backend():
    result = run("plugins")
    assert result.exit_code == 0
    header, *rows = result.stdout.splitlines()
    assert header.split() == ["PLUGIN", "VERSION", "PLATFORM", "SCHEMES", "SDK"]
    kvm = next(row for row in rows if row.startswith("kvm "))
    assert kvm.split()[:3] == ["kvm", version("gpupass"), "kvm"]
    assert "qemu, qemu+ssh" in kvm
    assert ("installed" if KvmBackend.sdk_available() else "missing: pip install 'gpupass[kvm]'") in kvm
    assert "lab-kvm (kvm)" in result.stdout


def test_a_backend_without_its_sdk_is_listed_with_the_install_hint(with_fakes):
    rows = backends_by_plugin(run("plugins", "--json"))
    assert rows["nosdk"]["schemes"] == ["nosdk", "nosdk+tls"]
    assert rows["nosdk"]["sdk_installed"] is False
    assert rows["nosdk"]["sdk_modules"] == [MISSING_MODULE]
    assert rows["nosdk"]["install"] == "pip install 'gpupass[nosdk]'"
    # Registered at run time, not by an entry point: there is no distribution to take a version from.
    assert rows["nosdk"]["version"] is None
    assert rows["fake"]["sdk_installed"] is True and rows["fake"]["install"] is None
    line = next(line for line in run("plugins").stdout.splitlines() if line.startswith("nosdk"))
    assert "missing: pip install 'gpupass[nosdk]'" in line and line.split()[1] == "-"


def test_opening_a_host_of_that_scheme_fails_naming_the_module_and_the_extra(with_fakes):
    result = run("gpus", "nosdk://host1")
    assert result.exit_code == BackendUnavailable.exit_code == 1
    assert f"the nosdk backend needs the Python module(s) {MISSING_MODULE}" in result.stderr
    assert "fix: pip install 'gpupass[nosdk]'" in result.stderr
    error = json.loads(run("gpus", "nosdk+tls://host1", "--json").stdout)
    assert error["error"] == "backend-unavailable" and error["remedy"] == "pip install 'gpupass[nosdk]'"
    assert NoSdkBackend.opened == 0, "the backend must not be constructed without its SDK"


def test_open_backend_raises_backend_unavailable_for_a_missing_sdk():
    registry = collect(make_plugin_manager(extra_plugins=[NoSdkPlugin()], load_entry_points=False))
    NoSdkBackend.opened = 0
    with pytest.raises(BackendUnavailable) as raised:
        open_backend(Target(uri="nosdk://host1"), registry)
    assert "gpupass[nosdk]" in raised.value.remedy and MISSING_MODULE in raised.value.message
    assert NoSdkBackend.opened == 0


def test_an_unknown_scheme_names_the_known_ones():
    registry = collect(make_plugin_manager(extra_plugins=[FakePlugin(), NoSdkPlugin()], load_entry_points=False))
    with pytest.raises(BackendUnavailable) as raised:
        open_backend(Target(uri="vbox://host"), registry)
    assert "'vbox://'" in raised.value.message
    assert "known schemes: fake, nosdk, nosdk+tls" in raised.value.message
    assert "gpupass plugins" in raised.value.remedy


def test_make_plugin_manager_loads_kvm_by_entry_point_beside_extra_plugins():
    pm = make_plugin_manager(extra_plugins=[FakePlugin()])
    registry = collect(pm)
    assert "kvm" in registry.versions
    assert {backend.platform for backend in registry.backends} >= {"kvm", "fake"}
    assert registry.backend_for("qemu+ssh") is KvmBackend
    assert registry.backend_for("fake") is FakeBackend


def test_a_plugin_that_fails_to_import_is_reported_not_fatal(tmp_path, monkeypatch):
    info = tmp_path / "gpupass_broken-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: gpupass-broken\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text("[gpupass]\nbroken = gpupass_broken_plugin\n")
    (tmp_path / "gpupass_broken_plugin.py").write_text("raise RuntimeError('plugin bug')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    registry = collect(make_plugin_manager())
    assert any("'broken'" in p and "RuntimeError: plugin bug" in p for p in registry.problems)
    assert registry.backend_for("qemu") is KvmBackend


def test_a_scheme_claimed_twice_is_reported_and_refused_on_use():
    class Squatter(FakeBackend):
        platform = "squatter"
        schemes = ("qemu",)

    class SquatterPlugin:
        @hookimpl
        def gpupass_register_backends(self, register):
            register(Squatter)

    registry = collect(make_plugin_manager(extra_plugins=[SquatterPlugin()]))
    assert any("scheme 'qemu://' is claimed by 'kvm'" in p and "refuse" in p for p in registry.problems)
    with pytest.raises(BackendUnavailable, match="claimed by the plugins 'kvm' and ") as refused:
        registry.backend_for("qemu")
    assert "uninstall one" in refused.value.remedy
    assert registry.backend_for("esxi") is not Squatter  # other schemes are not affected
