"""Notification sinks: the log, and HTTP webhooks signed with HMAC-SHA256.

Webhook request: ``POST <url>`` with the event's JSON as the body and the headers

- ``X-Tradebus-Timestamp``: Unix seconds when this attempt was signed;
- ``X-Tradebus-Signature: sha256=<hex>``: HMAC-SHA256 with the shared secret over
  ``"<timestamp>." + body`` — binding the timestamp lets a receiver refuse replays (``verify_signature``);
- ``X-Tradebus-Event-Id``: the event id, the same on every retry, for the receiver to deduplicate.

Outcome: 2xx delivered; 5xx, 408, 429, timeouts, refused / reset connections and DNS failures raise
RetryableError (the task retries with backoff); any other status, including redirects, raises
PermanentNotifyError (no retry). The secret and the URL's credentials / query never reach a log or an
error message (``redact_url``).
"""

from __future__ import annotations

import base64
import fnmatch
import hashlib
import hmac
import logging
import socket
import time
import urllib.error
import urllib.request
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol
from urllib.parse import unquote, urlsplit, urlunsplit

import redis

from bus.config import NotifySettings
from bus.core.keys import Keys
from bus.errors import BusError, ConfigError
from bus.events.model import TradeEvent
from bus.observability.logs import event_fields

log = logging.getLogger(__name__)

# Seconds a webhook may take to answer before the attempt counts as failed (and is retried).
DEFAULT_WEBHOOK_TIMEOUT = 5.0
# Event types that notify: every event the routing table sends to the notify task (its default route
# picks risk events, rejections, failures and closes); TRADEBUS_NOTIFY_TYPES narrows it further.
DEFAULT_NOTIFY_TYPES = ("*",)
# Seconds a per-event delivery record is kept (longer than any retry schedule).
NOTIFIED_TTL_SECONDS = 7 * 24 * 3600
SIGNATURE_HEADER = "X-Tradebus-Signature"
TIMESTAMP_HEADER = "X-Tradebus-Timestamp"
EVENT_ID_HEADER = "X-Tradebus-Event-Id"
# Statuses that mean "try again later" although they are 4xx.
_RETRYABLE_4XX = frozenset({408, 429})


class NotifyError(BusError):
    """A notification could not be delivered."""


class RetryableError(NotifyError):
    """Transient failure (5xx, timeout, refused connection): retry with backoff."""

    retryable = True  # read by the base task (celery_app/tasks/base.py)


class PermanentNotifyError(NotifyError):
    """The receiver refused the notification (4xx, redirect, bad URL): retrying will not help."""

    retryable = False  # the base task dead-letters it at once


