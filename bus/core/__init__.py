"""The bus itself: one-round-trip publish (log + broadcast), self-healing subscriptions, the state
projection, the key layout and the wire format. Knows nothing of Celery."""
