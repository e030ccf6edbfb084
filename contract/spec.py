"""The run spec and the live knobs, as pydantic models (torch-free: the server validates specs with it).

The spec format is documented in examples/copd-tiny.yaml and docs/trainer.md; the knobs in docs/api.md.
"""

from __future__ import annotations

import json
import math
import re
from pathlib import Path
from typing import Annotated, Any, Literal, Mapping, Union

import yaml
from pydantic import (BaseModel, ConfigDict, Discriminator, Field, Tag, ValidationError, field_validator,
                      model_validator)

from contract.vocab import (BUILTIN_DOMAINS, DOMAIN_TYPES, EXTRACTS, NAME_RE, RESERVED_EXPERT_NAMES, STRATEGIES,
                            TEXT_ONLY_BASES, VERIFIERS, VISUAL_DOMAINS, Extract, StrategyName, Verifier)

MergeMethod = Literal["average", "task_arithmetic", "ties", "dare_linear", "dare_ties"]
MERGE_METHODS: tuple[str, ...] = ("average", "task_arithmetic", "ties", "dare_linear", "dare_ties")

# BUILTIN_DOMAINS, NAME_RE, RESERVED_EXPERT_NAMES, STRATEGIES, VERIFIERS and Strategy are also importable from
# here (their one definition is contract/vocab.py).
Strategy = StrategyName  # the old name of the strategy literal


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


# `package.module:name` or `path/to/file.py:name`.
PLUGIN_RE = r"^\s*[^:\s][^:]*:[A-Za-z_][A-Za-z0-9_]*\s*$"


class PluginVerifier(_Model):
    """A reward function of your own (verl's or TRL's signature, told apart by its parameters; docs/data.md)."""

    function: str = Field(pattern=PLUGIN_RE, description="'path/to/file.py:name' (a file under the data roots) or "
                                                         "'package.module:name' (importable on the worker).")

    @property
    def target(self) -> tuple[str, str]:
        """(file or module, function name)."""
        where, _, name = self.function.strip().rpartition(":")
        return where.strip(), name.strip()

    @property
    def file(self) -> str | None:
        """The plugin's file when it is given as a path, else None (a module)."""
        where = self.target[0]
        return where if where.endswith(".py") or "/" in where or "\\" in where else None


def _verifier_tag(v: Any) -> str:
    return "PluginVerifier" if isinstance(v, (dict, PluginVerifier)) else "str"


VerifierRef = Annotated[Union[Annotated[Verifier, Tag("str")], Annotated[PluginVerifier, Tag("PluginVerifier")]],
                        Discriminator(_verifier_tag)]


class _Scored(_Model):
    """How a domain's completions are scored: a verifier or a plugin, answer extraction, format reward."""

    verifier: VerifierRef = Field(
        "exact", description="How a completion is scored against the record's answer: a verifier name, or "
                             "{function: 'file.py:name' | 'module:name'} (a reward plugin).")
    extract: Extract | None = Field(None, description="numeric / exact: how the answer is read out of the completion: "
                                                      "last | first | hash (#### x) | boxed (\\boxed{x}) | "
                                                      "answer_tag (<answer>x</answer>) | whole; null = last for "
                                                      "numeric, whole for exact.")
    format_reward: float = Field(0.0, ge=0.0, le=1.0, description="Share w of the training reward given for an "
                                 "<answer>…</answer> tag: reward = (1 − w)·score + w·[tag present]. Eval accuracy "
                                 "is the score alone.")
    tolerance: float = Field(1e-6, ge=0.0, description="Absolute tolerance of the numeric verifier.")

    @model_validator(mode="after")
    def _extract_fits(self) -> "_Scored":
        if self.extract is not None and self.verifier not in ("numeric", "exact"):
            name = self.verifier if isinstance(self.verifier, str) else "a plugin"
            raise ValueError(f"extract: only the numeric and exact verifiers take it (this domain uses {name})")
        return self


class _Visual(_Model):
    """Where a record's images or a video's frames are (docs/vlm.md); a text domain names neither."""

    image_field: str | None = Field(None, min_length=1, description="Record field holding the prompt's image(s): a "
                                    "path (relative to the data file), a list of paths, {bytes | path}, or a data: URI.")
    video_field: str | None = Field(None, min_length=1, description="Record field holding a video: a video file "
                                    "(.mp4, .webm, .mov, ...: any file that is not an image, decoded with PyAV), a "
                                    "list of frame image paths / bytes in order, or a folder of frame images (name order).")
    video_frames: int = Field(8, ge=1, le=256, description="Frames taken from a video file, uniformly spaced in time "
                              "(all of them when it has fewer); each frame costs (h/28)·(w/28) tokens on a "
                              "Qwen2-VL-family model. Frame lists and folders are used as given.")

    @model_validator(mode="after")
    def _one_visual_field(self) -> "_Visual":
        if self.image_field is not None and self.video_field is not None:
            raise ValueError("video_field: give image_field or video_field, not both")
        text = {getattr(self, k, None) for k in ("prompt_field", "answer_field", "prompt_key", "answer_key")} - {None}
        for k in ("image_field", "video_field"):
            if getattr(self, k) is not None and getattr(self, k) in text:
                raise ValueError(f"{k}: must differ from the prompt and answer fields")
        return self

    @property
    def visual(self) -> bool:
        """True when the domain's prompts carry images or frames."""
        return self.image_field is not None or self.video_field is not None


class JsonlDomain(_Scored, _Visual):
    """A domain read from a JSON-lines file of records with a prompt and an answer."""

    type: Literal["jsonl"] = "jsonl"
    path: str = Field(min_length=1, description="Path of the .jsonl file (relative paths resolve from the working directory).")
    prompt_field: str = Field("prompt", min_length=1, description="Record field holding the prompt text.")
    answer_field: str = Field("answer", min_length=1, description="Record field holding the reference answer.")
    eval_fraction: float = Field(0.1, gt=0.0, lt=1.0, description="Share of records held out for evaluation.")


