"""Log routes without Celery: the publish scripts' wake flags and the drain, driven directly.

Real Redis; the wake-up messages are the real ones the publish script LPUSHes into the broker database,
read here by a loop of threads instead of a Celery worker (tests/test_logroutes_workers.py has workers).
"""

from __future__ import annotations

import random
import threading
import time

import pytest
import redis

from bus.core.bus import RedisEventBus
from bus.core.keys import Keys
from bus.core.state import get_order
from bus.dispatch.deadletters import list_dead_letters
from bus.dispatch.dispatcher import Dispatcher
from bus.dispatch.logroutes.config import LogRouteConfig
from bus.dispatch.logroutes.drain import BUSY, DONE, LOST, MORE, RETRY, Drainer
from bus.dispatch.logroutes.effects import effect_for
from bus.dispatch.logroutes.monitor import GroupLag, caught_up, route_lag, stale
from bus.dispatch.messages import redis_queue_key
from bus.dispatch.routing import LOG, RetryPolicy, Route, RoutingTable
from bus.events.model import TradeEvent
from tests.helpers import wait_for
from tests.logroute_effects import applied, applied_key, wake_args  # registers the tradebus_test.log_* effects

pytestmark = [pytest.mark.redis]

RECORD = Route("rec", "tradebus_test.log_record", "tradebus.state", ("order.*",), mode=LOG)
FAST = LogRouteConfig(batch=20, claim_after=0.4, time_budget=5.0)
# Leases and flags that outlive a loaded box's stalls, where a test needs one to still hold (~1 s)
STEADY = LogRouteConfig(batch=20, claim_after=2.0, time_budget=5.0)


def order(i: int, symbol: str = "XAUUSD", **data: object) -> TradeEvent:
    return TradeEvent.create_order_created(symbol, f"o{i}", "BUY", 2000.0 + i, 1.0, **data)


def make_bus(settings, broker_url, config: LogRouteConfig = FAST) -> RedisEventBus:
    no_backoff = RetryPolicy(max_retries=2, backoff=0.0, backoff_max=0.0)
    table = RoutingTable([RECORD, Route("poison", "tradebus_test.log_poison", "tradebus.risk", ("order.*",),
                                        retry=no_backoff, mode=LOG)])  # fmt: skip
    dispatcher = Dispatcher(broker_url, table, settings=settings, log_routes=config)
    b = RedisEventBus(settings.bus_url, key_prefix=settings.key_prefix, dispatcher=dispatcher)
    assert dispatcher.stages_in_bus_pipeline
    return b


@pytest.fixture
def bus(settings, broker_url):
    with make_bus(settings, broker_url) as b:
        yield b


@pytest.fixture
def steady_bus(settings, broker_url):
    """Wake flags that live ~1 s: a test that checks one is still set does not race its TTL."""
    with make_bus(settings, broker_url, STEADY) as b:
        yield b


@pytest.fixture
def broker(broker_url):
    c = redis.Redis.from_url(broker_url)
    yield c
    c.close()


def drainer(bus: RedisEventBus, route: Route = RECORD, symbol: str = "XAUUSD", **kw: object) -> Drainer:
    kw.setdefault("config", FAST)
    return Drainer(bus.client, bus.keys, route, symbol, effect_for(route), publisher=bus, **kw)  # type: ignore[arg-type]


def queue_key(settings, route: Route = RECORD) -> str:
    return redis_queue_key(route.queue, 0, f"{settings.key_prefix}:")


def test_one_wake_up_while_pending_then_drained_in_order_once(steady_bus, broker, settings) -> None:
    bus = steady_bus
    events = [order(i) for i in range(120)]
    receipts = [bus.publish(e) for e in events[:20]] + bus.publish_many(events[20:])
    assert all("rec" in r.dispatched for r in receipts)  # a log route takes the event from the log
    # one wake-up message for 120 publishes: the flag was set by the first, SET NX failed for the rest
    (raw,) = broker.lrange(queue_key(settings), 0, -1)
    route, symbol, task_id = wake_args(raw)
    assert (route, symbol, task_id) == ("rec", "XAUUSD", f"wake:rec:XAUUSD:{receipts[0].log_id}")
    assert bus.client.exists(bus.keys.wake_flag("rec", "XAUUSD"))

    out = drainer(bus).run(task_id)
    assert (out.status, out.acked, out.dead_lettered) == (DONE, 120, 0)
    assert applied(bus.client, bus.keys, "rec", "XAUUSD") == [e.event_id for e in events]
    # the last read released the lease and deleted the flag in the same step
    assert not bus.client.exists(bus.keys.drain_lease("rec", "XAUUSD"), bus.keys.wake_flag("rec", "XAUUSD"))
    (g,) = [g for g in route_lag(bus.client, bus.keys, bus.dispatcher.routing) if g.route == "rec"]
    assert (g.lag, g.pending, g.drainer) == (0, 0, False)
    # the next publish wakes the route again
    bus.publish(order(999))
    assert broker.llen(queue_key(settings)) == 2


