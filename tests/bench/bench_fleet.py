"""Fleet figures, run on demand: `.venv/bin/python tests/bench/bench_fleet.py [--hosts 1000] [--latency-ms 20]`.

Goal (issue 11): N hosts read together within 1.5x of the slowest single host's time, with a bounded worker
pool and memory flat in the number of hosts. Two measurements, each with its anchor from the same run:

- the pool itself: N hosts whose read is `requests` sequential waits of the injected latency and no CPU work
  (a remote host's inventory as the fleet sees it); anchor: the slowest of 5 such hosts read alone. Beside it,
  the same N reads on N plain threads (no pool): what one Python process does with that many waiting reads,
  since every answer must take the interpreter lock in turn;
- real libvirt test-driver hosts (the lab's host file copied N times) read by the KVM backend, every libvirt
  request delayed by the injected latency; anchor: the slowest of a sample of these hosts read alone. On a
  small machine this one is bound by the CPU the backend spends per host (printed as its own floor).

Also the worker threads at the peak, and the pool's memory at its peak (tracemalloc) for N/10 and N hosts at the
same bound, rows streamed (gpupass.core.fleet.stream): their ratio is ~1 when the pool holds nothing per host.
Not collected by pytest (see conftest.py); tests/bench/test_bench_smoke.py runs it small.
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import threading
import time
import tracemalloc
from importlib import resources
from pathlib import Path

from gpupass.backends.kvm.backend import KvmBackend
from gpupass.core.fleet import gather, stream
from gpupass.core.target import Target


class SlowKvmBackend(KvmBackend):
    """The real KVM backend; every libvirt request waits `latency` seconds first, like a distant host."""

    latency = 0.0

    def _call(self, action, function, *args):
        time.sleep(self.latency)
        return super()._call(action, function, *args)


def make_hosts(directory: Path, count: int) -> list[str]:
    with resources.as_file(resources.files("gpupass.backends.kvm.lab").joinpath("lab-kvm.xml")) as original:
        uris = []
        for index in range(count):
            path = directory / f"host-{index:04d}.xml"
            shutil.copyfile(original, path)
            uris.append(f"test://{path}")
    return uris


def read(uri: str):
    backend = SlowKvmBackend(Target(uri=uri))
    try:
        return backend.inventory(), backend.round_trips
    finally:
        backend.close()


def _timed(function, *args) -> float:
    began = time.perf_counter()
    function(*args)
    return time.perf_counter() - began


def run(hosts: int, latency_ms: float, concurrency: int, sample: int = 10) -> dict[str, float]:
    """Real test-driver hosts: the fleet's wall time against the slowest of `sample` hosts read alone."""
    with tempfile.TemporaryDirectory() as scratch:
        uris = make_hosts(Path(scratch), hosts)
        SlowKvmBackend.latency = 0.0
        cpu_per_host = min(_timed(read, uri) for uri in uris[:sample])  # no latency: the backend's own work
        SlowKvmBackend.latency = latency_ms / 1000
        slowest = max(_timed(read, uri) for uri in uris[:sample])
        began = time.perf_counter()
        together = gather(uris, read, concurrency=concurrency, timeout=600)
        parallel = time.perf_counter() - began
        one_trips = read(uris[0])[1]
    assert all(r.facts is not None for r in together), [r.error for r in together if r.error]
    trips = sum(r.round_trips for r in together)
    assert trips == hosts * one_trips
    return {"hosts": hosts, "latency_ms": latency_ms, "concurrency": concurrency, "round_trips": trips,
            "fleet_s": parallel, "slowest_single_s": slowest, "cpu_per_host_s": cpu_per_host,
            "sequential_s": slowest * hosts}