class EvalSource(_Model):
    """Where a dataset domain's held-out prompts come from: exactly one of a file, a split, a fraction."""

    path: str | None = Field(None, min_length=1, description="Another file (or folder) read with the same keys and sources.")
    split: str | None = Field(None, min_length=1, description="Another split of the same dataset (a folder of "
                                                              "<split>.parquet / .jsonl files, save_to_disk, or the hub).")
    fraction: float | None = Field(None, gt=0.0, lt=1.0, description="Share of the distinct prompts held out, by the run's seed.")

    @model_validator(mode="after")
    def _exactly_one(self) -> "EvalSource":
        given = [k for k in ("path", "split", "fraction") if getattr(self, k) is not None]
        if len(given) != 1:
            raise ValueError("give exactly one of path, split or fraction"
                             + (f" (got {', '.join(given)})" if given else ""))
        return self


class DatasetDomain(_Scored, _Visual):
    """A domain read from a dataset as the RL ecosystem ships it (verl / TRL / OpenRLHF; docs/data.md)."""

    type: Literal["dataset"] = "dataset"
    path: str | None = Field(None, min_length=1, description="A .parquet, .jsonl or .json file, a folder of "
                             "<split>.parquet / <split>.jsonl files, or a datasets.save_to_disk folder.")
    hub: str | None = Field(None, min_length=1, pattern=r"^[A-Za-z0-9][\w.-]*(/[\w.-]+)?$",
                            description="A Hugging Face hub dataset id (downloaded by the worker; instead of path).")
    split: str = Field("train", min_length=1, description="The training split (folders, save_to_disk, hub).")
    prompt_key: str = Field("prompt", min_length=1, description="Column of the prompt: text, or chat messages "
                                                                "[{role, content}, …]. Dots reach nested fields.")
    answer_key: str = Field("answer", min_length=1, description="Column of the reference answer, e.g. "
                                                                "reward_model.ground_truth (dots reach nested fields).")
    source_key: str | None = Field(None, min_length=1, description="Column naming each row's task (e.g. data_source).")
    sources: list[str] | None = Field(None, min_length=1, description="Keep only rows whose source_key is one of "
                                                                      "these (one mixed file feeds several experts).")
    system_prompt: str | None = Field(None, description="A system message put before every prompt (replacing the row's own).")
    eval: EvalSource = Field(default_factory=lambda: EvalSource(fraction=0.1),
                             description="Held-out prompts: {path}, {split} or {fraction} (default fraction 0.1).")
    max_rows: int | None = Field(None, ge=2, le=100_000_000, description="Read at most this many matching rows per split.")

    @model_validator(mode="after")
    def _where_and_sources(self) -> "DatasetDomain":
        if (self.path is None) == (self.hub is None):
            raise ValueError("path: give exactly one of path (a file or folder) or hub (a hub dataset id)")
        if self.sources is not None:
            if self.source_key is None:
                raise ValueError("sources: needs source_key, the column that names each row's source")
            dup = sorted({x for x in self.sources if self.sources.count(x) > 1})
            if dup:
                raise ValueError(f"sources: repeated {', '.join(dup)}")
        if self.eval.split is not None and self.path is not None and Path(self.path).suffix in (".parquet", ".jsonl", ".json"):
            raise ValueError("eval.split: a single file has no other split; give eval.path or eval.fraction")
        return self


def _domain_tag(v: Any) -> str:
    if isinstance(v, str):
        return "str"
    kind = v.get("type", "jsonl") if isinstance(v, dict) else getattr(v, "type", None)
    return "DatasetDomain" if kind == "dataset" else "JsonlDomain"


DomainRef = Annotated[Union[Annotated[str, Tag("str")], Annotated[JsonlDomain, Tag("JsonlDomain")],
                            Annotated[DatasetDomain, Tag("DatasetDomain")]], Discriminator(_domain_tag)]
FileDomain = (JsonlDomain, DatasetDomain)
# Labels pydantic puts in an error's loc for the unions above (left out of the field names we print).
_UNION_LABELS = {"str", "JsonlDomain", "DatasetDomain", "PluginVerifier"}


class ExpertSpec(_Model):
    """One co-evolving policy and the domain it owns."""

    name: str = Field(pattern=NAME_RE, description="Expert name: letters, digits, '_' or '-', at most 64.")
    domain: DomainRef = Field(description="A builtin name ('builtin:arith', …), or a {type: jsonl} or {type: dataset} domain (docs/data.md).")

    @field_validator("name")
    @classmethod
    def _not_reserved(cls, v: str) -> str:
        if v in RESERVED_EXPERT_NAMES:
            raise ValueError(f"'{v}' is reserved; choose another expert name")
        return v

    @field_validator("domain", mode="before")
    @classmethod
    def _type_known(cls, v: Any) -> Any:
        if isinstance(v, dict) and "type" in v and v["type"] not in DOMAIN_TYPES:
            raise ValueError(f"type: must be {' or '.join(DOMAIN_TYPES)} (or the domain is a builtin name), got {v['type']!r}")
        return v

    @field_validator("domain")
    @classmethod
    def _builtin_known(cls, v: DomainRef) -> DomainRef:
        if isinstance(v, str):
            if v not in BUILTIN_DOMAINS:
                raise ValueError(f"unknown domain '{v}'; builtin domains are {', '.join(BUILTIN_DOMAINS)}"
                                 " (or give {type: jsonl, path: ...} / {type: dataset, path: ...})")
        return v


class ScheduleSpec(_Model):
    """How many cycles, and how many steps each phase of a cycle takes."""

    cycles: int = Field(4, ge=0, le=10_000, description="Number of cycles (Phase I + Phase II each).")
    rl_steps: int = Field(3, ge=0, le=1_000_000, description="Phase I (RLVR) steps per cycle.")
    opd_steps: int = Field(2, ge=0, le=1_000_000, description="Phase II (mutual OPD) steps per cycle.")


