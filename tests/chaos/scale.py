"""How big a chaos run is, and what it measured.

``make test`` runs the CI sizes; ``make chaos`` sets ``INFERQ_CHAOS_SCALE=full`` for the heavy
run of the same code. Every scenario records its figures here; ``tests/chaos/conftest.py``
writes them to ``var/chaos-summary.json`` and prints them at the end of the session."""

from __future__ import annotations

import os
from typing import Any

SCALE = os.environ.get("INFERQ_CHAOS_SCALE", "ci")
if SCALE not in ("ci", "full"):
    raise ValueError(f"INFERQ_CHAOS_SCALE must be ci or full, not {SCALE!r}")

FIGURES: dict[str, dict[str, Any]] = {}


def scaled(ci: int, full: int) -> int:
    return full if SCALE == "full" else ci


def record_figures(scenario: str, **figures: Any) -> dict[str, Any]:
    """Add ``figures`` to what ``scenario`` measured; returns its (mutable) record."""
    recorded = FIGURES.setdefault(scenario, {})
    recorded.update(figures)
    return recorded