def redact_url(url: str) -> str:
    """``scheme://host:port/path`` — no user info, no query (tokens often hide there), no fragment."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    if parts.port:
        host = f"{host}:{parts.port}"
    return urlunsplit((parts.scheme, host, parts.path, "", ""))


def sign(body: bytes, secret: str, timestamp: str) -> str:
    """The signature header value: ``sha256=<hex HMAC-SHA256 of "<timestamp>." + body>``."""
    mac = hmac.new(secret.encode(), timestamp.encode() + b"." + body, hashlib.sha256)
    return "sha256=" + mac.hexdigest()


def verify_signature(
    body: bytes,
    secret: str,
    timestamp: str,
    signature: str,
    *,
    tolerance_s: float = 300.0,
    now: float | None = None,
) -> bool:
    """For receivers: the signature matches and the timestamp is within ``tolerance_s`` of now."""
    try:
        ts = float(timestamp)
    except (TypeError, ValueError):
        return False
    if abs((time.time() if now is None else now) - ts) > tolerance_s:
        return False
    return hmac.compare_digest(sign(body, secret, timestamp), signature or "")


class Sink(Protocol):
    name: str

    def send(self, event: TradeEvent) -> dict[str, Any]: ...


@dataclass
class LogSink:
    """Writes one INFO line per event to the ``tradebus.notify`` logger."""

    name: str = "log"
    logger: logging.Logger = field(default=log)

    def send(self, event: TradeEvent) -> dict[str, Any]:
        self.logger.info(
            "trade event %s %s %s data=%s", event.event_type.value, event.symbol, event.event_id, event.data
        )
        return {"sink": self.name, "status": "logged"}


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args: Any, **kwargs: Any) -> None:
        return None  # a redirect surfaces as an HTTPError (3xx) -> permanent


class WebhookSink:
    """POSTs the event JSON to one URL, signed when a secret is set."""

    def __init__(
        self, url: str, secret: str | None = None, *, timeout: float = DEFAULT_WEBHOOK_TIMEOUT, name: str | None = None
    ) -> None:
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ConfigError(f"webhook URL {redact_url(url)!r} must be http:// or https:// with a host")
        if timeout <= 0:
            raise ConfigError("webhook timeout must be > 0")
        self.url = url
        # urllib cannot take user:password@ in the URL: send it as a Basic Authorization header.
        self._target = urlunsplit(parts._replace(netloc=parts.netloc.rpartition("@")[2]))
        self._auth: str | None = None
        if parts.username is not None:
            creds = f"{unquote(parts.username)}:{unquote(parts.password or '')}".encode()
            self._auth = "Basic " + base64.b64encode(creds).decode()
        self._secret = secret
        self.timeout = timeout
        self.name = name or f"webhook:{redact_url(url)}"
        self._opener = urllib.request.build_opener(_NoRedirect)

    def __repr__(self) -> str:
        return f"WebhookSink({redact_url(self.url)!r}, signed={self._secret is not None})"

    def request(self, event: TradeEvent) -> urllib.request.Request:
        body = event.encode(max_bytes=None)
        ts = str(int(time.time()))
        headers = {
            "Content-Type": "application/json",
            "User-Agent": "tradebus-webhook/1",
            TIMESTAMP_HEADER: ts,
            EVENT_ID_HEADER: event.event_id,
        }
        if self._secret:
            headers[SIGNATURE_HEADER] = sign(body, self._secret, ts)
        if self._auth:
            headers["Authorization"] = self._auth
        return urllib.request.Request(self._target, data=body, headers=headers, method="POST")

    def send(self, event: TradeEvent) -> dict[str, Any]:
        where = redact_url(self.url)
        try:
            with self._opener.open(self.request(event), timeout=self.timeout) as resp:
                status = resp.status
        except urllib.error.HTTPError as e:
            status = e.code
            e.close()
            if status >= 500 or status in _RETRYABLE_4XX:
                raise RetryableError(f"webhook {where} answered {status}") from None
            raise PermanentNotifyError(f"webhook {where} answered {status}; not retried") from None
        except TimeoutError as e:
            raise RetryableError(f"webhook {where} timed out after {self.timeout}s") from e
        except urllib.error.URLError as e:
            reason = e.reason
            if isinstance(reason, (TimeoutError, socket.timeout)):
                raise RetryableError(f"webhook {where} timed out after {self.timeout}s") from None
            raise RetryableError(f"webhook {where} unreachable: {type(reason).__name__}") from None
        except (ConnectionError, OSError) as e:  # reset / refused after the request started
            raise RetryableError(f"webhook {where} connection failed: {type(e).__name__}") from None
        if not 200 <= status < 300:
            raise PermanentNotifyError(f"webhook {where} answered {status}; not retried")
        return {"sink": self.name, "status": status}


@dataclass(frozen=True)
class NotifyConfig:
    """Which events notify and where. ``from_settings`` takes TRADEBUS_WEBHOOK_URL (several, comma-
    separated), TRADEBUS_WEBHOOK_SECRET, TRADEBUS_WEBHOOK_TIMEOUT, TRADEBUS_NOTIFY_TYPES (patterns such
    as ``risk.*``) and TRADEBUS_NOTIFY_LOG (default true) from ``settings.notify``."""

    webhook_urls: tuple[str, ...] = ()
    secret: str | None = field(default=None, repr=False)
    timeout: float = DEFAULT_WEBHOOK_TIMEOUT
    event_types: tuple[str, ...] = DEFAULT_NOTIFY_TYPES
    log_sink: bool = True

    @classmethod
    def from_settings(cls, notify: NotifySettings) -> NotifyConfig:
        secret = notify.webhook_secret.get_secret_value() if notify.webhook_secret is not None else None
        return cls(
            webhook_urls=notify.webhook_url,
            secret=secret or None,
            timeout=notify.webhook_timeout if notify.webhook_timeout is not None else DEFAULT_WEBHOOK_TIMEOUT,
            event_types=notify.notify_types or DEFAULT_NOTIFY_TYPES,
            log_sink=notify.notify_log,
        )

    def sinks(self) -> list[Sink]:
        out: list[Sink] = [LogSink()] if self.log_sink else []
        out.extend(WebhookSink(u, self.secret, timeout=self.timeout) for u in self.webhook_urls)
        return out

    def wants(self, event: TradeEvent) -> bool:
        return should_notify(event, self.event_types)


def should_notify(event: TradeEvent, patterns: Iterable[str]) -> bool:
    """True if the event type matches one of the glob patterns (``risk.*``, ``*``)."""
    value = event.event_type.value
    return any(fnmatch.fnmatchcase(value, p) for p in patterns)


def deliver(
    event: TradeEvent,
    sinks: Sequence[Sink],
    *,
    client: redis.Redis | None = None,
    keys: Keys | None = None,
) -> dict[str, Any]:
    """Send ``event`` to every sink; report per sink.

    With ``client`` and ``keys``, what each sink delivered (or refused for good) is recorded per event,
    so a retry resends only to the sinks that failed transiently. Raises RetryableError when any sink
    failed transiently (after trying all of them); a permanent failure alone is reported, not raised,
    unless every sink failed permanently (PermanentNotifyError).
    """
    record = keys.notified(event.event_id) if client is not None and keys is not None else None
    done: dict[str, str] = {}
    if record is not None:
        done = {_s(k): _s(v) for k, v in client.hgetall(record).items()}  # type: ignore[union-attr]
    results: list[dict[str, Any]] = []
    retry: list[str] = []
    permanent: list[str] = []
    fields = event_fields(event)  # the structured fields of this function's log lines
    for sink in sinks:
        if sink.name in done:
            results.append({"sink": sink.name, "status": f"already {done[sink.name]}"})
            continue
        try:
            outcome = sink.send(event)
        except RetryableError as e:
            log.warning("notify %s via %s failed, will retry: %s", event.event_id, sink.name, e, extra=fields)
            retry.append(str(e))
            results.append({"sink": sink.name, "status": "retry", "error": str(e)})
            continue
        except PermanentNotifyError as e:
            log.error("notify %s via %s refused, not retried: %s", event.event_id, sink.name, e, extra=fields)
            permanent.append(str(e))
            results.append({"sink": sink.name, "status": "failed", "error": str(e)})
            _mark(client, record, sink.name, "failed")
            continue
        results.append(outcome)
        _mark(client, record, sink.name, "ok")
    report = {"event_id": event.event_id, "event_type": event.event_type.value, "sinks": results}
    if retry:
        raise RetryableError("; ".join(retry))
    if permanent and len(permanent) == len(results):
        raise PermanentNotifyError("; ".join(permanent))
    return report


def notify_event(
    event: TradeEvent,
    config: NotifyConfig,
    *,
    client: redis.Redis | None = None,
    keys: Keys | None = None,
) -> dict[str, Any]:
    """What the notify task runs: filter by type, then deliver to the configured sinks."""
    if not config.wants(event):
        return {"event_id": event.event_id, "event_type": event.event_type.value, "skipped": "type not notified"}
    return deliver(event, config.sinks(), client=client, keys=keys)


def _mark(client: redis.Redis | None, record: str | None, sink: str, status: str) -> None:
    if client is None or record is None:
        return
    pipe = client.pipeline(transaction=True)
    pipe.hset(record, sink, status)
    pipe.expire(record, NOTIFIED_TTL_SECONDS)
    pipe.execute()


def _s(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)
