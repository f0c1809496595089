"""Notification sinks against a real local HTTP server, delivery records in a real Redis."""

from __future__ import annotations

import base64
import logging
import socket

import orjson
import pytest

from bus.config import LoadEnvironmentVariables, NotifySettings
from bus.core.keys import Keys
from bus.domain.notify import (
    EVENT_ID_HEADER,
    SIGNATURE_HEADER,
    TIMESTAMP_HEADER,
    LogSink,
    NotifyConfig,
    PermanentNotifyError,
    RetryableError,
    WebhookSink,
    deliver,
    notify_event,
    redact_url,
    should_notify,
    sign,
    verify_signature,
)
from bus.errors import ConfigError
from bus.events.model import TradeEvent

SECRET = "s3cr3t-webhook-key"


def _event() -> TradeEvent:
    return TradeEvent.create_order_rejected("XAUUSD", "o-1", "no margin", correlation_id="c-1")


def _deliver_with_retries(event, sinks, budget, **kw):
    """The retry decision at function level: retry on RetryableError only, up to ``budget`` retries."""
    attempts = 0
    while True:
        attempts += 1
        try:
            return attempts, deliver(event, sinks, **kw)
        except RetryableError:
            if attempts > budget:
                raise


def test_fails_twice_with_500_then_delivered_signed(webhook_receiver, redis_client, key_prefix):
    event = _event()
    with webhook_receiver([500, 500]) as rx:
        sink = WebhookSink(rx.url, SECRET, timeout=5)
        keys = Keys(key_prefix)
        attempts, report = _deliver_with_retries(event, [sink], budget=5, client=redis_client, keys=keys)
        assert attempts == 3
        assert report["sinks"] == [{"sink": sink.name, "status": 200}]
        assert len(rx.requests) == 3
        for req in rx.requests:
            assert orjson.loads(req.body) == event.to_dict()
            assert req.headers[EVENT_ID_HEADER] == event.event_id
            assert req.headers["Content-Type"] == "application/json"
            assert verify_signature(req.body, SECRET, req.headers[TIMESTAMP_HEADER], req.headers[SIGNATURE_HEADER])
        # a redelivered task does not resend what was delivered
        again = deliver(event, [sink], client=redis_client, keys=keys)
        assert again["sinks"][0]["status"] == "already ok"
        assert len(rx.requests) == 3


def test_always_500_exhausts_budget(webhook_receiver):
    with webhook_receiver(default=503) as rx, pytest.raises(RetryableError, match="503"):
        _deliver_with_retries(_event(), [WebhookSink(rx.url, SECRET)], budget=3)
    assert len(rx.requests) == 4  # first attempt + 3 retries


@pytest.mark.parametrize("status", [400, 401, 404, 422])
def test_4xx_is_permanent(webhook_receiver, status):
    with webhook_receiver(default=status) as rx:
        with pytest.raises(PermanentNotifyError, match=str(status)):
            _deliver_with_retries(_event(), [WebhookSink(rx.url, SECRET)], budget=5)
        assert len(rx.requests) == 1


@pytest.mark.parametrize("status", [408, 429])
def test_throttling_4xx_is_retryable(webhook_receiver, status):
    with webhook_receiver([status]) as rx:
        attempts, _ = _deliver_with_retries(_event(), [WebhookSink(rx.url, SECRET)], budget=2)
    assert attempts == 2


def test_redirect_is_not_followed(webhook_receiver):
    with webhook_receiver(default=302) as rx:
        with pytest.raises(PermanentNotifyError, match="302"):
            WebhookSink(rx.url).send(_event())
        assert len(rx.requests) == 1


def test_timeout_is_retryable(webhook_receiver):
    with webhook_receiver([0]) as rx:
        with pytest.raises(RetryableError, match="timed out"):
            WebhookSink(rx.url, timeout=0.2).send(_event())
        # the next attempt goes through
        assert WebhookSink(rx.url, timeout=5).send(_event())["status"] == 200


def test_refused_connection_is_retryable():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()  # nothing listens there now
    with pytest.raises(RetryableError, match="unreachable|connection"):
        WebhookSink(f"http://127.0.0.1:{port}/hook").send(_event())


