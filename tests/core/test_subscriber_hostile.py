"""Hostile broadcasts against a listening subscriber (self-healing subscribers, bad input), for the blocking
and the asyncio bus (make_bus): bad meta fields of every type, forged, future and replayed log ids,
errors inside the loop. Each ends with the listener alive and every real event delivered once, in order."""

from __future__ import annotations

import logging
from typing import Any

import orjson
import pytest

from bus import TradeEvent
from bus.core.healing import FUTURE_SLACK_MS
from tests.core.test_bus_subscribe import listening, lose_broadcast, order
from tests.helpers import wait_for

pytestmark = pytest.mark.redis

SYM = "HOST"
CHANNEL = f"trades:{SYM}:order.created"


def broadcast(publisher: Any, event: TradeEvent, **meta: Any) -> bytes:
    """A broadcast as publish.lua writes it, with ``meta`` overriding (or adding) its fields."""
    fields = {"log_id": "1-1", "n": 1, "prev": "", "prev_t": "", "bus": publisher.keys.prefix, **meta}
    return orjson.dumps({**fields, **orjson.loads(event.encode())})


def subscriber_of(bus: Any) -> Any:
    """The Subscriber (blocking bus) or AsyncSubscriber (the adapter's asyncio bus) behind ``bus``."""
    return bus.aio.subscriber if hasattr(bus, "aio") else bus.subscriber


def server_ms(client: Any) -> int:
    secs, micros = client.time()
    return int(secs) * 1000 + int(micros) // 1000


def ids(events: list[TradeEvent]) -> list[str]:
    return [e.data["order_id"] for e in events]


@pytest.fixture
def three(bus: Any) -> dict[str, list[TradeEvent]]:
    """Every kind of subscription that sees SYM's order.created: the channel, the symbol, the type, all."""
    seen: dict[str, list[TradeEvent]] = {"exact": [], "wide": [], "type": [], "all": []}
    bus.subscribe(SYM, "order.created", seen["exact"].append)
    bus.subscribe_all(SYM, seen["wide"].append)
    bus.subscribe_type("order.created", seen["type"].append)
    bus.subscribe_everything(lambda e: seen["all"].append(e) if e.symbol == SYM else None)
    return seen


def delivered(seen: dict[str, list[TradeEvent]], n: int) -> bool:
    return all(len(v) >= n for v in seen.values())


HOSTILE_META: list[dict[str, Any]] = [
    {"log_id": 5},
    {"log_id": ["1-0"]},
    {"log_id": {"a": 1}},
    {"log_id": 1.5},
    {"log_id": True},
    {"log_id": "abc"},
    {"log_id": "1-2-3"},
    {"log_id": "-1-0"},
    {"log_id": "9" * 30 + "-0"},  # over 64 bits
    {"log_id": "99999999999999999999-0"},  # 20 digits, over 2**64
    {"log_id": "1-0" + " " * 10_000},
    {"prev": "text"},
    {"prev": 7},
    {"prev": ["1-0"]},
    {"prev": None},
    {"prev_t": {"x": 1}},
    {"prev_t": 12.5},
    {"prev_t": "1-x"},
    {"bus": 3},
    {"bus": ["p"]},
    {"bus": None},
    {"n": "1"},
    {"n": -1},
    {"n": 0},
    {"n": 2.5},
    {"n": 1e300},
    {"n": [1]},
]


