"""Fixtures the end-to-end tests share."""

import pytest

from support.cli import gpupass


@pytest.fixture
def labs():
    """The server-backed lab hosts (lab-esxi, lab-hyperv) up for one test, stopped by PID afterwards."""
    gpupass("lab", "up")
    try:
        yield
    finally:
        gpupass("lab", "down")
