"""core/jsontext.dumps writes exactly what json.dumps(document, indent=2) writes (every --json goes through it)."""

from __future__ import annotations

import enum
import json
import os
from collections import OrderedDict

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gpupass.core.jsontext import dumps

SEARCH = os.environ.get("GPUPASS_FUZZ_EXAMPLES")
EXAMPLES = settings(max_examples=int(SEARCH or 200), deadline=None, derandomize=not SEARCH, database=None)

scalars = st.none() | st.booleans() | st.integers() | st.floats() | st.text()  # NaN and infinities included
documents = st.recursive(scalars, lambda inner: st.lists(inner, max_size=4) | st.tuples(inner, inner)
                         | st.dictionaries(st.text(), inner, max_size=4), max_leaves=30)


@EXAMPLES
@given(documents)
def test_the_same_text_as_json_dumps(document):
    assert dumps(document) == json.dumps(document, indent=2)


class Level(enum.IntEnum):
    HIGH = 3


class Word(str, enum.Enum):
    ON = "on"


@pytest.mark.parametrize("document", [
    {}, [], "", 0, -0.0, 1e300, 10**40, {"a": {}, "b": [], "c": [[]]}, ["é\u2028\x00\"\\/", "\U0001f600"],
    {"level": Level.HIGH, "word": Word.ON}, OrderedDict([("z", 1), ("a", 2)]), (1, (2, 3)),
    {1: "a number key", None: "a None key", 2.5: "a float key", False: "a boolean key"},  # json turns these into strings
])
def test_edges_the_same_as_json_dumps(document):
    assert dumps(document) == json.dumps(document, indent=2)


def test_a_value_json_cannot_write_fails_as_json_dumps_fails():
    with pytest.raises(TypeError, match="not JSON serializable"):
        dumps({"hosts": [object()]})
    cycle: list = []
    cycle.append(cycle)
    with pytest.raises(ValueError, match="Circular reference"):
        dumps(cycle)


def test_a_fleet_document_the_same_as_json_dumps():
    """What `fleet gpus --json` prints for the lab KVM host read through libvirt's test driver (every GPU field the
    JSON contract has: sharing, companions, groups, claims)."""
    from importlib import resources

    from gpupass.backends.kvm.backend import KvmBackend
    from gpupass.core import serialize
    from gpupass.core.target import Target

    with resources.as_file(resources.files("gpupass.backends.kvm.lab").joinpath("lab-kvm.xml")) as path:
        with KvmBackend(Target(uri=f"test://{path}")) as backend:
            facts = backend.inventory()
    document = {"hosts": [{"host": "lab", "ok": True, "platform": facts.host.platform, "seconds": 0.52,
                           "gpus": [serialize.gpu_to_dict(g) for g in facts.gpus]}] * 3}
    assert facts.gpus and dumps(document) == json.dumps(document, indent=2)
