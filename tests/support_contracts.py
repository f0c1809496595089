"""Fixtures for the contract tests: the custom event types of support_custom_types, registered for one
test and forgotten afterwards (the registry is per process; other tests must see only the built-ins)."""

from __future__ import annotations

import importlib
from collections.abc import Iterator
from types import ModuleType

import pytest


@pytest.fixture
def custom_types() -> Iterator[ModuleType]:
    module = importlib.import_module("support_custom_types")  # the first import registers the types
    module.register()  # later tests: registered again (same models and effect: a no-op if still there)
    try:
        yield module
    finally:
        module.unregister()
