"""The baselines' own units: `c<c>/mixed` (mixed RLVR's one policy) and `c<c>/distill` (the static-OPD / MOPD
student). Both train ONE policy, so they share a loop; what differs is the batch of a step.

- mixed: GRPO on the pooled domains, each step's prompts split across domains by `mixed.weights`
  (equal by default), each prompt scored by its own domain's verifier, groups normalised per prompt;
  with `mixed.train_tokens` a cycle's unit stops once it trained on that many tokens (a token budget).
- distill: the trained experts are fixed teachers (their final weights). Each teacher j scores the
  student's samples of j's own prompts (advantage β·(log π_j − log π_student), teacher chosen by the
  prompt's domain), teachers weighted equally; plus α · a native GRPO batch (static_opd: the student
  expert's domain; mopd: every domain, pooled). One optimizer update per step, as in CoPD's Phase II.
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import Callable

from contract import metrics as M
from contract.plan import MIXED, STUDENT, Unit, distill_cycles, steps_of, strategy_of
from contract.spec import Knobs, RunSpec
from trainer.checkpoint import CheckpointInfo
from trainer.domains import Domain, Sample
from trainer.reporter import Reporter
from trainer.rollout import HFEngine
from trainer.steps import RunContext, open_policy, save_policy, train_steps
from trainer.update import NativeBatch, cross_batch, draw, pooled_batch


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
    rng = random.Random(ctx.unit_seed(unit))
    src, continues = ctx.layout.single_input(spec, unit)
    policy, knobs = open_policy(ctx, unit, reporter, name, src, continues=continues)
    n_steps = steps_of(spec, unit, knobs.model_dump())
    reference = ctx.scorer(ctx.layout.base) if spec.grpo.kl_coef > 0 else None
    teachers = ({t: ctx.scorer(ctx.layout.end_of_cycle(t, spec.schedule.cycles))
                 for t in spec.distill_teachers()} if unit.kind == "distill" else {})
    reporter.event(f"{unit.id}: {n_steps} steps of {name} from {src.name}"
                   + (f", fixed teachers {', '.join(teachers)}" if teachers else ""), expert=name)
    def batches(knobs: Knobs):
        native, cross = _batches(ctx, unit, policy.engine, teachers, reference, knobs, rng)
        return native, cross, knobs.beta_for(STUDENT, spec.opd.beta) if cross else None

    train_steps(ctx, unit, reporter, policy, n_steps, batches, done=token_budget(spec, unit, reporter))
    return save_policy(ctx.layout.single(unit), policy, reporter, unit)


def token_budget(spec: RunSpec, unit: Unit, reporter: Reporter) -> Callable[[dict[str, float]], bool] | None:
    """With `mixed.train_tokens`: a check that ends a mixed unit once its steps trained on that many tokens."""
    budget = spec.mixed.train_tokens if unit.kind == "mixed" else None
    if budget is None:
        return None
    seen = {"tokens": 0.0, "steps": 0}

    def done(values: dict[str, float]) -> bool:
        seen["tokens"] += values.get(M.COST_TRAIN.key, 0.0)
        seen["steps"] += 1
        if seen["tokens"] >= budget:
            reporter.event(f"{unit.id}: token budget reached, {seen['tokens']:.0f} of {budget} training tokens "
                           f"in {seen['steps']} steps", expert=MIXED)
            return True
        return False
    return done


def _batches(ctx: RunContext, unit: Unit, engine: HFEngine, teachers: dict[str, HFEngine],
             reference: HFEngine | None, knobs: Knobs, rng: random.Random):
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
    beta = knobs.beta_for(STUDENT, spec.opd.beta)
    cross = [cross_batch(engine, t, teacher, draw(rng, ctx.domains[t].train, spec.opd.prompts_per_step),
                         spec.grpo, spec.opd, beta, 1.0 / len(teachers))
             for t, teacher in teachers.items()]
    return native, cross


def single_eval_folders(spec: RunSpec, layout, cycle: int) -> dict[str, Path] | None:
    """What an eval unit evaluates for the baselines' single policies at `cycle`; None = the experts."""
    strat = strategy_of(spec)
    if cycle == 0:
        return None
    if not strat.experts:
        return {MIXED: layout.single(Unit(cycle, "mixed"))}
    if strat.distill and cycle in distill_cycles(spec):
        return {STUDENT: layout.single(Unit(cycle, "distill"))}
    return None
