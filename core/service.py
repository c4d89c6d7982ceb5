"""The use cases: check, plan, assign and release. Platform work goes through the Backend port only."""

from __future__ import annotations

import contextlib
import dataclasses
import difflib
import functools
from dataclasses import dataclass, field
from typing import Any, Callable, ContextManager, Sequence

from gpupass.core.domain.context import CheckContext
from gpupass.core.domain.findings import Finding
from gpupass.core.domain.inventory import Gpu, HostFacts, Vm
from gpupass.core.domain.pci import Bar, PciAddress
from gpupass.core.domain.plan import MmioSummary, Plan, Step
from gpupass.core.domain.request import AssignmentRequest, GpuRef, ReleaseRequest
from gpupass.core.domain.select import GpuSelector
from gpupass.core.domain.sharing import ASSIGN_SHARE, RELEASE_SHARE, Share, ShareChange, ShareType
from gpupass.core.errors import (Conflict, GpupassError, Interrupted, NotFound, NotSupported, OperationFailed,
                                 PreflightFailed, UsageError)
from gpupass.core.interrupts import InterruptGuard, held_interrupts
from gpupass.core.plugins import Registry
from gpupass.core.ports import Backend, StepState


def find_vm(facts: HostFacts, name: str, host_label: str | None = None) -> Vm:
    vm = facts.find_vm(name)
    if vm is None:
        label = host_label or facts.host.name or facts.host.uri
        close = difflib.get_close_matches(name, [v.name for v in facts.vms], n=3, cutoff=0.6)
        hint = f"did you mean {' or '.join(repr(c) for c in close)}? " if close else ""
        raise NotFound(
            f"no VM named {name!r} on {label}",
            remedy=f"{hint}names are case-sensitive; `gpupass vms {label}` lists them",
        )
    return vm


def resolve_gpu(facts: HostFacts, ref: GpuRef, vm: Vm, host_label: str | None = None) -> Gpu:
    """The GPU the user named (address, qualified address, model, id, LocationPath...) on the VM's host."""
    selector = ref if isinstance(ref, GpuSelector) else GpuSelector(str(ref))
    return selector.resolve(facts, host_label or facts.host.name or facts.host.uri, vm.location)


def _reject_named_twice(gpus: list[Gpu]) -> None:
    seen: set[tuple[str, PciAddress]] = set()
    for gpu in gpus:
        key = (gpu.location, gpu.address)
        if key in seen:
            raise UsageError(f"GPU {gpu.address} is named twice (by two of its names)", remedy="name each GPU once")
        seen.add(key)


def _with_bar_override(gpu: Gpu, sizes: tuple[int, ...] | None) -> Gpu:
    """The user's BAR sizes replace what the host and the catalog say. Each counts as a 64-bit BAR: the guest
    window is then sized for all of them (never smaller than the card needs)."""
    if sizes is None:
        return gpu
    function = dataclasses.replace(gpu.function, bars=tuple(Bar(i, size, is_64bit=True) for i, size in enumerate(sizes)))
    companions = tuple(c if c.bars is not None else dataclasses.replace(c, bars=()) for c in gpu.companions)
    return dataclasses.replace(gpu, function=function, companions=companions)


def check_capabilities(backend: type[Backend], request: AssignmentRequest | ReleaseRequest) -> None:
    caps, options, platform = backend.capabilities, request.options, backend.platform
    wanted = [
        ("live", caps.live_attach, "live (hot-plug) assignment"),
        ("dynamic", caps.dynamic_binding, "dynamic device binding (--dynamic)"),
        ("hide_hypervisor", caps.hide_hypervisor, "hiding the hypervisor (--hide-hypervisor)"),
    ]
    for option, supported, what in wanted:
        if getattr(options, option, False) and not supported:
            raise NotSupported(f"{what} is not supported on {platform}", remedy="run the command without that option")
    known = {name.lower() for name in caps.ex_share_options}
    for name in getattr(options, "ex_share_options", {}) or {}:
        if name.lower() not in known:
            raise NotSupported(f"share option {name!r} is not supported on {platform}",
                               remedy=(f"{platform} takes {', '.join(caps.ex_share_options)}" if caps.ex_share_options
                                       else f"{platform} takes no share options: drop --share-option"))


