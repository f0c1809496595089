"""The AsyncAPI document: valid against the official AsyncAPI 3.0 JSON Schema, and true to the wire — a real
broadcast, log entry and task message each validate against the message schema the document gives them.

The official schema ships in the AsyncAPI initiative's npm package @asyncapi/specs (schemas/3.0.0.json);
the fixture fetches it once with npm into .cache/ (or reads ASYNCAPI_3_SCHEMA, a path to that file).
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import subprocess
import tarfile
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import redis
from referencing import Registry, Resource
from referencing.jsonschema import DRAFT7

from bus import RedisEventBus, TradeEvent
from bus.config import Settings
from bus.core.keys import Keys
from bus.dispatch.asyncapi import asyncapi_document
from bus.dispatch.dispatcher import Dispatcher
from bus.dispatch.messages import publisher_app
from bus.dispatch.routing import Route, RoutingTable
from tests.helpers import wait_for

SPECS_PACKAGE = "@asyncapi/specs@6.11.1"  # the AsyncAPI initiative's JSON Schemas of its spec versions
CACHE = Path(__file__).resolve().parent.parent / ".cache" / "asyncapi-specs-6.11.1"


def _fetch_official_schema() -> Path | None:
    path = CACHE / "package" / "schemas" / "3.0.0.json"
    if path.exists():
        return path
    npm = shutil.which("npm")
    if npm is None:
        return None
    CACHE.mkdir(parents=True, exist_ok=True)
    subprocess.run([npm, "pack", "--silent", SPECS_PACKAGE], cwd=CACHE, capture_output=True, timeout=180, check=False)
    for tarball in CACHE.glob("*.tgz"):
        with tarfile.open(tarball) as archive:
            archive.extractall(CACHE, filter="data")
    return path if path.exists() else None


@pytest.fixture(scope="module")
def official_schema() -> dict[str, Any]:
    given = os.environ.get("ASYNCAPI_3_SCHEMA")
    path = Path(given) if given else _fetch_official_schema()
    if path is None or not path.exists():
        if os.environ.get("CI"):
            pytest.fail(f"the AsyncAPI 3.0 JSON Schema could not be fetched (npm pack {SPECS_PACKAGE})")
        pytest.skip(f"no AsyncAPI 3.0 JSON Schema: run `npm pack {SPECS_PACKAGE}` or set ASYNCAPI_3_SCHEMA")
    schema: dict[str, Any] = json.loads(path.read_text())
    assert schema["$id"] == "http://asyncapi.com/definitions/3.0.0/asyncapi.json"
    return schema


def _errors(schema: dict[str, Any], doc: dict[str, Any]) -> list[str]:
    return [f"{list(e.absolute_path)}: {e.message[:200]}" for e in jsonschema.Draft7Validator(schema).iter_errors(doc)]


class Document:
    """Validates instances against the schemas at JSON pointers inside an AsyncAPI document."""

    def __init__(self, doc: dict[str, Any]) -> None:
        self.registry: Registry[Any] = Registry().with_resource(
            "urn:asyncapi", Resource.from_contents(doc, default_specification=DRAFT7)
        )

    def errors(self, instance: Any, pointer: str) -> list[str]:
        validator = jsonschema.Draft7Validator({"$ref": f"urn:asyncapi#{pointer}"}, registry=self.registry)
        return [e.message[:200] for e in validator.iter_errors(instance)]


def test_the_document_is_valid_asyncapi_3(official_schema: dict[str, Any]) -> None:
    doc = asyncapi_document(RoutingTable.default(), key_prefix="tb", bus_url="redis://u:secret@bus.example:6380/2")
    assert _errors(official_schema, doc) == []
    assert doc["servers"]["bus"] == {
        "host": "bus.example:6380",
        "protocol": "redis",
        "description": "The bus's Redis: channels and logs.",
        "pathname": "/2",
    }
    assert "secret" not in json.dumps(doc)
    assert doc["channels"]["order.created"]["address"] == "trades:{symbol}:order.created"
    assert doc["channels"]["log"]["address"] == "tb:{symbolTag}:log"
    assert set(doc["channels"]) >= {"queue.tradebus.state", "queue.tradebus.risk", "queue.tradebus.notify"}
    # the validation is not vacuous: a broken document is refused
    broken = json.loads(json.dumps(doc))
    broken["operations"]["log.append"]["action"] = "publish"
    assert _errors(official_schema, broken)


def test_custom_types_and_routes_appear_in_a_valid_document(
    official_schema: dict[str, Any],
    custom_types: Any,
) -> None:
    routing = RoutingTable.default().add(Route("funding", "tradebus_test.funding.record", "custom", ("funding.*",)))
    doc = asyncapi_document(routing)
    assert _errors(official_schema, doc) == []
    assert "funding.rate_changed" in doc["channels"] and "market.halted" in doc["channels"]
    assert doc["components"]["schemas"]["FundingRateChanged"]["required"] == ["rate"]
    queue = doc["channels"]["queue.custom"]
    assert queue["messages"] == {"task.funding": {"$ref": "#/components/messages/task.funding"}}
    # the state route takes the type that has a state effect
    state_types = doc["components"]["messages"]["task.state"]["summary"]
    assert "funding.rate_changed" in state_types and "market.halted" not in state_types


@pytest.fixture
def symbol() -> str:
    return f"CT{uuid.uuid4().hex[:8].upper()}"


@pytest.fixture
def pubsub(redis_url: str, symbol: str) -> Iterator[redis.client.PubSub]:
    """Subscribed (confirmed by the server) to this test's symbol: channels are shared by every bus."""
    client = redis.Redis.from_url(redis_url)
    pubsub = client.pubsub()
    pubsub.psubscribe(f"trades:{symbol}:*")
    wait_for(lambda: (m := pubsub.get_message(timeout=0.1)) and m["type"] == "psubscribe", what="the subscription")
    yield pubsub
    pubsub.close()
    client.close()


