"""gpupass: give a physical GPU to a virtual machine on KVM, VMware ESXi and Hyper-V.

The Python API (documented in docs/api.md; the CLI is a client of the same calls):

    from gpupass import open_host
    with open_host("lab-kvm") as host:
        plan = host.plan("ml-train", "H100")

This package's folder is core/toplevel in the source tree (pyproject maps it to `gpupass`); it imports nothing
until a name is used, so `gpupass --help` stays fast.
"""

from __future__ import annotations

# Not `from typing import ...`: typing costs as much as the interpreter's own start, and `gpupass --help`
# imports this package first (tests/bench/test_bench_smoke.py checks it stays out).
TYPE_CHECKING = False

__all__ = ["__version__", "open_host", "Host", "HostFacts", "Gpu", "Vm", "Plan", "Step", "Finding", "Severity",
           "GpupassError", "UsageError", "NotFound", "NotSupported", "BackendUnavailable", "ConnectionFailed",
           "AuthenticationFailed", "OperationFailed", "PreflightFailed"]

_WHERE = {
    "open_host": "gpupass.core.api", "Host": "gpupass.core.api",
    "HostFacts": "gpupass.core.domain.inventory", "Gpu": "gpupass.core.domain.inventory",
    "Vm": "gpupass.core.domain.inventory",
    "Plan": "gpupass.core.domain.plan", "Step": "gpupass.core.domain.plan",
    "Finding": "gpupass.core.domain.findings", "Severity": "gpupass.core.domain.findings",
    **{name: "gpupass.core.errors" for name in ("GpupassError", "UsageError", "NotFound", "NotSupported",
                                                 "BackendUnavailable", "ConnectionFailed", "AuthenticationFailed",
                                                 "OperationFailed", "PreflightFailed")},
}

if TYPE_CHECKING:
    from typing import Any

    from gpupass.core.api import Host, open_host
    from gpupass.core.domain.findings import Finding, Severity
    from gpupass.core.domain.inventory import Gpu, HostFacts, Vm
    from gpupass.core.domain.plan import Plan, Step
    from gpupass.core.errors import (AuthenticationFailed, BackendUnavailable, ConnectionFailed, GpupassError,
                                     NotFound, NotSupported, OperationFailed, PreflightFailed, UsageError)


def __getattr__(name: str) -> Any:
    if name == "__version__":
        from importlib.metadata import PackageNotFoundError, version

        try:
            return version("gpupass")
        except PackageNotFoundError:  # running from a source tree that was never installed
            return "0+unknown"
    if name in _WHERE:
        import importlib

        return getattr(importlib.import_module(_WHERE[name]), name)
    raise AttributeError(f"module 'gpupass' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(__all__)
