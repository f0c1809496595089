"""The app subprocess workers run: celery_app's env-built app, plus the test's private queue prefix."""

import os

from celery_app import make_celery

app = make_celery()
_prefix = os.environ.get("TRADEBUS_TEST_GLOBAL_KEYPREFIX")
if _prefix:
    app.conf.broker_transport_options = {**app.conf.broker_transport_options, "global_keyprefix": _prefix}