def build_context(backend: Backend, facts: HostFacts, request: AssignmentRequest | ReleaseRequest) -> CheckContext:
    check_capabilities(type(backend), request)
    label = backend.target.label
    vm = find_vm(facts, request.vm, label)
    operation = "assign" if isinstance(request, AssignmentRequest) else "release"
    if isinstance(request, AssignmentRequest) and request.options.share is not None:
        if not backend.capabilities.share_modes and not any(g.sharing.offered for g in facts.gpus):
            # a backend that gives no shares, on a host that lists none: nothing to look a type up in
            raise NotSupported(f"GPU shares are not supported on {backend.platform}",
                               remedy="give the GPU whole (run the command without --share)")
        gpu = resolve_gpu(facts, request.gpus[0], vm, label)
        return _share_context(backend, facts, vm, ASSIGN_SHARE, request,
                              (_share_asked(backend, facts, vm, gpu, request.options.share),))
    if isinstance(request, ReleaseRequest):
        shares = _shares_to_release(facts, vm, request, label)
        if shares:
            return _share_context(backend, facts, vm, RELEASE_SHARE, request, shares)
    if isinstance(request, AssignmentRequest):
        sizes = request.options.bar_sizes
        resolved = [resolve_gpu(facts, a, vm, label) for a in request.gpus]
        _reject_named_twice(resolved)
        gpus = tuple(_with_bar_override(gpu, sizes.get(gpu.address)) for gpu in resolved)
    elif request.gpus:
        gpus = tuple(resolve_gpu(facts, a, vm, label) for a in request.gpus)
        _reject_named_twice(list(gpus))
        for gpu in gpus:
            # A GPU on two VMs (a run stopped mid-way, see claims.stale_holdings) is released from either.
            if gpu.assigned_to not in (None, vm.name) and gpu.address not in vm.assigned:
                raise UsageError(
                    f"GPU {gpu.address} belongs to VM '{gpu.assigned_to}', not '{vm.name}'",
                    remedy=f"release it from '{gpu.assigned_to}' instead",
                )
    else:
        gpus = tuple(g for g in facts.gpus if g.assigned_to == vm.name and g.location == vm.location)
    return CheckContext(operation, backend.platform, facts, vm, gpus, request, backend.mmio_policy, backend.capabilities,
                        host_label=str(backend.target.options.get("live_host") or label))


def _share_context(backend: Backend, facts: HostFacts, vm: Vm, operation: str,
                   request: AssignmentRequest | ReleaseRequest, changes: tuple[ShareChange, ...]) -> CheckContext:
    for change in changes:
        if change.type.mode not in backend.capabilities.share_modes:
            verb = "giving" if operation == ASSIGN_SHARE else "taking back"
            raise NotSupported(f"{verb} a {change.type.mode.value} share ({change.type.id}) is not supported on "
                               f"{backend.platform}", remedy="use the platform's own tools for this share; "
                               "`gpupass gpus HOST` lists it")
    addresses = {(c.location, c.gpu) for c in changes}
    gpus = tuple(g for g in facts.gpus if (g.location, g.address) in addresses)
    label = backend.target.label
    return CheckContext(operation, backend.platform, facts, vm, gpus, request, backend.mmio_policy,
                        backend.capabilities, host_label=str(backend.target.options.get("live_host") or label),
                        shares=changes)


def _share_asked(backend: Backend, facts: HostFacts, vm: Vm, gpu: Gpu, asked: str) -> ShareChange:
    """The share type the user named on this GPU (id, name or profile), and the share of it the VM holds already."""
    unavailable = facts.host.settings.get("sharing_unavailable")
    if unavailable and not any(g.sharing.offered for g in facts.gpus):
        # The backend says why this host offers no sharing at all (Host.settings["sharing_unavailable"]).
        raise NotSupported(f"{unavailable}; no share of GPU {gpu.address} can be given",
                           remedy="give the GPU whole (without --share), or use a host that offers sharing "
                                  "(`gpupass fleet find --profile TYPE`)")
    matches = gpu.sharing.types_answering(asked)
    if len(matches) > 1:
        raise UsageError(f"share type {asked!r} matches {len(matches)} types of GPU {gpu.address}: "
                         + ", ".join(f"{t.id} ({t.name})" for t in matches), remedy="name the type by its id")
    if not matches:
        # Offered by another GPU of the host: a preflight finding (share-type-not-offered) says which.
        elsewhere = [t for g in facts.gpus if g is not gpu for t in g.sharing.types_answering(asked)]
        if not elsewhere:
            offered = ", ".join(f"{t.id} ({t.name})" if t.name else t.id for t in gpu.sharing.types)
            raise NotFound(f"GPU {gpu.address} offers no share type {asked!r}",
                           remedy=(f"it offers {offered}" if offered else
                                   "it offers no sharing on this host (`gpupass gpus HOST --json` lists each GPU's "
                                   "types)") + (f"; {gpu.sharing.unread}" if gpu.sharing.unread else ""))
        matches = tuple(elsewhere[:1])
    wanted = matches[0]
    held = next((s for s in gpu.sharing.held_by(vm.name) if s.type_id == wanted.id), None)
    return ShareChange(gpu.address, wanted, held, gpu.location)


