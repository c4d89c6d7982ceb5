"""The Ansible collection as a shop runs it: built with ansible-galaxy, installed, and real ansible-playbook runs
against the three lab hosts (libvirt's test driver, the vSphere simulator, the WS-Management endpoint)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tarfile
from pathlib import Path
from urllib.parse import unquote, urlsplit

import pytest
import yaml


REPO = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
MODULES = ("gpu_info", "gpu_assignment", "gpu_fleet_info")

# Per lab: a VM and GPU that can be assigned now, and an assignment preflight refuses (with its finding).
CASES = {
    "lab-kvm": dict(vm="ml-train", gpu="0000:42:00.0", blocked_vm="ml-train", blocked_gpu="02:00.0",
                    blocker="iommu-group-shared"),
    "lab-esxi": dict(vm="ml-train", gpu="esx02.lab.local/0000:3b:00.0", blocked_vm="web01",
                     blocked_gpu="esx01.lab.local/0000:d8:00.0", blocker="vm-not-off"),
    "lab-hyperv": dict(vm="ml-train", gpu="PCIROOT(40)#PCI(0100)#PCI(0000)#PCI(1000)#PCI(0000)",
                       blocked_vm="web01", blocked_gpu="PCIROOT(80)#PCI(0100)#PCI(0000)", blocker="vm-not-off"),
}


@pytest.fixture(scope="module")
def collections(tmp_path_factory) -> Path:
    """The collection built from core/ansible and installed into a folder of its own, as a user would."""
    out = tmp_path_factory.mktemp("ansible")
    subprocess.run([BIN / "ansible-galaxy", "collection", "build", REPO / "core" / "ansible", "--output-path", out],
                   check=True, capture_output=True)
    (tarball,) = out.glob("gpupass-gpupass-*.tar.gz")
    subprocess.run([BIN / "ansible-galaxy", "collection", "install", tarball, "-p", out / "collections"],
                   check=True, capture_output=True)
    return out / "collections"


def ansible_env(collections: Path, tmp_path: Path, **extra: str) -> dict[str, str]:
    return {**os.environ, "ANSIBLE_COLLECTIONS_PATH": str(collections), "ANSIBLE_LOCAL_TEMP": str(tmp_path / "tmp"),
            "ANSIBLE_NOCOLOR": "1",
            "ANSIBLE_PYTHON_INTERPRETER": sys.executable, "ANSIBLE_DEPRECATION_WARNINGS": "0", **extra}


def play(collections: Path, tmp_path: Path, tasks: list[dict], *, env: dict[str, str] | None = None,
         args: tuple[str, ...] = ()) -> dict[str, dict]:
    """Run one play on localhost with ansible-playbook; return each named task's registered result.

    ansible-core has no JSON output of its own (that callback is in ansible.posix), so the play registers every
    task and a last task writes them to a file with Ansible's own to_json.
    """
    registered = [{"register": f"result_{number}", **step} for number, step in enumerate(tasks)]
    collected = "{" + ", ".join(f"{json.dumps(step['name'])}: {step['register']}" for step in registered) + "}"
    out = tmp_path / "results.json"
    registered.append({"name": "collect", "ansible.builtin.copy": {"content": "{{ " + collected + " | to_json }}",
                                                                  "dest": str(out)}})
    playbook = tmp_path / "playbook.yml"
    playbook.write_text(yaml.safe_dump([{"hosts": "localhost", "gather_facts": False, "tasks": registered}]))
    out.unlink(missing_ok=True)
    result = subprocess.run([BIN / "ansible-playbook", "-i", "localhost,", "-c", "local", *args, str(playbook)],
                            capture_output=True, text=True, env=env or ansible_env(collections, tmp_path),
                            stdin=subprocess.DEVNULL)
    assert result.returncode == 0 and out.exists(), f"ansible-playbook exit {result.returncode}:\n{result.stdout}{result.stderr}"
    results = json.loads(out.read_text())
    results["_output"] = result.stdout + result.stderr
    return results


def task(name: str, module: str, **params) -> dict:
    options = {key: value for key, value in params.items() if key not in ("check_mode", "diff", "ignore_errors", "loop")}
    entry: dict = {"name": name, f"gpupass.gpupass.{module}": options}
    for keyword in ("check_mode", "diff", "ignore_errors", "loop"):
        if keyword in params:
            entry[keyword] = params[keyword]
    return entry


def test_the_collection_builds_with_every_module(collections):
    installed = collections / "ansible_collections" / "gpupass" / "gpupass"
    manifest = json.loads((installed / "MANIFEST.json").read_text())
    assert manifest["collection_info"]["namespace"] == "gpupass"
    for module in MODULES:
        assert (installed / "plugins" / "modules" / f"{module}.py").is_file()
    with tarfile.open(next(collections.parent.glob("gpupass-gpupass-*.tar.gz"))) as archive:
        names = archive.getnames()
    assert "plugins/module_utils/gpupass_common.py" in names
    assert not any("__pycache__" in name for name in names)


@pytest.mark.parametrize("module", MODULES)
def test_ansible_doc_renders_every_module(collections, tmp_path, module):
    result = subprocess.run([BIN / "ansible-doc", "--json", f"gpupass.gpupass.{module}"], capture_output=True,
                            text=True, env=ansible_env(collections, tmp_path))
    assert result.returncode == 0, result.stderr
    doc = json.loads(result.stdout)[f"gpupass.gpupass.{module}"]
    assert doc["doc"]["short_description"] and doc["examples"] and doc["return"]
    examples = yaml.safe_load(doc["examples"])
    assert any(f"gpupass.gpupass.{module}" in step for step in examples)
    if module != "gpu_fleet_info":  # the connection options come from the shared doc fragment
        assert {"host", "hostname", "username", "password", "validate_certs", "ca_file"} <= set(doc["doc"]["options"])


@pytest.mark.parametrize("lab", sorted(CASES))
def test_assign_is_idempotent_checkable_diffable_and_released(collections, tmp_path, labs, lab):
    case = CASES[lab]
    common = dict(host=lab, vm=case["vm"])
    results = play(collections, tmp_path, [
        task("before", "gpu_info", host=lab),
        task("check", "gpu_assignment", **common, gpus=[case["gpu"]], check_mode=True, diff=True),
        task("after check", "gpu_info", host=lab),
        task("assign", "gpu_assignment", **common, gpus=[case["gpu"]], diff=True),
        task("again", "gpu_assignment", **common, gpus=[case["gpu"]]),
        task("before blocked", "gpu_info", host=lab),
        task("blocked", "gpu_assignment", host=lab, vm=case["blocked_vm"], gpus=[case["blocked_gpu"]],
             ignore_errors=True),
        task("after blocked", "gpu_info", host=lab),
        task("release", "gpu_assignment", **common, state="absent", diff=True),
        task("release again", "gpu_assignment", **common, state="absent"),
        task("after release", "gpu_info", host=lab),
    ])

    def vm(name: str, step: str) -> dict:
        return next(v for v in results[step]["vms"] if v["name"] == name)

    # Check mode: the plan, changed=true, the planned changes as the diff, and nothing written.
    assert results["check"]["changed"] is True and results["check"]["plan"]["steps"]
    assert "planned, not applied" in results["check"]["diff"]["prepared"]
    assert results["after check"]["vms"] == results["before"]["vms"]
    # Assign: changed, the VM read back holds the GPU, the diff shows the device arriving.
    assigned = results["assign"]
    assert assigned["changed"] is True
    gpu_address = assigned["plan"]["gpus"][0]["address"]
    assert gpu_address in assigned["vm"]["assigned"]
    assert assigned["diff"]["before"] != assigned["diff"]["after"]
    assert f"  - {gpu_address}" in assigned["diff"]["after"] and f"  - {gpu_address}" not in assigned["diff"]["before"]
    # A second run changes nothing.
    assert results["again"]["changed"] is False and not results["again"].get("failed")
    # A blocked assignment fails with gpupass's finding and writes nothing.
    blocked = results["blocked"]
    assert blocked["failed"] is True and blocked["error"] == "preflight-failed" and blocked["exit_code"] == 3
    blockers = [f for f in blocked["findings"] if f["severity"] == "blocker"]
    assert case["blocker"] in [f["code"] for f in blockers] and all(f["remedy"] for f in blockers)
    assert results["after blocked"]["vms"] == results["before blocked"]["vms"]
    # Release gives the GPU back and restores what assign changed; a second release changes nothing.
    assert results["release"]["changed"] is True
    assert gpu_address not in results["release"]["vm"]["assigned"]
    assert results["release again"]["changed"] is False
    assert vm(case["vm"], "after release") == vm(case["vm"], "before")


def test_a_fleet_query_drives_a_loop(collections, tmp_path, labs):
    results = play(collections, tmp_path, [
        {**task("fleet", "gpu_fleet_info", hosts=list(CASES) + ["lab-kvm"], model="A100"), "register": "fleet"},
        {**task("plan each free A100", "gpu_assignment", host="{{ item.host }}", vm="ml-train",
                gpus=["{{ item.qualified_address }}"], check_mode=True, loop="{{ fleet.free }}")},
        {**task("fleet, one host down", "gpu_fleet_info", hosts=["lab-kvm", "esxi://nobody@127.0.0.1:9/"],
                timeout=10)},
    ], env=ansible_env(collections, tmp_path, GPUPASS_PASSWORD="not-used-by-lab-hosts"))
    fleet = results["fleet"]
    assert [h["host"] for h in fleet["hosts"]] == sorted(CASES, key=list(CASES).index)  # each host read once
    # A host named twice is read once; the model filter and "now" are check's.
    assert fleet["free"] and all("A100" in g["name"] and g["assignable_now"] for g in fleet["free"])
    assert {g["host"] for g in fleet["free"]} <= set(CASES)
    assert fleet["candidates"] and all(c["free"] for c in fleet["candidates"])
    looped = results["plan each free A100"]["results"]
    assert len(looped) == len(fleet["free"])
    assert all(r["changed"] is True and r["plan"]["steps"] for r in looped)  # check mode: planned, not written
    partial = results["fleet, one host down"]
    assert not partial.get("failed") and [u["host"] for u in partial["unreadable"]] == ["esxi://nobody@127.0.0.1:9/"]
    assert partial["unreadable"][0]["error"]["error"] == "connection-failed"


def test_esxi_connection_from_community_vmware_variables_and_no_secret_in_output(collections, tmp_path, labs):
    from gpupass.core import paths
    from gpupass.core.plugins import default_registry

    target = default_registry().lab_host("lab-esxi").target(paths.data_dir())
    password, port = target.password.reveal(), urlsplit(target.uri).port
    user = unquote(target.username)  # as an admin types it: administrator@vsphere.local
    env = ansible_env(collections, tmp_path, VMWARE_HOST=target.hostname, VMWARE_PORT=str(port),
                      VMWARE_USER=user, VMWARE_PASSWORD=password, VMWARE_VALIDATE_CERTS="true")
    results = play(collections, tmp_path, [
        task("from the environment", "gpu_info", ca_file=target.tls.ca_file),
        task("password as an option", "gpu_info", hostname=target.hostname, port=port,
             username=user, password=password, ca_file=target.tls.ca_file),
        task("wrong password", "gpu_info", hostname=target.hostname, port=port, username=user,
             password="not-" + password, ca_file=target.tls.ca_file, ignore_errors=True),
        task("no CA: verification stays on", "gpu_info", ignore_errors=True),
    ], env=env, args=("-vvv",))
    assert results["from the environment"]["host"]["platform"] == "esxi"
    assert results["password as an option"]["gpus"] == results["from the environment"]["gpus"]
    assert results["wrong password"]["failed"] and results["wrong password"]["error"] == "authentication-failed"
    assert results["no CA: verification stays on"]["failed"]
    assert results["no CA: verification stays on"]["error"] == "connection-failed"
    assert password not in json.dumps(results)  # results and the -vvv output alike
    assert "VALUE_SPECIFIED_IN_NO_LOG_PARAMETER" in results["_output"] or "********" in results["_output"]


def test_clear_failures_and_the_libvirt_default_uri(collections, tmp_path, monkeypatch):
    for variable in ("LIBVIRT_DEFAULT_URI", "VMWARE_HOST"):
        monkeypatch.delenv(variable, raising=False)
    results = play(collections, tmp_path, [
        task("no host", "gpu_info", ignore_errors=True),
        task("no gpus", "gpu_assignment", host="lab-kvm", vm="ml-train", ignore_errors=True),
        task("unknown vm", "gpu_assignment", host="lab-kvm", vm="nope", gpus=["42:00.0"], ignore_errors=True),
    ])
    assert results["no host"]["failed"] and results["no host"]["error"] == "usage"
    assert "LIBVIRT_DEFAULT_URI" in results["no host"]["msg"]
    assert results["no gpus"]["failed"] and results["no gpus"]["error"] == "usage"
    assert results["unknown vm"]["failed"] and results["unknown vm"]["error"] == "not-found"
    assert "nope" in results["unknown vm"]["msg"]
    with_default = play(collections, tmp_path, [task("from LIBVIRT_DEFAULT_URI", "gpu_info")],
                        env=ansible_env(collections, tmp_path, LIBVIRT_DEFAULT_URI="test:///default"))
    assert with_default["from LIBVIRT_DEFAULT_URI"]["host"]["platform"] == "kvm"


@pytest.mark.parametrize("module", MODULES)
def test_every_option_is_documented_as_the_module_takes_it(collections, tmp_path, module, monkeypatch):
    """What validate-modules checks in ansible-test (which needs the network here): the documented options and
    the argument spec agree in names, types, defaults, choices and elements."""
    import importlib

    monkeypatch.syspath_prepend(str(collections))
    for name in [m for m in sys.modules if m.startswith("ansible_collections")]:
        monkeypatch.delitem(sys.modules, name)
    code = importlib.import_module(f"ansible_collections.gpupass.gpupass.plugins.modules.{module}")
    spec = code.ARGUMENT_SPEC
    result = subprocess.run([BIN / "ansible-doc", "--json", f"gpupass.gpupass.{module}"], capture_output=True,
                            text=True, env=ansible_env(collections, tmp_path))
    documented = json.loads(result.stdout)[f"gpupass.gpupass.{module}"]["doc"]["options"]
    assert set(documented) == set(spec)
    for name, option in spec.items():
        doc = documented[name]
        assert doc.get("type", "str") == option.get("type", "str"), name
        assert doc.get("default") == option.get("default"), name
        assert doc.get("choices") == option.get("choices"), name
        assert doc.get("elements") == option.get("elements"), name
        assert bool(doc.get("required")) == bool(option.get("required")), name
        assert sorted(doc.get("aliases", [])) == sorted(option.get("aliases", [])), name
    assert all(option.get("no_log") for name, option in spec.items() if name == "password")
