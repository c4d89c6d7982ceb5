"""The claim protocol (gpupass.core.domain.claims) under every kind of interleaving of its reads and writes.

A model: each VM's record is a register only its claimant writes; each claimant runs doorway, read, numbered
write, then reads until it wins, loses (and takes its claim back) or waits on a claimant still choosing. A
seeded scheduler interleaves the steps at random, thousands of times.
"""

import random

import pytest

from gpupass.core.domain.claims import Claim, Holder, decide, new_claim, next_number

GPU = "0000:42:00.0"


def run_schedule(seed: int, claimants: int) -> dict[str, str]:
    rng = random.Random(seed)
    registers: dict[str, tuple[Claim | None, bool]] = {}  # vm -> (claim, holds the GPU)
    vms = [f"vm{i}" for i in range(claimants)]
    state = {vm: ("start", None) for vm in vms}
    results: dict[str, str] = {}

    def others(me):
        claims = [c for vm, (c, _) in registers.items() if vm != me and c is not None]
        holders = [Holder(vm, GPU, c if c is not None and not c.choosing else None)
                   for vm, (c, held) in registers.items() if vm != me and held]
        return claims, holders

    while len(results) < claimants:
        vm = rng.choice([v for v in vms if v not in results])
        phase, claim = state[vm]
        if phase == "start":
            claim = new_claim(vm, [GPU])
            registers[vm] = (claim, False)
            state[vm] = ("doorway", claim)
        elif phase == "doorway":
            state[vm] = ("numbered", claim.numbered(next_number(claim, others(vm)[0])))
        elif phase == "numbered":
            registers[vm] = (claim, True)
            state[vm] = ("check", claim)
        else:
            verdict = decide(claim, *others(vm))
            if verdict.outcome == "win":
                results[vm] = "win"
            elif verdict.outcome == "lose":
                registers.pop(vm)
                results[vm] = "lose"
    return results


@pytest.mark.parametrize("claimants", [2, 3, 5])
def test_exactly_one_claimant_wins_in_every_interleaving(claimants):
    for seed in range(3000):
        results = run_schedule(seed, claimants)
        assert sorted(results.values()).count("win") == 1, (seed, results)


def test_the_model_would_catch_a_protocol_without_the_doorway(monkeypatch):
    """Without the choosing state, two claimants can both win: the model above is able to see that."""
    import gpupass.core.domain.claims as claims

    monkeypatch.setattr(claims.Claim, "choosing", property(lambda self: False))
    doubled = [seed for seed in range(3000) if list(run_schedule(seed, 3).values()).count("win") > 1]
    assert doubled


def test_a_holder_without_a_claim_beats_every_claimant():
    mine = new_claim("a", [GPU]).numbered(1)
    verdict = decide(mine, [], [Holder("b", GPU, None)])
    assert verdict.outcome == "lose" and verdict.other_vm == "b" and "held by VM 'b'" in verdict.reason


def test_a_claimant_still_choosing_is_waited_for():
    mine = new_claim("a", [GPU]).numbered(1)
    assert decide(mine, [new_claim("b", [GPU])], []).outcome == "wait"
    assert decide(mine, [new_claim("b", ["0000:01:00.0"])], []).outcome == "win"
