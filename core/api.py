"""The Python API: what the CLI does, for scripts. Re-exported by the top-level package (`from gpupass import ...`).

    import gpupass

    with gpupass.open_host("lab-kvm") as host:           # a URI, a config name, a lab host, a snapshot file
        facts = host.inventory()                         # HostFacts: .gpus, .vms, .host
        findings = host.check("ml-train", "H100")        # preflight only: a list of Finding
        plan = host.plan("ml-train", "0000:42:00.0")     # Plan: .steps, .findings, .blocked
        outcome = host.assign("ml-train", "H100")        # applies (no prompt); rolls back on failure
        host.release("ml-train")                         # every GPU the VM holds

GPUs are named as on the command line (address, host-qualified address, LocationPath, nodedev name,
vendor:device id, model words). Errors are the gpupass.errors classes: GpupassError and its subclasses,
each with `.message`, `.remedy` and `.exit_code`; nothing is printed and nothing asks for confirmation.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping

from gpupass.core.domain.findings import Finding
from gpupass.core.domain.inventory import HostFacts
from gpupass.core.domain.plan import Plan
from gpupass.core.errors import NotSupported, PreflightFailed, UsageError

if TYPE_CHECKING:  # `import gpupass` stays cheap: these load when a host is opened
    from gpupass.core.domain.request import AssignmentRequest, ReleaseRequest
    from gpupass.core.plugins import Registry
    from gpupass.core.ports import Backend
    from gpupass.core.service import Outcome


class Host:
    """One open connection to a host (or a vCenter). Close it, or use it in a `with` block."""

    def __init__(self, backend: Backend, registry: Registry) -> None:
        self._backend, self._registry = backend, registry

    @property
    def name(self) -> str:
        """The host as it was named (lab-kvm, node7, a URI)."""
        return self._backend.target.label

    @property
    def platform(self) -> str:
        return self._backend.platform

    @property
    def round_trips(self) -> int:
        """Requests sent to the platform's API so far."""
        return self._backend.round_trips

    def inventory(self) -> HostFacts:
        return self._backend.inventory()

    def plan(self, vm: str, *gpus: str, **options: Any) -> Plan:
        """The ordered steps of giving `gpus` to `vm`; options as assign's (allow_host_reboot=True, ...)."""
        return self._make(_assignment(vm, gpus, options))

    def check(self, vm: str, *gpus: str, **options: Any) -> list[Finding]:
        """Preflight findings for giving `gpus` to `vm`; any with `.blocks` stops an assign."""
        return list(self.plan(vm, *gpus, **options).findings)

    def assign(self, vm: str, *gpus: str, **options: Any) -> Outcome:
        """Apply the plan (raises PreflightFailed when something blocks; OperationFailed after rolling back)."""
        return self._execute(self.plan(vm, *gpus, **options))

    def plan_release(self, vm: str, *gpus: str, live: bool = False, disable_host_passthrough: bool = False) -> Plan:
        from gpupass.core.domain.request import ReleaseOptions, ReleaseRequest
        from gpupass.core.domain.select import parse_selectors

        _check_types(ReleaseOptions, {"live": live, "disable_host_passthrough": disable_host_passthrough})

        return self._make(ReleaseRequest(vm, parse_selectors(gpus), ReleaseOptions(
            live=live, disable_host_passthrough=disable_host_passthrough)))

    def release(self, vm: str, *gpus: str, live: bool = False, disable_host_passthrough: bool = False) -> Outcome:
        """Give the GPUs (all the VM's when none is named) back to the host, restoring what assign changed."""
        return self._execute(self.plan_release(vm, *gpus, live=live,
                                               disable_host_passthrough=disable_host_passthrough))

    def apply(self, plan: Plan) -> Outcome:
        """Carry out a plan made by plan() or plan_release() on this host, as it was shown (check mode and diff
        in an automation tool plan first, then apply exactly that)."""
        return self._execute(plan)

    def close(self) -> None:
        self._backend.close()

    def __enter__(self) -> Host:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _make(self, request: AssignmentRequest | ReleaseRequest) -> Plan:
        from gpupass.core.service import make_plan

        return make_plan(self._backend, self._backend.inventory(), request, self._registry)

    def _execute(self, plan: Plan) -> Outcome:
        from gpupass.core.service import execute

        if self._backend.read_only:
            raise NotSupported(f"{self.name} is a snapshot: plan from it, change the live host")
        if plan.blocked:
            raise PreflightFailed("preflight found blocking problems; nothing was changed", list(plan.findings))
        return execute(self._backend, plan)


