"""The bare-Celery baseline worker app for bench_dispatch: Celery's defaults, only a broker URL.

``global_keyprefix`` (TRADEBUS_BROKER_KEY_PREFIX) keeps the bench's queues private on a shared Redis,
exactly as for the tradebus worker it is compared with.
"""

import os

from celery import Celery

app = Celery("bare", broker=os.environ["CELERY_BROKER_URL"])
_prefix = os.environ.get("TRADEBUS_BROKER_KEY_PREFIX")
if _prefix:
    app.conf.broker_transport_options = {"global_keyprefix": _prefix}
