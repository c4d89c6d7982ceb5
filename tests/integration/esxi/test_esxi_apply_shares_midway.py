"""`apply` of a file with several vGPU share changes whose write fails half-way (the ESXi host vanishes as the second
change reaches it, vcsim's /gpupass/disconnect): the error says exactly which changes were made, which failed and was
undone, and which were not made; the host holds exactly that, nothing half-applied."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from gpupass.backends.esxi.lab.simulator import lab_config
from gpupass.core.cli.main import cli

pytest.importorskip("pyVmomi")

from tests.integration.esxi.test_esxi_vgpu_backend import ESX03  # noqa: E402
from tests.integration.esxi.test_esxi_vgpu_vcsim import new_vm  # noqa: E402


@pytest.fixture
def run(fresh_vcsim, tmp_path, monkeypatch):
    cfg = lab_config()
    new_vm(cfg, "ws2")
    sim = fresh_vcsim(cfg)
    config = tmp_path / "config.toml"
    config.write_text(f'[hosts.vc]\nuri = "esxi://gpupass@127.0.0.1:{sim.port}/Lab"\npassword_env = "VC_TEST_PASSWORD"\n'
                      f'ca_file = "{sim.ca_file}"\n')
    config.chmod(0o600)
    monkeypatch.setenv("GPUPASS_CONFIG", str(config))
    monkeypatch.setenv("GPUPASS_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setenv("VC_TEST_PASSWORD", sim.password)
    runner = CliRunner()

    def invoke(*args: str, code: int = 0):
        result = runner.invoke(cli, list(args), catch_exceptions=False)
        assert result.exit_code == code, result.output
        return result.output

    invoke.sim = sim
    return invoke


def shares(run):
    return {(g["location"], g["address"], s["holder"], s["type"])
            for g in json.loads(run("gpus", "vc", "--json"))["gpus"] for s in g["sharing"]["shares"] if s["holder"]}


def test_a_share_write_failing_half_way_reports_exactly_what_changed(run, tmp_path):
    rows = json.loads(run("export", "vc", "--json"))["assignments"]
    before = shares(run)
    assert (ESX03, "0000:af:00.0", "ml-vgpu", "grid_p40-4c") in before
    # ml-vgpu leaves the file (its 4C is given back); infer01 and ws2 each get a 4C on the idle P40
    kept = [row for row in rows if row["vm"] != "ml-vgpu"]
    wanted = kept + [{"host": "vc", "vm": vm, "shares": [{"gpu": "af:00.0", "type": "P40-4C"}]}
                     for vm in ("infer01", "ws2")]
    path = tmp_path / "gpus.yaml"
    path.write_text("assignments:\n" + "".join(f"  - {json.dumps(row)}\n" for row in wanted))
    planned = json.loads(run("diff", str(path), "--json", code=5))["changes"]
    assert [(c["operation"], c["vm"]) for c in planned] == [("release", "ml-vgpu"), ("assign", "infer01"),
                                                             ("assign", "ws2")]
    # The first change writes (a release sends no QueryConfigTarget); the host vanishes as the second one asks it
    # whether it still offers the profile, before that change writes anything.
    run.sim.disconnect_host(ESX03, after="QueryConfigTarget")
    document = json.loads(run("apply", str(path), "--yes", "--json", code=1))
    assert document["error"] == "apply-incomplete" and document["changed"] is True
    assert [(r["operation"], r["vm"], r["changed"]) for r in document["results"]] == [("release", "ml-vgpu", True)]
    assert (document["failed"]["vm"], document["failed"]["error"]["rolled_back"]) == ("infer01", True)
    assert [(c["operation"], c["vm"]) for c in document["not_done"]] == [("assign", "ws2")]
    run.sim.reconnect_host(ESX03)
    # exactly the first change on the host: ml-vgpu's vGPU gone, nothing of infer01's or ws2's
    assert shares(run) == before - {(ESX03, "0000:af:00.0", "ml-vgpu", "grid_p40-4c")}
    left = json.loads(run("diff", str(path), "--json", code=5))["changes"]
    assert [(c["operation"], c["vm"]) for c in left] == [("assign", "infer01"), ("assign", "ws2")]
    # and a second apply finishes the file
    assert json.loads(run("apply", str(path), "--yes", "--json"))["changed"] is True
    assert shares(run) == (before - {(ESX03, "0000:af:00.0", "ml-vgpu", "grid_p40-4c")}) | {
        (ESX03, "0000:af:00.0", "infer01", "grid_p40-4c"), (ESX03, "0000:af:00.0", "ws2", "grid_p40-4c")}
    assert run("diff", str(path)).startswith("in sync")


def test_the_text_report_names_each_change_made_failed_and_not_done(run, tmp_path):
    rows = json.loads(run("export", "vc", "--json"))["assignments"]
    kept = [row for row in rows if row["vm"] != "ml-vgpu"]
    wanted = kept + [{"host": "vc", "vm": vm, "shares": [{"gpu": "af:00.0", "type": "P40-4C"}]}
                     for vm in ("infer01", "ws2")]
    path = tmp_path / "gpus.yaml"
    path.write_text("assignments:\n" + "".join(f"  - {json.dumps(row)}\n" for row in wanted))
    run.sim.disconnect_host(ESX03, after="QueryConfigTarget")
    out = run("apply", str(path), "--yes", code=1)
    assert "apply stopped at change 2 of 3" in out and "that change was undone" in out
    assert "changed before it (1):\n  - vc: release a grid_p40-4c share of 0000:af:00.0 from ml-vgpu" in out
    assert "not done (1):\n  + vc: assign a P40-4C share of 0000:af:00.0 to ws2" in out


def test_gpus_at_one_address_on_two_esxi_hosts_are_two_gpus_to_apply(run, tmp_path):
    """esx01's H100 and esx02's A100 are both at 0000:3b:00.0: a file that keeps cad-ws's (esx01) and gives ml-train
    (esx02) its own host's is no GPU given twice; the same address twice on one host still is."""
    rows = json.loads(run("export", "vc", "--json"))["assignments"]
    cad = next(row for row in rows if row["vm"] == "cad-ws")
    assert cad["gpus"] == ["0000:3b:00.0"]
    path = tmp_path / "gpus.yaml"
    wanted = rows + [{"host": "vc", "vm": "ml-train", "gpus": ["0000:3b:00.0"]}]
    path.write_text("assignments:\n" + "".join(f"  - {json.dumps(row)}\n" for row in wanted))
    planned = json.loads(run("diff", str(path), "--json", code=5))["changes"]
    assert [(c["operation"], c["vm"], c["gpus"]) for c in planned] == [("assign", "ml-train", ["0000:3b:00.0"])]
    run("apply", str(path), "--yes")
    owners = {(g["location"], g["address"]): g["assigned_to"] for g in json.loads(run("gpus", "vc", "--json"))["gpus"]}
    assert owners[("esx01.lab.local", "0000:3b:00.0")] == "cad-ws"
    assert owners[("esx02.lab.local", "0000:3b:00.0")] == "ml-train"
    # render01 is on esx02 too: the same address for it and ml-train is one GPU for two VMs
    wanted.append({"host": "vc", "vm": "render01", "gpus": ["0000:3b:00.0"]})
    path.write_text("assignments:\n" + "".join(f"  - {json.dumps(row)}\n" for row in wanted))
    refused = run("diff", str(path), code=2)
    assert "GPU 0000:3b:00.0 on vc (esx02.lab.local) is given to both 'ml-train'" in refused
