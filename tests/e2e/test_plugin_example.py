"""The third-party plugin of docs/plugin-example, installed for real and driven through the CLI.

The package is installed into a temporary directory with pip, put on PYTHONPATH, and found by pluggy's
load_setuptools_entrypoints through its `gpupass` entry point, exactly as a user's `pip install` would be.
Nothing is downloaded: when the interpreter can build wheels (setuptools >= 70.1, or `wheel` installed, as
.ci/bootstrap sets up) pip builds the package from its pyproject.toml with the setuptools already here;
otherwise the wheel is assembled from that same pyproject.toml with the standard library, and pip installs it.
"""

from __future__ import annotations

import base64
import csv
import hashlib
import importlib.util
import io
import json
import os
import shutil
import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path

import pytest

EXAMPLE = Path(__file__).resolve().parents[2] / "docs" / "plugin-example"
PROJECT = tomllib.loads((EXAMPLE / "pyproject.toml").read_text())["project"]
HOST = "example://demo"
A100 = "0000:41:00.0"


def _setuptools_builds_wheels() -> bool:
    if importlib.util.find_spec("wheel") is not None:
        return True
    try:
        from importlib.metadata import version

        major, minor = (int(part) for part in version("setuptools").split(".")[:2])
    except Exception:
        return False
    return (major, minor) >= (70, 1)


def _assemble_wheel(source: Path, out: Path) -> Path:
    """A wheel of the example built from its pyproject.toml: module, METADATA, entry_points.txt, RECORD."""
    config = tomllib.loads((source / "pyproject.toml").read_text())
    project, modules = config["project"], config["tool"]["setuptools"]["py-modules"]
    name, version = project["name"].replace("-", "_"), project["version"]
    info = f"{name}-{version}.dist-info"
    metadata = ["Metadata-Version: 2.1", f"Name: {project['name']}", f"Version: {version}",
                f"Requires-Python: {project['requires-python']}"] + [f"Requires-Dist: {d}" for d in project["dependencies"]]
    entry_points = "".join(f"[{group}]\n" + "".join(f"{k} = {v}\n" for k, v in items.items()) + "\n"
                           for group, items in project["entry-points"].items())
    files = {f"{module}.py": (source / f"{module}.py").read_bytes() for module in modules}
    files[f"{info}/METADATA"] = ("\n".join(metadata) + "\n").encode()
    files[f"{info}/WHEEL"] = b"Wheel-Version: 1.0\nGenerator: gpupass-tests\nRoot-Is-Purelib: true\nTag: py3-none-any\n"
    files[f"{info}/entry_points.txt"] = entry_points.encode()
    record = io.StringIO()
    writer = csv.writer(record, lineterminator="\n")
    for path, data in files.items():
        digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
        writer.writerow([path, f"sha256={digest}", len(data)])
    writer.writerow([f"{info}/RECORD", "", ""])
    files[f"{info}/RECORD"] = record.getvalue().encode()
    wheel = out / f"{name}-{version}-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as archive:
        for path, data in files.items():
            archive.writestr(path, data)
    return wheel


@pytest.fixture(scope="module")
def site(tmp_path_factory) -> Path:
    """A directory holding the installed example plugin (its module and its .dist-info)."""
    work = tmp_path_factory.mktemp("plugin-example")
    # pip builds in the source tree (build/, *.egg-info): build from a copy, never in docs/.
    source = work / "src"
    shutil.copytree(EXAMPLE, source, ignore=shutil.ignore_patterns("build", "*.egg-info", "__pycache__"))
    if _setuptools_builds_wheels():
        what, extra = str(source), ["--no-build-isolation"]
    else:
        what, extra = str(_assemble_wheel(source, work)), []
    target = work / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-index",
                    "--disable-pip-version-check", *extra, "--target", str(target), what],
                   check=True, capture_output=True, text=True, env={**os.environ, "PIP_NO_INPUT": "1"})
    assert (target / "gpupass_example_backend.py").exists()
    assert list(target.glob("gpupass_example_backend-*.dist-info/entry_points.txt"))
    return target


@pytest.fixture
def gpupass(site):
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(site), os.environ.get("PYTHONPATH")]))}

    def run(*args: str, code: int = 0):
        result = subprocess.run([sys.executable, "-m", "gpupass.core.cli", *args], capture_output=True, text=True,
                                stdin=subprocess.DEVNULL, env=env)
        assert result.returncode == code, result.stdout + result.stderr
        return result

    return run


def test_plugins_lists_the_example_with_its_scheme_version_and_rule(gpupass):
    listing = json.loads(gpupass("plugins", "--json").stdout)
    example = next(b for b in listing["backends"] if b["plugin"] == "example")
    assert example["platform"] == "example"
    assert example["schemes"] == ["example"]
    # The version comes from the installed distribution's metadata: proof it was loaded by entry point.
    assert example["version"] == PROJECT["version"]
    assert example["sdk_installed"] is True and example["install"] is None
    assert {"rule": "balloon_pinned", "plugin": "example", "operations": ["assign"],
            "platforms": ["example"]} in listing["rules"]
    # The in-tree KVM backend is still there beside it.
    assert any(b["plugin"] == "kvm" for b in listing["backends"])
    table = gpupass("plugins").stdout
    assert "example" in table and PROJECT["version"] in table


