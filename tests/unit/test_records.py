"""gpupass.core.records.record behaves as dataclasses.dataclass for the options gpupass uses (issue 11: the classes a
read of a host needs are records, which cost no exec at import).

Generated classes (any mix of required fields, defaults, default factories, repr=False and compare=False; frozen or
not; ordered or not) are built twice from one description, once with `record` and once with `dataclass`, and
every behaviour a caller can see is compared on generated values: construction and its errors, defaults, repr,
equality, hashing, ordering, frozenness, vars(), copy, and what the dataclasses module and inspect read.
"""

from __future__ import annotations

import copy
import dataclasses
import inspect
import operator
import os
import pickle
import subprocess
import sys
from typing import Any, ClassVar

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gpupass.core.domain.inventory import Gpu, Host, HostFacts, Vm
from gpupass.core.domain.pci import Bar, PciAddress, PciFunction
from gpupass.core.errors import UsageError
from gpupass.core.records import field, field_names, record, replace

SEARCH = os.environ.get("GPUPASS_FUZZ_EXAMPLES")
EXAMPLES = settings(max_examples=int(SEARCH or 150), deadline=None, derandomize=not SEARCH, database=None)

# Field values: hashable and ordered among their own kind (ints), so eq, hash and order can be compared.
values = st.integers(-3, 3)
# One field: (kind, default value, repr, compare); kinds: a required field, a default, a factory of a list.
field_specs = st.tuples(st.sampled_from(["required", "default", "factory"]), values, st.booleans(), st.booleans())


@st.composite
def class_specs(draw: Any) -> tuple[list[tuple[str, Any, bool, bool]], bool, bool]:
    specs = draw(st.lists(field_specs, max_size=6))
    # dataclass's rule: no required field after one with a default (checked apart, below)
    specs.sort(key=lambda spec: spec[0] != "required")
    return specs, draw(st.booleans()), draw(st.booleans())


def build(decorator: Any, field_function: Any, specs: list[tuple[str, Any, bool, bool]], frozen: bool,
          order: bool) -> type:
    namespace: dict[str, Any] = {"__annotations__": {}, "__module__": __name__, "__qualname__": "Sample"}
    for index, (kind, default, shown, compared) in enumerate(specs):
        name = f"f{index}"
        namespace["__annotations__"][name] = "int" if kind != "factory" else "list[int]"
        if kind == "default":
            namespace[name] = field_function(default=default, repr=shown, compare=compared) \
                if not (shown and compared) else default
        elif kind == "factory":
            namespace[name] = field_function(default_factory=list, repr=shown, compare=compared)
        elif not (shown and compared):
            namespace[name] = field_function(repr=shown, compare=compared)
    return decorator(frozen=frozen, order=order)(type("Sample", (), namespace))


def pair(spec: tuple[list[tuple[str, Any, bool, bool]], bool, bool]) -> tuple[type, type]:
    return build(record, field, *spec), build(dataclasses.dataclass, dataclasses.field, *spec)


def outcome(function: Any, *args: Any, **kwargs: Any) -> tuple[str, Any]:
    """What a call returns, or the type and message of what it raises."""
    try:
        return "value", function(*args, **kwargs)
    except Exception as exc:  # noqa: BLE001 - the exception is the outcome compared
        return type(exc).__name__, str(exc)


def arguments(specs: list[tuple[str, Any, bool, bool]], data: Any) -> tuple[list[Any], dict[str, Any]]:
    """Generated arguments: some positional, some by keyword, some left to their defaults (and now and then a
    missing, doubled, unknown or extra one, to compare the errors)."""
    names = [f"f{i}" for i in range(len(specs))]
    given_values = [[v] if kind == "factory" else v for (kind, *_), v in
                    zip(specs, data.draw(st.lists(values, min_size=len(specs), max_size=len(specs))), strict=True)]
    positional = data.draw(st.integers(0, len(names)))
    left_out = data.draw(st.sets(st.sampled_from(names))) if names else set()
    args = given_values[:positional]
    kwargs = {n: v for n, v in zip(names[positional:], given_values[positional:], strict=True) if n not in left_out}
    mistake = data.draw(st.sampled_from(["none", "none", "none", "unknown", "extra", "double"]))
    if mistake == "unknown":
        kwargs["nope"] = 1
    elif mistake == "extra":
        args = given_values + [0]
    elif mistake == "double" and positional:
        kwargs[names[0]] = 0
    return args, kwargs


