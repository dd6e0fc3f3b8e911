"""``relaygate keys ...`` and ``relaygate tenants ...``: manage keys on the database directly.

These work without a running gateway. Running gateways see a change within a
second by polling the database; with ``redis_url`` set, the change is also
published so they drop the key at once. Secrets are printed once, at creation
or rotation; hashes never. A refused command (unknown key, name taken) prints
one line on stderr and exits with code 1.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import sys
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from typing import Any

from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncEngine

from relaygate.api.admin import check_tier, default_tier, expiry
from relaygate.auth.keys import MAX_KEY_LENGTH, check_imported
from relaygate.errors import ClientError, ConfigError, Conflict, InvalidRequest, NotFound
from relaygate.settings import Settings, load_settings
from relaygate.store.engine import create_engine, safe_url
from relaygate.store.identity import IdentityStore, KeyRecord, resolve_tenant
from relaygate.store.schema import SCHEMA_REVISION, current_revision

__all__ = ["add_commands"]

EXIT_REFUSED = 1
Job = Callable[[IdentityStore, Settings, argparse.Namespace], Awaitable[list[str]]]


def add_commands(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add the ``keys`` and ``tenants`` command groups to the ``relaygate`` parser."""
    _add_keys(commands)
    _add_tenants(commands)
    _add_usage(commands)


