"""Each WinRM request bounded as a whole, not only each read of its socket.

pywinrm hands requests a timeout (read_timeout_sec) that bounds each read of the socket: a host, or anything between
(a proxy, a load balancer), that sends its reply a byte at a time, each within that timeout, keeps one request -- and
gpupass -- alive for as long as it drips. Here every request has a deadline as a whole: a timer shuts the request's
socket down when it passes (the blocked read returns at once), and the request fails with RequestOverran, which
errors.from_exception turns into the host's error. HypervBackend._run_ps sets the deadline of each call (its script:
the host's timeout; ending a script that outran it: a short wind-down); a request outside a call (closing the shell when
gpupass is done) is bounded by the host's read timeout.

How it reaches the request: pywinrm builds its Transport inside Protocol.__init__ and offers no hook around a request,
so the session's transport is switched to a subclass (bound_transport) that wraps the one method every request goes
through -- Transport._send_message_request: each message, and the requests that set up NTLM/CredSSP message encryption;
requests-ntlm's handshake is sent over the same connection within it. The subclass adds the bound and nothing else: TLS
verification, the CA and the credentials stay exactly as pywinrm was given them. The sockets: before a session's first
request its connection pools (urllib3) are given connection classes that remember each socket they open (weakly), so
the timer can shut it down from its own thread -- with socket.socket.shutdown on the descriptor, as an SSLSocket's own
shutdown would drop its TLS object from under the reading thread.

Imported only when a host is opened (it imports pywinrm, requests' urllib3).
"""
from __future__ import annotations

import socket
import threading
import time
import weakref
from typing import Any, Callable, TypeVar

from urllib3.connection import HTTPConnection, HTTPSConnection
from urllib3.connectionpool import HTTPConnectionPool, HTTPSConnectionPool
from winrm.transport import Transport

from gpupass.backends.hyperv.errors import RequestOverran

T = TypeVar("T")

# The bound whose request is under way on this thread: a connection opened by it is remembered there.
_this_thread = threading.local()


def _remember(sock: socket.socket | None) -> None:
    bound = getattr(_this_thread, "bound", None)
    if bound is not None and sock is not None:
        bound.remember(sock)


class _Remembered(HTTPConnection):
    def _new_conn(self) -> socket.socket:
        sock = super()._new_conn()
        _remember(sock)            # cut while connecting too
        return sock

    def connect(self) -> None:
        super().connect()
        _remember(self.sock)       # HTTPS: the TLS socket, which took over the descriptor (wrap_socket detaches)


class _RememberedTLS(_Remembered, HTTPSConnection):
    pass


class _Pool(HTTPConnectionPool):
    ConnectionCls = _Remembered


class _TLSPool(HTTPSConnectionPool):
    ConnectionCls = _RememberedTLS


_POOLS = {"http": _Pool, "https": _TLSPool}


class CallBound:
    """How long the request under way may take as a whole (`deadline`, time.monotonic(); None: `per_request` seconds
    from its start), and the sockets it may be reading from."""

    def __init__(self, per_request: float) -> None:
        self.per_request = per_request
        self.deadline: float | None = None
        self._sockets: weakref.WeakSet[socket.socket] = weakref.WeakSet()
        self._lock = threading.Lock()

    def remember(self, sock: socket.socket) -> None:
        with self._lock:
            self._sockets.add(sock)

    def _cut(self, fired: threading.Event) -> None:
        fired.set()
        with self._lock:
            sockets = list(self._sockets)
        for sock in sockets:
            try:
                socket.socket.shutdown(sock, socket.SHUT_RDWR)
            except OSError:      # closed already, or never connected
                pass

    def run(self, send: Callable[[], T]) -> T:
        """send() (one request), cut off at the deadline: RequestOverran, whatever the cut made the request raise."""
        seconds = self.per_request if self.deadline is None else self.deadline - time.monotonic()
        if seconds <= 0:
            raise RequestOverran(0.0)
        fired = threading.Event()
        timer = threading.Timer(seconds, self._cut, (fired,))
        timer.daemon = True
        _this_thread.bound = self
        timer.start()
        try:
            result = send()
        except Exception as exc:
            if fired.is_set():
                raise RequestOverran(seconds) from exc
            raise
        finally:
            timer.cancel()
            _this_thread.bound = None
        if fired.is_set():       # cut as its reply ended: the connection is gone all the same
            raise RequestOverran(seconds)
        return result


class _BoundTransport(Transport):
    _gpupass_bound: CallBound

    def _send_message_request(self, session: Any, prepared_request: Any) -> Any:
        for adapter in session.adapters.values():
            manager = getattr(adapter, "poolmanager", None)
            if manager is not None:   # before the session's first request: its pools remember their sockets
                manager.pool_classes_by_scheme = _POOLS
        return self._gpupass_bound.run(lambda: super(_BoundTransport, self)._send_message_request(session,
                                                                                                    prepared_request))


def bound_transport(protocol: Any, per_request: float) -> CallBound:
    """Bound every request of pywinrm's `protocol` (before its first): -> the bound, whose deadline the caller sets."""
    transport = protocol.transport
    if type(transport) is not Transport:
        raise TypeError(f"pywinrm's transport is a {type(transport).__name__}, not the Transport gpupass bounds")
    bound = CallBound(per_request)
    transport.__class__ = _BoundTransport
    switched: Any = transport
    switched._gpupass_bound = bound
    return bound
