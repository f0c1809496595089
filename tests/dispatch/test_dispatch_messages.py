"""Hand-built task messages are exactly what kombu's Redis transport writes, and a real worker runs them."""

from __future__ import annotations

import base64
import json
from datetime import UTC, datetime

import pytest
import redis
from kombu.transport import redis as kombu_redis

from bus.core.keys import Keys
from bus.core.state import get_order
from bus.dispatch.messages import PRIORITY_SEP, PRIORITY_STEPS, MessageBuilder, redis_queue_key
from bus.dispatch.routing import Route, RoutingTable
from bus.events.model import TradeEvent
from tests.helpers import dispatcher_for, wait_for

pytestmark = [pytest.mark.redis, pytest.mark.celery]


def _decoded(raw: bytes) -> dict:
    msg = json.loads(raw)
    msg["body"] = json.loads(base64.b64decode(msg["body"]))
    return msg


def test_constants_match_kombu() -> None:
    assert tuple(kombu_redis.PRIORITY_STEPS) == PRIORITY_STEPS
    assert kombu_redis.Channel.sep == PRIORITY_SEP


@pytest.mark.parametrize("priority", [0, 4, 9])
def test_built_message_equals_what_send_task_writes(settings, celery_app, priority) -> None:
    app = celery_app  # no worker takes its messages: the test reads them from the queue
    client = redis.Redis.from_url(settings.broker_url)
    ev = TradeEvent.create_order_created("XAUUSD", "o-1", "BUY", 2000.5, 1.5)
    args, kwargs = [ev.to_json()], {"route": "state"}
    tid = f"{ev.event_id}:state"
    # Given: the same task sent by Celery itself, and built by hand
    app.send_task("tradebus.state.apply", args=args, kwargs=kwargs, task_id=tid, queue="tradebus.state",
                  priority=priority, argsrepr="[x]", kwargsrepr="{y}", ignore_result=True)  # fmt: skip
    key = redis_queue_key("tradebus.state", priority, f"{settings.key_prefix}:")
    (sent,) = client.lrange(key, 0, -1)
    key2, built = MessageBuilder(app).build("tradebus.state.apply", tid, args, kwargs, "tradebus.state",
                                            priority, argsrepr="[x]", kwargsrepr="{y}")  # fmt: skip
    # Then: same list, and the same message field by field except the random delivery tag
    assert key2 == key
    a, b = _decoded(sent), _decoded(built)
    for m in (a, b):
        assert len(m["properties"].pop("delivery_tag")) == 36
    # Only differences: send_task copies its publish options into properties (the worker reads the
    # headers) and sets reply_to to its thread's RPC address (we keep no results).
    for extra in ("argsrepr", "kwargsrepr"):
        assert a["properties"].pop(extra) == a["headers"][extra]
    assert a["properties"].pop("reply_to") and b["properties"].pop("reply_to") == ""
    assert a == b


def test_route_options_build_what_send_task_writes(settings, celery_app) -> None:
    """ignore_result, countdown, expires, priority: the same message as send_task's with those options."""
    ev = TradeEvent.create_order_created("XAUUSD", "o-2", "BUY", 2000.5, 1.5)
    args, kwargs, tid = [ev.to_json()], {"route": "state"}, f"{ev.event_id}:state"
    options = {"ignore_result": False, "countdown": 30, "expires": 600}
    celery_app.send_task("tradebus.state.apply", args=args, kwargs=kwargs, task_id=tid, queue="tradebus.state",
                         priority=6, argsrepr="[x]", kwargsrepr="{y}", **options)  # fmt: skip
    (sent,) = redis.Redis.from_url(settings.broker_url).lrange(
        redis_queue_key("tradebus.state", 6, f"{settings.key_prefix}:"), 0, -1
    )
    _, built = MessageBuilder(celery_app).build("tradebus.state.apply", tid, args, kwargs, "tradebus.state", 6,
                                                argsrepr="[x]", kwargsrepr="{y}", **options)  # fmt: skip
    a, b = _decoded(sent), _decoded(built)
    for m in (a, b):  # the tag is random, and eta / expires are computed a few microseconds apart
        m["properties"].pop("delivery_tag")
        for field, seconds in (("eta", 30), ("expires", 600)):
            at = datetime.fromisoformat(m["headers"].pop(field))
            assert abs((at - datetime.now(UTC)).total_seconds() - seconds) < 5
    for extra in ("argsrepr", "kwargsrepr"):
        assert a["properties"].pop(extra) == a["headers"][extra]
    assert a["properties"].pop("reply_to") and b["properties"].pop("reply_to") == ""
    assert a == b


