"""The step toolkit every training unit is built from: the run's context, opening a policy to train, one
step's batches, the optimizer step, its report, the step loop and the checkpoint at the end.

Expert units (trainer/units.py), the baselines' single-policy units (trainer/baselines.py) and the FSDP
ranks (trainer/dist_unit.py) all use these pieces; none of them imports another unit runner.
"""

from __future__ import annotations

import copy
import hashlib
import random
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping

import torch

from contract import metrics as M
from contract.plan import Layout, Unit
from contract.spec import Knobs, RunSpec
from trainer.checkpoint import CheckpointInfo, manifest_sha, read_state, save_checkpoint
from trainer.domains import Domain, load_domain
from trainer.engines import autocast_dtype, peak_memory_gb, place, student_device, student_engine, teacher_device
from trainer.models import configure_torch, load_builtin_tiny, load_pretrained
from trainer.reporter import Reporter
from trainer.rollout import HFEngine
from trainer.update import cross_batch, draw, native_batch, update_step

# AdamW as every training unit uses it (the paper's setting: no weight decay).
ADAMW = {"betas": (0.9, 0.999), "weight_decay": 0.0}
OPTIMIZER_FILE = "optimizer.pt"


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
        elif spec.base_model == "builtin:tiny-vl":  # with a vision tower (trainer/tiny_vl.py)
            from trainer.tiny_vl import builtin_tiny_vl
            _, _, base = builtin_tiny_vl(spec.tiny, list(domains.values()), spec.seed, model_cache, log_fn)
        else:
            base = Path(spec.base_model) if Path(spec.base_model).exists() else spec.base_model
        return cls(spec, Layout(Path(root), Path(base)), domains)

    def load(self, folder: Path, *, cache: bool = True):
        """(model, tokenizer) of a checkpoint; recently used ones stay in memory, keyed by content hash."""
        key = self._key(folder)
        if key in self._models:
            self._models.move_to_end(key)
            model, tok = self._models[key]
            return copy.deepcopy(model), tok
        model, tok = load_pretrained(str(folder))
        if cache:
            self._models[key] = (copy.deepcopy(model), tok)
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


# ---- opening a policy ----------------------------------------------------------------------------

def make_optimizer(params, lr: float, impl: str = "auto") -> torch.optim.Optimizer:
    """The one optimizer factory of the training units; impl (spec `compute.adamw`): auto = fused where torch
    has the fused kernel for every parameter (plain CPU / CUDA tensors), else torch's default."""
    params = list(params)
    return torch.optim.AdamW(params, lr=lr, **ADAMW, **adamw_impl(params, impl))


def adamw_impl(params, impl: str = "auto") -> dict[str, bool]:
    """AdamW's `fused` / `foreach` arguments for `impl`: fused | foreach | loop | auto (fused where supported:
    on this CPU 4.2× (tiny) and 2.8× (small) faster than the loop per step, docs/perf.md)."""
    from torch.distributed.tensor import DTensor

    if impl == "loop":
        return {"foreach": False}
    if impl == "foreach":
        return {"foreach": True}
    plain = all(not isinstance(p, DTensor) and p.device.type in ("cpu", "cuda") and p.is_floating_point()
                for p in params)
    if impl == "fused" or (impl == "auto" and plain and params):
        return {"fused": True}
    return {}


def optimizer_state(folder: Path) -> dict[str, Any] | None:
    """The optimizer state a checkpoint folder carries, or None."""
    path = Path(folder) / OPTIMIZER_FILE
    return torch.load(path, weights_only=True) if path.exists() else None


def start_step(src: Path, continues: bool = True) -> int:
    """The step count a unit continues from: its input checkpoint's, 0 for a base model or a fresh policy."""
    return int(read_state(src).get("step", 0)) if continues and (Path(src) / "trainer_state.json").exists() else 0


