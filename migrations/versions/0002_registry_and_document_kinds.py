"""patient/accession/study date on studies (registry export); outbox.kind (SR, key images, HL7); instances.purged_at

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-29 17:50:00
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("studies", schema=None) as batch_op:
        batch_op.add_column(sa.Column("patient_id", sa.String(length=64), nullable=True))
        batch_op.add_column(sa.Column("accession_number", sa.String(length=16), nullable=True))
        batch_op.add_column(sa.Column("study_date", sa.String(length=8), nullable=True))
    with op.batch_alter_table("outbox", schema=None) as batch_op:
        # Every row written before this revision is an SR: the only document predictd sent until now.
        batch_op.add_column(sa.Column("kind", sa.String(length=16), nullable=False, server_default="sr"))
    with op.batch_alter_table("instances", schema=None) as batch_op:
        batch_op.add_column(sa.Column("purged_at", sa.DateTime(timezone=True), nullable=True))


def downgrade() -> None:
    # Not in batch mode: on SQLite a batch rebuilds the table, and dropping `studies` with foreign keys on deletes
    # every row that references it (ON DELETE CASCADE). SQLite 3.35+ drops a column in place.
    op.drop_column("instances", "purged_at")
    op.drop_column("outbox", "kind")
    for column in ("study_date", "accession_number", "patient_id"):
        op.drop_column("studies", column)
