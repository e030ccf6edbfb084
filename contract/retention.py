"""Checkpoint retention, as pure functions: which checkpoints a unit still needs, and what may go.

The spec's `checkpoints: {keep_last, keep_every, optimizer}` (contract.spec.CheckpointsSpec) decides, per
policy (an expert, or the baselines' `mixed` / `student`), over its checkpoints ordered by (cycle, step):
  - weights: the newest `keep_last` stay, and with `keep_every: K` the end of every K-th cycle
    (`c<K>-opd`, `c<2K>-opd`, … or `-mixed` / `-distill`); null keep_last keeps every checkpoint;
  - optimizer state: `last` keeps it in each policy's newest checkpoint only, `all` everywhere, `none` nowhere.
Never deleted, whatever the policy says: final checkpoints (the merged model), the inputs of every unit not
done yet (a resume needs them; its own input with its optimizer state), and the fork points of registered
forks (every expert of the fork, with optimizer state).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any, Iterable

from contract.plan import Unit, distill_cycles, plan, strategy_of
from contract.spec import CheckpointsSpec, RunSpec
from contract.vocab import MIXED, STUDENT

Ref = tuple[str, str]   # (policy, checkpoint folder name), e.g. ("text", "c2-rl")
END_KINDS = ("opd", "mixed", "distill")
_NAME = re.compile(r"c(\d+)-(rl|opd|mixed|distill)")


@dataclass(frozen=True)
class Held:
    """A checkpoint as retention sees it; `key` is the caller's handle (an API id, a folder)."""

    key: Any
    policy: str
    name: str
    cycle: int
    step: int
    final: bool = False
    optimizer: bool = True        # holds optimizer state (true when not known)

    @property
    def ref(self) -> Ref:
        return (self.policy, self.name)


@dataclass
class RetentionPlan:
    """What to delete, and whose optimizer state to drop (never both for one checkpoint)."""

    delete: list[Held] = field(default_factory=list)
    drop_optimizer: list[Held] = field(default_factory=list)

    def __bool__(self) -> bool:
        return bool(self.delete or self.drop_optimizer)


def unit_inputs(spec: RunSpec, unit: Unit) -> tuple[list[Ref], Ref | None]:
    """(every checkpoint the unit reads, the one it continues from with its optimizer state or None); the
    base model is not a checkpoint and is never listed. Mirrors contract.plan.Layout."""
    cycles, strat = spec.schedule.cycles, strategy_of(spec)
    if unit.kind == "rl":
        own = (unit.expert, f"c{unit.cycle - 1}-opd") if unit.cycle > 1 else None
        return ([own] if own else []), own
    if unit.kind == "opd":
        own = (unit.expert, f"c{unit.cycle}-rl")
        teachers = [(t, f"c{unit.cycle}-rl") for t in spec.teachers_of(unit.expert)] if strat.opd else []
        return [own, *teachers], own
    if unit.kind == "lockstep":  # every expert's Phase I result, each continued with its optimizer state
        return [(e, f"c{unit.cycle}-rl") for e in spec.expert_names], None
    if unit.kind == "eval":
        return _eval_inputs(spec, unit.cycle), None
    if unit.kind == "mixed":
        own = (MIXED, f"c{unit.cycle - 1}-mixed") if unit.cycle > 1 else None
        return ([own] if own else []), own
    if unit.kind == "distill":
        first = cycles + 1
        teachers = [(t, f"c{cycles}-opd") for t in spec.distill_teachers()] if cycles else []
        if unit.cycle > first:
            own = (STUDENT, f"c{unit.cycle - 1}-distill")
            return [own, *teachers], own
        start = spec.static_student if spec.strategy == "static_opd" else spec.distill.student
        seed = [(start, f"c{cycles}-opd")] if start is not None and cycles else []
        return seed + teachers, None
    if unit.kind == "merge":
        if not strat.experts:
            return ([(MIXED, f"c{cycles}-mixed")] if cycles else []), None
        if strat.distill:
            return [(STUDENT, f"c{distill_cycles(spec)[-1]}-distill")], None
        return ([(e, f"c{cycles}-opd") for e in spec.expert_names] if cycles else []), None
    raise ValueError(f"unit kind '{unit.kind}' has no known inputs")


def _eval_inputs(spec: RunSpec, cycle: int) -> list[Ref]:
    strat = strategy_of(spec)
    if cycle == 0:
        return []
    if not strat.experts:
        return [(MIXED, f"c{cycle}-mixed")]
    if strat.distill and cycle in distill_cycles(spec):
        return [(STUDENT, f"c{cycle}-distill")]
    return [(e, f"c{cycle}-opd") for e in spec.expert_names]


def needed_by_units(spec: RunSpec, done: Iterable[str]) -> tuple[set[Ref], set[Ref]]:
    """(checkpoints the units not done yet read, those of them whose optimizer state they continue from)."""
    done = set(done)
    needed: set[Ref] = set()
    with_optimizer: set[Ref] = set()
    for unit in plan(spec):
        if unit.id in done:
            continue
        refs, own = unit_inputs(spec, unit)
        needed.update(refs)
        if unit.kind == "lockstep":
            with_optimizer.update(refs)  # one unit continues every expert
        elif own is not None:
            with_optimizer.add(own)
    return needed, with_optimizer


def fork_refs(spec_of_fork: RunSpec, parent_name: str) -> set[Ref]:
    """What a fork from the parent's checkpoint folder `parent_name` copies: every expert of the fork there."""
    return {(e, parent_name) for e in spec_of_fork.expert_names}


def plan_retention(policy: CheckpointsSpec, items: Iterable[Held], *, needed: set[Ref] = frozenset(),
                   with_optimizer: set[Ref] = frozenset()) -> RetentionPlan:
    """What the policy lets go of `items` (checkpoints still on disk), sparing `needed` and the finals;
    `with_optimizer` also keeps its optimizer state."""
    by_policy: dict[str, list[Held]] = {}
    for h in items:
        by_policy.setdefault(h.policy, []).append(h)
    out = RetentionPlan()
    for held in by_policy.values():
        held.sort(key=lambda h: (h.cycle, h.step, h.name))
        newest = held[-1]
        kept = _kept_weights(policy, held)
        for h in held:
            if not (h.final or h.ref in needed or id(h) in kept):
                out.delete.append(h)
            elif h.optimizer and _drops_optimizer(policy, h, newest) and (
                    policy.optimizer == "none" or h.ref not in with_optimizer):
                out.drop_optimizer.append(h)
    return out


def _kept_weights(policy: CheckpointsSpec, held: list[Held]) -> set[int]:
    """ids of the checkpoints whose weights the policy keeps (held: one policy's, oldest first)."""
    if policy.keep_last is None:
        return {id(h) for h in held}
    kept = {id(h) for h in held[-policy.keep_last:]}
    if policy.keep_every:
        for h in held:
            m = _NAME.fullmatch(h.name)
            if m and m.group(2) in END_KINDS and int(m.group(1)) % policy.keep_every == 0:
                kept.add(id(h))
    return kept


def _drops_optimizer(policy: CheckpointsSpec, h: Held, newest: Held) -> bool:
    if policy.optimizer == "all":
        return False
    if policy.optimizer == "none":
        return True
    return h is not newest