class GrpoSpec(_Model):
    """GRPO settings of the native (own-domain) RLVR batch."""

    group_size: int = Field(8, ge=2, le=1024, description="G: samples per prompt.")
    prompts_per_step: int = Field(8, ge=1, le=100_000, description="Prompts per update step.")
    lr: float = Field(1e-4, gt=0.0, le=1.0, description="Learning rate (AdamW).")
    temperature: float = Field(1.0, gt=0.0, le=10.0, description="Sampling temperature.")
    max_new_tokens: int = Field(12, ge=1, le=65_536, description="Completion length cap in tokens.")
    eps_low: float = Field(0.2, ge=0.0, lt=1.0, description="Lower clip range of the ratio.")
    eps_high: float = Field(0.28, ge=0.0, le=10.0, description="Upper clip range of the ratio.")
    kl_coef: float = Field(0.0, ge=0.0, description="KL-to-reference coefficient (0 = no KL term, the paper's setting).")
    grad_clip: float = Field(1.0, gt=0.0, description="Max global gradient norm.")
    mini_batches: int = Field(1, ge=1, le=1024, description=(
        "Clipped optimizer updates per rollout batch (verl's train batch ÷ ppo_mini_batch_size): each takes its "
        "share of every batch's rows, and its old policy is the rollout's, so from the second update on the "
        "clip (eps_low / eps_high) and the TIS correction act. 1 = one update per batch (old = current policy)."))
    micro_batch_tokens: int | None = Field(16384, ge=1, le=1 << 30, description=(
        "Positions (prompt tokens once per prompt + completion tokens, padding included) per training "
        "forward+backward; a larger batch runs in several, gradients accumulated (the same update). Rows go "
        "longest first and each micro-batch is trimmed to its own longest prompt and completion. null = the "
        "whole batch at once."))


class OpdSpec(_Model):
    """Mutual on-policy distillation settings (Phase II)."""

    beta: float = Field(1.0, ge=0.0, le=1e6, description="Scale of the OPD token advantage β·(log π_teacher − log π_student).")
    prompts_per_step: int = Field(8, ge=1, le=100_000, description="Teacher-domain prompts per teacher per step.")
    samples_per_prompt: int = Field(4, ge=1, le=1024, description="Student samples per teacher-domain prompt.")
    teacher_weights: dict[str, dict[str, float]] | None = Field(
        None, description="Initial student → teacher → weight (the knob's version 0); weight 0 drops a direction. "
                          "null = every teacher of the topology at weight 1.")
    teacher_sync: Literal["phase", "step"] = Field(
        "phase", description="phase: a student's teachers are its peers as they stand at the start of Phase II "
                             "(one unit per expert, in parallel); step: the experts advance one step at a time "
                             "in one unit, each scored by its peers' current weights (live, co-evolving "
                             "teachers; docs/trainer.md). copd only: strategies without mutual OPD ignore it.")


class MixedSpec(_Model):
    """`mixed_rlvr`: one policy, GRPO on the pooled domains."""

    weights: dict[str, float] | None = Field(
        None, description="Expert (its domain) → share of each step's prompts; null = equal mix. Normalised to sum 1.")
    train_tokens: int | None = Field(
        None, ge=1, le=10**12,
        description="Budget by training tokens instead of steps: each cycle's unit steps until its policy has "
                    "trained on this many completion tokens (at most 10 × the step budget); null = the step budget, "
                    "len(experts) × (rl_steps + opd_steps) a cycle. `copd compare` sets it per seed from a copd "
                    "run's tokens with an entry's `match_tokens`.")


class DistillSpec(_Model):
    """`static_opd` / `mopd`: after the independent experts, on-policy distillation into one student."""

    steps: int | None = Field(None, ge=0, le=1_000_000,
                              description="Distillation steps; null = one expert's budget, cycles × (rl_steps + opd_steps).")
    teacher: str | None = Field(None, description="static_opd: the fixed teacher expert; null = every expert but the student.")
    student: str | None = Field(None, description="static_opd: the expert whose final weights start the student "
                                                  "(null = the first expert); mopd: null = the base model.")
    alpha: float = Field(1.0, ge=0.0, le=1e6, description="Weight of the student's native GRPO loss next to the OPD loss "
                                                          "(static_opd: the student's domain; mopd: every domain).")


class MergeSpec(_Model):
    """How the experts are merged into the all-in-one model."""

    method: MergeMethod = Field("average", description="average (Σ w·θ, the default) | task_arithmetic | ties | "
                                "dare_linear | dare_ties: the last four merge the experts' deltas from the base model "
                                "(docs/integrations.md).")
    weights: dict[str, float] | None = Field(None, description="Expert → weight (non-negative, sum 1); null = uniform.")
    density: float = Field(1.0, gt=0.0, le=1.0, description="ties: share of each delta's entries kept (largest "
                           "magnitudes); dare_*: probability an entry is kept (the kept are rescaled by 1/density).")
    scale: float = Field(1.0, gt=0.0, le=100.0, description="λ: the merged delta is added to the base times this "
                         "(every method but average).")
    sign_method: Literal["total", "frequency"] = Field(
        "total", description="ties / dare_ties: the elected sign of an entry is that of the weighted sum of the "
                             "deltas (total) or the one most experts hold (frequency).")

    @field_validator("weights")
    @classmethod
    def _weights_ok(cls, v: dict[str, float] | None) -> dict[str, float] | None:
        if v is None:
            return v
        if not v:
            raise ValueError("weights must name at least one expert, or be null for uniform")
        bad = [k for k, w in v.items() if not (w >= 0 and math.isfinite(w))]
        if bad:
            raise ValueError(f"weights must be non-negative numbers (bad: {', '.join(bad)})")
        total = sum(v.values())
        if abs(total - 1.0) > 1e-6:
            raise ValueError(f"weights must sum to 1 (they sum to {total:g})")
        return v


