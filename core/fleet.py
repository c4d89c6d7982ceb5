"""Ask many hosts at once: bounded concurrency, a deadline per host, and partial results."""

from __future__ import annotations

import queue
import sys
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Callable, Iterable, Iterator, Sequence

from typing import TYPE_CHECKING

from gpupass.core.callbounds import CallWatch, watched_thread
from gpupass.core.domain.findings import Finding
from gpupass.core.domain.inventory import Gpu, HostFacts
from gpupass.core.domain.rules import foreign_group_members
from gpupass.core.domain.select import model_matches
from gpupass.core.domain.sharing import ShareType
from gpupass.core.errors import ConnectionFailed, GpupassError

if TYPE_CHECKING:
    from gpupass.core.plugins import Registry


@dataclass(frozen=True)
class HostResult:
    host: str
    facts: HostFacts | None = None
    error: GpupassError | None = None
    seconds: float = 0.0
    round_trips: int = 0


# At most this many hosts are read at once by default: enough that a fleet of a thousand hosts is read in about the
# time of its slowest host (each read mostly waits on the network, and a waiting worker costs a thread), still a
# bound. tests/bench/bench_fleet.py measures it.
MAX_DEFAULT_CONCURRENCY = 1024


def default_concurrency() -> int:
    """MAX_DEFAULT_CONCURRENCY, or fewer where this process may not keep that many connections open: a read holds
    a descriptor or two (its socket; for qemu+ssh the socket to ssh), and the soft open-file limit is often 1,024."""
    try:
        import resource
    except ImportError:  # Windows: sockets are not counted against a C runtime descriptor limit
        return MAX_DEFAULT_CONCURRENCY
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY:
        return MAX_DEFAULT_CONCURRENCY
    return max(8, min(MAX_DEFAULT_CONCURRENCY, (soft - 64) // 2))


# How long a thread may run Python before one waiting for the interpreter lock makes it let go (CPython's default is
# 5 ms: sys.getswitchinterval). A fleet's workers mostly wait; each answer takes the lock for a short burst of
# parsing. With hundreds of workers, the ones waiting for the lock each wake every interval to ask for it, and at
# 5 ms that asking costs CPU the reads need (tests/bench/bench_fleet.py, 1,000 test-driver hosts at 20 ms, runs taking
# turns on a busy 2-core machine: 10-35% less CPU, 0-30% less time; no change for one host, whose reads wait on no one).
FLEET_SWITCH_INTERVAL_S = 0.02


@contextmanager
def longer_turns(seconds: float = FLEET_SWITCH_INTERVAL_S) -> Iterator[None]:
    """The interpreter's switch interval raised to `seconds` while the block runs, then put back. It is the
    process's setting: the fleet commands use it (their process does nothing else meanwhile); a program calling
    gather() decides for itself."""
    previous = sys.getswitchinterval()
    sys.setswitchinterval(max(previous, seconds))
    try:
        yield
    finally:
        sys.setswitchinterval(previous)


def gather(hosts: Sequence[str], read: Callable[[str], tuple[HostFacts, int]], *,
           concurrency: int | None = None, timeout: float = 60.0,
           on_done: Callable[[HostResult], None] | None = None) -> list[HostResult]:
    """Read every host once with a pool of at most `concurrency` workers (None: default_concurrency()); a host
    that fails or hangs is one error row. A name given twice is read once and listed once (results are keyed by
    name), in the order given."""
    unique = list(dict.fromkeys(hosts))
    results: dict[str, HostResult] = {}
    for result in stream(unique, read, concurrency=concurrency, timeout=timeout):
        results[result.host] = result
        if on_done:
            on_done(result)
    return [results[host] for host in unique]


def stream(hosts: Iterable[str], read: Callable[[str], tuple[HostFacts, int]], *,
           concurrency: int | None = None, timeout: float = 60.0) -> Iterator[HostResult]:
    """Each host's result as soon as it is known, in the order they finish; a name given twice is read once.

    Threads and bookkeeping are bounded by `concurrency`, not by the number of hosts: the pool keeps nothing of a
    host once its row is handed on, besides its name (to read each name once).
    """
    unique = list(dict.fromkeys(hosts))
    bound = default_concurrency() if concurrency is None else concurrency
    workers = min(max(1, bound), len(unique))
    finished: queue.Queue[HostResult] = queue.Queue(maxsize=max(1, workers))
    pool = _Pool(unique, read, timeout, finished.put)
    pool.start(workers)
    # The queue is bounded: a caller slower than the hosts holds the workers back, rather than rows piling up.
    checked = time.monotonic()
    while not (pool.done.is_set() and finished.empty()):
        try:
            yield finished.get(timeout=_TICK_S)
        except queue.Empty:
            pass
        # Once a tick, not after every row: each look goes through every read in flight under the pool's lock,
        # which the workers need to take their next host (a thousand rows x a thousand reads).
        if time.monotonic() - checked >= _TICK_S:
            checked = time.monotonic()
            late = pool.check_deadlines()
            yield from late
            pool.count(late)


class _Pool:
    """Daemon threads taking hosts from one shared iterator; each result goes to `deliver` from the worker that
    read it.

    Workers are daemon threads, not an executor: a host that never answers must not keep the process from
    exiting. check_deadlines(), called by the thread that waits on the pool, gives a host past its deadline its
    timeout row and a new worker, so one hung host costs one thread, not the pool's progress; should the hung
    read answer after all, that answer is dropped (the timeout row stands). A host is past its deadline when its
    read takes longer than `timeout`, or when one call the read announced (core/callbounds.py: the KVM backend's
    libvirt calls) takes longer than that call's own bound; the row then carries the backend's own error.
    """

    def __init__(self, hosts: Sequence[str], read: Callable[[str], tuple[HostFacts, int]], timeout: float,
                 deliver: Callable[[HostResult], None]) -> None:
        self._pending = iter(hosts)
        self._read, self._timeout, self._deliver = read, timeout, deliver
        self._lock = threading.Lock()
        # host -> when its read began, and its worker's watch: at most the workers (plus hung ones)
        self._in_flight: dict[str, tuple[float, CallWatch]] = {}
        self._outstanding = len(hosts)
        self.done = threading.Event()
        if not hosts:
            self.done.set()

    def start(self, workers: int) -> None:
        for _ in range(workers):
            self._start_worker()

    def _start_worker(self) -> None:
        threading.Thread(target=self._work, daemon=True, name="gpupass-fleet-worker").start()

    def _work(self) -> None:
        watch = watched_thread()  # this thread's calls are bounded by check_deadlines, not by a thread of their own
        while True:
            with self._lock:
                host = next(self._pending, None)
                if host is None:
                    return
                began = time.monotonic()
                self._in_flight[host] = (began, watch)
            result = _read_one(host, self._read, began)
            with self._lock:
                if self._in_flight.pop(host, None) is None:
                    continue  # past its deadline: its timeout row was given
            self._deliver(result)
            self._answered()

    def _answered(self) -> None:
        with self._lock:
            self._outstanding -= 1
            if not self._outstanding:
                self.done.set()

    def check_deadlines(self) -> list[HostResult]:
        """The timeout rows of hosts now past their deadline (the caller hands them on)."""
        now = time.monotonic()
        with self._lock:
            overdue = []
            for host, (began, watch) in self._in_flight.items():
                late = watch.overdue(now)  # one call past its own bound (the backend's error says which)
                if late is None and now - began > self._timeout:
                    late = ConnectionFailed(f"{host} did not answer within {self._timeout:g} s",
                                            remedy="check the host, or raise --timeout")
                if late is not None:
                    overdue.append((host, began, late))
            for host, _, _ in overdue:
                del self._in_flight[host]
        rows = []
        for host, began, late in overdue:
            error = late if isinstance(late, GpupassError) else GpupassError(f"{type(late).__name__}: {late}")
            rows.append(HostResult(host, error=error, seconds=now - began))
            self._start_worker()  # the stuck worker stays with its host; the rest of the list keeps its pool
        return rows

    def count(self, rows: list[HostResult]) -> None:
        for _ in rows:
            self._answered()


_TICK_S = 0.05  # how often the waiting thread looks for hosts past their deadline


def _read_one(host: str, read: Callable[[str], tuple[HostFacts, int]], began: float) -> HostResult:
    try:
        facts, trips = read(host)
        return HostResult(host, facts=facts, seconds=time.monotonic() - began, round_trips=trips)
    except GpupassError as exc:
        return HostResult(host, error=exc, seconds=time.monotonic() - began)
    except Exception as exc:  # one broken host must never end the run for the others
        return HostResult(host, error=GpupassError(f"{type(exc).__name__}: {exc}"), seconds=time.monotonic() - began)


def matches_model(gpu: Gpu, model: str) -> bool:
    """vendor:device (10de:20b5) or the model's words ('A100 80GB' matches 'NVIDIA A100 PCIe 80GB')."""
    text = model.strip().lower()
    if ":" in text:
        vendor, _, device = text.partition(":")
        return f"{gpu.function.vendor_id:04x}" == vendor.zfill(4) and f"{gpu.function.device_id:04x}" == device.zfill(4)
    return model_matches(gpu.model or gpu.function.name, text)


def blockers_now(facts: HostFacts, gpu: Gpu, registry: Registry) -> list[Finding]:
    """The BLOCKER findings `gpupass check` gives for this GPU and a VM that is off, EFI and on the GPU's host.

    fleet find and migrate plan judge "can take a VM now" with this, so they agree with check: a card that
    needs a host reboot first (ESXi passthrough not active) is not free *now*.
    """
    from gpupass.core.domain.context import CheckContext
    from gpupass.core.domain.inventory import Firmware, PowerState, Vm
    from gpupass.core.domain.request import AssignmentRequest
    from gpupass.core.service import preflight

    backend = next((b for b in registry.backends if b.platform == facts.host.platform), None)
    if backend is None:
        return []
    probe = Vm(name="(any VM)", power_state=PowerState.OFF, firmware=Firmware.EFI, memory_bytes=0,
               location=gpu.location)
    ctx = CheckContext("assign", backend.platform, facts, probe, (gpu,), AssignmentRequest(probe.name, (gpu.address,)),
                       backend.mmio_policy, backend.capabilities)
    return [f for f in preflight(ctx, registry) if f.blocks]


def assignable(facts: HostFacts, gpu: Gpu, registry: Registry | None = None) -> bool:
    """Free now, passthrough-capable, on a host with the IOMMU on, alone in its group (with its companions);
    with the registry, also nothing else that `check` would block on."""
    structural = (
        gpu.assigned_to is None
        and facts.host.iommu_enabled is not False
        and gpu.passthrough.capable is not False
        and not foreign_group_members(facts, gpu, set())
    )
    return structural and (registry is None or not blockers_now(facts, gpu, registry))


@dataclass(frozen=True)
class Candidate:
    host: str
    location: str
    gpus: tuple[Gpu, ...]


def find(results: Iterable[HostResult], model: str, count: int, registry: Registry | None = None) -> list[Candidate]:
    """Hosts (and, on a vCenter, the ESXi host inside it) that can take a VM with `count` such GPUs now."""
    candidates = []
    for result in results:
        if result.facts is None:
            continue
        by_location: dict[str, list[Gpu]] = {}
        for gpu in result.facts.gpus:
            if matches_model(gpu, model) and assignable(result.facts, gpu, registry):
                by_location.setdefault(gpu.location, []).append(gpu)
        for location, gpus in sorted(by_location.items()):
            if len(gpus) >= count:
                candidates.append(Candidate(result.host, location, tuple(gpus)))
    candidates.sort(key=lambda c: (-len(c.gpus), c.host, c.location))
    return candidates


@dataclass(frozen=True)
class ShareCapacity:
    """How many more shares of one type one GPU can give now (None: the platform does not say)."""

    host: str
    location: str
    gpu: Gpu
    type: ShareType
    free: int | None


def share_capacity(results: Iterable[HostResult], profile: str) -> list[ShareCapacity]:
    """Every GPU of the fleet that offers a share type answering to `profile` (id, name or vGPU profile, see
    ShareType.answers_to), with its room now: instances the driver can still create plus shares of the type that
    exist and no VM holds. A GPU given whole, or holding another type where the driver allows one type at a time,
    has no room (the same facts the share preflight rules read). Most room first."""
    rows = []
    for result in results:
        if result.facts is None:
            continue
        for gpu in result.facts.gpus:
            sharing = gpu.sharing
            for share_type in sharing.types_answering(profile):
                other_type = sharing.one_type_at_a_time and bool(sharing.other_types_held(share_type))
                if gpu.assigned_to or other_type:
                    free: int | None = 0
                elif share_type.available is None:
                    free = len(sharing.free(share_type.id)) or None
                else:
                    free = share_type.available + len(sharing.free(share_type.id))
                rows.append(ShareCapacity(result.host, gpu.location, gpu, share_type, free))
    rows.sort(key=lambda r: (-(r.free if r.free is not None else -1), r.host, r.location, r.gpu.address))
    return rows
