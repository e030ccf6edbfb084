"""The baselines' own units: `c<c>/mixed` (mixed RLVR's one policy) and `c<c>/distill` (the static-OPD / MOPD
student). Both train ONE policy, so they share a loop; what differs is the batch of a step.

- mixed: GRPO on the pooled domains, each step's prompts split across domains by `mixed.weights`
  (equal by default), each prompt scored by its own domain's verifier, groups normalised per prompt.
- distill: the trained experts are fixed teachers (their final weights). Each teacher j scores the
  student's samples of j's own prompts (advantage β·(log π_j − log π_student), teacher chosen by the
  prompt's domain), teachers weighted equally; plus α · a native GRPO batch (static_opd: the student
  expert's domain; mopd: every domain, pooled). One optimizer update per step, as in CoPD's Phase II.
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import torch

from trainer.checkpoint import CheckpointInfo, read_state
from trainer.engines import place, student_device, student_engine
from trainer.domains import Domain, Sample
from trainer.reporter import Reporter
from trainer.rollout import HFEngine
from trainer.schedule import MIXED, STUDENT, Unit, steps_of
from trainer.spec import RunSpec, beta_for
from trainer.update import NativeBatch, cross_batch, draw, pooled_batch
from trainer.units import RunContext, _optimizer, save_unit, train_steps


def allocate(weights: dict[str, float], n: int, rng: random.Random) -> dict[str, int]:
    """Split n prompts across domains by weight: floors first, the remainder drawn by weight.

    >>> allocate({"a": 0.5, "b": 0.5}, 8, random.Random(0))
    {'a': 4, 'b': 4}
    """
    counts = {k: int(n * w) for k, w in weights.items()}
    rest = n - sum(counts.values())
    names = [k for k, w in weights.items() if w > 0]
    for k in rng.choices(names, [weights[k] for k in names], k=rest) if rest > 0 else []:
        counts[k] += 1
    return counts


def pooled_items(ctx: RunContext, weights: dict[str, float], n: int, rng: random.Random) -> list[tuple[Domain, Sample]]:
    """n (domain, prompt) pairs drawn from the domains by weight."""
    items: list[tuple[Domain, Sample]] = []
    for name, k in allocate(weights, n, rng).items():
        if k:
            dom = ctx.domains[name]
            items += [(dom, s) for s in draw(rng, dom.train, k)]
    return items


def run_single_unit(ctx: RunContext, unit: Unit, reporter: Reporter) -> CheckpointInfo:
    """A mixed or distill unit: the steps of one policy from its input checkpoint; writes its checkpoint."""
    spec = ctx.spec
    assert unit.kind in ("mixed", "distill")
    name = MIXED if unit.kind == "mixed" else STUDENT
    seed = ctx.unit_seed(unit)
    torch.manual_seed(seed)
    rng = random.Random(seed)
    src, continues = ctx.layout.single_input(spec, unit)
    dev = student_device()
    model, tok = ctx.load(src)
    model = place(model, spec.compute, dev, trainable=True)
    step = int(read_state(src).get("step", 0)) if continues else 0
    version, knobs = reporter.knobs()
    n_steps = steps_of(spec, unit, knobs)
    lr = float(knobs.get("lr") or spec.grpo.lr)
    opt = _optimizer(model, lr, src) if continues else _optimizer(model, lr, ctx.layout.root / ".no-optimizer")
    engine = student_engine(spec.rollout, spec.compute, model, tok, src, seed)
    reference = ctx.scorer(ctx.layout.base) if spec.grpo.kl_coef > 0 else None
    teachers = ({t: ctx.scorer(ctx.layout.end_of_cycle(t, spec.schedule.cycles))
                 for t in spec.distill_teachers()} if unit.kind == "distill" else {})
    reporter.event(f"{unit.id}: {n_steps} steps of {name} from {src.name}"
                   + (f", fixed teachers {', '.join(teachers)}" if teachers else ""), expert=name)
    def batches(knobs):
        native, cross = _batches(ctx, unit, engine, teachers, reference, knobs, rng)
        return native, cross, beta_for(knobs, STUDENT, spec.opd.beta) if cross else None

    step, version = train_steps(ctx, unit, reporter, name, engine, model, opt, step, n_steps, version, dev, batches)
    return save_unit(ctx.layout.single(unit), model, tok, opt, reporter, name, unit, step, version)


def _batches(ctx: RunContext, unit: Unit, engine: HFEngine, teachers: dict[str, HFEngine],
             reference: HFEngine | None, knobs: dict[str, Any], rng: random.Random):
    """(native batch or None, cross batches) of one step of a mixed or distill unit."""
    spec = ctx.spec
    if unit.kind == "mixed":
        items = pooled_items(ctx, spec.mix_weights(), spec.grpo.prompts_per_step, rng)
        return pooled_batch(engine, items, spec.grpo, reference), []
    native: NativeBatch | None = None
    if spec.distill.alpha > 0:
        own = ({spec.static_student: 1.0} if spec.strategy == "static_opd"
               else {n: 1.0 / len(spec.experts) for n in spec.expert_names})
        items = pooled_items(ctx, own, spec.grpo.prompts_per_step, rng)
        native = pooled_batch(engine, items, spec.grpo, reference, alpha=spec.distill.alpha)
    beta = beta_for(knobs, STUDENT, spec.opd.beta)
    cross = [cross_batch(engine, t, teacher, draw(rng, ctx.domains[t].train, spec.opd.prompts_per_step),
                         spec.grpo, spec.opd, beta, 1.0 / len(teachers))
             for t, teacher in teachers.items()]
    return native, cross


def single_eval_folders(spec: RunSpec, layout, cycle: int) -> dict[str, Path] | None:
    """What an eval unit evaluates for the baselines' single policies at `cycle`; None = the experts."""
    from trainer.schedule import distill_cycles, strategy_of

    strat = strategy_of(spec)
    if cycle == 0:
        return None
    if not strat.experts:
        return {MIXED: layout.single(Unit(cycle, "mixed"))}
    if strat.distill and cycle in distill_cycles(spec):
        return {STUDENT: layout.single(Unit(cycle, "distill"))}
    return None
