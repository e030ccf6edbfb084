"""`builtin:tiny-vl`: a tiny Qwen2-VL model built from a config, with a local character tokenizer that has
the vision special tokens, warm-started offline on the run's domains like `builtin:tiny` (trainer/models.py)
and cached on disk by recipe hash; the base for the builtin domains ships in trainer/assets/tiny-vl-base.
"""

from __future__ import annotations

import hashlib
import inspect
import json
import os
import shutil
import time
from pathlib import Path
from typing import Callable, Sequence

import torch

from contract.spec import TinyModelSpec
from filelock import FileLock
from trainer.domains.base import Domain, Sample
from safetensors.torch import load_file
from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, processors
from transformers import PreTrainedTokenizerFast

from trainer.models import SHIPPED_BASE, SPECIALS, load_pretrained, warm_start
from trainer.rollout import token_stats
from trainer.vlm import TINY_CHAT_TEMPLATE, VISION_TOKENS, VisionProcessor, VisualTokenBatch, encode_visual

SHIPPED_VL_BASE = Path(__file__).parent / "assets" / "tiny-vl-base"
# Bump when the tiny VLM's warm start changes (its own number: builtin:tiny's text recipe moves on its own).
VL_WARMSTART_VERSION = 4
# The vision tower: depth × embed_dim, patches of 14 px merged 2×2 into one token of the text width.
# initializer_range 0.1 (Qwen2-VL's default is 0.02): at 0.02 the tower's output barely differs between pictures
# (the per-picture spread is ~1/3 of the shared part at init and shrinks as training goes on) and a supervised
# probe of "what colour is the one square" stayed at chance for 300 steps; at 0.1 it is learned in ~250 steps.
VISION = {"depth": 2, "embed_dim": 64, "num_heads": 4, "mlp_ratio": 2, "patch_size": 14, "spatial_merge_size": 2,
          "temporal_patch_size": 2, "in_channels": 3, "initializer_range": 0.1}
# The warm start's learning rate, at most: at builtin:tiny's 3e-3 (and at 1e-3) the tower learns nothing or
# learns and collapses again; 3e-4 learns (docs/results/vl.md, "Why the video expert barely learned").
VL_WARMSTART_LR = 3e-4
IMAGE_PIXELS = (28 * 28, 112 * 112)  # min / max pixels an image is resized into (the builtin ones fit as drawn)


def _text_vocab(folder: Path = SHIPPED_BASE) -> dict[str, int]:
    """The character vocabulary of builtin:tiny's shipped base (empty when it is not there)."""
    try:
        return dict(json.loads((folder / "tokenizer.json").read_text())["model"]["vocab"])
    except (OSError, ValueError, KeyError):
        return {}


def build_vl_processor(alphabet: set[str]) -> VisionProcessor:
    """A character tokenizer — builtin:tiny's shipped vocabulary first, in its order, then the rest of
    `alphabet`, then the vision tokens — with the chat template, and the PIL Qwen2-VL image processor."""
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

    vocab = {t: i for i, t in enumerate(SPECIALS)} | _text_vocab()
    for ch in sorted(alphabet):
        vocab.setdefault(ch, len(vocab))
    core = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    core.pre_tokenizer = pre_tokenizers.Split(Regex(r"[\s\S]"), behavior="isolated")  # one token per character
    core.decoder = decoders.Fuse()
    core.post_processor = processors.TemplateProcessing(single="<bos> $A", special_tokens=[("<bos>", vocab["<bos>"])])
    tok = PreTrainedTokenizerFast(tokenizer_object=core, bos_token="<bos>", eos_token="<eos>", pad_token="<pad>",
                                  unk_token="<unk>", padding_side="left")
    tok.add_special_tokens({"additional_special_tokens": list(VISION_TOKENS)})
    tok.chat_template = TINY_CHAT_TEMPLATE
    image = Qwen2VLImageProcessorPil(min_pixels=IMAGE_PIXELS[0], max_pixels=IMAGE_PIXELS[1])
    return VisionProcessor(tok, image)


