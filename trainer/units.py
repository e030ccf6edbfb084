"""The unit runners: one function per unit kind, and `run_unit`, which picks one.

Every runner takes a `RunContext` (the spec, domains, base model, layout) and a unit, and depends on
nothing but files: the local runner calls them in sequence, a Celery worker one per task. The pieces
they are built from live in trainer/steps.py; the baselines' single-policy units in trainer/baselines.py.
"""

from __future__ import annotations

import random
from typing import Any

import torch

from contract import metrics as M
from contract.plan import Unit, strategy_of
from contract.vocab import MERGED
from trainer.algos import merge_state_dicts  # noqa: F401  (its old import path)
from trainer.baselines import run_single_unit, single_eval_folders
from trainer.checkpoint import CheckpointInfo, read_state, save_checkpoint
from trainer.distributed import launch
from trainer.engines import place, student_device
from trainer.evaluate import GreedyEval, greedy_eval, mean_overlap, overlap_row
from trainer.lockstep import run_lockstep_unit
from trainer.merge import merge_folders
from trainer.reporter import Reporter
from trainer.rollout import HFEngine
from trainer.samples import SampleSheet, report_samples
from trainer.steps import (  # noqa: F401  (Cancelled, RunContext, …: their old import path is this module)
    Cancelled,
    RunContext,
    open_policy,
    report_step,
    save_policy,
    save_unit,
    step_batches,
    step_values,
    teacher_weights,
    train_step,
    train_steps,
)

_teacher_weights = teacher_weights  # the old name


def teachers_note(knobs, spec, student: str, teachers: dict) -> str:
    """`, teachers a, b` for a unit's first event; teachers at weight 0 are named as such, not as teachers."""
    if not teachers:
        return ""
    active = knobs.teachers(spec, student)
    off = [t for t in teachers if t not in active]
    return (f", teachers {', '.join(active) or 'none'}"
            + (f" ({', '.join(off)} at weight 0)" if off else ""))


def run_train_unit(ctx: RunContext, unit: Unit, reporter: Reporter) -> CheckpointInfo:
    """Phase I (RLVR) or Phase II (native GRPO + mutual OPD) steps of one expert; writes its checkpoint.

    With `compute.gpus_per_expert` > 1 the unit runs sharded (FSDP) in that many processes
    (trainer.distributed.launch); this process relays their reports.
    """
    spec, expert = ctx.spec, unit.expert
    assert expert is not None and unit.kind in ("rl", "opd")
    if spec.compute.gpus_per_expert > 1:
        return launch(ctx, unit, reporter, spec.compute.gpus_per_expert)
    rng = random.Random(ctx.unit_seed(unit))
    src = ctx.layout.unit_input(unit)
    policy, knobs = open_policy(ctx, unit, reporter, expert, src, continues=True)
    n_steps = knobs.steps(unit.kind)
    use_opd = unit.kind == "opd" and strategy_of(spec).opd
    teachers = {t: ctx.scorer(ctx.layout.teacher_input(t, unit.cycle)) for t in spec.teachers_of(expert)} if use_opd else {}
    reference = ctx.scorer(ctx.layout.base) if spec.grpo.kl_coef > 0 else None
    reporter.event(f"{unit.id}: {n_steps} steps from {src.name}" + teachers_note(knobs, spec, expert, teachers),
                   expert=expert)
    train_steps(ctx, unit, reporter, policy, n_steps,
                lambda knobs: step_batches(ctx, unit, policy.engine, teachers, reference, knobs, rng))
    return save_policy(ctx.layout.unit_output(unit), policy, reporter, unit)