def _type_of(gpu: Gpu, share: Share) -> ShareType:
    return gpu.sharing.type_named(share.type_id) or ShareType(share.type_id, share.type_id, share.mode)


def _shares_to_release(facts: HostFacts, vm: Vm, request: ReleaseRequest, label: str) -> tuple[ShareChange, ...]:
    """The shares a release takes back: those the VM holds on the GPUs named (all of them when none is named).

    A release names GPUs, never share ids: the VM's share on a GPU is found here. A request that would take back
    whole GPUs and shares at once is refused: their steps differ and each must be undoable on its own.
    """
    named = [resolve_gpu(facts, ref, vm, label) for ref in request.gpus] if request.gpus else list(facts.gpus)
    if request.gpus:
        _reject_named_twice(named)
    mine = [g for g in named if g.location == vm.location or request.gpus]
    shares = tuple(ShareChange(g.address, _type_of(g, s), s, g.location) for g in mine for s in g.sharing.held_by(vm.name))
    whole = [g for g in mine if g.assigned_to == vm.name or (request.gpus and g.address in vm.assigned)]
    if shares and whole:
        raise UsageError(
            f"VM '{vm.name}' holds GPU(s) {', '.join(str(g.address) for g in whole)} whole and shares of "
            f"{', '.join(sorted({str(c.gpu) for c in shares}))}: release them one command each",
            remedy="name the GPUs: `gpupass release HOST VM GPU` for the whole GPUs, then for the shared ones")
    return shares


def preflight(ctx: CheckContext, registry: Registry) -> list[Finding]:
    findings: list[Finding] = []
    for rule in registry.rules_for(ctx.operation, ctx.platform):
        findings.extend(rule(ctx))
    return findings


def _mmio_summary(ctx: CheckContext) -> MmioSummary | None:
    need = ctx.need
    current = ctx.policy.effective_window(ctx.vm.mmio_window_bytes)
    if ctx.operation != "assign" or need is None:
        return None
    target = current if ctx.policy.fits(need, ctx.vm.mmio_window_bytes) else ctx.policy.window_for(need)
    return MmioSummary(need, current, target, ctx.policy.explain(need))


def make_plan(backend: Backend, facts: HostFacts, request: AssignmentRequest | ReleaseRequest,
              registry: Registry) -> Plan:
    ctx = build_context(backend, facts, request)
    findings = preflight(ctx, registry)
    if ctx.already_done:
        # a release the VM shows done may still have host steps a stopped run of it left (Backend.plan_finish_release);
        # an assign the VM shows done, host steps that keep it working (Backend.plan_finish_assign)
        steps: list[Step] = (backend.plan_finish_release(ctx) if ctx.operation == "release" else
                             backend.plan_finish_assign(ctx) if ctx.operation == "assign" else [])
    elif ctx.operation == "assign":
        steps = backend.plan_assign(ctx)
    elif ctx.operation == ASSIGN_SHARE:
        steps = backend.plan_assign_share(ctx)
    elif ctx.operation == RELEASE_SHARE:
        steps = backend.plan_release_share(ctx)
    else:
        steps = backend.plan_release(ctx)
    gains = ctx.operation in ("assign", ASSIGN_SHARE)
    return Plan(
        operation=ctx.operation,
        host=backend.target.label,
        platform=backend.platform,
        vm=ctx.vm.name,
        gpus=ctx.gpus,
        steps=tuple(steps),
        findings=tuple(findings),
        features_lost=tuple(backend.features_lost(ctx)) if gains else (),
        mmio=_mmio_summary(ctx),
        shares=ctx.shares,
        features_kept=tuple(backend.features_kept(ctx)) if gains else (),
    )


