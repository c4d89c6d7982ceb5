"""Shares in the assignments file: parsed strictly, and checked as a whole against each GPU before any write."""

import dataclasses

import pytest

from gpupass.core.declarative import FileError, after_releases, changes_for_host, dump, export, parse
from gpupass.core.domain.sharing import Share, ShareMode, ShareType, Sharing
from support.fakes import facts, gpu, vm

ONE_Q = ShareType("nvidia-46", "GRID P40-1Q", ShareMode.MDEV, available=1)
TWO_Q = ShareType("nvidia-47", "GRID P40-2Q", ShareMode.MDEV, available=5)


def host(*shares: Share, one_type=True):
    card = dataclasses.replace(gpu("0000:81:00.0"), sharing=Sharing((ONE_Q, TWO_Q), shares, one_type))
    return facts(gpus=[card, gpu("0000:41:00.0")], vms=[vm("a"), vm("b"), vm("c")])


def file(*lines: str):
    return parse("assignments:\n" + "".join(f"  - {line}\n" for line in lines), "f.yaml")


@pytest.mark.parametrize("entry, message, fix", [
    ("{host: h, vm: a, shares: {gpu: 81:00.0}}", "`shares` must be a list", "shares: [{gpu:"),
    ("{host: h, vm: a, shares: [{gpu: \"81:00.0\"}]}", "share without `type`", "`gpupass gpus HOST --json`"),
    ("{host: h, vm: a, shares: [{gpu: \"81:00.0\", type: x, size: 2}]}", "unknown key 'size'", "a share has `gpu`"),
    ("{host: h, vm: a, shares: [{gpu: \"81:00\", type: x}]}", "not a PCI address", ""),
    ("{host: h, vm: a, shares: [{gpu: \"81:00.0\", type: x}, {gpu: \"81:00.0\", type: y}]}",
     "GPU 0000:81:00.0 is shared with this VM twice", "one share of a GPU"),
])
def test_bad_share_entries_name_the_problem_and_the_fix(entry, message, fix):
    with pytest.raises(FileError) as error:
        file(entry)
    assert error.value.message.startswith("f.yaml:2: ") and message in error.value.message
    assert fix in (error.value.remedy or "")


def test_a_gpu_given_whole_and_shared_is_refused():
    wanted = file('{host: h, vm: a, gpus: ["81:00.0"]}', '{host: h, vm: b, shares: [{gpu: "81:00.0", type: P40-1Q}]}')
    with pytest.raises(FileError, match=r"f.yaml:3: GPU 0000:81:00.0 on h is given whole to 'a' \(line 2\) and "
                                        "shared with 'b'"):
        changes_for_host("h", host(), wanted, "f.yaml")


def test_more_shares_than_the_gpu_has_room_for_are_refused_at_the_entry_too_many():
    wanted = file('{host: h, vm: a, shares: [{gpu: "81:00.0", type: P40-1Q}]}',
                  '{host: h, vm: b, shares: [{gpu: "81:00.0", type: nvidia-46}]}')
    with pytest.raises(FileError, match=r"f.yaml:3: GPU 0000:81:00.0 on h has room for 1 more nvidia-46 share\(s\) "
                                        "and the file asks for 2"):
        changes_for_host("h", host(), wanted, "f.yaml")
    # A share created ahead and given to no VM counts as room.
    assert len(changes_for_host("h", host(Share("m1", "nvidia-46", ShareMode.MDEV)), wanted, "f.yaml")) == 2


def test_two_types_on_a_one_type_gpu_are_refused_unless_the_file_frees_the_other():
    held = Share("m1", "nvidia-47", ShareMode.MDEV, holder="c")
    wanted = file('{host: h, vm: a, shares: [{gpu: "81:00.0", type: P40-1Q}]}')
    with pytest.raises(FileError, match="one type at a time and would hold nvidia-46, nvidia-47"):
        changes_for_host("h", host(held), [*wanted, *file('{host: h, vm: c, shares: [{gpu: "81:00.0", type: nvidia-47}]}')])
    changes = changes_for_host("h", host(held), wanted)  # c is not listed: its share is taken back first
    assert [(c.operation, c.vm, c.share, c.reason) for c in changes] == [
        ("release", "c", "nvidia-47", "not in the file"), ("assign", "a", "P40-1Q", "wanted by the file")]
    after = after_releases(host(held), changes)
    assert after.gpus[0].sharing.shares == (dataclasses.replace(held, holder=None),)


def test_an_unknown_type_names_the_types_the_gpu_offers():
    with pytest.raises(FileError, match="offers no share type 'A100-4C'") as error:
        changes_for_host("h", host(), file('{host: h, vm: a, shares: [{gpu: "81:00.0", type: A100-4C}]}'))
    assert "nvidia-46 (GRID P40-1Q), nvidia-47 (GRID P40-2Q)" in (error.value.remedy or "")
    with pytest.raises(FileError, match="offers no share type 'P40-1Q'") as error:
        changes_for_host("h", host(), file('{host: h, vm: a, shares: [{gpu: "41:00.0", type: P40-1Q}]}'))
    assert "give it whole" in (error.value.remedy or "")


def test_a_listed_vm_keeps_exactly_its_listed_share_and_a_changed_type_is_released_then_given():
    held = host(Share("m1", "nvidia-46", ShareMode.MDEV, holder="a"))
    rows = export("h", held)
    assert rows == [{"host": "h", "vm": "a", "shares": [{"gpu": "0000:81:00.0", "type": "nvidia-46"}]}]
    assert changes_for_host("h", held, parse(dump(rows))) == []
    assert changes_for_host("h", held, file('{host: h, vm: a, shares: [{gpu: "81:00.0", type: GRID P40-1Q}]}')) == []
    changes = changes_for_host("h", held, file('{host: h, vm: a, shares: [{gpu: "81:00.0", type: P40-2Q}]}'))
    assert [(c.operation, c.share) for c in changes] == [("release", "nvidia-46"), ("assign", "P40-2Q")]
    changes = changes_for_host("h", held, file('{host: h, vm: a, gpus: ["41:00.0"]}'))  # listed without shares
    assert [(c.operation, c.share, c.reason) for c in changes] == [
        ("release", "nvidia-46", "not wanted by the file"), ("assign", None, "wanted by the file")]
