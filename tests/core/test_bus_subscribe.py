"""Subscriptions and listen(): handlers, bad messages, stop, and gap recovery from the log, for the blocking
and the asyncio bus (make_bus)."""

from __future__ import annotations

import signal
import threading
from typing import Any

import orjson
import pytest

from bus import RedisEventBus, TradeEvent, TradeEventType
from bus.core.publisher import PUBLISH
from tests.helpers import wait_for

pytestmark = pytest.mark.redis

#: seconds to wait for deliveries to `trades:*` / `trades:*:TYPE` subscriptions. Channels are not prefixed,
#: so on the shared test server these receive every other suite's and bench's broadcasts too (skipped as
#: foreign, but read in order): under a burst of those on a loaded box, ours queue behind them.
GLOBAL_PATTERN_WAIT = 60.0


def order(i: int, symbol: str, **extra) -> TradeEvent:
    return TradeEvent.create_order_created(symbol=symbol, order_id=str(i), order_type="BUY", price=2000.5,
                                           volume=0.1, **extra)  # fmt: skip


def signal_event(symbol: str) -> TradeEvent:
    return TradeEvent.create_signal_generated(symbol=symbol, signal_id="s", direction="LONG", strategy="m")


def listening(bus):
    handle = bus.listen_in_thread()
    assert handle.wait_ready(10)
    return handle


def lose_broadcast(bus: Any, event: TradeEvent) -> None:
    """Log an event exactly as publish does, but broadcast it where nobody listens (a lost message;
    not on a ``trades:`` channel, which ``subscribe_everything`` would receive)."""
    t = event.event_type.value
    keys = [
        bus.keys.log(event.symbol),
        bus.keys.heads(event.symbol),
        bus.keys.pending_dispatch_for(event.symbol),
    ]
    PUBLISH.call(bus.client, keys, [event.encode(), "lost:nowhere", t, 1000, b"0", 0, bus.keys.prefix])


def test_raising_handler_does_not_stop_the_others(bus, publisher):
    good: list[str] = []

    def bad(event):
        raise RuntimeError("boom")

    bus.subscribe_all("SUBA", bad)
    bus.subscribe_all("SUBA", lambda e: good.append(e.event_id))
    bus.subscribe("SUBA", TradeEventType.ORDER_CREATED, lambda e: good.append("exact:" + e.event_id))
    handle = listening(bus)
    events = [order(i, "SUBA") for i in range(3)]
    for e in events:
        publisher.publish(e)
    wait_for(lambda: len(good) == 6, what="6 deliveries")
    assert [g for g in good if not g.startswith("exact:")] == [e.event_id for e in events]
    assert bus.counters.handler_errors == 3 and bus.counters.delivered == 6
    handle.stop()
    handle.join(5)
    assert not handle.is_alive()


def test_malformed_and_foreign_messages_are_skipped(bus, publisher, redis_client, redis_url):
    seen: list[TradeEvent] = []
    bus.subscribe_all("SUBB", seen.append)
    handle = listening(bus)
    plain = order(1, "SUBB")  # published by another tool: plain event JSON, no log metadata
    for raw in [b"not json", b"[1,2]", b'{"event_type":"order.created","symbol":"SUBB"}',
                b'{"log_id":"1-0","prev":"","prev_t":"","bus":"' + bus.keys.prefix.encode() + b'","x":1}',
                plain.encode()]:  # fmt: skip
        redis_client.publish("trades:SUBB:order.created", raw)
    with RedisEventBus(redis_url, key_prefix=bus.keys.prefix + "-other") as other:
        other.publish(order(2, "SUBB"))  # another tenant's broadcast on the same channel
    last = order(3, "SUBB")
    publisher.publish(last)
    wait_for(lambda: len(seen) == 2, what="two good events")
    assert seen == [plain, last]
    assert bus.counters.malformed == 4 and bus.counters.foreign == 1
    handle.stop()
    handle.join(5)


def mine(symbols: set[str], into: list[TradeEvent]) -> Any:
    """A handler keeping the events of ``symbols``: a `trades:*` or `trades:*:TYPE` subscription on the
    shared test server also gets the plain events other suites send (another tool's messages, delivered)."""
    return lambda e: into.append(e) if e.symbol in symbols else None


