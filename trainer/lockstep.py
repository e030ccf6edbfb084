"""Phase II with live teachers (`opd.teacher_sync: step`): every expert of a cycle in one unit, `c<c>/lockstep`.

All experts advance one optimizer step at a time. At step i every student samples its batches and each
teacher scores them with its weights after step i − 1 (the peers' *current* weights, the co-evolving
teachers of the method); only then do all experts take step i. So no expert sees a peer one step ahead,
and the result does not depend on the experts' order.

Each expert draws prompts and samples from its own random streams, seeded as its `c<c>/opd/<expert>` unit
would be, so with one step (teachers not yet moved) the unit gives exactly what the per-expert units give.
The unit starts from every expert's `c<c>-rl` checkpoint and writes every `c<c>-opd` one, so a cut-off
unit runs again from the start of the phase. With several GPUs visible, expert i lives on GPU i mod n and
scores its students' tokens there (a batch travels, no GPU holds a copy of a peer); on CPU all share it.
"""

from __future__ import annotations

import random
import time
from contextlib import contextmanager
from dataclasses import asdict
from typing import Iterator

import torch

from contract import metrics as M
from contract.plan import Unit
from trainer.engines import gpu_present
from trainer.reporter import Reporter
from trainer.rollout import HFEngine
from trainer.steps import (
    Cancelled,
    Policy,
    RunContext,
    open_policy,
    report_plugin_error,
    report_step,
    save_policy,
    step_batches,
    step_values,
    train_step,
    unit_knobs,
)


def expert_devices(n: int) -> list[torch.device]:
    """One device per expert: the visible GPUs in turn (expert i on GPU i mod count), else the CPU."""
    if not gpu_present():
        return [torch.device("cpu")] * n
    count = torch.cuda.device_count()
    return [torch.device("cuda", i % count) for i in range(n)]


class Stream:
    """An expert's own torch random stream, so interleaving the experts' sampling changes nobody's samples."""

    def __init__(self, seed: int, device: torch.device) -> None:
        self.device = device
        with self._forked():
            torch.manual_seed(seed)
            self._save()

    def _forked(self):
        return torch.random.fork_rng(devices=[self.device] if self.device.type == "cuda" else [])

    def _save(self) -> None:
        self.cpu = torch.get_rng_state()
        self.cuda = torch.cuda.get_rng_state(self.device) if self.device.type == "cuda" else None

    @contextmanager
    def active(self) -> Iterator[None]:
        """Run the block on this stream; the caller's stream is restored after."""
        with self._forked():
            torch.set_rng_state(self.cpu)
            if self.cuda is not None:
                torch.cuda.set_rng_state(self.cuda, self.device)
            yield
            self._save()


def live_teachers(policies: dict[str, Policy]) -> dict[str, HFEngine]:
    """Each expert's live weights as a scorer: the very model being trained, on its own device."""
    return {e: HFEngine(p.model, p.tok) for e, p in policies.items()}


def run_lockstep_unit(ctx: RunContext, unit: Unit, reporter: Reporter) -> dict[str, dict]:
    """Phase II of cycle `unit.cycle` for every expert together, teachers live; writes each `c<c>-opd`."""
    spec, layout = ctx.spec, ctx.layout
    assert unit.kind == "lockstep"
    subs = {e: Unit(unit.cycle, "opd", e) for e in spec.expert_names}  # each expert's seeds and inputs
    devices = dict(zip(spec.expert_names, expert_devices(len(subs))))
    policies, streams, rngs = {}, {}, {}
    for e, sub in subs.items():
        policies[e], knobs = open_policy(ctx, sub, reporter, e, layout.unit_input(sub), continues=True,
                                         device=devices[e])
        streams[e] = Stream(ctx.unit_seed(sub), devices[e])
        rngs[e] = random.Random(ctx.unit_seed(sub))
    reference = ctx.scorer(layout.base) if spec.grpo.kl_coef > 0 else None
    n_steps = knobs.steps("opd")
    live = live_teachers(policies)
    teachers = {e: {t: live[t] for t in spec.teachers_of(e)} for e in subs}
    where = ", ".join(sorted({str(d) for d in devices.values()}))
    reporter.event(f"{unit.id}: {n_steps} steps of {len(subs)} experts in lockstep on {where}, "
                   "each scored by its peers' current weights")
    try:
        lockstep_steps(ctx, unit, reporter, policies, streams, rngs, teachers, reference, n_steps)
    finally:
        for p in policies.values():
            p.engine.close()
    infos = {e: save_policy(layout.unit_output(sub), policies[e], reporter, sub) for e, sub in subs.items()}
    return {e: asdict(info) for e, info in infos.items()}


def lockstep_steps(ctx: RunContext, unit: Unit, reporter: Reporter, policies: dict[str, Policy],
                   streams: dict[str, Stream], rngs: dict[str, random.Random], teachers: dict[str, dict],
                   reference: HFEngine | None, n_steps: int) -> None:
    """The coupled loop: per step, every expert's batches from the current weights, then every update."""
    t_unit, warned, k = time.perf_counter(), False, len(policies)
    for i in range(n_steps):
        if reporter.should_stop():
            raise Cancelled(unit.id)
        version, knobs = unit_knobs(reporter, ctx.spec)  # step boundary: one knob version for all experts
        batches = {}
        for e, p in policies.items():
            t0 = time.perf_counter()
            with streams[e].active():
                batches[e] = step_batches(ctx, Unit(unit.cycle, "opd", e), p.engine, teachers[e], reference,
                                          knobs, rngs[e])
            batches[e] = (*batches[e], time.perf_counter() - t0)
        for j, (e, p) in enumerate(policies.items()):  # only now may any expert move
            native, cross, beta, t_roll = batches[e]
            with streams[e].active():
                values = train_step(p.engine, p.model, p.opt, native, cross, ctx.spec, knobs.lr)
            p.step += 1
            p.version = version
            values = step_values(values, unit, native, cross, beta, t_roll, version, p.device)
            report_step(reporter, e, unit, p.step, i * k + j, n_steps * k, values, version, t_unit)
            if values.get(M.REWARD_ERRORS.key) and not warned:
                warned = report_plugin_error(ctx, reporter, e)
