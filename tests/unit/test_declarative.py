"""The assignments file: strict parsing with line numbers, and the changes that converge a host to it."""

import pytest

from gpupass.core.declarative import FileCannotBeMet, FileError, changes_for_host, dump, export, parse
from support.fakes import A, lab_facts

GOOD = """\
version: 1
assignments:
  - host: lab
    vm: ml-train
    gpus: [0000:41:00.0]          # unquoted: must not become a base-60 number
  - host: lab
    vm: cad-ws
    model: Fake GPU
    count: 1
    options: {hide_hypervisor: true}
"""


def test_parses_addresses_models_and_options_with_lines():
    first, second = parse(GOOD, "a.yaml")
    assert first.gpus == (A("41:00.0"),) and first.line == 3
    assert second.model == "Fake GPU" and second.count == 1 and second.options.hide_hypervisor
    assert second.line == 6


@pytest.mark.parametrize("text, line, message", [
    ("assignments:\n  - host: h\n    vm: v\n    gpus: [41:00]\n", 4, "is not a PCI address"),
    ("assignments:\n  - host: h\n    vm: v\n    gpu: [41:00.0]\n", 4, "unknown key 'gpu'"),
    ("assignments:\n  - host: h\n    gpus: [41:00.0]\n", 2, "without `vm`"),
    ("assignments:\n  - host: h\n    vm: v\n", 2, "either `gpus`"),
    ("assignments:\n  - host: h\n    vm: v\n    model: A100\n    count: zero\n", 5, "not a positive number"),
    ("assignments:\n  - host: h\n    vm: v\n    model: A100\n    options: {live: yes}\n", 5, "unknown option 'live'"),
    ("assignments:\n  - {host: h, vm: v, gpus: [41:00.0]}\n  - {host: h, vm: v, gpus: [42:00.0]}\n", 3,
     "listed twice (first at line 2)"),
    ("assignments: [\n", 2, "not valid YAML"),
    ("hosts: []\n", 1, "unknown key 'hosts'"),
    ("assignments:\n  - host: h\n    vm: v\n    host: g\n    gpus: [41:00.0]\n", 4,
     "duplicate key 'host' (first at line 2)"),
    ("assignments: []\nversion: 1\nassignments: []\n", 3, "duplicate key 'assignments' (first at line 1)"),
    ("assignments:\n  - {host: h, vm: v, model: A, options: {dynamic: true, dynamic: false}}\n", 2,
     "duplicate key 'dynamic'"),
    ("? [a, b]\n: 1\n", 1, "expected a single value here"),
])
def test_errors_point_at_the_line(text, line, message):
    with pytest.raises(FileError) as caught:
        parse(text, "f.yaml")
    assert caught.value.line == line and message in caught.value.message
    assert caught.value.message.startswith(f"f.yaml:{line}: ")


def test_one_gpu_for_two_vms_of_one_machine_is_refused_at_the_second_entry():
    # checked once the host is read, on each VM's machine (an ESXi vCenter repeats addresses across its hosts:
    # tests/integration/esxi/test_esxi_apply_shares_midway.py), before any change is planned
    text = ("assignments:\n  - {host: lab, vm: ml-train, gpus: [41:00.0]}\n"
            "  - {host: lab, vm: render01, gpus: [\"0000:41:00.0\"]}\n")
    entries = parse(text, "f.yaml")
    with pytest.raises(FileError) as caught:
        changes_for_host("lab", lab_facts(), entries, "f.yaml")
    assert caught.value.line == 3
    assert "GPU 0000:41:00.0 on lab is given to both 'ml-train' (line 2) and 'render01'" in caught.value.message


def test_the_exported_state_is_in_sync_with_itself():
    facts = lab_facts()
    rows = export("lab", facts)
    assert rows == [{"host": "lab", "vm": "cad-ws", "gpus": ["0000:01:00.0"]}]
    assert changes_for_host("lab", facts, parse(dump(rows))) == []


def test_changes_release_first_then_assign():
    wanted = parse("assignments:\n  - {host: lab, vm: ml-train, gpus: [\"41:00.0\"]}\n")
    changes = changes_for_host("lab", lab_facts(), wanted)
    assert [(c.operation, c.vm, [str(a) for a in c.gpus]) for c in changes] == [
        ("release", "cad-ws", ["0000:01:00.0"]), ("assign", "ml-train", ["0000:41:00.0"])]


def test_model_and_count_pick_free_isolated_gpus_or_say_why_not():
    wanted = parse("assignments:\n  - {host: lab, vm: cad-ws, gpus: [\"01:00.0\"]}\n"
                   "  - {host: lab, vm: ml-train, model: A100, count: 1}\n")
    assert [(c.vm, [str(a) for a in c.gpus]) for c in changes_for_host("lab", lab_facts(), wanted)] == [
        ("ml-train", ["0000:41:00.0"])]
    # The lab has one A100: two is more than any release could free, a mistake in the file (exit 2, its line).
    too_many = parse("assignments:\n  - {host: lab, vm: cad-ws, gpus: [\"01:00.0\"]}\n"
                     "  - {host: lab, vm: ml-train, model: A100, count: 2}\n")
    with pytest.raises(FileError, match=r":3: count 2 asks for more A100 GPUs than lab has \(1\)"):
        changes_for_host("lab", lab_facts(), too_many)


def test_unknown_vm_or_gpu_points_at_the_entry():
    with pytest.raises(FileError, match=r"f.yaml:2: no VM named 'nope'"):
        changes_for_host("lab", lab_facts(), parse("assignments:\n  - {host: lab, vm: nope, gpus: [\"41:00.0\"]}\n",
                                                   "f.yaml"), "f.yaml")
    with pytest.raises(FileError, match="no GPU at 0000:77:00.0"):
        changes_for_host("lab", lab_facts(), parse("assignments:\n  - {host: lab, vm: ml-train, gpus: [\"77:00.0\"]}\n"))


def test_a_gpu_named_for_one_vm_is_not_picked_by_model_for_another():
    wanted = parse("assignments:\n  - {host: lab, vm: ml-train, model: A100, count: 1}\n"
                   "  - {host: lab, vm: render01, gpus: [\"41:00.0\"]}\n  - {host: lab, vm: cad-ws, gpus: [\"01:00.0\"]}\n")
    with pytest.raises(FileCannotBeMet, match="has 0 free A100 GPU") as caught:
        changes_for_host("lab", lab_facts(), wanted)
    assert caught.value.exit_code == 3  # the file is fine; the host cannot meet it now, and nothing was changed


def test_after_releases_frees_the_released_cards_and_their_companions():
    from gpupass.core.declarative import after_releases

    changes = changes_for_host("lab", lab_facts(), parse("assignments:\n  - {host: lab, vm: ml-train, gpus: [\"01:00.0\"]}\n"))
    after = after_releases(lab_facts(), changes)
    assert [g.assigned_to for g in after.gpus] == [None, None, None]
    assert after.find_vm("cad-ws").assigned == () and after.find_vm("ml-train") == lab_facts().find_vm("ml-train")
