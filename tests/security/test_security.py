"""Safe by default, end to end on servers these tests own: a password, ACL users, TLS (server and mutual), secrets
never logged. JSON-only workers (a pickle message is refused) are proven in
tests/celery_app/test_celery_tasks.py::test_pickle_message_is_refused.

ACL rules a deployment needs (worked out here; checked by asserting an empty ``ACL LOG``):

* keys: ``~<TRADEBUS_KEY_PREFIX>:*`` (log, state, pending dispatch, dead letters, stats) and, for
  whoever touches the broker, ``~<TRADEBUS_BROKER_KEY_PREFIX>*`` (queues, ``_kombu.binding.*``,
  ``unacked*``: kombu's global_keyprefix covers them all);
* channels: ``&trades:*`` to publish and SUBSCRIBE (``subscribe``), and for a worker the exact
  pattern ``&<broker prefix>/<broker db>.celery.pidbox``. Redis checks a PSUBSCRIBE pattern
  literally against the granted patterns, so ``subscribe_all`` (``trades:XAUUSD:*``) and
  ``subscribe_type`` need their exact patterns granted (or ``allchannels``); ``subscribe_everything``
  (``trades:*``) is covered by ``&trades:*``;
* commands: ``-@all +@read +@write +@pubsub +@scripting +@transaction +@connection -@dangerous
  +time +select`` is enough for the bus, the projection, the dispatcher and a worker.
"""

from __future__ import annotations

import asyncio
import logging
import os
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import pytest
import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from bus.config import LoadEnvironmentVariables, Settings
from bus.core.bus import RedisEventBus
from bus.dispatch.deadletters import list_dead_letters
from bus.dispatch.dispatcher import Dispatcher
from bus.dispatch.routing import RetryPolicy, Route, RoutingTable
from bus.errors import BusConnectionError, BusPermissionError
from bus.events.model import TradeEvent
from celery_app import make_celery
from tests.helpers import dispatcher_for, wait_for

pytestmark = [pytest.mark.redis, pytest.mark.celery, pytest.mark.faults]

REPO = Path(__file__).resolve().parents[2]
COMMANDS = (
    "-@all",
    "+@read",
    "+@write",
    "+@pubsub",
    "+@scripting",
    "+@transaction",
    "+@connection",
    "-@dangerous",
    "+time",
    "+select",
)


def _prefix() -> str:
    return f"sec{uuid.uuid4().hex[:8]}"


def _app(settings: Settings, routing: RoutingTable | None = None) -> Any:
    """The production Celery app for ``settings`` (its broker key prefix is TRADEBUS_BROKER_KEY_PREFIX)."""
    return make_celery(settings, routing, set_as_current=False)


def _order_flow(own_worker: Any, settings: Settings, app: Any, order_id: str) -> tuple[RedisEventBus, list[TradeEvent]]:
    """publish -> a listening subscriber receives it -> a real worker runs the state task -> get_order."""
    got: list[TradeEvent] = []
    ev = TradeEvent.create_order_created("XAUUSD", order_id, "BUY", 2000.5, 0.1)
    with RedisEventBus(settings=settings, dispatcher=dispatcher_for(app, settings)) as bus:
        bus.subscribe("XAUUSD", "order.created", got.append)
        handle = bus.listen_in_thread()
        assert handle.wait_ready(5), f"listener not ready: {handle.error}"
        with own_worker(app, queues="tradebus.state"):
            receipt = bus.publish(ev)
            assert receipt.subscribers == 1 and "state" in receipt.dispatched, receipt
            order = wait_for(lambda: bus.get_order("XAUUSD", order_id), timeout=10, what="the state task")
        wait_for(lambda: got, timeout=5, what="the subscriber")
        handle.stop()
        handle.join(5)
    assert [e.event_id for e in got] == [ev.event_id]
    assert order["status"] == "pending" and order["price"] == "2000.5", order
    return bus, got


# --- 1. password + ACL users ---------------------------------------------------------------------


def _setuser(admin: redis.Redis, user: str, password: str, *rules: str) -> None:
    admin.execute_command("ACL", "SETUSER", user, "reset", "resetchannels", "on", f">{password}", *rules, *COMMANDS)