Tracker = Literal["wandb", "mlflow", "tensorboard"]
TRACKERS: tuple[str, ...] = ("wandb", "mlflow", "tensorboard")
AlertOn = Literal["crashed", "failed", "completed"]
ALERT_ON: tuple[str, ...] = ("crashed", "failed", "completed")
_RULE_RE = re.compile(r"^\s*(?:(?P<expert>[A-Za-z0-9][A-Za-z0-9_-]{0,63}):)?(?P<key>[A-Za-z0-9_./<>-]+)\s*"
                      r"(?P<op><=|>=|<|>)\s*(?P<value>[-+0-9.eE]+|nan|inf)\s*"
                      r"(?:after\s+cycle\s+(?P<cycle>\d+))?\s*$")


class AlertRule(_Model):
    """A metric rule: alert once when a point of `key` crosses `value` (e.g. `acc_mean < 0.3 after cycle 2`)."""

    key: str = Field(min_length=1, max_length=128, description="A registered metric key (contract/metrics.py).")
    op: Literal["<", "<=", ">", ">="] = Field(description="How the point compares with value to fire.")
    value: float = Field(description="The threshold.")
    after_cycle: int = Field(0, ge=0, description="Only points of cycles ≥ this fire (the rule's `after cycle c`).")
    expert: str | None = Field(None, description="Only this expert's (or merged's) points; null = any.")

    @model_validator(mode="before")
    @classmethod
    def _from_text(cls, v: Any) -> Any:
        if not isinstance(v, str):
            return v
        m = _RULE_RE.match(v)
        if not m:
            raise ValueError(f"{v!r} is not a rule like 'acc_mean < 0.3 after cycle 2' or 'text:rollout/logp_gap > 0.5'")
        return {"key": m["key"], "op": m["op"], "value": float(m["value"]),
                "after_cycle": int(m["cycle"] or 0), "expert": m["expert"]}

    @field_validator("key")
    @classmethod
    def _registered(cls, v: str) -> str:
        from contract.metrics import lookup

        if lookup(v) is None:
            raise ValueError(f"'{v}' is not a registered metric key (docs/metrics.md)")
        return v

    def fires(self, expert: str | None, key: str, cycle: int | None, value: float) -> bool:
        """True when this point breaks the rule."""
        if key != self.key or (self.expert is not None and expert != self.expert):
            return False
        if (cycle or 0) < self.after_cycle:
            return False
        return {"<": value < self.value, "<=": value <= self.value, ">": value > self.value,
                ">=": value >= self.value}[self.op]

    def __str__(self) -> str:
        who = f"{self.expert}:" if self.expert else ""
        return f"{who}{self.key} {self.op} {self.value:g}" + (f" after cycle {self.after_cycle}" if self.after_cycle else "")


class AlertsSpec(_Model):
    """Webhooks (Slack-compatible JSON `{"text": ...}`) told when the run ends or a metric rule fires."""

    webhooks: list[str] = Field(default_factory=list, max_length=16,
                                description="http(s) URLs POSTed `{\"text\": ...}` (Slack incoming webhooks, or any receiver).")
    on: list[AlertOn] = Field(default_factory=lambda: list(ALERT_ON),
                              description="Run statuses that alert: crashed, failed, completed.")
    rules: list[AlertRule] = Field(default_factory=list, max_length=64,
                                   description="Metric rules, e.g. 'acc_mean < 0.3 after cycle 2', 'rollout/logp_gap > 0.5'.")

    @field_validator("webhooks")
    @classmethod
    def _urls(cls, v: list[str]) -> list[str]:
        for i, url in enumerate(v):
            if not re.match(r"^https?://[^\s/]+", url):
                raise ValueError(f"{i}: {url!r} is not an http(s) URL")
        return v


class EvalSpec(_Model):
    """Held-out evaluation and the behavioural-overlap measure."""

    prompts: int = Field(128, ge=1, le=1_000_000, description="Held-out prompts per domain (greedy accuracy).")
    overlap_k: int = Field(10, ge=1, le=1000, description="k of the top-k overlap between experts.")
    overlap_prompts: int = Field(32, ge=1, le=100_000, description="Prompts per expert for the overlap measure.")


class RolloutSpec(_Model):
    """Which engine samples the rollouts and scores the teachers' tokens."""

    engine: Literal["auto", "hf", "vllm"] = Field(
        "auto", description="hf (transformers, everywhere) | vllm (colocated vLLM, weights synced in place after "
                            "each optimizer step) | auto (vllm when importable and a GPU is present, else hf).")
    gpu_memory_utilization: float = Field(0.3, gt=0.0, lt=1.0,
                                          description="vLLM's share of the GPU's memory (the trainer keeps the rest).")
    sleep_mode: bool = Field(True, description="vLLM frees its weights and KV cache while the trainer steps (GPU only).")
    tis_cap: float | None = Field(2.0, gt=0.0, le=1e6,
                                  description="Truncated importance-sampling cap C: tokens weigh min(π_trainer/π_sampler, C); "
                                              "null = no correction (the sampler's logprobs are the old policy's).")


class ComputeSpec(_Model):
    """Precision and devices of the experts and their teachers."""

    dtype: Literal["auto", "fp32", "bf16"] = Field(
        "auto", description="Weights' dtype: auto = bf16 on a GPU that supports it, else fp32.")
    master_fp32: bool = Field(False, description="With bf16: keep fp32 master weights (bf16 autocast forward).")
    gpus_per_expert: int = Field(1, ge=1, le=64, description="GPUs per expert; > 1 trains the expert with FSDP "
                                                             "across that many processes.")
    teacher_device: Literal["same", "other", "cpu"] = Field(
        "same", description="Where Phase II teachers live: the student's GPU, the next visible GPU, or CPU memory "
                            "(moved to the GPU only to score).")
    compile: Literal["off", "on"] = Field(
        "off", description="torch.compile of the training forward+backward (dynamic shapes). Off by default: on "
                           "this project's CPU it warmed up for minutes and stepped no faster (docs/perf.md); "
                           "on a GPU, measure before turning it on.")
    adamw: Literal["auto", "fused", "foreach", "loop"] = Field(
        "auto", description="AdamW's implementation: auto = fused where torch has the kernel for every parameter "
                            "(CPU and CUDA tensors, not FSDP shards), else torch's default.")


