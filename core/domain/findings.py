"""Findings: what preflight says, each with a stable code scripts can match on."""

from __future__ import annotations

from enum import Enum

from gpupass.core.records import record


class Severity(str, Enum):
    BLOCKER = "blocker"
    WARNING = "warning"
    INFO = "info"


@record(frozen=True)
class Finding:
    code: str
    severity: Severity
    message: str
    remedy: str | None = None
    subject: str | None = None

    @property
    def blocks(self) -> bool:
        return self.severity is Severity.BLOCKER


def blocker(code: str, message: str, remedy: str | None = None, subject: str | None = None) -> Finding:
    return Finding(code, Severity.BLOCKER, message, remedy, subject)


def warning(code: str, message: str, remedy: str | None = None, subject: str | None = None) -> Finding:
    return Finding(code, Severity.WARNING, message, remedy, subject)


def info(code: str, message: str, remedy: str | None = None, subject: str | None = None) -> Finding:
    return Finding(code, Severity.INFO, message, remedy, subject)


@record(frozen=True)
class FeatureLoss:
    """A capability the VM no longer has once it holds a passthrough device."""

    feature: str
    reason: str
