"""Vision-language models: loading any Qwen-VL-family `AutoModelForImageTextToText`, encoding prompts with
images, sampling and scoring with the prompt's pixels, and `builtin:tiny-vl`.

A visual prompt is chat messages whose content parts hold images (`Sample.model_input`); a video is a
sequence of frames given as images (docs/vlm.md: no torchvision here). Sampling and scoring pass explicit
multimodal RoPE positions (`get_rope_index` over the prompt, then one position a completion token), so the
sampler's prefill + KV-cache decode and the trainer's forward see the same positions, and the G samples of a
prompt share one prefill: the prompt and its images go through the model once (the cache is repeated).
"""

from __future__ import annotations

import inspect
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import torch
from torch import Tensor

from trainer.rollout import Rollout, TokenBatch, completion_mask, render_prompt

VISION_TOKENS = ("<|vision_start|>", "<|vision_end|>", "<|image_pad|>", "<|video_pad|>")
IMAGE_TOKEN = "<|image_pad|>"
IMAGE_PART = "<|vision_start|><|image_pad|><|vision_end|>"  # how Qwen-VL chat templates render an image part
# A minimal Qwen-VL-style chat template for builtin:tiny-vl: no role words (the tiny model reads characters), and
# a text prompt renders as builtin:tiny's tokenizer encodes it (`<bos>` then the text), so the text weights of
# builtin:tiny's shipped base carry over unchanged (trainer/tiny_vl.py).
TINY_CHAT_TEMPLATE = (
    "<bos>{% for m in messages %}{% if m['content'] is string %}{{ m['content'] }}{% else %}"
    "{% for c in m['content'] %}{% if c['type'] == 'image' %}" + IMAGE_PART +
    "{% elif c['type'] == 'text' %}{{ c['text'] }}{% endif %}{% endfor %}{% endif %}{% endfor %}")


# ---- the processor -------------------------------------------------------------------------------

class VisionProcessor:
    """A tokenizer and an image processor used as one (what Qwen2VLProcessor does for images).

    transformers' `Qwen2VLProcessor` cannot be built on a machine without torchvision (its video processor
    slot needs it); the tokenizer and the PIL image processor can, and they are all copd needs: frames of a
    video go through the image processor (docs/vlm.md). `save_pretrained` writes both, so a folder it wrote
    loads with `AutoProcessor` where torchvision is installed.
    """

    def __init__(self, tokenizer, image_processor):
        self.tokenizer = tokenizer
        self.image_processor = image_processor
        self.image_token_id = tokenizer.convert_tokens_to_ids(IMAGE_TOKEN)
        self.merge = int(getattr(image_processor, "merge_size", 2))

    eos_token_id = property(lambda self: self.tokenizer.eos_token_id)
    pad_token_id = property(lambda self: self.tokenizer.pad_token_id)
    chat_template = property(lambda self: self.tokenizer.chat_template)

    def __len__(self) -> int:
        return len(self.tokenizer)

    def save_pretrained(self, folder) -> None:
        self.tokenizer.save_pretrained(folder)
        self.image_processor.save_pretrained(folder)
        cfg = Path(folder) / "processor_config.json"
        if not cfg.exists():
            cfg.write_text(json.dumps({"processor_class": _processor_class(folder)}, indent=1))

    def batch_decode(self, *args, **kwargs):
        return self.tokenizer.batch_decode(*args, **kwargs)

    def sample_rollout(self, model, prompts: Sequence, n: int, **kwargs) -> Rollout:
        """`HFEngine.sample` for a vision-language model: sample_visual with this processor."""
        return sample_visual(model, self, prompts, n, **kwargs)


def _processor_class(folder) -> str:
    """The transformers processor class of a Qwen-VL model folder (Qwen2VLProcessor when not known)."""
    try:
        kind = json.loads((Path(folder) / "config.json").read_text()).get("model_type", "")
    except (OSError, ValueError):
        kind = ""
    return {"qwen2_5_vl": "Qwen2_5_VLProcessor", "qwen3_vl": "Qwen3VLProcessor"}.get(kind, "Qwen2VLProcessor")


def is_processor(tok) -> bool:
    """True for a VisionProcessor (a VLM's inputs), False for a plain tokenizer."""
    return isinstance(tok, VisionProcessor)


