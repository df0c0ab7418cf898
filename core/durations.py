"""Durations as people type them: ``30m``, ``24h``, ``7d`` (or seconds, ``3600s``)."""

from __future__ import annotations

import re

from core.errors import InvalidInput

UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def duration_seconds(value: str, what: str = "duration") -> int:
    """Seconds in ``value``; ``what`` names it in the error."""
    found = re.fullmatch(r"\s*(\d{1,7})\s*([smhd])\s*", value)
    if found is None or int(found[1]) == 0:
        raise InvalidInput(
            f"{what} {value!r} is not a duration; use a number and a unit: 30m, 24h, 7d"
        )
    return int(found[1]) * UNITS[found[2]]


def duration_text(seconds: int) -> str:
    for unit in ("d", "h", "m"):
        if seconds % UNITS[unit] == 0:
            return f"{seconds // UNITS[unit]}{unit}"
    return f"{seconds}s"
