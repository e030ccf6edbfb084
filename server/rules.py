"""Pure rules of the control plane: lifecycle transitions, knob merging, spec overrides, progress."""

from __future__ import annotations

from typing import Any

# The lifecycle table and the status sets are the shared vocabulary's (contract.vocab); merge_knobs is the
# spec's one knob-merge rule. Both are re-exported here, where the server's rules read them.
from contract.broker import ADVANCE_TASK  # noqa: F401
from contract.spec import merge_knobs  # noqa: F401
from contract.vocab import (  # noqa: F401
    ACTIONS,
    ACTIVE,
    CRASH,
    REPORTING,
    RESUMABLE_FAILURE,
    TERMINAL,
    WORKER_REPORTS,
    Transition,
)


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
