"""REST bodies of /api/v1 (Create / Update / Public), shared by the server, the one client and every caller.

Torch-free and SQL-free: the server maps its tables onto these (server/schemas.py), clients parse them.
"""

from __future__ import annotations

import re
from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, FiniteFloat, model_serializer

from contract import metrics as M
from contract.spec import (
    AlertsSpec,
    CheckpointsSpec,
    ComputeSpec,
    DistillSpec,
    DomainRef,
    EvalSpec,
    GrpoSpec,
    MergeSpec,
    MixedSpec,
    OpdSpec,
    RolloutSpec,
    ScheduleSpec,
    Knobs,
    TinyModelSpec,
    Tracker,
)
from contract.vocab import (
    DOMAIN_TYPES,
    EXTRACTS,
    BASE_MODELS,
    BUILTIN_DOMAINS,
    KINDS,
    NAME_RE,
    RESERVED_EXPERT_NAMES,
    STATUSES,
    STRATEGIES,
    STRATEGY_NOTES,
    UNIT_ID_RE,
    VERIFIERS,
    ACTIONS,
    ACTIVE,
    RUNNABLE,
    TERMINAL,
    EventLevel,
    ExpertStatus,
    RunStatus,
    StrategyName,
    WorkerStatus,
)

MAX_BATCH = 10_000  # metric points per POST
MAX_ID = 2**31 - 1  # ids are 32-bit on PostgreSQL; larger ones are 422, never a database error
MAX_STEP = 10**12
MAX_CYCLE = 1_000_000


Name = Annotated[str, Field(pattern=NAME_RE, description="Letters, digits, '_' or '-'; at most 64.")]
# An expert column also holds `merged` (the all-in-one model) and `base` (the untrained base model).
ExpertRef = Annotated[str, Field(pattern=NAME_RE, description="An expert of the run, `merged` or `base`.")]
# Grouped metric keys such as `loss/grpo`, `acc/text`: '/'-separated segments, none starting with '.'.
MetricKey = Annotated[str, Field(
    max_length=128, pattern=r"^[A-Za-z0-9_][A-Za-z0-9_.:@+-]*(/[A-Za-z0-9_][A-Za-z0-9_.:@+-]*)*$",
    description="Metric key, e.g. `loss/grpo`, `opd/kl`, `acc/<domain>`.")]
Phase = Annotated[str, Field(pattern=r"^[a-z][a-z0-9_]{0,31}$", description="e.g. `rl`, `opd`, `eval`, `merge`.")]
Unit = Annotated[str, Field(pattern=UNIT_ID_RE,
                            description="A unit of work: `c<cycle>/<kind>/<expert>` (e.g. `c1/rl/text`), "
                                        "`c<cycle>/<kind>` (e.g. `c2/eval`) or `final/merge`.")]
WorkerName = Annotated[str, Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.:@-]{0,127}$",
                                  description="Who runs the unit, e.g. `celery@gpu-3`.")]
Cycle = Annotated[int, Field(ge=0, le=MAX_CYCLE)]
Step = Annotated[int, Field(ge=0, le=MAX_STEP)]


class _In(BaseModel):
    model_config = ConfigDict(extra="forbid")


# ---- runs


class ExpertPublic(BaseModel):
    """An expert as the spec gave it, plus what it is doing now."""

    name: str
    domain: DomainRef | dict[str, Any]
    status: ExpertStatus | str = "pending"
    unit: str | None = None


class RunPublic(BaseModel):
    """A run: its spec fields, its state and its lineage."""

    id: int
    name: str
    base_model: str
    strategy: StrategyName | str
    experts: list[ExpertPublic]
    topology: str
    schedule: ScheduleSpec
    grpo: GrpoSpec
    opd: OpdSpec
    merge: MergeSpec
    eval: EvalSpec
    mixed: MixedSpec = Field(default_factory=MixedSpec)
    distill: DistillSpec = Field(default_factory=DistillSpec)
    tiny: TinyModelSpec
    rollout: RolloutSpec = Field(default_factory=RolloutSpec)
    compute: ComputeSpec = Field(default_factory=ComputeSpec)
    report_to: list[Tracker] = Field(default_factory=list)
    alerts: AlertsSpec = Field(default_factory=AlertsSpec)
    checkpoints: CheckpointsSpec = Field(default_factory=CheckpointsSpec)
    seed: int
    status: RunStatus
    cycle: int
    phase: str | None
    progress: float = Field(description="0..1")
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    parent_run_id: int | None
    parent_checkpoint_id: int | None


class RunList(BaseModel):
    items: list[RunPublic]
    total: int