@dataclass(frozen=True)
class Outcome:
    plan: Plan
    applied: tuple[Step, ...]
    # The VM as the host reports it after the change (read back from the host, never assumed); None when
    # nothing was applied.
    vm_after: Vm | None
    backend: Backend | None = field(default=None, repr=False, compare=False)

    @functools.cached_property
    def facts_after(self) -> HostFacts | None:
        """The whole host read again, only when someone asks (tests, tools): execute reads back the VM only."""
        if not self.applied or self.backend is None:
            return None
        return self.backend.inventory()


def execute(backend: Backend, plan: Plan, on_step: Callable[[Step], None] | None = None,
            around_step: Callable[[Step], ContextManager[Any]] | None = None,
            on_interrupt: Callable[[str], None] | None = None) -> Outcome:
    """Apply the plan's steps in order; if one fails, undo the completed ones in reverse order.

    `around_step` wraps each write (the CLI shows progress for a step that takes more than a second, such
    as an ESXi host reboot). A Ctrl-C lets the step under way finish and then undoes the change (core/interrupts.py
    says why); `on_interrupt` is told so, from the signal handler."""
    if plan.blocked:
        raise PreflightFailed(f"preflight found blocking problems; nothing was changed on {plan.host}",
                              [f for f in plan.findings if f.blocks])
    done: list[tuple[Step, Any]] = []
    with held_interrupts(on_interrupt) as interrupt:
        for step in plan.steps:
            if not step.writes:
                continue
            if interrupt.pending:
                _undo_interrupted(backend, plan, done, interrupt)
            if on_step:
                on_step(step)
            try:
                with around_step(step) if around_step else contextlib.nullcontext():
                    interrupt.in_step = True
                    done.append((step, backend.apply(step)))
                    interrupt.in_step = False
            except BaseException as exc:
                interrupt.in_step, interrupt.undoing = False, True
                _roll_back(backend, done, failed=step, cause=exc, interrupted=interrupt.pending)
                raise  # _roll_back always raises; this keeps type checkers honest
        outcome = _read_back(backend, plan, done)
        if interrupt.pending:  # a Ctrl-C during the last step or the read-back: the change is not kept either
            _undo_interrupted(backend, plan, done, interrupt)
    return outcome


def _read_back(backend: Backend, plan: Plan, done: list[tuple[Step, Any]]) -> Outcome:
    if not done:
        return Outcome(plan, (), None, backend)
    if plan.shares:
        # A share is a device of the host's driver, not one of the VM's PCI addresses: the host is read again.
        facts_after = backend.inventory()
        _verify_shares(plan, facts_after)
        return Outcome(plan, tuple(step for step, _ in done), facts_after.find_vm(plan.vm), backend)
    # One read of what changed (the VM and its devices), not of the whole host: on a host with a thousand
    # VMs that is three libvirt calls instead of two thousand.
    vm_after = backend.read_back(plan.vm, touched_devices(plan))
    _verify(plan, vm_after)
    return Outcome(plan, tuple(step for step, _ in done), vm_after, backend)


def _undo_interrupted(backend: Backend, plan: Plan, done: Sequence[tuple[Step, Any]], interrupt: InterruptGuard) -> None:
    """Undo every step made, after a Ctrl-C that let the step under way finish: which steps the host holds is known
    exactly (each returned), so nothing needs reading again. Always raises Interrupted."""
    interrupt.undoing = True
    label = backend.target.label
    if not done:
        raise Interrupted(f"interrupted (Ctrl-C) before the first step: nothing was changed on {label}",
                          remedy="run the same command again to make the change", rolled_back=True)
    after = f"interrupted (Ctrl-C) after step '{done[-1][0].description}'"
    stuck, by_hand = _undo(backend, done)
    if stuck:
        raise Interrupted(f"{after}; these steps of the change could not be undone: " + "; ".join(stuck),
                          remedy=(f"undo the listed steps by hand, then run `gpupass status {label}`" if by_hand else
                                  f"run `gpupass status {label}`: the steps left as they are are the host's state now"),
                          rolled_back=False)
    raise Interrupted(f"{after}: the {len(done)} step(s) made were undone; VM '{plan.vm}' is as it was",
                      remedy="run the same command again to make the change", rolled_back=True)