def test_lag_counts_only_the_types_the_route_takes(bus) -> None:
    """Entries of other types wake nobody and wait unread for the route's next drain: Redis's lag counts
    them (``unread``), the route's lag does not, so a caught-up route reads 0 (the demo's risk route read
    ~16 at the end before)."""
    first, second = order(1), order(2)
    bus.publish(first)
    assert drainer(bus).run().status == DONE
    for i in range(3):  # the route takes order.* only
        bus.publish(TradeEvent.create_position_opened("XAUUSD", f"p{i}", 2000.0, 1.0, "LONG"))

    def rec() -> GroupLag:
        return next(g for g in route_lag(bus.client, bus.keys, bus.dispatcher.routing) if g.route == "rec")

    assert (rec().lag, rec().unread) == (0, 3) and caught_up([rec()])
    bus.publish(second)  # one entry the route takes, after the others
    assert (rec().lag, rec().unread) == (1, 4) and not caught_up([rec()])
    assert drainer(bus).run().status == DONE  # applies it, acknowledges the others on the way
    assert (rec().lag, rec().unread, rec().pending) == (0, 0, 0)
    assert applied(bus.client, bus.keys, "rec", "XAUUSD") == [first.event_id, second.event_id]


def test_the_wake_up_message_travels_once_and_a_lost_copy_is_made_good(bus, broker, settings) -> None:
    bus.publish(order(1))
    stored = bus.client.hgetall(bus.keys.wake_messages("XAUUSD"))
    assert sorted(f.decode().split(":")[0] for f in stored) == ["poison", "rec"]  # one per route, stored once
    assert drainer(bus).run().status == DONE
    bus.client.delete(bus.keys.wake_messages("XAUUSD"))  # e.g. deleted by hand
    woken = order(2)
    r = bus.publish(woken)  # the script finds no message: the publisher sends the wake-up itself
    assert wake_args(broker.lindex(queue_key(settings), 0))[2] == f"wake:rec:XAUUSD:{r.log_id}"  # the newest
    assert drainer(bus).run().status == DONE
    bus.publish(order(3))  # ...and the next publish stores the message again
    assert len(bus.client.hgetall(bus.keys.wake_messages("XAUUSD"))) == 2


def test_a_new_route_sees_the_log_from_its_first_wake_up(bus, settings) -> None:
    plain = RedisEventBus(settings.bus_url, key_prefix=settings.key_prefix)  # no routes: logs only
    plain.publish(order(1))
    second = order(2)
    bus.publish(second)
    assert drainer(bus).run().status == DONE
    assert applied(bus.client, bus.keys, "rec", "XAUUSD") == [second.event_id]
    plain.close()


def test_only_the_lease_holder_drains_and_a_stale_holder_commits_nothing(bus) -> None:
    events = [order(i) for i in range(10)]
    for e in events:
        bus.publish(e)
    paused, resume = threading.Event(), threading.Event()

    def slow_effect(batch):  # drainer A stalls after reading, past its lease
        paused.set()
        resume.wait(10)
        effect_for(RECORD)(batch)

    a = Drainer(bus.client, bus.keys, RECORD, "XAUUSD", slow_effect, config=STEADY)  # a lease of ~1 s
    result = {}
    thread = threading.Thread(target=lambda: result.update(out=a.run("token-a")))
    thread.start()
    assert paused.wait(10)
    assert drainer(bus).run("token-b").status == BUSY  # A holds the lease
    lease = bus.keys.drain_lease("rec", "XAUUSD")
    wait_for(lambda: not bus.client.exists(lease), what="A's lease to expire")
    out_b = drainer(bus).run("token-b")  # B takes over: A's read entries are its own pending ones
    assert (out_b.status, out_b.acked) == (DONE, 10)
    resume.set()
    thread.join(10)
    assert result["out"].status == LOST  # A's EXEC found the lease changed: nothing applied twice
    assert applied(bus.client, bus.keys, "rec", "XAUUSD") == [e.event_id for e in events]


def test_a_drainer_that_dies_mid_batch_leaves_its_entries_to_the_next(bus) -> None:
    events = [order(i) for i in range(50)]
    for e in events:
        bus.publish(e)

    def dies(batch):
        raise KeyboardInterrupt  # not an Exception: the drainer is gone without a word, as under SIGKILL

    with pytest.raises(KeyboardInterrupt):
        Drainer(bus.client, bus.keys, RECORD, "XAUUSD", dies, config=FAST).run("dead")
    assert drainer(bus).run("next").status == BUSY
    wait_for(lambda: drainer(bus).run("next").status == DONE, what="the lease to expire and the next drain")
    assert applied(bus.client, bus.keys, "rec", "XAUUSD") == [e.event_id for e in events]


