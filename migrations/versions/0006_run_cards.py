"""runs.cards: the model cards a run was classified with, so its report does not need the live engine

The report stage words the text, codes the SR and names the models from the cards; reading them from the engine
made a study fail when a model was uninstalled (or the daemon restarted without it) between classify and report.
Runs classified before this revision have none: their report falls back to the engine's cards, as before.

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-01 21:00:00
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0006"
down_revision: str | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("runs", schema=None) as batch_op:
        batch_op.add_column(sa.Column("cards", sa.JSON(), nullable=True))


def downgrade() -> None:
    # Not in batch mode: on SQLite a batch rebuilds the table, and dropping `runs` with foreign keys on deletes
    # every row that references it (ON DELETE CASCADE). SQLite 3.35+ drops a column in place.
    op.drop_column("runs", "cards")
