import pytest

from gpupass.core.domain.pci import PciAddress, PciFunction
from gpupass.core.errors import UsageError


@pytest.mark.parametrize("text, expected", [
    ("0000:41:00.0", PciAddress(0, 0x41, 0, 0)),
    ("41:00.0", PciAddress(0, 0x41, 0, 0)),
    ("0001:ff:1f.7", PciAddress(1, 0xFF, 0x1F, 7)),
    ("  0000:01:00.1 ", PciAddress(0, 1, 0, 1)),
    ("0000:AB:00.0", PciAddress(0, 0xAB, 0, 0)),
])
def test_parses_full_and_short_forms(text, expected):
    assert PciAddress.parse(text) == expected


@pytest.mark.parametrize("text", ["", "41:00", "41.00.0", "0000:41:00.8", "00000:41:00.0", "pci_0000_41_00_0",
                                  "41:00.0; rm -rf /", "0000:41:20.0", "g1:00.0"])
def test_rejects_anything_else_with_the_fix(text):
    with pytest.raises(UsageError) as caught:
        PciAddress.parse(text)
    assert caught.value.remedy and "0000:41:00.0" in caught.value.remedy


def test_prints_canonical_form_and_groups_functions_by_device():
    audio = PciAddress.parse("01:00.1")
    assert str(audio) == "0000:01:00.1"
    assert audio.device == PciAddress.parse("0000:01:00.0").device
    assert audio.with_function(0) == PciAddress.parse("01:00.0")


def test_classifies_functions():
    gpu = PciFunction(PciAddress.parse("41:00.0"), 0x10DE, 0x20F1, 0x030200)
    bridge = PciFunction(PciAddress.parse("00:01.0"), 0x8086, 0x1234, 0x060400)
    audio = PciFunction(PciAddress.parse("01:00.1"), 0x10DE, 0x22BA, 0x040300)
    assert gpu.is_display and not gpu.is_bridge and gpu.kind == "3D controller" and gpu.ids == "10de:20f1"
    assert bridge.is_bridge and not bridge.is_display
    assert audio.kind == "audio device"


def test_gpus_are_display_and_processing_accelerator_classes():
    def of(class_code):
        return PciFunction(PciAddress.parse("05:00.0"), 0x1002, 0x74A1, class_code)

    assert [of(c).is_gpu for c in (0x030000, 0x030200, 0x038000, 0x120000)] == [True] * 4
    assert [of(c).is_gpu for c in (0x040300, 0x020000, 0x0C0330, 0x060000, 0x118000)] == [False] * 5


def test_bridges_by_header_type_and_by_class_where_none_is_reported():
    from gpupass.core.domain.pci import HEADER_BRIDGE, HEADER_CARDBUS, HEADER_NORMAL

    def of(class_code, header=None):
        return PciFunction(PciAddress.parse("00:01.0"), 0x1022, 0x1483, class_code, header_type=header)

    assert of(0x060400).is_bridge and of(0x060900).is_bridge and of(0x060700).is_bridge
    assert not of(0x060000).is_bridge  # a host bridge has a normal header
    assert of(0x088000, HEADER_BRIDGE).is_bridge and of(0x060000, HEADER_CARDBUS).is_bridge
    assert not of(0x060400, HEADER_NORMAL).is_bridge
