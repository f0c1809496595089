"""Named defaults, one line each on why."""

# Channel namespace fixed by the reference README: trades:{symbol}:{event_type}.
CHANNEL_PREFIX = "trades"
# Prefix of every Redis key tradebus owns; tests and tenants use their own.
DEFAULT_KEY_PREFIX = "tradebus"
# Approximate length each symbol's event log is trimmed to (XADD MAXLEN ~).
DEFAULT_LOG_MAXLEN = 100_000
# An encoded event larger than this is refused: pub/sub and broker messages should stay small.
DEFAULT_MAX_EVENT_BYTES = 64 * 1024
# Seconds an order / position is kept after it reached a terminal state (and a risk breach marker is
# kept); 0 keeps them forever. A week covers redelivery, retries and dead-letter replays.
DEFAULT_STATE_RETENTION = 7 * 24 * 3600
# Symbols become part of channel and key names; longer ones are refused.
MAX_SYMBOL_LENGTH = 64
# Seconds a client waits to connect / for a reply before it gives up (half-open sockets, celery#10569).
DEFAULT_CONNECT_TIMEOUT = 5.0
DEFAULT_SOCKET_TIMEOUT = 5.0
# Seconds between PINGs on idle connections.
DEFAULT_HEALTH_CHECK_INTERVAL = 15
# The broker lives on the same Redis by default, in the database after the bus's.
BROKER_DB_OFFSET = 1
# Current envelope schema version; bump on incompatible changes.
SCHEMA_VERSION = 1
