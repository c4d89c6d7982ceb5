"""The Python API's options are typed like the config file: `live="no"` (a string, which Python takes for true) or
`share=5` is a UsageError naming the option and the type it takes, before anything is read or planned -- never an
AttributeError from deep inside, never an option silently on."""

import pytest

from gpupass import open_host
from gpupass.core.errors import UsageError
from support.fakes import FakeBackend


@pytest.mark.parametrize("options, message", [
    ({"live": "no"}, "option live must be bool, not str ('no')"),
    ({"dynamic": 1}, "option dynamic must be bool, not int (1)"),
    ({"include_companions": None}, "option include_companions must be bool, not NoneType (None)"),
    ({"share": 5}, "option share must be str | None, not int (5)"),
    ({"share": "nvidia-46", "ex_share_options": {"MinPartitionVRAM": 1}},
     "option ex_share_options must be Mapping[str, str], not dict"),
    ({"bar_sizes": 5}, "option bar_sizes must be a mapping of GPU address to its BAR sizes, not int"),
    ({"bar_sizes": ["41:00.0=16M"]}, "option bar_sizes must be a mapping of GPU address to its BAR sizes, not list"),
])
def test_an_assign_option_of_the_wrong_type_is_a_usage_error_naming_it(fake_host, options, message):
    with open_host("fake://lab") as host:
        FakeBackend.calls.clear()
        with pytest.raises(UsageError) as caught:
            host.plan("ml-train", "41:00.0", **options)
        assert message in caught.value.message
        assert FakeBackend.calls == []  # refused before the host was read


@pytest.mark.parametrize("options", [{"live": "no"}, {"disable_host_passthrough": 0}])
def test_a_release_option_of_the_wrong_type_is_a_usage_error(fake_host, options):
    with open_host("fake://lab") as host, pytest.raises(UsageError, match="must be bool"):
        host.plan_release("cad-ws", **options)


def test_options_of_the_right_types_are_taken(fake_host):
    with open_host("fake://lab") as host:
        plan = host.plan("ml-train", "41:00.0", live=False, allow_firmware_change=True,
                         bar_sizes={"41:00.0": "16M+64G+32M"})
        assert plan.vm == "ml-train" and not plan.blocked
        assert host.plan_release("cad-ws", live=False).operation == "release"
