"""Claims on GPUs that hold across processes and machines.

No hypervisor API offers a compare-and-swap across VMs: libvirt's defineXML replaces a definition whatever
else holds the device, and vSphere's `ConfigSpec.changeVersion` guards one VM only. What every platform does
offer is a record inside each VM that only runs working on that VM write and that everyone can read. On
such single-writer registers Lamport's bakery algorithm (CACM 17(8), 1974) decides who goes first without any
shared lock; gpupass uses it as a try-lock, so a run that would have to wait behind another one loses
instead and undoes its own change:

1. doorway: write a claim that is still *choosing* into the VM (also the intent record of the run);
2. read every other VM's claims and take a number one above the highest seen for the same GPUs;
3. write the change together with the claim and its number;
4. read everything again, waiting (bounded) while another claimant is still choosing: the lowest
   (number, token) among the VMs that hold the GPU wins; anyone holding it without a claim (assigned by hand
   or before claims existed) wins over every claimant.

Why it holds: if two claimants both won, the one with the higher number read the other's VM after its own
number was written. It saw the other not choosing and without a number, so the other's doorway began after
that read, saw the higher number and took one above it: a contradiction.

Where the platform's write of one VM is itself a compare-and-swap (vSphere's ConfigSpec.changeVersion), the
doorway is not needed: `decide_written` below judges a claim written in the same write as the change.
"""

from __future__ import annotations

from typing import Iterable

from gpupass.core.records import record


@record(frozen=True)
class Claim:
    vm: str
    token: str
    addresses: frozenset[str]
    number: int | None = None  # None while the claimant is still choosing its number
    origin: str = ""           # who made it (host name, process id, time): for people reading `status`

    @property
    def choosing(self) -> bool:
        return self.number is None

    def numbered(self, number: int) -> Claim:
        return Claim(self.vm, self.token, self.addresses, number, self.origin)

    def order(self) -> tuple[int, str]:
        return (self.number if self.number is not None else 0, self.token)


@record(frozen=True)
class Holder:
    """A VM whose definition holds one of the contested devices now, with the claim that put it there."""

    vm: str
    address: str
    claim: Claim | None


@record(frozen=True)
class Verdict:
    outcome: str  # "win", "lose" or "wait"
    reason: str = ""
    other_vm: str | None = None


def _now() -> str:
    """The time a claim names (to the second, UTC); tests freeze it here."""
    from datetime import datetime, timezone

    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def new_claim(vm: str, addresses: Iterable[str]) -> Claim:
    # Imported here: reading the host's claims (every `gpus`) never makes one.
    import os
    import socket
    import uuid

    origin = f"{socket.gethostname()} pid {os.getpid()} at {_now()}"
    return Claim(vm, uuid.uuid4().hex, frozenset(addresses), None, origin)


def next_number(mine: Claim, others: Iterable[Claim]) -> int:
    return 1 + max((c.number or 0 for c in others if c.vm != mine.vm and c.addresses & mine.addresses), default=0)


def decide(mine: Claim, others: Iterable[Claim], holders: Iterable[Holder]) -> Verdict:
    """Step 4: judged from a read made after this claim's number was written."""
    assert mine.number is not None, "decide() is for a claim that has its number"
    choosing = sorted(c.vm for c in others if c.vm != mine.vm and c.choosing and c.addresses & mine.addresses)
    for holder in holders:
        if holder.vm == mine.vm or holder.address not in mine.addresses:
            continue
        if holder.claim is None or holder.claim.choosing:
            return Verdict("lose", f"{holder.address} is held by VM '{holder.vm}'", holder.vm)
        if holder.claim.order() < mine.order():
            return Verdict("lose", f"VM '{holder.vm}' claimed {holder.address} first ({holder.claim.origin})",
                           holder.vm)
    if choosing:
        return Verdict("wait", f"waiting for a claim being made on VM '{choosing[0]}'", choosing[0])
    return Verdict("win")


def stale_holdings(holders: Iterable[Holder]) -> list[tuple[Holder, str]]:
    """Holders that lost: a device on several VMs, where a run was stopped (killed, disconnected) after writing
    its change and before it could see that it lost and take the change back. Each comes with the VM that
    keeps the device by the same rule that decides a race (a holder without a claim first, then the lowest)."""
    by_address: dict[str, list[Holder]] = {}
    for holder in holders:
        by_address.setdefault(holder.address, []).append(holder)
    stale: list[tuple[Holder, str]] = []
    for several in by_address.values():
        if len(several) < 2:
            continue
        keeper = min(several, key=lambda h: (h.claim is not None, h.claim.order() if h.claim else (0, "")))
        stale.extend((h, keeper.vm) for h in several if h is not keeper)
    return stale


def number_for_write(mine: Claim, others: Iterable[Claim], now_us: int) -> int:
    """The number of a one-write claim: the client's clock in microseconds, taken just before the write, or one
    above the highest seen if that is larger. Safety (decide_written) holds for any numbers; this choice makes
    the usual race quick: a run that writes after another one has written and read sees that one's claim
    come first and loses at once, instead of waiting out claim_wait_s for it to give the GPU back. Clocks
    that disagree between machines only bring back that wait."""
    return max(next_number(mine, others), now_us)


def decide_written(mine: Claim, holders: Iterable[Holder]) -> Verdict:
    """One-write claims: for a platform whose write of a VM is a compare-and-swap on that VM (vSphere's
    `ConfigSpec.changeVersion`), the claim, with its number, goes into the SAME write as the change, and this
    is judged from a read of every VM made after that write. No doorway write is needed:

    - nobody else holds the devices: win;
    - a holder without a claim (assigned by hand, or by a run that is still in its doorway under the bakery
      above) or one whose claim comes first by (number, token): lose;
    - only holders whose claims come after this one: wait (bounded) for them to leave. Each of them either
      read this claim after its own write (then it loses by the rule above and takes its change back), or
      read before this claim was written and has already won; so a holder that stays for the whole wait
      has won, and this run loses.

    Why two runs never both win: a run wins only on a read that shows nobody else holding, and a winner
    keeps its change. If A won on a read of B's VM at t1 and B on a read of A's VM at t2, then
    W_A < t1 < W_B (A's read came after A's write, and before B's, which stays) and W_B < t2 < W_A:
    a contradiction. Two writes of ONE VM are ordered by the changeVersion compare-and-swap.
    """
    assert mine.number is not None, "a one-write claim carries its number"
    later: list[str] = []
    for holder in holders:
        if holder.vm == mine.vm or holder.address not in mine.addresses:
            continue
        if holder.claim is None or holder.claim.choosing:
            return Verdict("lose", f"{holder.address} is held by VM '{holder.vm}'", holder.vm)
        if holder.claim.order() < mine.order():
            return Verdict("lose", f"VM '{holder.vm}' claimed {holder.address} first ({holder.claim.origin})",
                           holder.vm)
        later.append(holder.vm)
    if later:
        return Verdict("wait", f"waiting for VM '{sorted(later)[0]}', which holds the same GPU, to give it back",
                       sorted(later)[0])
    return Verdict("win")
