"""Task modules. Each defines its tasks with ``@routed_task(name=...)`` (a Celery shared task on the
tradebus base class), so every app ``make_celery`` builds — the CLI's, the worker's, a test's — has them.
"""

from __future__ import annotations

import importlib

TASK_MODULES = (
    "celery_app.tasks.state",
    "celery_app.tasks.risk",
    "celery_app.tasks.notify",
    "celery_app.tasks.reconcile",
)


def import_task_modules() -> list[str]:
    """Import every task module that exists; returns the names imported."""
    done = []
    for name in TASK_MODULES:
        try:
            importlib.import_module(name)
        except ModuleNotFoundError as e:
            if e.name != name:  # the module exists but one of its imports is missing: a real error
                raise
            continue
        done.append(name)
    return done
