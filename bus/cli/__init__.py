"""The ``tradebus`` command: one module per command group."""

from bus.cli.app import main

__all__ = ["main"]