@EXAMPLES
@given(class_specs(), st.data())
def test_a_record_behaves_as_the_dataclass_of_the_same_fields(spec, data):
    ours, theirs = pair(spec)
    _, frozen, order = spec
    args, kwargs = arguments(spec[0], data)
    made = outcome(ours, *copy.deepcopy(args), **copy.deepcopy(kwargs))
    expected = outcome(theirs, *copy.deepcopy(args), **copy.deepcopy(kwargs))
    assert made[0] == expected[0]
    if made[0] != "value":
        assert made == expected  # the same TypeError, word for word
        return
    a, b = made[1], expected[1]
    assert repr(a) == repr(b)
    assert vars(a) == vars(b) and list(vars(a)) == list(vars(b))  # the same fields, values and order
    assert [(f.name, f.type, f.default, f.default_factory, f.repr, f.compare) for f in dataclasses.fields(a)] == \
        [(f.name, f.type, f.default, f.default_factory, f.repr, f.compare) for f in dataclasses.fields(b)]
    assert dataclasses.asdict(a) == dataclasses.asdict(b)
    assert dataclasses.is_dataclass(a) and dataclasses.is_dataclass(ours)
    assert field_names(ours) == field_names(theirs) == tuple(f.name for f in dataclasses.fields(theirs))
    assert ours.__dataclass_params__.frozen == frozen and ours.__dataclass_params__.order == order
    assert ours.__match_args__ == theirs.__match_args__
    assert str(inspect.signature(ours)) == str(inspect.signature(theirs))
    assert ours.__doc__ == theirs.__doc__
    # a second instance from other generated arguments: eq, hash and order agree pair by pair
    other_args, other_kwargs = arguments(spec[0], data)
    other = outcome(ours, *copy.deepcopy(other_args), **copy.deepcopy(other_kwargs))
    if other[0] == "value":
        c, d = other[1], theirs(*copy.deepcopy(other_args), **copy.deepcopy(other_kwargs))
        assert (a == c) == (b == d) and (a != c) == (b != d)
        for compare in (operator.lt, operator.le, operator.gt, operator.ge):
            assert outcome(compare, a, c) == outcome(compare, b, d)  # a result, or TypeError without order=True
        if a == c and outcome(hash, b)[0] == "value":
            assert hash(a) == hash(c)
    assert a == copy.copy(a) and a == copy.deepcopy(a)
    assert (a == object()) is False and a.__eq__(object()) is NotImplemented
    assert outcome(hash, a)[0] == outcome(hash, b)[0]  # hashable exactly when the dataclass is
    if outcome(hash, a)[0] == "value":
        assert hash(a) == hash(type(a)(**vars(a)))
    if vars(a):
        name = next(iter(vars(a)))
        assert outcome(setattr, a, name, 9)[0] == outcome(setattr, b, name, 9)[0]
        assert outcome(delattr, a, name)[0] == outcome(delattr, b, name)[0]
    assert outcome(setattr, a, "other", 1)[0] == outcome(setattr, b, "other", 1)[0]


@EXAMPLES
@given(class_specs(), st.data())
def test_replace_is_dataclasses_replace(spec, data):
    ours, _ = pair(spec)
    args, kwargs = arguments(spec[0], data)
    made = outcome(ours, *args, **kwargs)
    if made[0] != "value":
        return
    changes = {name: 7 for name in data.draw(st.sets(st.sampled_from(list(vars(made[1])) + ["nope"])))}
    assert outcome(replace, made[1], **changes) == outcome(dataclasses.replace, made[1], **changes)


