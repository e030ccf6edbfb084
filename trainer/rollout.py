"""Rollout engines: sample completions with per-token logprobs, and score given sequences.

`HFEngine` is the transformers implementation (batched sampling, left padding, KV cache). For Qwen2 / Llama
decoders (`builtin:tiny` and most small HF models) it runs the model's own weights through a lean forward
(`LeanDecoder`: the same ops, without transformers' per-call machinery) and its own sampling loop with a
preallocated KV cache: at these sizes the per-op Python overhead, not the FLOPs, sets the step time
(docs/perf.md). Other architectures go through `generate`. `trainer.vllm_engine.VllmEngine` is the vLLM engine
behind the same interface; `trainer.engines` picks one by the spec's `rollout.engine`.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass, field, replace
from typing import Mapping, Protocol, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from trainer.algos import chunked_token_stats, entropy_from_logits, token_logprobs

# Beyond this many elements a [N, T, V] logits tensor is not built: logprobs and entropy are computed a chunk
# of positions at a time, CHUNK_ELEMENTS // V positions each (2^24 fp32 = 64 MiB of logits: 110 positions of a
# Qwen vocabulary). Smaller chunks measured worse on CPU: glibc serves allocations under its (at most 32 MiB)
# mmap threshold from the heap, and the freed chunks fragmented it (peak RSS 3.5 GB at 16 MiB chunks, 0.7 GB
# at 64 MiB; docs/perf.md). 2^27 fp32 = 512 MiB: a Qwen vocabulary reaches it at ~880 positions, the tiny
# model (32 tokens) never.
LOGITS_BUDGET = 1 << 27
CHUNK_ELEMENTS = 1 << 24
# From this vocabulary size on, only the real completion positions (mask 1) go through the vocabulary projection:
# at a real vocabulary the head is most of a small model's FLOPs, and positions after EOS are pure waste there.
# Below it (the tiny model's 36 tokens) the head is nothing and the plain [N, T, V] path is the faster one.
HEAD_SELECT_VOCAB = 4096


@dataclass(frozen=True)
class TokenBatch:
    """Prompts (left padded) and completions (right padded) as token tensors."""

    prompt_ids: Tensor        # [N, P]
    prompt_mask: Tensor       # [N, P] 1 = real token
    completion_ids: Tensor    # [N, T]
    completion_mask: Tensor   # [N, T] 1 = generated token up to and including EOS
    # Further per-row model inputs (first dimension N, e.g. a vision model's pixel values): carried through
    # select / to / trimmed unchanged, passed to the transformers forward by name.
    extra: Mapping[str, Tensor] = field(default_factory=dict)

    @property
    def size(self) -> int:
        return int(self.prompt_ids.shape[0])

    def select(self, idx: Tensor) -> "TokenBatch":
        """Rows idx of every tensor."""
        return TokenBatch(self.prompt_ids[idx], self.prompt_mask[idx], self.completion_ids[idx], self.completion_mask[idx],
                          {k: v[idx] for k, v in self.extra.items()})

    def to(self, device) -> "TokenBatch":
        """The same batch on another device."""
        return TokenBatch(*(x.to(device) for x in (self.prompt_ids, self.prompt_mask, self.completion_ids,
                                                    self.completion_mask)),
                          {k: v.to(device) for k, v in self.extra.items()})

    def trimmed(self) -> "TokenBatch":
        """The same rows without the columns no row needs: left padding every prompt has, and completion
        positions after every row's last real token. Causal attention and mask-counted positions make the
        kept positions' logits those of the untrimmed batch (to float rounding); completions keep their first
        `completion_width` columns."""
        left = int((self.prompt_mask.sum(0) == 0).long().cumprod(0).sum())          # leading all-pad columns
        width = max(1, int(self.completion_mask.sum(1).max())) if self.size else 0
        if left == 0 and width == self.completion_ids.shape[1]:
            return self
        left = min(left, self.prompt_ids.shape[1] - 1)                               # keep ≥ 1 prompt column
        # replace, not TokenBatch(...): a subclass keeps what it carries (a VisualTokenBatch its images)
        return replace(self, prompt_ids=self.prompt_ids[:, left:], prompt_mask=self.prompt_mask[:, left:],
                       completion_ids=self.completion_ids[:, :width], completion_mask=self.completion_mask[:, :width],
                       extra=dict(self.extra))


@dataclass(frozen=True)
class Rollout:
    """Sampled completions of a policy: tokens, the sampler's logprobs and the decoded texts."""

    tokens: TokenBatch
    logp: Tensor              # [N, T] sampler log π(y_t) at the sampling temperature
    texts: list[str]          # N decoded completions, special tokens removed
    prompt_index: list[int]   # N: which input prompt each row answers (rows of one prompt are consecutive)

    @property
    def completion_tokens(self) -> int:
        return int(self.tokens.completion_mask.sum())