class ForkCreate(_In):
    """A new draft run starting from a checkpoint of another run."""

    checkpoint_id: int = Field(ge=1, le=MAX_ID, description="A checkpoint of the run being forked.")
    name: Name | None = Field(None, description="Name of the new run; default `<parent>-fork`.")
    overrides: dict[str, Any] = Field(default_factory=dict, description="Spec fields to change (deep-merged).")


class StatusReport(_In):
    """A worker moving a run along: queued→running, running→completed | failed."""

    status: WorkerStatus
    message: str | None = Field(None, max_length=4000)
    resumable: bool = Field(False, description="With `failed`: the cause was transient (a full disk, a service "
                            "that stayed down); the run becomes `crashed` instead, which `resume` continues.")


class ProgressReport(_In):
    """Where a run is: cycle, phase and, optionally, which expert is on which unit."""

    cycle: Cycle
    phase: Phase
    expert: Name | None = None
    unit: Unit | None = None
    expert_status: ExpertStatus | None = Field(None, description="Default `running` when a unit is given.")
    progress: float | None = Field(None, ge=0.0, le=1.0)


class HeartbeatCreate(_In):
    unit: Unit
    worker: WorkerName
    done: bool = Field(False, description="The unit finished or stopped: it is no longer in flight, so its "
                                          "silence no longer means a crash.")


class HeartbeatPublic(BaseModel):
    """The heartbeat as stored, and the run's status (a worker stops when it reads cancelled or paused)."""

    unit: str
    worker: str
    last_seen: datetime
    run_status: RunStatus


# ---- knobs


class KnobsUpdate(_In):
    expected_version: int = Field(ge=0, le=MAX_ID, description="The version the change was made against.")
    changes: dict[str, Any] = Field(description="Knob → new value: beta, rl_steps, opd_steps, teacher_weights, lr.")


class KnobsApplied(_In):
    cycle: Cycle
    step: Step


class KnobApplication(BaseModel):
    cycle: int
    step: int
    at: datetime


class KnobHistoryEntry(BaseModel):
    version: int
    changes: dict[str, Any]
    author: str
    created_at: datetime
    applied: KnobApplication | None


class KnobsPublic(BaseModel):
    version: int
    values: Knobs = Field(description="The knob values in force at `version`.")
    history: list[KnobHistoryEntry]

    @property
    def pending(self) -> list[KnobHistoryEntry]:
        """Saved changes no worker has applied yet (version 0, the spec itself, is never pending)."""
        return [h for h in self.history if h.version > 0 and h.applied is None]


# ---- metrics


class MetricPointIn(_In):
    expert: ExpertRef | None = Field(None, description="An expert, `merged`, or null for a run-level series.")
    key: MetricKey
    step: Step
    cycle: Cycle | None = Field(None, description="The cycle the point belongs to (0: before training); "
                                                 "optional for old clients.")
    value: FiniteFloat
    wall_time: FiniteFloat | None = Field(None, ge=0.0, description="Unix seconds; default the time received.")


class MetricBatch(_In):
    points: list[MetricPointIn] = Field(max_length=MAX_BATCH, description=f"At most {MAX_BATCH} points.")


class MetricsWritten(BaseModel):
    points: int = Field(description="Points written (a point repeated in the batch counts once; the last wins).")


class MetricPointOut(BaseModel):
    step: int
    value: float
    wall_time: float | None
    cycle: int | None = Field(None, description="Present when the point was posted with its cycle.")

    @model_serializer(mode="wrap")
    def _cycle_when_known(self, handler: Any) -> dict[str, Any]:
        out = handler(self)
        if out.get("cycle") is None:
            out.pop("cycle", None)  # points of old clients look as they always did
        return out


class Series(BaseModel):
    expert: str | None
    key: str
    points: list[MetricPointOut]


class SeriesList(BaseModel):
    series: list[Series]


# ---- checkpoints


def _clean_uri(uri: str) -> str:
    if any(ord(c) < 32 for c in uri):
        raise ValueError("must not contain control characters")
    if ".." in re.split(r"[/\\]", uri):
        raise ValueError("must not contain '..' segments")
    return uri


class CheckpointCreate(_In):
    expert: ExpertRef
    cycle: Cycle
    step: Step
    uri: Annotated[str, Field(min_length=1, max_length=2048), AfterValidator(_clean_uri)]
    sha256: Annotated[str, Field(pattern=r"^[0-9a-fA-F]{64}$"), AfterValidator(str.lower)]
    bytes: int = Field(ge=0, le=2**62)
    metrics: dict[MetricKey, FiniteFloat] = Field(default_factory=dict, max_length=1000,
                                                  description="Summary metrics, e.g. `acc/text`.")
    final: bool = False
    optimizer: bool | None = Field(None, description="Whether the files hold optimizer state (null: not said).")


