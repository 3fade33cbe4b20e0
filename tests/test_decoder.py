"""The generated decoder: every supported shape, every wrong document, and the handler's type.

This module uses `from __future__ import annotations`, so every class here has string
annotations that build_decoder must resolve; `Later` is also named before it is defined.
"""

from __future__ import annotations

import dataclasses
import pickle
from dataclasses import InitVar, dataclass, field
from typing import TYPE_CHECKING, Any, Literal, Optional

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bench_client.payload import MessageTemplate, notes_document
from payloads import telemetry_json
from webscale.decoder import Undecoded, build_decoder, message_type_for
from webscale.errors import ConfigError, DecodeError
from webscale.examples.telemetry import Reading, Telemetry, decode_telemetry

if TYPE_CHECKING:
    from webscale.dispatch import ConnectionHandle


@dataclass(slots=True)
class Point:
    x: float
    y: float


@dataclass(slots=True)
class Shape:
    name: str
    points: list[Point]
    origin: Point
    later: Later | None
    labels: dict[str, int]
    weights: dict[str, float]
    anchors: dict[str, Point]
    samples: list[float | None]
    grid: list[list[int]]
    extra: Any
    blob: object
    note: Optional[str] = None  # noqa: UP045 - the typing spelling must work too
    count: int = 3
    tags: list[str] = field(default_factory=list)
    flags: dict[str, bool] = field(default_factory=lambda: {"new": True})


@dataclass
class Later:  # not slots, named above before it exists
    level: int


def shape_doc(**changes: object) -> dict[str, Any]:
    doc: dict[str, Any] = {
        "name": "tri", "points": [{"x": 0.0, "y": 1.5}, {"x": 2, "y": 3.0}],
        "origin": {"x": 0.5, "y": 0.5}, "later": {"level": 2}, "labels": {"a": 1},
        "weights": {"w": 2, "v": 0.5}, "anchors": {"top": {"x": 1.0, "y": 1.0}},
        "samples": [1.0, None, 2], "grid": [[1, 2], []], "extra": {"any": ["thing"]},
        "blob": 7, "unknown": {"ignored": True},
    }
    doc.update(changes)
    return doc


shape_decoder = build_decoder(Shape)


def test_decodes_nested_lists_dicts_optionals_and_defaults() -> None:
    shape = shape_decoder(orjson.dumps(shape_doc()))
    assert shape == Shape(
        name="tri", points=[Point(0.0, 1.5), Point(2.0, 3.0)], origin=Point(0.5, 0.5),
        later=Later(2), labels={"a": 1}, weights={"w": 2.0, "v": 0.5},
        anchors={"top": Point(1.0, 1.0)}, samples=[1.0, None, 2.0], grid=[[1, 2], []],
        extra={"any": ["thing"]}, blob=7)
    assert (shape.note, shape.count, shape.tags, shape.flags) == (None, 3, [], {"new": True})
    assert type(shape.points[1].x) is float and type(shape.weights["w"]) is float
    assert type(shape.samples[2]) is float


def test_defaults_are_replaced_when_present_and_factories_called_each_time() -> None:
    shape = shape_decoder(orjson.dumps(shape_doc(note="hi", count=9, tags=["t"], later=None)))
    assert (shape.note, shape.count, shape.tags, shape.later) == ("hi", 9, ["t"], None)
    first, second = shape_decoder(orjson.dumps(shape_doc())), shape_decoder(
        orjson.dumps(shape_doc()))
    assert first.flags == second.flags and first.flags is not second.flags
    assert first.tags is not second.tags


def test_accepts_str_and_bytes_and_ignores_unknown_keys() -> None:
    text = orjson.dumps(shape_doc(surprise=[1, 2, 3])).decode()
    assert shape_decoder(text) == shape_decoder(text.encode())


def test_an_int_is_a_float_but_a_bool_is_not_an_int() -> None:
    point = build_decoder(Point)('{"x": 1, "y": -2}')
    assert point == Point(1.0, -2.0) and type(point.x) is float
    with pytest.raises(DecodeError, match=r"^labels\['a'\]: expected an integer, got bool$"):
        shape_decoder(orjson.dumps(shape_doc(labels={"a": True})))
    with pytest.raises(DecodeError, match=r"^x: expected a number, got bool$"):
        build_decoder(Point)('{"x": true, "y": 1.0}')


