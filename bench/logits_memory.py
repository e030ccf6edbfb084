"""Peak memory and time of one training forward+backward and one teacher scoring at a real vocabulary size.

    python -m bench.logits_memory [--rows 16] [--tokens 96] [--vocab 151936]

A random Qwen2 with the Qwen vocabulary but 2 narrow layers (so it runs on a CPU), rows × tokens completion
positions: each side runs in its own process (peak RSS is per process) — `full` builds the [N, T, V] logits
as before, `chunked` computes logprobs and entropy a few positions at a time (CHUNK_ELEMENTS) (trainer/rollout.py).
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time


def one(side: str, rows: int, tokens: int, vocab: int) -> dict:
    import torch
    import transformers as T

    import trainer.rollout as R

    if side == "full":
        R.LOGITS_BUDGET = 1 << 62
    torch.manual_seed(0)
    cfg = T.Qwen2Config(vocab_size=vocab, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                        num_attention_heads=4, num_key_value_heads=2)
    model = T.AutoModelForCausalLM.from_config(cfg)
    prompts = torch.randint(0, vocab, (rows, 32))
    batch = R.TokenBatch(prompts, torch.ones_like(prompts), torch.randint(0, vocab, (rows, tokens)),
                         torch.ones(rows, tokens, dtype=torch.long))
    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    model.train()
    t0 = time.perf_counter()
    logp, ent = R.token_stats(model, batch, 1.0, entropy=True)
    logp.mean().backward()
    t_train = time.perf_counter() - t0
    model.eval()
    t0 = time.perf_counter()
    with torch.inference_mode():
        R.token_stats(model, batch, 1.0)
    t_score = time.perf_counter() - t0
    return {"side": side, "rows": rows, "tokens": tokens, "vocab": vocab,
            "peak_rss_gb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 2),
            "rss_before_gb": round(base, 2), "train_s": round(t_train, 2), "score_s": round(t_score, 2),
            "logp_sum": float(logp.detach().sum())}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=16)
    ap.add_argument("--tokens", type=int, default=96)
    ap.add_argument("--vocab", type=int, default=151_936)
    ap.add_argument("--side", choices=["full", "chunked"], help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.side:
        print(json.dumps(one(a.side, a.rows, a.tokens, a.vocab)))
        return
    for side in ("chunked", "full"):
        out = subprocess.run([sys.executable, "-m", "bench.logits_memory", "--side", side, "--rows", str(a.rows), "--tokens",
                              str(a.tokens), "--vocab", str(a.vocab)], capture_output=True, text=True)
        print(out.stdout.strip() or out.stderr.strip()[-500:])


if __name__ == "__main__":
    main()
