"""Resolve a host's password from the environment, the keyring or a private config file. Never argv."""

from __future__ import annotations

import functools
import os
import re
import threading
from typing import TYPE_CHECKING, Any, Callable, TypeVar, cast

from gpupass.core.errors import AuthenticationFailed
from gpupass.core.target import DEFAULT_TIMEOUT_S, Secret

if TYPE_CHECKING:
    from gpupass.core.config import HostEntry
    from gpupass.core.target import Target

KEYRING_SERVICE = "gpupass"
T = TypeVar("T")


def env_var_for(host_name: str) -> str:
    """GPUPASS_PASSWORD_<NAME>: the per-host variable every host has without configuration."""
    return "GPUPASS_PASSWORD_" + re.sub(r"[^A-Za-z0-9]", "_", host_name).upper()


def resolve_password(host_name: str, entry: HostEntry | None, username: str | None) -> Secret | None:
    if entry and entry.password_env:
        value = os.environ.get(entry.password_env)
        if value is None:
            raise AuthenticationFailed(
                f"host {host_name!r} takes its password from ${entry.password_env}, which is not set",
                remedy=f"export {entry.password_env}=... before running gpupass",
            )
        return Secret(value)
    for variable in (env_var_for(host_name), "GPUPASS_PASSWORD"):
        if variable in os.environ:
            return Secret(os.environ[variable])
    if entry and entry.keyring:
        return _from_keyring(host_name, username, entry.timeout or DEFAULT_TIMEOUT_S)
    if entry and entry.password is not None:
        return Secret(entry.password)
    return None


def _from_keyring(host_name: str, username: str | None, timeout_s: float) -> Secret:
    """The password from the keyring, asked on a thread of its own: a keyring backend may wait on D-Bus, on a remote
    vault or on an unlock prompt nobody answers, and gpupass bounds every call by the host's timeout."""
    try:
        import keyring  # optional: pip install 'gpupass[keyring]'
        import keyring.errors
    except ImportError as exc:
        raise AuthenticationFailed(
            f"host {host_name!r} takes its password from the keyring, but the keyring module is not installed",
            remedy="pip install 'gpupass[keyring]'",
        ) from exc
    account = f"{username}@{host_name}" if username else host_name
    try:
        value = _bounded(functools.partial(keyring.get_password, KEYRING_SERVICE, account), timeout_s)
    except TimeoutError as exc:
        raise AuthenticationFailed(
            f"host {host_name!r} takes its password from the keyring, which did not answer within {timeout_s:g}s "
            "(locked and waiting for an unlock prompt, or its store unreachable?)",
            remedy="unlock the keyring (or make its backend reachable) and run the command again, or give the password "
                   f"through {env_var_for(host_name)} or password_env; the host's `timeout` bounds this wait",
        ) from exc
    except keyring.errors.KeyringError as exc:  # NoKeyringError, InitError, a locked or broken backend
        raise AuthenticationFailed(
            f"host {host_name!r} takes its password from the keyring, which cannot be used here: "
            f"{type(exc).__name__}: {exc}",
            remedy="install and unlock a keyring backend (`keyring --list-backends`), or give the password through "
                   f"{env_var_for(host_name)} or password_env",
        ) from exc
    if value is None:
        raise AuthenticationFailed(
            f"no password for {account!r} in the keyring (service {KEYRING_SERVICE!r})",
            remedy=f"keyring set {KEYRING_SERVICE} {account}",
        )
    return Secret(value)


def _bounded(call: Callable[[], T], timeout_s: float) -> T:
    """call() on a daemon thread, waited for at most timeout_s: TimeoutError after that (the thread is left to end on
    its own: a keyring call cannot be cancelled), else its result or its exception."""
    outcome: list[Any] = []

    def run() -> None:
        try:
            outcome.append((True, call()))
        except BaseException as exc:  # noqa: BLE001 - handed to the caller's thread as it is
            outcome.append((False, exc))

    worker = threading.Thread(target=run, name="gpupass-keyring", daemon=True)
    worker.start()
    worker.join(timeout_s)
    if not outcome:
        raise TimeoutError(f"no answer within {timeout_s:g}s")
    ok, value = outcome[0]
    if not ok:
        raise value
    return cast(T, value)


def missing_password(target: Target) -> AuthenticationFailed:
    """The one error every backend raises when a host needs a password and none was found: it names the
    variable to set for exactly this host."""
    name = target.name or target.hostname or target.uri
    user = f"{target.username} at " if target.username else ""
    remedy = (f"export {env_var_for(name)}=... (or GPUPASS_PASSWORD), or keep it in the keyring or the config file: "
              f"`gpupass hosts add NAME URI --password-env VAR` or `--keyring`")
    if target.scheme == "esxi":
        remedy += "; govc's GOVC_PASSWORD and Ansible's VMWARE_PASSWORD count when GOVC_URL / VMWARE_HOST name this host"
    return AuthenticationFailed(f"no password for {user}{target.label}", remedy=remedy)
