"""A bound on every libvirt call, which libvirt-python itself does not offer.

libvirt's client waits for the daemon's reply without a limit: its keepalive (virConnectSetKeepAlive) needs
an event loop registered before the connection is opened and a thread running it, and it does not cover
virConnectOpen's own handshake (libvirt docs/kbase/keepalive: keepalive messages are sent "only when the
connection is idle" and only once "the client has registered an event loop"). So each call runs on one
daemon worker thread and the caller waits at most `timeout` seconds. A call that does not come back leaves
its worker blocked; that worker is abandoned (a daemon thread does not keep the process alive) and the
connection is given up with it. close() ends the worker: a fleet opens one backend per host, and a worker left
waiting for jobs after its backend closed was one thread per host for the rest of the process.
"""

from __future__ import annotations

import queue
import threading
from typing import Any, Callable

# One job for the worker: the function, its arguments, the event set when it returns, and the box that
# receives (True, its result) or (False, the exception it raised).
_Job = tuple[Callable[..., Any], tuple[Any, ...], threading.Event, list[tuple[bool, Any]]]


class CallTimedOut(Exception):
    """The call did not return within the bound; what it did on the host is not known."""


class Watchdog:
    def __init__(self, timeout: float) -> None:
        self.timeout = timeout
        self._jobs: queue.SimpleQueue[_Job | None] | None = None

    def _worker(self) -> queue.SimpleQueue[_Job | None]:
        if self._jobs is None:
            jobs: queue.SimpleQueue[_Job | None] = queue.SimpleQueue()

            def serve() -> None:
                while True:
                    job = jobs.get()
                    if job is None:  # close(), or abandoned: end once the call in hand (if any) came back
                        return
                    function, args, done, box = job
                    try:
                        box.append((True, function(*args)))
                    except BaseException as error:  # noqa: BLE001 - handed back to the caller's thread
                        box.append((False, error))
                    done.set()

            threading.Thread(target=serve, name="gpupass-libvirt-call", daemon=True).start()
            self._jobs = jobs
        return self._jobs

    def call(self, function: Callable[..., Any], *args: Any) -> Any:
        done, box = threading.Event(), list[tuple[bool, Any]]()
        self._worker().put((function, args, done, box))
        if not done.wait(self.timeout):
            self.close()  # abandon the blocked worker; the next call gets a fresh one
            raise CallTimedOut()
        ok, value = box[0]
        if ok:
            return value
        raise value

    def close(self) -> None:
        """End the worker when it is free; a later call starts a new one."""
        if self._jobs is not None:
            jobs, self._jobs = self._jobs, None
            jobs.put(None)
