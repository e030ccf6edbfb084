"""Pure rules of the control plane: lifecycle transitions, knob merging, spec overrides, progress."""

from __future__ import annotations

from typing import Any, NamedTuple

ACTIVE = frozenset({"queued", "running", "paused"})  # a worker may hold a unit of the run
TERMINAL = frozenset({"completed", "failed", "cancelled"})
# Heartbeats and progress are accepted while a unit may be running (a paused run finishes its unit).
REPORTING = ACTIVE


class Transition(NamedTuple):
    allowed_from: frozenset[str]
    to: str
    dispatch: bool  # hand `copd.advance` to the workers once the new state is committed


# User actions: POST /runs/{id}/<action>.
ACTIONS: dict[str, Transition] = {
    "start": Transition(frozenset({"draft"}), "queued", True),
    "pause": Transition(frozenset({"queued", "running"}), "paused", False),
    # A crashed run resumes from its last checkpoint: the worker decides where from.
    "resume": Transition(frozenset({"paused", "crashed"}), "queued", True),
    "cancel": Transition(frozenset({"draft", "queued", "running", "paused", "crashed"}), "cancelled", False),
}

# Worker reports: POST /runs/{id}/status. `completed` from `paused`: the last unit ended after a pause.
WORKER_REPORTS: dict[str, Transition] = {
    "running": Transition(frozenset({"queued"}), "running", False),
    "completed": Transition(frozenset({"running", "paused"}), "completed", False),
    "failed": Transition(frozenset({"queued", "running", "paused"}), "failed", False),
}

CRASH = Transition(frozenset({"running"}), "crashed", False)

ADVANCE_TASK = "copd.advance"


def merge_knobs(values: dict[str, Any], changes: dict[str, Any]) -> dict[str, Any]:
    """New knob values: each changed knob replaces the old one, except maps, which merge.

    `teacher_weights` merges per student and teacher, so one weight can change alone; a per-expert
    `beta` map merges into an earlier map (a number replaces any map).
    """
    out = dict(values)
    for knob, new in changes.items():
        old = out.get(knob)
        if knob == "teacher_weights" and isinstance(old, dict):
            out[knob] = {s: dict(row) for s, row in old.items()}
            for student, row in new.items():
                out[knob][student] = {**out[knob].get(student, {}), **row}
        elif isinstance(new, dict) and isinstance(old, dict):
            out[knob] = {**old, **new}
        else:
            out[knob] = new
    return out


def deep_merge(base: dict[str, Any], overrides: dict[str, Any]) -> dict[str, Any]:
    """`base` with `overrides` applied: mappings merge key by key, anything else (lists too) replaces."""
    out = dict(base)
    for k, v in overrides.items():
        out[k] = deep_merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def cycle_progress(cycle: int, cycles: int) -> float:
    """Share of the run done when `cycle` cycles have started (0..1)."""
    if cycles <= 0:
        return 0.0
    return max(0.0, min(1.0, cycle / cycles))


def fork_name(parent: str, suffix: str = "-fork") -> str:
    """Default name of a fork, kept within the 64-character name limit."""
    return parent[: 64 - len(suffix)] + suffix