@pytest.mark.parametrize("layout", ["one_user", "bus_and_broker_users"])
def test_acl_users_publish_subscribe_and_worker(acl_server, own_worker, layout) -> None:
    """One ACL user for everything (task messages join the bus's MULTI), or least privilege: the
    executor's user cannot touch the queues, the broker user cannot touch the bus keys' channels."""
    admin, port, p = acl_server.admin(), acl_server.port, _prefix()
    qp = f"{p}-q:"  # broker key prefix
    pidbox = f"&{qp}/1.celery.pidbox"
    if layout == "one_user":
        _setuser(admin, "trader", "trader-pw", f"~{p}:*", f"~{qp}*", "&trades:*", pidbox)
        broker = None  # default: the bus's Redis, database 1, same user
    else:
        _setuser(admin, "trader", "trader-pw", f"~{p}:*", "&trades:*")
        _setuser(admin, "celery", "celery-pw", f"~{qp}*", pidbox)
        broker = f"redis://celery:celery-pw@127.0.0.1:{port}/1"
    admin.execute_command("ACL", "LOG", "RESET")
    s = LoadEnvironmentVariables(
        None,
        redis_url=f"redis://trader:trader-pw@127.0.0.1:{port}/0",
        celery_broker_url=broker,
        key_prefix=p,
        broker_key_prefix=qp,
    )
    app = _app(s)
    bus, _ = _order_flow(own_worker, s, app, "acl-1")
    assert bus.dispatcher.stages_in_bus_pipeline is (layout == "one_user")
    # the task messages really went through the prefixed queue keys the ACL allows
    assert acl_server.admin(db=1).exists(f"{qp}_kombu.binding.tradebus.state")
    assert acl_server.acl_log() == [], "the ACL refused something (retried or swallowed somewhere)"
    if layout == "bus_and_broker_users":  # the executor's user really cannot reach the queues
        trader = redis.Redis(port=port, username="trader", password="trader-pw", db=1)
        with pytest.raises(redis.exceptions.NoPermissionError):
            trader.llen(f"{qp}tradebus.state")
        trader.close()


def test_user_without_channel_access_gets_a_clear_error(acl_server, caplog) -> None:
    admin, port, p = acl_server.admin(), acl_server.port, _prefix()
    _setuser(admin, "nochan", "pw1", f"~{p}:*")  # keys, but no &trades:*
    _setuser(admin, "chan", "pw2", f"~{p}:*", "&trades:*")
    nochan = LoadEnvironmentVariables(
        None, redis_url=f"redis://nochan:pw1@127.0.0.1:{port}/0", key_prefix=p, dispatch=False
    )
    chan = LoadEnvironmentVariables(
        None, redis_url=f"redis://chan:pw2@127.0.0.1:{port}/0", key_prefix=p, dispatch=False
    )
    ev = TradeEvent.create_order_created("XAUUSD", "np-1", "BUY", 1.0, 1.0)
    with RedisEventBus(settings=nochan) as bus:
        # publish: Redis refuses the PUBLISH inside the script; the caller gets an error, not a drop
        with pytest.raises(redis.ResponseError, match="publish to the channel"):
            bus.publish(ev)
        # listen_in_thread: the listener logs why and stops (no silent NOPERM loop, no dead thread)
        bus.subscribe("XAUUSD", "order.created", lambda e: None)
        caplog.set_level(logging.ERROR, logger="bus.core.subscriber")
        handle = bus.listen_in_thread()
        handle.join(5)
        assert not handle.is_alive() and not handle.wait_ready(0)
        assert isinstance(handle.error, BusPermissionError)
        assert "'nochan'" in str(handle.error) and "&trades:*" in str(handle.error)
        assert "trades:XAUUSD:order.created" in str(handle.error)
        assert [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR] == [str(handle.error)]
        assert bus.counters.reconnects == 0
        # listen() in the foreground raises it (catchable as redis' NoPermissionError too)
        with pytest.raises(redis.exceptions.NoPermissionError, match="&trades:\\*"):
            bus.listen()
    # &trades:* covers SUBSCRIBE and PSUBSCRIBE trades:*, but a narrower pattern must be granted literally
    with RedisEventBus(settings=chan) as bus:
        bus.subscribe_all("XAUUSD", lambda e: None)
        with pytest.raises(BusPermissionError, match=r"trades:XAUUSD:\*"):
            bus.listen()
    with RedisEventBus(settings=chan) as bus:
        got: list[TradeEvent] = []
        bus.subscribe_everything(got.append)
        handle = bus.listen_in_thread()
        assert handle.wait_ready(5), handle.error
        bus.publish(ev)
        wait_for(lambda: got, timeout=5, what="subscribe_everything with &trades:*")
        handle.stop()
        handle.join(5)


# --- 2. TLS ----------------------------------------------------------------------------------------