@pytest.mark.parametrize("changes, message", [
    ({"name": 5}, "name: expected a string, got int"),
    ({"points": {}}, "points: expected a list, got dict"),
    ({"points": [{"x": 1.0, "y": 1.0}, 3]}, "points[1]: expected an object, got int"),
    ({"points": [{"x": 1.0, "y": 1.0}, {"x": 1.0}]}, "points[1]: missing required field 'y'"),
    ({"points": [{"x": 1.0, "y": 1.0}, {"x": "1", "y": 1.0}]},
     "points[1].x: expected a number, got str"),
    ({"origin": None}, "origin: expected an object, got null"),
    ({"origin": [0.5, 0.5]}, "origin: expected an object, got list"),
    ({"later": {"level": 2.5}}, "later.level: expected an integer, got float"),
    ({"labels": ["a"]}, "labels: expected an object, got list"),
    ({"labels": {"a": 1, "b": "2"}}, "labels['b']: expected an integer, got str"),
    ({"weights": {"w": None}}, "weights['w']: expected a number, got null"),
    ({"anchors": {"top": {"x": 1.0, "y": []}}}, "anchors['top'].y: expected a number, got list"),
    ({"samples": [1.0, None, "2"]}, "samples[2]: expected a number, got str"),
    ({"grid": [[1], [2, 3.5]]}, "grid[1][1]: expected an integer, got float"),
    ({"grid": [[1], 2]}, "grid[1]: expected a list, got int"),
    ({"note": 1}, "note: expected a string, got int"),
    ({"tags": ["a", None]}, "tags[1]: expected a string, got null"),
    ({"flags": {"x": 0}}, "flags['x']: expected a boolean, got int"),
])
def test_each_wrong_shape_names_its_path(changes: dict[str, object], message: str) -> None:
    with pytest.raises(DecodeError) as caught:
        shape_decoder(orjson.dumps(shape_doc(**changes)))
    assert str(caught.value) == message


def test_the_index_is_that_of_the_first_bad_element_even_among_equal_ones() -> None:
    same = {"x": 1.0, "y": 1.0}
    points = [same, dict(same), {"x": 1.0}, {"x": 1.0}]
    with pytest.raises(DecodeError, match=r"^points\[2\]: missing required field 'y'$"):
        shape_decoder(orjson.dumps(shape_doc(points=points)))
    with pytest.raises(DecodeError, match=r"^tags\[1\]: expected a string, got int$"):
        shape_decoder(orjson.dumps(shape_doc(tags=["a", 1, 1])))


def test_a_decode_error_survives_pickling() -> None:
    with pytest.raises(DecodeError) as caught:
        shape_decoder(orjson.dumps(shape_doc(name=1)))
    again = pickle.loads(pickle.dumps(caught.value))
    assert isinstance(again, DecodeError) and str(again) == str(caught.value)


def test_a_missing_required_field_even_when_it_may_be_null() -> None:
    doc = shape_doc()
    del doc["later"]
    with pytest.raises(DecodeError, match=r"^the document: missing required field 'later'$"):
        shape_decoder(orjson.dumps(doc))


@pytest.mark.parametrize("payload, message", [
    (b"not json", "invalid JSON"),
    (b"", "invalid JSON"),
    (b'{"x": 1.0,', "invalid JSON"),
    (b"[1, 2]", "the document: expected an object, got list"),
    (b'"text"', "the document: expected an object, got str"),
    (b"null", "the document: expected an object, got null"),
    (b"3", "the document: expected an object, got int"),
])
def test_invalid_json_and_a_top_level_non_object(payload: bytes, message: str) -> None:
    with pytest.raises(DecodeError, match=f"^{message}"):
        build_decoder(Point)(payload)


def test_a_list_of_non_objects() -> None:
    with pytest.raises(DecodeError, match=r"^points\[0\]: expected an object, got str$"):
        shape_decoder(orjson.dumps(shape_doc(points=["a", "b"])))
    with pytest.raises(DecodeError, match=r"^points\[0\]: expected an object, got list$"):
        shape_decoder(orjson.dumps(shape_doc(points=[[0.0, 1.0]])))


