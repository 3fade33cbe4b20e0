"""Decoders for the user's message type, generated once per dataclass at start-up.

How this works: `build_decoder(cls)` reads the dataclass's fields and their resolved type hints
into a tree of shapes (webscale/shapes.py: `Scalar`, `ListOf`, `DictOf`, `Nullable`, `Struct`,
`Anything`), rejecting at build time what it cannot decode (ConfigError naming the field). It then
writes the Python source of one function specialised for that tree and `exec`s it once:
`orjson.loads`, then straight-line code that fetches every field, checks its type with `type(x) is
T` and builds the instances, with a flat loop and local names for each list (as the hand-written
Telemetry decoder does). The generated code calls no helper per field or per element; the helpers
that format an error run only once something is already wrong, and only then is the path
(`readings[3].value`) computed, the list index found by identity in the list.

Type rules (those of the hand-written decoder): `int` means `type(x) is int`, so a JSON `true` is
not an integer; a float field accepts an integer and stores it as a float (free when the value is
already a float: the conversion sits behind the failed `is float` test); unknown keys are ignored;
a field without a default must be present, even when it may be null (`x: int | None`).

Instances are made the way the dataclass's own `__init__` would make them, minus the call: for a
plain dataclass (generated `__init__`, no `__post_init__`, not frozen, `object.__new__`) the code
does `object.__new__(cls)` and one attribute store per field, which is about 50 ns cheaper per
instance than calling the class (10% of the Telemetry decode); any other dataclass is called with
its init fields, and a TypeError or ValueError from its `__post_init__` is a DecodeError at that
path.

A dataclass that contains itself (`children: list[Node]`) gets a function of its own, called for
each nested instance; an error raised there carries its path relative to that instance, and the
caller prefixes its own.
"""

from __future__ import annotations

import inspect
import sys
import types
import typing
from collections.abc import Callable
from typing import Any, TypeVar, cast

import orjson

from .errors import ConfigError, DecodeError
from .shapes import (
    Anything,
    DictOf,
    ListOf,
    Nullable,
    Scalar,
    Shape,
    Struct,
    is_dataclass_type,
    struct_of,
    type_name,
)

T = TypeVar("T")

_EXPECTED = {str: "a string", int: "an integer", float: "a number", bool: "a boolean"}


class Undecoded:
    """What `message_type_for` returns for a handler that takes the raw `str | bytes`.

    The caller then decodes nothing, as with `--decode none`.
    """


# -- errors, raised by the generated code ----------------------------------------------------

class _ShapeError(DecodeError):
    """A DecodeError that knows where: the path inside the document and what was wrong there."""

    def __init__(self, path: str, reason: str) -> None:
        super().__init__(f"{path or 'the document'}: {reason}")
        self.path = path
        self.reason = reason

    def __reduce__(self) -> tuple[type[_ShapeError], tuple[str, str]]:
        return _ShapeError, (self.path, self.reason)  # picklable, though it has two arguments

    def under(self, prefix: str) -> _ShapeError:
        """The same error seen from `prefix`, the path of the instance it was raised in."""
        if not self.path:
            return _ShapeError(prefix, self.reason)
        joiner = "" if self.path.startswith("[") or not prefix else "."
        return _ShapeError(prefix + joiner + self.path, self.reason)


def _got(value: object) -> str:
    return "null" if value is None else type(value).__name__


def _wrong(path: str, expected: str, value: object) -> _ShapeError:
    return _ShapeError(path, f"expected {expected}, got {_got(value)}")


def _missing(path: str, exc: KeyError) -> _ShapeError:
    return _ShapeError(path, f"missing required field {exc.args[0]!r}")


def _index(items: list[object], item: object) -> int:
    """Where `item` is in `items`: the first element that failed, so the first that is it."""
    for i, candidate in enumerate(items):
        if candidate is item:
            return i
    return -1  # pragma: no cover - the generated code only asks about an element of `items`


def _floats_in_place(items: list[object], path: str, optional: bool) -> None:
    """Turn the integers of a list[float] into floats, or raise naming the first non-number."""
    for i, value in enumerate(items):
        kind = type(value)
        if kind is int:
            items[i] = float(cast(int, value))
        elif kind is not float and not (optional and value is None):
            raise _wrong(f"{path}[{i}]", "a number", value)


# -- code generation --------------------------------------------------------------------------