class TinyModelSpec(_Model):
    """Recipe of `builtin:tiny`: a small decoder built from a config and warm-started offline."""

    arch: Literal["qwen2", "llama"] = Field("qwen2", description="transformers architecture of the tiny model.")
    hidden_size: int = Field(128, ge=8, le=4096)
    layers: int = Field(3, ge=1, le=64)
    heads: int = Field(4, ge=1, le=64)
    kv_heads: int = Field(2, ge=1, le=64)
    intermediate_size: int = Field(384, ge=8, le=16384)
    warmstart_max_steps: int = Field(6000, ge=0, le=1_000_000, description="Cap on supervised warm-start steps.")
    warmstart_batch: int = Field(64, ge=1, le=4096)
    warmstart_lr: float = Field(3e-3, gt=0.0, le=1.0)
    target_low: float = Field(0.25, ge=0.0, le=1.0, description="Warm start stops once every domain's sampled accuracy is ≥ this …")
    target_high: float = Field(0.45, ge=0.0, le=1.0, description="… and ≤ this.")
    warmstart_habit_steps: int = Field(
        2000, ge=0, le=1_000_000,
        description="After the band: this many more supervised steps on the domains with a habit (the builtin "
                    "ones), equally mixed, so the base has their skills and greedy decoding still follows the habit "
                    "(what RLVR then uncovers); within warmstart_max_steps in all. 0 = stop at the band.")
    warmstart_rehearsal: float = Field(
        0.0, ge=0.0, le=1.0,
        description="Share of a full batch share a domain keeps while the warm start pauses it (in the band while "
                    "another lags, or in the habit phase without a habit of its own): 0 = it rests, as before. Domains "
                    "that conflict (the same inputs, other answers: builtin:marked_*) forget fast when they rest; "
                    "0.25 keeps them.")
    seed: int = Field(0, ge=0, le=2**31 - 1,
                      description="Seed of the base model's initialisation and warm start, separate from the run's"
                                  " `seed`: runs of many seeds share one base model.")

    @model_validator(mode="after")
    def _shape_ok(self) -> "TinyModelSpec":
        if self.hidden_size % self.heads:
            raise ValueError("hidden_size must be a multiple of heads")
        if self.heads % self.kv_heads:
            raise ValueError("heads must be a multiple of kv_heads")
        if self.target_low > self.target_high:
            raise ValueError("target_low must not exceed target_high")
        return self


class CheckpointsSpec(_Model):
    """Retention: which checkpoints a run keeps (docs/lab-server.md, "Checkpoint retention")."""

    keep_last: int | None = Field(None, ge=1, le=1_000_000, description="Keep the weights of each policy's "
                                  "newest N checkpoints; null = every checkpoint's weights are kept.")
    keep_every: int | None = Field(None, ge=1, le=1_000_000, description="With keep_last: also keep each "
                                   "policy's end of every K-th cycle (c<K>-opd, c<2K>-opd, ...).")
    optimizer: Literal["last", "all", "none"] = Field("last", description="Optimizer state: `last` keeps it in "
                                                      "each policy's newest checkpoint only (what the next unit "
                                                      "continues from), `all` in every checkpoint, `none` in none "
                                                      "(each unit starts a fresh AdamW).")

    @model_validator(mode="after")
    def _every_needs_last(self) -> "CheckpointsSpec":
        if self.keep_every is not None and self.keep_last is None:
            raise ValueError("keep_every: needs keep_last (without keep_last every checkpoint is kept)")
        return self


