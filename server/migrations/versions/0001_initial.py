"""initial schema: runs, experts, knob_versions, metrics, checkpoints, events, heartbeats, tokens

Revision ID: 0001
Revises:
Create Date: 2026-05-01
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

JSON = sa.JSON().with_variant(postgresql.JSONB(), "postgresql")
TS = sa.DateTime(timezone=True)
BIG_ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def _run_fk(table: str) -> sa.ForeignKeyConstraint:
    return sa.ForeignKeyConstraint(["run_id"], ["runs.id"], name=f"fk_{table}_run_id_runs", ondelete="CASCADE")


def upgrade() -> None:
    sqlite = op.get_bind().dialect.name == "sqlite"
    # runs.parent_checkpoint_id → checkpoints and checkpoints.run_id → runs form a cycle. SQLite accepts a
    # reference to a table created later; PostgreSQL gets the constraint once both tables exist.
    ckpt_fk = [sa.ForeignKeyConstraint(["parent_checkpoint_id"], ["checkpoints.id"],
                                       name="fk_runs_parent_checkpoint_id_checkpoints")] if sqlite else []
    op.create_table(
        "runs",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("name", sa.String(64), nullable=False),
        sa.Column("strategy", sa.String(32), nullable=False),
        sa.Column("spec", JSON, nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("cycle", sa.Integer(), nullable=False),
        sa.Column("phase", sa.String(32), nullable=True),
        sa.Column("progress", sa.Double(), nullable=False),
        sa.Column("created_at", TS, nullable=False),
        sa.Column("started_at", TS, nullable=True),
        sa.Column("finished_at", TS, nullable=True),
        sa.Column("status_changed_at", TS, nullable=False),
        sa.Column("parent_run_id", sa.Integer(), nullable=True),
        sa.Column("parent_checkpoint_id", sa.Integer(), nullable=True),
        sa.PrimaryKeyConstraint("id", name="pk_runs"),
        sa.ForeignKeyConstraint(["parent_run_id"], ["runs.id"], name="fk_runs_parent_run_id_runs"),
        *ckpt_fk,
    )
    op.create_index("ix_runs_status", "runs", ["status"])
    op.create_index("ix_runs_parent_run_id", "runs", ["parent_run_id"])

    op.create_table(
        "experts",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("run_id", sa.Integer(), nullable=False),
        sa.Column("name", sa.String(64), nullable=False),
        sa.Column("domain", JSON, nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("unit", sa.String(160), nullable=True),
        sa.PrimaryKeyConstraint("id", name="pk_experts"),
        sa.UniqueConstraint("run_id", "name", name="uq_experts_run_id_name"),
        _run_fk("experts"),
    )
    op.create_table(
        "knob_versions",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("run_id", sa.Integer(), nullable=False),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("values", JSON, nullable=False),
        sa.Column("changes", JSON, nullable=False),
        sa.Column("author", sa.String(64), nullable=False),
        sa.Column("created_at", TS, nullable=False),
        sa.Column("applied_cycle", sa.Integer(), nullable=True),
        sa.Column("applied_step", sa.BigInteger(), nullable=True),
        sa.Column("applied_at", TS, nullable=True),
        sa.PrimaryKeyConstraint("id", name="pk_knob_versions"),
        sa.UniqueConstraint("run_id", "version", name="uq_knob_versions_run_id_version"),
        _run_fk("knob_versions"),
    )
    op.create_table(
        "metrics",
        sa.Column("run_id", sa.Integer(), nullable=False),
        sa.Column("expert", sa.String(64), nullable=False),
        sa.Column("key", sa.String(128), nullable=False),
        sa.Column("step", sa.BigInteger(), nullable=False),
        sa.Column("value", sa.Double(), nullable=False),
        sa.Column("wall_time", sa.Double(), nullable=True),
        sa.PrimaryKeyConstraint("run_id", "expert", "key", "step", name="pk_metrics"),
        _run_fk("metrics"),
        sqlite_with_rowid=False,
    )
    op.create_table(
        "checkpoints",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("run_id", sa.Integer(), nullable=False),
        sa.Column("expert", sa.String(64), nullable=False),
        sa.Column("cycle", sa.Integer(), nullable=False),
        sa.Column("step", sa.BigInteger(), nullable=False),
        sa.Column("uri", sa.String(2048), nullable=False),
        sa.Column("sha256", sa.String(64), nullable=False),
        sa.Column("bytes", sa.BigInteger(), nullable=False),
        sa.Column("final", sa.Boolean(), nullable=False),
        sa.Column("metrics", JSON, nullable=False),
        sa.Column("created_at", TS, nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_checkpoints"),
        sa.UniqueConstraint("run_id", "expert", "cycle", "step", name="uq_checkpoints_run_id_expert_cycle_step"),
        _run_fk("checkpoints"),
    )
    if not sqlite:
        op.create_foreign_key("fk_runs_parent_checkpoint_id_checkpoints", "runs", "checkpoints",
                              ["parent_checkpoint_id"], ["id"])
    op.create_table(
        "events",
        sa.Column("id", BIG_ID, nullable=False),
        sa.Column("run_id", sa.Integer(), nullable=False),
        sa.Column("time", TS, nullable=False),
        sa.Column("level", sa.String(16), nullable=False),
        sa.Column("expert", sa.String(64), nullable=True),
        sa.Column("message", sa.Text(), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_events"),
        _run_fk("events"),
    )
    op.create_index("ix_events_run_id_id", "events", ["run_id", "id"])
    op.create_table(
        "heartbeats",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("run_id", sa.Integer(), nullable=False),
        sa.Column("unit", sa.String(160), nullable=False),
        sa.Column("worker", sa.String(128), nullable=False),
        sa.Column("last_seen", TS, nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_heartbeats"),
        sa.UniqueConstraint("run_id", "unit", name="uq_heartbeats_run_id_unit"),
        _run_fk("heartbeats"),
    )
    op.create_table(
        "tokens",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("name", sa.String(64), nullable=False),
        sa.Column("hash", sa.String(64), nullable=False),
        sa.Column("role", sa.String(8), nullable=False),
        sa.Column("created_at", TS, nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_tokens"),
        sa.UniqueConstraint("name", name="uq_tokens_name"),
        sa.UniqueConstraint("hash", name="uq_tokens_hash"),
    )


def downgrade() -> None:
    for table in ("tokens", "heartbeats", "events"):
        op.drop_table(table)
    if op.get_bind().dialect.name != "sqlite":
        op.drop_constraint("fk_runs_parent_checkpoint_id_checkpoints", "runs", type_="foreignkey")
    for table in ("checkpoints", "metrics", "knob_versions", "experts", "runs"):
        op.drop_table(table)