def _tls_settings(
    port: int,
    certs: dict[str, Any],
    *,
    ca: Path | None = None,
    client: bool = False,
    broker_port: int | None = None,
    **kw: Any,
) -> Settings:
    opts: dict[str, Any] = {"redis_ssl_ca_certs": str(ca or certs["ca"][0])}
    if client:
        opts.update(redis_ssl_certfile=str(certs["client"][0]), redis_ssl_keyfile=str(certs["client"][1]))
    if broker_port is not None:
        opts["celery_broker_url"] = f"rediss://127.0.0.1:{broker_port}/1"
    p = _prefix()
    return LoadEnvironmentVariables(
        None, redis_url=f"rediss://127.0.0.1:{port}/0", key_prefix=p, broker_key_prefix=f"{p}-q:", **opts, **kw
    )


def test_tls_bus_and_worker_on_the_same_server(certs, tls_server, own_worker) -> None:
    """rediss:// bus; the broker defaults to rediss:// database 1 of it; the worker uses broker_use_ssl."""
    with tls_server(certs["ca"][0], certs["server"]) as server:
        s = _tls_settings(server.port, certs)
        assert s.broker_url == f"rediss://127.0.0.1:{server.port}/1"
        app = _app(s)
        assert app.conf.broker_use_ssl["ssl_ca_certs"] == str(certs["ca"][0])
        bus, _ = _order_flow(own_worker, s, app, "tls-1")
        assert bus.dispatcher.stages_in_bus_pipeline
        with RedisEventBus(settings=s) as bus:  # queries over TLS
            assert [e.data["order_id"] for _, e in bus.read_log("XAUUSD")] == ["tls-1"]
            assert bus.is_connected
        # the server really is TLS only: a plain connection gets nowhere
        plain = redis.Redis(port=server.port, socket_connect_timeout=1, socket_timeout=1, retry=Retry(NoBackoff(), 0))
        with pytest.raises((redis.ConnectionError, redis.TimeoutError)):
            plain.ping()
        plain.close()


def test_mutual_tls_with_a_separate_broker_server(certs, tls_server, own_worker) -> None:
    """Client certificates required; the broker is another TLS server, so the dispatcher's own
    broker client and the worker both do TLS with REDIS_SSL_CERTFILE / KEYFILE."""
    ca, srv, cli = certs["ca"][0], certs["server"], certs["client"]
    with (
        tls_server(ca, srv, auth_clients=True, client_cert=cli) as bus_server,
        tls_server(ca, srv, auth_clients=True, client_cert=cli) as broker_server,
    ):
        # without a client certificate: refused, with a clear error, quickly
        no_cert = _tls_settings(bus_server.port, certs, redis_connect_timeout=2, redis_socket_timeout=2)
        t0 = time.monotonic()
        with pytest.raises(BusConnectionError, match=f"127.0.0.1:{bus_server.port}"):
            RedisEventBus(settings=no_cert)
        assert time.monotonic() - t0 < 8
        s = _tls_settings(bus_server.port, certs, client=True, broker_port=broker_server.port)
        app = _app(s)
        assert app.conf.broker_use_ssl["ssl_certfile"] == str(cli[0])
        bus, _ = _order_flow(own_worker, s, app, "mtls-1")
        assert not bus.dispatcher.stages_in_bus_pipeline
        queued = broker_server.admin(db=1).keys(f"{s.broker_key_prefix}*")
        assert f"{s.broker_key_prefix}_kombu.binding.tradebus.state" in queued


def test_asyncio_bus_over_tls(certs, tls_server) -> None:
    """bus.aio builds its redis.asyncio clients from the same TLS settings: publish, a stream, PING."""
    from bus.aio import AsyncRedisEventBus

    ev = TradeEvent.create_order_created("XAUUSD", "tls-aio", "BUY", 2000.5, 0.1)

    async def main(s: Settings) -> None:
        async with AsyncRedisEventBus(settings=s) as bus, bus.events(symbol="XAUUSD") as stream:
            assert (await bus.publish(ev)).subscribers == 1
            assert await stream.__anext__() == ev
            assert await bus.is_connected()

    with tls_server(certs["ca"][0], certs["server"]) as server:
        asyncio.run(main(_tls_settings(server.port, certs, dispatch=False)))


def test_tls_wrong_ca_is_refused_with_a_clear_error(certs, tls_server) -> None:
    with tls_server(certs["ca"][0], certs["server"]) as server:
        s = _tls_settings(server.port, certs, ca=certs["other_ca"][0], redis_connect_timeout=2, redis_socket_timeout=2)
        t0 = time.monotonic()
        with pytest.raises(BusConnectionError, match="CERTIFICATE_VERIFY_FAILED") as err:
            RedisEventBus(settings=s)
        assert time.monotonic() - t0 < 8, "a wrong CA must fail fast, not hang"
        assert f"127.0.0.1:{server.port}" in str(err.value)
        # the dispatcher's broker client refuses it too: publish leaves the tasks pending (at-least-once tasks)
        d = Dispatcher.from_settings(s)
        ev = TradeEvent.create_order_created("XAUUSD", "x", "BUY", 1.0, 1.0)
        assert d.send(ev, ev.to_json(), d.routes_for(ev)) == ((), ("state", "risk"))
        d.close()