def test_type_and_everything_subscriptions_cover_all_symbols(bus, publisher):
    created: list[TradeEvent] = []
    everything: list[TradeEvent] = []
    bus.subscribe_type(TradeEventType.ORDER_CREATED, mine({"SUBC", "SUBD"}, created))
    bus.subscribe_everything(mine({"SUBC", "SUBD"}, everything))
    handle = listening(bus)
    events = [order(1, "SUBC"), signal_event("SUBC"), order(2, "SUBD"), signal_event("SUBD")]
    publisher.publish_many(events)
    wait_for(lambda: len(everything) >= 4 and len(created) >= 2, timeout=GLOBAL_PATTERN_WAIT)
    assert created == [events[0], events[2]] and everything == events
    handle.stop()
    handle.join(5)


def test_gap_is_filled_from_the_log_in_order(bus, publisher):
    # Given subscribers for the symbol, for one type, and for that type everywhere
    wide: list[str] = []
    exact: list[str] = []
    by_type: list[str] = []
    bus.subscribe_all("SUBE", lambda e: wide.append(e.data.get("order_id", "sig")))
    bus.subscribe("SUBE", "order.created", lambda e: exact.append(e.data["order_id"]))
    bus.subscribe_type("order.created", lambda e: by_type.append(e.data["order_id"]))
    handle = listening(bus)
    publisher.publish(order(1, "SUBE"))
    # When broadcasts are lost (logged, never received) and a later one arrives
    lose_broadcast(publisher, order(2, "SUBE"))
    lose_broadcast(publisher, signal_event("SUBE"))
    lose_broadcast(publisher, order(3, "SUBE"))
    publisher.publish(order(4, "SUBE"))
    # Then each subscription gets exactly the missing events first, once, in log order
    wait_for(lambda: len(wide) == 5 and len(exact) == 4 and len(by_type) == 4)
    assert wide == ["1", "2", "sig", "3", "4"]
    assert exact == by_type == ["1", "2", "3", "4"]
    assert bus.counters.recovered_from_log == 3 + 2 + 2 and bus.counters.gaps_lost == 0
    handle.stop()
    handle.join(5)


def test_batches_reach_every_kind_of_subscription_without_false_or_missed_gaps(bus, publisher):
    # Given a subscription to one type of one symbol, one to the symbol, one to the type everywhere
    # and one to everything
    exact: list[TradeEvent] = []
    wide: list[TradeEvent] = []
    by_type: list[TradeEvent] = []
    everything: list[TradeEvent] = []
    bus.subscribe("SUBM", "order.created", exact.append)
    bus.subscribe_all("SUBM", wide.append)
    bus.subscribe_type("order.created", mine({"SUBM", "SUBN"}, by_type))
    bus.subscribe_everything(mine({"SUBM", "SUBN"}, everything))
    handle = listening(bus)
    sent = [order(0, "SUBM")]
    publisher.publish(sent[0])
    wait_for(lambda: len(everything) == 1 and len(exact) == 1, what="the first event")
    # When one broadcast is lost just before a batch (its first event's prev/prev_t name the lost one)
    lost = order(1, "SUBM")
    lose_broadcast(publisher, lost)
    sent.append(lost)
    # and mixed-symbol batches (runs of several types, whole and split across script calls) follow
    batch1 = [signal_event("SUBM"), order(2, "SUBM"), order(3, "SUBN"), signal_event("SUBN"),
              order(4, "SUBM"), order(5, "SUBM"), signal_event("SUBM"), order(6, "SUBN")]  # fmt: skip
    publisher.publish_many(batch1)
    single = order(7, "SUBM")
    publisher.publish(single)
    publisher.publish_run_max = 2
    batch2 = [order(8, "SUBM"), signal_event("SUBM"), order(9, "SUBM"), order(10, "SUBM"),
              signal_event("SUBN"), order(11, "SUBN"), order(12, "SUBM")]  # fmt: skip
    publisher.publish_many(batch2)
    sent += [*batch1, single, *batch2]

    # Then each gets exactly its events, in publication order, the lost one from the log (once each)
    def want(symbol=None, t=None):
        return [e for e in sent if symbol in (None, e.symbol) and t in (None, e.event_type.value)]

    wait_for(lambda: len(everything) >= len(sent) and len(exact) >= len(want("SUBM", "order.created")),
             timeout=GLOBAL_PATTERN_WAIT, what="every event")  # fmt: skip
    assert exact == want("SUBM", "order.created")
    assert wide == want("SUBM")
    assert by_type == want(t="order.created")
    assert everything == sent
    # recovered from the log: the lost event, once per subscription; no false gap, nothing lost
    assert bus.counters.recovered_from_log == 4
    assert bus.counters.gaps_lost == 0 and bus.counters.malformed == 0
    handle.stop()
    handle.join(5)


