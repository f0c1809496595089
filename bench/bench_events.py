"""Build + serialise one event with a helper, beside a plain dict + json.dumps of the same fields.

    python bench/bench_events.py [--n 50000]

Prints microseconds per event for each path, measured in the same process, and their ratios.
"""

from __future__ import annotations

import argparse
import json
import statistics
import timeit
import uuid
from datetime import UTC, datetime

import orjson

from bus import TradeEvent
from bus.core.wire import decode_entry


def helper_encode() -> bytes:
    return TradeEvent.create_order_created(
        symbol="XAUUSD", order_id="12345", order_type="BUY", price=2000.50, volume=0.1, sl=1995.0, tp=2010.0
    ).encode()


def plain_fields() -> dict:
    """The same envelope as a plain dict (fresh id and timestamp each time, as a helper makes)."""
    return {
        "event_id": uuid.uuid4().hex,
        "event_type": "order.created",
        "symbol": "XAUUSD",
        "timestamp": datetime.now(UTC).isoformat(),
        "data": {"order_id": "12345", "order_type": "BUY", "price": 2000.50, "volume": 0.1, "sl": 1995.0, "tp": 2010.0},
        "correlation_id": None,
        "causation_id": None,
        "source": None,
        "schema_version": 1,
    }


def plain_json() -> str:
    return json.dumps(plain_fields())


def plain_orjson() -> bytes:
    return orjson.dumps(plain_fields())


RAW = helper_encode()


def decode() -> TradeEvent:
    return TradeEvent.from_json(RAW)


ENTRY = {b"type": b"order.created", b"event": RAW}


def trusted_decode() -> TradeEvent | None:
    """What the subscriber and log readers do with an event this bus wrote (log entry or broadcast)."""
    return decode_entry(ENTRY)


def plain_decode() -> dict:
    return json.loads(RAW)


def per_call_us(fn, n: int, repeat: int = 5) -> float:
    return statistics.median(timeit.repeat(fn, number=n, repeat=repeat)) / n * 1e6


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--n", type=int, default=50_000)
    n = parser.parse_args().n
    rows = [
        ("dict + json.dumps (baseline)", per_call_us(plain_json, n)),
        ("dict + orjson.dumps", per_call_us(plain_orjson, n)),
        ("TradeEvent.create_order_created().encode()", per_call_us(helper_encode, n)),
        ("json.loads (baseline)", per_call_us(plain_decode, n)),
        ("TradeEvent.from_json()", per_call_us(decode, n)),
        ("trusted decode of a log entry (decode_entry)", per_call_us(trusted_decode, n)),
    ]
    base_enc, base_dec = rows[0][1], rows[3][1]
    print(f"{'path':48} {'µs/event':>9} {'vs baseline':>12}")
    for name, us in rows:
        base = base_dec if "loads" in name or "decode" in name or "from_json" in name else base_enc
        print(f"{name:48} {us:9.2f} {us / base:11.2f}x")


if __name__ == "__main__":
    main()
