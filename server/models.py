"""Database tables (SQLAlchemy 2 typed ORM). The API's shapes live in schemas.py, not here."""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    DateTime,
    Double,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Text,
    TypeDecorator,
    UniqueConstraint,
)
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship

from contract.vocab import DRAFT, STATUSES

RUN_STATUSES = STATUSES  # the old name here (`crashed`: heartbeats stopped; resumable from the last checkpoint)
ROLES = ("read", "write", "admin")


def utcnow() -> datetime:
    """Aware UTC now; every stored time is UTC."""
    return datetime.now(timezone.utc)


class UTCDateTime(TypeDecorator[datetime]):
    """Aware UTC datetimes on every backend (SQLite stores naive text; we store UTC and re-attach the zone)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is None:
            return None
        value = value.astimezone(timezone.utc) if value.tzinfo else value.replace(tzinfo=timezone.utc)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=timezone.utc) if value.tzinfo is None else value.astimezone(timezone.utc)


JsonType = JSON().with_variant(JSONB(), "postgresql")
# SQLite only auto-increments an INTEGER primary key; PostgreSQL gets a 64-bit one.
BigId = BigInteger().with_variant(Integer(), "sqlite")


# Deterministic constraint names, so later migrations (and SQLite batch mode) can address them.
NAMING = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING)
    type_annotation_map = {datetime: UTCDateTime(), dict[str, Any]: JsonType}


class Run(Base):
    """A run: its validated spec plus the denormalised state the API lists and filters on."""

    __tablename__ = "runs"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(64))
    strategy: Mapped[str] = mapped_column(String(32))
    spec: Mapped[dict[str, Any]]
    status: Mapped[str] = mapped_column(String(16), default=DRAFT, index=True)
    cycle: Mapped[int] = mapped_column(Integer, default=0)
    phase: Mapped[str | None] = mapped_column(String(32))
    progress: Mapped[float] = mapped_column(Double, default=0.0)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    started_at: Mapped[datetime | None]
    finished_at: Mapped[datetime | None]
    # When the status last changed: the reaper's baseline before the first heartbeat of a running spell.
    status_changed_at: Mapped[datetime] = mapped_column(default=utcnow)
    parent_run_id: Mapped[int | None] = mapped_column(ForeignKey("runs.id"), index=True)
    parent_checkpoint_id: Mapped[int | None] = mapped_column(
        ForeignKey("checkpoints.id", use_alter=True))  # runs ⇄ checkpoints is a cycle

    experts: Mapped[list[Expert]] = relationship(
        back_populates="run", order_by="Expert.id", cascade="all, delete-orphan", passive_deletes=True)


class Expert(Base):
    """One co-evolving policy of a run, with what it is doing now."""

    __tablename__ = "experts"
    __table_args__ = (UniqueConstraint("run_id", "name"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    run_id: Mapped[int] = mapped_column(ForeignKey("runs.id", ondelete="CASCADE"))
    name: Mapped[str] = mapped_column(String(64))
    domain: Mapped[Any] = mapped_column(JsonType)  # 'builtin:arith' or a jsonl domain mapping
    status: Mapped[str] = mapped_column(String(16), default="pending")
    unit: Mapped[str | None] = mapped_column(String(160))

    run: Mapped[Run] = relationship(back_populates="experts")


class KnobVersion(Base):
    """One version of a run's OPD-mixing knobs; version 0 comes from the spec."""

    __tablename__ = "knob_versions"
    __table_args__ = (UniqueConstraint("run_id", "version"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    run_id: Mapped[int] = mapped_column(ForeignKey("runs.id", ondelete="CASCADE"))
    version: Mapped[int] = mapped_column(Integer)
    values: Mapped[dict[str, Any]]
    changes: Mapped[dict[str, Any]]
    author: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    applied_cycle: Mapped[int | None] = mapped_column(Integer)
    applied_step: Mapped[int | None] = mapped_column(BigInteger)
    applied_at: Mapped[datetime | None]


class Metric(Base):
    """One point of a series; the primary key is the idempotency key (a retried batch overwrites)."""

    __tablename__ = "metrics"
    __table_args__ = {"sqlite_with_rowid": False}  # clustered by series: a series reads as one range

    run_id: Mapped[int] = mapped_column(ForeignKey("runs.id", ondelete="CASCADE"), primary_key=True)
    expert: Mapped[str] = mapped_column(String(64), primary_key=True)  # '' = run-level (null in the API)
    key: Mapped[str] = mapped_column(String(128), primary_key=True)
    step: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    value: Mapped[float] = mapped_column(Double)
    wall_time: Mapped[float | None] = mapped_column(Double)  # unix seconds
    cycle: Mapped[int | None] = mapped_column(Integer)  # null: posted by an old client, not back-filled


class Checkpoint(Base):
    """A saved expert (or merged model) at a cycle and step; the files live at `uri`."""

    __tablename__ = "checkpoints"
    __table_args__ = (UniqueConstraint("run_id", "expert", "cycle", "step"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    run_id: Mapped[int] = mapped_column(ForeignKey("runs.id", ondelete="CASCADE"))
    expert: Mapped[str] = mapped_column(String(64))
    cycle: Mapped[int] = mapped_column(Integer)
    step: Mapped[int] = mapped_column(BigInteger)
    uri: Mapped[str] = mapped_column(String(2048))
    sha256: Mapped[str] = mapped_column(String(64))
    bytes: Mapped[int] = mapped_column(BigInteger)
    final: Mapped[bool] = mapped_column(default=False)
    metrics: Mapped[dict[str, Any]]
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    optimizer: Mapped[bool | None]           # the files hold optimizer state (null: the worker did not say)
    deleted_at: Mapped[datetime | None]      # retention deleted the files; the row stays for lineage


class UnitMarker(Base):
    """What every worker host must see of a run: units done, phases dispatched, the fork seeded."""

    __tablename__ = "unit_markers"
    __table_args__ = (UniqueConstraint("run_id", "kind", "name"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    run_id: Mapped[int] = mapped_column(ForeignKey("runs.id", ondelete="CASCADE"))
    kind: Mapped[str] = mapped_column(String(16))
    name: Mapped[str] = mapped_column(String(160))
    body: Mapped[dict[str, Any]]
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class SamplePrompt(Base):
    """A held-out prompt of a domain at one cycle's evaluation: its text, reference, thumbnails and the
    answers of the policies evaluated on it (`{model: {answer, score, correct}}`)."""

    __tablename__ = "samples"
    __table_args__ = (UniqueConstraint("run_id", "cycle", "domain", "position"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    run_id: Mapped[int] = mapped_column(ForeignKey("runs.id", ondelete="CASCADE"))
    cycle: Mapped[int] = mapped_column(Integer)
    domain: Mapped[str] = mapped_column(String(64))
    position: Mapped[int] = mapped_column(Integer)  # the prompt's index in the domain's held-out prompts
    prompt: Mapped[str] = mapped_column(Text)
    reference: Mapped[str] = mapped_column(Text)
    images: Mapped[list[str]] = mapped_column(JsonType)  # base64 PNG thumbnails, in order
    answers: Mapped[dict[str, Any]]
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class Event(Base):
    """A line of a run's log: lifecycle changes, worker logs, errors."""

    __tablename__ = "events"
    __table_args__ = (Index("ix_events_run_id_id", "run_id", "id"),)

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    run_id: Mapped[int] = mapped_column(ForeignKey("runs.id", ondelete="CASCADE"))
    time: Mapped[datetime] = mapped_column(default=utcnow)
    level: Mapped[str] = mapped_column(String(16))
    expert: Mapped[str | None] = mapped_column(String(64))
    message: Mapped[str] = mapped_column(Text)


class Heartbeat(Base):
    """The last sign of life of one unit of work (c<cycle>/<phase>/<expert>)."""

    __tablename__ = "heartbeats"
    __table_args__ = (UniqueConstraint("run_id", "unit"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    run_id: Mapped[int] = mapped_column(ForeignKey("runs.id", ondelete="CASCADE"))
    unit: Mapped[str] = mapped_column(String(160))
    worker: Mapped[str] = mapped_column(String(128))
    last_seen: Mapped[datetime] = mapped_column(default=utcnow)


class Token(Base):
    """An API token; only its sha256 is stored."""

    __tablename__ = "tokens"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(64), unique=True)
    hash: Mapped[str] = mapped_column(String(64), unique=True)
    role: Mapped[str] = mapped_column(String(8))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
