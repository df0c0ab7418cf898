"""Administration on the database directly: ``inferq keys``, ``inferq tenants``, ``inferq audit``.

Every change is written to the audit trail with the operating-system user as its actor.
"""

from __future__ import annotations

import getpass
from datetime import datetime, timedelta
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from core.config import Settings, get_settings
from core.db.models import utcnow
from core.db.session import Database
from core.durations import duration_seconds
from core.errors import InferqError
from core.security.scopes import DEFAULT_KEY_SCOPES, SCOPES
from core.telemetry.logging import configure_logging

keys_app = typer.Typer(help="API keys: create (with scopes and expiry), list, revoke.")
tenants_app = typer.Typer(help="Tenants and their own rate limits and quotas.")

console = Console(stderr=True)


def _database() -> tuple[Settings, Database]:
    settings = get_settings()
    configure_logging("WARNING", settings.log_format)
    return settings, Database(settings.resolved_database_url)


def _actor() -> str:
    return f"cli:{getpass.getuser()}"


def _fail(exc: InferqError) -> typer.Exit:
    console.print(f"[red]{exc.detail}[/red]")
    return typer.Exit(1)


def _when(moment: datetime | None) -> str:
    return f"{moment:%Y-%m-%d %H:%M}" if moment else "-"


def _ago(value: str | None, what: str) -> datetime | None:
    return None if value is None else utcnow() - timedelta(seconds=duration_seconds(value, what))


@keys_app.command("create")
def keys_create(
    name: Annotated[str, typer.Argument(help="The tenant (made on first use).")],
    scopes: Annotated[
        str,
        typer.Option(help=f"Comma-separated, of: {', '.join(SCOPES)}."),
    ] = ",".join(DEFAULT_KEY_SCOPES),
    expires: Annotated[
        str | None, typer.Option(help="Lifetime, e.g. 30d or 12h. Default: no expiry.")
    ] = None,
) -> None:
    """Create a tenant's API key and print it (the only time it is shown)."""
    from core.security.keys import create_key

    _, database = _database()
    try:
        expires_at = None
        if expires is not None:
            expires_at = utcnow() + timedelta(seconds=duration_seconds(expires, "--expires"))
        with database.transaction() as session:
            created = create_key(session, name, scopes.split(","), expires_at, actor=_actor())
    except InferqError as exc:
        raise _fail(exc) from exc
    typer.echo(created.key)
    until = f", expires {_when(created.expires_at)} UTC" if created.expires_at else ""
    console.print(
        f"key for tenant {name!r} (id {created.tenant_id}), scopes {created.scopes}{until}; "
        "store it now, it is not shown again"
    )


@keys_app.command("list")
def keys_list() -> None:
    """Every API key: its first characters, tenant, scopes, and when it was created, expires
    and was revoked."""
    from core.security.keys import list_keys

    _, database = _database()
    with database.read() as session:
        keys = list_keys(session)
    table = Table("key starts", "tenant", "scopes", "created (UTC)", "expires", "revoked")
    for key in keys:
        table.add_row(
            key.prefix,
            key.tenant,
            key.scopes,
            _when(key.created_at),
            _when(key.expires_at),
            _when(key.revoked_at),
        )
    Console().print(table)


@keys_app.command("revoke")
def keys_revoke(
    prefix: Annotated[str, typer.Argument(help="The key, or its start as `keys list` shows it.")],
) -> None:
    """Revoke one API key. An API process that accepted it within the last
    INFERQ_API_KEY_CACHE_SECONDS may go on accepting it that long."""
    from core.security.keys import revoke_key

    settings, database = _database()
    try:
        with database.transaction() as session:
            revoked = revoke_key(session, prefix, actor=_actor())
    except InferqError as exc:
        raise _fail(exc) from exc
    console.print(
        f"revoked key {revoked.prefix}… of tenant {revoked.tenant!r}; API processes drop it "
        f"within {settings.api_key_cache_seconds:g} s"
    )


