"""The vocabulary every part shares, defined once: run statuses and their sets, the lifecycle table,
strategies, builtin domains, verifiers, reserved model names, unit kinds and the one unit-id format.

Metric keys have their own registry (contract/metrics.py). Nothing here imports another copd part.
"""

from __future__ import annotations

import re
from typing import Literal, NamedTuple, get_args

# ---- run statuses and the lifecycle -------------------------------------------------------------

RunStatus = Literal["draft", "queued", "running", "paused", "completed", "failed", "cancelled", "crashed"]
STATUSES: tuple[str, ...] = get_args(RunStatus)
DRAFT, QUEUED, RUNNING, PAUSED, COMPLETED, FAILED, CANCELLED, CRASHED = STATUSES

ACTIVE = frozenset({QUEUED, RUNNING, PAUSED})   # a worker may hold a unit of the run (a paused run finishes it)
RUNNABLE = frozenset({QUEUED, RUNNING})         # a new unit of the run may start
TERMINAL = frozenset({COMPLETED, FAILED, CANCELLED})  # over: nothing moves it any more
REPORTING = ACTIVE                              # heartbeats and progress are accepted
WATCH_STOP = TERMINAL | {CRASHED}               # `copd runs watch` stops here (crashed waits for a resume)


class Transition(NamedTuple):
    """A move of the lifecycle: from any of `allowed_from` to `to`."""

    allowed_from: frozenset[str]
    to: str
    dispatch: bool  # hand `copd.advance` to the workers once the new state is committed


# User actions: POST /runs/{id}/<action>.
ACTIONS: dict[str, Transition] = {
    "start": Transition(frozenset({DRAFT}), QUEUED, True),
    "pause": Transition(frozenset({QUEUED, RUNNING}), PAUSED, False),
    # A crashed run resumes from its last checkpoint: the worker decides where from.
    "resume": Transition(frozenset({PAUSED, CRASHED}), QUEUED, True),
    "cancel": Transition(frozenset({DRAFT, QUEUED, RUNNING, PAUSED, CRASHED}), CANCELLED, False),
}
Action = Literal["start", "pause", "resume", "cancel"]

# Worker reports: POST /runs/{id}/status. `completed` from `paused`: the last unit ended after a pause.
WORKER_REPORTS: dict[str, Transition] = {
    RUNNING: Transition(frozenset({QUEUED}), RUNNING, False),
    COMPLETED: Transition(frozenset({RUNNING, PAUSED}), COMPLETED, False),
    FAILED: Transition(frozenset(ACTIVE), FAILED, False),
}
WorkerStatus = Literal["running", "completed", "failed"]

CRASH = Transition(frozenset({RUNNING}), CRASHED, False)  # the reaper: heartbeats of a unit in flight stopped
# A worker's `failed` report with `resumable`: the cause was transient (a full disk, say); resume continues.
RESUMABLE_FAILURE = Transition(frozenset(ACTIVE), CRASHED, False)

ExpertStatus = Literal["pending", "running", "done", "failed"]
EventLevel = Literal["debug", "info", "warning", "error"]

# ---- strategies, domains, verifiers, names ------------------------------------------------------

StrategyName = Literal["copd", "independent", "independent_merge", "mixed_rlvr", "static_opd", "mopd"]
STRATEGIES: tuple[str, ...] = get_args(StrategyName)
STRATEGY_NOTES: dict[str, str] = {
    "copd": "experts in parallel, mutual on-policy distillation in Phase II, merged at the end (the method)",
    "independent": "each expert RLVR on its own domain only, alone",
    "independent_merge": "independent experts, then a uniform parameter average",
    "mixed_rlvr": "one policy, RLVR on the pooled domains",
    "static_opd": "trained experts, then one-way OPD into a student from fixed teachers",
    "mopd": "trained experts, then all teach one student, teacher routed by the prompt's domain",
}

BUILTIN_DOMAINS: tuple[str, ...] = (
    "builtin:arith", "builtin:grid", "builtin:frames",
    # conflict domains (trainer/domains/marked.py), for the divergence-cost suites
    "builtin:marked_sum", "builtin:marked_absdiff", "builtin:marked_max",
    "builtin:offset_0", "builtin:offset_1", "builtin:offset_2",
    "builtin:implicit_sum", "builtin:implicit_absdiff", "builtin:implicit_max",
    # rendered image and video domains (trainer/domains/visual.py): their prompts carry images
    "builtin:shapes", "builtin:motion")
