"""What an operator watches, read from Redis: queue depths, dead letters, kill switches, task counters.

``snapshot()`` reads them in one round trip (``tradebus top``, ``tradebus metrics``, the demo summary);
``RedisGauges`` exposes them to Prometheus, computed when scraped.
"""

from bus.monitor.snapshot import BusSnapshot, snapshot

__all__ = ["BusSnapshot", "snapshot"]
