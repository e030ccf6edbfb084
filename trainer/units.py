"""Running one unit: load what it needs from checkpoints, do its steps, checkpoint, report.

Every function here takes a `RunContext` (the spec, domains, base model, layout) and a unit, and depends
on nothing but files: the local runner calls them in sequence, a Celery worker one per task.
"""

from __future__ import annotations

import hashlib
import random
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch

from trainer.algos import merge_state_dicts
from trainer.checkpoint import CheckpointInfo, manifest_sha, read_state, save_checkpoint
from trainer.domains import Domain, load_domain
from trainer.engines import autocast_dtype, peak_memory_gb, place, student_device, student_engine, teacher_device
from trainer.evaluate import accuracy, mean_overlap, overlap_row
from trainer.models import configure_torch, load_builtin_tiny, load_pretrained
from trainer.reporter import Reporter
from trainer.rollout import HFEngine
from trainer.schedule import Layout, Unit, strategy_of
from trainer.spec import RunSpec, beta_for, knobs_from_spec
from trainer.update import cross_batch, draw, native_batch, update_step


class Cancelled(Exception):
    """The run was cancelled; the unit stopped at a step boundary without writing its output."""


@dataclass
class RunContext:
    """Everything a unit needs that does not change during a run."""

    spec: RunSpec
    layout: Layout
    domains: dict[str, Domain]                    # expert name → the domain it owns
    _models: "OrderedDict[str, tuple[Any, Any]]" = field(default_factory=OrderedDict, repr=False)

    @classmethod
    def create(cls, spec: RunSpec, root: Path, model_cache: Path, log_fn: Callable[[str], None] = print) -> "RunContext":
        """Load the domains and the base model (building and caching builtin:tiny when needed)."""
        configure_torch(spec.base_model)
        domains = {e.name: load_domain(e.domain, spec.seed) for e in spec.experts}
        if spec.base_model == "builtin:tiny":
            _, _, base = load_builtin_tiny(spec.tiny, list(domains.values()), spec.seed, model_cache, log_fn)
        else:
            base = Path(spec.base_model) if Path(spec.base_model).exists() else spec.base_model
        return cls(spec, Layout(Path(root), Path(base)), domains)

    def load(self, folder: Path, *, cache: bool = True):
        """(model, tokenizer) of a checkpoint; recently used ones stay in memory, keyed by content hash."""
        key = self._key(folder)
        if key in self._models:
            self._models.move_to_end(key)
            model, tok = self._models[key]
            return _clone(model), tok
        model, tok = load_pretrained(str(folder))
        if cache:
            self._models[key] = (_clone(model), tok)
            while len(self._models) > 2 * len(self.spec.experts) + 1:
                self._models.popitem(last=False)
        return model, tok

    def scorer(self, folder: Path, device: torch.device | None = None) -> HFEngine:
        """A frozen model on its device: a Phase II teacher or the KL reference (by `compute.teacher_device`),
        or a model under evaluation (`device` = the unit's GPU)."""
        model, tok = self.load(folder)
        device = device if device is not None else teacher_device(self.spec.compute)
        return HFEngine(place(model, self.spec.compute, device, trainable=False), tok)

    def _key(self, folder: Path) -> str:
        try:
            return manifest_sha(folder)
        except OSError:
            return str(folder)

    def unit_seed(self, unit: Unit) -> int:
        """A seed per unit, so a unit run again (resume, redelivery) draws the same prompts and samples."""
        return int(hashlib.sha256(f"{self.spec.seed}/{unit.id}".encode()).hexdigest()[:8], 16)


def _clone(model):
    import copy

    return copy.deepcopy(model)


def _optimizer(model, lr: float, folder: Path):
    opt = torch.optim.AdamW(model.parameters(), lr=lr, betas=(0.9, 0.999), weight_decay=0.0)
    state = Path(folder) / "optimizer.pt"
    if state.exists():
        opt.load_state_dict(torch.load(state, weights_only=True))
    return opt