class _Writer:
    """Source lines at an indent, fresh local names, and the constants the code refers to."""

    def __init__(self) -> None:
        self.lines: list[str] = []
        self.indent = 1
        self.count = 0
        self.namespace: dict[str, Any] = {
            "_new": object.__new__, "_wrong": _wrong, "_missing": _missing, "_index": _index,
            "_floats_in_place": _floats_in_place, "_ShapeError": _ShapeError,
            "DecodeError": DecodeError, "JSONDecodeError": orjson.JSONDecodeError,
            "loads": orjson.loads,
        }
        self.constants: dict[int, str] = {}
        self.functions: dict[type, str] = {}  # struct class -> its own function's name
        self.pending: list[Struct] = []  # structs whose functions are still to write
        self.inlining: list[type] = []

    def line(self, text: str) -> None:
        self.lines.append("    " * self.indent + text)

    def local(self) -> str:
        self.count += 1
        return f"v{self.count}"

    def constant(self, value: object, hint: str) -> str:
        """A global name for `value` in the generated code (a class, a default, a factory)."""
        name = self.constants.get(id(value))
        if name is None:
            name = self.constants[id(value)] = f"_{hint}{len(self.constants)}"
            self.namespace[name] = value
        return name


class _Path:
    """A path in the document as the source of an expression, evaluated only to report errors."""

    def __init__(self, parts: tuple[str, ...] = ()) -> None:
        self.parts = parts  # literal text, or "{expression}" evaluated in an f-string

    def field(self, name: str) -> _Path:
        return _Path((*self.parts, f".{name}" if self.parts else name))

    def item(self, expression: str) -> _Path:
        return _Path((*self.parts, "[{" + expression + "}]"))

    def source(self) -> str:
        text = "".join(self.parts)
        return f"f{text!r}" if "{" in text else repr(text)


def _emit(w: _Writer, shape: Shape, var: str, path: _Path) -> None:
    """Lines that leave in `var` the decoded value of the JSON value in `var`, or raise."""
    if isinstance(shape, Anything):
        return
    if isinstance(shape, Scalar):
        kind = shape.kind.__name__
        w.line(f"if type({var}) is not {kind}:")
        if shape.kind is float:
            w.line(f"    if type({var}) is int:")
            w.line(f"        {var} = float({var})")
            w.line("    else:")
            w.line(f"        raise _wrong({path.source()}, 'a number', {var})")
        else:
            w.line(f"    raise _wrong({path.source()}, {_EXPECTED[shape.kind]!r}, {var})")
    elif isinstance(shape, Nullable):
        w.line(f"if {var} is not None:")
        w.indent += 1
        _emit(w, shape.inner, var, path)
        w.indent -= 1
    elif isinstance(shape, ListOf):
        _emit_list(w, shape, var, path)
    elif isinstance(shape, DictOf):
        _emit_dict(w, shape, var, path)
    else:
        _emit_struct(w, shape, var, path)


def _converts(shape: Shape) -> bool:
    """Whether decoding can replace the value (a struct, or a float that was an int)."""
    if isinstance(shape, Scalar):
        return shape.kind is float
    if isinstance(shape, Nullable):
        return _converts(shape.inner)
    if isinstance(shape, ListOf):
        return _converts(shape.item)
    if isinstance(shape, DictOf):
        return _converts(shape.value)
    return isinstance(shape, Struct)


def _emit_list(w: _Writer, shape: ListOf, var: str, path: _Path) -> None:
    w.line(f"if type({var}) is not list:")
    w.line(f"    raise _wrong({path.source()}, 'a list', {var})")
    item = shape.item
    if isinstance(item, Anything):
        return
    element = w.local()
    float_items = item if isinstance(item, Scalar) else getattr(item, "inner", None)
    if isinstance(float_items, Scalar) and float_items.kind is float:
        # Check only; the rare integer element is converted in place by a helper.
        test = f"type({element}) is not float"
        if isinstance(item, Nullable):
            test += f" and {element} is not None"
        w.line(f"for {element} in {var}:")
        w.line(f"    if {test}:")
        w.line(f"        _floats_in_place({var}, {path.source()}, "
               f"{isinstance(item, Nullable)})")
        w.line("        break")
        return
    if not _converts(item):  # check the elements, keep the list
        w.line(f"for {element} in {var}:")
        w.indent += 1
        _emit(w, item, element, path.item(f"_index({var}, {element})"))
        w.indent -= 1
        return
    out, append = w.local(), w.local()
    w.line(f"{out} = []")
    w.line(f"{append} = {out}.append")
    w.line(f"for {element} in {var}:")
    w.indent += 1
    _emit(w, item, element, path.item(f"_index({var}, {element})"))
    w.line(f"{append}({element})")
    w.indent -= 1
    w.line(f"{var} = {out}")