def unit_knobs(reporter: Reporter, spec: RunSpec) -> tuple[int, Knobs]:
    """The knobs in force at a step boundary, typed (a Reporter may hand them over as a plain mapping)."""
    version, knobs = reporter.knobs()
    return version, Knobs.coerce(knobs, spec)


@dataclass
class Policy:
    """The policy a training unit steps: its weights, optimizer, sampler and where it stands."""

    name: str                   # the expert, or MIXED / STUDENT for the baselines' single policies
    model: Any
    tok: Any
    opt: torch.optim.Optimizer
    engine: Any                 # the RolloutEngine that samples from `model`
    device: torch.device
    step: int                   # update steps taken so far (over the whole run)
    version: int                # the knob version in force


def open_policy(ctx: RunContext, unit: Unit, reporter: Reporter, name: str, src: Path, *,
                continues: bool, device: torch.device | None = None) -> tuple[Policy, Knobs]:
    """Load `src` on the unit's device (or `device`) as a trainable policy with its optimizer (its saved
    state when `continues`) and its rollout engine; returns it with the knobs in force."""
    spec = ctx.spec
    seed = ctx.unit_seed(unit)
    torch.manual_seed(seed)
    dev = device if device is not None else student_device()
    model, tok = ctx.load(src)
    model = place(model, spec.compute, dev, trainable=True)
    version, knobs = unit_knobs(reporter, spec)
    opt = make_optimizer(model.parameters(), knobs.lr, spec.compute.adamw)
    state = optimizer_state(src) if continues else None
    if state is not None:
        opt.load_state_dict(state)
    engine = student_engine(spec.rollout, spec.compute, model, tok, src, seed)
    return Policy(name, model, tok, opt, engine, dev, start_step(src, continues), version), knobs


# ---- one step ------------------------------------------------------------------------------------

def teacher_weights(knobs: Knobs | Mapping[str, Any], spec: RunSpec, student: str) -> dict[str, float]:
    """Normalised weights of the student's teachers (topology, then the teacher_weights knob)."""
    return Knobs.coerce(knobs, spec).teachers(spec, student)


def step_batches(ctx: RunContext, unit: Unit, engine, teachers: dict[str, HFEngine], reference: HFEngine | None,
                 knobs: Knobs, rng: random.Random, share: Callable[[list], list] = list):
    """One step's batches of an expert: (native GRPO batch, cross OPD batches, β or None without teachers).

    share: the part of each prompt draw this process samples (all of it; a rank's share under FSDP).
    """
    spec, expert = ctx.spec, unit.expert
    knobs = Knobs.coerce(knobs, spec)
    domain = ctx.domains[expert]
    native = native_batch(engine, domain, share(draw(rng, domain.train, spec.grpo.prompts_per_step)), spec.grpo,
                          reference)
    cross, beta = [], None
    if teachers:
        beta = knobs.beta_for(expert, spec.opd.beta)
        for t, w in knobs.teachers(spec, expert).items():
            prompts = share(draw(rng, ctx.domains[t].train, spec.opd.prompts_per_step))
            cross.append(cross_batch(engine, t, teachers[t], prompts, spec.grpo, spec.opd, beta, w))
    return native, cross, beta


def train_step(engine, model, opt, native, cross, spec: RunSpec, lr: float) -> dict[str, float]:
    """One optimizer step on the batches, with the engine's memory freed meanwhile and its weights synced after."""
    engine.sleep()
    values = update_step(model, opt, native, cross, spec.grpo, lr, tis_cap=spec.rollout.tis_cap,
                         amp=autocast_dtype(spec.compute), compiled=spec.compute.compile == "on")
    engine.wake()
    engine.sync_weights(model)
    return values


