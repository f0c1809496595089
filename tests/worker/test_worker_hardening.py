"""Hostile bytes on the worker's queues: each is dead-lettered as received, the worker lives, the next task runs.

One real ``celery -A celery_app worker`` (prefork) serves the whole module; each test LPUSHes one hostile
entry straight onto a queue (as anyone with access to the broker can), then a good task behind it.
"""

from __future__ import annotations

import base64
import json
import pickle
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import redis

from bus.config import LoadEnvironmentVariables, Settings
from bus.core.keys import Keys
from bus.dispatch.deadletters import BASE64, MAX_CONTENT_BYTES, list_dead_letters
from bus.dispatch.messages import MessageBuilder, redis_queue_key
from bus.events.model import TradeEvent
from celery_app import make_celery
from celery_app.config import MAX_MESSAGE_FACTOR
from tests.helpers import delete_prefix, wait_for

pytestmark = [pytest.mark.redis, pytest.mark.celery, pytest.mark.slow]
MAX_EVENT_BYTES = 4096  # the worker refuses entries over MAX_MESSAGE_FACTOR times this, unparsed
EVENT = TradeEvent.create_order_created("XAUUSD", "h1", "BUY", 2000.0, 1.0)


@pytest.fixture(scope="module")
def hardening(redis_url: str, broker_url: str, subprocess_worker: Any) -> Iterator[dict[str, Any]]:
    prefix = f"tbtest-{uuid.uuid4().hex[:10]}"
    settings = LoadEnvironmentVariables(None, redis_url=redis_url, celery_broker_url=broker_url, key_prefix=prefix,
                                        broker_key_prefix=f"{prefix}:", max_event_bytes=MAX_EVENT_BYTES)  # fmt: skip
    bus = redis.Redis.from_url(redis_url)
    broker = redis.Redis.from_url(broker_url)
    try:
        with subprocess_worker(settings, include="tests.worker_tasks") as proc:
            app = make_celery(settings, set_as_current=False)
            yield {"settings": settings, "proc": proc, "bus": bus, "broker": broker, "app": app}
    finally:
        bus.close()
        broker.close()
        delete_prefix(redis_url, prefix)
        delete_prefix(broker_url, prefix)


def _envelope(app: Any, task: str, args: list[Any], kwargs: dict[str, Any], queue: str, task_id: str) -> dict:
    """A task message exactly as kombu's Redis transport writes it, as a dict to tamper with."""
    return json.loads(MessageBuilder(app).build(task, task_id, args, kwargs, queue)[1])


def _good_call(app: Any, marker: str, queue: str) -> dict:
    return _envelope(app, "tradebus.state.apply", [EVENT.to_json()], {"route": "state"}, queue, marker)


def _with_body(envelope: dict, body: bytes, content_type: str = "application/json") -> dict:
    envelope["body"] = base64.b64encode(body).decode()
    envelope["content-type"] = content_type
    return envelope


def _pickled(app: Any, marker: str, queue: str) -> dict:
    args = ((EVENT.to_json(),), {"route": "state"}, {})
    return _with_body(_good_call(app, marker, queue), pickle.dumps(args), "application/x-python-serialize")


def _bad_header(app: Any, marker: str, queue: str) -> dict:
    envelope = _good_call(app, marker, queue)
    envelope["headers"]["timelimit"] = "soon"  # Celery expects [hard, soft]
    return envelope


def _oversized(app: Any, marker: str, queue: str) -> dict:
    envelope = _good_call(app, marker, queue)
    envelope["headers"]["padding"] = "x" * (MAX_MESSAGE_FACTOR * MAX_EVENT_BYTES)
    return envelope


# (name, queue, entry builder (app, marker, queue) -> bytes | dict, reason fragment, refused by the transport)
Hostile = Callable[[Any, str, str], "bytes | dict"]
HOSTILE: list[tuple[str, str, Hostile, str, bool]] = [
    ("garbage bytes", "tradebus.state", lambda a, m, q: b"\xff\xfe\x00\x81 " + m.encode() + b" \xc3\x28", "not JSON",
     True),
    ("a JSON array", "tradebus.risk", lambda a, m, q: json.dumps([m, 1, {"a": 2}]).encode(),
     "not a message envelope (a JSON list)", True),
    ("a JSON object of the wrong shape", "tradebus.notify", lambda a, m, q: {"hello": "world", "id": m},
     "no properties object", True),
    ("a body that is not base64", "tradebus.state", lambda a, m, q: {**_good_call(a, m, q), "body": "!AAAAA"},
     "body does not decode as base64", True),
    ("a base64 body that is not JSON", "tradebus.risk", lambda a, m, q: _with_body(_good_call(a, m, q), b"{not json"),
     "body does not decode: DecodeError", False),
    ("an envelope without a task name", "tradebus.notify",
     lambda a, m, q: {**_good_call(a, m, q), "headers": {"id": m}}, "not a task message", False),
    ("a pickle-serialised task", "tradebus.state", _pickled, "ContentDisallowed", False),
    ("an unregistered task", "tradebus.risk",
     lambda a, m, q: _envelope(a, "tradebus.nope", [EVENT.to_json()], {}, q, m), "unregistered task 'tradebus.nope'",
     False),
    ("wrong kwargs", "tradebus.state",
     lambda a, m, q: _envelope(a, "tradebus.state.apply", [EVENT.to_json()], {"bogus": 1}, q, m),
     "arguments do not match tradebus.state.apply", False),
    ("wrong args on tradebus.reconcile", "tradebus.reconcile",
     lambda a, m, q: _envelope(a, "tradebus.reconcile.rebuild", ["surplus"], {}, q, m),
     "arguments do not match tradebus.reconcile.rebuild", False),
    ("a body that is not [args, kwargs, embed]", "tradebus.notify",
     lambda a, m, q: _with_body(_good_call(a, m, q), b'"just a string"'), "body is not [args, kwargs, embed]", False),
    ("a header of the wrong type", "tradebus.state", _bad_header, "timelimit is a str", False),
    ("an oversized message", "tradebus.risk", _oversized, "oversized", True),
]  # fmt: skip


