"""The unit plan: a run as a sequence of units, each resumable from checkpoints alone (so a worker can run one at a time).

Units, in order: `c0/eval`; then per cycle c: `c<c>/rl/<expert>` for every expert (Phase I), then
`c<c>/opd/<expert>` (Phase II), then `c<c>/eval`; at the end `final/merge`. Units of one phase are
independent of each other, so the experts of a phase can run in parallel. With `opd.teacher_sync: step`
(copd), Phase II of a cycle is one unit, `c<c>/lockstep`: every expert advances a step at a time, each
scored by its peers' current weights; it writes every expert's `c<c>-opd` checkpoint.

Baselines (the other strategies) reuse the same units and add two kinds, each a phase of its own (no expert):
  - `mixed_rlvr`: `c0/eval`, per cycle `c<c>/mixed` (one policy, GRPO on the pooled domains,
    len(experts) × (rl_steps + opd_steps) steps, or with `mixed.train_tokens` as many as reach that many
    training tokens, at most TOKEN_BUDGET_CAP times the steps) then `c<c>/eval`, then `final/merge`;
  - `static_opd` / `mopd`: the `independent` schedule, then `c<cycles+i>/distill` + `c<cycles+i>/eval` for
    i = 1 … cycles (the distillation steps split evenly), then `final/merge` (exports the student).

Checkpoint layout under a run's folder: `checkpoints/<expert>/c<cycle>-<phase>/` (the mixed policy and the
student use the reserved names `mixed` and `student`).
  - the input of `c<c>/rl/k` is k's `c<c-1>-opd` (the base model when c = 1);
  - the input of `c<c>/opd/k` is k's `c<c>-rl`; its teachers are the peers' `c<c>-rl` — the live experts
    as they stand at the start of Phase II of the same cycle (refreshed every cycle, never frozen).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from contract.spec import RunSpec
from contract.vocab import MIXED, STUDENT, Kind, parse_unit_id, unit_id


@dataclass(frozen=True)
class Strategy:
    """How a strategy shapes the schedule."""

    opd: bool      # Phase II mutual OPD between experts
    merge: bool    # parameter merge of the experts at the end (or, for the baselines below, the final export)
    experts: bool = True   # one policy per expert trained by rl/opd units (False: the single mixed policy)
    distill: bool = False  # after the experts, OPD from the trained experts into one student


SHAPES: dict[str, Strategy] = {  # one per contract.vocab.STRATEGIES, same order (a test checks)
    "copd": Strategy(opd=True, merge=True),
    "independent": Strategy(opd=False, merge=False),
    "independent_merge": Strategy(opd=False, merge=True),
    "mixed_rlvr": Strategy(opd=False, merge=True, experts=False),
    "static_opd": Strategy(opd=False, merge=True, distill=True),
    "mopd": Strategy(opd=False, merge=True, distill=True),
}

# MIXED, STUDENT (contract.vocab): checkpoint folders / metric names of the single policies (reserved).


def strategy_of(spec: RunSpec) -> Strategy:
    """The schedule shape of the spec's strategy; a clear error for strategies not yet implemented."""
    try:
        return SHAPES[spec.strategy]
    except KeyError:
        raise NotImplementedError(f"strategy: '{spec.strategy}' is not implemented yet "
                                  f"(available: {', '.join(SHAPES)})") from None


@dataclass(frozen=True, order=True)
class Unit:
    """One bounded piece of work: (cycle, phase, expert)."""

    cycle: int
    kind: Kind
    expert: str | None = None

    @property
    def id(self) -> str:
        """The one unit-id format (contract.vocab.unit_id): `c1/rl/text`, `c2/eval`, `final/merge`."""
        return unit_id(self.cycle, self.kind, self.expert)

    @classmethod
    def parse(cls, value: str) -> "Unit":
        """Inverse of `id` (the merge comes back with cycle 0)."""
        cycle, kind, expert = parse_unit_id(value)
        return cls(cycle, kind, expert)  # type: ignore[arg-type]


TOKEN_BUDGET_CAP = 10  # a token-budgeted mixed unit stops after this many times its step budget at the latest


def plan(spec: RunSpec) -> list[Unit]:
    """Every unit of the run in a valid sequential order."""
    strat = strategy_of(spec)
    units = [Unit(0, "eval")]
    for c in range(1, spec.schedule.cycles + 1):
        if not strat.experts:
            units += [Unit(c, "mixed"), Unit(c, "eval")]
            continue
        units += [Unit(c, "rl", e) for e in spec.expert_names]
        # Phase II runs even for independent experts: there it is RLVR only, so budgets match copd's.
        if lockstep(spec):
            units.append(Unit(c, "lockstep"))
        else:
            units += [Unit(c, "opd", e) for e in spec.expert_names]
        units.append(Unit(c, "eval"))
    if strat.distill:
        for c in distill_cycles(spec):
            units += [Unit(c, "distill"), Unit(c, "eval")]
    if strat.merge:
        units.append(Unit(spec.schedule.cycles, "merge"))
    return units


