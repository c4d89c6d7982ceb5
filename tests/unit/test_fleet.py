"""Fleet reads: bounded concurrency, a deadline per host, partial results; and finding room for a VM."""

import dataclasses
import threading
import time

from gpupass.core.domain.inventory import PassthroughState
from gpupass.core.errors import AuthenticationFailed
from gpupass.core.fleet import HostResult, find, gather, matches_model
from support.fakes import gpu, lab_facts


def test_partial_results_keep_order_and_errors():
    def read(host):
        if host == "down":
            raise AuthenticationFailed("wrong password for down")
        if host == "broken":
            raise RuntimeError("SDK bug")
        return lab_facts(), 3

    results = gather(["a", "down", "broken", "b"], read)
    assert [r.host for r in results] == ["a", "down", "broken", "b"]
    assert results[0].facts is not None and results[0].round_trips == 3
    assert results[1].error.kind == "authentication-failed"
    assert "RuntimeError: SDK bug" in results[2].error.message


def test_concurrency_is_bounded():
    running, peak, lock = [0], [0], threading.Lock()

    def read(host):
        with lock:
            running[0] += 1
            peak[0] = max(peak[0], running[0])
        time.sleep(0.02)
        with lock:
            running[0] -= 1
        return lab_facts(), 1

    gather([f"h{i}" for i in range(12)], read, concurrency=3)
    assert peak[0] == 3


def test_a_hanging_host_becomes_a_timeout_row():
    release = threading.Event()

    def read(host):
        if host == "hang":
            release.wait(5)
        return lab_facts(), 1

    began = time.monotonic()
    results = gather(["ok", "hang"], read, timeout=0.3)
    release.set()
    assert time.monotonic() - began < 3
    assert results[0].facts and results[1].error.kind == "connection-failed"
    assert "did not answer within 0.3 s" in results[1].error.message


def test_model_matching_by_name_and_ids():
    a100 = gpu("0000:41:00.0", device=0x20F1, model="NVIDIA A100 PCIe 40GB")
    assert matches_model(a100, "a100") and matches_model(a100, "10de:20f1") and not matches_model(a100, "H100")


def test_find_needs_free_isolated_capable_gpus_on_one_location():
    facts = lab_facts()
    two = dataclasses.replace(facts, gpus=facts.gpus + (gpu("0000:42:00.0", group=21, model="A100"),))
    incapable = dataclasses.replace(two.gpus[-1], passthrough=PassthroughState(capable=False))
    results = [HostResult("one", facts=facts), HostResult("two", facts=two),
               HostResult("three", facts=dataclasses.replace(two, gpus=two.gpus[:-1] + (incapable,))),
               HostResult("down", error=AuthenticationFailed("x"))]
    assert [(c.host, len(c.gpus)) for c in find(results, "A100", 1)] == [("two", 2), ("one", 1), ("three", 1)]
    assert [c.host for c in find(results, "A100", 2)] == ["two"]
    # Taken (cad-ws) and shared-group (SATA) cards never count.
    assert find(results, "Fake GPU", 1) == []


def test_a_host_named_twice_is_read_once_and_listed_once():
    reads = []

    def read(host):
        reads.append(host)
        return lab_facts(), 1

    results = gather(["a", "b", "a", "a"], read, concurrency=4)
    assert [r.host for r in results] == ["a", "b"] and sorted(reads) == ["a", "b"]


def test_threads_stay_bounded_by_the_pool_not_the_host_count():
    peak, lock = [0], threading.Lock()

    def read(host):
        with lock:
            alive = sum(1 for t in threading.enumerate() if t.name == "gpupass-fleet-worker")
            peak[0] = max(peak[0], alive)
        return lab_facts(), 1

    results = gather([f"h{i}" for i in range(300)], read, concurrency=5)
    assert len(results) == 300 and all(r.facts for r in results)
    assert 1 <= peak[0] <= 5


def test_a_hung_host_does_not_stall_a_pool_of_one():
    release = threading.Event()

    def read(host):
        if host == "hang":
            release.wait(5)
        return lab_facts(), 1

    began = time.monotonic()
    results = gather(["hang", "a", "b"], read, concurrency=1, timeout=0.2)
    release.set()
    assert time.monotonic() - began < 3
    assert results[0].error.kind == "connection-failed" and results[1].facts and results[2].facts