def _received(pubsub: redis.client.PubSub, n: int) -> list[dict[str, Any]]:
    got: list[dict[str, Any]] = []

    def more() -> bool:
        message = pubsub.get_message(timeout=0.1)
        if message is not None and message["type"] == "pmessage":
            got.append(message)
        return len(got) == n

    wait_for(more, what=f"{n} broadcasts")
    return got


def test_a_broadcast_a_log_entry_and_a_task_message_match_their_schemas(
    settings: Settings, symbol: str, pubsub: redis.client.PubSub
) -> None:
    routing = RoutingTable.default()
    spec = Document(asyncapi_document(routing, key_prefix=settings.key_prefix))
    events = [
        TradeEvent.create_order_created(symbol, 12, "buy", 2000, 0.1, sl=1990.5, note={"k": [1, None]}),
        TradeEvent.create_position_closed(symbol, "p1", 2010.0, -3.5, correlation_id="c1"),
        TradeEvent.create_signal_rejected(symbol, "s1", "stale", source="tests"),
    ]
    with RedisEventBus(settings=settings) as bus:
        for event in events:
            bus.publish(event)
        # the broadcast: the event JSON with log_id, n, prev, prev_t, bus in front
        for event, message in zip(events, _received(pubsub, len(events)), strict=True):
            assert message["channel"].decode() == f"trades:{symbol}:{event.event_type.value}"
            payload = json.loads(message["data"])
            assert spec.errors(payload, f"/components/messages/{event.event_type.value}.broadcast/payload") == []
            assert spec.errors(payload, "/components/messages/trade.executed.broadcast/payload") != []
        # the log entry: fields type and event
        entries = bus.client.xrange(Keys(settings.key_prefix).log(symbol))
        assert len(entries) == len(events)
        for _, fields in entries:
            entry = {k.decode(): v.decode() for k, v in fields.items()}
            assert spec.errors(entry, "/components/messages/log.entry/payload") == []
            assert spec.errors(json.loads(entry["event"]), "/components/schemas/TradeEvent") == []
    # the Celery task message of each route, built as the dispatcher builds it
    dispatcher = Dispatcher(settings.broker_url, routing, settings=settings, app=publisher_app(settings.broker_url))
    routed = [(event, route) for event in events for route in routing.routes_for(event)]
    assert {route.name for _, route in routed} == {"state", "risk", "notify"}
    for event, route in routed:
        ((_, raw),) = dispatcher._messages(event.event_id, event.to_json(), [route])
        message = json.loads(raw)
        body = json.loads(base64.b64decode(message["body"]))
        pointer = f"/components/messages/task.{route.name}"
        assert spec.errors(body, f"{pointer}/payload") == []
        assert spec.errors(message["headers"], f"{pointer}/headers") == []
        assert spec.errors(message["headers"] | {"task": "other.task"}, f"{pointer}/headers") != []