class RolloutEngine(Protocol):
    """What the trainer needs from a generation backend."""

    def sample(self, prompts: Sequence[str], n: int, *, temperature: float, max_new_tokens: int,
               greedy: bool = False) -> Rollout:
        """n completions per prompt (rows of a prompt consecutive), with per-token logprobs."""
        ...

    def logprobs(self, batch: TokenBatch, *, temperature: float = 1.0) -> Tensor:
        """Per-token log π(completion_t | prompt, completion_<t) under this engine's policy: [N, T]."""
        ...

    def sync_weights(self, model=None) -> None:
        """Make the next samples use the live model's current weights (after an optimizer step)."""
        ...

    def sleep(self) -> None:
        """Free the engine's device memory while the trainer steps (no-op where it holds none)."""
        ...

    def wake(self) -> None:
        """Take back what `sleep` freed, before the next `sync_weights` and `sample`."""
        ...

    def close(self) -> None:
        """Release the engine (end of a unit)."""
        ...


def position_ids_from_mask(mask: Tensor) -> Tensor:
    """Positions counted over real tokens only (left padding gets position 1, as transformers does)."""
    pos = mask.long().cumsum(-1) - 1
    return pos.masked_fill(mask == 0, 1)


# A prompt as the engines take it: text, or chat messages [{"role": ..., "content": ...}] (Sample.model_input).


def prompt_messages(prompt) -> list[dict[str, str]]:
    """A prompt as chat messages (text becomes one user message)."""
    if isinstance(prompt, str):
        return [{"role": "user", "content": prompt}]
    return [{"role": m["role"], "content": m["content"]} for m in prompt]


def render_prompt(tokenizer, prompt) -> str:
    """The text the model is given for `prompt`: the tokenizer's chat template applied when it has one (text
    as one user message), else the text itself, or chat messages' contents one per line."""
    if getattr(tokenizer, "chat_template", None):
        return tokenizer.apply_chat_template(prompt_messages(prompt), tokenize=False, add_generation_prompt=True)
    return prompt if isinstance(prompt, str) else "\n".join(m["content"] for m in prompt)


def encode_prompts(tokenizer, prompts: Sequence) -> tuple[Tensor, Tensor]:
    """Tokenise prompts (text or chat messages) with left padding; applies the chat template when the
    tokenizer has one (render_prompt)."""
    texts = [render_prompt(tokenizer, p) for p in prompts]
    if getattr(tokenizer, "chat_template", None):
        enc = tokenizer(texts, padding=True, return_tensors="pt", add_special_tokens=False)
    else:
        enc = tokenizer(texts, padding=True, return_tensors="pt")
    return enc["input_ids"], enc["attention_mask"]


def completion_mask(completion_ids: Tensor, eos_id: int) -> Tensor:
    """1 up to and including the first EOS of each row (all ones for a row that never stops)."""
    is_eos = completion_ids == eos_id                               # [N, T]
    after_eos = (is_eos.long().cumsum(-1) - is_eos.long()) > 0      # strictly after the first EOS
    return (~after_eos).long()


def forward_logits(model, batch: TokenBatch, *, compiled: bool = False) -> Tensor:
    """Logits that predict each completion token: [N, T, V] (one forward over prompt ‖ completion);
    `compiled`: through `torch.compile` (spec `compute.compile`)."""
    return _forward_fn(compiled)(model, batch, project=True)


_COMPILED: dict = {}


def _forward_fn(compiled: bool):
    """`_forward`, or its `torch.compile`d twin (dynamic shapes: every batch has its own widths), built once."""
    if not compiled:
        return _forward
    if "forward" not in _COMPILED:
        _COMPILED["forward"] = torch.compile(_forward, dynamic=True)
    return _COMPILED["forward"]


@dataclass(frozen=True)
class Hidden:
    """What predicts each completion token before the vocabulary projection: logits = states · weightᵀ + bias."""

    states: Tensor          # [N, T, D]
    weight: Tensor          # [V, D]
    bias: Tensor | None     # [V]


def output_head(model):
    """The model's vocabulary projection when it is a plain linear layer (no logit soft-capping), else None."""
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    cfg = getattr(model, "config", None)
    if not isinstance(head, torch.nn.Linear) or getattr(cfg, "final_logit_softcapping", None) or _sharded(model):
        return None
    return head


def forward_hidden(model, batch: TokenBatch, *, compiled: bool = False) -> Hidden | None:
    """`forward_logits` stopped before the vocabulary projection, or None where that is not possible (another
    head, FSDP-sharded weights, a model without `logits_to_keep`)."""
    head = output_head(model)
    if head is None:
        return None
    states = _forward_fn(compiled)(model, batch, project=False)
    return None if states is None else Hidden(states, head.weight, head.bias)


