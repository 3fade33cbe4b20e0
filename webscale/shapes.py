"""What a message dataclass's annotations mean to the decoder: a tree of shapes.

`struct_of(cls)` resolves the dataclass's type hints (string annotations included, as
`from __future__ import annotations` makes them) and turns each field into a shape: `Scalar`
(str, int, float, bool), `Anything` (Any, object: passed through), `ListOf`, `DictOf` (str
keys), `Nullable` (T | None, Optional[T]) and `Struct` (a nested dataclass, which may contain
itself). What JSON cannot carry or the decoder does not check (sets, tuples, unions of two
types, Literal, bytes, InitVar, ...) is a ConfigError naming the field, raised at start-up, never
per message. webscale/decoder.py writes the code for the tree.
"""

from __future__ import annotations

import dataclasses
import inspect
import types
import typing
from collections.abc import Callable
from typing import Any

from .errors import ConfigError

SUPPORTED = "str, int, float, bool, Any, object, a dataclass, list[T], dict[str, T], T | None"


@dataclasses.dataclass(frozen=True, slots=True)
class Anything:
    """Any JSON value, unchecked (`Any`, `object`, a bare `list`'s elements)."""


@dataclasses.dataclass(frozen=True, slots=True)
class Scalar:
    kind: type  # str, int, float or bool


@dataclasses.dataclass(frozen=True, slots=True)
class Nullable:
    inner: Shape


@dataclasses.dataclass(frozen=True, slots=True)
class ListOf:
    item: Shape


@dataclasses.dataclass(frozen=True, slots=True)
class DictOf:
    value: Shape


@dataclasses.dataclass(frozen=True, slots=True)
class Field:
    name: str
    shape: Shape
    required: bool  # no default and no default_factory: the key must be present
    default: object  # dataclasses.MISSING when there is none
    factory: Callable[[], object] | None
    init: bool  # a parameter of __init__ (False: init=False, only ever set from its default)
    kw_only: bool


@dataclasses.dataclass(eq=False, slots=True)
class Struct:
    cls: type
    fields: list[Field] = dataclasses.field(default_factory=list)  # filled after creation
    plain: bool = False  # object.__new__ + attribute stores make it as cls(...) would


Shape = Anything | Scalar | Nullable | ListOf | DictOf | Struct


def type_name(hint: object) -> str:
    return hint.__qualname__ if isinstance(hint, type) else repr(hint).replace("typing.", "")


def is_dataclass_type(hint: object) -> bool:
    return isinstance(hint, type) and dataclasses.is_dataclass(hint)


def struct_of(cls: type, structs: dict[type, Struct] | None = None) -> Struct:
    """The shape of dataclass `cls`; `structs` holds those already seen (a type may recur)."""
    structs = {} if structs is None else structs
    if cls in structs:  # seen already, or being built: a dataclass that contains itself
        return structs[cls]
    struct = structs[cls] = Struct(cls)
    hints = _type_hints(cls)
    fields = dataclasses.fields(cls)
    init_names = [f.name for f in fields if f.init]
    params = list(inspect.signature(cls).parameters)
    if sorted(params) != sorted(init_names):
        raise ConfigError(f"{cls.__qualname__}: __init__ takes {params}, not the fields "
                          f"{init_names} (InitVar and custom __init__ are not supported)")
    for f in fields:
        factory = None if f.default_factory is dataclasses.MISSING else f.default_factory
        required = f.default is dataclasses.MISSING and factory is None
        if not f.init and required:
            continue  # never set by __init__ either
        shape = _shape_of(hints[f.name], f"{cls.__qualname__}.{f.name}", structs)
        struct.fields.append(Field(f.name, shape, required, f.default, factory, f.init,
                                   f.kw_only is True))
    struct.plain = _is_plain(cls)
    return struct


def _shape_of(hint: object, where: str, structs: dict[type, Struct]) -> Shape:
    if hint is Any or hint is object:
        return Anything()
    if hint is str or hint is int or hint is float or hint is bool:
        return Scalar(typing.cast(type, hint))
    if is_dataclass_type(hint):
        return struct_of(typing.cast(type, hint), structs)
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if hint is list or origin is list:
        return ListOf(_shape_of(args[0], f"{where}[]", structs) if args else Anything())
    if hint is dict or origin is dict:
        if args and args[0] is not str:
            raise ConfigError(f"{where}: dict keys must be str (JSON object keys), not "
                              f"{type_name(args[0])}")
        return DictOf(_shape_of(args[1], f"{where}[]", structs) if args else Anything())
    if origin is typing.Union or origin is types.UnionType:
        others = [arg for arg in args if arg is not type(None)]
        if len(others) == 1 and len(others) < len(args):
            inner = _shape_of(others[0], where, structs)
            return inner if isinstance(inner, Anything | Nullable) else Nullable(inner)
        raise ConfigError(f"{where}: unsupported annotation {type_name(hint)}: a union can "
                          f"only be T | None (supported: {SUPPORTED})")
    raise ConfigError(f"{where}: unsupported annotation {type_name(hint)} "
                      f"(supported: {SUPPORTED})")


def _type_hints(cls: type) -> dict[str, Any]:
    try:
        return typing.get_type_hints(cls)
    except NameError as exc:
        raise ConfigError(f"cannot resolve the annotations of {cls.__qualname__}: {exc} (a "
                          "type named in a string annotation must be importable from the "
                          "module that defines the class, not only under TYPE_CHECKING)"
                          ) from None


def _is_plain(cls: type) -> bool:
    """Whether object.__new__ plus one attribute store per field is what cls(...) would do.

    True for the dataclass-generated `__init__` (it stores each argument, nothing else) with no
    `__post_init__`, not frozen (that one goes through object.__setattr__), and neither
    `__new__` nor the metaclass's `__call__` replaced.
    """
    params = getattr(cls, "__dataclass_params__", None)
    code = getattr(cls.__dict__.get("__init__"), "__code__", None)
    new: object = cls.__new__
    return (params is not None and params.init and not params.frozen
            and code is not None and code.co_filename == "<string>"  # made by @dataclass
            and not hasattr(cls, "__post_init__")
            and new is object.__new__
            and type(cls).__call__ is type.__call__)
