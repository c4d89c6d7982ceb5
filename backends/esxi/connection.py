"""esxi:// URIs, TLS contexts and the login (wire.Session; every SOAP request, pyvmomi's too, is one round trip).

URI: ``esxi://USER@HOST[:PORT][/DATACENTER]``. A user with '@' (``administrator@vsphere.local``) is
written percent-encoded: ``esxi://administrator%40vsphere.local@vc.example.com/DC1``.
"""

from __future__ import annotations

import logging
import ssl
from dataclasses import dataclass
from typing import Any, Callable
from urllib.parse import unquote, urlsplit

from gpupass.backends.esxi.deadline import bound_calls
from gpupass.backends.esxi.errors import translate
from gpupass.core.errors import BackendUnavailable, UsageError
from gpupass.core.target import Target

log = logging.getLogger("gpupass.esxi")


@dataclass(frozen=True)
class Endpoint:
    host: str
    port: int
    user: str
    datacenter: str | None


def parse_uri(uri: str) -> Endpoint:
    parts = urlsplit(uri)
    if parts.scheme != "esxi" or not parts.hostname:
        raise UsageError(f"{uri!r} is not an esxi:// URI",
                         remedy="write esxi://USER@HOST[:PORT][/DATACENTER] (percent-encode '@' in the user)")
    user = unquote(parts.username or "")
    if not user:
        raise UsageError(f"{uri!r} names no user",
                         remedy="write esxi://administrator%40vsphere.local@vcenter/DC (or root@esxi-host)")
    datacenter = unquote(parts.path.strip("/")) or None
    return Endpoint(parts.hostname, parts.port or 443, user, datacenter)


def ssl_context(target: Target) -> ssl.SSLContext:
    """Verifying by default; trusts exactly the CA file when one is given, the system CAs otherwise. Its sockets bound
    each SOAP call as a whole by the connection's timeout (deadline.py)."""
    if not target.tls.verify:
        context = ssl.create_default_context()
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    elif target.tls.ca_file:
        context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=target.tls.ca_file)
    else:
        context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH)
    return bound_calls(context)


def pyvmomi() -> tuple[Any, Any]:
    try:
        from pyVmomi import vim, vmodl
    except ImportError as exc:
        raise BackendUnavailable("the esxi backend needs pyvmomi, which is not installed",
                                 remedy="pip install 'gpupass[esxi]'") from exc
    return vim, vmodl


def safe_moid(mo: Any) -> str:
    """A managed object's id for the log; a session-scoped id (a view) carries the session key: blanked."""
    import re

    return re.sub(r"session\[[^\]]*\]\S*", "session[***]", str(getattr(mo, "_moId", mo)))


def open_session(target: Target, on_request: Callable[[], None]) -> Any:
    """Log in with the read path's own SOAP session (wire.Session: no pyVmomi); every request counted with
    on_request(), the login's RetrieveServiceContent and Login included."""
    from gpupass.backends.esxi import wire

    endpoint = parse_uri(target.uri)
    if target.password is None:
        from gpupass.core.credentials import missing_password

        raise missing_password(target)
    log.info("connecting to %s:%s as %s (TLS %s)", endpoint.host, endpoint.port, endpoint.user,
             "verified" if target.tls.verify else "NOT verified: --insecure")
    # target.timeout bounds every request, the version probe included (one connection carries them all)
    session = wire.Session(endpoint.host, endpoint.port, ssl_context(target), target.timeout, on_request)
    try:
        session.login(endpoint.user, target.password.reveal())
    except Exception as exc:  # noqa: BLE001 - translated by type
        session.drop()
        raise translate(exc, f"connecting to {endpoint.host}:{endpoint.port} as {endpoint.user}",
                        timeout=target.timeout, host=endpoint.host) from None
    return session


def count_requests(stub: Any, on_request: Callable[[], None]) -> None:
    """Count (and log) every SOAP request a pyVmomi stub sends, as wire.Session does its own."""
    invoke = stub.InvokeMethod

    def counted(*args: Any, **kwargs: Any) -> Any:
        on_request()
        # (managed object, method info, arguments): the method and its object, never the arguments.
        if len(args) >= 2:
            log.debug("SOAP %s on %s", getattr(args[1], "wsdlName", "?"), safe_moid(args[0]))
        return invoke(*args, **kwargs)

    stub.InvokeMethod = counted
