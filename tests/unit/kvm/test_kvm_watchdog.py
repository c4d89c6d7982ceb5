"""The bound on each libvirt call (backends/kvm/watchdog.py): its worker thread ends when it is closed or abandoned."""

from __future__ import annotations

import threading

import pytest

from gpupass.backends.kvm.watchdog import CallTimedOut, Watchdog


def _new_threads(before: set[threading.Thread]) -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t not in before and t.name == "gpupass-libvirt-call"]


def test_calls_return_values_and_errors_and_close_ends_the_worker():
    before = set(threading.enumerate())
    watchdog = Watchdog(5)
    assert watchdog.call(lambda a, b: a + b, 2, 3) == 5
    with pytest.raises(KeyError):
        watchdog.call({}.__getitem__, "missing")
    (worker,) = _new_threads(before)
    watchdog.close()
    worker.join(5)
    assert not worker.is_alive()
    assert watchdog.call(lambda: "again") == "again"  # a closed watchdog starts a new worker when used again
    watchdog.close()


def test_a_call_past_its_bound_leaves_a_worker_that_ends_once_the_call_comes_back():
    release = threading.Event()
    before = set(threading.enumerate())
    watchdog = Watchdog(0.2)
    with pytest.raises(CallTimedOut):
        watchdog.call(release.wait, 10)
    (blocked,) = _new_threads(before)
    assert watchdog.call(lambda: 42) == 42  # on a fresh worker, while the first is still blocked
    assert blocked.is_alive()
    release.set()
    blocked.join(5)
    assert not blocked.is_alive()
    watchdog.close()