@tenants_app.command("set-limits")
def tenants_set_limits(
    name: Annotated[str, typer.Argument(help="The tenant.")],
    rate_limits: Annotated[
        str | None,
        typer.Option(
            help='Over INFERQ_RATE_LIMITS for this tenant, e.g. "jobs:write=100/minute"; '
            '"default" returns it to the setting.'
        ),
    ] = None,
    max_pending: Annotated[
        str | None,
        typer.Option(
            help="Pending inputs at most (queued + running); "
            '"default" returns it to INFERQ_MAX_PENDING_INPUTS_PER_TENANT.'
        ),
    ] = None,
) -> None:
    """Give one tenant its own rate limits or quota. API processes apply it within
    INFERQ_API_KEY_CACHE_SECONDS."""
    from core.security.tenants import KEEP, set_limits

    if rate_limits is None and max_pending is None:
        raise typer.BadParameter("give --rate-limits, --max-pending or both")
    settings, database = _database()
    try:
        with database.transaction() as session:
            limits = set_limits(
                session,
                name,
                rate_limits=KEEP if rate_limits is None else _or_default(rate_limits),
                max_pending_inputs=KEEP if max_pending is None else _count(max_pending),
                actor=_actor(),
            )
    except InferqError as exc:
        raise _fail(exc) from exc
    console.print(
        f"tenant {limits.name!r}: rate limits {limits.rate_limits or 'the default'}"
        f", max pending inputs {limits.max_pending_inputs or 'the default'}; in effect within "
        f"{settings.api_key_cache_seconds:g} s"
    )


def _or_default(value: str) -> str | None:
    return None if value.strip() == "default" else value


def _count(value: str) -> int | None:
    if value.strip() == "default":
        return None
    try:
        return int(value.replace(",", "").replace("_", ""))
    except ValueError as exc:
        raise typer.BadParameter(
            "a whole number, or 'default'", param_hint="--max-pending"
        ) from exc


@tenants_app.command("list")
def tenants_list() -> None:
    """Every tenant and its own limits ("-": the settings' defaults)."""
    from core.security.tenants import list_limits

    settings, database = _database()
    with database.read() as session:
        tenants = list_limits(session)
    table = Table("tenant", "rate limits", "max pending inputs")
    for tenant in tenants:
        pending = tenant.max_pending_inputs
        table.add_row(tenant.name, tenant.rate_limits or "-", f"{pending:,}" if pending else "-")
    Console().print(table)
    console.print(
        f"defaults: {settings.rate_limits or 'no rate limits'}; max pending inputs "
        f"{settings.max_pending_inputs_per_tenant or 'unlimited'}"
    )


def audit(
    since: Annotated[
        str | None, typer.Option(help="How far back, e.g. 24h or 7d. Default: everything.")
    ] = None,
    tenant: Annotated[str | None, typer.Option(help="Only this tenant's events.")] = None,
    action: Annotated[
        str | None, typer.Option(help='Only actions starting so, e.g. "key." or "job.cancelled".')
    ] = None,
    limit: Annotated[int, typer.Option(min=1, help="At most this many, oldest first.")] = 1000,
) -> None:
    """The audit trail: keys created and revoked, secrets rotated, limits changed, jobs and
    batches cancelled; who did it and when."""
    from core.security.audit import entries

    _, database = _database()
    try:
        start = _ago(since, "--since")
    except InferqError as exc:
        raise _fail(exc) from exc
    with database.read() as session:
        found = entries(session, start, tenant=tenant, action=action, limit=limit)
    table = Table("at (UTC)", "actor", "action", "tenant", "target", "details")
    for entry in found:
        table.add_row(
            f"{entry.at:%Y-%m-%d %H:%M:%S}",
            entry.actor,
            entry.action,
            entry.tenant or "-",
            entry.target or "-",
            _details(entry.details),
        )
    Console(width=200).print(table)


def _details(details: dict[str, object] | None) -> str:
    if not details:
        return "-"
    return ", ".join(f"{key}={value}" for key, value in details.items())
