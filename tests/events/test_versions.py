"""Schema evolution: ``schema_version`` is MAJOR.MINOR. A newer MINOR is read with its unknown envelope
fields kept; another MAJOR is refused with SchemaVersionError, and a worker dead-letters it as such."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

import pytest

from bus import EventValidationError, SchemaVersionError, TradeEvent
from bus.core.keys import Keys
from bus.core.state import get_order
from bus.core.wire import decode_broadcast, decode_entry
from bus.dispatch.deadletters import list_dead_letters
from tests.helpers import wait_for


def _wire(**changes: Any) -> dict[str, Any]:
    event = TradeEvent.create_order_created(
        "XAUUSD", "v1", "BUY", 2000.0, 1.0, event_id="ev-1", timestamp="2026-01-02T03:04:05+00:00"
    )
    return {**event.to_dict(), **changes}


def test_this_version_writes_the_integer_major() -> None:
    assert _wire()["schema_version"] == 1
    assert TradeEvent.from_dict(_wire(schema_version="1.0")).to_dict() == _wire()  # "1.0" is 1


def test_a_newer_minor_is_read_on_every_path_and_keeps_its_fields() -> None:
    newer = _wire(schema_version="1.4", trace_id="t-9", hops=[1, 2])
    raw = json.dumps(newer).encode()
    for event in (
        TradeEvent.from_json(raw),
        TradeEvent(**newer),
        decode_entry({b"type": b"order.created", b"event": raw}),
        decode_broadcast(b'{"log_id":"1-0","prev":"","prev_t":"","bus":"tb",' + raw[1:])[0],
    ):
        assert event is not None
        assert event.schema_version == "1.4" and event.to_dict() == newer
        assert TradeEvent.from_json(event.encode()) == event


@pytest.mark.parametrize("version", [2, "2.0", "3.1", 0, 99])
def test_another_major_is_refused_with_its_own_error(version: Any) -> None:
    with pytest.raises(SchemaVersionError) as err:
        TradeEvent.from_dict(_wire(schema_version=version))
    assert err.value.field == "schema_version" and "major version" in str(err.value)
    assert isinstance(err.value, EventValidationError)
    assert decode_entry({b"event": json.dumps(_wire(schema_version=version)).encode()}) is None


@pytest.mark.parametrize("version", ["1", "1.x", "v1.0", "1.01", 1.5, None, [1]])
def test_a_malformed_version_is_an_ordinary_validation_error(version: Any) -> None:
    with pytest.raises(EventValidationError) as err:
        TradeEvent.from_dict(_wire(schema_version=version))
    assert err.value.field == "schema_version" and not isinstance(err.value, SchemaVersionError)


@pytest.mark.redis
@pytest.mark.celery
def test_a_worker_dead_letters_another_major_and_applies_a_newer_minor(
    settings, redis_client, worker_app, worker
) -> None:
    app = worker_app()
    keys = Keys(settings.key_prefix)
    # stamped now: a worker creates no order from an event older than the state retention (bus.core.state)
    now = datetime.now(UTC).isoformat()
    older = json.dumps(_wire(schema_version=2, event_id="ev-major", timestamp=now))
    newer = json.dumps(_wire(schema_version="1.7", event_id="ev-minor", trace_id="t-1", timestamp=now))
    with worker():
        for payload in (older, newer):
            app.send_task("tradebus.state.apply", args=[payload], kwargs={"route": "state"}, queue="tradebus.state")
        (dead,) = wait_for(lambda: list_dead_letters(redis_client, keys), what="the dead letter")
        wait_for(lambda: get_order(redis_client, keys, "XAUUSD", "v1"), what="the newer-minor event applied")
    assert dead.reason.startswith("unsupported schema version: schema_version=2: major version 2")
    assert dead.attempts == 1 and dead.event_json == older