def is_vl_model(path: str) -> bool:
    """True when the model at `path` (folder or hub id) has a vision tower (its config has a vision_config)."""
    cfg = Path(path) / "config.json"
    if cfg.exists():
        try:
            return "vision_config" in json.loads(cfg.read_text())
        except (OSError, ValueError):
            return False
    if Path(path).exists():
        return False
    from transformers import AutoConfig
    try:
        return hasattr(AutoConfig.from_pretrained(path), "vision_config")
    except (OSError, ValueError):
        return False


def load_vl(path: str, dtype: torch.dtype = torch.float32):
    """(model, VisionProcessor) of an AutoModelForImageTextToText folder or hub id (left padding, a pad token)."""
    from transformers import AutoImageProcessor, AutoModelForImageTextToText, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(path)
    tokenizer.padding_side = "left"
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    image_processor = AutoImageProcessor.from_pretrained(path)
    model = AutoModelForImageTextToText.from_pretrained(path, dtype=dtype)
    model.eval()
    return model, VisionProcessor(tokenizer, image_processor)


# ---- visual inputs -------------------------------------------------------------------------------

def _ranges(starts: Tensor, lengths: Tensor) -> Tensor:
    """Concatenated aranges [starts[i], starts[i] + lengths[i]) without a Python loop."""
    total = int(lengths.sum())
    if total == 0:
        return starts.new_zeros(0)
    offsets = torch.repeat_interleave(lengths.cumsum(0) - lengths, lengths)
    return torch.repeat_interleave(starts, lengths) + torch.arange(total, device=starts.device) - offsets


@dataclass(frozen=True)
class VisualInputs:
    """The images of U prompts, in prompt order, as the image processor made them."""

    pixel_values: Tensor | None     # [S, C·t·p·p] patches of every image (None: no prompt has one)
    image_grid_thw: Tensor | None   # [I, 3] each image's (t, h, w) patch grid
    images_per_prompt: Tensor       # [U]

    def select(self, idx: Tensor) -> "VisualInputs":
        """The images of prompts idx (repeats allowed), in that order."""
        idx = idx.to(self.images_per_prompt.device)
        counts = self.images_per_prompt[idx]
        if self.pixel_values is None or int(counts.sum()) == 0:
            return VisualInputs(None, None, counts)
        first_image = self.images_per_prompt.cumsum(0) - self.images_per_prompt
        images = _ranges(first_image[idx], counts)                                     # [I']
        patches = self.image_grid_thw.prod(-1)
        first_patch = patches.cumsum(0) - patches
        rows = _ranges(first_patch[images], patches[images]).to(self.pixel_values.device)
        return VisualInputs(self.pixel_values[rows], self.image_grid_thw[images], counts)

    def to(self, device) -> "VisualInputs":
        move = (lambda x: None if x is None else x.to(device))
        return VisualInputs(move(self.pixel_values), move(self.image_grid_thw), self.images_per_prompt.to(device))

    def kwargs(self, dtype: torch.dtype | None = None) -> dict[str, Tensor]:
        """The model's keyword arguments for these images (none when there are none)."""
        if self.pixel_values is None:
            return {}
        pv = self.pixel_values if dtype is None else self.pixel_values.to(dtype)
        return {"pixel_values": pv, "image_grid_thw": self.image_grid_thw}


@dataclass(frozen=True)
class VisualTokenBatch(TokenBatch):
    """A TokenBatch whose prompts carry images: `visual` holds U prompts' images, `row_prompt` [N] says
    which of them each row's prompt is (the G samples of a prompt share its images)."""

    visual: VisualInputs | None = None
    row_prompt: Tensor | None = None   # [N]

    def select(self, idx: Tensor) -> "VisualTokenBatch":
        base = super().select(idx)
        return VisualTokenBatch(*_fields(base), visual=self.visual, row_prompt=self.row_prompt[idx])

    def to(self, device) -> "VisualTokenBatch":
        base = super().to(device)
        return VisualTokenBatch(*_fields(base), visual=self.visual.to(device), row_prompt=self.row_prompt.to(device))

    def model_forward(self, model, *, project: bool = True) -> Tensor:
        """What `trainer.rollout` calls to score this batch: visual_forward."""
        return visual_forward(model, self, project=project)


def _fields(b: TokenBatch) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    return b.prompt_ids, b.prompt_mask, b.completion_ids, b.completion_mask


def split_images(prompt) -> tuple[Any, list]:
    """(the prompt with image parts emptied of their pixels, the images in order)."""
    if isinstance(prompt, str):
        return prompt, []
    images, out = [], []
    for m in prompt:
        content = m["content"]
        if isinstance(content, str):
            out.append(m)
            continue
        parts = []
        for part in content:
            if part.get("type") == "image":
                images.append(part["image"])
                parts.append({"type": "image"})
            else:
                parts.append(part)
        out.append({"role": m["role"], "content": parts})
    return out, images


