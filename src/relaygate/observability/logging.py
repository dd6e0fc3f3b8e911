"""The process's log set-up, done once at start by whoever starts the app."""

from __future__ import annotations

import logging

from relaygate.settings import Settings

__all__ = ["configure_logging"]


def configure_logging(settings: Settings) -> None:
    logging.basicConfig(
        level=settings.log_level.upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    # Alembic announces each of its plugins at INFO on every start; keep its migrations.
    logging.getLogger("alembic.runtime.plugins").setLevel(logging.WARNING)