def step_values(values: dict[str, float], unit: Unit, native, cross, beta: float | None, t_roll: float,
                version: int, device: torch.device) -> dict[str, float]:
    """update_step's metrics plus the step's rollout throughput and cost, knob version, memory and phase
    (1: RLVR — Phase I, mixed RLVR —; 2: with OPD). native may be None (a distill step without GRPO)."""
    rollout_tokens = (native.rollout.completion_tokens if native else 0) + sum(c.rollout.completion_tokens for c in cross)
    values |= {M.TOKENS_ROLLOUT.key: rollout_tokens / max(t_roll, 1e-9), M.COST_ROLLOUT.key: float(rollout_tokens),
               M.KNOBS_VERSION.key: float(version), M.PEAK_MEMORY.key: peak_memory_gb(device),
               M.PHASE.key: 1.0 if unit.kind in ("rl", "mixed") else 2.0}
    if beta is not None:
        values[M.OPD_BETA.key] = beta
    return values


def report_step(reporter: Reporter, name: str, unit: Unit, step: int, i: int, n_steps: int,
                values: dict[str, float], version: int, t_unit: float) -> None:
    """One training step's metrics, the knob version it used, and the unit's progress."""
    reporter.metrics(name, unit.cycle, step, values)
    reporter.knobs_applied(version, unit.cycle, step)
    reporter.progress(unit.id, i + 1, n_steps, {"reward": values.get(M.REWARD.key, 0.0), "step": step,
                                                "s_per_step": (time.perf_counter() - t_unit) / (i + 1)})


# ---- the loop and its end ------------------------------------------------------------------------

def train_steps(ctx: RunContext, unit: Unit, reporter: Reporter, policy: Policy, n_steps: int,
                batches: Callable[[Knobs], tuple], done: Callable[[dict[str, float]], bool] | None = None) -> Policy:
    """A training unit's step loop: at each step boundary the cancel flag and the latest knobs, then
    `batches(knobs)` → (native, cross, β or None), one optimizer step, the step's report. Closes the engine
    at the end (a vLLM engine gives its memory back before the next unit starts). Returns the policy with
    its step and knob version moved on. `done(values)`, when given, ends the loop early after a step
    (a token budget)."""
    t_unit = time.perf_counter()
    plugin_warned = False
    try:
        for i in range(n_steps):
            if reporter.should_stop():
                raise Cancelled(unit.id)
            policy.version, knobs = unit_knobs(reporter, ctx.spec)  # step boundary: the latest knobs apply
            t0 = time.perf_counter()
            native, cross, beta = batches(knobs)
            t_roll = time.perf_counter() - t0
            values = train_step(policy.engine, policy.model, policy.opt, native, cross, ctx.spec, knobs.lr)
            policy.step += 1
            values = step_values(values, unit, native, cross, beta, t_roll, policy.version, policy.device)
            report_step(reporter, policy.name, unit, policy.step, i, n_steps, values, policy.version, t_unit)
            if values.get(M.REWARD_ERRORS.key) and not plugin_warned:
                plugin_warned = report_plugin_error(ctx, reporter, policy.name)
            if done is not None and done(values):
                break
    finally:
        policy.engine.close()
    return policy


def report_plugin_error(ctx: RunContext, reporter: Reporter, name: str) -> bool:
    """The first traceback of a reward plugin that raised, as a warning event (once per unit); True if sent."""
    for domain in ctx.domains.values():
        first = getattr(domain.verifier, "first_error", None)
        if first:
            reporter.event(first[:10_000], level="warning", expert=name)
            return True
    return False


def save_unit(out: Path, model, tok, opt, reporter: Reporter, name: str, unit: Unit, step: int,
              version: int) -> CheckpointInfo:
    """Checkpoint a training unit's policy atomically and tell the reporter."""
    sha, size = save_checkpoint(out, model, tok, opt, {"step": step, "cycle": unit.cycle, "phase": unit.kind,
                                                       "expert": name, "knobs_version": version})
    info = CheckpointInfo(name, unit.cycle, step, str(out), sha, size)
    reporter.checkpoint(info)
    return info


def save_policy(out: Path, policy: Policy, reporter: Reporter, unit: Unit) -> CheckpointInfo:
    """save_unit for a Policy."""
    return save_unit(out, policy.model, policy.tok, policy.opt, reporter, policy.name, unit, policy.step,
                     policy.version)
