"""Observability hooks the library calls: Prometheus metrics (bus.observability.metrics), OpenTelemetry
spans (bus.observability.tracing) and structured log fields (bus.observability.logs).

Each is off until turned on and then imports its library lazily: ``import bus`` stays light and, with
everything off, a hook costs one attribute check on the hot path.
"""
