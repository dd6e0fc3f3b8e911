"""Migrations: the server's idea of the newest schema matches the migration folder."""

from __future__ import annotations

from relaygate.store.migrate import SCHEMA_REVISION, head_revision


def test_schema_revision_is_the_newest_migration() -> None:
    assert head_revision() == SCHEMA_REVISION
