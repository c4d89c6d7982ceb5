"""Every SOAP call bounded as a whole by the host's `timeout`, not each read of it.

A socket timeout bounds one blocking read or write. A server (or a proxy on the way) that sends its answer a byte
every few seconds -- each read getting its byte well within the timeout -- would keep a call alive forever; so would
one that answers an endless body. Here the TLS socket of every connection to a vCenter/ESXi host (pyVmomi's and the
read path's: both are made by `connection.ssl_context`, through the documented `SSLContext.sslsocket_class` hook)
keeps one deadline per call: a call is a request written and its answer read, on that connection. The deadline starts
when the request begins (or the TLS handshake, for a call that opens the connection) and every later read and write
of that call waits at most what is left of it; past it the call fails with CallTimedOut (a TimeoutError, as a socket
timeout), whatever the server still sends.

Why a read timeout of "what is left" bounds the read as a whole: CPython's SSL read computes one deadline from the
socket's timeout and keeps it across the waits for the records it needs (Modules/_ssl.c, _ssl__SSLSocket_read_impl:
`deadline = _PyDeadline_Init(timeout)`).

TLS itself is untouched: certificate and host name checks are the context's, as before.
"""

from __future__ import annotations

import ssl
import time
from typing import Any


class CallTimedOut(TimeoutError):
    """A call to the host did not end within its deadline (the host's `timeout`). `partial`: part of the answer had
    arrived (a host or network sending it too slowly); otherwise none had (a host that does not answer)."""

    def __init__(self, seconds: float, partial: bool) -> None:
        self.seconds, self.partial = seconds, partial
        what = "was still sending its answer" if partial else "did not answer"
        super().__init__(f"the call {what} within its {seconds:g}s")


class BoundedSSLSocket(ssl.SSLSocket):
    """An SSLSocket whose every call (request written, answer read) ends within the timeout it was made with."""

    # Set lazily (an SSLSocket is made by SSLContext.wrap_socket through a classmethod, not __init__): the timeout
    # the connection was opened with, when the current call must end, whether it has written its request yet, and
    # how many bytes of the answer have arrived.
    _call_limit: float | None
    _call_ends: float | None
    _call_sent: bool
    _call_got: int

    def _limit(self) -> float | None:
        if not hasattr(self, "_call_limit"):
            self._call_limit = self.gettimeout()
            self._call_ends, self._call_sent, self._call_got = None, False, 0
        return self._call_limit

    def _begin(self) -> None:
        limit = self._limit()
        self._call_ends = None if limit is None else time.monotonic() + limit
        self._call_got = 0

    def _left(self) -> None:
        """Wait at most what is left of the call for the next read or write; none left: CallTimedOut."""
        limit = self._limit()
        if self._call_ends is None or limit is None:
            return
        left = self._call_ends - time.monotonic()
        if left <= 0:
            raise CallTimedOut(limit, self._call_got > 0)
        self.settimeout(min(limit, left))

    def _timed_out(self, error: TimeoutError) -> TimeoutError:
        limit = self._limit()
        if limit is not None and self._call_ends is not None and time.monotonic() >= self._call_ends:
            return CallTimedOut(limit, self._call_got > 0)
        return error

    def do_handshake(self, block: bool = False) -> None:
        self._begin()  # a call that opens the connection: its handshake counts against it
        self._left()
        try:
            super().do_handshake(block)
        except TimeoutError as error:
            raise self._timed_out(error) from error

    def _writing(self) -> None:
        if not self._call_sent:  # the first write after an answer (or the handshake): a new call
            if self._call_got or self._call_ends is None:
                self._begin()
            self._call_sent = True
        self._left()

    def write(self, data: Any) -> int:
        self._limit()
        self._writing()
        try:
            written: int = super().write(data)
        except TimeoutError as error:
            raise self._timed_out(error) from error
        return written

    def send(self, data: Any, flags: int = 0) -> int:  # sendall's, and http.client's, way out
        self._limit()
        self._writing()
        try:
            sent: int = super().send(data, flags)
        except TimeoutError as error:
            raise self._timed_out(error) from error
        return sent

    def read(self, len: int = 1024, buffer: Any = None) -> Any:  # noqa: A002 - SSLSocket.read's own names
        self._limit()
        self._call_sent = False  # reading the answer: the next write begins another call
        self._left()
        try:
            got = super().read(len, buffer)
        except TimeoutError as error:
            raise self._timed_out(error) from error
        self._arrived(got)
        return got

    def _arrived(self, got: int | bytes) -> None:
        """Count what a read returned (a count when it read into a buffer, else the bytes)."""
        self._call_got += got if isinstance(got, int) else len(got)


def bound_calls(context: ssl.SSLContext) -> ssl.SSLContext:
    """`context`, its sockets bounding each call (SSLContext.sslsocket_class: "can be overridden on instance of class
    in order to return a custom subclass of SSLSocket", Python's ssl documentation)."""
    context.sslsocket_class = BoundedSSLSocket
    return context