def _bar_sizes(value: Any) -> tuple[int, ...]:
    """Every BAR of a card: "16M+64G+32M", a list of such sizes or byte counts, or one size."""
    from gpupass.core.domain.mmio import parse_size

    parts = value.replace(",", "+").split("+") if isinstance(value, str) else (
        list(value) if isinstance(value, (list, tuple)) else [value])
    # Numbers pass as they are: AssignOptions refuses anything but whole powers of two (int() would make 3.5 into 3).
    return tuple(parse_size(part.strip()) if isinstance(part, str) else part for part in parts)


def _assignment(vm: str, gpus: tuple[str, ...], options: Mapping[str, Any]) -> AssignmentRequest:
    from gpupass.core.domain.pci import PciAddress
    from gpupass.core.domain.request import AssignmentRequest, AssignOptions
    from gpupass.core.domain.select import parse_selectors

    known = set(AssignOptions.__dataclass_fields__)
    unknown = set(options) - known
    if unknown:
        raise UsageError(f"unknown option(s) {', '.join(sorted(unknown))}", remedy=f"known: {', '.join(sorted(known))}")
    settings = dict(options)
    _check_types(AssignOptions, {name: value for name, value in settings.items() if name != "bar_sizes"})
    if "bar_sizes" in settings:
        if not isinstance(settings["bar_sizes"], Mapping):
            raise UsageError(f"option bar_sizes must be a mapping of GPU address to its BAR sizes, not "
                             f"{type(settings['bar_sizes']).__name__}", remedy='e.g. bar_sizes={"41:00.0": "16M+64G+32M"}')
        settings["bar_sizes"] = {PciAddress.parse(str(a)) if not isinstance(a, PciAddress) else a: _bar_sizes(s)
                                 for a, s in settings["bar_sizes"].items()}
    return AssignmentRequest(vm, parse_selectors(gpus), AssignOptions(**settings))


def _check_types(options_class: type, given: Mapping[str, Any]) -> None:
    """Each option a caller gave has its field's type: `live="no"` is a string, which Python takes for true; a
    number for `share` would fail deep inside as an AttributeError. The CLI's parser never makes either."""
    import typing

    from gpupass.core.typecheck import matches, type_name

    hints = typing.get_type_hints(options_class)
    for name, value in given.items():
        if not matches(value, hints[name]):
            raise UsageError(f"option {name} must be {type_name(hints[name])}, not {type(value).__name__} ({value!r:.40})",
                             remedy=f"pass {name}=True or {name}=False" if hints[name] is bool else
                             f"pass {name} as {type_name(hints[name])}")


def open_host(host: str | None = None, *, config: str | Path | None = None, insecure: bool = False,
              ca_file: str | None = None, password: str | None = None) -> Host:
    """Open HOST as the CLI does: a URI, a config name, a lab host or a snapshot file; None is the default
    host from the environment (GPUPASS_HOST, LIBVIRT_DEFAULT_URI, GOVC_URL, VMWARE_HOST).

    `password`, when given, is used instead of the ones gpupass would find (environment, config, keyring): for
    callers that hold it already, such as an Ansible module given it as a no_log option."""
    from dataclasses import replace

    from gpupass.core import hosts, paths
    from gpupass.core.config import load_config
    from gpupass.core.plugins import default_registry
    from gpupass.core.target import Secret, TlsOptions

    if config is not None and not Path(config).is_file():
        raise UsageError(f"config file {config} does not exist", remedy="check the path")
    registry = default_registry()
    loaded = load_config(Path(config) if config is not None else paths.config_file())
    tls = TlsOptions(verify=not insecure, ca_file=ca_file)
    if password is None or (host is not None and hosts.looks_like_snapshot(host)):
        return Host(hosts.open_host(host, loaded, registry, tls), registry)
    target = replace(hosts.resolve_target(host, loaded, registry, tls), password=Secret(password))
    return Host(hosts.open_backend(target, registry), registry)