def test_defaults_are_the_same_object_and_factories_are_called_per_instance():
    @record
    class Sample:
        items: list[int] = field(default_factory=list)
        word: str = "x"

    one, two = Sample(), Sample()
    assert one.items == [] and one.items is not two.items
    assert Sample.word == "x" and "items" not in Sample.__dict__  # as dataclass leaves the class attributes


def test_post_init_runs_after_the_fields_are_set():
    with pytest.raises(UsageError, match="PCI bus 0x100 is out of range"):
        PciAddress(0, 0x100, 0, 0)
    with pytest.raises(UsageError, match="PCI slot"):
        PciAddress(domain=0, bus=0, slot=0x20, function=0)


def test_post_init_is_looked_up_on_the_instance_as_dataclass_does():
    calls = []
    for decorator in (record, dataclasses.dataclass):
        @decorator
        class Base:
            a: int = 0

            def __post_init__(self) -> None:
                calls.append("base")

        class Child(Base):  # not decorated again: its __post_init__ is still the one called
            def __post_init__(self) -> None:
                calls.append("child")

        Child(), Child(1)
    assert calls == ["child"] * 4


def test_methods_a_class_writes_itself_stay():
    @record(frozen=True)
    class Named:
        name: str

        def __repr__(self) -> str:
            return f"<{self.name}>"

        def __eq__(self, other: object) -> bool:
            return isinstance(other, Named) and other.name.lower() == self.name.lower()

        def __hash__(self) -> int:
            return hash(self.name.lower())

    assert repr(Named("A")) == "<A>" and Named("A") == Named("a") and hash(Named("A")) == hash(Named("a"))

    @record(frozen=True)
    class EqOnly:  # __eq__ written, __hash__ not: Python makes it None, dataclass(frozen) then adds its own
        name: str

        def __eq__(self, other: object) -> bool:
            return isinstance(other, EqOnly) and other.name == self.name

    @dataclasses.dataclass(frozen=True)
    class EqOnlyDataclass:
        name: str

        def __eq__(self, other: object) -> bool:
            return isinstance(other, EqOnlyDataclass) and other.name == self.name

    assert outcome(hash, EqOnly("a"))[0] == outcome(hash, EqOnlyDataclass("a"))[0] == "value"


def test_inheritance_as_dataclass():
    @record(frozen=True)
    class Base:
        a: int
        b: int = 1

    @record(frozen=True)
    class Child(Base):
        c: int = 2
        b: int = 5  # a redefined field keeps its place and takes the new default

    @dataclasses.dataclass(frozen=True)
    class RealChild(Base):  # a dataclass may inherit a record's fields
        d: int = 3

    assert repr(Child(0)) == "test_inheritance_as_dataclass.<locals>.Child(a=0, b=5, c=2)"
    assert [f.name for f in dataclasses.fields(Child)] == ["a", "b", "c"]
    assert repr(RealChild(0)) == "test_inheritance_as_dataclass.<locals>.RealChild(a=0, b=1, d=3)"
    with pytest.raises(TypeError, match="non-frozen dataclass from a frozen one"):
        record(type("Mutable", (Base,), {"__annotations__": {"x": "int"}, "x": 0}))


def test_what_dataclass_refuses_record_refuses():
    with pytest.raises(ValueError, match="mutable default"):
        record(type("Shared", (), {"__annotations__": {"items": "list[int]"}, "items": []}))
    with pytest.raises(TypeError, match="non-default argument 'b' follows default argument"):
        record(type("Order", (), {"__annotations__": {"a": "int", "b": "int"}, "a": 0}))
    with pytest.raises(ValueError, match="both default and default_factory"):
        field(default=1, default_factory=int)
    with pytest.raises(TypeError, match="Cannot overwrite attribute __lt__"):
        record(order=True)(type("Ordered", (), {"__annotations__": {"a": "int"}, "__lt__": lambda s, o: True}))
    with pytest.raises(TypeError, match="Cannot overwrite attribute __setattr__"):
        record(frozen=True)(type("Frozen", (), {"__annotations__": {"a": "int"}, "__setattr__": object.__setattr__}))


