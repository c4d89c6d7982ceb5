"""Fleet figures, run on demand: `.venv/bin/python tests/bench/bench_fleet.py [--hosts 1000] [--latency-ms 20]`.

Goal (issue 11): N hosts read together within 1.5x of the slowest single host's time, with a bounded worker
pool and memory flat in the number of hosts. Two measurements, each with its anchor from the same run:

- the pool itself: N hosts whose read is `requests` sequential waits of the injected latency and no CPU work
  (a remote host's inventory as the fleet sees it); anchor: the slowest of 5 such hosts read alone. Beside it,
  the same N reads on N plain threads (no pool): what one Python process does with that many waiting reads,
  since every answer must take the interpreter lock in turn;
- real libvirt test-driver hosts (the lab's host file copied N times) read by the KVM backend, every libvirt
  request (the open included: as many waits as round trips) delayed by the injected latency; anchor: the slowest
  of a sample of these hosts read alone. Beside it, the same hosts read through the same pool by what a
  hand-written libvirt-python script does for the same answer (the same requests, each document parsed once with
  ElementTree, no model): the floor any Python client reaches in one process here. Once more with every call
  bounded as for a remote URI (KvmBackend._has_peer): read alone, each call on the backend's watchdog thread; in
  the fleet, on the pool's worker that watches it (core/callbounds.py). This measurement is bound by CPU: the test
  driver runs inside this process (opening a host parses its file, which a remote host does on its own side), and
  every read's Python work takes the one interpreter lock. So it also prints each read's CPU time split into the
  simulated host's own work (the test driver's open), gpupass reading the test file (test:// only) and the client's
  (gpupass: what a remote fleet pays), the whole process's CPU during the fleet, and the goal's arithmetic
  (goal_arithmetic): the CPU per host 1.5x allows, and the best ratio the measured CPU allows on this machine's
  cores, next to the measured ratio and the script's floor.
- the whole commands as an admin runs them (`gpupass gpus --json HOST` against `gpupass fleet gpus --json --hosts
  ...` of the same hosts, each a new process: start-up, the read, the rows, the JSON), with the same delay put in
  every libvirt request of that process's KVM backend (gpupass_with_latency below).

Also the worker threads at the peak, and the pool's memory at its peak (tracemalloc) for N/10 and N hosts at the
same bound, rows streamed (gpupass.core.fleet.stream): their ratio is ~1 when the pool holds nothing per host.
Not collected by pytest (see conftest.py); tests/bench/test_bench_smoke.py runs it small. Figures from this machine
(2 cores shared with other work, so they move from run to run) are in docs/architecture.md, "Many hosts at once".
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import tracemalloc
import xml.etree.ElementTree as ET
from importlib import resources
from pathlib import Path

import libvirt

from gpupass.backends.kvm.backend import KvmBackend
from gpupass.core.fleet import FLEET_SWITCH_INTERVAL_S, gather, longer_turns, stream
from gpupass.core.target import Target


HERE = Path(__file__).resolve().parent


class SlowKvmBackend(KvmBackend):
    """The real KVM backend; every libvirt request (the open too) waits `latency` seconds first, like a distant
    host. With no latency nothing waits: even time.sleep(0) costs ~0.08 ms here (the kernel's timer slack), which
    once made the CPU figure below read 2 ms per host too high."""

    latency = 0.0
    # True: the backend bounds every call as it does for a remote URI (KvmBackend._has_peer; a test:// host has no
    # peer to hang): read alone, each call on the backend's watchdog thread, one more thread hand-over per request;
    # in the fleet, on the pool's worker that watches it (core/callbounds.py). The wait itself stays on the calling
    # thread.
    remote_calls = False

    @property
    def _has_peer(self):
        return self.remote_calls or super()._has_peer

    def _connection(self):
        if self._conn is None and self.latency:
            time.sleep(self.latency)
        return super()._connection()

    def _call(self, action, function, *args):
        if self.latency:
            time.sleep(self.latency)
        return super()._call(action, function, *args)


def gpupass_with_latency() -> None:
    """`gpupass ARGS...` run as `python -c ... LATENCY_MS ARGS...`: the CLI's whole process, with every libvirt
    request of its KVM backend delayed as SlowKvmBackend does (the registry builds KvmBackend itself)."""
    from gpupass.backends.kvm import backend as kvm
    from gpupass.core.cli.entry import main

    latency = float(sys.argv[1]) / 1000
    call, connection = kvm.KvmBackend._call, kvm.KvmBackend._connection

    def delayed_call(self, action, function, *args):
        time.sleep(latency)
        return call(self, action, function, *args)

    def delayed_connection(self):
        if self._conn is None:
            time.sleep(latency)
        return connection(self)

    kvm.KvmBackend._call, kvm.KvmBackend._connection = delayed_call, delayed_connection
    sys.argv = ["gpupass", *sys.argv[2:]]
    main()


def script_read(uri: str):
    """What a hand-written libvirt-python script does to learn the same (the PCI and mediated devices, the domain
    definitions): the same requests as the backend's inventory, each delayed alike, each document parsed once with
    ElementTree, no model built. -> (the documents, round trips)."""
    def ask(function, *args):
        if SlowKvmBackend.latency:
            time.sleep(SlowKvmBackend.latency)
        return function(*args)

    conn = ask(libvirt.open, uri)
    try:
        documents, trips = [], 1
        for kind in (libvirt.VIR_CONNECT_LIST_NODE_DEVICES_CAP_PCI_DEV, libvirt.VIR_CONNECT_LIST_NODE_DEVICES_CAP_MDEV):
            devices = ask(conn.listAllDevices, kind)
            documents += [ET.fromstring(ask(device.XMLDesc, 0)) for device in devices]
            trips += 1 + len(devices)
        if devices:  # which mediated devices are defined but not started: the test driver refuses the flag
            trips += 1
            try:
                stopped = ask(conn.listAllDevices, libvirt.VIR_CONNECT_LIST_NODE_DEVICES_CAP_MDEV
                              | libvirt.VIR_CONNECT_LIST_NODE_DEVICES_INACTIVE)
            except libvirt.libvirtError:
                stopped = []
            documents += [ET.fromstring(ask(device.XMLDesc, 0)) for device in stopped]
            trips += len(stopped)
        stats = ask(conn.getAllDomainStats, libvirt.VIR_DOMAIN_STATS_STATE, 0)
        documents += [ET.fromstring(ask(domain.XMLDesc, libvirt.VIR_DOMAIN_XML_INACTIVE)) for domain, _ in stats]
        # a running domain's live definition too (what it holds now may differ from what it will hold at its next start)
        running = [domain for domain, values in stats if values.get("state.state") in (1, 2, 3, 4, 7)]
        documents += [ET.fromstring(ask(domain.XMLDesc, 0)) for domain in running]
        return documents, trips + 1 + len(stats) + len(running)
    finally:
        conn.close()


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


def _cpu(function, *args) -> float:
    """The CPU time this thread spends in function(*args) (no latency is set while this is measured)."""
    began = time.thread_time()
    function(*args)
    return time.thread_time() - began


def _process_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def cpu_per_host(uris: list[str]) -> dict[str, float]:
    """Median CPU seconds of one host's read, and of its parts: libvirt's test driver opening the host (it parses
    the host's file in this process: a remote host does that work on its own side), gpupass reading the same file
    for the drivers the test driver does not report (test:// hosts only), and the script's read."""
    assert SlowKvmBackend.latency == 0
    for uri in uris[:2]:  # first reads warm caches (imports, libvirt's driver tables)
        read(uri), script_read(uri)

    def test_file(uri: str) -> None:
        SlowKvmBackend(Target(uri=uri))._test_file_drivers()

    def parts(function) -> float:
        return statistics.median(_cpu(function, uri) for uri in uris)

    def answers(uri: str) -> float:
        """The requests of a read after the open, made and not parsed: the test driver answering them in this
        process (a remote client decodes the replies instead)."""
        conn = libvirt.open(uri)
        try:
            began = time.thread_time()
            for kind in (libvirt.VIR_CONNECT_LIST_NODE_DEVICES_CAP_PCI_DEV, libvirt.VIR_CONNECT_LIST_NODE_DEVICES_CAP_MDEV):
                for device in conn.listAllDevices(kind):
                    device.XMLDesc(0)
            for domain, _ in conn.getAllDomainStats(libvirt.VIR_DOMAIN_STATS_STATE, 0):
                domain.XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE)
            return time.thread_time() - began
        finally:
            conn.close()

    return {"read": parts(read), "open": parts(lambda uri: libvirt.open(uri).close()),
            "test_file": parts(test_file), "script": parts(script_read),
            "answers": statistics.median(answers(uri) for uri in uris)}


def _fleet(uris: list[str], function, concurrency: int) -> tuple[float, float, int]:
    """Wall seconds and this process's CPU seconds (user + system, every thread) of reading every host through
    the pool, and the round trips counted."""
    cpu, began = _process_cpu(), time.perf_counter()
    results = gather(uris, function, concurrency=concurrency, timeout=600)
    wall, cpu = time.perf_counter() - began, _process_cpu() - cpu
    assert all(r.facts is not None for r in results), [r.error for r in results if r.error]
    return wall, cpu, sum(r.round_trips for r in results)


def run(hosts: int, latency_ms: float, concurrency: int, sample: int = 10) -> dict[str, float]:
    """Real test-driver hosts: the fleet's wall time against the slowest of `sample` hosts read alone, the same for
    the script's reads, and where the CPU goes."""
    with tempfile.TemporaryDirectory() as scratch:
        uris = make_hosts(Path(scratch), hosts)
        SlowKvmBackend.latency = 0.0
        cpu = cpu_per_host(uris[:sample])  # no latency: only the work
        SlowKvmBackend.latency = latency_ms / 1000
        slowest = max(_timed(read, uri) for uri in uris[:sample])
        script_slowest = max(_timed(script_read, uri) for uri in uris[:sample])
        parallel, fleet_cpu, trips = _fleet(uris, read, concurrency)
        with longer_turns():  # as the fleet commands read (gpupass.core.cli.fleet)
            turns_parallel, turns_cpu, _ = _fleet(uris, read, concurrency)
            SlowKvmBackend.remote_calls = True
            try:
                remote_slowest = max(_timed(read, uri) for uri in uris[:sample])
                remote_parallel, remote_cpu, _ = _fleet(uris, read, concurrency)
            finally:
                SlowKvmBackend.remote_calls = False
            # the floor under the same switch interval as the figures it is set beside
            script_parallel, script_cpu, script_trips = _fleet(uris, script_read, concurrency)
        one_trips = read(uris[0])[1]
    assert trips == hosts * one_trips and script_trips == trips  # the script asks what gpupass asks
    return {"hosts": hosts, "latency_ms": latency_ms, "concurrency": concurrency, "round_trips": trips,
            "fleet_s": parallel, "slowest_single_s": slowest, "fleet_cpu_s": fleet_cpu,
            "turns_fleet_s": turns_parallel, "turns_fleet_cpu_s": turns_cpu,
            "remote_fleet_s": remote_parallel, "remote_slowest_single_s": remote_slowest, "remote_fleet_cpu_s": remote_cpu,
            "script_fleet_s": script_parallel, "script_slowest_single_s": script_slowest, "script_fleet_cpu_s": script_cpu,
            "answers_cpu_s": cpu["answers"],
            "cpu_per_host_s": cpu["read"], "open_cpu_s": cpu["open"], "test_file_cpu_s": cpu["test_file"],
            "script_cpu_per_host_s": cpu["script"], "sequential_s": slowest * hosts}


def commands(hosts: int, latency_ms: float, runs: int = 3) -> dict[str, float]:
    """The whole processes an admin runs: `gpupass gpus --json HOST` (median of `runs`) against `gpupass fleet gpus
    --json --hosts` of `hosts` such hosts and the same without --json (the table; stdout is not a terminal, so no
    progress is drawn), each request delayed by the latency (gpupass_with_latency)."""
    launcher = [sys.executable, "-c", f"import sys; sys.path.insert(0, {str(HERE)!r}); import bench_fleet; "
                                      "bench_fleet.gpupass_with_latency()", f"{latency_ms:g}"]

    def wall(*args: str) -> float:
        began = time.perf_counter()
        done = subprocess.run([*launcher, *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        seconds = time.perf_counter() - began
        assert done.returncode == 0, done.stderr  # 4 if any host could not be read
        if "--json" in args and "fleet" in args:
            assert len(json.loads(done.stdout)["hosts"]) == hosts
        return seconds

    with tempfile.TemporaryDirectory(dir="/tmp" if Path("/tmp").is_dir() else None) as scratch:
        uris = make_hosts(Path(scratch), hosts)
        single = statistics.median(wall("gpus", "--json", uri) for uri in uris[:runs])
        fleet_json = wall("fleet", "gpus", "--json", "--hosts", ",".join(uris))
        fleet_table = wall("fleet", "gpus", "--hosts", ",".join(uris))
    return {"hosts": hosts, "single_s": single, "fleet_json_s": fleet_json, "fleet_table_s": fleet_table}


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
    cpu, began = _process_cpu(), time.perf_counter()
    results = gather(names, remote, concurrency=concurrency, timeout=600)
    together, cpu = time.perf_counter() - began, _process_cpu() - cpu
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
    return {"hosts": hosts, "single_s": single, "fleet_s": together, "bare_threads_s": bare, "fleet_cpu_s": cpu,
            "requests": hosts * requests,
            "peak_threads": max(alive) - before,  # the threads the pool added
            "streamed_small": peak_bytes(small, False), "streamed": peak_bytes(hosts, False),
            "kept_small": peak_bytes(small, True), "kept": peak_bytes(hosts, True)}


MEMORY_POOL = 32  # the bound the memory figures are taken at (the same for both sizes)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--hosts", type=int, default=1000)
    parser.add_argument("--latency-ms", type=float, default=20.0)
    parser.add_argument("--requests", type=int, default=28, help="requests per host in the pool measurement "
                        "(the lab KVM host's inventory makes 28, the refused listing of stopped mediated devices "
                        "included)")
    parser.add_argument("--concurrency", type=int, default=1000,
                        help="the pool's bound (the CLI's --concurrency; its default, gpupass.core.fleet.default_concurrency(), "
                             "is every host up to 1,024)")
    parser.add_argument("--real-hosts", type=int, default=None,
                        help="test-driver hosts for the second measurement (default: --hosts)")
    parser.add_argument("--command-hosts", type=int, default=None,
                        help="test-driver hosts for the whole commands (default: --real-hosts)")
    parser.add_argument("--no-commands", action="store_true", help="skip the whole commands")
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
    print(f"  CPU of this process: {p['fleet_cpu_s']:.2f} s = {p['fleet_cpu_s'] / p['requests'] * 1e6:.0f} us per "
          f"request waited (each answer wakes its thread, which takes the interpreter lock again): "
          f"{p['requests']} requests need {p['fleet_cpu_s'] / p['fleet_s']:.2f} of a core")
    small = max(1, p["hosts"] // 10)
    print(f"  memory at the peak, {MEMORY_POOL} workers, rows streamed: {p['streamed_small'] / 1024:.0f} KiB at {small} "
          f"hosts, {p['streamed'] / 1024:.0f} KiB at {p['hosts']}: ratio {p['streamed'] / p['streamed_small']:.2f} "
          f"for {p['hosts'] / small:.0f}x the hosts (flat: ~1)")
    print(f"  the same, every row kept (gather's list): {p['kept_small'] / small:.0f} B per host at {small} hosts, "
          f"{p['kept'] / p['hosts']:.0f} B per host at {p['hosts']}")

    r = run(args.real_hosts or args.hosts, args.latency_ms, args.concurrency)
    report_real_hosts(r)
    if not args.no_commands:
        report_commands(commands(args.command_hosts or r["hosts"], args.latency_ms))
    return 0


def goal_arithmetic(r: dict[str, float], cores: int | None = None) -> dict[str, float]:
    """What the goal allows on this machine, from the CPU each read costs alone: the lowest fleet/anchor ratio any
    scheduling could reach. A process's Python work runs under one interpreter lock, so the client's CPU (and
    gpupass's reading of the test file, also Python) adds up on one core; the test driver's open is C code that lets
    the lock go, so it only needs some core. -> the parts per host (seconds), the budget per host for 1.5x, and the
    best ratios: the client alone (a remote fleet, one process), with this run's simulation, and from the fleet's own
    measured CPU."""
    cores = cores or os.cpu_count() or 1
    n, anchor = r["hosts"], r["slowest_single_s"]
    host, simulation = r["open_cpu_s"], r["test_file_cpu_s"]
    client = max(0.0, r["cpu_per_host_s"] - host - simulation)
    under_lock = n * (client + simulation)
    return {"cores": cores, "host_s": host, "simulation_s": simulation, "client_s": client,
            "script_client_s": max(0.0, r["script_cpu_per_host_s"] - host),
            "budget_s": 1.5 * anchor / n,
            "client_bound": max(anchor, n * client) / anchor,
            "simulated_bound": max(anchor, under_lock, (under_lock + n * host) / cores) / anchor,
            "fleet_cpu_bound": max(anchor, r["turns_fleet_cpu_s"] / cores) / anchor}


def report_real_hosts(r: dict[str, float]) -> None:
    n, anchor = r["hosts"], r["slowest_single_s"]
    ms = lambda seconds: f"{seconds * 1000:.2f} ms"  # noqa: E731
    print(f"\nreal test-driver hosts: {n} x lab-kvm, {r['latency_ms']:g} ms per libvirt request, "
          f"{r['round_trips']} round trips in all, at most {r['concurrency']} workers")
    print(f"  slowest single host (anchor): {anchor:7.3f} s")
    print(f"  all hosts together:           {r['fleet_s']:7.3f} s   ratio {r['fleet_s'] / anchor:.2f}x (goal <= 1.5x)")
    print(f"  the same, switch interval {FLEET_SWITCH_INTERVAL_S * 1000:g} ms (as the fleet commands read): "
          f"{r['turns_fleet_s']:.3f} s   ratio {r['turns_fleet_s'] / anchor:.2f}x, CPU {r['turns_fleet_cpu_s']:.2f} s")
    print(f"  the same at {FLEET_SWITCH_INTERVAL_S * 1000:g} ms, every call bounded as for a remote URI (in the fleet "
          f"on the pool's worker, core/callbounds.py): {r['remote_fleet_s']:.3f} s   ratio "
          f"{r['remote_fleet_s'] / anchor:.2f}x; {r['remote_fleet_s'] / r['remote_slowest_single_s']:.2f}x of its own "
          f"slowest host read alone, each call on the watchdog thread ({r['remote_slowest_single_s']:.3f} s); "
          f"CPU {r['remote_fleet_cpu_s']:.2f} s")
    print(f"  the script's reads, same pool and switch interval: {r['script_fleet_s']:6.3f} s   ratio "
          f"{r['script_fleet_s'] / r['script_slowest_single_s']:.2f}x of its own slowest host "
          f"({r['script_slowest_single_s']:.3f} s): the floor for a Python client in one process here")
    g = goal_arithmetic(r)
    print(f"  CPU per host, each read alone (median thread CPU time, no latency): {ms(r['cpu_per_host_s'])} =")
    print(f"    {ms(g['host_s']):>9}  the simulated host's own work: libvirt's test driver opening the host's file "
          f"(C code in this process; a remote host does it on its side)")
    print(f"    {ms(g['simulation_s']):>9}  gpupass reading that file for the drivers the test driver does not report "
          f"(test:// only: a real host's node devices carry them)")
    print(f"    {ms(g['client_s']):>9}  the client: gpupass's libvirt calls, parsing and model, what a remote fleet "
          f"pays per host (the script's: {ms(g['script_client_s'])}); counted in it, though the test driver does it "
          f"in this process: {ms(r['answers_cpu_s'])} answering the requests after the open (a remote client decodes "
          f"the replies instead)")
    print(f"  CPU of this process during the fleet: {r['fleet_cpu_s']:.2f} s = {ms(r['fleet_cpu_s'] / n)} per host, "
          f"{r['fleet_cpu_s'] / n / r['cpu_per_host_s']:.1f}x a read's own (threads taking turns at the interpreter "
          f"lock); the script's fleet {r['script_fleet_cpu_s']:.2f} s")
    print(f"  the goal's arithmetic ({n} hosts, anchor {anchor:.3f} s, {g['cores']} cores here; a process's Python work "
          f"runs under one interpreter lock, one core at a time):")
    print(f"    1.5x leaves {1.5 * anchor:.2f} s for all reads' client CPU at best (each hidden in the others' waits): "
          f"{ms(g['budget_s'])} per host; measured {ms(g['client_s'])}")
    print(f"    the client's CPU alone allows at best {g['client_bound']:.2f}x in one process "
          f"({n} x {ms(g['client_s'])} = {n * g['client_s']:.2f} s under one lock; a remote fleet's bound)")
    print(f"    with this run's simulation on the same {g['cores']} cores, at best {g['simulated_bound']:.2f}x "
          f"(+{ms(g['simulation_s'])} under the lock, +{ms(g['host_s'])} on any core)")
    print(f"    the fleet's own CPU ({r['turns_fleet_cpu_s']:.2f} s at the commands' switch interval) on "
          f"{g['cores']} cores: at best {g['fleet_cpu_bound']:.2f}x")
    print(f"    measured {r['turns_fleet_s'] / anchor:.2f}x (the commands' switch interval), the hand-written script's "
          f"reads {r['script_fleet_s'] / r['script_slowest_single_s']:.2f}x (the floor for a Python client here)")
    print(f"  one host after another (estimated): {r['sequential_s']:7.1f} s")


def report_commands(c: dict[str, float]) -> None:
    print(f"\nwhole commands, each a new process ({c['hosts']} test-driver hosts, the same delay per request):")
    print(f"  gpupass gpus --json HOST (anchor, median): {c['single_s']:7.3f} s")
    print(f"  gpupass fleet gpus --json --hosts ...:     {c['fleet_json_s']:7.3f} s   ratio "
          f"{c['fleet_json_s'] / c['single_s']:.2f}x (goal <= 1.5x)")
    print(f"  gpupass fleet gpus --hosts ... (table):    {c['fleet_table_s']:7.3f} s   ratio "
          f"{c['fleet_table_s'] / c['single_s']:.2f}x")


if __name__ == "__main__":
    raise SystemExit(main())
