"""bench_worker's baseline worker app: tradebus' app with the worker as it was before the hardening — kombu's
own entry parsing (no refusal of bad entries), no held-messages heartbeat, Celery's own consumer (no argument
check) — and still one redis-py client per pool, so only the guards differ."""

import os

from kombu.transport import redis as kombu_redis
from kombu.transport import virtual

from celery_app import make_celery, transport


class Channel(transport.Channel):
    Message = virtual.Message
    _brpop_read = kombu_redis.Channel._brpop_read


class Transport(transport.Transport):
    Channel = Channel


app = make_celery()
app.conf.broker_transport = f"{__name__}:Transport"
app.conf.worker_consumer = "celery.worker.consumer:Consumer"
_options = {**app.conf.broker_transport_options, "global_keyprefix": os.environ["TRADEBUS_BROKER_KEY_PREFIX"]}
for _guard in ("max_message_bytes", "unacked_refresh_interval"):
    _options.pop(_guard)
app.conf.broker_transport_options = _options
