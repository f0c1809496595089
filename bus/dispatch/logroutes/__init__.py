"""Log routes: ordered, batched, exactly-once work driven by the log's consumer groups.

The symbol's log (a Redis stream) has one consumer group per ``log`` route. The pieces, each closing one
of the races in the design note (docs: ARCHITECTURE.md, "Log routes"):

* wake.py    publishing sets a wake flag per (route, symbol) with SET NX in the publish script, in the
             same atomic step as the XADD, and only when it was newly set enqueues one wake-up task
             (staged in the same script when the broker is a database of the bus's Redis, sent right
             after otherwise). A publish that finds the flag set costs one SET NX per log route.
* drain.py   the wake-up task drains: a lease per (route, symbol) so one drainer runs at a time (order
             holds across workers); reads its own pending entries first, then new ones, up to a batch;
             applies the route's effect and acknowledges the batch in ONE transaction fenced by the
             lease, so an effect happens exactly once; ends with one atomic "nothing left? release the
             lease and delete the flag" step (drain.lua), so no publish can strand an event.
* effects.py the registry of log-route effects (plain functions called with a Batch) and the state
             projection's effect; risk's is bus/domain/risklog.py.
* monitor.py each group's lag and pending entries (doctor, CLI) and the safety net beat runs: wake any
             group with waiting entries and no drainer.
"""