def test_gap_beyond_the_trimmed_log_is_counted(bus, publisher, redis_client):
    seen: list[str] = []
    bus.subscribe_all("SUBF", lambda e: seen.append(e.data["order_id"]))
    handle = listening(bus)
    publisher.publish(order(1, "SUBF"))
    wait_for(lambda: seen == ["1"])
    lose_broadcast(publisher, order(2, "SUBF"))
    lose_broadcast(publisher, order(3, "SUBF"))
    redis_client.xtrim(publisher.keys.log("SUBF"), maxlen=1, approximate=False)  # only 3 is left
    publisher.publish(order(4, "SUBF"))
    wait_for(lambda: seen[-1:] == ["4"])
    assert seen == ["1", "3", "4"] and bus.counters.gaps_lost == 1
    handle.stop()
    handle.join(5)


def test_events_published_between_subscribe_and_first_message_are_caught_up(bus, publisher):
    seen: list[str] = []
    bus.subscribe("SUBG", "order.created", lambda e: seen.append(e.data["order_id"]))
    handle = listening(bus)
    lose_broadcast(publisher, order(1, "SUBG"))  # nothing else ever arrives on the channel...
    handle.stop()
    handle.join(5)
    handle = listening(bus)  # ...but the next (re)connect catches up from the log
    wait_for(lambda: seen == ["1"])
    handle.stop()
    handle.join(5)


def test_subscribe_while_listening(bus, publisher):
    first: list[TradeEvent] = []
    later: list[TradeEvent] = []
    bus.subscribe_all("SUBH", first.append)
    handle = listening(bus)
    bus.subscribe_all("SUBI", later.append)
    e = order(1, "SUBI")
    # publish until it arrives: PUBLISH's subscriber count also counts other clients' trades:* patterns
    wait_for(lambda: publisher.publish(e) and later, timeout=30, what="the event on the new subscription")
    assert later[0] == e and all(x == e for x in later)
    handle.stop()
    handle.join(5)


def test_stop_from_a_signal_handler(bus, publisher):
    seen: list[TradeEvent] = []
    bus.subscribe_all("SUBJ", seen.append)
    previous = signal.signal(signal.SIGALRM, lambda *_: bus.stop())
    try:

        def publish_then_alarm():
            assert bus.wait_until_listening(10)
            publisher.publish(order(1, "SUBJ"))
            wait_for(lambda: seen)
            signal.setitimer(signal.ITIMER_REAL, 0.01)

        t = threading.Thread(target=publish_then_alarm, daemon=True)
        t.start()
        bus.listen()  # returns once the signal handler called stop()
        t.join(5)
    finally:
        signal.signal(signal.SIGALRM, previous)
    assert len(seen) == 1


def test_broadcast_carries_metadata_that_decode_broadcast_splits(bus, redis_client):
    from bus.core.wire import decode_broadcast

    ps = redis_client.pubsub()
    ps.subscribe("trades:SUBK:order.created")
    ps.get_message(timeout=2)
    e = order(1, "SUBK")
    r = bus.publish(e)
    msg = ps.get_message(timeout=2)
    event, meta = decode_broadcast(msg["data"])
    assert event == e and meta["log_id"] == r.log_id and meta["bus"] == bus.keys.prefix
    assert decode_broadcast(e.encode()) == (e, {})
    assert orjson.loads(msg["data"])["prev_t"] == ""
    ps.close()


def test_one_loop_per_bus(redis_url, key_prefix):
    # the blocking loop's thread rules (the asyncio bus's one loop: tests/aio/test_aio.py)
    bus = RedisEventBus(redis_url, key_prefix=key_prefix)
    bus.subscribe_all("LOOP", lambda event: None)
    handle = bus.listen_in_thread()
    assert handle.wait_ready(10)
    # a second listen_in_thread() is the same loop; a second blocking listen() is refused clearly
    assert bus.listen_in_thread().thread is handle.thread
    errors = []
    other = threading.Thread(target=lambda: errors.append(pytest.raises(RuntimeError, bus.listen)))
    other.start()
    other.join(5)
    assert errors and "already listening" in str(errors[0].value)
    handle.stop()
    handle.join(5)
    assert not handle.is_alive()
    bus.close()