class CheckpointPublic(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: int
    run_id: int
    expert: str
    cycle: int
    step: int
    uri: str
    sha256: str
    bytes: int
    final: bool
    metrics: dict[str, float]
    created_at: datetime
    optimizer: bool | None = Field(None, description="Whether the files hold optimizer state (null: not said).")
    deleted_at: datetime | None = Field(None, description="When retention (or `copd checkpoints gc`) deleted "
                                        "the files; the record stays, for lineage.")


class CheckpointList(BaseModel):
    items: list[CheckpointPublic]
    total: int


class CheckpointDeleted(_In):
    """Mark a checkpoint's files deleted (by retention or `copd checkpoints gc`)."""

    reason: str = Field("retention", min_length=1, max_length=200)


# ---- unit markers and leases: what every worker host must see (no shared disk needed)

MarkerKind = Literal["done", "sent", "fork"]


class MarkerCreate(_In):
    """A run's marker: a unit done (`done`, name = unit id), a phase dispatched (`sent`, name = phase id),
    the fork seeded (`fork`, name `fork`)."""

    kind: MarkerKind
    name: str = Field(min_length=1, max_length=160, pattern=r"^[A-Za-z0-9_/.\-]+$")
    body: dict[str, Any] = Field(default_factory=dict)
    exclusive: bool = Field(False, description="409 when the marker exists already (a claim), instead of "
                                               "replacing it.")


class MarkerPublic(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    kind: str
    name: str
    body: dict[str, Any]
    created_at: datetime


class MarkerList(BaseModel):
    items: list[MarkerPublic]


class LeaseRequest(_In):
    """Take (or renew) the lease of a unit: granted when no other worker's heartbeat of it is younger than
    `ttl_s` seconds. The unit's heartbeats keep it; its `done` heartbeat releases it."""

    unit: Unit
    worker: WorkerName
    ttl_s: float = Field(30.0, gt=0, le=86_400)


class LeasePublic(BaseModel):
    granted: bool
    holder: str
    last_seen: datetime


# ---- events


class EventCreate(_In):
    level: EventLevel = "info"
    expert: ExpertRef | None = None
    message: str = Field(min_length=1, max_length=10_000)


class EventPublic(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: int
    time: datetime
    level: str
    expert: str | None
    message: str


class EventList(BaseModel):
    items: list[EventPublic]
    total: int


# ---- sample prompts: what the eval unit shows of each domain (the dashboard's Samples section)

MAX_SAMPLES = 64          # prompts per POST (a run's domains × the few each eval keeps)
MAX_SAMPLE_IMAGES = 16    # images per prompt (a video: its frames)
MAX_THUMB_PX = 96         # a thumbnail's longest side, pixels
MAX_THUMB_CHARS = 65_536  # base64 characters of one thumbnail (a 96 × 96 RGBA PNG stored raw is ~49,000)
_PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def png_size(data: bytes) -> tuple[int, int]:
    r"""(width, height) from a PNG's IHDR chunk; ValueError when the bytes are not a PNG.

    >>> png_size(b"\x89PNG\r\n\x1a\n" + b"\x00\x00\x00\rIHDR" + (96).to_bytes(4, "big") + (40).to_bytes(4, "big"))
    (96, 40)
    """
    if len(data) < 24 or data[:8] != _PNG_MAGIC or data[12:16] != b"IHDR":
        raise ValueError("not a PNG image")
    return int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")


def _check_thumbnail(value: str) -> str:
    import base64
    import binascii

    try:
        raw = base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        raise ValueError("must be base64 of a PNG image") from None
    w, h = png_size(raw)
    if max(w, h) > MAX_THUMB_PX or min(w, h) < 1:
        raise ValueError(f"a thumbnail is at most {MAX_THUMB_PX} px a side; this one is {w} x {h}")
    return value


Thumbnail = Annotated[str, Field(max_length=MAX_THUMB_CHARS,
                                 description=f"A PNG of at most {MAX_THUMB_PX} px a side, base64 (standard "
                                             "alphabet, padded)."),
                      AfterValidator(_check_thumbnail)]


class SampleAnswer(_In):
    """One policy's greedy answer to a sample prompt at an evaluation."""

    model: ExpertRef = Field(description="The expert (or `merged`, `mixed`, `student`) that answered.")
    answer: str = Field(max_length=4_000, description="The completion, as the verifier saw it.")
    score: FiniteFloat = Field(ge=0.0, le=1.0, description="The verifier's score (1 right, 0 wrong).")
    correct: bool = Field(description="score == 1.")


class PromptSample(_In):
    """A held-out prompt of a domain (the same few every cycle), its reference answer, its images as
    thumbnails, and the answers of the policies evaluated on it."""

    domain: Name = Field(description="The domain, by the name of the expert that owns it (as in `acc/<domain>`).")
    index: int = Field(ge=0, le=MAX_ID, description="Its position in the domain's held-out prompts.")
    prompt: str = Field(max_length=20_000)
    reference: str = Field(max_length=4_000, description="The reference answer.")
    images: list[Thumbnail] = Field(default_factory=list, max_length=MAX_SAMPLE_IMAGES,
                                    description="The prompt's images (a video: its frames, in order); "
                                                "empty for a text prompt.")
    answers: list[SampleAnswer] = Field(default_factory=list, max_length=MAX_SAMPLES)


class SamplesReport(_In):
    """POST /runs/{id}/samples: an evaluation's sample prompts. A (domain, index) already stored for the
    cycle is updated: its answers are merged by model (the merge unit adds `merged` to the last cycle's)."""

    cycle: Cycle
    samples: list[PromptSample] = Field(min_length=1, max_length=MAX_SAMPLES)


class SamplesWritten(BaseModel):
    samples: int = Field(description="Prompts stored or updated.")


class SamplesPublic(BaseModel):
    """GET /runs/{id}/samples: one cycle's sample prompts (default: the latest cycle that has any)."""

    cycle: int | None = Field(description="The cycle shown; null when the run has no samples yet.")
    cycles: list[int] = Field(description="Every cycle with samples, ascending.")
    samples: list[PromptSample] = Field(description="By domain (in the order first reported), then index.")


# ---- tokens


class TokenCreate(_In):
    name: Name
    role: Literal["read", "write"]


class TokenPublic(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: int
    name: str
    role: str
    created_at: datetime


class TokenCreated(TokenPublic):
    token: str = Field(description="The bearer token; shown once, only its hash is stored.")


class Health(BaseModel):
    status: Literal["ok"] = "ok"
    version: str


class MetricKeyPublic(BaseModel):
    key: str = Field(description="Exact key, or a pattern with one `<name>` part, e.g. `acc/<domain>`.")
    reduction: Literal["mean", "sum", "max"]
    phase: Literal["train", "opd", "eval", "merge"]
    per: Literal["step", "cycle"]
    meaning: str


class StrategyPublic(BaseModel):
    name: str
    note: str


class Vocab(BaseModel):
    """GET /vocab: every name the server knows, so clients never keep a list of their own."""

    strategies: list[StrategyPublic]
    builtin_domains: list[str]
    verifiers: list[str]
    extracts: list[str] = Field(default_factory=lambda: list(EXTRACTS),
                                description="How numeric / exact read the answer (a domain's `extract`).")
    domain_types: list[str] = Field(default_factory=lambda: list(DOMAIN_TYPES),
                                    description="`type` of a file domain (docs/data.md), besides a builtin name.")
    base_models: list[str] = Field(description="Builtin base models (besides a local folder or a hub id).")
    reserved_names: list[str] = Field(description="Names an expert may not take.")
    statuses: list[str]
    status_sets: dict[str, list[str]] = Field(description="active, runnable, terminal.")
    actions: dict[str, list[str]] = Field(description="Lifecycle action → the statuses it is allowed from.")
    unit_kinds: list[str]
    metrics: list[MetricKeyPublic]


def vocab() -> Vocab:
    """The vocabulary as one body."""
    return Vocab(
        strategies=[StrategyPublic(name=n, note=STRATEGY_NOTES[n]) for n in STRATEGIES],
        builtin_domains=list(BUILTIN_DOMAINS), verifiers=list(VERIFIERS), base_models=list(BASE_MODELS),
        reserved_names=list(RESERVED_EXPERT_NAMES), statuses=list(STATUSES),
        status_sets={"active": sorted(ACTIVE), "runnable": sorted(RUNNABLE), "terminal": sorted(TERMINAL)},
        actions={a: sorted(t.allowed_from) for a, t in ACTIONS.items()}, unit_kinds=list(KINDS),
        metrics=[MetricKeyPublic(**row) for row in M.table()])


# ---- errors: one body for every 4xx and 5xx (server/errors.py writes it, contract/client.py reads it)

MAX_ERRORS = 20  # errors listed in an error body; `error_count` says how many there were


class FieldError(BaseModel):
    """One refused field: its dotted path into the body (or the query/path parameter's name)."""

    field: str = Field(description="Dotted path, e.g. `points.3.value`, `changes.beta.text`; `body` for the whole.")
    message: str
    type: str = Field("", description="The kind of error (pydantic's error type, e.g. `missing`, `value_error`).")


class ErrorBody(BaseModel):
    """Every error: 401, 403, 404, 409, 413, 422, 500 and 503 alike."""

    detail: str = Field(description="One line naming the field(s) and what is wrong.")
    errors: list[FieldError] = Field(default_factory=list,
                                     description=f"The first {MAX_ERRORS} field errors (422; often empty otherwise).")
    error_count: int = Field(0, description="How many field errors there were in all (past the first "
                             f"{MAX_ERRORS} too).")
