"""Every network call is bounded: against a host that accepts TCP and never answers, each backend ends with a
clear error naming the host, within the timeout configured for it (a tiny one here; nothing is timed: the
call would otherwise never end, and pytest's own run would hang)."""

from __future__ import annotations

import pytest

from gpupass.core.errors import ConnectionFailed
from gpupass.core.target import Secret, Target
from support.silent import SilentServer


@pytest.fixture
def silent():
    with SilentServer() as server:
        yield server


def test_kvm_gives_up_on_a_daemon_that_never_answers(silent):
    pytest.importorskip("libvirt")
    from gpupass.backends.kvm.backend import KvmBackend

    backend = KvmBackend(Target(uri=f"qemu+tcp://127.0.0.1:{silent.port}/system", name="frozen-kvm", timeout=0.5))
    with pytest.raises(ConnectionFailed) as caught:
        backend.inventory()
    assert "frozen-kvm" in caught.value.message and "did not answer within 0.5s" in caught.value.message
    assert "timeout" in caught.value.remedy
    backend.close()


def test_a_frozen_kvm_host_in_a_fleet_is_one_row_within_its_own_timeout_and_the_fleet_goes_on(silent):
    """In a fleet the pool's worker makes the libvirt call itself (no watchdog thread per call: core/callbounds.py);
    the host's own timeout still ends the wait (the pool's deadline here is far longer) and the other host is read."""
    pytest.importorskip("libvirt")
    import threading
    from importlib import resources

    from gpupass.backends.kvm.backend import KvmBackend
    from gpupass.core.fleet import gather

    frozen = f"qemu+tcp://127.0.0.1:{silent.port}/system"
    with resources.as_file(resources.files("gpupass.backends.kvm.lab").joinpath("lab-kvm.xml")) as lab_file:
        healthy = f"test://{lab_file}"
        before = set(threading.enumerate())

        def read(uri):
            with KvmBackend(Target(uri=uri, name="frozen-kvm" if uri == frozen else "lab", timeout=0.5)) as backend:
                return backend.inventory(), backend.round_trips

        results = gather([frozen, healthy], read, timeout=600)
    assert results[0].error is not None and results[0].seconds < 30
    assert "frozen-kvm" in results[0].error.message and "did not answer within 0.5s (connecting)" in results[0].error.message
    assert results[1].facts is not None and results[1].facts.gpus
    assert not [t for t in threading.enumerate() if t not in before and t.name == "gpupass-libvirt-call"]


def test_esxi_gives_up_on_a_vcenter_that_never_answers(silent):
    pytest.importorskip("pyVmomi")
    from gpupass.backends.esxi.backend import EsxiBackend

    target = Target(uri=f"esxi://root@127.0.0.1:{silent.port}/", name="frozen-vc", password=Secret("x"),
                    timeout=0.5)
    with pytest.raises(ConnectionFailed) as caught:
        EsxiBackend(target).inventory()
    assert "127.0.0.1" in caught.value.message and "did not answer within 0.5s" in caught.value.message


def test_hyperv_gives_up_on_a_winrm_endpoint_that_never_answers(silent):
    pytest.importorskip("winrm")
    from gpupass.backends.hyperv.backend import HypervBackend

    target = Target(uri=f"hyperv+http://admin@127.0.0.1:{silent.port}/?transport=basic", name="frozen-hv",
                    password=Secret("x"), timeout=2)
    with pytest.raises(ConnectionFailed) as caught:
        HypervBackend(target).inventory()
    assert "frozen-hv" in caught.value.message and "did not answer within 2s" in caught.value.message


def test_the_timeout_comes_from_the_hosts_config_table(tmp_path):
    from gpupass.core.config import load_config
    from gpupass.core.hosts import resolve_target
    from gpupass.core.plugins import default_registry

    path = tmp_path / "config.toml"
    path.write_text('[hosts.slow]\nuri = "qemu+ssh://admin@node7/system"\ntimeout = 7.5\n', encoding="utf-8")
    assert resolve_target("slow", load_config(path), default_registry()).timeout == 7.5
    path.write_text('[hosts.bad]\nuri = "qemu+ssh://admin@node7/system"\ntimeout = 0\n', encoding="utf-8")
    from gpupass.core.errors import UsageError

    with pytest.raises(UsageError, match="timeout must be more than 0"):
        load_config(path)