def test_secret_and_url_credentials_never_logged(webhook_receiver, caplog):
    caplog.set_level(logging.DEBUG)
    with webhook_receiver(default=500) as rx:
        url = rx.url.replace("http://", "http://user:pw-in-url@") + "?token=tok-in-query"
        sink = WebhookSink(url, SECRET)
        with pytest.raises(RetryableError) as err:
            deliver(_event(), [sink])
    text = caplog.text + str(err.value) + repr(sink) + sink.name
    for secret in (SECRET, "pw-in-url", "tok-in-query"):
        assert secret not in text
    # the receiver still gets the full URL, and the URL's credentials as Basic auth
    assert rx.requests[0].path == "/hook?token=tok-in-query"
    assert rx.requests[0].headers["Authorization"] == "Basic " + base64.b64encode(b"user:pw-in-url").decode()


def test_partial_failure_retries_only_failed_sink(webhook_receiver, redis_client, key_prefix):
    keys = Keys(key_prefix)
    event = _event()
    with webhook_receiver() as ok, webhook_receiver([500]) as flaky:
        sinks = [WebhookSink(ok.url, SECRET), WebhookSink(flaky.url, SECRET)]
        with pytest.raises(RetryableError):
            deliver(event, sinks, client=redis_client, keys=keys)
        report = deliver(event, sinks, client=redis_client, keys=keys)
        assert [r["status"] for r in report["sinks"]] == ["already ok", 200]
        assert len(ok.requests) == 1 and len(flaky.requests) == 2


def test_signature_binds_body_and_timestamp():
    body = b'{"a":1}'
    sig = sign(body, SECRET, "1700000000")
    assert verify_signature(body, SECRET, "1700000000", sig, now=1700000010)
    assert not verify_signature(b'{"a":2}', SECRET, "1700000000", sig, now=1700000010)
    assert not verify_signature(body, "other", "1700000000", sig, now=1700000010)
    assert not verify_signature(body, SECRET, "1700000001", sig, now=1700000010)
    assert not verify_signature(body, SECRET, "1700000000", sig, now=1700009999)  # too old


def test_config_from_settings_and_filter(caplog, monkeypatch):
    caplog.set_level(logging.INFO)
    for var, value in {
        "TRADEBUS_WEBHOOK_URL": "http://a.example/h, https://b.example/h",
        "TRADEBUS_WEBHOOK_SECRET": SECRET,
        "TRADEBUS_WEBHOOK_TIMEOUT": "2.5",
        "TRADEBUS_NOTIFY_TYPES": "risk.*,position.closed",
    }.items():
        monkeypatch.setenv(var, value)
    cfg = NotifyConfig.from_settings(LoadEnvironmentVariables(None).notify)
    assert cfg.webhook_urls == ("http://a.example/h", "https://b.example/h")
    assert cfg.timeout == 2.5 and SECRET not in repr(cfg)
    assert [s.name for s in cfg.sinks()] == ["log", "webhook:http://a.example/h", "webhook:https://b.example/h"]
    breach = TradeEvent.create_risk_limit_breached("XAUUSD", "max_order_volume", 1.0, 2.0)
    assert should_notify(breach, cfg.event_types)
    assert not should_notify(TradeEvent.create_order_created("XAUUSD", "o", "BUY", 1.0, 1.0), cfg.event_types)
    assert notify_event(TradeEvent.create_signal_validated("XAUUSD", "s1"), cfg)["skipped"]
    log_only = NotifyConfig.from_settings(NotifySettings())
    assert notify_event(breach, log_only)["sinks"] == [{"sink": "log", "status": "logged"}]
    assert breach.event_id in caplog.text
    monkeypatch.setenv("TRADEBUS_WEBHOOK_TIMEOUT", "soon")
    with pytest.raises(ConfigError):
        LoadEnvironmentVariables(None)
    with pytest.raises(ConfigError):
        WebhookSink("ftp://x/y")


def test_log_sink_reports():
    assert LogSink().send(_event()) == {"sink": "log", "status": "logged"}


def test_redact_url():
    assert redact_url("https://u:p@h.example:8443/x?k=v#f") == "https://h.example:8443/x"