def pool(hosts: int, latency_ms: float, requests: int, concurrency: int, sample: int = 5) -> dict[str, float]:
    """The pool alone: each host is `requests` waits of the latency and no CPU work.

    The anchor is the slowest of `sample` hosts read alone, in this run. Each read reports the threads alive
    (threading.active_count: counting the pool's threads with threading.enumerate under a lock in every read, as
    this benchmark once did, walks a thousand threads a thousand times while the reads queue on that lock)."""
    with tempfile.TemporaryDirectory() as scratch:
        SlowKvmBackend.latency = 0.0
        facts = read(make_hosts(Path(scratch), 1)[0])[0]  # one real host's facts, the same in every row

    def remote(host: str):
        for _ in range(requests):
            time.sleep(latency_ms / 1000)
        alive.append(threading.active_count())  # list.append is atomic: no lock
        return facts, requests

    alive: list[int] = []
    single = max(_timed(remote, "alone") for _ in range(sample))
    before = threading.active_count()

    def bare_threads() -> None:  # one process of plain threads, one per host: no pool, no results
        threads = [threading.Thread(target=remote, args=("bare",), daemon=True) for _ in range(hosts)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()

    bare = _timed(bare_threads) if concurrency >= hosts else None
    names = [f"host-{i:05d}" for i in range(hosts)]
    alive.clear()
    began = time.perf_counter()
    results = gather(names, remote, concurrency=concurrency, timeout=600)
    together = time.perf_counter() - began
    assert len(results) == hosts and all(r.facts is facts for r in results), [r.error for r in results if r.error]

    def peak_bytes(count: int, keep: bool) -> int:
        """What the pool holds at its peak over `count` hosts at the same bound; `keep`: gather's list of every row,
        else the rows streamed and dropped as they come."""
        fast = lambda host: (facts, 0)  # noqa: E731  (no waiting: only what the pool keeps is measured)
        some = names[:count]  # the caller's list of names: not the pool's
        tracemalloc.start()
        if keep:
            gather(some, fast, concurrency=MEMORY_POOL)
        else:
            for _ in stream(some, fast, concurrency=MEMORY_POOL):
                pass
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
        return peak

    small = max(1, hosts // 10)
    return {"hosts": hosts, "single_s": single, "fleet_s": together, "bare_threads_s": bare,
            "peak_threads": max(alive) - before,  # the threads the pool added
            "streamed_small": peak_bytes(small, False), "streamed": peak_bytes(hosts, False),
            "kept_small": peak_bytes(small, True), "kept": peak_bytes(hosts, True)}


MEMORY_POOL = 32  # the bound the memory figures are taken at (the same for both sizes)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--hosts", type=int, default=1000)
    parser.add_argument("--latency-ms", type=float, default=20.0)
    parser.add_argument("--requests", type=int, default=26, help="requests per host in the pool measurement "
                        "(the lab KVM host's inventory makes 26)")
    parser.add_argument("--concurrency", type=int, default=1000,
                        help="the pool's bound (the CLI's --concurrency; its default, gpupass.core.fleet.default_concurrency(), "
                             "is every host up to 1,024)")
    parser.add_argument("--real-hosts", type=int, default=None,
                        help="test-driver hosts for the second measurement (default: --hosts)")
    args = parser.parse_args(argv)

    p = pool(args.hosts, args.latency_ms, args.requests, args.concurrency)
    print(f"pool: {p['hosts']} hosts x {args.requests} requests x {args.latency_ms:g} ms, "
          f"at most {args.concurrency} workers")
    print(f"  slowest of 5 hosts read alone (anchor): {p['single_s']:7.3f} s")
    print(f"  all hosts together:                     {p['fleet_s']:7.3f} s   ratio {p['fleet_s'] / p['single_s']:.2f}x "
          f"(goal <= 1.5x)")
    if p["bare_threads_s"] is not None:
        print(f"  {p['hosts']} plain threads in one process:     {p['bare_threads_s']:7.3f} s   ratio "
              f"{p['bare_threads_s'] / p['single_s']:.2f}x (one thread per host, no pool: for comparison)")
    print(f"  worker threads at the peak:             {p['peak_threads']}")
    small = max(1, p["hosts"] // 10)
    print(f"  memory at the peak, {MEMORY_POOL} workers, rows streamed: {p['streamed_small'] / 1024:.0f} KiB at {small} "
          f"hosts, {p['streamed'] / 1024:.0f} KiB at {p['hosts']}: ratio {p['streamed'] / p['streamed_small']:.2f} "
          f"for {p['hosts'] / small:.0f}x the hosts (flat: ~1)")
    print(f"  the same, every row kept (gather's list): {p['kept_small'] / small:.0f} B per host at {small} hosts, "
          f"{p['kept'] / p['hosts']:.0f} B per host at {p['hosts']}")

    r = run(args.real_hosts or args.hosts, args.latency_ms, args.concurrency)
    print(f"\nreal test-driver hosts: {r['hosts']} x lab-kvm, {r['latency_ms']:g} ms per libvirt request, "
          f"{r['round_trips']} round trips in all")
    print(f"  slowest single host (anchor): {r['slowest_single_s']:7.3f} s")
    print(f"  all hosts together:           {r['fleet_s']:7.3f} s   ratio "
          f"{r['fleet_s'] / r['slowest_single_s']:.2f}x (goal <= 1.5x)")
    print(f"  CPU floor: {r['cpu_per_host_s'] * 1000:.1f} ms of backend work per host x {r['hosts']} = "
          f"{r['cpu_per_host_s'] * r['hosts']:.2f} s in one process")
    print(f"  one host after another (estimated): {r['sequential_s']:7.1f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