def touched_devices(plan: Plan) -> tuple[PciAddress, ...]:
    return tuple(sorted({f.address for gpu in plan.gpus for f in gpu.functions}))


def _observed(backend: Backend, step: Step, cause: BaseException) -> StepState:
    """What the failed step left on the host. A step that says so itself (`rolled_back` on its error) is
    believed; for anything else (a timeout, a lost connection, an interrupt) the host is read again."""
    own = getattr(cause, "rolled_back", None)
    if own is True:
        return StepState("before")
    if own is False:
        return StepState("unknown", detail="it could not undo its own changes")
    try:
        return backend.observe(step)
    except Exception as error:  # noqa: BLE001 - the host cannot be read: say so rather than guess
        reason = error.message if isinstance(error, GpupassError) else f"{type(error).__name__}: {error}"
        return StepState("unknown", detail=f"the host could not be read again ({reason})")


def _undo(backend: Backend, done: Sequence[tuple[Step, Any]]) -> tuple[list[str], bool]:
    """Undo the steps in reverse order; -> the steps left as they are (with why), and whether any needs a hand."""
    stuck: list[str] = []
    by_hand = False
    for step, token in reversed(done):
        try:
            backend.undo(step, token)
        except Conflict as taken:
            # Another run's change stands where the undo would write (it took the device meanwhile): undoing the
            # step by hand would undo that run's change too, so the step stays, and the error says so.
            stuck.append(f"{step.description} (left as it is: {taken.message})")
        except Exception as undo_error:  # keep undoing the rest: each undone step is one less to fix by hand
            by_hand = True
            stuck.append(f"{step.description} (undo by hand: {step.undo}; undo failed: {undo_error})")
    return stuck, by_hand


def _roll_back(backend: Backend, done: Sequence[tuple[Step, Any]], failed: Step, cause: BaseException,
               interrupted: bool = False) -> None:
    """Undo after `failed` raised `cause`; always raises. `interrupted`: a Ctrl-C came while the step was under way
    (it then failed on its own, e.g. timed out): the error is still an Interrupted one (exit 130), unless it is a
    Conflict, which says more (another run won) and leaves nothing of this run either."""
    # A KeyboardInterrupt here is a Ctrl-C that did not wait for the step (a second one, or one outside the main
    # thread): the step was stopped wherever it was, so the host is read again like after a lost reply.
    stopped = isinstance(cause, KeyboardInterrupt)
    interrupted = (stopped or interrupted) and not isinstance(cause, Conflict)
    reason = cause.message if isinstance(cause, GpupassError) else f"{type(cause).__name__}: {cause}"
    head = f"interrupted (Ctrl-C) during step '{failed.description}'" if stopped else \
        f"interrupted (Ctrl-C) during step '{failed.description}', which then failed ({reason})" if interrupted else \
        f"step '{failed.description}' failed"
    failure = Interrupted if interrupted else OperationFailed
    left = _observed(backend, failed, cause)
    done = list(done)
    if left.state == "after":  # the step went through although the call failed: undo it with the rest
        done.append((failed, left.token))
    stuck, by_hand = _undo(backend, done)
    label = backend.target.label
    if stuck:
        # A failed step whose outcome is not known (the host did not answer) may still be carried out there: what to
        # finish or undo is then what `status` reads, not this list.
        unknown = f"; {left.detail or 'what it left on the host is not known'}," if left.state == "unknown" else ""
        remedy = (f"run `gpupass status {label}` once the host answers: it shows what each step left; run the same "
                  "command again to finish, or undo the listed steps by hand" if by_hand and unknown else
                  f"undo the listed steps by hand, then run `gpupass status {label}`" if by_hand else
                  f"run `gpupass status {label}`: the steps left as they are are the host's state now")
        raise failure(
            (head if interrupted else f"{head} ({reason})") + f"{unknown} and these steps could not be undone: "
            + "; ".join(stuck), remedy=_with_the_steps_remedy(cause, remedy), rolled_back=False) from cause
    undone = _undone_summary(completed=len(done) - (left.state == "after"), failed_went_through=left.state == "after")
    # A step may fail half-way and fail to clean up after itself too, or leave the host unreadable: it says
    # so, and so must we.
    if left.state == "unknown":
        what = left.detail or "what it left on the host is not known"
        raise failure(
            f"{head} and {what}" + ("" if interrupted else f": {reason}") + undone,
            remedy=_with_the_steps_remedy(cause, "run `gpupass status HOST`: if the change is there, finish with the "
                                          f"same command again or revert it ({failed.undo})"),
            rolled_back=False,
        ) from cause
    if isinstance(cause, Conflict):
        # Another run's change stays (that is the conflict): only this run's own change is gone.
        raise Conflict(f"{head}: {reason}{undone}; nothing of this run's change is left",
                       remedy=getattr(cause, "remedy", None), rolled_back=True) from cause
    if stopped:
        raise Interrupted(
            f"{head}; the host, read again, showed it as {'done' if left.state == 'after' else 'not done'}{undone}; "
            "the VM is as it was",
            remedy=f"the step was stopped with its request possibly still on its way to the host: `gpupass status "
                   f"{label}` in a moment shows whether the host carried it out anyway; run the same command again to "
                   "make the change", rolled_back=True) from cause
    if interrupted:
        raise Interrupted(f"{head}{undone}; the VM is as it was",
                          remedy=getattr(cause, "remedy", None) or "run the same command again to make the change",
                          rolled_back=True) from cause
    raise OperationFailed(
        f"{head}: {reason}{undone}; the VM is as it was",
        remedy=getattr(cause, "remedy", None),
        rolled_back=True,
    ) from cause


