"""Events trimmed from the log before a subscriber read them (TRADEBUS_LOG_MAXLEN): the subscriber says how
many and which, in a counter, an ERROR log and a LostEvents notice, for the blocking and the asyncio bus."""

from __future__ import annotations

import logging
from typing import Any

import pytest

from bus import LostEvents
from tests.core.test_bus_subscribe import listening, lose_broadcast, order, signal_event
from tests.helpers import wait_for

pytestmark = pytest.mark.redis

SYM = "LOSS"


def log_ids(bus: Any) -> list[str]:
    return [log_id for log_id, _ in bus.read_log(SYM)]


def test_a_gap_the_trimmed_log_cannot_cover_is_reported_with_its_count_and_range(bus, publisher, redis_client, caplog):
    # Given a subscription to the symbol and one to a type of it, and a lost-events callback
    wide: list[str] = []
    exact: list[str] = []
    notices: list[LostEvents] = []
    bus.subscribe_all(SYM, lambda e: wide.append(e.data.get("order_id", "sig")))
    bus.subscribe(SYM, "order.created", lambda e: exact.append(e.data["order_id"]))
    bus.on_lost_events(notices.append)
    handle = listening(bus)
    publisher.publish(order(1, SYM))
    wait_for(lambda: wide == ["1"] and exact == ["1"], what="the first event")
    # When four broadcasts are lost and the log is trimmed to the last of them before the next arrives
    for event in (order(2, SYM), order(3, SYM), signal_event(SYM), order(4, SYM)):
        lose_broadcast(publisher, event)
    first_id, *_, kept_id = log_ids(publisher)
    redis_client.xtrim(publisher.keys.log(SYM), maxlen=1, approximate=False)
    publisher.publish(order(5, SYM))
    # Then what the log still has is delivered, and the three trimmed events are reported to each
    wait_for(lambda: wide[-1:] == ["5"] and exact[-1:] == ["5"], what="the last event")
    assert wide == exact == ["1", "4", "5"]
    expected = {
        LostEvents(name, SYM, first_id, kept_id, 3) for name in (f"trades:{SYM}:*", f"trades:{SYM}:order.created")
    }
    assert set(notices) == expected
    c = bus.counters
    assert c.gaps_lost == 2 and c.events_lost == 6 and c.recovered_from_log == 2, c
    errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert any("3 events of LOSS" in m and first_id in m and kept_id in m for m in errors), errors
    handle.stop()
    handle.join(5)


def test_a_subscriber_away_longer_than_the_log_reports_the_loss_on_reconnect(bus, publisher, redis_client):
    seen: list[str] = []
    notices: list[LostEvents] = []
    bus.subscribe_all(SYM, lambda e: seen.append(e.data["order_id"]))
    bus.on_lost_events(notices.append)
    handle = listening(bus)
    publisher.publish(order(1, SYM))
    wait_for(lambda: seen == ["1"], what="the first event")
    handle.stop()
    handle.join(5)
    # Given five events published while the listener was away, of which the log keeps two
    for i in range(2, 7):
        publisher.publish(order(i, SYM))
    redis_client.xtrim(publisher.keys.log(SYM), maxlen=2, approximate=False)
    first_kept = log_ids(publisher)[0]
    # When it listens again, it catches up with what is left and reports the three it lost
    handle = listening(bus)
    wait_for(lambda: seen[-1:] == ["6"], what="the catch-up")
    assert seen == ["1", "5", "6"]
    ((notice,),) = [notices]
    assert (notice.symbol, notice.before, notice.count) == (SYM, first_kept, 3)
    assert bus.counters.events_lost == 3
    handle.stop()
    handle.join(5)


def test_a_failing_callback_is_counted_and_delivery_goes_on(bus, publisher, redis_client):
    seen: list[str] = []

    def bad(notice: LostEvents) -> None:
        raise RuntimeError("callback bug")

    bus.subscribe_all(SYM, lambda e: seen.append(e.data["order_id"]))
    bus.on_lost_events(bad)
    handle = listening(bus)
    publisher.publish(order(1, SYM))
    wait_for(lambda: seen == ["1"], what="the first event")
    lose_broadcast(publisher, order(2, SYM))
    lose_broadcast(publisher, order(3, SYM))
    redis_client.xtrim(publisher.keys.log(SYM), maxlen=1, approximate=False)
    publisher.publish(order(4, SYM))
    wait_for(lambda: seen[-1:] == ["4"], what="the last event")
    assert seen == ["1", "3", "4"]
    assert bus.counters.handler_errors == 1 and bus.counters.events_lost == 1
    assert handle.is_alive()
    handle.stop()
    handle.join(5)