def run_eval_unit(ctx: RunContext, unit: Unit, reporter: Reporter) -> dict[str, dict[str, float]]:
    """Every expert on every domain (greedy accuracy) and the overlap matrix, after cycle `unit.cycle`.

    For mixed_rlvr (after cycle 0) and the distillation cycles of static_opd / mopd, the one policy
    (`mixed` / `student`) instead of the experts.
    """
    spec, layout = ctx.spec, ctx.layout
    torch.manual_seed(ctx.unit_seed(unit))
    folders = (single_eval_folders(spec, layout, unit.cycle)
               or {e: layout.end_of_cycle(e, unit.cycle) for e in spec.expert_names})
    engines = {e: ctx.scorer(f, student_device()) for e, f in folders.items()}
    results: dict[str, dict[str, float]] = {}
    base: dict[str, GreedyEval] | None = None
    sheet = SampleSheet(ctx.domains, spec.eval.prompts)
    for e, engine in engines.items():
        step = int(read_state(folders[e]).get("step", 0)) if unit.cycle else 0
        if unit.cycle == 0 and base is not None:
            evals = base  # every expert is the base model before training
        else:
            evals = {owner: greedy_eval(engine, dom, spec.eval.prompts, spec.grpo.max_new_tokens)
                     for owner, dom in ctx.domains.items()}
            base = evals
        row = {}
        for owner, ev in evals.items():
            row[M.ACC.key_for(owner)], row[M.EVAL_LEN.key_for(owner)] = ev.accuracy, ev.length
            sheet.add(e, owner, ev.texts, ev.scores)
        results[e] = row
        reporter.metrics(e, unit.cycle, step, row)
    report_samples(reporter, unit.cycle, sheet)
    if unit.cycle > 0 and len(engines) > 1:
        results = report_overlap(ctx, unit, reporter, engines, folders, results)
        phase_one = {e: layout.checkpoint(e, unit.cycle, "rl") for e in spec.expert_names}
        if set(engines) == set(phase_one) and all((f / "trainer_state.json").exists() for f in phase_one.values()):
            # the same measure on the experts as Phase I left them: overlap dips in RLVR, recovers in OPD
            report_overlap(ctx, unit, reporter, {e: ctx.scorer(f, student_device()) for e, f in phase_one.items()},
                           phase_one, {e: {} for e in spec.expert_names}, after_rl=True)
    summary = ", ".join(f"{e}: " + " ".join(f"{M.ACC.name_in(k)}={v:.2f}" for k, v in r.items() if M.ACC.matches(k))
                        for e, r in results.items())
    reporter.event(f"{unit.id}: {summary}")
    return results


def report_overlap(ctx: RunContext, unit: Unit, reporter: Reporter, engines: dict[str, HFEngine], folders: dict,
                   results: dict[str, dict[str, float]], *, after_rl: bool = False) -> dict[str, dict[str, float]]:
    """Every expert's overlap row (top-k, top-1) and the run-level means; keys `overlap/…` after the cycle,
    `overlap_rl/…` after its Phase I (`after_rl`). Returns `results` with the rows added."""
    spec = ctx.spec
    keys = ((M.OVERLAP, M.OVERLAP_TOP1, M.OVERLAP_MEAN, M.OVERLAP_TOP1_MEAN) if not after_rl else
            (M.OVERLAP_RL, M.OVERLAP_TOP1_RL, M.OVERLAP_RL_MEAN, M.OVERLAP_TOP1_RL_MEAN))
    rows = []
    for e in spec.expert_names:
        row = overlap_row(e, engines, ctx.domains[e], spec.eval.overlap_prompts, spec.eval.overlap_k,
                          spec.grpo.temperature, spec.grpo.max_new_tokens)
        row = {keys[0 if M.OVERLAP.matches(k) else 1].key_for(M.OVERLAP.name_in(k) or M.OVERLAP_TOP1.name_in(k)): v
               for k, v in row.items()}
        reporter.metrics(e, unit.cycle, int(read_state(folders[e]).get("step", 0)), row)
        results[e] |= row
        rows.append(row)
    # run-level, one point per cycle: its step is the cycle (the points also carry it as their cycle)
    reporter.metrics(None, unit.cycle, unit.cycle, {keys[2].key: mean_overlap(rows, keys[0].prefix),
                                                    keys[3].key: mean_overlap(rows, keys[1].prefix)})
    return results