def _teacher_weights(knobs: dict[str, Any], spec: RunSpec, student: str) -> dict[str, float]:
    """Normalised weights of the student's teachers (topology, then the teacher_weights knob)."""
    row = (knobs.get("teacher_weights") or {}).get(student, {})
    raw = {t: float(row.get(t, 1.0)) for t in spec.teachers_of(student)}
    total = sum(raw.values())
    return {t: w / total for t, w in raw.items() if w > 0} if total > 0 else {}


def train_step(engine, model, opt, native, cross, spec: RunSpec, lr: float) -> dict[str, float]:
    """One optimizer step on the batches, with the engine's memory freed meanwhile and its weights synced after."""
    engine.sleep()
    values = update_step(model, opt, native, cross, spec.grpo, lr, tis_cap=spec.rollout.tis_cap,
                         amp=autocast_dtype(spec.compute))
    engine.wake()
    engine.sync_weights(model)
    return values


def report_step(reporter: Reporter, name: str, unit: Unit, step: int, i: int, n_steps: int,
                values: dict[str, float], version: int, t_unit: float) -> None:
    """One training step's metrics, the knob version it used, and the unit's progress."""
    reporter.metrics(name, unit.cycle, step, values)
    reporter.knobs_applied(version, unit.cycle, step)
    reporter.progress(unit.id, i + 1, n_steps, {"reward": values.get("reward/mean", 0.0), "step": step,
                                                "s_per_step": (time.perf_counter() - t_unit) / (i + 1)})


def save_unit(out: Path, model, tok, opt, reporter: Reporter, name: str, unit: Unit, step: int,
              version: int) -> CheckpointInfo:
    """Checkpoint a training unit's policy atomically and tell the reporter."""
    sha, size = save_checkpoint(out, model, tok, opt, {"step": step, "cycle": unit.cycle, "phase": unit.kind,
                                                       "expert": name, "knobs_version": version})
    info = CheckpointInfo(name, unit.cycle, step, str(out), sha, size)
    reporter.checkpoint(info)
    return info


def step_batches(ctx: RunContext, unit: Unit, engine, teachers: dict[str, HFEngine], reference: HFEngine | None,
                 knobs: dict[str, Any], rng: random.Random, share: Callable[[list], list] = list):
    """One step's batches of an expert: (native GRPO batch, cross OPD batches, β or None without teachers).

    share: the part of each prompt draw this process samples (all of it; a rank's share under FSDP).
    """
    spec, expert = ctx.spec, unit.expert
    domain = ctx.domains[expert]
    native = native_batch(engine, domain, share(draw(rng, domain.train, spec.grpo.prompts_per_step)), spec.grpo,
                          reference)
    cross, beta = [], None
    if teachers:
        beta = beta_for(knobs, expert, spec.opd.beta)
        for t, w in _teacher_weights(knobs, spec, expert).items():
            prompts = share(draw(rng, ctx.domains[t].train, spec.opd.prompts_per_step))
            cross.append(cross_batch(engine, t, teachers[t], prompts, spec.grpo, spec.opd, beta, w))
    return native, cross, beta


def step_values(values: dict[str, float], unit: Unit, native, cross, beta: float | None, t_roll: float,
                version: int, device: torch.device) -> dict[str, float]:
    """update_step's metrics plus the step's rollout throughput and cost, knob version, memory and phase
    (1: RLVR — Phase I, mixed RLVR —; 2: with OPD). native may be None (a distill step without GRPO)."""
    rollout_tokens = (native.rollout.completion_tokens if native else 0) + sum(c.rollout.completion_tokens for c in cross)
    values |= {"tokens/rollout_per_s": rollout_tokens / max(t_roll, 1e-9), "cost/rollout_tokens": float(rollout_tokens),
               "knobs/version": float(version), "memory/peak_gb": peak_memory_gb(device),
               "phase": 1.0 if unit.kind in ("rl", "mixed") else 2.0}
    if beta is not None:
        values["opd/beta"] = beta
    return values


