"""hosts add/list/remove/test and fleet views through the CLI, with the lab and an unreachable host."""

import json
import os
import stat
import subprocess

from support.cli import GPUPASS, gpupass


def test_hosts_are_kept_owner_only_and_listed_with_the_lab(isolated_user_dirs):
    gpupass("hosts", "add", "node7", "qemu+ssh://admin@node7/system")
    gpupass("hosts", "add", "vc", "esxi://administrator@vc.example.com/DC1", "--password-env", "VC_PW")
    config = isolated_user_dirs / "config.toml"
    assert stat.S_IMODE(os.stat(config).st_mode) == 0o600
    rows = {r["name"]: r for r in json.loads(gpupass("hosts", "list", "--json").stdout)["hosts"]}
    assert rows["vc"]["credential"] == "$VC_PW" and rows["node7"]["uri"] == "qemu+ssh://admin@node7/system"
    assert rows["lab-kvm"]["source"] == "lab"
    gpupass("hosts", "remove", "node7")
    assert "node7" not in gpupass("hosts", "list").stdout
    assert "no host named 'node7'" in gpupass("hosts", "remove", "node7", expect=2).stderr


def test_hosts_add_has_no_way_to_pass_a_password():
    result = gpupass("hosts", "add", "x", "esxi://root@h", "--password", "hunter2", expect=2)
    assert "No such option" in result.stderr


def test_hosts_test_reports_round_trips():
    document = json.loads(gpupass("hosts", "test", "lab-kvm", "--json").stdout)
    assert document["ok"] and document["gpus"] == 6 and document["round_trips"] > 0


def test_fleet_with_a_host_down_reports_it_and_the_rest(isolated_user_dirs):
    gpupass("hosts", "add", "dead", "qemu+tcp://127.0.0.1:9/system")
    result = gpupass("fleet", "gpus", "--all", "--json", expect=4)
    rows = {r["host"]: r for r in json.loads(result.stdout)["hosts"]}
    assert rows["dead"]["ok"] is False and rows["dead"]["error"]["error"] == "connection-failed"
    assert len(rows["lab-kvm"]["gpus"]) == 6
    text = gpupass("fleet", "gpus", "--all", expect=4).stdout
    assert "ERROR" in text and "1 host(s) could not be read" in text


def test_fleet_find():
    document = json.loads(gpupass("fleet", "find", "--model", "A100", "--hosts", "lab-kvm", "--json").stdout)
    assert document["candidates"] == [{"host": "lab-kvm", "location": None, "free": ["0000:41:00.0"],
                                       "models": ["NVIDIA A100 PCIe 40GB"]}]
    # No match is exit 3, as `check` exits when something blocks.
    none = json.loads(gpupass("fleet", "find", "--model", "10de:2331", "--count", "2", "--hosts", "lab-kvm",
                              "--json", expect=3).stdout)
    assert none["candidates"] == []


def test_fleet_across_platforms_with_a_host_down_and_a_wrong_password(isolated_user_dirs, monkeypatch):
    gpupass("lab", "up", "lab-hyperv")
    try:
        uri = next(r["uri"] for r in json.loads(gpupass("hosts", "list", "--json").stdout)["hosts"]
                   if r["name"] == "lab-hyperv")
        monkeypatch.setenv("WRONG_PW", "not-the-password")
        gpupass("hosts", "add", "hv-wrong-password", uri, "--password-env", "WRONG_PW")
        gpupass("hosts", "add", "kvm-down", "qemu+tcp://127.0.0.1:9/system")
        result = gpupass("fleet", "gpus", "--all", "--json", expect=4, env={**os.environ})
        rows = {r["host"]: r for r in json.loads(result.stdout)["hosts"]}
        assert rows["hv-wrong-password"]["error"]["error"] == "authentication-failed"
        assert rows["kvm-down"]["error"]["error"] == "connection-failed"
        assert {g["name"] for g in rows["lab-hyperv"]["gpus"]} >= {"NVIDIA A100 PCIe 80GB"}
        assert rows["lab-kvm"]["ok"] and rows["lab-hyperv"]["platform"] == "hyperv"
        found = json.loads(gpupass("fleet", "find", "--model", "A100", "--all", "--json", expect=4,
                                   env={**os.environ}).stdout)
        assert {c["host"] for c in found["candidates"]} == {"lab-kvm", "lab-hyperv"}
    finally:
        gpupass("lab", "down", "lab-hyperv")


def test_a_host_named_twice_is_read_once():
    # It used to wait forever (results keyed by name never reached the count): a timeout fails it instead.
    result = subprocess.run([*GPUPASS, "fleet", "gpus", "--hosts", "lab-kvm,lab-kvm", "--json"],
                            capture_output=True, text=True, stdin=subprocess.DEVNULL, timeout=60, check=True)
    assert [row["host"] for row in json.loads(result.stdout)["hosts"]] == ["lab-kvm"]
