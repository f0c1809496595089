"""Envelope schema versions: what this tradebus writes, and which versions it reads.

The compatibility rule (README, "Schema versions"): ``schema_version`` is MAJOR.MINOR. A MINOR release
only adds (optional envelope fields, optional payload fields, event types); a MAJOR one may change or
remove. Writers put the integer MAJOR when MINOR is 0 (every event this version writes says ``1``)
and the string ``"MAJOR.MINOR"`` otherwise. A reader accepts its own MAJOR at any MINOR and keeps the
envelope fields a newer MINOR added; another MAJOR is refused with SchemaVersionError, which workers
dead-letter as such.
"""

from __future__ import annotations

import re
from typing import Any

from bus.defaults import SCHEMA_VERSION
from bus.errors import SchemaVersionError
from bus.events.rules import bad

#: the MINOR version of the envelope this tradebus writes and fully understands
SCHEMA_MINOR = 0
_MAJOR_MINOR = re.compile(r"(0|[1-9][0-9]{0,8})\.(0|[1-9][0-9]{0,8})")


def check_version(value: Any) -> int | str:
    """The version to keep on the event: ``SCHEMA_VERSION`` for this MINOR or an older one, the string
    as given for a newer MINOR. Raises SchemaVersionError for another MAJOR."""
    if value == SCHEMA_VERSION and not isinstance(value, str):
        return SCHEMA_VERSION
    if isinstance(value, str):
        parsed = _MAJOR_MINOR.fullmatch(value)
        if parsed is not None:
            major, minor = int(parsed[1]), int(parsed[2])
            if major == SCHEMA_VERSION:
                return value if minor > SCHEMA_MINOR else SCHEMA_VERSION
            raise _unreadable(value, major)
    elif type(value) is int:
        raise _unreadable(value, value)
    raise bad("schema_version", value, "must be the integer MAJOR or the string 'MAJOR.MINOR'")


def is_newer_minor(version: int | str) -> bool:
    """True for a version ``check_version`` kept as a string: its unknown envelope fields are kept."""
    return isinstance(version, str)


def _unreadable(value: Any, major: int) -> SchemaVersionError:
    return SchemaVersionError(
        f"schema_version={value!r}: major version {major} cannot be read by this tradebus "
        f"(it reads {SCHEMA_VERSION}.x)",
        field="schema_version",
        value=value,
    )
