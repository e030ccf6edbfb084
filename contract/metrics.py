"""The registry of metric keys: every key the trainer reports, with its reduction, phase, period and meaning.

The trainer emits these keys, the FSDP ranks reduce them by `reduction`, the dashboard and the compare report
read them, and docs/metrics.md lists them (a test keeps the four in step). A key is exact (`loss/grpo`) or a
pattern with one `<name>` part (`acc/<domain>`), which `key_for` fills and `name_in` reads back.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from typing import Iterable, Literal

Reduction = Literal["mean", "sum", "max"]
# When a key is reported: every training step (`train`), training steps with OPD only (`opd`), after each
# cycle's evaluation (`eval`), or for the merged model at the end (`merge`).
MetricPhase = Literal["train", "opd", "eval", "merge"]
Period = Literal["step", "cycle"]


@dataclass(frozen=True)
class MetricDef:
    """One metric key (or key pattern) and how to read it."""

    key: str
    reduction: Reduction
    phase: MetricPhase
    per: Period
    meaning: str
    _re: re.Pattern = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        pattern = re.sub(r"<[a-z_]+>", "([^/]+)", re.escape(self.key).replace(r"\<", "<").replace(r"\>", ">"))
        object.__setattr__(self, "_re", re.compile(f"^{pattern}$"))

    @property
    def is_pattern(self) -> bool:
        return "<" in self.key

    @property
    def prefix(self) -> str:
        """The key up to its `<name>` part (the whole key when exact)."""
        return self.key.split("<", 1)[0]

    def key_for(self, name: str) -> str:
        """The concrete key of a pattern, e.g. ACC.key_for("text") == "acc/text"."""
        return re.sub(r"<[a-z_]+>", name, self.key)

    def matches(self, key: str) -> bool:
        return bool(self._re.match(key))

    def name_in(self, key: str) -> str | None:
        """The `<name>` part of a concrete key of this pattern, else None."""
        m = self._re.match(key)
        return m.group(1) if m and self.is_pattern else None


_ALL: list[MetricDef] = []


def _m(key: str, reduction: Reduction, phase: MetricPhase, per: Period, meaning: str) -> MetricDef:
    d = MetricDef(key, reduction, phase, per, meaning)
    _ALL.append(d)
    return d


# ---- every training step (Phase I, Phase II, mixed RLVR, distillation) --------------------------
LOSS_GRPO = _m("loss/grpo", "mean", "train", "step", "GRPO clipped-surrogate loss of the native batch")
REWARD = _m("reward/mean", "mean", "train", "step", "mean verifier reward of the native batch's samples")
REWARD_ERRORS = _m("reward/plugin_errors", "sum", "train", "step",
                   "samples of the native batch whose reward plugin raised (each scored 0; the first traceback is an event)")
REWARD_PART = _m("reward/<part>", "mean", "train", "step",
                 "a reward part: a plugin's extra key, or `correct` / `format` with format_reward (mean over the samples that have it)")
CLIP_FRAC = _m("grpo/clip_frac", "mean", "train", "step",
               "share of the native batch's tokens whose ratio was clipped, over all of the step's updates "
               "(0 with grpo.mini_batches 1: the old policy is the current one)")
ZERO_ADV = _m("grpo/zero_adv_groups", "mean", "train", "step",
              "share of GRPO groups whose samples all got the same reward (no signal)")
KL_REF = _m("grpo/kl_ref", "mean", "train", "step", "KL to the reference model (only when grpo.kl_coef > 0)")
ENTROPY = _m("entropy", "mean", "train", "step", "mean token entropy of the native batch, in nats")
RESPONSE_LEN = _m("response/len", "mean", "train", "step", "mean completion length of the native batch, tokens")
GRAD_NORM = _m("grad_norm", "mean", "train", "step", "global gradient norm before clipping")
LR = _m("lr", "mean", "train", "step", "learning rate used by the step")
TOKENS_ROLLOUT = _m("tokens/rollout_per_s", "sum", "train", "step", "sampled completion tokens per second")
TOKENS_TRAIN = _m("tokens/train_per_s", "sum", "train", "step", "tokens through the training forward+backward per second")
COST_ROLLOUT = _m("cost/rollout_tokens", "sum", "train", "step", "completion tokens sampled by the step")
COST_TRAIN = _m("cost/train_tokens", "sum", "train", "step", "tokens trained on by the step")
KNOBS_VERSION = _m("knobs/version", "mean", "train", "step", "the knob version the step used")
PHASE = _m("phase", "mean", "train", "step", "1 = an RLVR step (Phase I, mixed RLVR), 2 = a step with OPD")
LOGP_GAP = _m("rollout/logp_gap", "mean", "train", "step",
              "mean |log π_sampler − log π_trainer| per token (sampler vs trainer kernels)")
TIS_WEIGHT = _m("rollout/tis_weight", "mean", "train", "step", "mean truncated importance-sampling weight")
PEAK_MEMORY = _m("memory/peak_gb", "max", "train", "step", "peak accelerator memory of the step, GB (0 on CPU)")
FSDP_RANKS = _m("fsdp/ranks", "mean", "train", "step", "processes the expert is sharded over (sharded units only)")
# ---- steps with on-policy distillation (Phase II, static OPD / MOPD) ----------------------------
LOSS_OPD = _m("loss/opd", "mean", "opd", "step", "OPD policy-gradient loss of the cross-expert batches")
OPD_KL = _m("opd/kl", "mean", "opd", "step", "sampled reverse KL student ‖ teacher, weighted over teachers")
OPD_KL_TEACHER = _m("opd/kl/<teacher>", "mean", "opd", "step", "sampled reverse KL student ‖ this teacher")
OPD_ADV = _m("opd/adv", "mean", "opd", "step", "mean OPD token advantage β·(log π_teacher − log π_student)")
OPD_CLIP_FRAC = _m("opd/clip_frac", "mean", "opd", "step",
                   "share of the cross batches' tokens whose ratio was clipped, over all of the step's updates")
OPD_BETA = _m("opd/beta", "mean", "opd", "step", "β the step used")
# ---- after each cycle's evaluation --------------------------------------------------------------
ACC = _m("acc/<domain>", "mean", "eval", "cycle", "greedy accuracy on the domain's held-out prompts")
EVAL_LEN = _m("eval_len/<domain>", "mean", "eval", "cycle", "mean greedy completion length on the domain, tokens")
OVERLAP_MEAN = _m("overlap/mean", "mean", "eval", "cycle", "mean top-k overlap over every ordered pair of experts (run-level)")
OVERLAP_TOP1_MEAN = _m("overlap_top1/mean", "mean", "eval", "cycle", "mean top-1 agreement over every ordered pair (run-level)")
OVERLAP = _m("overlap/<expert>", "mean", "eval", "cycle",
             "top-k overlap (k = eval.overlap_k) with that expert on this expert's own samples")
OVERLAP_TOP1 = _m("overlap_top1/<expert>", "mean", "eval", "cycle", "top-1 agreement with that expert on this expert's samples")
OVERLAP_RL_MEAN = _m("overlap_rl/mean", "mean", "eval", "cycle",
                     "`overlap/mean` measured on the experts as Phase I of the cycle left them (before its OPD)")
OVERLAP_TOP1_RL_MEAN = _m("overlap_top1_rl/mean", "mean", "eval", "cycle",
                          "`overlap_top1/mean` on the experts as Phase I of the cycle left them")
OVERLAP_RL = _m("overlap_rl/<expert>", "mean", "eval", "cycle",
                "`overlap/<expert>` on the experts as Phase I of the cycle left them (step: the end of Phase I)")
OVERLAP_TOP1_RL = _m("overlap_top1_rl/<expert>", "mean", "eval", "cycle",
                     "`overlap_top1/<expert>` on the experts as Phase I of the cycle left them")
# ---- the merged all-in-one model -----------------------------------------------------------------
ACC_MEAN = _m("acc_mean", "mean", "merge", "cycle", "the merged model's accuracy averaged over the domains")

REGISTRY: tuple[MetricDef, ...] = tuple(sorted(_ALL, key=lambda d: d.is_pattern))  # exact keys match first


def lookup(key: str) -> MetricDef | None:
    """The registry entry of a concrete key, or None for a key nobody declared."""
    return next((d for d in REGISTRY if d.matches(key)), None)


def reduce(key: str, values: Iterable[float]) -> float:
    """One value from several ranks' values of `key`, by its reduction (mean for undeclared keys)."""
    xs = [float(v) for v in values]
    how = d.reduction if (d := lookup(key)) else "mean"
    if how == "sum":
        return math.fsum(xs)
    if how == "max":
        return max(xs)
    return math.fsum(xs) / len(xs)


def table() -> list[dict[str, str]]:
    """The registry as rows (for GET /vocab and docs/metrics.md)."""
    return [{"key": d.key, "reduction": d.reduction, "phase": d.phase, "per": d.per, "meaning": d.meaning}
            for d in _ALL]
