"""`gpupass gpus HOST [--json]` (and vms, status) run by the console script without click print exactly what
the click commands print, with the same errors and exit codes (issue 11: `gpus` as a program near a hand-written
libvirt script; gpupass.core.cli.listing)."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from gpupass.core.cli import listing

pytest.importorskip("libvirt", reason="libvirt-python is not installed (pip install 'gpupass[kvm]')")

# Runs the console script's main (entry) or click's (main), then says which of the heavy modules it loaded.
PROBE = ("import sys\nfrom gpupass.core.cli.{module} import main\ntry:\n    main()\nfinally:\n"
         "    print('LOADED:' + ','.join(sorted(m for m in sys.modules if m in {watched!r})), file=sys.stderr)\n")
# What a listing of a KVM host must not load: click, the other platforms' backends and SDKs, the plugin scan,
# the preflight rules and the planning model they need, the snapshot codec, the dataclasses module (the classes
# a read needs are records: gpupass.core.records), pluggy and the inspect module (the plugin index's hooks are
# called without a plugin manager: gpupass.core.plugins).
WATCHED = {"click", "gpupass.backends.esxi", "gpupass.backends.hyperv", "pyVmomi", "winrm", "importlib.metadata",
           "gpupass.core.domain.rules", "gpupass.core.domain.context", "gpupass.core.domain.request",
           "gpupass.core.snapshot", "gpupass.core.service", "dataclasses", "pluggy", "inspect"}


@pytest.fixture
def environment(tmp_path):
    # One data and cache folder for both runs: the lab host's files and the plugin index are shared, as for a user.
    return {**os.environ, "GPUPASS_DATA_DIR": str(tmp_path / "data"), "GPUPASS_CACHE_DIR": str(tmp_path / "cache"),
            "GPUPASS_CONFIG": str(tmp_path / "config.toml"), "COLUMNS": "200"}


def _run(module: str, args: list[str], env: dict[str, str]) -> tuple[int, str, str, set[str]]:
    result = subprocess.run([sys.executable, "-c", PROBE.format(module=module, watched=WATCHED), *args],
                            capture_output=True, text=True, env=env)
    stderr, _, loaded = result.stderr.rpartition("LOADED:")
    return result.returncode, result.stdout, stderr, set(filter(None, loaded.strip().split(",")))


@pytest.mark.parametrize("args", [
    ["gpus", "lab-kvm"], ["gpus", "lab-kvm", "--json"], ["gpus", "--json", "lab-kvm"],
    ["vms", "lab-kvm"], ["vms", "lab-kvm", "--json"], ["status", "lab-kvm"], ["status", "--json", "lab-kvm"],
    ["gpus", "no-such-host"], ["gpus", "no-such-host", "--json"], ["gpus", "test:///no/such/file.xml", "--json"],
    ["--insecure", "gpus", "lab-kvm", "--json"], ["gpus", "lab-kvm", "--ca-file", "ca.pem", "--insecure"],
    ["--config", "/no/such/config.toml", "gpus", "lab-kvm"], ["vms", "--config=/no/such/config.toml", "lab-kvm", "--json"],
])
def test_the_quick_path_prints_what_click_prints(environment, args):
    _run("entry", ["plugins"], environment)  # the first command after an install writes the plugin index
    click_code, click_out, click_err, _ = _run("main", args, environment)
    code, out, err, loaded = _run("entry", args, environment)
    assert (code, out, err) == (click_code, click_out, click_err)
    assert out or err
    if code == 0:  # an error is printed by click's own helpers, after whatever scan its message needed
        assert loaded == set(), loaded


def test_the_quick_path_reads_a_uri_with_the_plugin_index_only(environment, tmp_path):
    from importlib import resources

    path = tmp_path / "host.xml"
    path.write_bytes(resources.files("gpupass.backends.kvm.lab").joinpath("lab-kvm.xml").read_bytes())
    _run("entry", ["plugins"], environment)
    code, out, _, loaded = _run("entry", ["gpus", f"test://{path}", "--json"], environment)
    assert code == 0 and '"gpus": [' in out and loaded == set(), loaded


@pytest.mark.parametrize("argv, expected", [
    (["gpus", "lab-kvm"], ("gpus", "lab-kvm", False, {})),
    (["gpus", "--json", "qemu:///system"], ("gpus", "qemu:///system", True, {})),
    (["vms", "h", "--json"], ("vms", "h", True, {})),
    (["status"], ("status", None, False, {})),
    (["gpus", "--json"], ("gpus", None, True, {})),
    (["gpus", "h", "--insecure"], ("gpus", "h", False, {"insecure": True})),
    (["gpus", "--config", "f", "h"], ("gpus", "h", False, {"config_path": "f"})),
    (["--config=f", "--insecure", "--ca-file", "ca.pem", "vms", "h", "--json"],
     ("vms", "h", True, {"config_path": "f", "insecure": True, "ca_file": "ca.pem"})),
    (["--insecure", "status", "--ca-file=c", "qemu+ssh://h/system?keyfile=k"],
     ("status", "qemu+ssh://h/system?keyfile=k", False, {"insecure": True, "ca_file": "c"})),
])
def test_plain_forms_take_the_quick_path(argv, expected):
    assert listing.plain_form(argv, {}) == expected


@pytest.mark.parametrize("argv", [
    [], ["plan", "h"], ["gpus", "h", "--help"], ["gpus", "-v", "h"], ["gpus", "a", "b"],
    ["gpus", "h", "--json", "--json"], ["gpus", "--", "h"], ["gpus", ""], ["--json", "gpus", "h"],
    ["--insecure", "gpus", "h", "--insecure"], ["--config", "a", "gpus", "--config", "b"], ["gpus", "--config"],
    ["gpus", "h", "--config="], ["gpus", "h", "--config", "--json"], ["--debug", "gpus", "h"], ["--insecure=1", "gpus"],
    ["--config", "f"], ["h", "gpus"],
])
def test_anything_else_goes_through_click(argv):
    assert listing.plain_form(argv, {}) is None


def test_shell_completion_goes_through_click():
    assert listing.plain_form(["gpus", "h"], {"_GPUPASS_COMPLETE": "bash_complete"}) is None


@pytest.mark.parametrize("args, collecting", [(["gpus", "lab-kvm", "--json"], False), (["vms", "lab-kvm"], False),
                                              (["plugins"], True), (["gpus", "lab-kvm", "-v"], True)])
def test_only_a_listing_runs_without_the_cyclic_garbage_collector(environment, args, collecting):
    """A listing reads one host and exits: the collector would only cost it time (entry.main), and its last pass at
    shutdown skips what the listing made. Any other command, however long it runs (a fleet, a lab server), keeps
    it."""
    probe = ("import gc, sys\nfrom gpupass.core.cli.entry import main\ntry:\n    main()\nfinally:\n"
             "    print('COLLECTING:' + str(gc.isenabled()), gc.get_freeze_count() > 0, file=sys.stderr)\n")
    result = subprocess.run([sys.executable, "-c", probe, *args], capture_output=True, text=True, env=environment)
    assert f"COLLECTING:{collecting} {not collecting}" in result.stderr, result.stderr


def test_a_host_named_in_the_config_file_given_with_config(environment, tmp_path):
    from importlib import resources

    path = tmp_path / "host.xml"
    path.write_bytes(resources.files("gpupass.backends.kvm.lab").joinpath("lab-kvm.xml").read_bytes())
    config = tmp_path / "elsewhere.toml"
    config.write_text(f'[hosts.rack1]\nuri = "test://{path}"\n')
    _run("entry", ["plugins"], environment)
    for args in (["--config", str(config), "gpus", "rack1", "--json"], ["vms", "rack1", f"--config={config}"],
                 ["gpus", "rack1"]):  # the last: not in the default config file, an error both ways
        click_code, click_out, click_err, _ = _run("main", args, environment)
        code, out, err, loaded = _run("entry", args, environment)
        assert (code, out, err) == (click_code, click_out, click_err)
        if args == ["gpus", "rack1"]:
            assert code != 0 and "unknown host 'rack1'" in err
        else:
            assert code == 0 and ("host.xml" in out or "web01" in out) and loaded == set(), (args, err, loaded)
