"""Ask many hosts at once: bounded concurrency, a deadline per host, and partial results."""

from __future__ import annotations

import queue
import threading
import time
from dataclasses import dataclass
from typing import Callable, Iterable, Sequence

from typing import TYPE_CHECKING

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


DEFAULT_CONCURRENCY = 32


def gather(hosts: Sequence[str], read: Callable[[str], tuple[HostFacts, int]], *,
           concurrency: int = DEFAULT_CONCURRENCY, timeout: float = 60.0,
           on_done: Callable[[HostResult], None] | None = None) -> list[HostResult]:
    """Read every host once with a pool of at most `concurrency` workers; a host that fails or hangs is one
    error row. A name given twice is read once and listed once (results are keyed by name).

    The pool takes hosts from one shared iterator, so threads and bookkeeping stay bounded by `concurrency`
    whatever the number of hosts; only the results grow with it. Workers are daemon threads, not an
    executor: a host that never answers must not keep the process from exiting. A worker stuck on a host
    past its deadline is replaced, so one hung host costs one thread, not the pool's progress.
    """
    unique = list(dict.fromkeys(hosts))
    pending = iter(unique)
    lock = threading.Lock()
    in_flight: dict[str, float] = {}  # host -> when its read began; at most the pool's size (plus hung ones)
    finished: queue.Queue[HostResult] = queue.Queue()

    def worker() -> None:
        while True:
            with lock:
                host = next(pending, None)
                if host is None:
                    return
                began = in_flight[host] = time.monotonic()
            finished.put(_read_one(host, read, began))
            with lock:
                in_flight.pop(host, None)

    def start_worker() -> None:
        threading.Thread(target=worker, daemon=True, name="gpupass-fleet-worker").start()

    for _ in range(min(max(1, concurrency), len(unique))):
        start_worker()
    results: dict[str, HostResult] = {}

    def record(result: HostResult) -> None:
        results[result.host] = result
        if on_done:
            on_done(result)

    last_check = time.monotonic()
    while len(results) < len(unique):
        try:
            result = finished.get(timeout=0.05)
            if result.host not in results:  # else it answered after its deadline: the timeout row stands
                record(result)
        except queue.Empty:
            pass
        now = time.monotonic()
        if now - last_check < 0.05:
            continue
        last_check = now
        with lock:
            overdue = [(host, began) for host, began in in_flight.items() if now - began > timeout]
            for host, _ in overdue:
                del in_flight[host]
        for host, began in overdue:
            if host in results:
                continue
            record(HostResult(host, error=ConnectionFailed(f"{host} did not answer within {timeout:g} s",
                                                           remedy="check the host, or raise --timeout"),
                              seconds=now - began))
            start_worker()  # the stuck worker stays with its host; the rest of the list keeps its pool
    return [results[host] for host in unique]


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
                other_type = sharing.one_type_at_a_time and any(s.type_id != share_type.id for s in sharing.shares)
                if gpu.assigned_to or other_type:
                    free: int | None = 0
                elif share_type.available is None:
                    free = len(sharing.free(share_type.id)) or None
                else:
                    free = share_type.available + len(sharing.free(share_type.id))
                rows.append(ShareCapacity(result.host, gpu.location, gpu, share_type, free))
    rows.sort(key=lambda r: (-(r.free if r.free is not None else -1), r.host, r.location, r.gpu.address))
    return rows
