"""Stored responses keep their output once, inside the Response object; an unused index goes.

``responses.output_items`` held a copy of the Response object's ``output``, written with
every stored answer; ``ix_responses_owner_created`` was kept up to date on every insert
and read by no query. Neither loses anything: the output is in ``responses.response``.

Revision ID: 0007
Revises: 0006
Create Date: 2026-11-30
"""

from __future__ import annotations

import msgspec
import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.drop_index("ix_responses_owner_created", "responses")
    with op.batch_alter_table("responses") as batch:
        batch.drop_column("output_items")


def downgrade() -> None:
    with op.batch_alter_table("responses") as batch:
        batch.add_column(sa.Column("output_items", sa.LargeBinary, nullable=True))
    table = sa.table(
        "responses",
        sa.column("id", sa.String),
        sa.column("owner", sa.String),
        sa.column("response", sa.LargeBinary),
        sa.column("output_items", sa.LargeBinary),
    )
    conn = op.get_bind()
    found = conn.execute(sa.select(table.c.id, table.c.owner, table.c.response)).all()
    for row in found:  # rows are copied back one by one: a downgrade is rare and offline
        output = msgspec.json.decode(row.response).get("output") or []
        conn.execute(
            table.update()
            .where(table.c.id == row.id, table.c.owner == row.owner)
            .values(output_items=msgspec.json.encode(output))
        )
    with op.batch_alter_table("responses") as batch:
        batch.alter_column("output_items", existing_type=sa.LargeBinary, nullable=False)
    op.create_index("ix_responses_owner_created", "responses", ["owner", "created_at"])