def token_stats(model, batch: TokenBatch, temperature: float = 1.0, *,
                entropy: bool = False, compiled: bool = False) -> tuple[Tensor, Tensor | None]:
    """log π of each completion token [N, T] (differentiable) and, if asked, each position's entropy [N, T]
    (detached). Large ones (beyond LOGITS_BUDGET) never build the [N, T, V] logits; at a large vocabulary
    (HEAD_SELECT_VOCAB) only real positions are projected, and positions after EOS read 0."""
    n, t = batch.completion_ids.shape
    head = output_head(model)
    if head is not None and (n * t * head.weight.shape[0] > LOGITS_BUDGET or head.weight.shape[0] >= HEAD_SELECT_VOCAB):
        hidden = forward_hidden(model, batch, compiled=compiled)
        if hidden is not None:
            return _head_stats(hidden, batch, temperature, entropy)
    logits = forward_logits(model, batch, compiled=compiled)                         # [N, T, V]
    logp = token_logprobs(logits, batch.completion_ids, temperature)
    return logp, entropy_from_logits(logits.detach(), temperature) if entropy else None


def _head_stats(hidden: Hidden, batch: TokenBatch, temperature: float,
                entropy: bool) -> tuple[Tensor, Tensor | None]:
    """`token_stats` from the last hidden states: the real positions' rows [M, D] through the head, in chunks
    (each recomputed in the backward) when M·V passes CHUNK_ELEMENTS, in one piece otherwise; 0 elsewhere."""
    real = batch.completion_mask.bool()                                              # [N, T]
    n, t = real.shape
    v, d = hidden.weight.shape
    everywhere = bool(real.all())
    states = hidden.states.reshape(1, n * t, d) if everywhere else hidden.states[real].unsqueeze(0)  # [1, M, D]
    ids = batch.completion_ids.reshape(1, -1) if everywhere else batch.completion_ids[real].unsqueeze(0)
    m = ids.shape[1]
    # more than one chunk's logits (64 MiB) are never kept for the backward: a step holds several batches'
    # graphs at once (native + each teacher's cross batch), and at 512 MiB each they added up to GBs
    chunk = max(1, CHUNK_ELEMENTS // v) if m * v > CHUNK_ELEMENTS else max(m, 1)
    logp, ent = chunked_token_stats(states, hidden.weight, hidden.bias, ids, temperature, chunk, entropy,
                                    recompute=chunk < m)
    if everywhere:
        return logp.view(n, t), (ent.view(n, t) if ent is not None else None)
    out = logp.new_zeros(n, t).index_put((real,), logp.view(-1))                    # differentiable scatter
    return out, (logp.new_zeros(n, t).index_put_((real,), ent.view(-1)) if ent is not None else None)


def token_topk(model, batch: TokenBatch, k: int) -> Tensor:
    """Indices of the k most likely next tokens at each completion position, [N, T, k] (largest first);
    large batches (beyond LOGITS_BUDGET) a chunk of positions at a time."""
    n, t = batch.completion_ids.shape
    head = output_head(model)
    if head is not None and n * t * head.weight.shape[0] > LOGITS_BUDGET:
        hidden = forward_hidden(model, batch)
        if hidden is not None:
            v = hidden.weight.shape[0]
            flat = hidden.states.reshape(n * t, -1)
            step = max(1, CHUNK_ELEMENTS // v)
            parts = [F.linear(flat[s: s + step], hidden.weight, hidden.bias).topk(min(k, v), dim=-1).indices
                     for s in range(0, n * t, step)]
            return torch.cat(parts).view(n, t, -1)
    logits = forward_logits(model, batch)
    return logits.topk(min(k, logits.shape[-1]), dim=-1).indices


def _forward(model, batch: TokenBatch, *, project: bool) -> Tensor | None:
    """Logits [N, T, V] (project) or the last hidden states [N, T, D] predicting each completion token; None
    when a hidden-state forward is not available for this model."""
    own = getattr(batch, "model_forward", None)
    if own is not None:  # prompts with images: trainer.vlm.VisualTokenBatch runs its own forward
        return own(model, project=project)
    ids = torch.cat([batch.prompt_ids, batch.completion_ids], dim=1)
    # the sampler attends to every generated token, EOS padding included; do the same so logprobs match.
    attn = torch.cat([batch.prompt_mask, torch.ones_like(batch.completion_ids)], dim=1)
    p, t = batch.prompt_ids.shape[1], batch.completion_ids.shape[1]
    lean = None if batch.extra else LeanDecoder.of(model)
    g = shared_prompt_rows(batch) if SHARE_PROMPTS else 1
    if lean is not None:
        if g > 1:  # G samples of one prompt: its tokens go through the model once (same logits and gradients)
            return lean.forward_shared(batch.prompt_ids[::g], batch.prompt_mask[::g], batch.completion_ids, g,
                                       project=project)
        runs = prompt_runs(batch) if SHARE_PROMPTS else None
        if runs is not None:  # uneven runs (a micro-batch holding part of a group): each prompt still once
            first, rows_of = runs
            return lean.forward_shared(batch.prompt_ids[first], batch.prompt_mask[first], batch.completion_ids, 0,
                                       project=project, rows_of=rows_of)
        return lean.forward(ids, attn, position_ids_from_mask(attn), logits_from=p - 1, project=project)[:, :t]
    keep = {} if project else _hidden_args(model)
    if keep is None:
        return None
    if g > 1 and not batch.extra:
        shared = _forward_shared_cache(model, batch, g, project=project)
        if shared is not None:
            return shared
    out = model(input_ids=ids, attention_mask=attn, position_ids=position_ids_from_mask(attn), use_cache=False,
                **keep, **batch.extra)
    return (out.logits if project else out.hidden_states[-1])[:, p - 1: p + t - 1]


def _hidden_args(model) -> dict | None:
    """transformers' arguments for the last hidden states without every position's logits (None: unsupported)."""
    if "logits_to_keep" not in inspect.signature(model.forward).parameters:
        return None
    return {"output_hidden_states": True, "logits_to_keep": 1}


def _forward_shared_cache(model, batch: TokenBatch, g: int, *, project: bool = True) -> Tensor | None:
    """`forward_logits` through transformers with each prompt run once: the prompts' KV cache, repeated g
    times (`Cache.batch_repeat_interleave`, differentiable), serves their completions. [N, T, V] (or the last
    hidden states [N, T, D] when not `project`), or None when the model returns no cache (e.g. gradient
    checkpointing turns it off).
    """
    p_ids, p_mask = batch.prompt_ids[::g], batch.prompt_mask[::g]                 # [U, P]
    pos_p = position_ids_from_mask(p_mask)
    params = inspect.signature(model.forward).parameters
    keep = {"logits_to_keep": 1} if "logits_to_keep" in params else {}
    if not project:
        keep["output_hidden_states"] = True
    out = model(input_ids=p_ids, attention_mask=p_mask, position_ids=pos_p, use_cache=True, **keep)
    cache = out.get("cache", out.get("past_key_values"))  # transformers ≥ 5.20 renamed past_key_values to cache
    if cache is None or not hasattr(cache, "batch_repeat_interleave"):
        return None
    pick = (lambda o: o.logits) if project else (lambda o: o.hidden_states[-1])
    first = pick(out)[:, -1:].repeat_interleave(g, 0)                            # [N, 1, V|D] predicts token 0
    n, t = batch.completion_ids.shape
    if t == 1:
        return first
    cache.batch_repeat_interleave(g)
    attn = torch.cat([p_mask.repeat_interleave(g, 0), torch.ones_like(batch.completion_ids)], dim=1)  # [N, P + T]
    pos_c = (pos_p[:, -1:] + 1 + torch.arange(t - 1, device=pos_p.device)).repeat_interleave(g, 0)     # [N, T - 1]
    cache_arg = "cache" if "cache" in params else "past_key_values"
    more = {} if project else {"output_hidden_states": True, "logits_to_keep": 1}
    rest = model(input_ids=batch.completion_ids[:, : t - 1], attention_mask=attn[:, : attn.shape[1] - 1],
                 position_ids=pos_c, use_cache=True, **{cache_arg: cache}, **more)
    return torch.cat([first, pick(rest)], dim=1)


SHARE_PROMPTS = True  # False: every row's prompt through the training forward again (the bench's "before" side)


def shared_prompt_rows(batch: TokenBatch) -> int:
    """g > 1 when every run of g consecutive rows has one prompt (a rollout's samples of a prompt), else 1."""
    n = batch.size
    if n < 2:
        return 1
    ids, mask = batch.prompt_ids, batch.prompt_mask
    same = (ids[1:] == ids[:-1]).all(1) & (mask[1:] == mask[:-1]).all(1)   # [N-1] row i+1 repeats row i
    g = n if bool(same.all()) else int(same.long().argmin()) + 1            # length of the first run
    if g < 2 or n % g:
        return 1
    inside = torch.ones(n - 1, dtype=torch.bool, device=ids.device)
    inside[g - 1:: g] = False                                               # pairs that straddle two runs
    return g if bool(same[inside].all()) else 1


def prompt_runs(batch: TokenBatch) -> tuple[Tensor, Tensor] | None:
    """Runs of consecutive rows with one prompt, of any lengths: (first row of each run [U], run of each row
    [N]), or None when no two neighbouring rows share a prompt."""
    n = batch.size
    if n < 2:
        return None
    ids, mask = batch.prompt_ids, batch.prompt_mask
    same = (ids[1:] == ids[:-1]).all(1) & (mask[1:] == mask[:-1]).all(1)   # [N-1] row i+1 repeats row i
    if not bool(same.any()):
        return None
    starts = torch.cat([same.new_ones(1), ~same])                          # [N] a run starts here
    return starts.nonzero().view(-1), starts.long().cumsum(0) - 1


def sharded(model) -> bool:
    """FSDP-sharded (DTensor) parameters: the lean forward reads raw weights and would skip FSDP's gathering.

    Any parameter, not only the embedding: FSDP keeps the root's weights gathered between forward and backward.
    """
    from torch.distributed.tensor import DTensor

    return any(isinstance(p, DTensor) for p in model.parameters())


_sharded = sharded


def _checkpointing(model) -> bool:
    """Whether gradient (activation) checkpointing is on; transformers ≥ 5.20 renamed the attribute."""
    name = "is_activation_checkpointing" if hasattr(type(model), "is_activation_checkpointing") else "is_gradient_checkpointing"
    return bool(getattr(model, name, False))


def _rotate_half(x: Tensor) -> Tensor:
    h = x.shape[-1] // 2
    return torch.cat((-x[..., h:], x[..., :h]), dim=-1)


class LeanDecoder:
    """A Qwen2 / Llama forward over the live parameters of a transformers model, as plain torch ops.

    The math is transformers' own (RMSNorm, RoPE from the model's rotary module, GQA attention through
    SDPA, SwiGLU); what goes is the per-call machinery around it (mask builders, cache objects, output
    capturing, deprecation wrappers), which costs more than the matmuls of a small model on CPU.
    Autograd works through it, so training uses it too. Logits match transformers' to ~1e-6.
    """

    ARCHS = ("qwen2", "llama")
    enabled = True  # False sends every model through transformers (the bench's before/after switch)

    def __init__(self, model):
        self.model = model
        cfg = model.config
        self.heads, self.kv_heads = cfg.num_attention_heads, cfg.num_key_value_heads
        self.head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads

    @classmethod
    def of(cls, model) -> "LeanDecoder | None":
        """The lean forward for this model, or None where it does not apply (other archs, non-fp32 weights,
        dropout, sliding windows, gradient checkpointing, FSDP-sharded weights): those go through transformers."""
        cfg = getattr(model, "config", None)
        if (not cls.enabled or cfg is None or getattr(cfg, "model_type", "") not in cls.ARCHS or not hasattr(model, "model")
                or getattr(cfg, "use_sliding_window", False) or getattr(cfg, "hidden_act", "silu") != "silu"
                or float(getattr(cfg, "attention_dropout", 0.0) or 0.0) > 0 or getattr(cfg, "mlp_bias", False)
                or getattr(cfg, "pretraining_tp", 1) != 1 or _checkpointing(model)
                or model.model.embed_tokens.weight.dtype != torch.float32 or _sharded(model)):
            return None
        return cls(model)

    def weights(self) -> list[tuple]:
        """Per layer: norms, fused q‖k‖v and gate‖up projections (differentiable views of the live parameters)."""
        out = []
        for layer in self.model.model.layers:
            a, mlp = layer.self_attn, layer.mlp
            qkv_b = None if a.q_proj.bias is None else torch.cat([a.q_proj.bias, a.k_proj.bias, a.v_proj.bias])
            out.append((layer.input_layernorm, torch.cat([a.q_proj.weight, a.k_proj.weight, a.v_proj.weight]), qkv_b,
                        a.o_proj, layer.post_attention_layernorm,
                        torch.cat([mlp.gate_proj.weight, mlp.up_proj.weight]), mlp.down_proj.weight, a.scaling))
        return out

    def _block(self, w: tuple, h: Tensor, cos: Tensor, sin: Tensor, mask: Tensor, cache, start: int) -> Tensor:
        """One decoder layer; with a cache, this step's keys/values are written at [start, start + L)."""
        ln1, qkv_w, qkv_b, o, ln2, gate_up, down, scaling = w
        n, L, _ = h.shape
        x = F.rms_norm(h, ln1.weight.shape, ln1.weight, ln1.variance_epsilon)
        qkv = F.linear(x, qkv_w, qkv_b).view(n, L, -1, self.head_dim).transpose(1, 2)  # [N, H+2KV, L, hd]
        qk, v = qkv[:, : self.heads + self.kv_heads], qkv[:, self.heads + self.kv_heads:]
        qk = qk * cos + _rotate_half(qk) * sin                                       # RoPE on q and k at once
        q, k = qk[:, : self.heads], qk[:, self.heads:]
        if cache is not None:
            kc, vc = cache
            kc[:, :, start: start + L], vc[:, :, start: start + L] = k, v
            k, v = kc[:, :, : start + L], vc[:, :, : start + L]
        if L == 1:  # decoding: plain matmuls beat SDPA's CPU kernel here (~140 vs ~200 µs per call measured)
            qg = q.reshape(n, self.kv_heads, -1, self.head_dim)                        # [N, KV, H/KV, hd]
            att = ((qg @ k.transpose(-1, -2)) * scaling + mask.view(n, 1, 1, -1)).softmax(-1) @ v
            att = att.view(n, self.heads, 1, self.head_dim)                          # [N, H, 1, hd]
        else:
            att = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=scaling,
                                                 enable_gqa=self.heads != self.kv_heads)  # [N, H, L, hd]
        h = h + F.linear(att.transpose(1, 2).reshape(n, L, -1), o.weight, o.bias)
        x = F.rms_norm(h, ln2.weight.shape, ln2.weight, ln2.variance_epsilon)
        gate, up = F.linear(x, gate_up).chunk(2, dim=-1)
        return h + F.linear(F.silu(gate) * up, down)

    def forward(self, ids: Tensor, key_mask: Tensor, positions: Tensor, *, logits_from: int = 0,
                cache: list | None = None, start: int = 0, weights: list | None = None, project: bool = True) -> Tensor:
        """Logits [N, L − logits_from, V] of ids [N, L] at `positions` (the normed last hidden states
        [N, L − logits_from, D] when not `project`); key_mask [N, start + L] marks real keys."""
        m = self.model.model
        h = F.embedding(ids, m.embed_tokens.weight)                                  # [N, L, D]
        cos, sin = (x.unsqueeze(1) for x in m.rotary_emb(h, positions))              # [N, 1, L, hd]
        L = ids.shape[1]
        keys = key_mask.bool()[:, None, None, :]                                     # [N, 1, 1, S]
        if L > 1:  # causal within the new tokens; a query with no real key (left padding) sees itself, not NaN
            q_at = torch.arange(start, start + L, device=ids.device)[:, None]
            k_at = torch.arange(start + L, device=ids.device)[None, :]
            keys = (keys & (k_at <= q_at)) | (k_at == q_at)                          # [N, 1, L, S]
        mask = h.new_zeros(keys.shape).masked_fill_(~keys, float("-inf"))            # additive, built once
        for i, w in enumerate(weights or self.weights()):
            h = self._block(w, h, cos, sin, mask, cache[i] if cache is not None else None, start)
        h = F.rms_norm(h[:, logits_from:], m.norm.weight.shape, m.norm.weight, m.norm.variance_epsilon)
        if not project:
            return h
        head = self.model.lm_head
        return F.linear(h, head.weight, head.bias)

    def forward_shared(self, prompt_ids: Tensor, prompt_mask: Tensor, completion_ids: Tensor, g: int, *,
                       project: bool = True, rows_of: Tensor | None = None) -> Tensor:
        """Logits predicting each completion token, [N, T, V], when every g consecutive rows share one prompt.

        prompt_ids, prompt_mask: [U, P] (one row per prompt, left padded); completion_ids: [N, T], N = U·g.
        Each prompt goes through the layers once: its keys/values are repeated for its g completions, whose
        queries attend to them and, causally, to their own tokens. The logits equal `forward`'s on the
        repeated rows (to float rounding) and so do the gradients (the repeat's backward sums the g rows):
        a prompt's tokens cost 1/g of the training forward and backward instead of once per sample.
        rows_of [N] (instead of g): the prompt of each completion row, for runs of uneven lengths.
        """
        m = self.model.model
        (u, p), (n, t) = prompt_ids.shape, completion_ids.shape

        def spread(x: Tensor) -> Tensor:  # [U, ...] → [N, ...], each prompt's row to its completions
            return x.repeat_interleave(g, 0) if rows_of is None else x.index_select(0, rows_of)

        pos_p = position_ids_from_mask(prompt_mask)                                  # [U, P]
        pos_c = spread(pos_p[:, -1:] + 1 + torch.arange(t, device=pos_p.device))    # [N, T]
        h = F.embedding(torch.cat([prompt_ids.reshape(-1), completion_ids.reshape(-1)]), m.embed_tokens.weight)
        cos_p, sin_p = (x.unsqueeze(1) for x in m.rotary_emb(h, pos_p))              # [U, 1, P, hd]
        cos_c, sin_c = (x.unsqueeze(1) for x in m.rotary_emb(h, pos_c))              # [N, 1, T, hd]
        q_at = torch.arange(p, device=h.device)
        keys_p = (prompt_mask.bool()[:, None, None, :] & (q_at[None, :] <= q_at[:, None])) | torch.eye(p, dtype=torch.bool, device=h.device)
        mask_p = h.new_zeros(keys_p.shape).masked_fill_(~keys_p, float("-inf"))      # [U, 1, P, P]
        causal = torch.ones(t, t, dtype=torch.bool, device=h.device).tril()
        keys_c = torch.cat([spread(prompt_mask.bool())[:, None, None, :].expand(n, 1, t, p),
                            causal.expand(n, 1, t, t)], dim=-1)                      # [N, 1, T, P + T]
        mask_c = h.new_zeros(keys_c.shape).masked_fill_(~keys_c, float("-inf"))
        split = u * p
        for ln1, qkv_w, qkv_b, o, ln2, gate_up, down, scaling in self.weights():
            x = F.rms_norm(h, ln1.weight.shape, ln1.weight, ln1.variance_epsilon)     # [U·P + N·T, D] flat tokens
            qkv = F.linear(x, qkv_w, qkv_b)
            outs = []
            parts = ((qkv[:split].view(u, p, -1, self.head_dim), cos_p, sin_p),
                     (qkv[split:].view(n, t, -1, self.head_dim), cos_c, sin_c))
            kv = None
            for (part, cos, sin) in parts:
                part = part.transpose(1, 2)                                          # [B, H+2KV, L, hd]
                qk, v = part[:, : self.heads + self.kv_heads], part[:, self.heads + self.kv_heads:]
                qk = qk * cos + _rotate_half(qk) * sin
                q, k = qk[:, : self.heads], qk[:, self.heads:]
                if kv is None:   # the prompts: causal over their own tokens
                    att = F.scaled_dot_product_attention(q, k, v, attn_mask=mask_p, scale=scaling,
                                                         enable_gqa=self.heads != self.kv_heads)
                    kv = (spread(k), spread(v))                                      # [N, KV, P, hd]
                else:            # the completions: their prompt's keys, then their own, causally
                    k, v = torch.cat([kv[0], k], dim=2), torch.cat([kv[1], v], dim=2)
                    att = F.scaled_dot_product_attention(q, k, v, attn_mask=mask_c, scale=scaling,
                                                         enable_gqa=self.heads != self.kv_heads)
                outs.append(att.transpose(1, 2).reshape(-1, self.heads * self.head_dim))
            h = h + F.linear(torch.cat(outs), o.weight, o.bias)
            x = F.rms_norm(h, ln2.weight.shape, ln2.weight, ln2.variance_epsilon)
            gate, up = F.linear(x, gate_up).chunk(2, dim=-1)
            h = h + F.linear(F.silu(gate) * up, down)
        last = spread(h[:split].view(u, p, -1)[:, -1:])                              # [N, 1, D] predicts token 0
        h = torch.cat([last, h[split:].view(n, t, -1)[:, : t - 1]], dim=1)           # [N, T, D]
        h = F.rms_norm(h, m.norm.weight.shape, m.norm.weight, m.norm.variance_epsilon)
        if not project:
            return h
        head = self.model.lm_head
        return F.linear(h, head.weight, head.bias)

    @torch.no_grad()
    def sample(self, ids: Tensor, mask: Tensor, *, max_new_tokens: int, temperature: float, greedy: bool,
               eos_id: int, pad_id: int, n: int = 1) -> tuple[Tensor, Tensor]:
        """n completions of each prompt row, [U·n, T] (rows of a prompt consecutive), and their log π at
        `temperature`, as `generate` would sample them from the prompts repeated n times.

        ids, mask: [U, P]. Each prompt is prefilled once and its keys/values copied to its n rows. T stops
        early when every row has emitted EOS; after its EOS a row gets pad tokens.
        """
        u, p = ids.shape
        ref = self.model.model.embed_tokens.weight
        weights = self.weights()  # fused once per call: the parameters do not move while sampling
        pos = position_ids_from_mask(mask)
        shape = (u, self.kv_heads, p, self.head_dim)
        prefill = [(ref.new_empty(shape), ref.new_empty(shape)) for _ in self.model.model.layers]
        logits = self.forward(ids, mask, pos, logits_from=p - 1, cache=prefill, weights=weights)[:, -1]  # [U, V]
        if n > 1:
            ids, mask, pos, logits = (x.repeat_interleave(n, 0) for x in (ids, mask, pos, logits))
        n = ids.shape[0]                                                              # rows: U·n
        shape = (n, self.kv_heads, p + max_new_tokens, self.head_dim)
        cache = [(ref.new_empty(shape), ref.new_empty(shape)) for _ in self.model.model.layers]
        for (kc, vc), (kp, vp) in zip(cache, prefill):
            kc[:, :, :p] = kp.repeat_interleave(len(kc) // len(kp), 0)
            vc[:, :, :p] = vp.repeat_interleave(len(vc) // len(vp), 0)
        keys = torch.cat([mask, mask.new_ones(n, max_new_tokens)], dim=1)             # [N, P + T]
        next_pos = pos[:, -1:] + 1
        alive = torch.ones(n, dtype=torch.bool, device=ids.device)
        toks, logps = [], []
        for t in range(max_new_tokens):
            logp = (logits.float() / (1.0 if greedy else temperature)).log_softmax(-1)  # [N, V]
            tok = logp.argmax(-1) if greedy else draw_tokens(logp.exp())
            tok = torch.where(alive, tok, torch.full_like(tok, pad_id))
            toks.append(tok)
            logps.append(logp.gather(-1, tok[:, None]).squeeze(1))
            alive &= tok != eos_id
            if t + 1 == max_new_tokens or not bool(alive.any()):
                break
            logits = self.forward(tok[:, None], keys[:, : p + t + 1], next_pos + t, cache=cache, start=p + t,
                                  weights=weights)[:, -1]
        return torch.stack(toks, 1), torch.stack(logps, 1)


def draw_tokens(probs: Tensor) -> Tensor:
    """One token per row of probs [N, V] (rows sum to 1): `torch.multinomial`, or from HEAD_SELECT_VOCAB on by
    the inverse CDF (a cumulative sum and one uniform per row; the same distribution): multinomial draws
    per-category random numbers, 50 ms for 16 rows of a 151,936-token vocabulary on this CPU against 2.6 ms."""
    if probs.shape[-1] < HEAD_SELECT_VOCAB:
        return torch.multinomial(probs, 1).squeeze(1)
    cdf = probs.cumsum(-1)                                                       # [N, V]
    u = torch.rand(probs.shape[0], 1, device=probs.device, dtype=cdf.dtype) * cdf[:, -1:]
    # right side: the first j with cdf[j] > u, so a zero-probability token is never drawn
    return torch.searchsorted(cdf, u, right=True).squeeze(1).clamp_(max=probs.shape[-1] - 1)


class HFEngine:
    """Rollouts on the model object itself (weights always in sync): `LeanDecoder` where it applies, else `generate`."""

    def __init__(self, model, tokenizer):
        self.model = model
        self.tokenizer = tokenizer
        self.eos_id = tokenizer.eos_token_id
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id

    @torch.no_grad()
    def sample(self, prompts: Sequence[str], n: int, *, temperature: float, max_new_tokens: int,
               greedy: bool = False) -> Rollout:
        own = getattr(self.tokenizer, "sample_rollout", None)
        if own is not None:  # a vision-language model: trainer.vlm.VisionProcessor samples with the prompts' images
            return own(self.model, prompts, n, temperature=temperature, max_new_tokens=max_new_tokens, greedy=greedy)
        ids, mask = (x.to(self.device) for x in encode_prompts(self.tokenizer, prompts))   # [U, P]
        lean = LeanDecoder.of(self.model)
        if lean is not None:  # each prompt prefilled once for its n samples
            comp, logp = lean.sample(ids, mask, max_new_tokens=max_new_tokens, temperature=temperature,
                                     greedy=greedy, eos_id=self.eos_id, pad_id=self.pad_id, n=n)  # [N, T] each
        ids, mask = ids.repeat_interleave(n, 0), mask.repeat_interleave(n, 0)      # [N, P], N = U·n
        if lean is None:
            comp, logp = self._generate(ids, mask, temperature, max_new_tokens, greedy)
        cmask = completion_mask(comp, self.eos_id)
        logp = logp * cmask
        texts = self.tokenizer.batch_decode(comp * cmask + self.pad_id * (1 - cmask), skip_special_tokens=True)
        return Rollout(TokenBatch(ids, mask, comp, cmask), logp, texts,
                       [i for i in range(len(prompts)) for _ in range(n)])

    def _generate(self, ids: Tensor, mask: Tensor, temperature: float, max_new_tokens: int,
                  greedy: bool) -> tuple[Tensor, Tensor]:
        """transformers `generate` (any architecture): completions [N, T] and their logprobs [N, T].

        The logprobs are taken step by step (`_StepLogprobs`), so no [N, T, V] stack of every step's logits
        is kept (`output_logits` would: 20 GB at 64 rows × 512 tokens of a 151,936-token vocabulary)."""
        from transformers import LogitsProcessorList

        was_training = self.model.training
        self.model.eval()
        # the temperature is applied by `record` (so no warper of generate's own runs before or after it)
        kwargs = dict(do_sample=False) if greedy else dict(do_sample=True, temperature=1.0, top_k=0, top_p=1.0)
        record = _StepLogprobs(1.0 if greedy else temperature)
        out = self.model.generate(
            input_ids=ids, attention_mask=mask, max_new_tokens=max_new_tokens,
            eos_token_id=self.eos_id, pad_token_id=self.pad_id, logits_processor=LogitsProcessorList([record]),
            return_dict_in_generate=True, **kwargs)
        self.model.train(was_training)
        comp = out.sequences[:, ids.shape[1]:]                                      # [N, T]
        return comp, record.finish(comp)

    def logprobs(self, batch: TokenBatch, *, temperature: float = 1.0) -> Tensor:
        """Scores on this engine's device (inference mode), returned on the batch's device."""
        with torch.inference_mode():
            on = batch if batch.prompt_ids.device == self.device else batch.to(self.device)
            logp = token_stats(self.model, on, temperature)[0] * on.completion_mask
        return logp.to(batch.completion_ids.device).clone()  # a normal tensor: inference tensors can't enter autograd

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def sync_weights(self, model=None) -> None:
        """Nothing to do: this engine samples from the live model itself."""

    def sleep(self) -> None:
        """Nothing to free: the engine holds no memory of its own."""

    def wake(self) -> None:
        """See `sleep`."""

    def close(self) -> None:
        """Nothing to release."""


class _StepLogprobs:
    """The temperature warper of `generate`, as a logits processor that also keeps that step's log-softmax
    [N, V] and, at the next call, picks the log π of the token the step drew; `finish` picks the last one.
    [N, T] in the end, never [N, T, V]."""

    def __init__(self, temperature: float = 1.0):
        self.temperature, self.prev, self.picked = temperature, None, []

    def __call__(self, input_ids: Tensor, scores: Tensor) -> Tensor:
        if self.prev is not None:
            self.picked.append(self.prev.gather(-1, input_ids[:, -1:]).squeeze(-1))
        scores = scores / self.temperature if self.temperature != 1.0 else scores
        self.prev = scores.float().log_softmax(-1)
        return scores

    def finish(self, completion: Tensor) -> Tensor:
        """The [N, T] logprobs of the T completion tokens `generate` returned."""
        t = len(self.picked)
        if self.prev is not None and t < completion.shape[1]:
            self.picked.append(self.prev.gather(-1, completion[:, t: t + 1]).squeeze(-1))
        self.prev = None
        if not self.picked:
            return completion.new_zeros(completion.shape, dtype=torch.float32)
        return torch.stack(self.picked, 1)


def with_logp(rollout: Rollout, logp: Tensor) -> Rollout:
    """The same rollout with other per-token logprobs (e.g. recomputed by the trainer)."""
    return replace(rollout, logp=logp)
