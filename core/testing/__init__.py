"""The backend contract as a kit: what every gpupass backend must do, as pytest tests a plugin runs on itself.

In a plugin's test suite (docs/plugins.md, "Testing your backend")::

    import pytest
    from gpupass.core.testing import BackendEnv
    from gpupass.core.testing.contract import *  # noqa: F401,F403  - the contract's tests and `backend` fixture

    @pytest.fixture
    def backend_env(tmp_path):
        yield BackendEnv(platform="example", open=lambda: ExampleBackend(Target(uri="example://demo")),
                         free_gpu=..., off_vm=..., running_vm=..., owned_gpu=..., owner_vm=...)

The three in-tree backends and docs/plugin-example run it (tests/contract/). Importing this package needs
pytest; gpupass itself never imports it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

from gpupass.core.domain.pci import PciAddress
from gpupass.core.ports import Backend


@dataclass
class BackendEnv:
    """One host a backend under test can open, and the facts of it the contract's tests rely on."""

    platform: str
    # Opens a NEW backend (a new connection) on the same host; state written by one is seen by the next.
    open: Callable[[], Backend]
    free_gpu: PciAddress  # a GPU no VM holds, in an IOMMU group of its own
    off_vm: str  # a powered-off VM that may take free_gpu
    running_vm: str
    owned_gpu: PciAddress  # a GPU that owner_vm holds
    owner_vm: str
    cleanup: list[Callable[[], None]] = field(default_factory=list)


__all__ = ["BackendEnv"]