class RunSpec(_Model):
    """A whole run: base model, strategy, experts and their domains, schedule and settings."""

    name: str = Field(pattern=NAME_RE, description="Run name: letters, digits, '_' or '-', at most 64.")
    base_model: str = Field("builtin:tiny", min_length=1,
                            description="'builtin:tiny', 'builtin:tiny-vl' (with a vision tower), a local Hugging "
                                        "Face folder, or a hub id (a causal LM, or an image-text-to-text model).")
    strategy: StrategyName = Field("copd", description="copd | independent | independent_merge | mixed_rlvr | static_opd | mopd")
    experts: list[ExpertSpec] = Field(min_length=1, max_length=64)
    topology: str = Field("all_pairs", description="'all_pairs', or 'hub:<expert>' (hub-and-spoke).")
    schedule: ScheduleSpec = Field(default_factory=ScheduleSpec)
    grpo: GrpoSpec = Field(default_factory=GrpoSpec)
    opd: OpdSpec = Field(default_factory=OpdSpec)
    merge: MergeSpec = Field(default_factory=MergeSpec)
    eval: EvalSpec = Field(default_factory=EvalSpec)
    mixed: MixedSpec = Field(default_factory=MixedSpec)
    distill: DistillSpec = Field(default_factory=DistillSpec)
    tiny: TinyModelSpec = Field(default_factory=TinyModelSpec)
    rollout: RolloutSpec = Field(default_factory=RolloutSpec)
    compute: ComputeSpec = Field(default_factory=ComputeSpec)
    report_to: list[Tracker] = Field(default_factory=list, description="Trackers that get every metric point: "
                                     "wandb, mlflow, tensorboard (besides the deployment's COPD_REPORT_TO).")
    alerts: AlertsSpec = Field(default_factory=AlertsSpec, description="Webhooks told of the run's end and of "
                               "metric rules (besides the deployment's COPD_ALERT_*).")
    checkpoints: CheckpointsSpec = Field(default_factory=CheckpointsSpec)
    seed: int = Field(0, ge=0, le=2**31 - 1)

    @field_validator("experts")
    @classmethod
    def _unique_names(cls, v: list[ExpertSpec]) -> list[ExpertSpec]:
        names = [e.name for e in v]
        dup = sorted({n for n in names if names.count(n) > 1})
        if dup:
            raise ValueError(f"expert names must be unique (repeated: {', '.join(dup)})")
        return v

    @model_validator(mode="after")
    def _cross_checks(self) -> "RunSpec":
        names = self.expert_names
        topo = self.topology
        if topo != "all_pairs":
            m = re.fullmatch(r"hub:(.+)", topo)
            if not m:
                raise ValueError("topology: must be 'all_pairs' or 'hub:<expert>'")
            if m.group(1) not in names:
                raise ValueError(f"topology: hub '{m.group(1)}' is not an expert (experts: {', '.join(names)})")
        if self.merge.weights is not None:
            unknown = sorted(set(self.merge.weights) - set(names))
            if unknown:
                raise ValueError(f"merge.weights: unknown expert(s) {', '.join(unknown)}")
        if self.base_model in TEXT_ONLY_BASES:
            for i, e in enumerate(self.experts):
                d = e.domain
                if (d in VISUAL_DOMAINS) if isinstance(d, str) else d.visual:
                    raise ValueError(f"experts.{i}.domain: its prompts have images, but base_model {self.base_model} "
                                     "has no vision tower; use builtin:tiny-vl or a vision-language model")
        if self.strategy == "copd" and len(names) < 2:
            raise ValueError("experts: strategy copd needs at least 2 experts")
        self._check_baseline_fields(names)
        n = self.compute.gpus_per_expert
        if self.opd.teacher_sync == "step" and n > 1:
            raise ValueError("opd.teacher_sync: step runs every expert in one process (one GPU each); "
                             f"it needs compute.gpus_per_expert: 1 (got {n})")
        for field, v in (("grpo.prompts_per_step", self.grpo.prompts_per_step), ("opd.prompts_per_step", self.opd.prompts_per_step)):
            if v % n:
                raise ValueError(f"{field}: must be a multiple of compute.gpus_per_expert={n} (each GPU's process "
                                 f"takes the same number of prompts; got {v})")
        return self

    def _check_baseline_fields(self, names: list[str]) -> None:
        """Expert names in opd.teacher_weights, mixed.weights and distill name real experts."""
        for s, row in (self.opd.teacher_weights or {}).items():
            if s not in names:
                raise ValueError(f"opd.teacher_weights.{s}: unknown expert (experts: {', '.join(names)})")
            for t, w in row.items():
                if t not in names or t == s:
                    raise ValueError(f"opd.teacher_weights.{s}.{t}: must be another expert")
                if not (w >= 0 and math.isfinite(w)):
                    raise ValueError(f"opd.teacher_weights.{s}.{t}: must be a number >= 0")
        if self.mixed.weights is not None:
            unknown = sorted(set(self.mixed.weights) - set(names))
            if unknown:
                raise ValueError(f"mixed.weights: unknown expert(s) {', '.join(unknown)}")
            if any(not (w >= 0 and math.isfinite(w)) for w in self.mixed.weights.values()) \
                    or sum(self.mixed.weights.values()) <= 0:
                raise ValueError("mixed.weights: must be numbers >= 0 with a positive sum")
        for field in ("teacher", "student"):
            v = getattr(self.distill, field)
            if v is not None and v not in names:
                raise ValueError(f"distill.{field}: '{v}' is not an expert (experts: {', '.join(names)})")
        if self.strategy == "static_opd":
            if len(names) < 2:
                raise ValueError("experts: strategy static_opd needs at least 2 experts")
            if self.distill.teacher is not None and self.distill.teacher == self.static_student:
                raise ValueError("distill.teacher: the teacher cannot be the student")

    @property
    def static_student(self) -> str:
        """static_opd's student expert."""
        return self.distill.student or self.expert_names[0]

    def distill_teachers(self) -> list[str]:
        """The fixed teachers of the distilled student (static_opd: one-way into the student; mopd: every expert)."""
        if self.strategy == "mopd":
            return self.expert_names
        if self.distill.teacher is not None:
            return [self.distill.teacher]
        return [n for n in self.expert_names if n != self.static_student]

    @property
    def expert_steps(self) -> int:
        """One expert's update steps over the run: cycles × (rl_steps + opd_steps)."""
        return self.schedule.cycles * (self.schedule.rl_steps + self.schedule.opd_steps)

    @property
    def distill_steps(self) -> int:
        """Distillation steps of static_opd / mopd."""
        return self.expert_steps if self.distill.steps is None else self.distill.steps

    def mix_weights(self) -> dict[str, float]:
        """mixed_rlvr's share of prompts per expert's domain, summing to 1."""
        raw = self.mixed.weights or {n: 1.0 for n in self.expert_names}
        total = sum(raw.values())
        return {n: raw.get(n, 0.0) / total for n in self.expert_names}

    @property
    def expert_names(self) -> list[str]:
        return [e.name for e in self.experts]

    def teachers_of(self, student: str) -> list[str]:
        """The experts that teach `student` in Phase II, by topology."""
        others = [n for n in self.expert_names if n != student]
        if self.topology == "all_pairs":
            return others
        hub = self.topology.split(":", 1)[1]
        return others if student == hub else [hub]


class KnobValues(_Model):
    """A change of the OPD-mixing knobs (the PATCH body's `changes`): every knob optional."""

    beta: float | dict[str, float] | None = Field(None, description="OPD β, global or expert → β.")
    rl_steps: int | None = Field(None, ge=0, le=1_000_000, description="Phase I steps for the coming cycles.")
    opd_steps: int | None = Field(None, ge=0, le=1_000_000, description="Phase II steps for the coming cycles.")
    teacher_weights: dict[str, dict[str, float]] | None = Field(
        None, description="student → teacher → weight of that teacher's OPD loss.")
    lr: float | None = Field(None, gt=0.0, le=1.0, description="Learning rate.")


KnobChanges = KnobValues