@dataclass
class Node:
    name: str
    children: list[Node] = field(default_factory=list)
    parent: Node | None = None


def test_a_dataclass_that_contains_itself() -> None:
    decode = build_decoder(Node)
    tree = decode('{"name": "a", "children": [{"name": "b", "children": [{"name": "c"}]},'
                  ' {"name": "d", "parent": {"name": "p"}}]}')
    assert tree == Node("a", [Node("b", [Node("c")]), Node("d", parent=Node("p"))])
    with pytest.raises(DecodeError, match=r"^children\[1\]\.children\[0\]\.name: expected a "
                                          r"string, got int$"):
        decode('{"name": "a", "children": [{"name": "b"}, {"name": "d", "children": '
               '[{"name": 1}]}]}')
    with pytest.raises(DecodeError, match=r"^children\[0\]\.parent: expected an object"):
        decode('{"name": "a", "children": [{"name": "b", "parent": 5}]}')
    deep = '{"name": "x", "parent": ' * 1020 + '{"name": "x"}' + "}" * 1020  # orjson: 1024
    with pytest.raises(DecodeError, match="nested too deeply"):
        decode(deep)


@dataclass(slots=True)
class Folder:
    files: list[File]


@dataclass(slots=True)
class File:
    name: str
    inside: Folder | None = None


def test_two_dataclasses_that_contain_each_other() -> None:
    decode = build_decoder(Folder)
    folder = decode('{"files": [{"name": "a", "inside": {"files": [{"name": "b"}]}}]}')
    assert folder == Folder([File("a", Folder([File("b")]))])
    with pytest.raises(DecodeError, match=r"^files\[0\]\.inside\.files\[1\]: missing "):
        decode('{"files": [{"name": "a", "inside": {"files": [{"name": "b"}, {}]}}]}')


@dataclass(frozen=True, slots=True)
class Frozen:
    a: int
    b: str = field(default="b", kw_only=True)
    c: list[int] = field(default_factory=list, init=False)


@dataclass
class Validated:
    low: int
    high: int
    total: int = field(init=False, default=0)

    def __post_init__(self) -> None:
        if self.low > self.high:
            raise ValueError("low is above high")
        self.total = self.low + self.high


def test_frozen_kw_only_init_false_and_post_init_go_through_the_class() -> None:
    assert build_decoder(Frozen)('{"b": "x", "a": 1, "c": [5]}') == Frozen(1, b="x")
    decode = build_decoder(Validated)
    assert decode('{"low": 1, "high": 2, "total": 99}').total == 3
    with pytest.raises(DecodeError, match=r"^the document: low is above high$"):
        decode('{"low": 3, "high": 2}')


@dataclass
class WithInitVar:
    a: int
    scale: InitVar[int]


@dataclass
class NotADataclass:
    a: int


def _unsupported(annotation: object) -> type:
    return dataclasses.make_dataclass("Bad", [("good", int), ("field_x", annotation)])


@pytest.mark.parametrize("annotation, complaint", [
    (set[int], "unsupported annotation set"),
    (tuple[int, ...], "unsupported annotation tuple"),
    (int | str, "a union can only be T | None"),
    (Optional[int | str], "a union can only be T | None"),  # noqa: UP045
    (dict[int, str], "dict keys must be str"),
    (list[set[str]], r"Bad.field_x\[\]: unsupported annotation set"),
    (Literal["a"], "unsupported annotation Literal"),
    (bytes, "unsupported annotation bytes"),
    (type(None), "unsupported annotation NoneType"),
])
def test_unsupported_annotations_fail_at_build_time(annotation: object, complaint: str) -> None:
    with pytest.raises(ConfigError, match=complaint) as caught:
        build_decoder(_unsupported(annotation))
    assert "Bad.field_x" in str(caught.value)


def test_a_nested_non_dataclass_class_or_init_var_fails_at_build_time() -> None:
    plain = type("Plain", (), {})
    with pytest.raises(ConfigError, match=r"Bad.field_x: unsupported annotation Plain"):
        build_decoder(_unsupported(plain))
    with pytest.raises(ConfigError, match="InitVar"):
        build_decoder(WithInitVar)
    with pytest.raises(ConfigError, match="must be a dataclass"):
        build_decoder(dict)


