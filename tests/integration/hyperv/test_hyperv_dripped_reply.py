"""Every WinRM call bounded as a whole (issue 10): a reply that comes one byte at a time, each well within pywinrm's
socket timeout, used to keep a request -- and gpupass -- alive for as long as it dripped (here a reply of a few KB, a
byte every half second: most of an hour; without the bound these tests hang). gpupass cuts each request off at its
call's deadline, the host's timeout (backends/hyperv/bounds.py): the error names the host, says the outcome is not
known and how to give a slow host more time; a write is then read back over a new connection (core: Backend.observe).
Real pywinrm (Basic and NTLM with message encryption) against the lab endpoint, whose drip_reply_of_next sends the reply
a byte at a time."""
from __future__ import annotations

import time

import pytest

from gpupass.backends.hyperv.backend import HypervBackend
from gpupass.core import plugins
from gpupass.core.domain.request import AssignmentRequest
from gpupass.core.errors import ConnectionFailed, OperationFailed
from gpupass.core.service import execute, make_plan
from gpupass.core.target import Secret, Target
from hyperv_helpers import PASSWORD, USER, rtx_host

INVENTORY = "Get-VMHostAssignableDevice"              # the inventory script's
ASSIGN_SCRIPT = "Add-VMAssignableDevice -LocationPath $p -VM $v"
TIMEOUT = 2                                            # the host's timeout: each call's, as a whole


def backend_on(ep, auth: str = "basic") -> HypervBackend:
    transport = "basic" if auth == "basic" else "ntlm"
    return HypervBackend(Target(uri=f"hyperv+http://{USER}@127.0.0.1:{ep.port}/?transport={transport}",
                                name="hv-drip", password=Secret(PASSWORD), timeout=TIMEOUT))


def assert_cut_naming_the_host(error: ConnectionFailed, took: float) -> None:
    assert "hv-drip" in error.message and "did not finish its reply within the 2 s it has" in error.message, error
    assert "not known" in error.message
    assert "timeout" in (error.remedy or "") and "gpupass status hv-drip" in (error.remedy or "")
    assert took < 20, took     # the host's 2 s, its margin, and the handshake: not the hour the drip would take


def test_a_reply_dripped_a_byte_at_a_time_is_cut_off_at_the_calls_deadline(endpoint_factory, auth):
    ep = endpoint_factory(rtx_host(), auth)
    backend = backend_on(ep, auth)
    ep.drip_reply_of_next(INVENTORY, interval=0.5)
    began = time.monotonic()
    with pytest.raises(ConnectionFailed) as caught:
        backend.inventory()
    assert_cut_naming_the_host(caught.value, time.monotonic() - began)
    assert ep.dripping.is_set() and ep.drip_cut.wait(10)   # the connection was cut, not left dripping
    # the next call opens a session of its own, and the host answers it
    assert backend.inventory().find_vm("ml-train") is not None


def test_a_shell_whose_creation_reply_drips_is_cut_off_too(endpoint_factory):
    ep = endpoint_factory(rtx_host(), "basic")
    backend = backend_on(ep)
    ep.drip_reply_of_next(shell=True, interval=0.5)
    began = time.monotonic()
    with pytest.raises(ConnectionFailed) as caught:
        backend.inventory()
    assert_cut_naming_the_host(caught.value, time.monotonic() - began)
    assert ep.drip_cut.wait(10)


def test_an_assign_whose_reply_drips_is_read_back_over_a_new_connection_and_undone(endpoint_factory):
    """The host ran the assign; its reply dripped and was cut off: gpupass reads the host again (a new session), finds
    the assignment made and undoes it -- the VM exactly as it was, and said so."""
    ep = endpoint_factory(rtx_host(), "basic")
    backend = backend_on(ep)
    facts = backend.inventory()
    rtx = next(g for g in facts.gpus if "4090" in g.function.name)
    plan = make_plan(backend, facts, AssignmentRequest("ml-train", (rtx.address,)), plugins.default_registry())
    before = ep.model.to_dict()
    ep.drip_reply_of_next(ASSIGN_SCRIPT, interval=0.5)
    began = time.monotonic()
    with pytest.raises(OperationFailed) as caught:
        execute(backend, plan)
    took = time.monotonic() - began
    cause = caught.value.__cause__
    assert isinstance(cause, ConnectionFailed)
    assert_cut_naming_the_host(cause, took)
    assert caught.value.rolled_back is True, caught.value.message
    assert "the failed step had gone through and was undone" in caught.value.message
    assert ep.model.to_dict() == before


def test_over_https_the_dripped_reply_is_cut_off_and_the_certificate_still_checked(tmp_path):
    """HTTPS, as on 5986: the TLS socket is shut down at the deadline the same way, and the bound leaves TLS as it was
    (the listener's CA trusted: it works; another CA: refused as before, from requests' SSLError)."""
    import ssl

    from requests.exceptions import SSLError

    from gpupass.backends.esxi.lab.simulator import make_tls_material  # a throw-away CA and server certificate
    from gpupass.backends.hyperv.lab.wsman import serve
    from gpupass.core.target import TlsOptions

    material, other = make_tls_material(tmp_path / "host"), make_tls_material(tmp_path / "other")
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(material["cert"], material["key"])
    with serve(rtx_host(), auth="basic", users={USER: PASSWORD}, tls=context) as ep:
        uri = f"hyperv://{USER}@127.0.0.1:{ep.port}/?transport=basic"

        def backend(ca: str) -> HypervBackend:
            return HypervBackend(Target(uri=uri, name="hv-drip", password=Secret(PASSWORD), timeout=TIMEOUT,
                                        tls=TlsOptions(ca_file=ca)))
        trusted = backend(str(material["ca"]))
        ep.drip_reply_of_next(INVENTORY, interval=0.5)
        began = time.monotonic()
        with pytest.raises(ConnectionFailed) as caught:
            trusted.inventory()
        assert_cut_naming_the_host(caught.value, time.monotonic() - began)
        assert ep.drip_cut.wait(10)
        assert trusted.inventory().gpus
        trusted.close()
        with pytest.raises(ConnectionFailed) as refused:
            backend(str(other["ca"])).inventory()
        assert isinstance(refused.value.__cause__, SSLError) and "--ca-file" in (refused.value.remedy or "")


def test_the_cli_names_the_host_and_the_timeout_to_raise_and_exits_1(endpoint_factory, tmp_path):
    """`gpupass gpus NAME` of a host in the config file (its `timeout` 2 s) whose reply drips: a clean error on stderr
    naming the host and the config key that gives it more time, exit 1 (ConnectionFailed), in seconds, not the hour."""
    import os
    import subprocess

    from support.cli import GPUPASS

    ep = endpoint_factory(rtx_host(), "basic")
    config = tmp_path / "config.toml"
    config.write_text(f'[hosts.hvdrip]\nuri = "hyperv+http://{USER}@127.0.0.1:{ep.port}/?transport=basic"\n'
                      f"timeout = {TIMEOUT}\n", encoding="utf-8")
    ep.drip_reply_of_next(INVENTORY, interval=0.5)
    began = time.monotonic()
    run = subprocess.run([*GPUPASS, "--config", str(config), "gpus", "hvdrip"], capture_output=True, text=True,
                         stdin=subprocess.DEVNULL, timeout=120, env={**os.environ, "GPUPASS_PASSWORD": PASSWORD})
    assert run.returncode == 1, run.stdout + run.stderr
    assert "hvdrip" in run.stderr and "did not finish its reply" in run.stderr and "timeout" in run.stderr, run.stderr
    assert "Traceback" not in run.stderr and time.monotonic() - began < 40