def test_worker_runs_hand_built_messages(settings, worker_app, worker) -> None:
    app = worker_app()
    d = dispatcher_for(app, settings)
    keys = Keys(settings.key_prefix)
    bus_client = redis.Redis.from_url(settings.bus_url)
    events = [TradeEvent.create_order_created("XAUUSD", f"o-{i}", "BUY", 2000.0 + i, 1.0) for i in range(20)]
    with worker():
        for ev in events:
            assert d.send(ev, ev.to_json(), d.routes_for(ev)[:1]) == (("state",), ())
        wait_for(lambda: all(get_order(bus_client, keys, "XAUUSD", f"o-{i}") for i in range(20)),
                 what="every order projected by the worker")  # fmt: skip
    assert get_order(bus_client, keys, "XAUUSD", "o-7")["price"] == "2007.0"
    stats = bus_client.hgetall(keys.stats())
    assert int(stats[b"run:tradebus.state.apply"]) == 20


def test_staged_messages_join_the_bus_transaction(settings, worker_app, worker) -> None:
    """SELECT <broker db>; LPUSH...; SELECT <bus db> inside MULTI: one atomic round trip, db restored."""
    app = worker_app()
    d = dispatcher_for(app, settings)
    keys = Keys(settings.key_prefix)
    bus_client = redis.Redis.from_url(settings.bus_url, single_connection_client=True)
    d.attach(bus_client, keys)
    assert d.stages_in_bus_pipeline
    ev = TradeEvent.create_order_created("XAUUSD", "o-tx", "BUY", 1999.0, 1.0)
    routes = (Route("state", "tradebus.state.apply", "tradebus.state"),)
    with worker():
        pipe = bus_client.pipeline(transaction=True)
        pipe.set(f"{keys.prefix}:marker", "1")
        assert d.stage(pipe, ev, ev.to_json(), routes) == ("state",)
        pipe.set(f"{keys.prefix}:marker2", "1")
        pipe.execute()
        # the connection is back on the bus db: these keys are there, not in the broker db
        assert bus_client.get(f"{keys.prefix}:marker2") == b"1"
        assert bus_client.connection_pool.connection_kwargs["db"] == int(settings.bus_url.rsplit("/", 1)[1])
        wait_for(lambda: get_order(bus_client, keys, "XAUUSD", "o-tx"), what="staged task ran")


def test_not_staged_across_servers(settings, celery_app, own_redis) -> None:
    d = dispatcher_for(celery_app, settings).attach(redis.Redis.from_url(own_redis.url), Keys("x"))
    assert not d.stages_in_bus_pipeline
    with pytest.raises(Exception, match="stage"):
        ev = TradeEvent.create_order_created("XAUUSD", "o", "BUY", 1.0, 1.0)
        d.stage(None, ev, ev.to_json(), RoutingTable.default().routes_for(ev))


def test_delivery_tags_are_unique_in_a_process_and_across_a_fork(celery_app) -> None:
    import os

    builder = MessageBuilder(celery_app)

    def tag() -> str:
        _, raw = builder.build("tradebus.state.apply", "t", ["{}"], {}, "tradebus.state")
        return json.loads(raw)["properties"]["delivery_tag"]

    tags = [tag() for _ in range(1000)]
    assert len(set(tags)) == 1000 and all(len(t) == 36 and t.count("-") == 4 for t in tags)
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: kombu keys unacked messages by tag, so it must not repeat its parent's
        os.write(write, tag().encode())
        os._exit(0)
    os.waitpid(pid, 0)
    child = os.read(read, 64).decode()
    assert child not in tags and child != tag()
