"""`record`: what `dataclasses.dataclass` makes of a class, for the classes a read of a host needs, without its
cost at import.

`dataclass()` writes each generated method (`__init__`, `__repr__`, `__eq__`, `__hash__`, `__setattr__` ...) as
source text and compiles it with exec, five to seven times per class, and the dataclasses module imports
inspect (with ast, dis and tokenize). For the ~40 classes `gpupass gpus HOST` defines that was a third of the
command's start-up against a hand-written libvirt script (issue 11; tests/bench/bench_kvm.py). `record` builds
the same methods from closures over the field names, which costs no compile, and gives the class the same
behaviour for the options gpupass uses: frozen, order, and `field(default=, default_factory=, repr=, compare=)`.

The class is still a dataclass to everything that asks: `dataclasses.fields`, `replace`, `asdict`,
`is_dataclass`, `__dataclass_params__` and `inspect.signature` read attributes that are computed on first use by
applying the real `dataclass()` to a copy of the class's fields (a *shadow* class), so whoever asks pays for the
dataclasses module, and a read of a host never does. tests/unit/test_records.py checks, field by field and with
generated classes and values, that a record behaves as the dataclass it stands for.

Options dataclass() has and gpupass does not use (InitVar, KW_ONLY, slots, kw_only, eq=False, unsafe_hash,
match_args=False, field(init=False/hash=/metadata=/kw_only=)) are refused with TypeError rather than ignored.
Use `replace` from this module (not dataclasses.replace) where the read path changes a record: it does not
import dataclasses.
"""

from __future__ import annotations

import operator
import sys
from reprlib import recursive_repr
from typing import Any, Callable, TypeVar, dataclass_transform, overload

T = TypeVar("T")

_MISSING: Any = type("_MISSING_TYPE", (), {"__repr__": lambda self: "MISSING"})()
_FACTORY: Any = type("_FACTORY_TYPE", (), {"__repr__": lambda self: "<factory>"})()
# What dataclasses names the attributes it reads; computed on first use from the shadow dataclass.
_FROM_SHADOW = ("__dataclass_fields__", "__dataclass_params__", "__signature__")


class _Field:
    """`field(...)` as written in a class body, until `record` reads it."""

    __slots__ = ("default", "default_factory", "repr", "compare")

    def __init__(self, default: Any, default_factory: Any, repr: bool, compare: bool) -> None:  # noqa: A002
        self.default, self.default_factory, self.repr, self.compare = default, default_factory, repr, compare


def field(*, default: Any = _MISSING, default_factory: Callable[[], Any] | Any = _MISSING, repr: bool = True,  # noqa: A002
          compare: bool = True) -> Any:
    """dataclasses.field with the options gpupass uses."""
    if default is not _MISSING and default_factory is not _MISSING:
        raise ValueError("cannot specify both default and default_factory")
    return _Field(default, default_factory, repr, compare)


class _Spec:
    """One field as record's methods need it."""

    __slots__ = ("name", "annotation", "default", "default_factory", "repr", "compare")

    def __init__(self, name: str, annotation: Any, declared: Any) -> None:
        self.name, self.annotation = name, annotation
        if isinstance(declared, _Field):
            self.default, self.default_factory = declared.default, declared.default_factory
            self.repr, self.compare = declared.repr, declared.compare
        else:
            self.default, self.default_factory, self.repr, self.compare = declared, _MISSING, True, True
        if self.default is not _MISSING and self.default.__class__.__hash__ is None:  # as dataclass: one object
            raise ValueError(f"mutable default {type(self.default)} for field {name} is not allowed: "
                             "use default_factory")

    @property
    def has_default(self) -> bool:
        return self.default is not _MISSING or self.default_factory is not _MISSING


class _ShadowAttribute:
    """A class attribute that dataclasses (or inspect) reads, taken from the real dataclass of the same fields (the
    shadow, built on first use)."""

    def __init__(self, name: str, cls: type) -> None:
        self.name, self.cls = name, cls

    def __get__(self, instance: object, owner: type) -> Any:
        if self.name == "__signature__":
            import inspect

            return inspect.signature(_shadow(self.cls))
        return getattr(_shadow(self.cls), self.name)


