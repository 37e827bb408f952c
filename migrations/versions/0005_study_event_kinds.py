"""study_events.kind and due_at: the history records claims, deferrals, retries and reaps, not only state moves

Rows written before this revision are all state moves: the server default gives them the kind "transition". The
other kinds store the state the study stays in as from_state and to_state, so to_state stays NOT NULL.

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-02 10:00:00
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0005"
down_revision: str | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("study_events", schema=None) as batch_op:
        batch_op.add_column(sa.Column("kind", sa.String(length=16), nullable=False, server_default="transition"))
        batch_op.add_column(sa.Column("due_at", sa.DateTime(timezone=True), nullable=True))


def downgrade() -> None:
    # Events other than transitions have no meaning in the older schema: drop them with the columns.
    op.execute(sa.text("DELETE FROM study_events WHERE kind <> 'transition'"))
    with op.batch_alter_table("study_events", schema=None) as batch_op:
        batch_op.drop_column("due_at")
        batch_op.drop_column("kind")
