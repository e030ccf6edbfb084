"""metrics.cycle: the cycle a point belongs to, back-filled where the stored data decide it

Revision ID: 0002
Revises: 0001
Create Date: 2026-12-01

Points posted before this revision carry no cycle. What the stored rows decide is filled in:
- evaluation keys (`acc/`, `eval_len/`, `overlap/`, `overlap_top1/`): the n-th point of a series, by step,
  belongs to the n-th evaluated cycle of that model (experts from cycle 0, their overlap rows from cycle 1,
  mixed RLVR's policy from cycle 1, the static-OPD / MOPD student from cycles + 1); the merged model's to
  the run's last cycle; run-level overlap means were stored with step = cycle;
- training keys of a model with checkpoints: the cycle of the first checkpoint of that model at or after the
  point's step (a unit checkpoints at its last step).
Anything else stays null, and clients then fall back to what they did before.
"""

from __future__ import annotations

import json
from collections import defaultdict

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

EVAL_PREFIXES = ("acc/", "eval_len/", "overlap/", "overlap_top1/")


def upgrade() -> None:
    op.add_column("metrics", sa.Column("cycle", sa.Integer(), nullable=True))
    conn = op.get_bind()
    for run_id, spec in conn.execute(sa.text("SELECT id, spec FROM runs")).all():
        spec = json.loads(spec) if isinstance(spec, str) else spec
        _backfill(conn, run_id, spec or {})


def _backfill(conn, run_id: int, spec: dict) -> None:
    cycles = int((spec.get("schedule") or {}).get("cycles", 0))
    updates: list[dict] = []
    series: dict[tuple[str, str], list[int]] = defaultdict(list)
    for expert, key, step in conn.execute(sa.text(
            "SELECT expert, key, step FROM metrics WHERE run_id = :r ORDER BY expert, key, step"), {"r": run_id}):
        if key.startswith(EVAL_PREFIXES) or key in ("acc_mean", "overlap/mean", "overlap_top1/mean"):
            series[(expert, key)].append(step)
    for (expert, key), steps in series.items():
        for n, step in enumerate(steps):
            if expert == "":
                cycle = step                       # run-level means: step = cycle
            elif expert == "merged":
                cycle = cycles
            else:
                first = {"mixed": 1, "student": cycles + 1}.get(expert, 0)
                if key.startswith(("overlap/", "overlap_top1/")):
                    first = max(first, 1)
                cycle = first + n
            updates.append({"r": run_id, "e": expert, "k": key, "s": step, "c": cycle})
    if updates:
        conn.execute(sa.text("UPDATE metrics SET cycle = :c WHERE run_id = :r AND expert = :e AND key = :k "
                             "AND step = :s"), updates)
    # training points: the cycle of the model's checkpoint that ends the unit they belong to
    checkpoints: dict[str, list[tuple[int, int]]] = defaultdict(list)
    for expert, cycle, step in conn.execute(sa.text(
            "SELECT expert, cycle, step FROM checkpoints WHERE run_id = :r ORDER BY expert, step, cycle"),
            {"r": run_id}):
        checkpoints[expert].append((step, cycle))
    for expert, ends in checkpoints.items():
        lo = -1
        for step, cycle in ends:
            if step <= lo:
                continue
            conn.execute(sa.text("UPDATE metrics SET cycle = :c WHERE run_id = :r AND expert = :e AND cycle IS NULL "
                                 "AND step > :lo AND step <= :hi"),
                         {"c": cycle, "r": run_id, "e": expert, "lo": lo, "hi": step})
            lo = step


def downgrade() -> None:
    with op.batch_alter_table("metrics") as batch:
        batch.drop_column("cycle")