def _unsupported(annotation: Any) -> str | None:
    text = annotation if isinstance(annotation, str) else getattr(annotation, "__name__", repr(annotation))
    head = text.split("[", 1)[0].strip().rpartition(".")[2]
    return head if head in ("InitVar", "KW_ONLY") else None


def _is_class_var(annotation: Any) -> bool:
    if isinstance(annotation, str):  # `from __future__ import annotations`, as dataclasses reads it
        return annotation.split("[", 1)[0].strip() in ("ClassVar", "typing.ClassVar")
    return getattr(annotation, "__origin__", annotation) is getattr(sys.modules.get("typing"), "ClassVar", None)


def _fields_of(cls: type) -> dict[str, _Spec]:
    fields: dict[str, _Spec] = {}
    for base in reversed(cls.__mro__[1:]):  # inherited fields first, in dataclass order
        fields.update(base.__dict__.get("__record_specs__", {}))
    for name, annotation in cls.__dict__.get("__annotations__", {}).items():
        if _is_class_var(annotation):
            continue
        if _unsupported(annotation):
            raise TypeError(f"{cls.__qualname__}.{name}: {_unsupported(annotation)} is not supported by record")
        declared = cls.__dict__.get(name, _MISSING)
        fields[name] = _Spec(name, annotation, declared)
        if isinstance(declared, _Field):  # as dataclass leaves the class: the default, or no attribute
            if declared.default is _MISSING:
                delattr(cls, name)
            else:
                setattr(cls, name, declared.default)
    seen_default = False
    for spec in fields.values():
        if spec.has_default:
            seen_default = True
        elif seen_default:
            raise TypeError(f"non-default argument {spec.name!r} follows default argument")
    return fields


@overload
def record(cls: type[T], /) -> type[T]: ...


@overload
def record(*, frozen: bool = False, order: bool = False) -> Callable[[type[T]], type[T]]: ...


@dataclass_transform(field_specifiers=(field,))  # type checkers read a record as the dataclass it is
def record(cls: type[T] | None = None, /, *, frozen: bool = False, order: bool = False) -> Any:
    """`@record(frozen=True)` is `@dataclasses.dataclass(frozen=True)` (see the module's docstring)."""

    def wrap(cls: type[T]) -> type[T]:
        return _process(cls, frozen, order)

    return wrap if cls is None else wrap(cls)


