"""Hostile event input gets InvalidEventError naming the field, before any I/O."""

from __future__ import annotations

import json
import types
import typing
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from pydantic import AfterValidator, BaseModel

from shared import events
from shared.events import (
    ControlRequest,
    DispatchRequest,
    EnqueueRequest,
    InvalidEventError,
    MigrateEvent,
    SweepRequest,
    parse_event,
    storable_text,
)

EVENTS = Path(__file__).resolve().parents[2] / "events"
MODEL_OF: dict[str, type[BaseModel]] = {
    "dispatcher": DispatchRequest,
    "sweeper": SweepRequest,
    "enqueue": EnqueueRequest,
    "migrate": MigrateEvent,
    "control": ControlRequest,
}
# Optional string fields the samples leave out, so every string field is exercised.
OPTIONAL_STRINGS: dict[type[BaseModel], dict[str, Any]] = {
    DispatchRequest: {"schedule": "manual"},
    EnqueueRequest: {"sender_default_region": "GB"},
}


def event_models() -> list[type[BaseModel]]:
    return [
        value
        for value in vars(events).values()
        if isinstance(value, type) and issubclass(value, BaseModel) and value.__module__ == events.__name__
    ]


def nested_models(annotation: Any) -> Iterator[type[BaseModel]]:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        yield annotation
    for arg in typing.get_args(annotation):
        yield from nested_models(arg)


def is_plain_str(annotation: Any) -> bool:
    if annotation is str:
        return True
    if isinstance(annotation, types.UnionType) or typing.get_origin(annotation) is typing.Union:
        return any(is_plain_str(a) for a in typing.get_args(annotation))
    return False


def test_every_string_field_of_every_event_model_is_storable_text() -> None:
    checked = []
    for model in event_models():
        for name, info in model.model_fields.items():
            if not is_plain_str(info.annotation) and not any(
                is_plain_str(a) for a in typing.get_args(info.annotation)
            ):
                continue
            validators = [m.func for m in info.metadata if isinstance(m, AfterValidator)]
            args = typing.get_args(info.annotation)
            for arg in args:  # Optional[Annotated[...]] keeps its metadata inside the union
                validators += [
                    m.func for m in getattr(arg, "__metadata__", ()) if isinstance(m, AfterValidator)
                ]
            assert storable_text in validators, f"{model.__name__}.{name} is a bare str; use events.Text"
            checked.append(f"{model.__name__}.{name}")
    assert len(checked) >= 8, checked


def sample_events() -> list[tuple[str, type[BaseModel], dict[str, Any]]]:
    samples = []
    for path in sorted(EVENTS.glob("*.json")):
        prefix = path.stem.split("-")[0]
        if prefix in MODEL_OF:
            model = MODEL_OF[prefix]
            event = {**json.loads(path.read_text()), **OPTIONAL_STRINGS.get(model, {})}
            contacts = event.get("contacts")
            if contacts:
                event["contacts"] = [{"display_name": "someone", **c} for c in contacts]
            samples.append((path.name, model, event))
    return samples


def string_paths(value: Any, path: tuple[str | int, ...] = ()) -> Iterator[tuple[str | int, ...]]:
    if isinstance(value, str):
        yield path
    elif isinstance(value, dict):
        for key, item in value.items():
            yield from string_paths(item, (*path, key))
    elif isinstance(value, list):
        for index, item in enumerate(value):
            yield from string_paths(item, (*path, index))


def with_value(event: Any, path: tuple[str | int, ...], make: Any) -> Any:
    if not path:
        return make(event)
    copy: Any = dict(event) if isinstance(event, dict) else list(event)
    copy[path[0]] = with_value(event[path[0]], path[1:], make)
    return copy


CASES = [
    (name, model, event, path)
    for name, model, event in sample_events()
    for path in string_paths(event)
    if path not in {("source",), ("command",), ("RequestType",)}  # Literals: refused already
    # CloudFormation's ServiceToken and resource properties are ignored or passed through
    # untouched, never stored.
    and path[0] not in {"ServiceToken", "ResourceProperties", "OldResourceProperties"}
]


@pytest.mark.parametrize(
    ("model", "event", "path"),
    [(model, event, path) for _, model, event, path in CASES],
    ids=[f"{name}:{'.'.join(map(str, path))}" for name, _, _, path in CASES],
)
def test_a_nul_byte_in_any_string_is_an_invalid_event_naming_the_field(
    model: type[BaseModel], event: dict[str, Any], path: tuple[str | int, ...]
) -> None:
    parse_event(model, event)  # the sample itself is valid
    hostile = with_value(event, path, lambda s: s[:1] + "\x00" + s[1:])
    with pytest.raises(InvalidEventError) as caught:
        parse_event(model, hostile)
    # Ids, enums and patterned fields refuse it for their own reason; free text says NUL.
    message = str(caught.value)
    assert "(1 problems)" in message
    assert f"{'.'.join(map(str, path))}: " in message


def test_the_nul_error_says_what_is_wrong_and_where() -> None:
    event = json.loads((EVENTS / "enqueue-campaign.json").read_text())
    event["contacts"][2] = {"address": "1555\x001230003"}
    with pytest.raises(InvalidEventError) as caught:
        parse_event(EnqueueRequest, event)
    assert "contacts.2.address: Value error, contains a NUL character at position 4" in str(caught.value)


@pytest.mark.parametrize("field", ["campaign_name", "sender_provider_id"])
def test_a_lone_surrogate_is_an_invalid_event_naming_the_field(field: str) -> None:
    event = json.loads((EVENTS / "enqueue-campaign.json").read_text())
    with pytest.raises(InvalidEventError, match=field):
        parse_event(EnqueueRequest, {**event, field: "caf\udce9"})


def test_the_sender_region_must_be_an_iso_code() -> None:
    event = json.loads((EVENTS / "enqueue-campaign.json").read_text())
    assert parse_event(EnqueueRequest, {**event, "sender_default_region": "gb"}).sender_default_region == "GB"
    with pytest.raises(InvalidEventError, match=r"sender_default_region: .*the United Kingdom is \"GB\""):
        parse_event(EnqueueRequest, {**event, "sender_default_region": "UK"})
