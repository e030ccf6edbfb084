"""A run as a sequence of units, each resumable from checkpoints alone (so a worker can run one at a time).

Units, in order: `c0/eval`; then per cycle c: `c<c>/rl/<expert>` for every expert (Phase I), then
`c<c>/opd/<expert>` (Phase II), then `c<c>/eval`; at the end `final/merge`. Units of one phase are
independent of each other, so the experts of a phase can run in parallel.

Checkpoint layout under a run's folder: `checkpoints/<expert>/c<cycle>-<phase>/`.
  - the input of `c<c>/rl/k` is k's `c<c-1>-opd` (the base model when c = 1);
  - the input of `c<c>/opd/k` is k's `c<c>-rl`; its teachers are the peers' `c<c>-rl` — the live experts
    as they stand at the start of Phase II of the same cycle (refreshed every cycle, never frozen).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from trainer.spec import RunSpec

Kind = Literal["eval", "rl", "opd", "merge"]


@dataclass(frozen=True)
class Strategy:
    """How a strategy shapes the schedule."""

    opd: bool      # Phase II mutual OPD between experts
    merge: bool    # parameter merge of the experts at the end


STRATEGIES = {
    "copd": Strategy(opd=True, merge=True),
    "independent": Strategy(opd=False, merge=False),
    "independent_merge": Strategy(opd=False, merge=True),
}


def strategy_of(spec: RunSpec) -> Strategy:
    """The schedule shape of the spec's strategy; a clear error for strategies not yet implemented."""
    try:
        return STRATEGIES[spec.strategy]
    except KeyError:
        raise NotImplementedError(f"strategy: '{spec.strategy}' is not implemented yet "
                                  f"(available: {', '.join(STRATEGIES)})") from None


@dataclass(frozen=True, order=True)
class Unit:
    """One bounded piece of work: (cycle, phase, expert)."""

    cycle: int
    kind: Kind
    expert: str | None = None

    @property
    def id(self) -> str:
        if self.kind == "merge":
            return "final/merge"
        return f"c{self.cycle}/{self.kind}" + (f"/{self.expert}" if self.expert else "")

    @classmethod
    def parse(cls, unit_id: str) -> "Unit":
        """Inverse of `id`."""
        if unit_id == "final/merge":
            return cls(0, "merge")
        parts = unit_id.split("/")
        cycle = int(parts[0][1:])
        return cls(cycle, parts[1], parts[2] if len(parts) > 2 else None)  # type: ignore[arg-type]


def plan(spec: RunSpec) -> list[Unit]:
    """Every unit of the run in a valid sequential order."""
    strat = strategy_of(spec)
    units = [Unit(0, "eval")]
    for c in range(1, spec.schedule.cycles + 1):
        units += [Unit(c, "rl", e) for e in spec.expert_names]
        # Phase II runs even for independent experts: there it is RLVR only, so budgets match copd's.
        units += [Unit(c, "opd", e) for e in spec.expert_names]
        units.append(Unit(c, "eval"))
    if strat.merge:
        units.append(Unit(spec.schedule.cycles, "merge"))
    return units


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
        """The checkpoint a training unit starts from."""
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

    @property
    def final(self) -> Path:
        return self.root / "final"