def run_merge_unit(ctx: RunContext, unit: Unit, reporter: Reporter) -> CheckpointInfo:
    """Merge the experts' final weights into the all-in-one model, evaluate it, export it.

    The merge streams tensor by tensor from the experts' safetensors (trainer/merge.py) by the spec's
    `merge.method`. mixed_rlvr, static_opd and mopd have one policy already (the mixed policy, the student):
    it is exported and evaluated as `merged` unchanged.
    """
    spec, layout = ctx.spec, ctx.layout
    folders = layout.final_sources(spec)
    single = not strategy_of(spec).experts or strategy_of(spec).distill
    step = max(int(read_state(f).get("step", 0)) if spec.schedule.cycles and f != layout.base else 0 for f in folders)
    if single:
        sources, weights = [f.parent.name for f in folders], None
        model, tok = ctx.load(folders[0], cache=False)
        sha, size = save_checkpoint(layout.final, model, tok, None, {"step": step, "merged_from": sources,
                                                                    "weights": "uniform"})
    else:
        sources, weights = spec.expert_names, merge_weights(spec)
        sha, size = merge_checkpoints(ctx, folders, layout.final, spec.merge, step)
        model, tok = ctx.load(layout.final, cache=False)
    sheet = SampleSheet(ctx.domains, spec.eval.prompts)
    row = evaluate_merged(ctx, model, tok, sheet)
    reporter.metrics(MERGED, spec.schedule.cycles, step, row)
    report_samples(reporter, spec.schedule.cycles, sheet)  # beside the experts' answers of the last eval
    info = CheckpointInfo(MERGED, spec.schedule.cycles, step, str(layout.final), sha, size, final=True)
    reporter.checkpoint(info)
    reporter.event(f"merged model ({'one policy' if single else spec.merge.method}): "
                   + " ".join(f"{M.ACC.name_in(k)}={v:.2f}" for k, v in row.items() if M.ACC.matches(k)))
    return info


def merge_weights(spec) -> list[float]:
    """The experts' merge weights in expert order (uniform when the spec gives none)."""
    if spec.merge.weights is None:
        return [1.0 / len(spec.expert_names)] * len(spec.expert_names)
    return [spec.merge.weights.get(e, 0.0) for e in spec.expert_names]


def merge_checkpoints(ctx: RunContext, folders, out, merge, step: int) -> tuple[str, int]:
    """Stream-merge the experts' checkpoints `folders` into `out` by `merge` (a MergeSpec); (sha256, bytes)."""
    spec = ctx.spec
    weights = merge_weights(spec.model_copy(update={"merge": merge}))
    state = {"step": step, "merged_from": spec.expert_names, "weights": weights if merge.weights else "uniform",
             "merge": merge.model_dump()}
    return merge_folders(folders, out, weights, merge, base=ctx.layout.base, seed=spec.seed, state=state)


def evaluate_merged(ctx: RunContext, model, tok, sheet: SampleSheet | None = None) -> dict[str, float]:
    """acc/<domain>, eval_len/<domain> and acc_mean of a merged model (the run's merge and `copd merge`);
    its answers to the sample prompts go on `sheet` when one is given."""
    spec = ctx.spec
    engine = HFEngine(place(model, spec.compute, student_device(), trainable=False), tok)
    row = {}
    for owner, dom in ctx.domains.items():
        ev = greedy_eval(engine, dom, spec.eval.prompts, spec.grpo.max_new_tokens)
        row[M.ACC.key_for(owner)], row[M.EVAL_LEN.key_for(owner)] = ev.accuracy, ev.length
        if sheet is not None:
            sheet.add(MERGED, owner, ev.texts, ev.scores)
    row[M.ACC_MEAN.key] = sum(row[M.ACC.key_for(d)] for d in ctx.domains) / len(ctx.domains)
    return row


def run_unit(ctx: RunContext, unit: Unit, reporter: Reporter) -> Any:
    """Dispatch a unit to its runner."""
    if unit.kind == "eval":
        return run_eval_unit(ctx, unit, reporter)
    if unit.kind == "merge":
        return run_merge_unit(ctx, unit, reporter)
    if unit.kind in ("mixed", "distill"):
        return run_single_unit(ctx, unit, reporter)
    if unit.kind == "lockstep":
        return run_lockstep_unit(ctx, unit, reporter)
    return run_train_unit(ctx, unit, reporter)
