"""The ``relaygate`` command: ``serve``, ``config check``, ``doctor``, ``--version``.

A wrong configuration stops every command with exit code 2 and one message
naming the field and the file line, before anything listens on a port.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import sys
import tempfile
from collections.abc import Sequence
from urllib.parse import urlsplit, urlunsplit

from sqlalchemy.exc import SQLAlchemyError

from relaygate import __version__
from relaygate.cli_admin import add_commands
from relaygate.cli_nodes import add_node_commands
from relaygate.cli_secrets import add_secrets_commands
from relaygate.errors import ConfigError
from relaygate.observability.logging import configure_logging
from relaygate.settings import DeploymentConfig, Settings, load_settings
from relaygate.usage.election import elects_writer

__all__ = ["main"]

EXIT_CONFIG = 2


def main(argv: Sequence[str] | None = None) -> None:
    parser = _parser()
    args = parser.parse_args(argv)
    if not getattr(args, "handler", None):
        parser.print_help()
        raise SystemExit(0)
    try:
        args.handler(args)
    except ConfigError as exc:
        print(f"relaygate: configuration error: {exc}", file=sys.stderr)
        raise SystemExit(EXIT_CONFIG) from None


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="relaygate",
        description="A self-hosted AI gateway: one secure, metered, fast endpoint in front of "
        "Ollama, OpenAI-compatible servers and cloud APIs.",
        epilog="Configuration: a YAML file (--config or RELAYGATE_CONFIG) and RELAYGATE_* "
        "environment variables. See docs/configuration.md.",
    )
    parser.add_argument("--version", action="version", version=f"relaygate {__version__}")
    commands = parser.add_subparsers(title="commands", metavar="COMMAND")

    serve = commands.add_parser("serve", help="start the gateway")
    serve.add_argument("--config", metavar="FILE", help="YAML configuration file")
    serve.add_argument("--host", help="address to bind (default 127.0.0.1)")
    serve.add_argument("--port", type=int, help="port to bind (default 8000)")
    serve.add_argument("--workers", type=int, help="worker processes (default 1)")
    serve.set_defaults(handler=_serve)

    db = commands.add_parser("db", help="manage the database")
    db_commands = db.add_subparsers(title="db commands", metavar="COMMAND")
    db_upgrade = db_commands.add_parser("upgrade", help="apply database migrations")
    db_upgrade.add_argument("--config", metavar="FILE", help="YAML configuration file")
    db_upgrade.set_defaults(handler=_db_upgrade)
    db.set_defaults(handler=lambda _args: db.print_help())

    add_commands(commands)
    add_secrets_commands(commands)
    add_node_commands(commands)

    doctor = commands.add_parser(
        "doctor",
        help="check the configuration, database, Redis, upstreams, clock and usage outbox",
        description="Check a set-up end to end: one line per finding (OK, WARN, FAIL) with "
        "its fix. Exits 1 when something failed. Changes nothing.",
    )
    doctor.add_argument("--config", metavar="FILE", help="YAML configuration file")
    doctor.add_argument(
        "--timeout", type=float, default=3.0, metavar="SECONDS",
        help="how long each check may take (default 3)",
    )  # fmt: skip
    doctor.set_defaults(handler=_doctor)

    config = commands.add_parser("config", help="work with configuration files")
    config_commands = config.add_subparsers(title="config commands", metavar="COMMAND")
    check = config_commands.add_parser(
        "check", help="validate a configuration file and print the resolved model table"
    )
    check.add_argument("file", metavar="FILE")
    check.set_defaults(handler=_config_check)
    config.set_defaults(handler=lambda _args: config.print_help())
    return parser


def _serve(args: argparse.Namespace) -> None:
    overrides = {"host": args.host, "port": args.port, "workers": args.workers}
    settings = load_settings(args.config, overrides=overrides)
    configure_logging(settings)
    prepare_database(settings)
    # processes beside this one (the workers, the usage writer's) read exported settings
    made = None
    if settings.workers > 1 or elects_writer(settings):
        made = _export_for_workers(args, settings)
    from relaygate.server import serve

    print(f"relaygate {__version__}: http://{_url_host(settings.host)}:{settings.port}", flush=True)
    if settings.ops.address is not None:
        host, port = settings.ops.address
        where = f"http://{_url_host(host or settings.host)}:{port}"
        print(f"relaygate: /health, /ready and /metrics on {where}", flush=True)
    try:
        if settings.workers == 1:
            from relaygate.app import create_app

            serve(settings, create_app(settings))
        else:
            serve(settings, "relaygate.app:create_app")
    finally:
        if made is not None:
            shutil.rmtree(made, ignore_errors=True)


def prepare_database(settings: Settings) -> None:
    """Migrate, then make sure an admin key exists; once, before any worker starts."""
    from relaygate.auth.bootstrap import ensure_admin_key
    from relaygate.store.engine import safe_url
    from relaygate.store.schema import MigrationFailed, migrate_apart

    try:
        migrate_apart(settings.database_url)  # Alembic never loaded in this process
        secret = asyncio.run(ensure_admin_key(settings))
        asyncio.run(_check_provider_secrets(settings))  # before any worker starts
    except MigrationFailed as exc:
        raise ConfigError(
            f"database_url: cannot migrate {safe_url(settings.database_url)}: {exc}"
        ) from None
    except (OSError, SQLAlchemyError) as exc:
        raise ConfigError(
            f"database_url: cannot use {safe_url(settings.database_url)}: "
            f"{type(exc).__name__}: {str(exc).splitlines()[0][:200]}"
        ) from None
    if secret:
        print(
            "\nCreated the first admin key (tier 'unlimited'). It is shown only this once:\n"
            f"\n    {secret}\n\nUse it as 'Authorization: Bearer <key>'; create more keys "
            "with 'relaygate keys create' or POST /admin/keys.\n",
            flush=True,
        )


async def _check_provider_secrets(settings: Settings) -> None:
    """Stored provider secrets (BYOK) and no key to read them: a configuration error."""
    from relaygate.store.engine import create_engine
    from relaygate.vault.crypto import SecretBox
    from relaygate.vault.service import check_readable
    from relaygate.vault.store import VaultStore

    box = SecretBox.from_setting(settings.secret_key)
    engine = create_engine(settings.database_url)
    try:
        await check_readable(VaultStore(engine), box)
    finally:
        await engine.dispose()


def _doctor(args: argparse.Namespace) -> None:
    from relaygate.doctor import run

    raise SystemExit(run(args.config, args.timeout))


def _db_upgrade(args: argparse.Namespace) -> None:
    settings = load_settings(args.config)
    from relaygate.store.engine import safe_url
    from relaygate.store.migrate import upgrade

    upgrade(settings.database_url)
    print(f"{safe_url(settings.database_url)}: schema up to date")


def _export_for_workers(args: argparse.Namespace, settings: Settings) -> str:
    """Worker processes, and the usage writer process, rebuild the settings from the
    environment this process leaves them.

    Metrics of all of them are aggregated through prometheus-client's multiprocess mode,
    in a fresh directory (before prometheus-client is imported: it reads the variable
    then), removed when ``relaygate serve`` ends.
    """
    if args.config:
        os.environ["RELAYGATE_CONFIG"] = os.path.abspath(args.config)
    for name in ("host", "port", "workers"):
        if getattr(args, name) is not None:
            os.environ[f"RELAYGATE_{name.upper()}"] = str(getattr(args, name))
    directory = tempfile.mkdtemp(prefix="relaygate-metrics-")
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = directory
    settings.prometheus_multiproc_dir = directory  # the supervisor's ops listener reads it
    return directory


def _url_host(host: str) -> str:
    return f"[{host}]" if ":" in host else host


def _config_check(args: argparse.Namespace) -> None:
    settings = load_settings(args.file)
    print(f"{args.file}: OK")
    rows = [("MODEL", "PROVIDER", "BASE URL", "UPSTREAM MODEL", "WEIGHT", "API KEY", "FALLBACKS")]
    for model in settings.models:
        for dep in model.deployments:
            rows.append(
                (
                    model.name,
                    dep.provider,
                    _where(dep),
                    dep.model or model.name,
                    f"{dep.weight:g}",
                    mask_secret(dep.api_key),
                    ", ".join(model.fallbacks) or "-",
                )
            )
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    for row in rows:
        print("  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)))
    for name, pool in settings.pools.items():
        nodes = ", ".join(
            f"{n.name} {_mask_url(n.base_url) if n.base_url else _node(n.node)}" for n in pool.nodes
        )
        exposed = "; every model its nodes have is served" if pool.expose_models else ""
        print(f"pool {name} ({pool.provider}, {pool.balance}): {nodes}{exposed}")
    for entry in settings.model_router:
        print(f"virtual model {entry.name}: {entry.policy} of {', '.join(entry.models)}")
    if settings.serves_mock:
        print("plus the development model 'mock'")
    for url in settings.ollama_discovery_urls:
        print(f"plus every model of the Ollama server at {_mask_url(url)}, if it answers at start")
    tracing = settings.tracing
    if tracing.enabled:  # header names only: their values are often a collector's key
        headers = f", headers {', '.join(sorted(tracing.headers))}" if tracing.headers else ""
        print(
            f"tracing: spans of service {tracing.service_name or 'relaygate'} to "
            f"{_mask_url(tracing.traces_url)} (sampled {tracing.sample_ratio:g}){headers}"
        )


def _where(dep: DeploymentConfig) -> str:
    """Where a deployment's requests go: its pool, its base URL (masked) or its node."""
    if dep.pool:
        return f"pool {dep.pool}"
    return _mask_url(dep.base_url) if dep.base_url else _node(dep.node)


def _node(name: str | None) -> str:
    """Where a deployment without a base URL is: a dial-out node's name, else nowhere."""
    return f"node {name} (dials out)" if name else "-"


def mask_secret(secret: str | None) -> str:
    """Enough to tell two keys apart, never enough to use one."""
    if not secret:
        return "-"
    return "****" + secret[-4:] if len(secret) >= 16 else "****"


def _mask_url(url: str) -> str:
    parts = urlsplit(url)
    if parts.password is None and parts.username is None:
        return url
    netloc = "****@" + (parts.hostname or "") + (f":{parts.port}" if parts.port else "")
    return urlunsplit(parts._replace(netloc=netloc))
