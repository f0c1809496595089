"""The AsyncAPI 3.0 document of a tradebus deployment: what it sends, where, in which format.

* one channel per event type, ``trades:{symbol}:{event_type}``: the event JSON with the broadcast
  fields ``log_id``, ``n``, ``prev``, ``prev_t`` and ``bus`` in front (bus/core/wire.py);
* the log stream of each symbol, ``{prefix}:{SYMBOL}:log``: entries with fields ``type`` and ``event``;
* one channel per Celery queue, with one message per route: Celery's protocol 2 task message whose
  only argument is the event JSON (bus/dispatch/dispatcher.py).

Payload schemas come from bus.events.schema, under ``#/components/schemas/``; the document is
generated from the registry and a routing table, so custom event types and routes appear in it.
"""

from __future__ import annotations

from fnmatch import fnmatchcase
from typing import Any
from urllib.parse import urlsplit

from bus.defaults import CHANNEL_PREFIX, DEFAULT_KEY_PREFIX, SCHEMA_VERSION
from bus.dispatch.routing import Route, RoutingTable
from bus.events.registry import SPECS
from bus.events.schema import ENVELOPE_FIELDS, closed, definitions, union
from bus.events.versions import SCHEMA_MINOR

SCHEMAS = "#/components/schemas/"
BROADCAST_FIELDS = ("log_id", "n", "prev", "prev_t", "bus")
_LOG_ID = r"^[0-9]+-[0-9]+$"


def _json_text(description: str, schema_ref: str) -> dict[str, Any]:
    """A string that holds JSON (draft-07 has no contentSchema: the schema is named in an extension)."""
    return {
        "type": "string",
        "contentMediaType": "application/json",
        "description": description,
        "x-contentSchema": {"$ref": schema_ref},
    }


def _wire_schemas() -> dict[str, Any]:
    return {
        "TradeEvent": union(SCHEMAS),
        "BroadcastFields": {
            "type": "object",
            "description": "Put in front of the event JSON by the publish script, for gap detection.",
            "properties": {
                "log_id": {"type": "string", "pattern": _LOG_ID, "description": "The event's id in its symbol's log."},
                "n": {
                    "type": "integer",
                    "minimum": 1,
                    "description": "The entry's number in its symbol's log (1, 2, ...): counts what a trim loses.",
                },
                "prev": {
                    "type": "string",
                    "pattern": r"^([0-9]+-[0-9]+)?$",
                    "description": "Log id of the symbol's previous event ('' for the first).",
                },
                "prev_t": {
                    "type": "string",
                    "pattern": r"^([0-9]+-[0-9]+)?$",
                    "description": "Log id of the symbol's previous event of the same type ('' for the first).",
                },
                "bus": {"type": "string", "description": "The key prefix of the bus that published it."},
            },
            "required": list(BROADCAST_FIELDS),
        },
        "LogEntry": {
            "type": "object",
            "description": "A Redis stream entry's fields.",
            "properties": {
                "type": {"type": "string", "enum": list(SPECS), "description": "The event's type."},
                "event": _json_text("The event JSON.", f"{SCHEMAS}TradeEvent"),
                "n": {
                    "type": "string",
                    "pattern": "^[1-9][0-9]*$",
                    "description": "The entry's number in its symbol's log (absent: logged by an older tradebus).",
                },
            },
            "required": ["type", "event"],
        },
        "CeleryTaskHeaders": {
            "type": "object",
            "description": "Celery's task protocol 2 headers (the Redis transport carries them in its JSON envelope).",
            "properties": {
                "lang": {"const": "py"},
                "task": {"type": "string", "description": "The task's registered name."},
                "id": {"type": "string", "description": "'{event_id}:{route}': one task per event and route."},
                "root_id": {"type": "string"},
                "parent_id": {"type": ["string", "null"]},
                "retries": {"type": "integer", "minimum": 0},
                "argsrepr": {"type": "string"},
                "kwargsrepr": {"type": "string"},
                "origin": {"type": "string"},
                "ignore_result": {"type": ["boolean", "null"], "description": "null: the task's own setting."},
                "eta": {
                    "type": ["string", "null"],
                    "description": "ISO 8601: the route's countdown after the publish.",
                },
                "expires": {"type": ["string", "null"], "description": "ISO 8601: the route's expiry."},
            },
            "required": ["lang", "task", "id"],
        },
    }


