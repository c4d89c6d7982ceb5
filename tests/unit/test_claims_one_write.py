"""One-write claims (gpupass.core.domain.claims.decide_written) under every kind of interleaving.

A model: each VM's record is a register only its claimant writes, and the claimant writes its claim and the
GPU together (as vSphere's ReconfigVM_Task does with one ConfigSpec), then reads every register until it
wins, loses (and takes its write back) or, after a bounded number of reads that said "wait", gives up and
loses. A seeded scheduler interleaves the steps at random, thousands of times, with claim numbers drawn at
random (ties included): safety must not depend on them.
"""

import random

import pytest

from gpupass.core.domain.claims import Holder, decide_written, new_claim, number_for_write

GPU = "0000:42:00.0"


def run_schedule(seed: int, claimants: int, patience: int = 40, rule=decide_written,
                 clock: bool = False) -> tuple[dict[str, str], bool]:
    """-> (each claimant's result, whether one of them gave up waiting). With `clock`, each claim's number is
    taken from one clock just before its write (number_for_write), else drawn at random."""
    rng = random.Random(seed)
    step = 0
    registers: dict[str, object] = {}  # vm -> its claim, written together with the GPU
    vms = [f"vm{i}" for i in range(claimants)]
    claims = {vm: new_claim(vm, [GPU]).numbered(rng.randint(1, 3)) for vm in vms}
    waited = dict.fromkeys(vms, 0)
    written: set[str] = set()
    results: dict[str, str] = {}
    gave_up = False
    while len(results) < claimants:
        vm = rng.choice([v for v in vms if v not in results])
        step += 1
        if vm not in written:
            if clock:
                claims[vm] = claims[vm].numbered(number_for_write(claims[vm], [], step))
            registers[vm] = claims[vm]
            written.add(vm)
            continue
        holders = [Holder(other, GPU, claim) for other, claim in registers.items() if other != vm]
        verdict = rule(claims[vm], holders)
        if verdict.outcome == "wait":
            waited[vm] += 1
            if waited[vm] < patience:
                continue
            gave_up = True
        if verdict.outcome == "win":
            results[vm] = "win"
        else:
            registers.pop(vm)
            results[vm] = "lose"
    assert sorted(registers) == sorted(vm for vm, r in results.items() if r == "win")  # losers took theirs back
    return results, gave_up


@pytest.mark.parametrize("clock", [False, True], ids=["random numbers", "numbers from one clock"])
@pytest.mark.parametrize("claimants", [2, 3, 5])
def test_never_two_winners_and_one_winner_unless_a_wait_ran_out(claimants, clock):
    rounds_with_a_wait_run_out = 0
    for seed in range(3000):
        results, gave_up = run_schedule(seed, claimants, clock=clock)
        wins = list(results.values()).count("win")
        assert wins <= 1, (seed, results)
        if gave_up:
            rounds_with_a_wait_run_out += 1
        else:
            assert wins == 1, (seed, results)
    if clock:  # a later writer's claim comes after an earlier one's: nobody waits out a winner
        assert rounds_with_a_wait_run_out == 0


def test_the_model_would_catch_a_rule_that_does_not_wait():
    """A rule that wins where decide_written waits (the lowest claim present wins at once) lets two runs win:
    the model is able to see that."""
    def eager(mine, holders):
        verdict = decide_written(mine, holders)
        return type(verdict)("win") if verdict.outcome == "wait" else verdict

    doubled = [seed for seed in range(3000) if list(run_schedule(seed, 3, rule=eager)[0].values()).count("win") > 1]
    assert doubled


def test_the_verdicts():
    mine = new_claim("a", [GPU]).numbered(5)
    assert decide_written(mine, []).outcome == "win"
    assert decide_written(mine, [Holder("a", GPU, mine)]).outcome == "win"  # its own write
    assert decide_written(mine, [Holder("b", "0000:01:00.0", None)]).outcome == "win"  # another GPU
    hand = decide_written(mine, [Holder("b", GPU, None)])
    assert hand.outcome == "lose" and hand.other_vm == "b" and "held by VM 'b'" in hand.reason
    earlier = decide_written(mine, [Holder("b", GPU, new_claim("b", [GPU]).numbered(4))])
    assert earlier.outcome == "lose" and "claimed" in earlier.reason
    later = decide_written(mine, [Holder("b", GPU, new_claim("b", [GPU]).numbered(6))])
    assert later.outcome == "wait" and later.other_vm == "b"
    doorway = decide_written(mine, [Holder("b", GPU, new_claim("b", [GPU]))])  # an older gpupass' doorway
    assert doorway.outcome == "lose"


def test_a_later_write_usually_carries_the_larger_number():
    mine = new_claim("a", [GPU])
    assert number_for_write(mine, [], 1_000_000) == 1_000_000
    seen = [new_claim("b", [GPU]).numbered(2_000_000)]
    assert number_for_write(mine, seen, 1_000_000) == 2_000_001  # a clock behind another claim's number