def _add_keys(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    keys = commands.add_parser("keys", help="create, list, show, revoke and rotate API keys")
    sub = keys.add_subparsers(title="keys commands", metavar="COMMAND")
    keys.set_defaults(handler=lambda _args: keys.print_help())

    create = _command(sub, "create", "create a key and print its secret once", _create_key)
    create.add_argument("--tenant", required=True, metavar="NAME_OR_ID", help="the key's tenant")
    create.add_argument(
        "--create-tenant", action="store_true", help="create the tenant if no tenant has that name"
    )
    create.add_argument("--role", choices=["user", "admin"], default="user")
    create.add_argument("--tier", help="a configured tier (default: the tenant's, else free)")
    create.add_argument("--name", default="", help="a label for the key")
    create.add_argument("--description", default="")
    create.add_argument("--expires-in-days", type=_positive_int, metavar="DAYS")
    create.add_argument("--user", help="the user the key belongs to (owns its provider keys)")
    create.add_argument("--quiet", action="store_true", help="print only the secret")

    imported = _command(
        sub, "import", "import an existing secret as a key (read from stdin, never argv)",
        _import_key, allow_abbrev=False,  # no --secret taken for --secret-env
    )  # fmt: skip
    imported.add_argument("--tenant", required=True, metavar="NAME_OR_ID", help="the key's tenant")
    imported.add_argument(
        "--create-tenant", action="store_true", help="create the tenant if no tenant has that name"
    )
    imported.add_argument("--role", choices=["user", "admin"], default="user")
    imported.add_argument("--tier", help="a configured tier (default: the tenant's, else free)")
    imported.add_argument("--name", default="", help="a label for the key")
    imported.add_argument("--description", default="")
    imported.add_argument("--expires-in-days", type=_positive_int, metavar="DAYS")
    imported.add_argument("--user", help="the user the key belongs to (owns its provider keys)")
    imported.add_argument(
        "--secret-env", metavar="VAR",
        help="read the secret from this environment variable instead of stdin "
        "(a secret on the command line would show in ps)",
    )  # fmt: skip

    listing = _command(sub, "list", "list keys (never their secrets)", _list_keys)
    listing.add_argument("--tenant", metavar="NAME_OR_ID", help="only this tenant's keys")
    listing.add_argument("--all", action="store_true", help="include revoked keys")

    for name, text, job in (
        ("show", "show one key", _show_key),
        ("revoke", "revoke a key: it stops working at once", _revoke_key),
        ("rotate", "give a key a new secret; the old one stops working", _rotate_key),
    ):
        _command(sub, name, text, job).add_argument("key_id", metavar="KEY_ID")


def _add_tenants(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    tenants = commands.add_parser("tenants", help="create and list tenants")
    sub = tenants.add_subparsers(title="tenants commands", metavar="COMMAND")
    tenants.set_defaults(handler=lambda _args: tenants.print_help())
    create = _command(sub, "create", "create a tenant", _create_tenant)
    create.add_argument("name", metavar="NAME")
    create.add_argument("--tier", help="a configured tier for the tenant as a whole")
    _command(sub, "list", "list tenants", _list_tenants)


def _command(
    sub: argparse._SubParsersAction[argparse.ArgumentParser],
    name: str,
    text: str,
    job: Job,
    allow_abbrev: bool = True,
) -> argparse.ArgumentParser:
    parser = sub.add_parser(name, help=text, description=text, allow_abbrev=allow_abbrev)
    parser.add_argument("--config", metavar="FILE", help="YAML configuration file")
    parser.set_defaults(handler=lambda args: _run(args, job))
    return parser


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None
    if not 1 <= value <= 36_500:
        raise argparse.ArgumentTypeError("must be between 1 and 36500")
    return value


# running a job


def _run(args: argparse.Namespace, job: Job) -> None:
    settings = load_settings(args.config)
    run_with_database(settings, _with_store(settings, args, job))


def run_with_database(settings: Settings, main: Coroutine[Any, Any, None]) -> None:
    """Run a command's database work: a refusal by a running gateway exits 3, a database
    that cannot be used is a configuration error naming it (never a traceback)."""
    try:
        asyncio.run(main)
    except ClientError as exc:
        print(f"relaygate: {exc.message}", file=sys.stderr)
        raise SystemExit(EXIT_REFUSED) from None
    except (OSError, SQLAlchemyError) as exc:
        raise ConfigError(
            f"database_url: cannot use {safe_url(settings.database_url)}: "
            f"{type(exc).__name__}: {str(exc).splitlines()[0][:200]}"
        ) from None


@asynccontextmanager
async def database(settings: Settings) -> AsyncIterator[AsyncEngine]:
    """An engine on the configured database, once its schema is this version's."""
    have = await current_revision(settings.database_url)
    if have != SCHEMA_REVISION:
        raise ConfigError(
            f"the database at {safe_url(settings.database_url)} is at schema {have or 'none'}, "
            f"this version needs {SCHEMA_REVISION}: run 'relaygate db upgrade'."
        )
    engine = create_engine(settings.database_url)
    try:
        yield engine
    finally:
        await engine.dispose()


async def _with_store(settings: Settings, args: argparse.Namespace, job: Job) -> None:
    async with database(settings) as engine:
        changed = await job(IdentityStore(engine), settings, args)
    if changed and settings.redis_url:
        await _publish(settings, changed)


async def _publish(settings: Settings, key_ids: list[str]) -> None:
    """Tell running gateways at once (best effort: they also poll the database)."""
    import redis.asyncio as redis

    from relaygate.auth.invalidation import KeyEvents

    client = redis.from_url(settings.redis_url or "")
    try:
        log = logging.getLogger("relaygate")
        await KeyEvents(client, settings.redis_prefix, lambda _ids: None, log).publish(key_ids)
    finally:
        await client.aclose()


# keys


async def _create_key(
    store: IdentityStore, settings: Settings, args: argparse.Namespace
) -> list[str]:
    record, secret = await _store_key(store, settings, args)
    if args.quiet:
        print(secret)
    else:
        _print_secret(record, secret, "Created")
    return [record.id]


async def _import_key(
    store: IdentityStore, settings: Settings, args: argparse.Namespace
) -> list[str]:
    secret = check_imported(await asyncio.to_thread(_read_secret, args.secret_env))
    record, _ = await _store_key(store, settings, args, secret)
    print(
        f"Imported key {record.id} ({record.prefix}..., tenant {record.tenant_name}, "
        f"role {record.role}, tier {record.tier}). The secret works as it is."
    )
    return [record.id]


async def _store_key(
    store: IdentityStore, settings: Settings, args: argparse.Namespace, secret: str | None = None
) -> tuple[KeyRecord, str]:
    """A new key as ``keys create`` and ``keys import`` describe it; ``secret`` imported,
    or None for a new random one."""
    tier = check_tier(settings, args.tier, param="--tier") if args.tier else None
    try:
        tenant = await resolve_tenant(store, args.tenant, create=args.create_tenant)
    except NotFound as exc:
        raise NotFound(f"{exc.message} Add --create-tenant to create it.") from None
    return await store.create_key(
        tenant.id,
        prefix=settings.auth.key_prefix,
        role=args.role,
        tier=tier or default_tier(settings, tenant),
        name=args.name,
        description=args.description,
        expires_at=expiry(None, args.expires_in_days),
        secret=secret,
        imported=secret is not None,
        user=args.user or None,
    )


def _read_secret(variable: str | None) -> str:
    """The secret to import: one line of stdin, or an environment variable; the
    surrounding newline and blanks are not part of it."""
    if variable:
        value = os.environ.get(variable)
        if value is None:
            # not named back: a secret given here by mistake must not reach the terminal log
            raise InvalidRequest("--secret-env: that environment variable is not set.")
        return value.strip()
    if sys.stdin.isatty():
        print("Paste the secret, then Enter:", file=sys.stderr)
    return sys.stdin.readline(MAX_KEY_LENGTH + 2).strip()


def _print_secret(record: KeyRecord, secret: str, verb: str) -> None:
    expires = f"{_when(record.expires_at)} UTC" if record.expires_at else "never"
    print(
        f"{verb} key {record.id} (tenant {record.tenant_name}, role {record.role}, "
        f"tier {record.tier}, expires {expires}).\n"
        "The API key is shown only once; store it now:\n\n"
        f"    {secret}\n"
    )


async def _list_keys(
    store: IdentityStore, settings: Settings, args: argparse.Namespace
) -> list[str]:
    tenant_id = (
        (await resolve_tenant(store, args.tenant, param="--tenant")).id if args.tenant else None
    )
    records = await store.list_keys(tenant_id, include_revoked=args.all)
    header = ("ID", "PREFIX", "TENANT", "ROLE", "TIER", "ENABLED", "EXPIRES", "LAST USED (UTC)")
    rows = [
        (
            r.id, r.prefix + "...", r.tenant_name, r.role, r.tier, _state(r),
            _when(r.expires_at), _when(r.last_used_at),
        )
        for r in records
    ]  # fmt: skip
    _table([header, *rows])
    if not rows:
        print("(no keys)")
    return []


def _state(record: KeyRecord) -> str:
    if record.revoked_at is not None:
        return "revoked"
    return "yes" if record.enabled else "no"


async def _show_key(
    store: IdentityStore, settings: Settings, args: argparse.Namespace
) -> list[str]:
    record = await store.get_key(args.key_id)
    fields = {**record.public(), "tenant_name": record.tenant_name}
    width = max(len(k) for k in fields)
    for name, value in fields.items():
        shown = "-" if value is None or value == "" else value
        print(f"{name.ljust(width)}  {shown}")
    return []


async def _revoke_key(
    store: IdentityStore, settings: Settings, args: argparse.Namespace
) -> list[str]:
    record = await store.get_key(args.key_id)
    if record.revoked_at is None:
        record = await store.revoke_key(args.key_id)
        print(f"Revoked key {record.id} ({record.prefix}..., tenant {record.tenant_name}).")
    else:
        print(f"Key {record.id} was already revoked.")
    return [record.id]


async def _rotate_key(
    store: IdentityStore, settings: Settings, args: argparse.Namespace
) -> list[str]:
    if (await store.get_key(args.key_id)).revoked_at is not None:
        raise Conflict(f"Key {args.key_id!r} is revoked and cannot be rotated.")
    record, secret = await store.rotate_key(args.key_id, settings.auth.key_prefix)
    _print_secret(record, secret, "Rotated")
    print("The old secret no longer works.")
    return [record.id]


# tenants


async def _create_tenant(
    store: IdentityStore, settings: Settings, args: argparse.Namespace
) -> list[str]:
    tier = check_tier(settings, args.tier, param="--tier") if args.tier else None
    tenant = await store.create_tenant(args.name, tier)
    print(f"Created tenant {tenant.id} ({tenant.name}, tier {tenant.tier or '-'}).")
    return []


async def _list_tenants(
    store: IdentityStore, settings: Settings, args: argparse.Namespace
) -> list[str]:
    keys: dict[str, int] = {}
    for record in await store.list_keys():
        keys[record.tenant_id] = keys.get(record.tenant_id, 0) + 1
    rows = [
        (t.id, t.name, t.tier or "-", str(keys.get(t.id, 0)), _when(t.created_at))
        for t in await store.list_tenants()
    ]
    _table([("ID", "NAME", "TIER", "KEYS", "CREATED (UTC)"), *rows])
    return []


# output


def _when(value: datetime | None) -> str:
    return value.astimezone(UTC).strftime("%Y-%m-%d %H:%M") if value else "-"


def _table(rows: list[tuple[str, ...]]) -> None:
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    for row in rows:
        line = "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True))
        print(line.rstrip())


# usage


def _add_usage(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    usage = commands.add_parser(
        "usage", help="print usage by day and by model (requests, tokens, latency, cost)"
    )
    usage.add_argument("--config", metavar="FILE", help="YAML configuration file")
    usage.add_argument("--tenant", help="a tenant's name or id (default: every tenant)")
    usage.add_argument("--key", help="a key id")
    usage.add_argument("--model", help="a model name")
    usage.add_argument(
        "--since", default="7d", help="ISO time or a duration ago: 24h, 7d, 4w (default 7d)"
    )
    usage.add_argument("--until", help="ISO time or a duration ago (default: now)")
    usage.set_defaults(handler=lambda args: _run(args, _usage))


async def _usage(store: IdentityStore, settings: Settings, args: argparse.Namespace) -> list[str]:
    from relaygate.api.admin_usage import parse_moment
    from relaygate.usage.analytics import Filters, report

    tenant = await resolve_tenant(store, args.tenant) if args.tenant else None
    filters = Filters(
        tenant_id=tenant.id if tenant else None,
        key_id=args.key,
        model=args.model,
        since=parse_moment(args.since, "--since"),
        until=parse_moment(args.until, "--until") if args.until else None,
    )
    for group in ("day", "model"):
        rows = await report(store.engine, filters, group)
        print(f"by {group}:" if rows else f"no usage recorded in that range ({group})")
        if rows:
            _table([_USAGE_HEADER[group], *(_usage_row(row, group) for row in rows)])
            print()
    return []


_USAGE_COLUMNS = ("REQUESTS", "TOKENS", "AVG MS", "CACHED", "ERRORS", "COST $")
_USAGE_HEADER = {"day": ("DAY", *_USAGE_COLUMNS), "model": ("MODEL", *_USAGE_COLUMNS)}


# Requests refused before a model was known (bad JSON, a wrong key) are recorded
# with no model; the reports' JSON says null, the table says this.
NO_MODEL = "(no model)"


def _usage_row(row: dict[str, object], group: str) -> tuple[str, ...]:
    average = row["average_response_time_ms"]
    return (
        NO_MODEL if row[group] is None else str(row[group]),
        str(row["requests"]),
        str(row["total_tokens"]),
        "-" if average is None else f"{average:.0f}",
        str(row["cached_requests"]),
        str(row["errors"]),
        f"{row['cost']:.4f}",
    )