def _emit_dict(w: _Writer, shape: DictOf, var: str, path: _Path) -> None:
    w.line(f"if type({var}) is not dict:")
    w.line(f"    raise _wrong({path.source()}, 'an object', {var})")
    if isinstance(shape.value, Anything):
        return
    key, value = w.local(), w.local()
    w.line(f"for {key}, {value} in {var}.items():")
    w.indent += 1
    _emit(w, shape.value, value, path.item(f"{key}!r"))
    if _converts(shape.value):
        w.line(f"{var}[{key}] = {value}")  # same keys: allowed while iterating
    w.indent -= 1


def _emit_struct(w: _Writer, struct: Struct, var: str, path: _Path) -> None:
    if struct.cls in w.inlining:  # it contains itself: call its own function
        function = w.functions.get(struct.cls)
        if function is None:
            function = w.functions[struct.cls] = f"_decode_{len(w.functions)}"
            w.pending.append(struct)
        w.line("try:")
        w.line(f"    {var} = {function}({var})")
        w.line("except _ShapeError as exc:")
        w.line(f"    raise exc.under({path.source()}) from None")
        return
    w.inlining.append(struct.cls)
    values = {f.name: w.local() for f in struct.fields}
    required = [f for f in struct.fields if f.required]
    if required:  # indexing anything but a dict with a str raises TypeError
        w.line("try:")
        for f in required:
            w.line(f"    {values[f.name]} = {var}[{f.name!r}]")
        w.line("except KeyError as exc:")
        w.line(f"    raise _missing({path.source()}, exc) from None")
        w.line("except TypeError:")
        w.line(f"    raise _wrong({path.source()}, 'an object', {var}) from None")
    else:
        w.line(f"if type({var}) is not dict:")
        w.line(f"    raise _wrong({path.source()}, 'an object', {var})")
    for f in struct.fields:
        value = values[f.name]
        if f.required:
            _emit(w, f.shape, value, path.field(f.name))
            continue
        if not f.init and not struct.plain:
            continue  # the class's __init__ sets it
        default = (f"{w.constant(f.factory, 'factory')}()" if f.factory is not None
                   else w.constant(f.default, "default"))
        if not f.init:
            w.line(f"{value} = {default}")  # as __init__ would, whatever the document says
            continue
        w.line(f"if {f.name!r} in {var}:")
        w.line(f"    {value} = {var}[{f.name!r}]")
        w.indent += 1
        _emit(w, f.shape, value, path.field(f.name))
        w.indent -= 1
        w.line("else:")
        w.line(f"    {value} = {default}")
    name = struct.cls.__name__
    cls = w.constant(struct.cls, name if name.isidentifier() else "cls")
    if struct.plain:
        w.line(f"{var} = _new({cls})")  # the JSON object is no longer needed
        for f in struct.fields:
            w.line(f"{var}.{f.name} = {values[f.name]}")
    else:
        args = [values[f.name] for f in struct.fields if f.init and not f.kw_only]
        args += [f"{f.name}={values[f.name]}" for f in struct.fields if f.init and f.kw_only]
        w.line("try:")
        w.line(f"    {var} = {cls}({', '.join(args)})")
        w.line("except (TypeError, ValueError) as exc:")  # __post_init__ validating the values
        w.line(f"    raise _ShapeError({path.source()}, f'{{exc}}') from None")
    w.inlining.pop()


