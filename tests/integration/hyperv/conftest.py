"""Fixtures for the Hyper-V infrastructure tests: a lab model, a WS-Management endpoint, pywinrm sessions."""
from __future__ import annotations

import pytest

from gpupass.backends.hyperv.lab.hostmodel import HostModel, lab_host
from gpupass.backends.hyperv.lab.wsman import serve
from hyperv_helpers import PASSWORD, USER, Remote, rtx_host


@pytest.fixture
def lab() -> HostModel:
    return lab_host()


@pytest.fixture(params=["basic", "ntlm"])
def auth(request: pytest.FixtureRequest) -> str:
    return request.param


@pytest.fixture
def endpoint_factory():
    started = []

    def start(model: HostModel, auth: str = "basic", users: dict[str, str] | None = None):
        ep = serve(model, auth=auth, users=users or {USER: PASSWORD})
        started.append(ep)
        return ep
    yield start
    for ep in started:
        ep.stop()


@pytest.fixture
def remote(lab, auth, endpoint_factory) -> Remote:
    return Remote(endpoint_factory(lab, auth), auth)


@pytest.fixture
def rtx_remote(auth, endpoint_factory) -> Remote:
    return Remote(endpoint_factory(rtx_host(), auth), auth)