VISUAL_DOMAINS: tuple[str, ...] = ("builtin:shapes", "builtin:motion")

Verifier = Literal["exact", "numeric", "choice", "regex", "math"]
VERIFIERS: tuple[str, ...] = get_args(Verifier)
# How `numeric` / `exact` read the answer out of a completion (trainer/domains/verifiers.py, docs/data.md).
Extract = Literal["last", "first", "hash", "boxed", "answer_tag", "whole"]
EXTRACTS: tuple[str, ...] = get_args(Extract)
DOMAIN_TYPES: tuple[str, ...] = ("jsonl", "dataset")  # besides a builtin name

BASE_MODELS: tuple[str, ...] = ("builtin:tiny", "builtin:tiny-vl")  # besides a local Hugging Face folder or a hub id
TEXT_ONLY_BASES: tuple[str, ...] = ("builtin:tiny",)  # builtin bases without a vision tower

# Model names that are not experts: metric series and checkpoint folders of the merged all-in-one model,
# the untrained base, mixed RLVR's one policy and the static-OPD / MOPD student.
MERGED, BASE, MIXED, STUDENT = "merged", "base", "mixed", "student"
RESERVED_EXPERT_NAMES: tuple[str, ...] = (MERGED, BASE, MIXED, STUDENT)
# An expert name becomes a folder name, a metric key part and a URL segment: keep it plain.
NAME_RE = r"^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$"

# ---- units --------------------------------------------------------------------------------------

# Unit kinds: the phases a run moves through. rl = Phase I (RLVR), opd = Phase II (mutual OPD) of one expert;
# lockstep = Phase II of every expert as one unit, advancing a step at a time (opd.teacher_sync: step).
Kind = Literal["eval", "rl", "opd", "merge", "mixed", "distill", "lockstep"]
KINDS: tuple[str, ...] = get_args(Kind)
EXPERT_KINDS = frozenset({"rl", "opd"})   # units of one expert; the others are run-wide
PHASE_NAMES: dict[str, str] = {"rl": "Phase I RLVR", "opd": "Phase II OPD", "eval": "evaluation",
                               "merge": "merge", "mixed": "mixed RLVR", "distill": "distillation",
                               "lockstep": "Phase II OPD, experts in lockstep"}

MERGE_UNIT = "final/merge"
# The one unit-id format: `c<cycle>/<kind>` for run-wide units, `c<cycle>/<kind>/<expert>` for an expert's,
# `final/merge` for the merge. The API also accepts the older `c<cycle>/merge/merged` and `c<cycle>/<kind>/all`.
UNIT_ID_RE = r"^(final/merge|c[0-9]{1,7}/[a-z][a-z0-9_]{0,31}(/[A-Za-z0-9][A-Za-z0-9_-]{0,63})?)$"
_UNIT_ID = re.compile(UNIT_ID_RE)


def unit_id(cycle: int, kind: str, expert: str | None = None) -> str:
    """The id of the unit (cycle, kind, expert).

    >>> unit_id(1, "rl", "text"), unit_id(2, "eval"), unit_id(4, "merge")
    ('c1/rl/text', 'c2/eval', 'final/merge')
    """
    if kind == "merge":
        return MERGE_UNIT
    return f"c{cycle}/{kind}" + (f"/{expert}" if expert else "")


def parse_unit_id(value: str) -> tuple[int, str, str | None]:
    """(cycle, kind, expert) of a unit id; ValueError for anything else. `final/merge` has cycle 0.

    >>> parse_unit_id("c3/opd/image"), parse_unit_id("final/merge")
    ((3, 'opd', 'image'), (0, 'merge', None))
    """
    if not _UNIT_ID.match(value):
        raise ValueError(f"not a unit id: {value!r} (c<cycle>/<kind>[/<expert>] or {MERGE_UNIT})")
    if value == MERGE_UNIT:
        return 0, "merge", None
    parts = value.split("/")
    return int(parts[0][1:]), parts[1], parts[2] if len(parts) > 2 else None