def _source(root: Struct) -> tuple[str, dict[str, Any]]:
    w = _Writer()
    w.line("try:")
    w.line("    doc = loads(data)")
    w.line("except JSONDecodeError as exc:")
    w.line("    raise DecodeError(f'invalid JSON: {exc}') from None")
    _emit_struct(w, root, "doc", _Path())
    w.line("return doc")
    body = w.lines
    source = ["def decode(data):", *body]
    while w.pending:  # each struct that contains itself, as a function of its own
        struct = w.pending.pop()
        w.lines = []
        w.inlining = []
        _emit_struct(w, struct, "doc", _Path())
        w.line("return doc")
        source += ["", f"def {w.functions[struct.cls]}(doc):", *w.lines]
    if w.functions:  # recursion in the type: a deep enough document exhausts the stack
        source = ["def decode(data):", "    try:", "        return _decode(data)",
                  "    except RecursionError:",
                  "        raise DecodeError('the document is nested too deeply') from None",
                  "", "def _decode(data):", *body, *source[len(body) + 1:]]
    return "\n".join(source) + "\n", w.namespace


def build_decoder(cls: type[T]) -> Callable[[str | bytes], T]:
    """A function that decodes one JSON document into a `cls` instance, or raises DecodeError.

    Call once, at start-up: it resolves the annotations, checks that every field's type is one
    it can decode (ConfigError otherwise, naming the field) and compiles the decoder.
    """
    if not is_dataclass_type(cls):
        raise ConfigError(f"a message type must be a dataclass, not {type_name(cls)}")
    source, namespace = _source(struct_of(cls))
    filename = f"<webscale decoder for {cls.__module__}.{cls.__qualname__}>"
    exec(compile(source, filename, "exec"), namespace)  # our own generated source
    decode = namespace["decode"]
    decode.__doc__ = f"Decode one JSON document into a {cls.__qualname__}.\n\n{source}"
    return cast(Callable[[str | bytes], T], decode)


# -- the handler's message type ---------------------------------------------------------------

def message_type_for(handler: Callable[..., object] | None,
                     override: type | None) -> type | None:
    """The dataclass messages decode into for `handler`, `Undecoded`, or None for neither.

    `override` (`--message-type module:Class`) wins; otherwise the annotation of the handler's
    second parameter (`def on_message(handle, msg: MyReading)`). `str`, `bytes` or `str | bytes`
    there mean the handler wants the raw message: `Undecoded`. None when there is no override
    and no annotation (or `Any`/`object`, or no handler at all): the caller decodes into the
    Telemetry example.
    """
    if override is not None:
        if not is_dataclass_type(override):
            raise ConfigError(f"--message-type: {type_name(override)} is not a dataclass")
        return override
    hint = None if handler is None else _message_annotation(handler)
    if hint is None or hint is Any or hint is object:
        return None
    if _is_raw(hint):
        return Undecoded
    if is_dataclass_type(hint):
        return cast(type, hint)
    raise ConfigError(f"handler {_qualname(handler)}: its message parameter is annotated "
                      f"{type_name(hint)}; expected a dataclass, str, bytes or str | bytes (or "
                      "pass --message-type module:Class)")


def _is_raw(hint: object) -> bool:
    """str, bytes, or a union of those two."""
    if hint is str or hint is bytes:
        return True
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        return all(arg is str or arg is bytes for arg in typing.get_args(hint))
    return False


def _qualname(handler: object) -> str:
    return str(getattr(handler, "__qualname__", type(handler).__qualname__))


def _message_annotation(handler: Callable[..., object]) -> object:
    """The second parameter's annotation, a string one evaluated; None when there is none."""
    try:
        params = list(inspect.signature(handler).parameters.values())
    except (TypeError, ValueError):  # a builtin, or a callable inspect cannot read
        return None
    if len(params) < 2 or params[1].annotation is inspect.Parameter.empty:
        return None
    hint = params[1].annotation
    if not isinstance(hint, str):
        return hint
    # Only this one is evaluated: the first parameter's type is often imported for type checking
    # only, which typing.get_type_hints(handler) would trip on.
    function = inspect.unwrap(getattr(handler, "func", handler))  # functools.partial
    function = getattr(function, "__func__", function)  # a bound method
    if not hasattr(function, "__globals__"):  # an instance with __call__
        function = type(handler).__call__
    namespace = getattr(function, "__globals__", None) or vars(
        sys.modules.get(getattr(function, "__module__", ""), types.ModuleType("")))
    try:
        return eval(hint, namespace)  # the user's own annotation
    except Exception as exc:
        raise ConfigError(f"handler {_qualname(handler)}: cannot resolve its message "
                          f"annotation {hint!r}: {exc} (import the type at run time, not "
                          "under TYPE_CHECKING, or pass --message-type module:Class)") from None
