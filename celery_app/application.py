"""The Celery app class make_celery builds: tradebus's configuration as the app's lowest layer."""

from __future__ import annotations

from collections import ChainMap
from collections.abc import Mapping
from typing import Any

from celery import Celery


class TradebusCelery(Celery):  # type: ignore[misc]
    """A Celery app whose configuration falls back to ``defaults`` (tradebus's), then Celery's own.

    Celery layers an app's configuration as: ``conf.update`` / constructor values, then the source given
    to ``config_from_object``, then Celery's defaults. ``conf.update`` would put tradebus's settings on
    top, where ``config_from_object`` could not override them; here they sit below the configuration
    source instead (``prepare_config`` is Celery's hook for the source), so a user's
    ``app.config_from_object("myconfig")``, ``app.conf.update(...)`` and ``make_celery(**overrides)`` all
    win over them, key by key, and everything they leave alone keeps tradebus's value.
    """

    def __init__(self, main: str, defaults: Mapping[str, Any], **kwargs: Any) -> None:
        self.tradebus_defaults = dict(defaults)
        super().__init__(main, **kwargs)

    def prepare_config(self, c: Any) -> Any:
        source = ChainMap(c, self.tradebus_defaults) if c is not None else dict(self.tradebus_defaults)
        return super().prepare_config(source)