def _process(cls: type[T], frozen: bool, order: bool) -> type[T]:
    record_bases = [base for base in cls.__mro__[1:-1] if "__record_specs__" in base.__dict__]
    for base in cls.__mro__[1:-1]:
        if "__dataclass_fields__" in base.__dict__ and base not in record_bases:
            raise TypeError(f"{cls.__qualname__}: a record cannot inherit the fields of the dataclass {base.__qualname__}")
    if record_bases and any(base.__dict__["__record_frozen__"] for base in record_bases) != frozen:
        raise TypeError("cannot inherit frozen dataclass from a non-frozen one" if frozen
                        else "cannot inherit non-frozen dataclass from a frozen one")
    specs = _fields_of(cls)
    names = tuple(specs)
    known = frozenset(names)
    shown = tuple(name for name, spec in specs.items() if spec.repr)
    required = tuple(name for name, spec in specs.items() if not spec.has_default)
    factories = tuple((name, spec.default_factory) for name, spec in specs.items()
                      if spec.default_factory is not _MISSING)
    # Every field in order with its default value, or _MISSING (required) or _FACTORY (called for each instance):
    # __init__ starts from a copy, so the instance's __dict__ is in field order as the generated __init__ leaves it.
    template = {name: spec.default if spec.default is not _MISSING else
                _FACTORY if spec.default_factory is not _MISSING else _MISSING for name, spec in specs.items()}
    key = _key_function(tuple(name for name, spec in specs.items() if spec.compare))
    post_init = hasattr(cls, "__post_init__")  # called as self.__post_init__(): a subclass's own, as dataclass does
    qualname = cls.__qualname__

    def __init__(self: Any, *args: Any, **kwargs: Any) -> None:
        if not kwargs and len(args) == len(names):  # every field given in order: nothing to check or fill
            self.__dict__.update(zip(names, args, strict=True))
            if post_init:
                self.__post_init__()
            return
        # Python's checks in Python's order: each keyword in turn, then too many positional, then missing ones.
        if kwargs and (not known.issuperset(kwargs) or not kwargs.keys().isdisjoint(names[:len(args)])):
            for name in kwargs:
                if name not in known:
                    raise TypeError(f"{qualname}.__init__() got an unexpected keyword argument {name!r}")
                if name in names[:len(args)]:
                    raise TypeError(f"{qualname}.__init__() got multiple values for argument {name!r}")
        if len(args) > len(names):
            raise TypeError(f"{qualname}.__init__() {_takes(len(required), len(names))} positional argument"
                            f"{'s' if len(names) else ''} but {len(args) + 1} were given")
        state = template.copy()
        state.update(zip(names, args, strict=False))  # fewer args than fields: the rest below
        state.update(kwargs)
        for name in required:
            if state[name] is _MISSING:
                missing = [repr(name) for name in required if state[name] is _MISSING]
                raise TypeError(f"{qualname}.__init__() missing {len(missing)} required positional argument"
                                f"{'s' if len(missing) > 1 else ''}: {_listed(missing)}")
        for name, factory in factories:
            if state[name] is _FACTORY:
                state[name] = factory()
        self.__dict__.update(state)
        if post_init:
            self.__post_init__()

    @recursive_repr()
    def __repr__(self: Any) -> str:
        return f"{self.__class__.__qualname__}({', '.join(f'{name}={getattr(self, name)!r}' for name in shown)})"

    def __eq__(self: Any, other: object) -> Any:
        if other.__class__ is self.__class__:
            return key(self) == key(other)
        return NotImplemented

    def __hash__(self: Any) -> int:
        return hash(key(self))

    # dataclass keeps __init__, __repr__ and __eq__ where the class defines its own.
    _set_new(cls, "__init__", __init__)
    _set_new(cls, "__repr__", __repr__)
    _set_new(cls, "__eq__", __eq__)
    if order:
        for name, compare in (("__lt__", operator.lt), ("__le__", operator.le), ("__gt__", operator.gt),
                              ("__ge__", operator.ge)):
            if name in cls.__dict__:
                raise TypeError(f"Cannot overwrite attribute {name} in class {cls.__name__}. Consider using "
                                "functools.total_ordering")
            _set_new(cls, name, _comparison(name, compare, key))
    if frozen:
        for name, method in (("__setattr__", _frozen_setattr(cls, known)), ("__delattr__", _frozen_delattr(cls, known))):
            if name in cls.__dict__:
                raise TypeError(f"Cannot overwrite attribute {name} in class {cls.__name__}")
            _set_new(cls, name, method)
    # dataclass's rule for eq=True without unsafe_hash: a __hash__ the class wrote stays; else frozen hashes its
    # compared fields and mutable is unhashable. Python sets __hash__ = None itself in a class that defines __eq__.
    class_hash = cls.__dict__.get("__hash__", _MISSING)
    if class_hash is _MISSING or (class_hash is None and "__eq__" in cls.__dict__):
        if frozen:
            __hash__.__qualname__ = f"{qualname}.__hash__"
            cls.__hash__ = __hash__  # type: ignore[method-assign]
        else:
            cls.__hash__ = None  # type: ignore[assignment]
    cls.__record_specs__ = specs  # type: ignore[attr-defined]
    cls.__record_frozen__ = frozen  # type: ignore[attr-defined]
    cls.__record_order__ = order  # type: ignore[attr-defined]
    if "__match_args__" not in cls.__dict__:
        cls.__match_args__ = names  # type: ignore[attr-defined, misc]
    for name in _FROM_SHADOW:
        setattr(cls, name, _ShadowAttribute(name, cls))
    if cls.__dict__.get("__doc__") is None:  # dataclass writes the signature there; type.__doc__ calls __get__
        cls.__doc__ = _ShadowAttribute("__doc__", cls)  # type: ignore[assignment]
    return cls


def _set_new(cls: type, name: str, method: Any) -> None:
    if name not in cls.__dict__:
        method.__qualname__ = f"{cls.__qualname__}.{name}"
        setattr(cls, name, method)