def train_steps(ctx: RunContext, unit: Unit, reporter: Reporter, name: str, engine, model, opt, step: int,
                n_steps: int, version: int, device: torch.device,
                batches: Callable[[dict[str, Any]], tuple]) -> tuple[int, int]:
    """A training unit's step loop: at each step boundary the cancel flag and the latest knobs, then
    `batches(knobs)` → (native, cross, β or None), one optimizer step, the step's report. Closes the engine
    at the end (a vLLM engine gives its memory back before the next unit starts). Returns (step, version)."""
    t_unit = time.perf_counter()
    try:
        for i in range(n_steps):
            if reporter.should_stop():
                raise Cancelled(unit.id)
            version, knobs = reporter.knobs()  # step boundary: the latest knobs apply from here on
            t0 = time.perf_counter()
            native, cross, beta = batches(knobs)
            t_roll = time.perf_counter() - t0
            values = train_step(engine, model, opt, native, cross, ctx.spec, float(knobs.get("lr") or ctx.spec.grpo.lr))
            step += 1
            values = step_values(values, unit, native, cross, beta, t_roll, version, device)
            report_step(reporter, name, unit, step, i, n_steps, values, version, t_unit)
    finally:
        engine.close()
    return step, version


def run_train_unit(ctx: RunContext, unit: Unit, reporter: Reporter) -> CheckpointInfo:
    """Phase I (RLVR) or Phase II (native GRPO + mutual OPD) steps of one expert; writes its checkpoint.

    With `compute.gpus_per_expert` > 1 the unit runs sharded (FSDP) in that many processes
    (trainer.distributed.launch); this process relays their reports.
    """
    spec, expert = ctx.spec, unit.expert
    assert expert is not None and unit.kind in ("rl", "opd")
    if spec.compute.gpus_per_expert > 1:
        from trainer.distributed import launch

        return launch(ctx, unit, reporter, spec.compute.gpus_per_expert)
    seed = ctx.unit_seed(unit)
    torch.manual_seed(seed)
    rng = random.Random(seed)
    src = ctx.layout.unit_input(unit)
    dev = student_device()
    model, tok = ctx.load(src)
    model = place(model, spec.compute, dev, trainable=True)
    step = int(read_state(src).get("step", 0)) if (src / "trainer_state.json").exists() else 0
    version, knobs = reporter.knobs()
    n_steps = int(knobs.get(f"{unit.kind}_steps", knobs_from_spec(spec)[f"{unit.kind}_steps"]))
    opt = _optimizer(model, float(knobs.get("lr") or spec.grpo.lr), src)
    engine = student_engine(spec.rollout, spec.compute, model, tok, src, seed)
    use_opd = unit.kind == "opd" and strategy_of(spec).opd
    teachers = {t: ctx.scorer(ctx.layout.teacher_input(t, unit.cycle)) for t in spec.teachers_of(expert)} if use_opd else {}
    reference = ctx.scorer(ctx.layout.base) if spec.grpo.kl_coef > 0 else None
    reporter.event(f"{unit.id}: {n_steps} steps from {src.name}"
                   + (f", teachers {', '.join(teachers)}" if teachers else ""), expert=expert)
    step, version = train_steps(ctx, unit, reporter, expert, engine, model, opt, step, n_steps, version, dev,
                                lambda knobs: step_batches(ctx, unit, engine, teachers, reference, knobs, rng))
    return save_unit(ctx.layout.unit_output(unit), model, tok, opt, reporter, expert, unit, step, version)


