"""What the tasks do: risk checks, notifications, reconciliation (and its lease). Plain functions on
Redis, testable without a worker; celery_app wraps them in tasks."""
