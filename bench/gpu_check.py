"""GPU check: one CoPD cycle of two experts on a ~0.5B random-initialised Qwen2, offline (`bench/gpu_check.sh`).

    python -m bench.gpu_check                          # ~0.5B, bf16, HF engine, on the first visible GPU
    python -m bench.gpu_check --engine vllm            # the same with vLLM rollouts (needs the vllm wheel)
    python -m bench.gpu_check --size tiny --dtype fp32 # seconds on a CPU: checks the script itself (CI)
    python -m bench.gpu_check --vl                     # ~2B random Qwen2-VL, an image and a video expert, bf16
    python -m bench.gpu_check --vl --engine vllm       # the same with vLLM rollouts (images as multi_modal_data)

Builds the model from a config (no download) with a character tokenizer over the two domains, saves it as a
Hugging Face folder, and runs the real `copd train` path (trainer.local.train_local) on it: Phase I RLVR,
Phase II mutual OPD with a live teacher, eval, merge. Prints rollout and training tokens/s (medians over
steps), peak memory, the sampler/trainer logprob gap, and whether every loss is finite; exits 1 if not.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

# hidden, layers, heads, kv_heads, intermediate: "0.5b" ≈ Qwen2.5-0.5B's body widened to ~0.47B parameters
# (a character vocabulary instead of its 152k-token embedding).
SIZES = {"0.5b": (1024, 24, 16, 2, 5504), "tiny": (64, 1, 2, 1, 128)}  # tiny: head_dim 32, as vLLM CPU needs
# --vl: a Qwen2-VL-family model. "2b" = Qwen2-VL-2B's text body (1536 wide, 28 layers) and vision tower
# (32 blocks × 1280, 16 heads, mlp ratio 4), ~2.1B parameters with a character vocabulary.
# the 2B tower keeps Qwen2-VL's init (std 0.02): tiny-vl's 0.1 is for a 2-block tower that must learn fast
VL_SIZES = {"2b": ((1536, 28, 12, 2, 8960), {"depth": 32, "embed_dim": 1280, "num_heads": 16, "mlp_ratio": 4,
                                           "initializer_range": 0.02}),
            "tiny": ((64, 1, 2, 1, 128), {"depth": 1, "embed_dim": 32, "num_heads": 2, "mlp_ratio": 2})}
VL_DOMAINS = {"image": "builtin:shapes", "video": "builtin:motion"}


def spec_for(base: Path, size: str, engine: str, dtype: str) -> dict:
    small = size == "tiny"
    return {
        "name": f"gpu-check-{size}", "base_model": str(base), "strategy": "copd",
        "experts": [{"name": "text", "domain": "builtin:arith"}, {"name": "video", "domain": "builtin:frames"}],
        "schedule": {"cycles": 1, "rl_steps": 2 if small else 4, "opd_steps": 1 if small else 3},
        "grpo": {"group_size": 4 if small else 8, "prompts_per_step": 4 if small else 32, "lr": 1e-5,
                 "max_new_tokens": 6 if small else 48},
        "opd": {"beta": 1.0, "prompts_per_step": 4 if small else 32, "samples_per_prompt": 2 if small else 4},
        "eval": {"prompts": 8 if small else 64, "overlap_k": 4, "overlap_prompts": 4 if small else 16},
        "rollout": {"engine": engine}, "compute": {"dtype": dtype}, "seed": 0,
    }


def spec_for_vl(base: Path, size: str, engine: str, dtype: str) -> dict:
    """The VL check: an image and a video expert (frames as images, docs/vlm.md)."""
    spec = spec_for(base, "tiny" if size == "tiny" else "0.5b", engine, dtype)
    spec["name"] = f"gpu-check-vl-{size}"
    spec["experts"] = [{"name": n, "domain": d} for n, d in VL_DOMAINS.items()]
    return spec


def build_base_vl(folder: Path, size: str, dtype: str) -> int:
    """A random Qwen2-VL of the given size with the tiny-vl tokenizer and PIL image processor, saved to `folder`."""
    import torch

    from contract.spec import TinyModelSpec
    from trainer.domains import load_domain
    from trainer.tiny_vl import VISION, build_tiny_vl, build_vl_processor

    (hidden, layers, heads, kv, inter), vision = VL_SIZES[size]
    processor = build_vl_processor(set().union(*(load_domain(d, 0).alphabet() for d in VL_DOMAINS.values())))
    recipe = TinyModelSpec(hidden_size=hidden, layers=layers, heads=heads, kv_heads=kv, intermediate_size=inter)
    model = build_tiny_vl(recipe, processor, seed=0, vision={**VISION, **vision})
    if dtype == "bf16":
        model = model.to(torch.bfloat16)  # half the bytes to write and read
    model.save_pretrained(folder)
    processor.save_pretrained(folder)
    return sum(p.numel() for p in model.parameters())


def build_base(folder: Path, size: str) -> int:
    """A random Qwen2 of the given size and its tokenizer, saved to `folder`; returns the parameter count."""
    import torch

    from trainer.domains import load_domain
    from trainer.models import build_char_tokenizer
    from transformers import AutoModelForCausalLM, Qwen2Config

    hidden, layers, heads, kv, inter = SIZES[size]
    alphabet: set[str] = set()
    for d in ("builtin:arith", "builtin:frames"):
        alphabet |= load_domain(d, 0).alphabet()
    tok = build_char_tokenizer(alphabet)
    cfg = Qwen2Config(vocab_size=len(tok), hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=heads,
                      num_key_value_heads=kv, intermediate_size=inter, max_position_embeddings=512,
                      tie_word_embeddings=True, bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
                      pad_token_id=tok.pad_token_id)
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(cfg)
    model.save_pretrained(folder)
    tok.save_pretrained(folder)
    return sum(p.numel() for p in model.parameters())


def summarise(rows: list[dict]) -> dict:
    """Medians of the per-step throughputs, the peak memory, the logprob gap and the finiteness of the losses."""
    def values(key: str) -> list[float]:
        return [r["value"] for r in rows if r["key"] == key]

    losses = values("loss/grpo") + values("loss/opd")
    return {
        "rollout_tokens_per_s": statistics.median(values("tokens/rollout_per_s")),
        "train_tokens_per_s": statistics.median(values("tokens/train_per_s")),
        "peak_memory_gb": max(values("memory/peak_gb")),
        "logp_gap_mean": statistics.fmean(values("rollout/logp_gap")),
        "steps": len(values("loss/grpo")),
        "losses_finite": bool(losses) and all(math.isfinite(v) for v in losses),
        "merged_acc": {r["key"]: r["value"] for r in rows if r["expert"] == "merged" and r["key"].startswith("acc/")},
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.gpu_check", description=__doc__.splitlines()[0])
    p.add_argument("--size", choices=sorted(set(SIZES) | set(VL_SIZES)), default=None,
                   help="model size (default 0.5b; with --vl, 2b)")
    p.add_argument("--vl", action="store_true", help="a Qwen2-VL-family model with an image and a video expert")
    p.add_argument("--engine", choices=["hf", "vllm", "auto"], default="hf")
    p.add_argument("--dtype", choices=["bf16", "fp32", "auto"], default="bf16")
    p.add_argument("--out", type=Path, default=None, help="run folder (default: a temporary one)")
    args = p.parse_args(argv)
    args.size = args.size or ("2b" if args.vl else "0.5b")
    if args.size not in (VL_SIZES if args.vl else SIZES):
        p.error(f"--size {args.size}: one of {', '.join(sorted(VL_SIZES if args.vl else SIZES))}"
                + (" with --vl" if args.vl else " (2b needs --vl)"))
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

    import torch

    from trainer.local import train_local
    from contract.spec import parse_spec

    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU (CPU)"
    print(f"device: {gpu}; torch {torch.__version__}; size {args.size}, engine {args.engine}, dtype {args.dtype}", flush=True)
    with tempfile.TemporaryDirectory(prefix="copd-gpu-check-") as tmp:
        root = args.out or Path(tmp)
        base = root / "base"
        t0 = time.perf_counter()
        n = build_base_vl(base, args.size, args.dtype) if args.vl else build_base(base, args.size)
        print(f"built a random {'Qwen2-VL' if args.vl else 'Qwen2'}: {n / 1e9:.3f}B parameters in "
              f"{time.perf_counter() - t0:.1f}s", flush=True)
        spec = parse_spec(spec_for_vl(base, args.size, args.engine, args.dtype) if args.vl
                          else spec_for(base, args.size, args.engine, args.dtype))
        t0 = time.perf_counter()
        train_local(spec, root / "run", root / "models", log_fn=lambda m: print(m, flush=True))
        wall = time.perf_counter() - t0
        rows = [json.loads(line) for line in (root / "run" / "metrics.jsonl").read_text().splitlines()]
    s = summarise(rows)
    print(f"one CoPD cycle, 2 experts{' (image, video)' if args.vl else ''}: {wall:.1f}s wall; {s['steps']} expert steps")
    print(f"rollout tokens/s (median per step): {s['rollout_tokens_per_s']:,.0f}")
    print(f"training tokens/s (median per step): {s['train_tokens_per_s']:,.0f}")
    print(f"peak memory: {s['peak_memory_gb']:.2f} GiB ({'CUDA allocated' if torch.cuda.is_available() else 'process RSS'})")
    print(f"sampler/trainer logprob gap (mean |Δ log π|): {s['logp_gap_mean']:.2e}")
    print(f"losses finite: {'yes' if s['losses_finite'] else 'NO'}")
    print("json: " + json.dumps({"device": gpu, "wall_s": round(wall, 1), **s}))
    return 0 if s["losses_finite"] else 1


if __name__ == "__main__":
    sys.exit(main())