def test_poison_entry_retried_with_backoff_then_dead_lettered_and_the_symbol_goes_on(bus, settings) -> None:
    route = bus.dispatcher.routing.get("poison")
    events = [order(i, poison=(i == 7)) for i in range(12)]
    bus.publish_many(events)
    d = drainer(bus, route)
    out = d.run("t")
    statuses = [out.status]
    while out.status == RETRY:  # what the task does: re-enqueue itself with its token after the countdown
        out = d.run(out.token)
        statuses.append(out.status)
    assert statuses == [RETRY, DONE]  # max_retries=2: tried 3 times, the first inside its batch
    assert applied(bus.client, bus.keys, "poison", "XAUUSD") == [e.event_id for i, e in enumerate(events) if i != 7]
    (dl,) = list_dead_letters(bus.client, bus.keys)
    assert (dl.route, dl.attempts, dl.event.event_id) == ("poison", 3, events[7].event_id)
    assert dl.log_id and "RuntimeError: poison" in dl.reason
    c = redis.Redis.from_url(settings.bus_url)
    # once inside the batch of 12 (which then commits nothing and is re-read one entry at a time), twice alone
    assert int(c.get(f"{settings.key_prefix}:test:poison_attempts:12")) == 1
    assert int(c.get(f"{settings.key_prefix}:test:poison_attempts:1")) == 2
    c.close()


def test_retry_keeps_the_lease_through_the_backoff(bus) -> None:
    route = Route("slowpoison", "tradebus_test.log_poison", "tradebus.risk", ("order.*",),
                  retry=RetryPolicy(max_retries=1, backoff=30.0, backoff_max=30.0, jitter=False), mode=LOG)  # fmt: skip
    bus.dispatcher.routing.add(route)
    bus.dispatcher.attach(bus.client, bus.keys)
    bus.publish(order(1, poison=True))
    out = drainer(bus, route).run("chain")
    assert (out.status, out.countdown) == (RETRY, 30.0)
    assert drainer(bus, route).run("someone-else").status == BUSY  # a wake-up meanwhile cannot overtake it
    assert bus.client.pttl(bus.keys.drain_lease("slowpoison", "XAUUSD")) > 30_000


def test_time_budget_hands_over_with_the_same_token(bus) -> None:
    events = [order(i) for i in range(100)]
    bus.publish_many(events)
    ticks = iter(range(1000))
    d = drainer(bus, config=LogRouteConfig(batch=10, claim_after=5, time_budget=2.5), clock=lambda: next(ticks))
    out = d.run("chain")
    # the budget (2.5 ticks) is looked at before each next read: the third batch commits and hands over
    assert (out.status, out.acked) == (MORE, 30)
    while out.status == MORE:
        out = d.run(out.token)
    assert out.status == DONE
    assert applied(bus.client, bus.keys, "rec", "XAUUSD") == [e.event_id for e in events]


def test_publish_racing_the_end_of_a_drain_strands_nothing(bus, broker, settings) -> None:
    """Race 1: a publish that finds the flag set sends no wake-up; the drain must still see its entry.

    Each round publishes one event while the previous event's drain is committing: the effect signals
    that its batch is staged (its transaction, with the drain's last read and the release of the lease and
    flag, goes out next) and, every other round at random, holds the commit back 0-400 us while the
    publisher publishes at once. So publishes land before that commit (its read must take them) or after
    it (they must find no flag and wake a new drain). (The pause is in the drainer, a sleep that lets the
    publishing thread run: a publisher spinning after the signal held the GIL while the drainer's commit
    went out first, and almost every publish landed after it; with a pause every round, before it.)
    Nothing else publishes and there is no beat: an event whose wake-up is lost is never applied and its
    round times out. Two threads take the wake-ups off the broker list, as workers would."""
    staged = threading.Event()
    jitter = random.Random(240)

    def record_and_signal(batch):
        effect_for(RECORD)(batch)
        staged.set()
        if jitter.random() < 0.5:
            time.sleep(jitter.random() * 0.0004)

    stop, errors, drains = threading.Event(), [], []

    def worker() -> None:
        c = redis.Redis.from_url(settings.bus_url)
        try:
            while not stop.is_set():
                got = broker.brpop([queue_key(settings)], timeout=0.05)
                if got is not None:
                    _, symbol, task_id = wake_args(got[1])
                    drains.append(Drainer(c, bus.keys, RECORD, symbol, record_and_signal, config=FAST).run(task_id))
        except BaseException as e:  # noqa: BLE001 - reported by the test
            errors.append(e)
        finally:
            c.close()

    threads = [threading.Thread(target=worker) for _ in range(2)]
    for t in threads:
        t.start()
    published, rounds, key = [], 400, applied_key(bus.keys, "rec", "XAUUSD")
    try:
        for i in range(rounds):
            staged.clear()
            e = order(i)
            bus.publish(e)
            published.append(e.event_id)
            assert staged.wait(5), f"round {i}: event {e.event_id} stranded (no drain took it)"
            if i + 1 < rounds:
                continue  # the next publish races this batch's commit
            wait_for(lambda: bus.client.llen(key) == rounds, timeout=5, what="the last event applied")
    finally:
        stop.set()
        for t in threads:
            t.join(10)
    assert not errors, errors
    assert applied(bus.client, bus.keys, "rec", "XAUUSD") == published
    # both sides of the race were taken, many times: publishes the committing drain read itself (fewer
    # drains than rounds) and publishes that found the flag gone and sent their own wake-up
    assert {d.status for d in drains} <= {DONE, BUSY} and 20 < len(drains) < rounds - 20, len(drains)