def run_eval_unit(ctx: RunContext, unit: Unit, reporter: Reporter) -> dict[str, dict[str, float]]:
    """Every expert on every domain (greedy accuracy) and the overlap matrix, after cycle `unit.cycle`.

    For mixed_rlvr (after cycle 0) and the distillation cycles of static_opd / mopd, the one policy
    (`mixed` / `student`) instead of the experts.
    """
    from trainer.baselines import single_eval_folders

    spec, layout = ctx.spec, ctx.layout
    torch.manual_seed(ctx.unit_seed(unit))
    folders = (single_eval_folders(spec, layout, unit.cycle)
               or {e: layout.end_of_cycle(e, unit.cycle) for e in spec.expert_names})
    engines = {e: ctx.scorer(f, student_device()) for e, f in folders.items()}
    results: dict[str, dict[str, float]] = {}
    base_row: dict[str, float] | None = None
    for e, engine in engines.items():
        step = int(read_state(folders[e]).get("step", 0)) if unit.cycle else 0
        if unit.cycle == 0 and base_row is not None:
            row = dict(base_row)  # every expert is the base model before training
        else:
            row = {}
            for owner, dom in ctx.domains.items():
                acc, length = accuracy(engine, dom, spec.eval.prompts, spec.grpo.max_new_tokens)
                row[f"acc/{owner}"] = acc
                row[f"eval_len/{owner}"] = length
            base_row = row
        results[e] = row
        reporter.metrics(e, unit.cycle, step, row)
    if unit.cycle > 0 and len(engines) > 1:
        rows = []
        for e in spec.expert_names:
            row = overlap_row(e, engines, ctx.domains[e], spec.eval.overlap_prompts, spec.eval.overlap_k,
                              spec.grpo.temperature, spec.grpo.max_new_tokens)
            step = int(read_state(folders[e]).get("step", 0))
            reporter.metrics(e, unit.cycle, step, row)
            results[e] |= row
            rows.append(row)
        reporter.metrics(None, unit.cycle, unit.cycle, {"overlap/mean": mean_overlap(rows),
                                                        "overlap_top1/mean": mean_overlap(rows, "overlap_top1/")})
    summary = ", ".join(f"{e}: " + " ".join(f"{k[4:]}={v:.2f}" for k, v in r.items() if k.startswith("acc/"))
                        for e, r in results.items())
    reporter.event(f"{unit.id}: {summary}")
    return results


def run_merge_unit(ctx: RunContext, unit: Unit, reporter: Reporter) -> CheckpointInfo:
    """Merge the experts' final weights into the all-in-one model, evaluate it, export it.

    mixed_rlvr, static_opd and mopd have one policy already (the mixed policy, the student): it is
    exported and evaluated as `merged` unchanged.
    """
    spec, layout = ctx.spec, ctx.layout
    folders = layout.final_sources(spec)
    models = [ctx.load(f, cache=False) for f in folders]
    single = not strategy_of(spec).experts or strategy_of(spec).distill
    weights = None if spec.merge.weights is None or single else [spec.merge.weights.get(e, 0.0) for e in spec.expert_names]
    model, tok = models[0]
    if not single:
        model.load_state_dict(merge_state_dicts([m.state_dict() for m, _ in models], weights))
    step = max(int(read_state(f).get("step", 0)) if spec.schedule.cycles and f != layout.base else 0 for f in folders)
    engine = HFEngine(place(model, spec.compute, student_device(), trainable=False), tok)
    row = {}
    for owner, dom in ctx.domains.items():
        row[f"acc/{owner}"], row[f"eval_len/{owner}"] = accuracy(engine, dom, spec.eval.prompts, spec.grpo.max_new_tokens)
    row["acc_mean"] = sum(row[f"acc/{d}"] for d in ctx.domains) / len(ctx.domains)
    reporter.metrics("merged", spec.schedule.cycles, step, row)
    sources = [f.parent.name for f in folders] if single else spec.expert_names
    sha, size = save_checkpoint(layout.final, model, tok, None, {"step": step, "merged_from": sources,
                                                                "weights": weights or "uniform"})
    info = CheckpointInfo("merged", spec.schedule.cycles, step, str(layout.final), sha, size, final=True)
    reporter.checkpoint(info)
    reporter.event("merged model: " + " ".join(f"{k[4:]}={v:.2f}" for k, v in row.items() if k.startswith("acc/")))
    return info


def run_unit(ctx: RunContext, unit: Unit, reporter: Reporter) -> Any:
    """Dispatch a unit to its runner."""
    if unit.kind == "eval":
        return run_eval_unit(ctx, unit, reporter)
    if unit.kind == "merge":
        return run_merge_unit(ctx, unit, reporter)
    if unit.kind in ("mixed", "distill"):
        from trainer.baselines import run_single_unit

        return run_single_unit(ctx, unit, reporter)
    return run_train_unit(ctx, unit, reporter)
