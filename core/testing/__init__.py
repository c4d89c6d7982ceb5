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

import socket
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
    # Error translation. `unreachable` opens a backend on a host that does not answer (a closed port on
    # 127.0.0.1, say): its first read must be ConnectionFailed. `remove_vm(name)` deletes a VM behind the
    # backend's back, through the platform, as another admin would: the platform's own "no such VM" must reach
    # the core as NotFound. Conflicts need nothing more: the kit races two connections for free_gpu, with
    # off_vm and owner_vm (which must be powered off too) as the two VMs.
    unreachable: Callable[[], Backend] | None = None
    remove_vm: Callable[[str], None] | None = None
    # Powered-off VMs on the host named with HOSTILE_NAMES (every one the platform allows as a VM name; say in
    # the fixture which it leaves out and why, with the platform's source), each able to take free_gpu.
    hostile_vms: tuple[str, ...] = ()
    # GPU shares (core/domain/sharing.py), for a backend that lists share modes (Capabilities.share_modes): a GPU
    # that offers `share_type` (as `--share` names it) with room for off_vm and each hostile VM. None for a backend
    # that gives no shares: the kit then holds it to refusing them with "not supported".
    shared_gpu: PciAddress | None = None
    share_type: str | None = None


# VM names that break code which builds shell, PowerShell, XML or SOAP text from strings instead of structures:
# quotes of every kind (PowerShell also takes U+2018..U+201B as single quotes), subexpressions and variables
# ($(...), $env:, ${...}, backticks), separators (; | &), markup (<&>), names that look like options, and
# non-ASCII text. None holds "/", "\\" or "%": vSphere escapes those in every name it returns (API reference,
# ManagedEntity.name: "A slash is escaped as %2F ... a backslash as %5C ... a percent as %25"), so they cannot
# round-trip on ESXi by design.
HOSTILE_NAMES: tuple[str, ...] = (
    "it's \"quoted\"",
    "x$(touch pwned);`id`|&<b>",
    "$env:USERNAME ${x} @(1) $null",
    "-WhatIf",
    "--force",
    "O\u2019Brien \u2018vm\u2019 \u201aa\u201b",
    "\u0412\u041c-\u865a\u62df\u673a-\u00fc \U0001f3ae",
    "a]]><!--b",
)


def closed_port() -> int:
    """A TCP port on 127.0.0.1 where nothing listens now (for BackendEnv.unreachable)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


class InjectedFailure(Exception):
    """Raised by the contract kit in place of a backend's step, to prove the core undoes the steps before it.

    The step never reached the platform, and the error says so as a backend's own errors do (`rolled_back`),
    so the core undoes the earlier steps without reading the host again first (gpupass.core.service)."""

    rolled_back = True


__all__ = ["HOSTILE_NAMES", "BackendEnv", "InjectedFailure", "closed_port"]