def test_entries_trimmed_unread_are_dead_lettered_as_a_range(bus) -> None:
    events = [order(i) for i in range(60)]
    bus.publish_many(events)
    bus.client.xtrim(bus.keys.log("XAUUSD"), maxlen=10, approximate=False)  # the route lags past the cap
    out = drainer(bus).run()
    assert (out.status, out.acked, out.dead_lettered) == (DONE, 10, 1)
    assert applied(bus.client, bus.keys, "rec", "XAUUSD") == [e.event_id for e in events[50:]]
    (dl,) = list_dead_letters(bus.client, bus.keys)
    assert dl.route == "rec" and "50 log entries" in dl.reason and ".." in dl.log_id
    (g,) = [g for g in route_lag(bus.client, bus.keys, bus.dispatcher.routing) if g.route == "rec"]
    assert (g.lag, g.pending) == (0, 0)


def test_pending_entries_trimmed_before_their_ack_are_dead_lettered_each(bus) -> None:
    bus.publish_many([order(i) for i in range(5)])

    def dies(batch):
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        Drainer(bus.client, bus.keys, RECORD, "XAUUSD", dies, config=FAST).run("dead")
    last = order(5)
    bus.publish(last)
    bus.client.xtrim(bus.keys.log("XAUUSD"), maxlen=1, approximate=False)  # the 5 pending entries go
    wait_for(lambda: drainer(bus).run("next").status == DONE, what="the next drain after the lease expired")
    letters = list_dead_letters(bus.client, bus.keys)
    assert len(letters) == 5 and all("trimmed" in d.reason and d.log_id for d in letters)
    assert applied(bus.client, bus.keys, "rec", "XAUUSD") == [last.event_id]


def test_state_projection_as_a_log_route(settings, broker_url) -> None:
    dispatcher = Dispatcher(broker_url, RoutingTable.default(), settings=settings, log_routes=FAST)
    with RedisEventBus(settings.bus_url, key_prefix=settings.key_prefix, dispatcher=dispatcher) as bus:
        bus.publish(TradeEvent.create_order_created("XAUUSD", "s1", "BUY", 2000.0, 1.0))
        for _ in range(3):
            bus.publish(TradeEvent.create_order_partially_filled("XAUUSD", "s1", 2000.0, 0.1))
        state = dispatcher.routing.get("state")
        assert drainer(bus, state).run().status == DONE
        assert get_order(bus.client, Keys(settings.key_prefix), "XAUUSD", "s1")["filled_volume"] == "0.3"


def test_beat_picks_groups_with_waiting_entries_and_no_drainer(bus) -> None:
    bus.publish_many([order(i) for i in range(5)])
    lags = route_lag(bus.client, bus.keys, bus.dispatcher.routing)
    assert {(g.route, g.lag, g.drainer) for g in lags} == {("rec", 5, False), ("poison", 5, False)}
    assert stale(lags, grace_ms=60_000) == []  # young entries: their wake-up is on its way
    wait_for(lambda: len(stale(route_lag(bus.client, bus.keys, bus.dispatcher.routing), grace_ms=50)) == 2,
             what="the waiting entries to grow older than the grace")  # fmt: skip
    bus.client.set(bus.keys.drain_lease("rec", "XAUUSD"), "someone", px=10_000)
    assert [g.route for g in stale(route_lag(bus.client, bus.keys, bus.dispatcher.routing), 50)] == ["poison"]