def lockstep(spec: RunSpec) -> bool:
    """Phase II as one coupled unit (`opd.teacher_sync: step`); only strategies with mutual OPD have one."""
    return spec.opd.teacher_sync == "step" and strategy_of(spec).opd


def distill_cycles(spec: RunSpec) -> list[int]:
    """Cycle numbers of the distillation units: they follow the experts' cycles (at least one)."""
    n = max(1, spec.schedule.cycles)
    return list(range(spec.schedule.cycles + 1, spec.schedule.cycles + n + 1))


def steps_of(spec: RunSpec, unit: Unit, knobs: dict | None = None) -> int:
    """Update steps of a mixed or distill unit (the distillation steps split evenly over its units)."""
    knobs = knobs or {}
    if unit.kind == "mixed":
        rl = int(knobs.get("rl_steps", spec.schedule.rl_steps))
        opd = int(knobs.get("opd_steps", spec.schedule.opd_steps))
        steps = len(spec.experts) * (rl + opd)
        return steps * TOKEN_BUDGET_CAP if spec.mixed.train_tokens is not None else steps
    assert unit.kind == "distill"
    cycles = distill_cycles(spec)
    i = cycles.index(unit.cycle)
    total = spec.distill_steps
    return total // len(cycles) + (1 if i < total % len(cycles) else 0)


def phase_units(spec: RunSpec, cycle: int, kind: Kind) -> list[Unit]:
    """The experts' units of one phase (a Celery group)."""
    return [Unit(cycle, kind, e) for e in spec.expert_names]


@dataclass(frozen=True)
class Layout:
    """Where a run's files live."""

    root: Path
    base: Path        # the base model folder (builtin:tiny cache entry, or a user's HF folder)

    def checkpoint(self, expert: str, cycle: int, kind: str) -> Path:
        return self.root / "checkpoints" / expert / f"c{cycle}-{kind}"

    def end_of_cycle(self, expert: str, cycle: int) -> Path:
        """An expert's weights after cycle `cycle` (the base model for cycle 0)."""
        return self.base if cycle == 0 else self.checkpoint(expert, cycle, "opd")

    def unit_input(self, unit: Unit) -> Path:
        """The checkpoint a training unit starts from (mixed / distill: see `single_input`)."""
        assert unit.expert is not None
        if unit.kind == "rl":
            return self.end_of_cycle(unit.expert, unit.cycle - 1)
        return self.checkpoint(unit.expert, unit.cycle, "rl")

    def unit_output(self, unit: Unit) -> Path:
        assert unit.expert is not None
        return self.checkpoint(unit.expert, unit.cycle, unit.kind)

    def teacher_input(self, teacher: str, cycle: int) -> Path:
        """The live teacher of Phase II of `cycle`: the peer as it stands after Phase I of that cycle."""
        return self.checkpoint(teacher, cycle, "rl")

    def single(self, unit: Unit) -> Path:
        """Output of a mixed or distill unit."""
        return self.checkpoint(MIXED if unit.kind == "mixed" else STUDENT, unit.cycle, unit.kind)

    def single_input(self, spec: RunSpec, unit: Unit) -> tuple[Path, bool]:
        """(the checkpoint a mixed / distill unit starts from, whether it continues the same policy)."""
        first = 1 if unit.kind == "mixed" else spec.schedule.cycles + 1
        if unit.cycle > first:
            return self.single(Unit(unit.cycle - 1, unit.kind)), True
        if unit.kind == "distill" and spec.strategy == "static_opd":
            return self.end_of_cycle(spec.static_student, spec.schedule.cycles), False
        if unit.kind == "distill" and spec.distill.student is not None:
            return self.end_of_cycle(spec.distill.student, spec.schedule.cycles), False
        return self.base, False

    def final_sources(self, spec: RunSpec) -> list[Path]:
        """What `final/merge` merges: the experts' last weights, or the one mixed policy / student."""
        strat = strategy_of(spec)
        if not strat.experts:
            return [self.single(Unit(spec.schedule.cycles, "mixed"))] if spec.schedule.cycles else [self.base]
        if strat.distill:
            return [self.single(Unit(distill_cycles(spec)[-1], "distill"))]
        return [self.end_of_cycle(e, spec.schedule.cycles) for e in spec.expert_names]

    @property
    def final(self) -> Path:
        return self.root / "final"
