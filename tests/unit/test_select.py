"""Every GPU identifier gpupass prints is accepted back; ambiguity is an error that lists the candidates."""

import dataclasses

import pytest

from gpupass.core.domain.inventory import HostFacts
from gpupass.core.domain.select import GpuSelector, model_matches, parse_selectors, qualified
from gpupass.core.errors import NotFound, UsageError
from support.fakes import A, facts, gpu, vm


def two_host_facts() -> HostFacts:
    """A vCenter-like endpoint: 0000:3b:00.0 exists on both hosts, as in lab-esxi."""
    h100 = dataclasses.replace(gpu("3b:00.0", device=0x2330, model="NVIDIA H100 SXM5 80GB"), location="esx01.lab")
    a100 = dataclasses.replace(gpu("3b:00.0", device=0x20B5, model="NVIDIA A100 PCIe 80GB"), location="esx02.lab")
    a100b = dataclasses.replace(gpu("af:00.0", device=0x20B5, model="NVIDIA A100 PCIe 80GB"), location="esx02.lab")
    base = facts([h100, a100, a100b], [vm("ml-train")])
    on_01 = dataclasses.replace(base.vms[0], location="esx01.lab")
    return dataclasses.replace(base, vms=(on_01, dataclasses.replace(on_01, name="web", location="esx02.lab")))


def resolve(text, f, vm_location=None):
    return GpuSelector(text).resolve(f, "lab-x", vm_location)


def test_model_match_is_word_aware():
    assert model_matches("NVIDIA A100 PCIe 80GB", "A100 80GB")
    assert model_matches("NVIDIA A100 PCIe 80GB", "a100")
    assert not model_matches("NVIDIA A100 PCIe 80GB", "A10")
    assert not model_matches("NVIDIA A100 PCIe 40GB", "A100 80GB")
    assert not model_matches("NVIDIA A100", "")


def test_every_printed_form_names_the_same_gpu():
    f = facts([gpu("42:00.0", device=0x2331, model="NVIDIA H100 PCIe"),
               gpu("41:00.0", model="NVIDIA A100 PCIe 40GB", group=2)], [vm("ml-train")])
    for text in ("0000:42:00.0", "42:00.0", "pci_0000_42_00_0", "10de:2331", "H100", "h100 pcie"):
        assert resolve(text, f).address == A("42:00.0"), text


def test_host_qualified_address_round_trips():
    f = two_host_facts()
    for g in f.gpus:
        assert resolve(qualified(g), f) == g
    assert resolve("esx02.lab/3b:00.0", f).model == "NVIDIA A100 PCIe 80GB"


def test_address_on_two_hosts_is_ambiguous_unless_the_vm_runs_on_one():
    f = two_host_facts()
    with pytest.raises(UsageError) as caught:
        resolve("0000:3b:00.0", f)
    assert "esx01.lab/0000:3b:00.0" in caught.value.message and "esx02.lab/0000:3b:00.0" in caught.value.message
    assert resolve("0000:3b:00.0", f, vm_location="esx02.lab").location == "esx02.lab"


def test_model_matching_several_gpus_lists_them():
    with pytest.raises(UsageError, match="matches 2 GPUs.*esx02.lab/0000:3b:00.0.*esx02.lab/0000:af:00.0"):
        resolve("A100", two_host_facts())
    with pytest.raises(UsageError, match="matches 2 GPUs"):
        resolve("10de:20b5", two_host_facts())


def test_unknown_gpu_suggests_close_names():
    f = facts([gpu("42:00.0", device=0x2331, model="NVIDIA H100 PCIe")], [vm("ml-train")])
    with pytest.raises(NotFound) as caught:
        resolve("0000:42:00.1", f)
    assert "did you mean '0000:42:00.0'" in caught.value.remedy and "gpupass gpus lab-x" in caught.value.remedy
    with pytest.raises(NotFound):
        resolve("V100", f)


def test_companion_named_is_refused_with_the_gpu_to_name():
    f = facts([gpu("01:00.0", companions=["01:00.1"])], [vm("ml-train")])
    with pytest.raises(UsageError, match="audio device of GPU 0000:01:00.0"):
        resolve("01:00.1", f)


def test_location_path_names_a_hyperv_gpu_and_its_companion_is_refused():
    path, audio = "PCIROOT(40)#PCI(0100)#PCI(0000)", "PCIROOT(40)#PCI(0100)#PCI(0001)"
    g = dataclasses.replace(gpu("0040:12:00.0", companions=["0040:12:00.1"]),
                            extra={"location_path": path, "location_paths": [path, audio]})
    f = facts([g], [vm("ml-train")])
    assert resolve(path.lower(), f) == g
    assert qualified(g) == path
    with pytest.raises(UsageError, match="companion"):
        resolve(audio, f)


def test_a_mistyped_address_is_reported_before_the_host_is_asked():
    with pytest.raises(UsageError, match="not a PCI address"):
        parse_selectors(["41:00"])
    with pytest.raises(UsageError, match="empty"):
        parse_selectors([" "])
