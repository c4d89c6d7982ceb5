"""Plans made from a live host and from its snapshot, for the typed-step round-trip tests of each backend."""

from __future__ import annotations

import contextlib
import importlib
import inspect
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Sequence

from gpupass.core import snapshot
from gpupass.core.domain import claims
from gpupass.core.hosts import open_snapshot
from gpupass.core.plugins import default_registry
from gpupass.core.ports import Backend
from gpupass.core.service import make_plan


def payload_types(platform: str) -> set[type]:
    module = importlib.import_module(f"gpupass.backends.{platform}.steps")
    return {c for _, c in inspect.getmembers(module, inspect.isclass) if c.__module__ == module.__name__}


def payloads_survive_a_snapshot(backend: Backend, requests: list[Any], tmp_path: Path,
                                planners: Sequence[Callable[[Backend, Any], Any]] = ()) -> set[type]:
    """Plan each request from the live host and from a snapshot of it; every step's payload must be equal
    (what the backend would apply is the same). `planners`: plans that are not requests (a backend's ex_ planner),
    each called as planner(backend, facts) on both. Returns the payload types the plans held."""
    registry = default_registry()
    facts = backend.inventory()
    path = tmp_path / "host.json"
    snapshot.write(path, facts, type(backend).state_to_json(facts.state), backend.target.label)
    offline = open_snapshot(path, registry)
    recorded = offline.inventory()
    seen: set[type] = set()
    with _one_second():
        for request in requests:
            live = make_plan(backend, facts, request, registry)
            planned = make_plan(offline, recorded, request, registry)
            assert [s.payload for s in planned.steps] == [s.payload for s in live.steps], request
            assert [s.action for s in planned.steps] == [s.action for s in live.steps]
            seen |= {type(s.payload) for s in live.steps if s.writes}
        for planner in planners:
            live, planned = planner(backend, facts), planner(offline, recorded)
            assert [s.payload for s in planned.steps] == [s.payload for s in live.steps], planner
            seen |= {type(s.payload) for s in live.steps if s.writes}
    return seen


@contextlib.contextmanager
def _one_second() -> Any:
    """Both plans stamped with the same time: an intent record names when its run began (to the second), and the
    live and the snapshot plan must not differ only because a second ticked between them."""
    frozen = datetime(2026, 1, 1, tzinfo=timezone.utc).isoformat(timespec="seconds")
    real = claims._now
    claims._now = lambda: frozen  # type: ignore[assignment]
    try:
        yield
    finally:
        claims._now = real  # type: ignore[assignment]

