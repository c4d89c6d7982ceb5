"""Fleet figures, run on demand: `.venv/bin/python tests/bench/bench_fleet.py [--hosts 1000] [--latency-ms 20]`.

Goal (issue 11): N hosts read together within 1.5x of the slowest single host's time, with a bounded worker
pool and memory flat in the number of hosts. Two measurements, each with its anchor from the same run:

- the pool itself: N hosts whose read is `requests` sequential waits of the injected latency and no CPU work
  (a remote host's inventory as the fleet sees it); anchor: one such host read alone;
- real libvirt test-driver hosts (the lab's host file copied N times) read by the KVM backend, every libvirt
  request delayed by the injected latency; anchor: the slowest of a sample of these hosts read alone. On a
  small machine this one is bound by the CPU the backend spends per host (printed as its own floor).

Also prints the worker threads alive at the peak and the memory the pool holds per host at N/10 and N hosts.
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
from gpupass.core.fleet import gather
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


def pool(hosts: int, latency_ms: float, requests: int, concurrency: int) -> dict[str, float]:
    """The pool alone: each host is `requests` waits of the latency; memory and threads at the peak."""
    with tempfile.TemporaryDirectory() as scratch:
        SlowKvmBackend.latency = 0.0
        facts = read(make_hosts(Path(scratch), 1)[0])[0]  # one real host's facts, shared by every row
    peak_threads = [0]
    lock = threading.Lock()

    def remote(host: str):
        with lock:
            alive = sum(1 for t in threading.enumerate() if t.name == "gpupass-fleet-worker")
            peak_threads[0] = max(peak_threads[0], alive)
        for _ in range(requests):
            time.sleep(latency_ms / 1000)
        return facts, requests

    single = _timed(remote, "alone")

    def bare_threads() -> None:  # the interpreter's own floor: one plain thread per host, no pool, no results
        threads = [threading.Thread(target=remote, args=("bare",), daemon=True) for _ in range(hosts)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()

    bare = _timed(bare_threads) if concurrency >= hosts else None
    names = [f"host-{i:05d}" for i in range(hosts)]
    began = time.perf_counter()
    results = gather(names, remote, concurrency=concurrency, timeout=600)
    together = time.perf_counter() - began
    assert len(results) == hosts and all(r.facts is facts for r in results)

    def held_per_host(count: int) -> float:
        fast = lambda host: (facts, 0)  # noqa: E731  (no waiting: only what the pool keeps is measured)
        tracemalloc.start()
        gather(names[:count], fast, concurrency=concurrency)
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
        return peak / count

    return {"hosts": hosts, "single_s": single, "fleet_s": together, "bare_threads_s": bare, "peak_threads": peak_threads[0],
            "bytes_per_host_small": held_per_host(max(1, hosts // 10)), "bytes_per_host": held_per_host(hosts)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--hosts", type=int, default=1000)
    parser.add_argument("--latency-ms", type=float, default=20.0)
    parser.add_argument("--requests", type=int, default=21, help="requests per host in the pool measurement "
                        "(the lab KVM host's inventory makes 21)")
    parser.add_argument("--concurrency", type=int, default=1000,
                        help="the pool's bound (the CLI's default is lower: --concurrency there)")
    parser.add_argument("--real-hosts", type=int, default=None,
                        help="test-driver hosts for the second measurement (default: --hosts)")
    args = parser.parse_args(argv)

    p = pool(args.hosts, args.latency_ms, args.requests, args.concurrency)
    print(f"pool: {p['hosts']} hosts x {args.requests} requests x {args.latency_ms:g} ms, "
          f"at most {args.concurrency} workers")
    print(f"  one host alone (anchor):  {p['single_s']:7.3f} s")
    print(f"  all hosts together:       {p['fleet_s']:7.3f} s   ratio {p['fleet_s'] / p['single_s']:.2f}x "
          f"(goal <= 1.5x)")
    if p["bare_threads_s"] is not None:
        print(f"  {p['hosts']} bare threads, same waits: {p['bare_threads_s']:7.3f} s   ratio "
              f"{p['bare_threads_s'] / p['single_s']:.2f}x (what the interpreter and this machine allow)")
    print(f"  worker threads at peak:   {p['peak_threads']}")
    print(f"  memory held per host:     {p['bytes_per_host_small']:.0f} B at {max(1, p['hosts'] // 10)} hosts, "
          f"{p['bytes_per_host']:.0f} B at {p['hosts']} hosts")

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