@pytest.mark.parametrize(("queue", "build", "reason", "raw_kept"), [h[1:] for h in HOSTILE],
                         ids=[h[0] for h in HOSTILE])  # fmt: skip
def test_hostile_entry_is_dead_lettered_and_the_worker_goes_on(
    hardening: dict[str, Any], worker_log: Any, queue: str, build: Hostile, reason: str, raw_kept: bool
) -> None:
    s: Settings = hardening["settings"]
    app, bus, proc = hardening["app"], hardening["bus"], hardening["proc"]
    marker = f"m-{uuid.uuid4().hex[:12]}"
    entry = build(app, marker, queue)
    raw = entry if isinstance(entry, bytes) else json.dumps(entry).encode()
    # When: the entry lands on the queue, a good task behind it
    hardening["broker"].lpush(redis_queue_key(queue, 0, f"{s.key_prefix}:"), raw)
    app.send_task("tradebus_test.record", args=[EVENT.to_json()], kwargs={"route": marker}, queue=queue)
    # Then: the good task runs, on a worker that is still the one we started
    ran = f"{s.key_prefix}:test:ran"
    wait_for(lambda: f"{marker}|order.created|XAUUSD".encode() in bus.lrange(ran, 0, -1), timeout=30,
             what=f"the good task after {reason!r}\n{worker_log(s)[-3000:]}")  # fmt: skip
    assert proc.poll() is None
    # ...and the hostile entry is in the dead-letter stream: what was received, from where, and why
    (dl,) = [d for d in list_dead_letters(bus, Keys(s.key_prefix), count=10_000) if marker.encode() in d.raw]
    assert dl.queue == queue and reason in dl.reason and dl.attempts == 0
    assert dl.size == len(raw) if raw_kept else dl.size > 0
    if raw_kept:  # refused by the transport: the bytes as popped (the first MAX_CONTENT_BYTES)
        assert dl.raw == raw[:MAX_CONTENT_BYTES] and dl.truncated == (len(raw) > MAX_CONTENT_BYTES)
    else:  # refused by the consumer: the envelope kombu parsed
        assert json.loads(dl.raw) == json.loads(raw)
    assert dl.encoding == ("" if _is_utf8(raw) else BASE64) and dl.event is None
    assert int(bus.hget(Keys(s.key_prefix).stats(), f"refused:{queue}")) >= 1


def _is_utf8(data: bytes) -> bool:
    try:
        data.decode()
    except UnicodeDecodeError:
        return False
    return True


def test_hostile_broadcast_on_the_remote_control_channel_is_dead_lettered(
    hardening: dict[str, Any], worker_log: Any
) -> None:
    s: Settings = hardening["settings"]
    app, bus, broker, proc = hardening["app"], hardening["bus"], hardening["broker"], hardening["proc"]
    marker = f"m-{uuid.uuid4().hex[:12]}"
    db = int(s.broker_url.rsplit("/", 1)[1])
    # When: a JSON array is PUBLISHed on the worker's remote-control (pidbox) fanout channel
    raw = json.dumps([marker, "not an envelope"]).encode()
    channel = f"{s.key_prefix}:/{db}.celery.pidbox"
    wait_for(lambda: broker.publish(channel, raw) == 1, what="the worker subscribed")  # delivered exactly once
    # Then: it is dead-lettered, and the worker still runs tasks
    (dl,) = wait_for(lambda: [d for d in list_dead_letters(bus, Keys(s.key_prefix)) if marker.encode() in d.raw],
                     what=f"the broadcast dead-lettered\n{worker_log(s)[-3000:]}")  # fmt: skip
    assert dl.queue == "celery.pidbox" and "not a message envelope (a JSON list)" in dl.reason
    assert json.loads(dl.raw) == json.loads(raw)
    app.send_task("tradebus_test.record", args=[EVENT.to_json()], kwargs={"route": marker}, queue="tradebus.state")
    wait_for(lambda: f"{marker}|order.created|XAUUSD".encode() in bus.lrange(f"{s.key_prefix}:test:ran", 0, -1),
             what="the next task")  # fmt: skip
    assert proc.poll() is None