# --- 3. secrets never logged ---------------------------------------------------------------------

SECRET = "h7-Sekr1t-Pw-8c2e"


def _cli(args: list[str], env: dict[str, str], cwd: Path) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "bus.cli", *args],
        cwd=cwd,
        env=env,
        text=True,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )


def test_secrets_never_logged(password_server, own_worker, caplog, capfd, tmp_path) -> None:
    caplog.set_level(logging.DEBUG)
    fail = RoutingTable(
        [
            Route("state", "tradebus.state.apply", "tradebus.state", ("order.*",)),
            Route("boom", "tradebus_test.permanent", "tradebus.notify", ("order.*",), retry=RetryPolicy(max_retries=0)),
        ]
    )
    with password_server(SECRET) as server:
        p = _prefix()
        s = LoadEnvironmentVariables(
            None,
            redis_host="127.0.0.1",
            redis_port=server.port,
            redis_password=SECRET,
            key_prefix=p,
            broker_key_prefix=f"{p}-q:",
        )
        assert SECRET in s.bus_url and SECRET in s.broker_url  # the secret really is in play
        env = {k: v for k, v in os.environ.items() if not k.startswith(("REDIS_", "CELERY_", "TRADEBUS_"))}
        env.update(
            REDIS_HOST="127.0.0.1",
            REDIS_PORT=str(server.port),
            REDIS_PASSWORD=SECRET,
            TRADEBUS_KEY_PREFIX=p,
            PYTHONPATH=str(REPO),
        )
        bad_env = {**env, "REDIS_PASSWORD": "wrong-" + SECRET}
        clis = [
            _cli(["doctor", "--ping-timeout", "0.3"], env, tmp_path),
            _cli(
                ["publish", "order.created", "XAUUSD", "order_id=cli-1", "order_type=BUY", "price=1", "volume=1"],
                env,
                tmp_path,
            ),
            _cli(["doctor", "--ping-timeout", "0.3"], bad_env, tmp_path),
            _cli(
                ["publish", "order.created", "XAUUSD", "order_id=cli-2", "order_type=BUY", "price=1", "volume=1"],
                bad_env,
                tmp_path,
            ),
        ]
        # in-process: publish, a worker whose task fails, reprs, a wrong password
        app = _app(s, fail)
        d = dispatcher_for(app, s)
        with RedisEventBus(settings=s, dispatcher=d) as bus, own_worker(app, queues="tradebus.state,tradebus.notify"):
            bus.publish(TradeEvent.create_order_created("XAUUSD", "sec-1", "BUY", 1.0, 1.0))
            wait_for(lambda: list_dead_letters(bus.client, bus.keys), timeout=10, what="the failed task")
            wait_for(lambda: bus.get_order("XAUUSD", "sec-1"), timeout=10, what="the state task")
            texts = [repr(bus), str(bus), repr(d), repr(s), str(s), repr(Dispatcher.from_settings(s))]
        wrong = LoadEnvironmentVariables(None, redis_url=f"redis://:wrong-{SECRET}@127.0.0.1:{server.port}/0")
        with pytest.raises(BusConnectionError) as err:
            RedisEventBus(settings=wrong)
        texts.append(str(err.value))
        broken = Dispatcher(f"redis://:{SECRET}@127.0.0.1:{server.port + 1}/1", settings=s)
        ev = TradeEvent.create_order_created("XAUUSD", "sec-2", "BUY", 1.0, 1.0)
        assert broken.send(ev, ev.to_json(), broken.routes_for(ev))[0] == ()  # logs a warning
        outs = []
        for proc in clis:
            out, _ = proc.communicate(timeout=60)
            outs.append((proc.returncode, out))
    (ok_doctor, ok_pub, bad_doctor, bad_pub) = outs
    assert ok_pub[0] == 0, ok_pub
    assert "redis" in ok_doctor[1] and "answers" in ok_doctor[1], ok_doctor
    assert bad_doctor[0] == 1 and bad_pub[0] == 1, (bad_doctor, bad_pub)
    logged = [r.getMessage() for r in caplog.records] + [str(r.args) for r in caplog.records]
    assert any("dispatch to" in m for m in logged) and any("boom" in m or "permanent" in m for m in logged)
    captured = capfd.readouterr()
    everything = "\n".join([*texts, *logged, *(o for _, o in outs), captured.out, captured.err])
    assert SECRET not in everything, [line for line in everything.splitlines() if SECRET in line][:5]
