"""Scopes say what a caller may do; a principal is who the caller is, once authenticated.

Each route needs one scope (its route class, which is also what rate limits are counted by);
``admin`` holds every scope.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime

from core.errors import InvalidInput

ADMIN = "admin"
SCOPES = (
    "jobs:write",
    "jobs:read",
    "batches:write",
    "batches:read",
    "models:read",
    "webhooks:admin",
    ADMIN,
)
DEFAULT_KEY_SCOPES = tuple(scope for scope in SCOPES if scope != ADMIN)


def parse_scopes(names: str | Iterable[str]) -> frozenset[str]:
    """Scope names given by an operator ("a,b" or "a b" or a list): every one must exist."""
    if isinstance(names, str):
        names = names.replace(",", " ").split()
    scopes = frozenset(name.strip() for name in names if name.strip())
    unknown = sorted(scopes.difference(SCOPES))
    if unknown:
        raise InvalidInput(f"unknown scope {', '.join(unknown)}; scopes are {', '.join(SCOPES)}")
    if not scopes:
        raise InvalidInput(f"give at least one scope of {', '.join(SCOPES)}")
    return scopes


def known_scopes(names: Iterable[str]) -> frozenset[str]:
    """The scopes of a token: names this platform does not define are another service's."""
    return frozenset(names).intersection(SCOPES)


def scope_text(scopes: Iterable[str]) -> str:
    """As stored and shown: in SCOPES order, separated by spaces."""
    held = set(scopes)
    return " ".join(scope for scope in SCOPES if scope in held)


@dataclass(frozen=True)
class Principal:
    """An authenticated caller: the tenant it acts for, what it may do, and its own limits."""

    tenant_id: int
    tenant: str
    actor: str  # who, for logs and the audit trail: "key:iq_AbCdEfG", "jwt:<sub>", "local"
    scopes: frozenset[str]
    expires_at: datetime | None = None
    rate_limits: str | None = None  # the tenant's own, over INFERQ_RATE_LIMITS
    max_pending_inputs: int | None = None  # the tenant's own, over the setting

    def allows(self, scope: str) -> bool:
        return scope in self.scopes or ADMIN in self.scopes

    def pending_limit(self, default: int | None) -> int | None:
        """The tenant's quota of pending inputs: its own, else the setting's (None: none)."""
        return self.max_pending_inputs if self.max_pending_inputs is not None else default