def _with_the_steps_remedy(cause: BaseException, after: str) -> str:
    """The failed step's own remedy (what its backend knows: the host to check, the timeout to raise, the run that won)
    first, then `after`, the core's (what to do about the steps: which to undo by hand, what `status` will show);
    neither replaces the other, and one that already holds the other is not said twice."""
    own = getattr(cause, "remedy", None)
    if not isinstance(own, str) or not own or own in after:
        return after
    if after in own:
        return own
    return f"{own}; then {after}"


def _undone_summary(completed: int, failed_went_through: bool) -> str:
    # The failed step is not a completed one: a reader counting the steps the plan showed must find the same number.
    if failed_went_through and completed:
        return f"; the failed step, which had gone through, and {completed} completed step(s) were undone"
    if failed_went_through:
        return "; the failed step had gone through and was undone"
    return f"; {completed} completed step(s) were undone" if completed else ""


def _verify(plan: Plan, vm: Vm | None) -> None:
    held = set(vm.assigned) if vm else set()
    addresses = {f.address for gpu in plan.gpus for f in gpu.functions}
    wrong = addresses - held if plan.operation == "assign" else addresses & held
    if plan.operation == "assign":
        # Companions the user chose to leave out are not expected on the VM.
        wrong = {a for a in wrong if any(gpu.address == a for gpu in plan.gpus)}
    if wrong:
        listed = ", ".join(str(a) for a in sorted(wrong))
        raise OperationFailed(
            f"the host reports a different state than planned for {listed} after the change",
            remedy=f"run `gpupass status {plan.host}` and compare with the plan",
            rolled_back=False,
        )



def _verify_shares(plan: Plan, facts: HostFacts) -> None:
    wrong = []
    for change in plan.shares:
        gpu = next((g for g in facts.gpus if g.address == change.gpu and g.location == change.location), None)
        held = gpu.sharing.held_by(plan.vm) if gpu else ()
        if plan.operation == ASSIGN_SHARE and not any(s.type_id == change.type.id for s in held):
            wrong.append(f"no {change.type.id} share of GPU {change.gpu} is held by VM '{plan.vm}'")
        if plan.operation == RELEASE_SHARE and change.share is not None and \
                any(s.id == change.share.id for s in held):
            wrong.append(f"VM '{plan.vm}' still holds share {change.share.id} of GPU {change.gpu}")
    if wrong:
        raise OperationFailed(
            "the host reports a different state than planned after the change: " + "; ".join(wrong),
            remedy=f"run `gpupass status {plan.host}` and compare with the plan",
            rolled_back=False,
        )
