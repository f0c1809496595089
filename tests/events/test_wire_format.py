"""The wire format does not move: events built by every helper (and the constructor) encode to the bytes
recorded in tests/fixtures/wire_v1.json before the payload models replaced the rule tables, and decode
(full and trusted paths) back to the same bytes."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from bus import TradeEvent
from bus.core.wire import decode_entry

CASES: list[dict[str, Any]] = json.loads((Path(__file__).parent / "fixtures" / "wire_v1.json").read_text())["cases"]


def _build(case: dict[str, Any]) -> TradeEvent:
    kwargs = dict(case["kwargs"])
    if case["helper"] is None:
        return TradeEvent(**kwargs)
    return getattr(TradeEvent, case["helper"])(**kwargs)  # type: ignore[no-any-return]


def _case_id(case: dict[str, Any]) -> str:
    return f"{case['helper'] or 'ctor'}-{case['kwargs']['event_id']}"


def test_the_fixture_covers_every_helper_and_type() -> None:
    helpers = {c["helper"] for c in CASES} - {None}
    assert helpers == {name for name in dir(TradeEvent) if name.startswith("create_")}
    assert len({json.loads(c["encoded"])["event_type"] for c in CASES}) == 18


@pytest.mark.parametrize("case", CASES, ids=[_case_id(c) for c in CASES])
def test_encoding_is_byte_identical_to_the_recorded_one(case: dict[str, Any]) -> None:
    recorded = case["encoded"].encode()
    assert _build(case).encode() == recorded
    assert TradeEvent.from_json(recorded).encode() == recorded
    trusted = decode_entry({b"type": b"", b"event": recorded})
    assert trusted is not None and trusted.encode() == recorded