def encode_visual(processor: VisionProcessor, prompts: Sequence) -> tuple[Tensor, Tensor, VisualInputs]:
    """Left-padded prompt ids [U, P], mask [U, P] and their images: each image part becomes as many
    `<|image_pad|>` tokens as its merged patches (what Qwen2VLProcessor does)."""
    tok = processor.tokenizer
    texts, images, counts = [], [], []
    for p in prompts:
        plain, imgs = split_images(p)
        if not getattr(tok, "chat_template", None) and not isinstance(plain, str):  # no template: parts in order
            plain = "\n".join(m["content"] if isinstance(m["content"], str) else "".join(
                IMAGE_PART if c["type"] == "image" else c.get("text", "") for c in m["content"]) for m in plain)
        texts.append(render_prompt(tok, plain))
        images.extend(imgs)
        counts.append(len(imgs))
    pixels = grid = None
    if images:
        out = processor.image_processor(images=images, return_tensors="pt")
        pixels, grid = out["pixel_values"], out["image_grid_thw"]
        per_image = (grid.prod(-1) // processor.merge ** 2).tolist()
        at = 0
        for i, (t, n) in enumerate(zip(texts, counts)):
            pieces = t.split(IMAGE_TOKEN)
            if len(pieces) - 1 != n:
                raise ValueError(f"prompt {i}: {n} image(s) but {len(pieces) - 1} image token(s) after the chat template")
            texts[i] = pieces[0] + "".join(IMAGE_TOKEN * per_image[at + j] + pieces[j + 1] for j in range(n))
            at += n
    enc = tok(texts, padding=True, return_tensors="pt", add_special_tokens=not getattr(tok, "chat_template", None))
    return enc["input_ids"], enc["attention_mask"], VisualInputs(pixels, grid, torch.tensor(counts))


# ---- positions and forwards ----------------------------------------------------------------------

def rope_positions(model, ids: Tensor, mask: Tensor, visual: VisualInputs) -> Tensor:
    """Multimodal RoPE positions of left-padded prompts, [3, U, P] (text: one position a token; an image:
    its (t, h, w) grid), by the model's own `get_rope_index`."""
    core = model.model
    image_id = model.config.image_token_id
    types = (ids == image_id).int()
    pos, _ = core.get_rope_index(input_ids=ids, mm_token_type_ids=types, image_grid_thw=visual.image_grid_thw,
                                 video_grid_thw=None, attention_mask=mask)
    return pos


def _cache_arg(model) -> str:
    return "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"


def _cache_of(out):
    cache = out.get("cache")
    return cache if cache is not None else out.get("past_key_values")


def _dtype(model) -> torch.dtype:
    return next(model.parameters()).dtype


def prefill(model, ids: Tensor, mask: Tensor, visual: VisualInputs, *, project: bool = True):
    """Forward of U prompts with their images, caching keys/values: (the last position's logits [U, V] — its
    normed hidden state [U, D] when not `project` —, the cache, positions [3, U, P])."""
    pos = rope_positions(model, ids, mask, visual)
    more = {} if project else {"output_hidden_states": True}
    out = model(input_ids=ids, attention_mask=mask, position_ids=pos, use_cache=True, logits_to_keep=1,
                **visual.kwargs(_dtype(model)), **more)
    last = out.logits[:, -1] if project else out.hidden_states[-1][:, -1]
    return last, _cache_of(out), pos


def continue_forward(model, ids: Tensor, keys: Tensor, positions: Tensor, cache, *, project: bool = True) -> Tensor:
    """Logits [N, L, V] (hidden states [N, L, D] when not `project`) of text tokens ids [N, L] after the cached
    prefix; keys [N, S + L] marks real keys, positions [N, L] (every axis of the RoPE the same: text)."""
    pos = positions.unsqueeze(0).expand(3, -1, -1)
    more = {} if project else {"output_hidden_states": True, "logits_to_keep": 1}
    out = model(input_ids=ids, attention_mask=keys, position_ids=pos, use_cache=True,
                **{_cache_arg(model): cache}, **more)
    return out.logits if project else out.hidden_states[-1]


def prompt_group(row_prompt: Tensor) -> int:
    """g > 1 when every run of g consecutive rows has one prompt (by `row_prompt`, not by token ids: two
    pictures with the same question have the same ids), else 1."""
    n = row_prompt.shape[0]
    if n < 2:
        return 1
    same = row_prompt[1:] == row_prompt[:-1]
    g = n if bool(same.all()) else int(same.long().argmin()) + 1
    if g < 2 or n % g:
        return 1
    return g if bool((row_prompt.view(-1, g) == row_prompt[::g, None]).all()) else 1


def visual_forward(model, batch: VisualTokenBatch, *, project: bool = True) -> Tensor:
    """Logits [N, T, V] (or the last hidden states [N, T, D]) predicting each completion token, with each
    row's images. Every g consecutive rows of one prompt share one prefill (the cache is repeated g times,
    differentiably: the gradients of the g rows sum), as the sampler does."""
    n, t = batch.completion_ids.shape
    g = prompt_group(batch.row_prompt)
    ids, mask = batch.prompt_ids[::g], batch.prompt_mask[::g]                       # [U, P]
    last, cache, pos = prefill(model, ids, mask, batch.visual.select(batch.row_prompt[::g]), project=project)
    first = last.unsqueeze(1).repeat_interleave(g, 0)                              # [N, 1, ·] predicts token 0
    if t == 1:
        return first
    if g > 1:
        cache.batch_repeat_interleave(g)
    nxt = (pos[:, :, -1].amax(0) + 1).repeat_interleave(g, 0)                      # [N] first completion position
    keys = torch.cat([mask.repeat_interleave(g, 0), torch.ones_like(batch.completion_ids[:, : t - 1])], dim=1)
    positions = nxt[:, None] + torch.arange(t - 1, device=nxt.device)              # [N, T - 1]
    rest = continue_forward(model, batch.completion_ids[:, : t - 1], keys, positions, cache, project=project)
    return torch.cat([first, rest], dim=1)


@torch.no_grad()
def sample_visual(model, processor: VisionProcessor, prompts: Sequence, n: int, *, temperature: float,
                  max_new_tokens: int, greedy: bool = False) -> Rollout:
    """n completions of each prompt (rows of a prompt consecutive) with log π at `temperature`: each prompt
    and its images are prefilled once, its cache repeated for its n rows; then batched KV-cache decoding."""
    device = next(model.parameters()).device
    ids, mask, visual = encode_visual(processor, prompts)
    ids, mask, visual = ids.to(device), mask.to(device), visual.to(device)
    was_training = model.training
    model.eval()
    logits, cache, pos = prefill(model, ids, mask, visual)
    u = ids.shape[0]
    rows = u * n
    if n > 1:
        cache.batch_repeat_interleave(n)
        logits = logits.repeat_interleave(n, 0)
    eos, pad = processor.eos_token_id, processor.pad_token_id if processor.pad_token_id is not None else processor.eos_token_id
    keys = mask.repeat_interleave(n, 0)
    nxt = (pos[:, :, -1].amax(0) + 1).repeat_interleave(n, 0)                      # [N]
    alive = torch.ones(rows, dtype=torch.bool, device=device)
    toks, logps = [], []
    for t in range(max_new_tokens):
        logp = (logits.float() / (1.0 if greedy else temperature)).log_softmax(-1)   # [N, V]
        tok = logp.argmax(-1) if greedy else torch.multinomial(logp.exp(), 1).squeeze(1)
        tok = torch.where(alive, tok, torch.full_like(tok, pad))
        toks.append(tok)
        logps.append(logp.gather(-1, tok[:, None]).squeeze(1))
        alive &= tok != eos
        if t + 1 == max_new_tokens or not bool(alive.any()):
            break
        keys = torch.cat([keys, keys.new_ones(rows, 1)], dim=1)
        logits = continue_forward(model, tok[:, None], keys, (nxt + t)[:, None], cache)[:, -1]
    model.train(was_training)
    comp, logp = torch.stack(toks, 1), torch.stack(logps, 1)                        # [N, T]
    cmask = completion_mask(comp, eos)
    texts = processor.batch_decode(comp * cmask + pad * (1 - cmask), skip_special_tokens=True)
    row_prompt = torch.arange(u, device=device).repeat_interleave(n)
    tokens = VisualTokenBatch(ids.repeat_interleave(n, 0), mask.repeat_interleave(n, 0), comp, cmask,
                              visual=visual, row_prompt=row_prompt)
    return Rollout(tokens, logp * cmask, texts, [i for i in range(u) for _ in range(n)])
