"""`python -m torch.distributed.run … -m trainer.dist_unit JOB`: one rl / opd unit with FSDP, one rank per process.

Started by `trainer.distributed.launch` (the parent keeps the Reporter). Every rank loads the unit's input
model, shards it, samples its share of each step's prompts, and takes part in one `update_step` per step
(gradients averaged by FSDP); rank 0 reads the knobs the parent writes, broadcasts them, writes the reports
as JSON lines, and saves the checkpoint: the same files `trainer.steps.save_unit` writes in one process.
The step loop is `trainer.units.run_train_unit`'s, from the same pieces of trainer/steps.py (`step_batches`,
`train_step`, `step_values`, the optimizer factory).
"""

from __future__ import annotations

import json
import random
import sys
import time
from pathlib import Path
from typing import Any

import torch

from contract.plan import Layout, Unit, strategy_of
from contract.spec import Knobs, RunSpec
from trainer import distributed as D
from trainer.domains import load_domain
from trainer.engines import place, teacher_device, weight_dtype
from trainer.models import configure_torch, load_pretrained
from trainer.rollout import HFEngine
from trainer.steps import (Cancelled, RunContext, make_optimizer, optimizer_state, report_step, save_unit,
                           start_step, step_batches, step_values, train_step)


class RankReporter:
    """The Reporter inside the ranks: rank 0 appends every call to the job's events.jsonl (the parent
    replays it); knobs and the stop flag come from the parent's control.json, read by rank 0 and broadcast."""

    def __init__(self, job: Path, d: D.Dist):
        self.job, self.d = job, d
        self._out = open(job / D.EVENTS, "a", encoding="utf-8") if d.main else None
        self._control: dict[str, Any] = {"version": 0, "knobs": {}, "stop": False}

    def _write(self, record: dict[str, Any]) -> None:
        if self._out is not None:
            self._out.write(json.dumps(record) + "\n")
            self._out.flush()

    def sync(self, spec: RunSpec) -> tuple[int, Knobs, bool]:
        """A step boundary (collective): the parent's latest (knob version, knobs, stop) on every rank."""
        if self.d.main:
            try:
                self._control = json.loads((self.job / D.CONTROL).read_text())
            except (OSError, ValueError):
                pass  # keep the last good one
        self._control = D.broadcast(self._control, self.d)
        c = self._control
        return int(c["version"]), Knobs.coerce(c["knobs"], spec), bool(c["stop"])

    # -- the Reporter protocol (only rank 0 writes) -------------------------------------------------
    def metrics(self, expert, cycle, step, values) -> None:
        self._write({"t": "metrics", "expert": expert, "cycle": cycle, "step": step,
                     "values": {k: float(v) for k, v in values.items()}})

    def checkpoint(self, info) -> None:
        from dataclasses import asdict

        self._write({"t": "checkpoint", "info": asdict(info)})

    def event(self, message, *, level="info", expert=None) -> None:
        self._write({"t": "event", "message": message, "level": level, "expert": expert})

    def knobs(self) -> tuple[int, dict[str, Any]]:
        return int(self._control["version"]), dict(self._control["knobs"])  # the parent's, as pushed

    def knobs_applied(self, version, cycle, step) -> None:
        self._write({"t": "knobs_applied", "version": version, "cycle": cycle, "step": step})

    def progress(self, unit, step, total, fields) -> None:
        self._write({"t": "progress", "unit": unit, "step": step, "total": total, "fields": fields})

    def should_stop(self) -> bool:
        return bool(self._control["stop"])

    def cancelled(self) -> None:
        self._write({"t": "cancelled"})

    def close(self) -> None:
        if self._out is not None:
            self._out.close()


def context(job: dict[str, Any]) -> RunContext:
    """The parent's RunContext rebuilt from job.json (the base model folder is already there)."""
    spec = RunSpec.model_validate(job["spec"])
    configure_torch(spec.base_model)
    domains = {e.name: load_domain(e.domain, spec.seed) for e in spec.experts}
    return RunContext(spec, Layout(Path(job["root"]), Path(job["base"])), domains)