def test_bad_meta_fields_of_every_type_are_skipped_and_the_listener_lives(bus, publisher, redis_client):
    # Given a listener subscribed to the channel and to the symbol (the counts below would include other
    # suites' traffic on `trades:*`; the other kinds get these same messages in the tests below), past
    # a real event
    three = {"exact": [], "wide": []}
    bus.subscribe(SYM, "order.created", three["exact"].append)
    bus.subscribe_all(SYM, three["wide"].append)
    handle = listening(bus)
    first = publisher.publish(order(1, SYM))
    wait_for(lambda: delivered(three, 1), what="the first event")
    # When broadcasts with a bad meta field of each type arrive (the event itself is valid)
    for meta in HOSTILE_META:
        meta = {"prev": first.log_id, "prev_t": first.log_id, **meta}
        redis_client.publish(CHANNEL, broadcast(publisher, order(666, SYM), log_id=meta.pop("log_id", "1-0"), **meta))
    # and an event of another symbol arrives on this symbol's channel
    redis_client.publish(CHANNEL, broadcast(publisher, order(667, "OTHER"), log_id="2-0"))
    redis_client.publish(CHANNEL, order(668, "OTHER").encode())  # the same, from another tool
    # Then each is counted malformed once per subscription that received it, and the next real events arrive
    for i in (2, 3):
        publisher.publish(order(i, SYM))
    wait_for(lambda: delivered(three, 3), what="the real events")
    assert handle.is_alive()
    for got in three.values():
        assert ids(got) == ["1", "2", "3"]
    c = bus.counters
    # each of the two subscriptions received each of them; one whose `bus` is not this prefix (where
    # publish.lua writes it) is another tenant's, or nobody's: ignored as foreign
    foreign = sum(1 for meta in HOSTILE_META if "bus" in meta or len(str(meta.get("log_id", ""))) > 100)
    assert c.malformed == 2 * (len(HOSTILE_META) - foreign + 2) and c.foreign == 2 * foreign, c
    assert c.loop_errors == 0 and c.reconnects == 0, c
    handle.stop()
    handle.join(5)


def test_a_forged_far_future_log_id_costs_only_itself(bus, publisher, redis_client, three):
    handle = listening(bus)
    first = publisher.publish(order(1, SYM))
    wait_for(lambda: delivered(three, 1), what="the first event")
    # When a broadcast with a far-future id that chains from the last delivery arrives
    forged = broadcast(publisher, order(666, SYM), log_id="99999999999999-0", prev=first.log_id, prev_t=first.log_id)
    redis_client.publish(CHANNEL, forged)
    # Then it is checked against the log and dropped, and every real event after it is delivered
    for i in (2, 3, 4):
        publisher.publish(order(i, SYM))
    wait_for(lambda: delivered(three, 4), what="the real events")
    for got in three.values():
        assert ids(got) == ["1", "2", "3", "4"]
    assert bus.counters.forged == 4 and bus.counters.malformed == 0
    handle.stop()
    handle.join(5)


