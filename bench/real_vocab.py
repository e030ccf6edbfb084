"""A whole `copd train` run at a real vocabulary size, for its peak memory and time.

    python -m bench.real_vocab --out /tmp/realvocab [--vocab 151936] [--new-tokens 96]

Builds (offline) a random Qwen2 with a 151,936-token vocabulary but 2 layers of width 64 (9.7M parameters,
so it runs on a CPU), a word-level tokenizer of that size (characters first, then filler tokens), two jsonl
experts (addition and subtraction), and a spec of 1 cycle of 2 RLVR + 1 mutual-OPD steps, 8 prompts × 8
samples; then runs `copd train` under /usr/bin/time and prints its peak RSS and wall time.
"""

from __future__ import annotations

import argparse
import json
import random
import re
import subprocess
import sys
from pathlib import Path


def build(out: Path, vocab: int) -> Path:
    import transformers as T
    from tokenizers import Tokenizer, models, pre_tokenizers

    folder = out / "base"
    if (folder / "config.json").exists():
        return folder
    chars = list("0123456789+-= ?abcdefghijklmnopqrstuvwxyz")
    words = ["<pad>", "<eos>", *chars, *(f"<t{i}>" for i in range(vocab - len(chars) - 2))]
    tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="<pad>"))
    tok.pre_tokenizer = pre_tokenizers.Split("", "isolated")
    fast = T.PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", eos_token="<eos>")
    cfg = T.Qwen2Config(vocab_size=vocab, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                        num_attention_heads=4, num_key_value_heads=2, pad_token_id=0, eos_token_id=1,
                        tie_word_embeddings=False)
    T.AutoModelForCausalLM.from_config(cfg).save_pretrained(folder)
    fast.save_pretrained(folder)
    return folder


def data(out: Path) -> tuple[Path, Path]:
    rng = random.Random(0)
    paths = []
    for name, op in (("add", lambda a, b: a + b), ("sub", lambda a, b: a - b)):
        p = out / f"{name}.jsonl"
        sign = "+" if name == "add" else "-"
        rows = [{"prompt": f"{a}{sign}{b}=", "answer": str(op(a, b))}
                for a, b in ((rng.randint(10, 99), rng.randint(10, 99)) for _ in range(600))]
        p.write_text("".join(json.dumps(r) + "\n" for r in rows))
        paths.append(p)
    return paths[0], paths[1]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--vocab", type=int, default=151_936)
    ap.add_argument("--new-tokens", type=int, default=96)
    a = ap.parse_args()
    a.out.mkdir(parents=True, exist_ok=True)
    base = build(a.out, a.vocab)
    add, sub = data(a.out)
    spec = {"name": "real-vocab", "base_model": str(base), "strategy": "copd",
            "experts": [{"name": "add", "domain": {"type": "jsonl", "path": str(add), "verifier": "numeric"}},
                        {"name": "sub", "domain": {"type": "jsonl", "path": str(sub), "verifier": "numeric"}}],
            "schedule": {"cycles": 1, "rl_steps": 2, "opd_steps": 1},
            "grpo": {"group_size": 8, "prompts_per_step": 8, "max_new_tokens": a.new_tokens, "lr": 1e-4},
            "opd": {"prompts_per_step": 8, "samples_per_prompt": 8},
            "eval": {"prompts": 16, "overlap_prompts": 8}, "seed": 0}
    spec_path = a.out / "spec.json"
    spec_path.write_text(json.dumps(spec))
    run = a.out / "run"
    cmd = ["/usr/bin/time", "-v", sys.executable, "-m", "copd.cli", "train", str(spec_path), "--out", str(run)]
    done = subprocess.run(cmd, capture_output=True, text=True, env={"HF_HUB_OFFLINE": "1", "PATH": "/usr/bin:/bin",
                                                                   "PYTHONPATH": str(Path(__file__).parents[1])})
    rss = re.search(r"Maximum resident set size \(kbytes\): (\d+)", done.stderr)
    wall = re.search(r"Elapsed \(wall clock\) time.*: (.+)", done.stderr)
    print(json.dumps({"exit": done.returncode, "peak_rss_gb": round(int(rss.group(1)) / 2**20, 2) if rss else None,
                      "wall": wall.group(1).strip() if wall else None, "vocab": a.vocab, "new_tokens": a.new_tokens}))
    if done.returncode:
        print(done.stderr[-3000:], file=sys.stderr)


if __name__ == "__main__":
    main()
