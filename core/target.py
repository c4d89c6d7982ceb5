"""How to reach one host: its URI, the credential and the TLS settings. Secrets never print."""

from __future__ import annotations

from typing import Any, Mapping
from urllib.parse import urlsplit

from gpupass.core.records import field, record


# Every secret handed to an SDK, so the log handler can blank it should a library ever log it (gpupass.core.logs).
REVEALED: set[str] = set()


class Secret:
    """A password that cannot leak through repr(), str() or logging by accident."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value

    def reveal(self) -> str:
        if self._value:
            REVEALED.add(self._value)
        return self._value

    def __repr__(self) -> str:
        return "Secret('***')"

    __str__ = __repr__

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Secret) and other._value == self._value

    def __hash__(self) -> int:
        return hash(self._value)


@record(frozen=True)
class TlsOptions:
    verify: bool = True
    ca_file: str | None = None


# How long one network call to a host may take before gpupass gives up on it (seconds); `timeout` in the
# host's config table changes it.
DEFAULT_TIMEOUT_S = 60.0
# The most a timeout may be: a day. The waits that bound each call (threading's, the sockets') overflow a C time_t
# somewhat past threading.TIMEOUT_MAX (~292 years) and fail with an OverflowError instead of waiting, and a call
# allowed more than a day is not bounded in any sense an admin means.
MAX_TIMEOUT_S = 24 * 3600.0


@record(frozen=True)
class Target:
    uri: str
    name: str = ""
    password: Secret | None = None
    tls: TlsOptions = field(default_factory=TlsOptions)
    # Backend options from the config file or the lab (e.g. the KVM lab persists test-driver state).
    options: Mapping[str, Any] = field(default_factory=dict)
    # Every call to the host is bounded by this (connect and read), so a host that accepts a connection and
    # never answers ends in a clear error instead of a silent wait.
    timeout: float = DEFAULT_TIMEOUT_S

    @property
    def scheme(self) -> str:
        return urlsplit(self.uri).scheme

    @property
    def username(self) -> str | None:
        return urlsplit(self.uri).username

    @property
    def hostname(self) -> str | None:
        return urlsplit(self.uri).hostname

    @property
    def label(self) -> str:
        return self.name or self.uri