def test_gpus_lists_the_example_hosts_cards(gpupass):
    listing = json.loads(gpupass("gpus", HOST, "--json").stdout)
    assert listing["host"]["platform"] == "example"
    gpus = {g["address"]: g for g in listing["gpus"]}
    assert set(gpus) == {"0000:01:00.0", A100}
    assert gpus["0000:01:00.0"]["companions"] == ["0000:01:00.1"]
    assert gpus["0000:01:00.0"]["assigned_to"] == "cad-ws" and gpus[A100]["assigned_to"] is None
    # BARs the platform did not report were filled from the core's catalog.
    assert gpus[A100]["name"] == "NVIDIA A100 PCIe 40GB" and gpus[A100]["bars"]


def test_plan_shows_the_steps_and_the_plugins_own_finding(gpupass):
    plan = json.loads(gpupass("plan", HOST, "ml-train", A100, "--json").stdout)
    assert plan["platform"] == "example" and not plan["blocked"]
    assert [s["action"] for s in plan["steps"]] == ["example.set-window", "example.attach"]
    codes = {f["code"] for f in plan["findings"]}
    assert "example-balloon-pinned" in codes  # the plugin's rule
    assert "mmio-window-resized" in codes  # a core rule, judged with the plugin's MMIO policy
    assert plan["mmio"]["target_window_bytes"] == 128 << 30


def test_assign_applies_and_reports_the_finding(gpupass):
    result = json.loads(gpupass("assign", HOST, "ml-train", A100, "--yes", "--json").stdout)
    assert result["applied"] is True
    assert result["vm"]["assigned"] == [A100]
    assert result["vm"]["mmio_window_bytes"] == 128 << 30
    assert "example-balloon-pinned" in {f["code"] for f in result["plan"]["findings"]}


def test_a_failed_step_is_rolled_back_and_translated_by_code(gpupass):
    # The platform refuses the device change on "locked" (error code VM_LOCKED) after the window was set:
    # the core undoes the window step and reports an operation-failed error.
    result = gpupass("assign", HOST, "locked", A100, "--yes", "--json", code=1)
    error = json.loads(result.stdout)
    assert error["error"] == "operation-failed" and error["rolled_back"] is True
    assert "VM_LOCKED" in error["message"] and "1 completed step(s) were undone" in error["message"]


def test_core_rules_block_on_the_example_platform_too(gpupass):
    result = gpupass("check", HOST, "web01", A100, "--json", code=3)
    assert "vm-not-off" in {f["code"] for f in json.loads(result.stdout)["findings"]}
    result = gpupass("check", HOST, "ml-train", "01:00.0", "--json", code=3)
    assert "gpu-assigned-elsewhere" in {f["code"] for f in json.loads(result.stdout)["findings"]}


RELEASE_SCRIPT = """
import json
from gpupass.core.config import Config
from gpupass.core.domain.pci import PciAddress
from gpupass.core.domain.request import AssignmentRequest, ReleaseRequest
from gpupass.core.hosts import open_host
from gpupass.core.plugins import default_registry
from gpupass.core.serialize import vm_to_dict
from gpupass.core.service import execute, make_plan

registry = default_registry()  # entry points only: the example is not registered by hand
def vm():
    with open_host("example://demo", Config(), registry) as backend:
        return vm_to_dict(backend.inventory().find_vm("ml-train"))
def run(request):
    with open_host("example://demo", Config(), registry) as backend:
        return [s.action for s in execute(backend, make_plan(backend, backend.inventory(), request, registry)).applied]
before = vm()
assigned = run(AssignmentRequest("ml-train", (PciAddress.parse("41:00.0"),)))
during = vm()
released = run(ReleaseRequest("ml-train"))
print(json.dumps({"before": before, "during": during, "after": vm(), "assigned": assigned, "released": released}))
"""


def test_release_undoes_exactly_what_assign_added_across_connections(site):
    env = {**os.environ, "PYTHONPATH": str(site)}
    result = subprocess.run([sys.executable, "-c", RELEASE_SCRIPT], capture_output=True, text=True, env=env)
    assert result.returncode == 0, result.stderr
    states = json.loads(result.stdout)
    assert states["assigned"] == ["example.set-window", "example.attach"] and states["released"] == ["example.detach"]
    assert states["during"]["assigned"] == [A100] and states["during"]["mmio_window_bytes"] == 128 << 30
    assert states["after"] == states["before"]


def test_unknown_host_and_vm_are_not_found(gpupass):
    assert json.loads(gpupass("gpus", "example://nowhere", "--json", code=2).stdout)["error"] == "not-found"
    assert json.loads(gpupass("plan", HOST, "nope", A100, "--json", code=2).stdout)["error"] == "not-found"


def test_a_snapshot_of_the_example_host_plans_offline_and_refuses_changes(gpupass, tmp_path):
    # The core opens a snapshot as a read-only subclass of the plugin's backend: its constructor must not
    # connect, and its planner must work from the facts (and HostFacts.state) alone.
    path = tmp_path / "demo.json"
    gpupass("snapshot", HOST, "-o", str(path))
    plan = json.loads(gpupass("plan", str(path), "ml-train", A100, "--json").stdout)
    assert plan["platform"] == "example" and len(plan["steps"]) == 2
    refused = json.loads(gpupass("assign", str(path), "ml-train", A100, "--yes", "--json", code=1).stdout)
    assert refused["error"] == "not-supported"


def test_the_example_stays_small():
    lines = (EXAMPLE / "gpupass_example_backend.py").read_text().count("\n")
    assert lines < 160, "docs/plugins.md promises a backend you can read in one sitting"
