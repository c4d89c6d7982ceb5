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
"""

from __future__ import annotations

import os
import socket
import uuid
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Iterable


@dataclass(frozen=True)
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


@dataclass(frozen=True)
class Holder:
    """A VM whose definition holds one of the contested devices now, with the claim that put it there."""

    vm: str
    address: str
    claim: Claim | None


@dataclass(frozen=True)
class Verdict:
    outcome: str  # "win", "lose" or "wait"
    reason: str = ""
    other_vm: str | None = None


def new_claim(vm: str, addresses: Iterable[str]) -> Claim:
    origin = f"{socket.gethostname()} pid {os.getpid()} at {datetime.now(timezone.utc).isoformat(timespec='seconds')}"
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
