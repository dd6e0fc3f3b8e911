"""Alembic migrations, applied by ``relaygate serve`` at start and by ``relaygate db upgrade``.

They run once, before any worker starts (several workers migrating at once
would race). Alembic is configured here in code: no alembic.ini to ship.
"""

from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.script import ScriptDirectory

from relaygate.store.engine import ensure_sqlite_folder

__all__ = ["alembic_config", "head_revision", "upgrade"]

MIGRATIONS = Path(__file__).with_name("migrations")


def alembic_config(url: str) -> Config:
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    config.attributes["database_url"] = url
    return config


def upgrade(url: str, revision: str = "head") -> None:
    """Bring the database at ``url`` to ``revision``. Blocking: call it outside the event loop."""
    ensure_sqlite_folder(url)
    command.upgrade(alembic_config(url), revision)


def head_revision() -> str | None:
    return ScriptDirectory.from_config(alembic_config("")).get_current_head()
