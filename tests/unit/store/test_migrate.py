"""Migrations: the server's idea of the newest schema matches the migration folder."""

from __future__ import annotations

from relaygate.store.migrate import head_revision
from relaygate.store.schema import SCHEMA_REVISION


def test_schema_revision_is_the_newest_migration() -> None:
    assert head_revision() == SCHEMA_REVISION
