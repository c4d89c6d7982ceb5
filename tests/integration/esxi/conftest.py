"""Fixtures for the vSphere simulator tests (real pyvmomi against backends/esxi/lab/vcsim).

``vcsim``: one simulator with the lab inventory for the whole session (read-only tests).
``fresh_vcsim``: a factory for private simulators (start ~0.1 s) for tests that change state.
The Go binary is built once per source hash into $GPUPASS_CACHE_DIR (default ~/.cache/gpupass).
"""

from __future__ import annotations

import os
import shutil

import pytest

pytest.importorskip("pyVmomi")

from gpupass.backends.esxi.lab.simulator import DEFAULT_GOPATH, VCSim, build_binary, lab_config  # noqa: E402

GOVMOMI = os.path.join(os.environ.get("GPUPASS_GOPATH", DEFAULT_GOPATH), "src/github.com/vmware/govmomi/simulator")


@pytest.fixture(scope="session")
def vcsim_binary():
    if not shutil.which("go"):
        pytest.skip("Go toolchain missing (apt-get install golang-go golang-github-vmware-govmomi-dev)")
    if not os.path.isdir(GOVMOMI):
        pytest.skip(f"govmomi sources missing at {GOVMOMI} (apt-get install golang-github-vmware-govmomi-dev)")
    return build_binary()


@pytest.fixture(scope="session")
def vcsim(vcsim_binary):
    sim = VCSim(lab_config(), binary=vcsim_binary).start()
    try:
        yield sim
    finally:
        sim.stop()


@pytest.fixture
def fresh_vcsim(vcsim_binary):
    started = []

    def make(config=None, **kwargs):
        sim = VCSim(lab_config() if config is None else config, binary=vcsim_binary, **kwargs).start()
        started.append(sim)
        return sim

    yield make
    for sim in started:
        sim.stop()


@pytest.fixture
def connect():
    """connect(sim) -> ServiceInstance; disconnected at teardown."""
    from pyVim.connect import Disconnect

    sessions = []

    def make(sim):
        si = sim.connect()
        sessions.append(si)
        return si

    yield make
    for si in sessions:
        try:
            Disconnect(si)
        except Exception:  # the simulator may already be gone
            pass
