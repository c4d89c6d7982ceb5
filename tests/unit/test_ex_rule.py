"""The `ex_` rule (docs/plugins.md, "Platform-only extras"): every public name of a backend class, and of an
instance of it, is the port's (gpupass.core.ports.Backend) or starts with `ex_`; anything else is private.

So the core's port can grow without clashing with a backend's extras, and a caller who uses an extra sees that
it is tied to one platform (Apache Libcloud's convention for its drivers)."""

from __future__ import annotations

from typing import Any

import pytest

from gpupass.core.cli.plugins_doc import load_example
from gpupass.core.domain.inventory import HostFacts
from gpupass.core.ports import Backend
from gpupass.core.target import Secret, Target

# A host each backend can be constructed for (constructors never connect).
URIS = {"kvm": "qemu:///system", "esxi": "esxi://user@vcenter.example/DC", "hyperv": "hyperv://user@hv.example",
        "example": "example://demo"}


class _Bare(Backend):
    """The port alone: what every backend has without adding anything."""

    platform, schemes = "bare", ("bare",)

    def inventory(self) -> HostFacts:
        raise NotImplementedError

    def plan_assign(self, ctx: Any) -> list[Any]:
        raise NotImplementedError

    def plan_release(self, ctx: Any) -> list[Any]:
        raise NotImplementedError

    def apply(self, step: Any) -> Any:
        raise NotImplementedError

    def undo(self, step: Any, token: Any) -> None:
        raise NotImplementedError


def public(obj: object) -> set[str]:
    names = set(dir(type(obj))) | set(vars(obj))
    return {name for name in names if not name.startswith("_")}


PORT = public(_Bare(Target(uri="bare://x"))) | set(Backend.__annotations__)


def backends() -> list[type[Backend]]:
    from gpupass.core.plugins import collect, make_plugin_manager

    registry = collect(make_plugin_manager(extra_plugins=[load_example()]))
    return sorted(registry.backends, key=lambda b: b.platform)


def test_the_port_is_what_the_rule_allows():
    assert {"inventory", "plan_assign", "apply", "undo", "read_back", "observe", "target", "round_trips",
            "platform", "schemes", "mmio_policy", "capabilities"} <= PORT


@pytest.mark.parametrize("backend", backends(), ids=lambda b: b.platform)
def test_a_backend_adds_only_ex_names_to_the_port(backend):
    instance = backend(Target(uri=URIS[backend.platform], password=Secret("not used")))
    extras = public(instance) - PORT
    assert all(name.startswith("ex_") for name in extras), (
        f"{backend.__name__} has public names beyond the port: {sorted(n for n in extras if not n.startswith('ex_'))}"
        "; make them private (_name) or, for a platform-only extra meant for callers, ex_name")


def test_the_rule_catches_a_public_extra():
    class Leaky(_Bare):
        api_version = "8.0"

    assert public(Leaky(Target(uri="bare://x"))) - PORT == {"api_version"}


def test_every_backend_is_checked():
    assert {b.platform for b in backends()} >= {"kvm", "esxi", "hyperv", "example"}