def _scorer(ctx: RunContext, folder: Path, d: D.Dist) -> HFEngine:
    """A frozen teacher / reference, whole on this rank (inference only): on this rank's GPU, or the CPU."""
    model, tok = ctx.load(folder, cache=False)
    dev = d.device if teacher_device(ctx.spec.compute).type == "cuda" else torch.device("cpu")
    return HFEngine(place(model, ctx.spec.compute, dev, trainable=False), tok)


def run_sharded_unit(ctx: RunContext, unit: Unit, reporter: RankReporter, d: D.Dist):
    """`trainer.units.run_train_unit` with the student sharded over the ranks; returns the CheckpointInfo on rank 0."""
    spec, expert = ctx.spec, unit.expert
    assert expert is not None and unit.kind in ("rl", "opd")
    D.check_shares(spec, d.world)
    version, knobs, stop = reporter.sync(spec)
    if stop:
        raise Cancelled(unit.id)
    seed = ctx.unit_seed(unit)
    torch.manual_seed(seed + d.rank)  # each rank samples its own completions
    rng = random.Random(seed)         # … of the same prompt draws (every rank then takes its share)
    src = ctx.layout.unit_input(unit)
    model, tok = ctx.load(src, cache=False)
    model = D.shard(model.to(weight_dtype(spec.compute)), d)
    step = start_step(src)
    n_steps = knobs.steps(unit.kind)
    opt = make_optimizer(model.parameters(), knobs.lr)
    if (state := optimizer_state(src)) is not None:
        D.load_optimizer_state(model, opt, state)
    engine = HFEngine(model, tok)  # always HF here: it samples from the gathered weights (see D.gathered)
    use_opd = unit.kind == "opd" and strategy_of(spec).opd
    teachers = {t: _scorer(ctx, ctx.layout.teacher_input(t, unit.cycle), d) for t in spec.teachers_of(expert)} if use_opd else {}
    reference = _scorer(ctx, ctx.layout.base, d) if spec.grpo.kl_coef > 0 else None
    reporter.event(f"{unit.id}: {n_steps} steps from {src.name} on {d.world} FSDP ranks"
                   + (f", teachers {', '.join(teachers)}" if teachers else ""), expert=expert)
    t_unit = time.perf_counter()
    for i in range(n_steps):
        version, knobs, stop = reporter.sync(spec)  # step boundary: the latest knobs apply from here on
        if stop:
            raise Cancelled(unit.id)
        t0 = time.perf_counter()
        with D.gathered(model):
            native, cross, beta = step_batches(ctx, unit, engine, teachers, reference, knobs, rng,
                                               share=lambda items: D.share(items, d))
        t_roll = time.perf_counter() - t0
        values = train_step(engine, model, opt, native, cross, spec, knobs.lr)
        step += 1
        values = D.reduce_metrics(step_values(values, unit, native, cross, beta, t_roll, version, d.device), d)
        values["fsdp/ranks"] = float(d.world)
        if d.main:
            report_step(reporter, expert, unit, step, i, n_steps, values, version, t_unit)
    weights = D.full_state_dict(model)              # collectives: every rank takes part
    optim = D.full_optimizer_state(model, opt)
    if not d.main:
        return None
    plain, _ = load_pretrained(str(src))            # a plain model to save_pretrained from (rank 0, CPU)
    plain = plain.to(weight_dtype(spec.compute))
    plain.load_state_dict(weights)
    return save_unit(ctx.layout.unit_output(unit), plain, tok, D.FrozenOptimizer(optim), reporter, expert, unit,
                     step, version)


def main(argv: list[str] | None = None) -> int:
    job_dir = Path((argv if argv is not None else sys.argv[1:])[0])
    d = D.init()
    reporter = RankReporter(job_dir, d)
    ok = False
    try:
        job = json.loads((job_dir / D.JOB).read_text())
        ctx = context(job)
        run_sharded_unit(ctx, Unit.parse(job["unit"]), reporter, d)
        ok = True
    except Cancelled:  # every rank raises it at the same step boundary
        reporter.cancelled()
        ok = True
    except BaseException:
        import traceback

        (job_dir / f"error-rank{d.rank}.txt").write_text(traceback.format_exc())  # the parent shows it
        raise
    finally:
        reporter.close()
        D.close(barrier=ok)
    return 0


if __name__ == "__main__":
    D.hard_exit(main())  # a failing rank raised out of main() instead, with its traceback
