"""checkpoint store and retention: checkpoints.optimizer and .deleted_at; the unit_markers table

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-01

Workers on hosts without a shared disk keep a run's markers (units done, phases dispatched, the fork seeded)
in the database through the API instead of marker files. Checkpoint rows say whether their files hold
optimizer state and when retention deleted them (rows stay for lineage). Existing rows: both null.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None

JSON = sa.JSON().with_variant(postgresql.JSONB(), "postgresql")
TS = sa.DateTime(timezone=True)


def upgrade() -> None:
    with op.batch_alter_table("checkpoints") as batch:
        batch.add_column(sa.Column("optimizer", sa.Boolean(), nullable=True))
        batch.add_column(sa.Column("deleted_at", TS, nullable=True))
    op.create_table(
        "unit_markers",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("run_id", sa.Integer(), nullable=False),
        sa.Column("kind", sa.String(length=16), nullable=False),
        sa.Column("name", sa.String(length=160), nullable=False),
        sa.Column("body", JSON, nullable=False),
        sa.Column("created_at", TS, nullable=False),
        sa.ForeignKeyConstraint(["run_id"], ["runs.id"], name="fk_unit_markers_run_id_runs", ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id", name="pk_unit_markers"),
        sa.UniqueConstraint("run_id", "kind", "name", name="uq_unit_markers_run_id_kind_name"),
    )


def downgrade() -> None:
    op.drop_table("unit_markers")
    with op.batch_alter_table("checkpoints") as batch:
        batch.drop_column("deleted_at")
        batch.drop_column("optimizer")
