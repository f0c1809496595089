"""Celery's publishing side for the task messages the dispatcher builds and stages itself.

``send_task`` fires ``before_task_publish`` before it writes a message, ``after_task_publish`` once the
broker has it, and sends a ``task-sent`` event when the app sets ``task_send_sent_event``. Everything that
watches Celery's publishing hooks there: OpenTelemetry's Celery instrumentation injects ``traceparent``
into the headers in ``before_task_publish`` and ends its producer span in ``after_task_publish``;
Flower's "sent" state and celery-exporter's queue labels come from ``task-sent``. The dispatcher's
messages get the same: ``before`` runs between ``as_task_v2`` and serialisation (a receiver's changes to
``headers``, ``properties`` or ``body`` are what is written), ``after`` once the pipeline or transaction
holding the messages has been executed.

Each message's receivers run in their own copy of the caller's ``contextvars`` context, before and
after alike: with several messages staged before one commit, a receiver that activates a span in
``before`` (OpenTelemetry does) would otherwise nest the next message's span under it, and could not
detach it in order. With no receivers connected and no task-sent events, ``active`` is False and the
dispatcher skips all of this (one attribute check per publish).
"""

from __future__ import annotations

import contextvars
import logging
from collections.abc import Sequence
from typing import Any, NamedTuple

from bus.dispatch.messages import TaskMessage

log = logging.getLogger(__name__)


class Announced(NamedTuple):
    """A message whose ``before_task_publish`` ran, with the context its receivers ran in."""

    message: TaskMessage
    context: contextvars.Context


class PublishSignals:
    """``before_task_publish`` / ``after_task_publish`` / ``task-sent`` for one Celery app's messages."""

    def __init__(self, app: Any) -> None:
        from celery import signals

        self.app = app
        self._before = signals.before_task_publish
        self._after = signals.after_task_publish
        #: the app's ``task_send_sent_event``, read once (as Celery's own task sender does)
        self.sent_events = bool(app.conf.task_send_sent_event)
        self._retry_policy = dict(app.conf.task_publish_retry_policy or {})
        self._events: Any = None  # celery.events.Dispatcher, built on the first task-sent event

    @property
    def active(self) -> bool:
        """Anything to do: a receiver connected to either signal, or task-sent events on."""
        return bool(self._before.receivers or self._after.receivers or self.sent_events)

    def before(self, message: TaskMessage) -> Announced:
        """Fire ``before_task_publish`` for ``message`` (about to be staged or written)."""
        context = contextvars.copy_context()
        if self._before.receivers:
            context.run(
                self._before.send, sender=message.name, body=message.body, exchange="",
                routing_key=message.queue, declare=[], headers=message.headers,
                properties=message.properties, retry_policy=self._retry_policy,
            )  # fmt: skip
        return Announced(message, context)

    def after(self, announced: Sequence[Announced]) -> None:
        """The messages are on the broker: ``after_task_publish`` for each, then their task-sent events."""
        if self._after.receivers:
            for message, context in announced:
                context.run(
                    self._after.send, sender=message.name, body=message.body, headers=message.headers,
                    exchange="", routing_key=message.queue,
                )  # fmt: skip
        events = [m for m, _ in announced if m.sent_event is not None]
        if events:
            self._send_sent_events(events)

    def _send_sent_events(self, messages: Sequence[TaskMessage]) -> None:
        try:
            if self._events is None:
                self._events = self.app.events.Dispatcher(enabled=False, buffer_while_offline=False)
            with self.app.producer_or_acquire() as producer:
                for m in messages:
                    fields = dict(m.sent_event or {}, queue=m.queue, exchange="", routing_key=m.queue)
                    self._events.publish("task-sent", fields, producer, retry=True, retry_policy=self._retry_policy)
        except Exception as e:  # noqa: BLE001 - the tasks are enqueued; only the monitoring event is lost
            log.warning("task-sent events for %d task(s) not sent (%s: %s)", len(messages), type(e).__name__, e)
