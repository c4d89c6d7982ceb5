"""An ESXi host's seconds options (`reboot_timeout_s`, `maintenance_timeout_s`, `task_timeout_s` in its [hosts.NAME] options
checked when the host is opened: a bad one is a usage error naming it, before any write -- not a ValueError from
int() after the run's intent record and passthrough switch were written. Nothing here connects."""

import pytest

pytest.importorskip("pyVmomi", reason="the esxi backend needs pyvmomi (pip install 'gpupass[esxi]')")

from gpupass.backends.esxi.backend import EsxiBackend  # noqa: E402
from gpupass.core.errors import UsageError  # noqa: E402
from gpupass.core.target import Target  # noqa: E402


def opened(**options):
    return EsxiBackend(Target(uri="esxi://root@127.0.0.1:1", name="vc", options=options))


@pytest.mark.parametrize("name", ["maintenance_timeout_s", "reboot_timeout_s", "task_timeout_s"])
@pytest.mark.parametrize("value", ["abc", "600", 0, -1, True, None, float("inf"), float("nan"), 86401])
def test_a_seconds_option_that_is_no_bounded_number_is_refused_when_the_host_is_opened(name, value):
    with pytest.raises(UsageError) as caught:
        opened(**{name: value})
    assert f"option {name} of host vc must be a number of seconds above 0 and at most 86400" in caught.value.message
    assert repr(value) in caught.value.message and f"set {name} = 900" in caught.value.remedy


def test_numbers_of_seconds_within_a_day_are_taken():
    backend = opened(maintenance_timeout_s=0.5, reboot_timeout_s=86400)
    assert backend._seconds_option("maintenance_timeout_s", 600.0) == 0.5
    assert opened()._seconds_option("maintenance_timeout_s", 600.0) == 600.0
