"""``tradebus demo``: a paper-trading session through the whole system, with a summary."""