def _task_message(route: Route) -> dict[str, Any]:
    types = [value for value in SPECS if any(fnmatchcase(value, p) for p in route.event_types)]
    body = {
        "type": "array",
        "description": "Celery's body: [args, kwargs, embed].",
        "items": [
            {
                "type": "array",
                "minItems": 1,
                "maxItems": 1,
                "items": [_json_text(f"The event JSON: {', '.join(types)}.", f"{SCHEMAS}TradeEvent")],
            },
            {
                "type": "object",
                "properties": {"route": {"const": route.name}},
                "required": ["route"],
            },
            {"type": "object", "description": "Celery's callbacks, errbacks, chain and chord (all null)."},
        ],
        "minItems": 3,
        "maxItems": 3,
    }
    return {
        "name": route.name,
        "title": f"{route.task} task (route {route.name})",
        "summary": f"Sent for {', '.join(route.event_types)} events of symbols {', '.join(route.symbols)}.",
        "contentType": "application/json",
        "headers": {
            "allOf": [
                {"$ref": f"{SCHEMAS}CeleryTaskHeaders"},
                {"type": "object", "properties": {"task": {"const": route.task}}},
            ]
        },
        "payload": body,
        "x-priority": route.priority,
        "x-max-retries": route.retry.max_retries,
    }


def _server(url: str, description: str) -> dict[str, Any]:
    parts = urlsplit(url)
    host = parts.hostname or "localhost"
    server: dict[str, Any] = {
        "host": f"{host}:{parts.port}" if parts.port else host,
        "protocol": parts.scheme or "redis",
        "description": description,
    }
    if parts.path.strip("/"):
        server["pathname"] = parts.path
    return server


def asyncapi_document(
    routing: RoutingTable,
    *,
    key_prefix: str = DEFAULT_KEY_PREFIX,
    bus_url: str = "redis://localhost:6379/0",
    broker_url: str = "redis://localhost:6379/1",
) -> dict[str, Any]:
    """The AsyncAPI 3.0.0 document for this registry and ``routing`` (credentials in URLs are dropped)."""
    channels: dict[str, Any] = {}
    operations: dict[str, Any] = {}
    messages: dict[str, Any] = {}
    symbol = {"description": "The instrument, e.g. XAUUSD.", "examples": ["XAUUSD"]}
    for value in SPECS:
        name = f"{value}.broadcast"
        payload = closed(
            {"allOf": [{"$ref": f"{SCHEMAS}{value}"}, {"$ref": f"{SCHEMAS}BroadcastFields"}]},
            (*BROADCAST_FIELDS, *ENVELOPE_FIELDS),
        )
        messages[name] = {
            "name": name,
            "title": f"{value} event",
            "contentType": "application/json",
            "payload": payload,
        }
        channels[value] = {
            "address": f"{CHANNEL_PREFIX}:{{symbol}}:{value}",
            "description": f"Redis pub/sub: every {value} event, as it is logged.",
            "parameters": {"symbol": symbol},
            "servers": [{"$ref": "#/servers/bus"}],
            "messages": {name: {"$ref": f"#/components/messages/{name}"}},
        }
        operations[f"broadcast.{value}"] = {
            "action": "send",
            "channel": {"$ref": f"#/channels/{value}"},
            "messages": [{"$ref": f"#/channels/{value}/messages/{name}"}],
        }
    messages["log.entry"] = {"name": "log.entry", "payload": {"$ref": f"{SCHEMAS}LogEntry"}}
    channels["log"] = {
        "address": f"{key_prefix}:{{symbolTag}}:log",
        "description": "Redis stream: the durable log of one symbol (XRANGE / XREAD), every type in order.",
        "parameters": {
            "symbolTag": {
                "description": "The symbol in braces (a Redis Cluster hash tag), e.g. {XAUUSD}.",
                "examples": ["{XAUUSD}"],
            }
        },
        "servers": [{"$ref": "#/servers/bus"}],
        "messages": {"log.entry": {"$ref": "#/components/messages/log.entry"}},
    }
    operations["log.append"] = {
        "action": "send",
        "channel": {"$ref": "#/channels/log"},
        "messages": [{"$ref": "#/channels/log/messages/log.entry"}],
    }
    for route in routing:
        name = f"task.{route.name}"
        messages[name] = _task_message(route)
        queue = channels.setdefault(
            f"queue.{route.queue}",
            {
                "address": route.queue,
                "description": f"Celery queue {route.queue}.",
                "servers": [{"$ref": "#/servers/broker"}],
                "messages": {},
            },
        )
        queue["messages"][name] = {"$ref": f"#/components/messages/{name}"}
        operations[f"dispatch.{route.name}"] = {
            "action": "send",
            "channel": {"$ref": f"#/channels/queue.{route.queue}"},
            "messages": [{"$ref": f"#/channels/queue.{route.queue}/messages/{name}"}],
        }
    return {
        "asyncapi": "3.0.0",
        "info": {
            "title": "tradebus",
            "version": f"{SCHEMA_VERSION}.{SCHEMA_MINOR}.0",
            "description": "Trade events: broadcast on Redis pub/sub, logged in Redis streams, routed to Celery tasks.",
        },
        "defaultContentType": "application/json",
        "servers": {
            "bus": _server(bus_url, "The bus's Redis: channels and logs."),
            "broker": _server(broker_url, "The Celery broker: task queues."),
        },
        "channels": channels,
        "operations": operations,
        "components": {"schemas": {**definitions(SCHEMAS), **_wire_schemas()}, "messages": messages},
    }
