"""The error hierarchy every backend translates its platform's failures into.

Each error carries the problem and, where there is one, the fix. The CLI maps the classes to exit codes,
so scripts can tell a usage mistake from a host that is down.
"""

from __future__ import annotations

from typing import Any


class GpupassError(Exception):
    exit_code = 1
    kind = "error"

    def __init__(self, message: str, *, remedy: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.remedy = remedy

    def to_dict(self) -> dict[str, Any]:
        return {"error": self.kind, "message": self.message, "remedy": self.remedy}


class UsageError(GpupassError):
    """The command line or a file given to gpupass is wrong."""

    exit_code = 2
    kind = "usage"


class NotFound(GpupassError):
    """A VM, GPU or host named by the user does not exist: like any other wrong argument, exit 2."""

    exit_code = 2
    kind = "not-found"


class NotSupported(GpupassError):
    """The platform truly lacks the feature."""

    kind = "not-supported"


class BackendUnavailable(GpupassError):
    """No backend handles the URI, or its SDK is not installed."""

    kind = "backend-unavailable"


class ConnectionFailed(GpupassError):
    """The host could not be reached (network, TLS, daemon down)."""

    kind = "connection-failed"


class AuthenticationFailed(GpupassError):
    """The host refused the credential."""

    kind = "authentication-failed"


class OperationFailed(GpupassError):
    """A write step failed. `rolled_back` says what the host holds: True, as it was (a backend's step: this step
    changed nothing, or undid its own work; the core's error: every earlier step was undone too); False, not as it
    was, or not known to be. Left None, a step's error says nothing of what it left, and the core reads the host
    again (`Backend.observe`) rather than assume."""

    kind = "operation-failed"

    def __init__(self, message: str, *, remedy: str | None = None, rolled_back: bool | None = None) -> None:
        super().__init__(message, remedy=remedy)
        self.rolled_back = rolled_back

    def to_dict(self) -> dict[str, Any]:
        return {**super().to_dict(), "rolled_back": self.rolled_back}


class Conflict(OperationFailed):
    """Another change to the same GPU or VM, from another process or machine, won; this one was undone."""

    exit_code = 6
    kind = "conflict"

    def __init__(self, message: str, *, remedy: str | None = None, rolled_back: bool | None = True) -> None:
        super().__init__(message, remedy=remedy, rolled_back=rolled_back)


class Interrupted(OperationFailed):
    """The user interrupted a change (Ctrl-C: SIGINT). The change was undone as after any failed step, and the message
    says what the host holds now: `rolled_back` True (as it was) or False (the steps left, or that it is not known).
    Exit 130, what a shell reports for a command ended by SIGINT (128 + 2)."""

    exit_code = 130
    kind = "interrupted"


class PreflightFailed(GpupassError):
    """Preflight found blocking problems; nothing was changed."""

    exit_code = 3
    kind = "preflight-failed"

    def __init__(self, message: str, findings: list[Any]) -> None:
        super().__init__(message, remedy="fix the blocking findings above, then run the command again")
        self.findings = findings