class Knobs(BaseModel):
    """The knob values in force (version 0: the spec's). What the API stores and a unit reads at each step boundary.

    Unknown keys are kept (values written by a newer version still round-trip).
    """

    model_config = ConfigDict(extra="allow")

    beta: float | dict[str, float] = Field(1.0, description="OPD β, global or expert → β.")
    rl_steps: int = Field(3, ge=0, description="Phase I steps per cycle, from the next cycle on.")
    opd_steps: int = Field(2, ge=0, description="Phase II steps per cycle, from the next cycle on.")
    teacher_weights: dict[str, dict[str, float]] = Field(
        default_factory=dict, description="student → teacher → weight (missing: 1; 0 drops the direction).")
    lr: float = Field(1e-4, gt=0.0, description="Learning rate of the next steps.")

    @classmethod
    def from_spec(cls, spec: "RunSpec") -> "Knobs":
        """Version 0: the knobs a run starts with."""
        return cls.model_validate(knobs_from_spec(spec))

    @classmethod
    def coerce(cls, value: "Knobs | Mapping[str, Any]", spec: "RunSpec | None" = None) -> "Knobs":
        """Knobs from a Knobs or a mapping of knob values; knobs the mapping leaves out come from `spec`."""
        if isinstance(value, Knobs):
            return value
        base = knobs_from_spec(spec) if spec is not None else {}
        return cls.model_validate({**base, **{k: v for k, v in dict(value).items() if v is not None}})

    def merged(self, changes: "KnobValues | Mapping[str, Any]") -> "Knobs":
        """These values with `changes` applied by the one merge rule (merge_knobs)."""
        if isinstance(changes, KnobValues):
            changes = changes.model_dump(exclude_unset=True)
        return Knobs.model_validate(merge_knobs(self.model_dump(), dict(changes)))

    def beta_for(self, expert: str, default: float | None = None) -> float:
        """β of one student (a per-expert map falls back to `default`, else 1)."""
        if isinstance(self.beta, dict):
            return float(self.beta.get(expert, 1.0 if default is None else default))
        return float(self.beta)

    def steps(self, kind: str) -> int:
        """Steps of a Phase I (`rl`) or Phase II (`opd`) unit."""
        return int(self.rl_steps if kind == "rl" else self.opd_steps)

    def teachers(self, spec: "RunSpec", student: str) -> dict[str, float]:
        """Normalised weights of the student's teachers: the topology's, weighted by `teacher_weights`
        (missing weights are 1); teachers at weight 0 are left out."""
        row = self.teacher_weights.get(student, {})
        raw = {t: float(row.get(t, 1.0)) for t in spec.teachers_of(student)}
        total = sum(raw.values())
        return {t: w / total for t, w in raw.items() if w > 0} if total > 0 else {}


def merge_knobs(values: dict[str, Any], changes: dict[str, Any]) -> dict[str, Any]:
    """New knob values: each changed knob replaces the old one, except maps, which merge.

    The one rule for the API's PATCH and the local DIR/knobs.json: `teacher_weights` merges per student and
    teacher, so one weight can change alone; a per-expert `beta` map merges into an earlier map (a number
    replaces any map, and a map replaces a number: experts it leaves out use the spec's `opd.beta`).

    >>> merge_knobs({"beta": 1.0, "teacher_weights": {"a": {"b": 1.0, "c": 1.0}}},
    ...             {"teacher_weights": {"a": {"c": 0.0}}, "beta": {"a": 0.5}})
    {'beta': {'a': 0.5}, 'teacher_weights': {'a': {'b': 1.0, 'c': 0.0}}}
    """
    out = dict(values)
    for knob, new in changes.items():
        old = out.get(knob)
        if knob == "teacher_weights" and isinstance(old, dict):
            out[knob] = {s: dict(row) for s, row in old.items()}
            for student, row in new.items():
                out[knob][student] = {**out[knob].get(student, {}), **row}
        elif isinstance(new, dict) and isinstance(old, dict):
            out[knob] = {**old, **new}
        else:
            out[knob] = new
    return out


def knobs_from_spec(spec: RunSpec) -> dict[str, Any]:
    """The version-0 knob values a run starts with, as stored and sent (a `Knobs` dumped to JSON)."""
    return {
        "beta": spec.opd.beta,
        "rl_steps": spec.schedule.rl_steps,
        "opd_steps": spec.schedule.opd_steps,
        "teacher_weights": {s: {t: float((spec.opd.teacher_weights or {}).get(s, {}).get(t, 1.0))
                                for t in spec.teachers_of(s)} for s in spec.expert_names},
        "lr": spec.grpo.lr,
    }


def validate_knob_changes(spec: RunSpec, changes: dict[str, Any]) -> dict[str, Any]:
    """Check a knob change against the run; returns the cleaned changes or raises ValueError naming the field."""
    parsed = KnobValues.model_validate(changes)  # raises ValidationError (a ValueError) with the field
    out = parsed.model_dump(exclude_unset=True)
    names = set(spec.expert_names)
    beta = out.get("beta")
    if isinstance(beta, dict):
        for k, b in beta.items():
            if k not in names:
                raise ValueError(f"beta.{k}: unknown expert")
            if not (b >= 0 and math.isfinite(b)):
                raise ValueError(f"beta.{k}: must be a number >= 0")
    elif beta is not None and not (beta >= 0 and math.isfinite(beta)):
        raise ValueError("beta: must be a number >= 0")
    for s, row in (out.get("teacher_weights") or {}).items():
        if s not in names:
            raise ValueError(f"teacher_weights.{s}: unknown expert")
        for t, w in row.items():
            if t not in names:
                raise ValueError(f"teacher_weights.{s}.{t}: unknown expert")
            if t == s:
                raise ValueError(f"teacher_weights.{s}.{t}: an expert cannot teach itself")
            if not (w >= 0 and math.isfinite(w)):
                raise ValueError(f"teacher_weights.{s}.{t}: must be a number >= 0")
    return out


def beta_for(knobs: "Knobs | Mapping[str, Any]", expert: str, default: float) -> float:
    """β for one student from the knob values (global or per expert)."""
    if isinstance(knobs, Knobs):
        return knobs.beta_for(expert, default)
    beta = knobs.get("beta", default)
    if isinstance(beta, dict):
        return float(beta.get(expert, default))
    return float(default if beta is None else beta)


class SpecError(ValueError):
    """A spec that cannot be read or is invalid; the message is one line naming the field."""


_FIELD_IN_MSG = re.compile(r"^([a-z_][a-z0-9_.]*): (.+)$")