def test_options_gpupass_does_not_use_are_refused_not_ignored():
    with pytest.raises(TypeError, match="InitVar is not supported"):
        record(type("Init", (), {"__annotations__": {"a": "InitVar[int]"}}))
    with pytest.raises(TypeError, match="KW_ONLY is not supported"):
        record(type("KwOnly", (), {"__annotations__": {"_": "KW_ONLY"}}))
    with pytest.raises(TypeError):
        record(slots=True)  # type: ignore[call-overload]
    with pytest.raises(TypeError):
        field(init=False)  # type: ignore[call-arg]

    @dataclasses.dataclass
    class Plain:
        a: int

    with pytest.raises(TypeError, match="cannot inherit the fields of the dataclass"):
        record(type("FromDataclass", (Plain,), {"__annotations__": {"b": "int"}, "b": 0}))


def test_class_variables_are_not_fields():
    @record(frozen=True)
    class WithClassVar:
        kinds: ClassVar[tuple[str, ...]] = ("a",)
        name: str = ""

    assert [f.name for f in dataclasses.fields(WithClassVar)] == ["name"] and WithClassVar.kinds == ("a",)


def test_recursive_repr_stops_as_dataclass_does():
    @record
    class Node:
        children: list[Any] = field(default_factory=list)

    node = Node()
    node.children.append(node)
    assert repr(node) == "test_recursive_repr_stops_as_dataclass_does.<locals>.Node(children=[...])"


def test_frozen_errors_are_dataclasses_own():
    address = PciAddress(0, 0x41, 0, 0)
    with pytest.raises(dataclasses.FrozenInstanceError, match="cannot assign to field 'bus'"):
        address.bus = 1  # type: ignore[misc]
    with pytest.raises(dataclasses.FrozenInstanceError, match="cannot delete field 'bus'"):
        del address.bus  # type: ignore[misc]


def test_the_domain_model_pickles_copies_sorts_and_matches():
    gpu = Gpu(PciFunction(PciAddress(0, 0x41, 0, 0), 0x10DE, 0x1EB8, 0x030200, bars=(Bar(0, 16 << 20),)))
    facts = HostFacts(Host("qemu:///system", "kvm"), gpus=(gpu,), vms=(Vm("a", "off", "bios", 1 << 30),))  # type: ignore[arg-type]
    assert pickle.loads(pickle.dumps(facts)) == facts and copy.deepcopy(facts) == facts
    assert sorted([PciAddress(0, 2, 0, 0), PciAddress(0, 1, 0, 1), PciAddress(0, 1, 0, 0)]) == \
        [PciAddress(0, 1, 0, 0), PciAddress(0, 1, 0, 1), PciAddress(0, 2, 0, 0)]
    match gpu.address:
        case PciAddress(0, bus, 0, 0):
            assert bus == 0x41
        case _:
            pytest.fail("a record matches by position, as a dataclass")
    assert replace(gpu, model="T4").model == "T4" and dataclasses.replace(gpu, model="T4") == replace(gpu, model="T4")


def test_a_read_of_the_domain_model_does_not_import_dataclasses():
    code = ("import sys\nfrom gpupass.core.domain import inventory, pci\n"
            "a = pci.PciAddress.parse('0000:41:00.0')\nhash(a), repr(a), a == a, sorted([a, a])\n"
            "v = inventory.Vm('x', inventory.PowerState.OFF, inventory.Firmware.EFI, 1)\n"
            "print('dataclasses' in sys.modules, 'inspect' in sys.modules)")
    loaded = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    assert loaded == ["False", "False"]