@pytest.mark.parametrize("ahead_ms", [FUTURE_SLACK_MS // 2, FUTURE_SLACK_MS * 5])
def test_a_forged_broadcast_with_the_next_real_id_costs_only_itself(bus, publisher, redis_client, three, ahead_ms):
    # Given the log's next id fixed a little ahead of the server clock (XSETID), so it is known
    handle = listening(bus)
    first = publisher.publish(order(1, SYM))
    wait_for(lambda: delivered(three, 1), what="the first event")
    next_ms = server_ms(redis_client) + ahead_ms
    redis_client.execute_command("XSETID", publisher.keys.log(SYM), f"{next_ms}-5")
    # When a forged broadcast takes that id before the real event (chaining from the last delivery)
    redis_client.publish(CHANNEL, broadcast(publisher, order(666, SYM), log_id=f"{next_ms}-6", n=2,
                                            prev=first.log_id, prev_t=first.log_id))  # fmt: skip
    real = publisher.publish(order(2, SYM))
    publisher.publish(order(3, SYM))
    # Then every real event is delivered once, in order; the forgery at most once, before them
    wait_for(lambda: all(ids(v)[-2:] == ["2", "3"] for v in three.values()), what="the real events")
    for got in three.values():
        assert [i for i in ids(got) if i != "666"] == ["1", "2", "3"] and ids(got).count("666") <= 1
    forged_seen = ids(three["exact"]).count("666")
    if real.log_id == f"{next_ms}-6":  # the real one took the id the forgery claimed (the usual case)
        assert bus.counters.forged == 4  # once per subscription: dropped, or delivered and then undone
    assert forged_seen == (1 if ahead_ms <= FUTURE_SLACK_MS else 0)
    handle.stop()
    handle.join(5)


def test_a_forged_broadcast_with_a_logged_id_and_other_content_is_not_delivered(bus, publisher, redis_client, three):
    handle = listening(bus)
    publisher.publish(order(1, SYM))
    wait_for(lambda: delivered(three, 1), what="the first event")
    # Given an event logged whose broadcast never arrived
    lost = order(2, SYM)
    lose_broadcast(publisher, lost)
    lost_id = publisher.read_log(SYM)[-1][0]
    # When a forged broadcast claims its id, with other content (and a prev that names nothing)
    redis_client.publish(CHANNEL, broadcast(publisher, order(666, SYM), log_id=lost_id, n=2))
    publisher.publish(order(3, SYM))
    # Then the forgery is dropped; the real event at that id comes from the log, before the next one
    wait_for(lambda: delivered(three, 3), what="the real events")
    for got in three.values():
        assert ids(got) == ["1", "2", "3"]
    assert bus.counters.forged == 4
    handle.stop()
    handle.join(5)


def test_a_replayed_broadcast_is_not_delivered_again(bus, publisher, redis_client, three):
    # Given a captured genuine broadcast
    raw: list[bytes] = []
    pubsub = redis_client.pubsub()
    pubsub.subscribe(CHANNEL)
    handle = listening(bus)
    publisher.publish(order(1, SYM))
    wait_for(lambda: (m := pubsub.get_message(timeout=0.1)) and m["type"] == "message" and raw.append(m["data"])
             or raw, what="the captured broadcast")  # fmt: skip
    publisher.publish(order(2, SYM))
    wait_for(lambda: delivered(three, 2), what="two events")
    # When it is sent again, twice
    redis_client.publish(CHANNEL, raw[0])
    redis_client.publish(CHANNEL, raw[0])
    publisher.publish(order(3, SYM))
    wait_for(lambda: delivered(three, 3), what="the third event")
    for got in three.values():
        assert ids(got) == ["1", "2", "3"]
    pubsub.close()
    handle.stop()
    handle.join(5)


def test_an_unexpected_error_in_the_loop_is_counted_and_the_log_heals_it(bus, publisher, caplog):
    # Given a subscriber whose message handling fails once, unexpectedly, on the second event
    seen: list[TradeEvent] = []
    bus.subscribe_all(SYM, seen.append)
    healer = subscriber_of(bus)._healer
    real_arrival, calls = healer.arrival, []

    def failing_once(sub: Any, chan: bytes, data: bytes) -> Any:
        calls.append(1)
        if len(calls) == 2:
            raise KeyError("a bug")
        return real_arrival(sub, chan, data)

    healer.arrival = failing_once
    handle = listening(bus)
    # When three events are published
    for i in (1, 2, 3):
        publisher.publish(order(i, SYM))
    # Then the loop logged and counted the error, reconnected, and the event it failed on came from the log
    wait_for(lambda: len(seen) == 3, what="three events")
    assert ids(seen) == ["1", "2", "3"]
    c = bus.counters
    assert c.loop_errors == 1 and c.reconnects >= 1 and c.recovered_from_log >= 1, c
    assert handle.is_alive()
    assert any(r.levelno >= logging.ERROR and "unexpected error" in r.getMessage() for r in caplog.records)
    handle.stop()
    handle.join(5)


class Fatal(BaseException):
    """Not an Exception: the loop does not catch it."""


def test_a_listener_that_dies_anyway_says_why(redis_url, key_prefix, caplog):
    from bus import RedisEventBus

    with RedisEventBus(redis_url, key_prefix=key_prefix) as bus:
        bus.subscribe_all(SYM, lambda e: None)
        sub = bus.subscriber

        def fatal() -> None:
            raise Fatal("out of luck")

        sub._pump = fatal
        handle = bus.listen_in_thread()
        handle.join(10)
        assert not handle.is_alive()
        assert isinstance(handle.error, Fatal)
        assert any(r.levelno >= logging.ERROR and "out of luck" in r.getMessage() for r in caplog.records)


def test_the_future_check_allows_real_events_when_the_clock_reading_is_stale(bus, publisher, three):
    # Given the subscriber's reading of the server clock made long ago (as after hours of listening)
    handle = listening(bus)
    healer = subscriber_of(bus)._healer
    ms, mono = healer._clock
    healer._clock, healer._horizon = (ms - 60_000, mono), 0  # 60 s behind: every real id looks ahead of it
    # When real events arrive, they are checked against the log (the slow path) and delivered
    for i in (1, 2):
        publisher.publish(order(i, SYM))
    wait_for(lambda: delivered(three, 2), what="the real events")
    for got in three.values():
        assert ids(got) == ["1", "2"]
    assert bus.counters.forged == 0
    assert healer._clock[0] > ms - 30_000  # the clock was read again
    handle.stop()
    handle.join(5)
