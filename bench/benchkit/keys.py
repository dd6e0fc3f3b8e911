"""API keys, fresh databases and usage outboxes for gateway runs.

Every gateway start gets its own new SQLite database under bench/.work/db/ (and usage
outbox under bench/.work/outbox/), and the run's admin key through RELAYGATE_ADMIN_KEY
(`relaygate serve` migrates the database and stores the key). Keys of other tiers are
written into that database once the gateway is up, with the relaygate package the bench
imports.
"""

from __future__ import annotations

import asyncio
import secrets
import shutil
from pathlib import Path

from .common import WORK_DIR

DB_DIR = WORK_DIR / "db"
OUTBOX_DIR = WORK_DIR / "outbox"
SECRET_PREFIX = "rg_bench"  # then 40 random URL-safe characters
KEY_PREFIX = "rg_"  # the gateway's auth.key_prefix (shown in key listings)
BENCH_TIER = "bench"  # five limits, all out of reach (bench/relaygate.yaml)
OPEN_TIER = "bench_open"  # no limits: authentication only
BENCH_TENANT = "bench"


def new_secret() -> str:
    """A fresh API key: "rg_bench" + 40 URL-safe random characters."""
    return SECRET_PREFIX + secrets.token_urlsafe(30)


def bearer(secret: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {secret}"}


def fresh_db(name: str) -> str:
    """The URL of a new, empty SQLite database bench/.work/db/<name>.db (removed if present)."""
    path = DB_DIR / f"{name}.db"
    DB_DIR.mkdir(parents=True, exist_ok=True)
    for suffix in ("", "-wal", "-shm", "-journal"):
        Path(f"{path}{suffix}").unlink(missing_ok=True)
    return f"sqlite+aiosqlite:///{path}"


def fresh_outbox(name: str) -> str | None:
    """A new, empty usage outbox folder bench/.work/outbox/<name>, when the relaygate being
    measured has one (usage.outbox_dir; it defaults to ./data/outbox); else None."""
    from relaygate.settings import Settings

    if "usage" not in Settings.__struct_fields__:
        return None
    path = OUTBOX_DIR / name
    shutil.rmtree(path, ignore_errors=True)
    path.mkdir(parents=True)
    return str(path)


def add_keys(url: str, tiers_by_secret: dict[str, str]) -> None:
    """Store these keys (secret -> tier) in a tenant "bench" of the database at ``url``
    (migrated first if need be). Blocking; call it outside any event loop."""
    from relaygate.store.migrate import upgrade

    upgrade(url)
    asyncio.run(_add_keys(url, tiers_by_secret))


async def _add_keys(url: str, tiers_by_secret: dict[str, str]) -> None:
    from relaygate.store.engine import create_engine
    from relaygate.store.identity import IdentityStore

    engine = create_engine(url)
    try:
        store = IdentityStore(engine)
        tenant = await store.create_tenant(BENCH_TENANT)
        for secret, tier in tiers_by_secret.items():
            await store.create_key(
                tenant.id, prefix=KEY_PREFIX, tier=tier, name=f"bench {tier}", secret=secret
            )
    finally:
        await engine.dispose()