def test_a_deadline_is_kept_while_other_hosts_keep_answering():
    release = threading.Event()

    def read(host):
        if host == "hang":
            release.wait(5)
        else:
            time.sleep(0.01)
        return lab_facts(), 1

    began = time.monotonic()
    results = gather(["hang"] + [f"h{i}" for i in range(60)], read, concurrency=2, timeout=0.2)
    release.set()
    assert results[0].error.kind == "connection-failed" and results[0].seconds < 1.0
    assert time.monotonic() - began < 3


def test_rows_stream_as_hosts_answer_and_a_slow_reader_holds_the_workers_back():
    from gpupass.core.fleet import stream

    reads = []

    def read(host):
        reads.append(host)
        return lab_facts(), 1

    rows = stream([f"h{i}" for i in range(50)] + ["h0"], read, concurrency=2)
    first = next(rows)
    time.sleep(0.2)  # nobody takes rows now: the workers may fill the queue (2 rows) and then wait
    assert first.facts and len(reads) <= 1 + 2 + 2  # the row taken, the queue's two, one in each worker's hands
    rest = list(rows)
    assert sorted(r.host for r in [first, *rest]) == sorted(f"h{i}" for i in range(50)) and len(reads) == 50


def test_the_default_pool_is_large_but_within_the_open_file_limit(monkeypatch):
    import resource

    from gpupass.core import fleet

    monkeypatch.setattr(resource, "getrlimit", lambda which: (1024, 4096))
    assert fleet.default_concurrency() == (1024 - 64) // 2
    monkeypatch.setattr(resource, "getrlimit", lambda which: (65536, 65536))
    assert fleet.default_concurrency() == fleet.MAX_DEFAULT_CONCURRENCY == 1024
    monkeypatch.setattr(resource, "getrlimit", lambda which: (resource.RLIM_INFINITY, resource.RLIM_INFINITY))
    assert fleet.default_concurrency() == 1024


def test_longer_turns_raises_the_switch_interval_for_the_block_only():
    import sys

    import pytest

    from gpupass.core.fleet import FLEET_SWITCH_INTERVAL_S, longer_turns

    before = sys.getswitchinterval()
    with longer_turns():
        assert sys.getswitchinterval() == pytest.approx(max(before, FLEET_SWITCH_INTERVAL_S))
        with longer_turns(0.001):  # never lowered by it
            assert sys.getswitchinterval() == pytest.approx(max(before, FLEET_SWITCH_INTERVAL_S))
    assert sys.getswitchinterval() == before
    with pytest.raises(RuntimeError), longer_turns():
        raise RuntimeError("a failed fleet read")
    assert sys.getswitchinterval() == before


def test_a_call_past_its_own_bound_is_the_hosts_row_with_the_callers_error():
    """A worker's call announced to the pool (core/callbounds.py) is ended by its own bound, long before the pool's
    deadline, with the error the caller gave for it; the other hosts are read, and no thread per call is started."""
    from gpupass.core.callbounds import watch_of_this_thread
    from gpupass.core.errors import ConnectionFailed

    release = threading.Event()

    def read(host):
        watch = watch_of_this_thread()
        assert watch is not None  # every pool worker is watched
        if host == "stalls":
            watch.run(0.2, lambda: ConnectionFailed("stalls did not answer (the call)"), release.wait, 10)
        else:
            watch.run(5.0, lambda: ConnectionFailed("never"), time.sleep, 0.01)
        return lab_facts(), 1

    began = time.monotonic()
    results = gather(["stalls", "a", "b"], read, concurrency=2, timeout=600)
    release.set()
    assert time.monotonic() - began < 5
    assert results[0].error.message == "stalls did not answer (the call)" and results[0].seconds < 5
    assert results[1].facts and results[2].facts


def test_a_call_outside_a_pool_is_not_watched():
    from gpupass.core.callbounds import watch_of_this_thread

    seen = []
    thread = threading.Thread(target=lambda: seen.append(watch_of_this_thread()))
    thread.start()
    thread.join()
    assert seen == [None] and watch_of_this_thread() is None
