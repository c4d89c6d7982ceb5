"""The note a release of several GPUs' partitions leaves in a VM's notes (backends/hyperv/records.py): what `status`
says of it, read from the text the inventory returns (the notes from the first GPU-P note on)."""
from __future__ import annotations

import json

from gpupass.backends.hyperv.records import partition_releases, read_count_intent, read_release_intent
from gpupass.backends.hyperv.scripts import COUNT_BEGIN, RECORD_END, RELEASE_BEGIN
from gpupass.core.domain.pci import PciAddress

VM_ID = "6F1C1A52-3F0E-4D5E-9A51-0C8E6B7D1A01"
A, B = "\\\\?\\PCI#VEN_10DE&DEV_2504#4&23b96b75&0&0008#{x}\\GPUPARAV", "\\\\?\\PCI#VEN_10DE&DEV_20B5#4&1c2e&0&0010#{x}\\GP"
GPUS = {A.lower(): PciAddress.parse("0000:83:00.0"), B.lower(): PciAddress.parse("0040:a4:00.0")}


def note(gpus: object, vm_id: str = VM_ID) -> str:
    return RELEASE_BEGIN + json.dumps({"VMId": vm_id, "Gpus": gpus}) + RECORD_END


def vm(intent: str | None, partitions: list[str]) -> dict[str, object]:
    return {"Name": "ml-train", "Id": VM_ID.lower(), "Intent": intent, "Partitions": partitions}


def test_a_release_stopped_between_its_steps_names_what_is_still_held_and_the_release_that_finishes_it():
    ((text, only_note),) = partition_releases([vm(note([A, B]), [B])], GPUS, "hv").values()
    assert "still holds partitions of GPU 0040:a4:00.0" in text and "`gpupass release hv ml-train 0040:a4:00.0`" in text
    assert only_note is None


def test_one_stopped_after_its_last_removal_leaves_the_note_alone_which_a_release_naming_a_gpu_takes_out():
    ((text, only_note),) = partition_releases([vm(note([A, B]), [])], GPUS, "hv").values()
    assert "holds none of them" in text and "`gpupass release hv ml-train 0000:83:00.0`" in text
    assert only_note == A


def test_a_note_damaged_or_copied_from_another_vm_is_shown_with_what_is_wrong():
    assert read_release_intent(RELEASE_BEGIN + '{"VMId":', VM_ID).startswith("it has no end marker")
    assert "another VM" in str(read_release_intent(note([A], vm_id="00000000-0000-0000-0000-000000000000"), VM_ID))
    assert read_release_intent(note(A), VM_ID) == (A,)       # one GPU written as a plain string is read too
    ((text, only_note),) = partition_releases([vm(note([]), [A])], GPUS, "hv").values()
    assert "cannot be used" in text and only_note is None


def test_both_gpu_p_notes_are_read_from_the_same_text_in_either_order():
    count = COUNT_BEGIN + json.dumps({"VMId": VM_ID, "Gpu": A, "From": 32, "To": 16}) + RECORD_END
    for text in (count + "\n" + note([A, B]), note([A, B]) + "\n" + count):
        assert read_release_intent(text, VM_ID) == (A, B)
        change = read_count_intent(text, VM_ID)
        assert not isinstance(change, str) and change is not None and (change.was, change.to) == (32, 16)