def format_validation_error(err: ValidationError) -> str:
    """One line naming each bad field and why."""
    parts = []
    for e in err.errors():
        loc = ".".join(str(p) for p in e["loc"]
                       if not (isinstance(p, str) and (p.startswith("function-") or p in _UNION_LABELS)))
        msg = e["msg"].removeprefix("Value error, ")
        if loc and e.get("type") == "value_error" and (m := _FIELD_IN_MSG.match(msg)):
            loc, msg = f"{loc}.{m.group(1)}", m.group(2)  # a model validator naming its field: `x.y: msg`
        parts.append(f"{loc}: {msg}" if loc else msg)
    return "; ".join(parts)


def parse_spec(data: Any) -> RunSpec:
    """Validate a spec given as a mapping; raises SpecError with a one-line message."""
    if not isinstance(data, dict):
        raise SpecError("spec: must be a mapping of fields (YAML or JSON object)")
    try:
        return RunSpec.model_validate(data)
    except ValidationError as err:
        raise SpecError(format_validation_error(err)) from None


def parse_override_value(raw: str) -> Any:
    """A `--set` value: JSON (`1e-5`, `true`, `[1, 2]`), else YAML (`[a, b]`, `{x: 1}`), else the text itself."""
    try:
        return json.loads(raw)
    except ValueError:
        pass
    try:
        value = yaml.safe_load(raw)
    except yaml.YAMLError:
        return raw
    return raw if value is None and raw.strip() not in ("null", "~") else value


def apply_overrides(data: Any, assignments: list[str] | tuple[str, ...]) -> Any:
    """The spec mapping with each `dotted.key=value` applied (`grpo.lr=1e-5`, `experts.0.domain.path=x`); list
    items by index. Raises SpecError naming the assignment; the mapping given is not changed."""
    import copy

    out = copy.deepcopy(data)
    for item in assignments:
        path, sep, raw = item.partition("=")
        path = path.strip()
        if not sep or not path or any(not k for k in path.split(".")):
            raise SpecError(f"--set {item!r}: expected KEY=VALUE with a dotted key, e.g. grpo.lr=1e-5")
        if not isinstance(out, dict):
            raise SpecError("spec: must be a mapping of fields (YAML or JSON object)")
        keys = path.split(".")
        node: Any = out
        for depth, k in enumerate(keys):
            last = depth == len(keys) - 1
            where = ".".join(keys[: depth + 1])
            if isinstance(node, list):
                if not k.isdigit() or int(k) >= len(node):
                    raise SpecError(f"--set {path}: {'.'.join(keys[:depth]) or 'spec'} has {len(node)} items; "
                                    f"{k!r} is not one of their indexes")
                k = int(k)
            elif not isinstance(node, dict):
                raise SpecError(f"--set {path}: {'.'.join(keys[:depth])} is {node!r}, not a mapping")
            if last:
                node[k] = parse_override_value(raw)
            else:
                if isinstance(node, dict) and not isinstance(node.get(k), (dict, list)):
                    if node.get(k) is not None:
                        raise SpecError(f"--set {path}: {where} is {node[k]!r}, not a mapping")
                    node[k] = {}
                node = node[k]
    return out


def load_spec(path: str | Path, overrides: list[str] | tuple[str, ...] = ()) -> RunSpec:
    """Read a YAML or JSON spec file, `--set` overrides applied; raises SpecError with a one-line message."""
    p = Path(path)
    try:
        text = p.read_text()
    except OSError as err:
        raise SpecError(f"{p}: cannot read spec ({err.strerror or err})") from None
    try:
        data = json.loads(text) if p.suffix == ".json" else yaml.safe_load(text)
    except (yaml.YAMLError, json.JSONDecodeError) as err:
        first = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise SpecError(f"{p}: not valid {'JSON' if p.suffix == '.json' else 'YAML'} ({first})") from None
    if overrides:
        data = apply_overrides(data, list(overrides))
    return parse_spec(data)


# ---- path confinement (COPD_DATA_ROOTS) -----------------------------------------------------------

def data_paths(spec: RunSpec) -> list[tuple[str, str]]:
    """(field, path) of every local file a spec reads: jsonl / dataset paths, eval paths, plugin files."""
    out: list[tuple[str, str]] = []
    for i, e in enumerate(spec.experts):
        d = e.domain
        if isinstance(d, str):
            continue
        base = f"experts.{i}.domain"
        if d.path is not None:
            out.append((f"{base}.path", d.path))
        if isinstance(d, DatasetDomain) and d.eval.path is not None:
            out.append((f"{base}.eval.path", d.eval.path))
        if isinstance(d.verifier, PluginVerifier) and d.verifier.file is not None:
            out.append((f"{base}.verifier.function", d.verifier.file))
    return out


def path_under(path: str | Path, roots: list[Path]) -> bool:
    """True when `path` (relative: from the working directory; symlinks followed) lies under one of `roots`."""
    try:
        p = Path(path).expanduser().resolve()
    except (OSError, RuntimeError, ValueError):  # a symlink loop, a NUL byte
        return False
    return any(p == r or p.is_relative_to(r) for r in roots)


def data_path_errors(spec: RunSpec, roots: list[Path] | None = None) -> list[tuple[str, str]]:
    """(field, message) for each file of the spec outside the allowed data roots (default: the settings')."""
    if roots is None:
        from contract.settings import get_settings
        roots = get_settings().allowed_data_roots
    where = ", ".join(str(r) for r in roots) or "none"
    return [(field, f"{path!r} is outside the allowed data roots ({where}; set COPD_DATA_ROOTS to widen them)")
            for field, path in data_paths(spec) if not path_under(path, roots)]


def check_data_paths(spec: RunSpec, roots: list[Path] | None = None) -> None:
    """Raise SpecError (one line naming the field) when a file of the spec lies outside the data roots."""
    errors = data_path_errors(spec, roots)
    if errors:
        raise SpecError("; ".join(f"{f}: {m}" for f, m in errors))