def test_an_unresolvable_string_annotation_fails_at_build_time() -> None:
    ghost = dataclasses.make_dataclass("Ghost", [("a", "Missing")])
    with pytest.raises(ConfigError, match=r"cannot resolve the annotations of Ghost.*Missing"):
        build_decoder(ghost)


# -- the Telemetry example: the generic decoder against the hand-written one -------------------

telemetry_decoder = build_decoder(Telemetry)


def telemetry_documents() -> list[bytes]:
    template = MessageTemplate(10240)
    docs = [bytes(template.render(i, i * 3, 1.7e9 + i / 7)) for i in range(3)]
    docs += [telemetry_json(7, 8).encode(), notes_document(10240, 5), notes_document(4096, 6)]
    return docs


@pytest.mark.parametrize("document", telemetry_documents())
def test_equal_to_decode_telemetry_on_the_telemetry_documents(document: bytes) -> None:
    generic = telemetry_decoder(document)
    assert generic == decode_telemetry(document)
    assert isinstance(generic, Telemetry) and isinstance(generic.readings[0], Reading)
    assert len(generic.readings) >= 10


json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-5, 5) | st.floats(-2, 2) | st.text(max_size=3),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=3), inner,
                                                                max_size=3),
    max_leaves=6)


@settings(max_examples=300, deadline=None)
@given(st.sampled_from(["client_id", "seq", "sent_at", "readings", "sensor", "value", "unit",
                        "ok", "tags", "tag", "reading"]), json_values)
def test_accepts_and_rejects_what_decode_telemetry_does(place: str, value: object) -> None:
    reading = {"sensor": "s", "value": 1.5, "unit": "u", "ok": True, "tags": ["t"]}
    doc: dict[str, Any] = {"client_id": 1, "seq": 2, "sent_at": 3.0, "readings": [reading]}
    if place in doc:
        doc[place] = value
    elif place in reading:
        reading[place] = value
    elif place == "tag":
        reading["tags"] = ["t", value]
    else:
        doc["readings"] = [reading, value]
    document = orjson.dumps(doc)
    try:
        expected = decode_telemetry(document)
    except DecodeError:
        with pytest.raises(DecodeError):
            telemetry_decoder(document)
        return
    assert telemetry_decoder(document) == expected


# -- the handler's message type -----------------------------------------------------------------

def handler_with_type(handle: ConnectionHandle, message: Point) -> None:
    """`ConnectionHandle` is imported for type checking only: only `message` is resolved."""


def handler_raw(handle: ConnectionHandle, message: str | bytes) -> None: ...


def handler_text(handle: ConnectionHandle, message: str) -> None: ...


def handler_bare(handle, message):  # type: ignore[no-untyped-def]
    ...


def handler_any(handle: ConnectionHandle, message: Any) -> None: ...


def handler_int(handle: ConnectionHandle, message: int) -> None: ...


def handler_ghost(handle: ConnectionHandle, message: Phantom) -> None:  # type: ignore[name-defined]  # noqa: F821
    ...


class CallableHandler:
    def __call__(self, handle: ConnectionHandle, message: Node) -> None: ...


def test_the_message_type_comes_from_the_handler_annotation() -> None:
    assert message_type_for(handler_with_type, None) is Point
    assert message_type_for(CallableHandler(), None) is Node
    assert message_type_for(handler_raw, None) is Undecoded
    assert message_type_for(handler_text, None) is Undecoded
    assert message_type_for(handler_bare, None) is None
    assert message_type_for(handler_any, None) is None
    assert message_type_for(print, None) is None
    assert message_type_for(None, None) is None and message_type_for(None, Point) is Point


def test_the_override_wins_and_must_be_a_dataclass() -> None:
    assert message_type_for(handler_with_type, Shape) is Shape
    assert message_type_for(handler_int, Shape) is Shape
    with pytest.raises(ConfigError, match="--message-type: dict is not a dataclass"):
        message_type_for(handler_with_type, dict)


def test_an_unusable_annotation_is_a_config_error_naming_the_handler() -> None:
    with pytest.raises(ConfigError, match=r"handler_int.*annotated int"):
        message_type_for(handler_int, None)
    with pytest.raises(ConfigError, match=r"handler_ghost.*'Phantom'"):
        message_type_for(handler_ghost, None)
