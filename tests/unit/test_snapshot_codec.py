import dataclasses
import json

from gpupass.core.domain.inventory import PassthroughState
from gpupass.core.snapshot import facts_from_snapshot, facts_to_snapshot
from support.fakes import lab_facts


def test_facts_survive_json_exactly():
    facts = lab_facts()
    gpus = list(facts.gpus)
    gpus[0] = dataclasses.replace(gpus[0], location="esx01", extra={"boot_vga": True},
                                  passthrough=PassthroughState(True, True, False, ("reboot pending",)))
    facts = dataclasses.replace(facts, gpus=tuple(gpus))
    assert facts_from_snapshot(json.loads(json.dumps(facts_to_snapshot(facts)))) == facts