def _key_function(compared: tuple[str, ...]) -> Callable[[Any], tuple[Any, ...]]:
    """The tuple dataclass's __eq__, __hash__ and ordering compare: the compared fields' values, in order, read
    from the instance's __dict__ in C (a record's fields live there; reading them as attributes costs 3x more)."""
    if not compared:
        return lambda self: ()
    if len(compared) == 1:
        name = compared[0]
        return lambda self: (self.__dict__[name],)
    values = operator.itemgetter(*compared)
    return lambda self: values(self.__dict__)


def _comparison(name: str, compare: Callable[[Any, Any], bool], key: Callable[[Any], tuple[Any, ...]]) -> Any:
    def method(self: Any, other: object) -> Any:
        if other.__class__ is self.__class__:
            return compare(key(self), key(other))
        return NotImplemented

    method.__name__ = name
    return method


def _frozen_setattr(cls: type, known: frozenset[str]) -> Any:
    def __setattr__(self: Any, name: str, value: Any) -> None:
        if type(self) is cls or name in known:
            from dataclasses import FrozenInstanceError  # only when it is raised

            raise FrozenInstanceError(f"cannot assign to field {name!r}")
        super(cls, self).__setattr__(name, value)  # type: ignore[arg-type]

    return __setattr__


def _frozen_delattr(cls: type, known: frozenset[str]) -> Any:
    def __delattr__(self: Any, name: str) -> None:
        if type(self) is cls or name in known:
            from dataclasses import FrozenInstanceError

            raise FrozenInstanceError(f"cannot delete field {name!r}")
        super(cls, self).__delattr__(name)  # type: ignore[arg-type]

    return __delattr__


def _takes(required: int, total: int) -> str:
    # Python's own wording, counting self
    return f"takes {total + 1}" if required == total else f"takes from {required + 1} to {total + 1}"


def _listed(quoted: list[str]) -> str:
    # Python's own wording: 'a', 'a' and 'b', 'a', 'b', and 'c'
    if len(quoted) == 1:
        return quoted[0]
    return ", ".join(quoted[:-1]) + ("," if len(quoted) > 2 else "") + " and " + quoted[-1]


def _shadow(cls: type) -> type:
    """The real dataclass of cls's fields and options, built once."""
    shadow = cls.__dict__.get("__record_shadow__")
    if shadow is None:
        import dataclasses

        annotations: dict[str, Any] = {}
        namespace: dict[str, Any] = {"__annotations__": annotations, "__module__": cls.__module__,
                                     "__qualname__": cls.__qualname__}
        for name, spec in cls.__dict__["__record_specs__"].items():
            annotations[name] = spec.annotation
            options: dict[str, Any] = {"repr": spec.repr, "compare": spec.compare}
            if spec.default is not _MISSING:
                options["default"] = spec.default
            if spec.default_factory is not _MISSING:
                options["default_factory"] = spec.default_factory
            namespace[name] = dataclasses.field(**options)
        shadow = dataclasses.dataclass(frozen=cls.__dict__["__record_frozen__"],
                                       order=cls.__dict__["__record_order__"])(type(cls.__name__, (), namespace))
        cls.__record_shadow__ = shadow  # type: ignore[attr-defined]
    return shadow


def field_names(cls: type) -> tuple[str, ...]:
    """The names of a record's (or a dataclass's) fields, in order: [f.name for f in dataclasses.fields(cls)]
    without importing dataclasses for a record."""
    specs = cls.__dict__.get("__record_specs__")
    if specs is None:
        import dataclasses

        return tuple(f.name for f in dataclasses.fields(cls))
    return tuple(specs)


def replace(obj: T, /, **changes: Any) -> T:
    """dataclasses.replace for records (and dataclasses), without importing dataclasses for a record."""
    specs = type(obj).__dict__.get("__record_specs__")
    if specs is None:
        import dataclasses

        return dataclasses.replace(obj, **changes)  # type: ignore[type-var]
    state = obj.__dict__
    for name in specs:
        if name not in changes:
            changes[name] = state[name]
    return type(obj)(**changes)