def build_tiny_vl(recipe: TinyModelSpec, processor: VisionProcessor, seed: int, vision: dict | None = None):
    """A randomly initialised Qwen2VLForConditionalGeneration of the recipe's text size and `vision`'s tower
    (default VISION)."""
    from transformers import Qwen2VLConfig, Qwen2VLForConditionalGeneration

    tok = processor.tokenizer
    head_dim = recipe.hidden_size // recipe.heads
    third = head_dim // 2 // 3
    text = dict(vocab_size=len(tok), hidden_size=recipe.hidden_size, num_hidden_layers=recipe.layers,
                num_attention_heads=recipe.heads, num_key_value_heads=recipe.kv_heads,
                intermediate_size=recipe.intermediate_size, max_position_embeddings=512, tie_word_embeddings=True,
                # builtin:tiny's RoPE base and norm epsilon (Qwen2Config's defaults), so its text weights carry over
                rope_parameters={"rope_type": "default", "rope_theta": 10000.0,
                                 "mrope_section": [head_dim // 2 - 2 * third, third, third]}, rms_norm_eps=1e-6,
                bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
    ids = {name: tok.convert_tokens_to_ids(t) for name, t in
           (("vision_start_token_id", "<|vision_start|>"), ("vision_end_token_id", "<|vision_end|>"),
            ("image_token_id", "<|image_pad|>"), ("video_token_id", "<|video_pad|>"))}
    config = Qwen2VLConfig(text_config=text, vision_config={**(vision or VISION), "hidden_size": recipe.hidden_size},
                           tie_word_embeddings=True, **ids)
    torch.manual_seed(seed)
    model = Qwen2VLForConditionalGeneration(config)
    gc = model.generation_config
    gc.pad_token_id, gc.eos_token_id, gc.bos_token_id = tok.pad_token_id, tok.eos_token_id, tok.bos_token_id
    return model.eval()


def carry_text_weights(model, recipe: TinyModelSpec, folder: Path = SHIPPED_BASE) -> bool:
    """Start the language model from builtin:tiny's shipped base when it has this recipe's text shape: its
    decoder weights, and the embedding rows of its vocabulary (the first rows of ours, build_vl_processor).
    With every RoPE axis at the same position, a text prompt's multimodal RoPE is the plain one, so the text
    model answers text prompts as builtin:tiny did. True when it did."""
    try:
        meta = json.loads((folder / "warmstart.json").read_text())
        weights = load_file(folder / "model.safetensors")
    except (OSError, ValueError):
        return False
    if meta.get("recipe", {}) | {"warmstart_max_steps": 0} != recipe.model_dump() | {"warmstart_max_steps": 0}:
        return False
    params = dict(model.named_parameters()) | dict(model.named_buffers())
    with torch.no_grad():
        for k, v in weights.items():
            target = params.get("model.language_model." + k.removeprefix("model.")) if k.startswith("model.") else params.get(k)
            if target is None:
                continue
            if target.shape == v.shape:
                target.copy_(v)
            elif target.ndim == 2 and target.shape[1] == v.shape[1] and target.shape[0] > v.shape[0]:
                target[: v.shape[0]] = v   # the embedding (tied head): the shipped vocabulary's rows
    return True


def sft_batch(processor: VisionProcessor, samples: Sequence[Sample]) -> VisualTokenBatch:
    """Prompts with their images, and each answer ‖ EOS as the completion (right padded)."""
    ids, mask, visual = encode_visual(processor, [s.model_input for s in samples])
    tok = processor.tokenizer
    answers = [tok(s.answer, add_special_tokens=False)["input_ids"] + [tok.eos_token_id] for s in samples]
    width = max(map(len, answers))
    comp = torch.full((len(samples), width), tok.pad_token_id)
    cmask = torch.zeros((len(samples), width), dtype=torch.long)
    for i, a in enumerate(answers):
        comp[i, : len(a)], cmask[i, : len(a)] = torch.tensor(a), 1
    return VisualTokenBatch(ids, mask, comp, cmask, visual=visual, row_prompt=torch.arange(len(samples)))


def sft_loss(model, processor: VisionProcessor, samples: Sequence[Sample]) -> torch.Tensor:
    """Mean negative log-likelihood of the answers' tokens, through the same forward the trainer uses."""
    batch = sft_batch(processor, samples)
    logp = token_stats(model, batch)[0]
    return -(logp * batch.completion_mask).sum() / batch.completion_mask.sum()


_VL_CODE = ("build_vl_processor", "build_tiny_vl", "carry_text_weights", "sft_batch", "sft_loss", "load_builtin_tiny_vl")


def vl_code_hash(keys: Sequence[str]) -> str:
    """Hash of the code that builds the tiny VLM for the domains `keys` (comments and docstrings ignored): this
    module's builders, builtin:tiny's warm start and the domains' modules (trainer.models.warmstart_code_hash),
    the frames module builtin:motion draws its trajectories from, and the tower's constants."""
    import trainer.domains.frames as frames_module
    from trainer.models import _code_digest, warmstart_code_hash

    h = hashlib.sha256(warmstart_code_hash(keys).encode() + repr((VISION, IMAGE_PIXELS, VL_WARMSTART_LR)).encode())
    for name in _VL_CODE:
        h.update(_code_digest(inspect.getsource(globals()[name])).encode())
    h.update(_code_digest(inspect.getsource(frames_module)).encode())
    return h.hexdigest()[:16]


def _fingerprint(recipe: TinyModelSpec, domains: Sequence[Domain], seed: int) -> str:
    text_base = (SHIPPED_BASE / "model.safetensors")
    h = hashlib.sha256(json.dumps({"recipe": recipe.model_dump(), "vision": VISION, "seed": seed,
                                   "v": VL_WARMSTART_VERSION, "text": text_base.stat().st_size if text_base.exists() else 0,
                                   "code": vl_code_hash([d.key for d in domains])},
                                  sort_keys=True).encode())
    for d in domains:
        h.update(d.key.encode())
        for s in d.train:
            h.update(s.pool_key.encode() + b"\0" + s.answer.encode() + b"\1")
    return h.hexdigest()[:16]


def shipped_vl_base(recipe: TinyModelSpec, domains: Sequence[Domain], folder: Path = SHIPPED_VL_BASE) -> Path | None:
    """The shipped base when it fits: the same recipe, and only domains it was warm-started on."""
    try:
        meta = json.loads((folder / "warmstart.json").read_text())
    except (OSError, ValueError):
        return None
    # a recipe field added after the base was built counts with its default (tiny.seed came later)
    built = {**TinyModelSpec().model_dump(), **meta.get("recipe", {})}
    keys = list(meta.get("sampled_accuracy", {}))
    fits = (meta.get("version") == VL_WARMSTART_VERSION and built == recipe.model_dump()
            and meta.get("vision") == VISION and {d.key for d in domains} <= set(keys)
            and meta.get("code") == vl_code_hash(keys))  # a changed generator or warm start: not this base
    return folder if fits else None


def builtin_tiny_vl(recipe: TinyModelSpec, domains: Sequence[Domain], seed: int, cache_dir: Path,
                    log_fn: Callable[[str], None] = print):
    """(model, processor, folder) of the tiny VLM's base: the shipped one when it fits, else the cached one,
    built by the first run that needs it while the others wait for it (the same file lock as builtin:tiny's).

    The lock lives here, not in `load_builtin_tiny_vl`, because that function's source is part of
    `vl_code_hash` and so of the shipped base's identity: editing it would orphan the shipped weights."""
    shipped = shipped_vl_base(recipe, domains)
    if shipped is not None:
        return load_builtin_tiny_vl(recipe, domains, seed, cache_dir, log_fn)
    folder = Path(cache_dir) / f"tiny-vl-{_fingerprint(recipe, domains, seed)}"
    folder.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(folder.with_name(f".{folder.name}.lock"))):
        if (folder / "config.json").exists():
            log_fn(f"builtin:tiny-vl: cached base model ({folder})")
        return load_builtin_tiny_vl(recipe, domains, seed, cache_dir, log_fn)


def load_builtin_tiny_vl(recipe: TinyModelSpec, domains: Sequence[Domain], seed: int, cache_dir: Path,
                         log_fn: Callable[[str], None] = print):
    """(model, processor, folder) of the warm-started tiny VLM for these domains, built once and cached."""
    shipped = shipped_vl_base(recipe, domains)
    if shipped is not None:
        log_fn(f"builtin:tiny-vl: the shipped base model for the builtin domains ({shipped})")
        return load_pretrained(str(shipped)) + (shipped,)
    folder = Path(cache_dir) / f"tiny-vl-{_fingerprint(recipe, domains, seed)}"
    if (folder / "config.json").exists():
        return load_pretrained(str(folder)) + (folder,)
    alphabet: set[str] = set()
    for d in domains:
        alphabet |= d.alphabet()
        if d.habit is not None:
            alphabet |= {c for s in d.train for c in d.habit(s)}
    processor = build_vl_processor(alphabet)
    model = build_tiny_vl(recipe, processor, seed)
    carried = carry_text_weights(model, recipe)
    n_params = sum(p.numel() for p in model.parameters())
    log_fn(f"building builtin:tiny-vl ({n_params / 1e6:.2f}M parameters, {len(processor)} tokens); warm start on "
           f"{', '.join(d.key for d in domains)}, at most {recipe.warmstart_max_steps} steps"
           + (", text weights from builtin:tiny's base" if carried else "") + f" (cached at {folder})")
    t0 = time.time()

    def on_check(step: int, accs: list[float]) -> None:
        if step % 100 == 0:
            log_fn(f"warm start step {step}/{recipe.warmstart_max_steps} ({time.time() - t0:.0f}s): sampled accuracy "
                   + ", ".join(f"{d.key.removeprefix('builtin:')}={a:.2f}" for d, a in zip(domains, accs)))

    slow = recipe.model_copy(update={"warmstart_lr": min(recipe.warmstart_lr, VL_WARMSTART_LR)})
    accs = warm_start(model, processor, domains, slow, seed, on_check=on_check, sft_loss=sft_loss)
    log_fn(f"warm start done in {time.time() - t0:.0f}s; sampled accuracy "
           + ", ".join(f"{d.key}={a:.2f}" for d, a in zip(domains, accs)))
    tmp = folder.with_name(f".{folder.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp)
    processor.save_pretrained(tmp)
    (tmp / "warmstart.json").write_text(json.dumps({"sampled_accuracy": dict(zip([d.key for d in domains], accs)),
                                                    "recipe": recipe.model_dump(), "vision": VISION, "seed": seed,
                                                    "code": vl_code_hash([d.key for d in domains]),
                                                    "text_from_tiny_base": carried, "version": VL_WARMSTART_VERSION, "seconds": round(time.time() - t0)},
                                                   indent=1))
    try:
        tmp.rename(folder)
    except OSError:  # another process built it first
        shutil.rmtree(tmp, ignore_errors=True)
    return load_pretrained(str(folder)) + (folder,)
