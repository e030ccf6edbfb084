"""A vLLM rollout engine behind the `RolloutEngine` interface of trainer/rollout.py (docs/vllm.md).

`VllmEngine` runs a `vllm.LLM` colocated with the trainer (one process, `uni` executor): vLLM loads the
weights once from a Hugging Face folder, and `sync_weights` then copies the live trainer model's
parameters into it in place after each update (no reload from disk). Prompts are tokenised with our own
tokenizer (`encode_prompts`) and sent as token ids; the output tensors have exactly `HFEngine`'s layout
(prompts left padded, completions right padded, EOS kept, rows of one prompt consecutive).

A vision-language model (its tokenizer is a `trainer.vlm.VisionProcessor`) samples the same way: each
prompt's token ids (one `<|image_pad|>` per image: vLLM's Qwen2-VL processor expands it by the image's
grid) go in with its images as `multi_modal_data`, and the rollout is a `VisualTokenBatch`, as
`trainer.vlm.sample_visual` gives it, so the trainer scores it with `visual_forward` (docs/vlm.md).

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
from trainer.vlm import IMAGE_TOKEN, VisualTokenBatch, encode_visual, is_processor, split_images

# Images a prompt may carry (a video's frames count one each); vLLM sizes its encoder budget and memory
# profile by it, so it is an engine argument rather than unbounded.
MAX_IMAGES = 16


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


def one_pad_per_image(ids: Tensor, image_id: int) -> Tensor:
    """A prompt's ids [P] with each run of image tokens cut to one (vLLM expands it again by the image).

    >>> one_pad_per_image(torch.tensor([1, 7, 9, 9, 9, 8, 5, 7, 9, 9, 8]), 9).tolist()
    [1, 7, 9, 8, 5, 7, 9, 8]
    """
    is_pad = ids == image_id
    repeat = is_pad & torch.cat([is_pad.new_zeros(1), is_pad[:-1]])   # a pad right after a pad
    return ids[~repeat]


def check_vl_processor(folder) -> None:
    """Raise when vLLM's Qwen2-VL input processor can't be built from `folder` here, saying why.

    vLLM's Qwen2-VL module imports transformers' torchvision image processor and builds the folder's
    `Qwen2VLProcessor`, whose video slot needs torchvision too; without it vLLM only says the architecture
    "failed to be inspected".
    """
    try:
        from transformers import AutoProcessor
        from transformers.models.qwen2_vl.image_processing_qwen2_vl import smart_resize  # noqa: F401

        AutoProcessor.from_pretrained(str(folder))
    except Exception as err:  # noqa: BLE001 - reported with its cause
        raise RuntimeError(
            f"rollout.engine: vllm can't build the vision-language input processor of {folder}: "
            f"{type(err).__name__}: {err}. vLLM's Qwen2-VL path imports torchvision (and transformers' "
            "Qwen2VLProcessor needs it): install the torchvision that matches this torch (docs/vllm.md), "
            "or use engine: hf") from err


class VllmEngine:
    """Rollouts and teacher scoring on a colocated `vllm.LLM` that mirrors the live trainer model.

    model: the trainer's transformers model (its weights are pushed by `sync_weights`, its device is the
    device of every returned tensor); tokenizer: its HF tokenizer (vLLM gets token ids, we decode);
    folder: a Hugging Face model folder with the same architecture (config.json + safetensors, e.g. a
    `save_pretrained` checkpoint) that vLLM loads once at start. dtype defaults to the model's own.
    Sampled-token logprobs are taken at the sampling temperature (`logprobs_mode="processed_logprobs"`).
    A vision-language model (tokenizer a `VisionProcessor`) also needs the folder's image processor and
    tokenizer files (vLLM's multimodal processor reads them); max_images bounds the images of one prompt.
    """

    def __init__(self, model, tokenizer, *, folder, gpu_memory_utilization: float = 0.3, sleep_mode: bool = False,
                 seed: int = 0, max_model_len: int | None = None, dtype=None, max_images: int = MAX_IMAGES):
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
        self.visual = is_processor(tokenizer)
        self.max_images = max_images
        kwargs = dict(model=str(folder), skip_tokenizer_init=True, dtype=_dtype_name(dtype or ref.dtype), seed=seed,
                      enforce_eager=True, distributed_executor_backend="uni", logprobs_mode="processed_logprobs",
                      enable_sleep_mode=self.sleep_mode)
        if self.on_gpu:
            kwargs["gpu_memory_utilization"] = gpu_memory_utilization
        if max_model_len is not None:
            kwargs["max_model_len"] = max_model_len
        if self.visual:
            # vLLM's multimodal processor needs the tokenizer (the image token's id, its prompt expansion);
            # prompts still go in as our token ids. Frames of a video are images (docs/vlm.md): no video slot.
            check_vl_processor(folder)
            self.image_id = tokenizer.tokenizer.convert_tokens_to_ids(IMAGE_TOKEN)
            kwargs |= dict(skip_tokenizer_init=False, limit_mm_per_prompt={"image": max_images, "video": 0})
        with _rng_kept():  # in one process vLLM seeds the global RNGs with `seed`: keep the trainer's streams
            self.llm = LLM(**kwargs)

    # ---------------------------------------------------------------- sampling

    def sample(self, prompts: Sequence[str], n: int, *, temperature: float, max_new_tokens: int,
               greedy: bool = False) -> Rollout:
        """n completions per prompt (rows of a prompt consecutive) with log π(y_t) at `temperature` ([N, T]).

        Same layout as `HFEngine.sample`: prompt_ids / prompt_mask [N, P] left padded as `encode_prompts`
        gives them, completions [N, T] right padded with the pad id (T = the longest completion), the EOS
        token kept in the completion, logp 0 past it. greedy: argmax tokens, logprobs at temperature 1.
        A vision-language model's prompts (text or chat messages with images) are encoded by `encode_visual`,
        and the tokens are a `VisualTokenBatch` (its pixels, `row_prompt`), as `sample_visual` gives them.
        """
        from vllm import SamplingParams

        ids, mask, visual, requests = self._requests(prompts)                       # [U, P]
        params = SamplingParams(n=n, temperature=0.0 if greedy else float(temperature), top_p=1.0, top_k=0,
                                max_tokens=max_new_tokens, logprobs=0, stop_token_ids=[self.eos_id],
                                detokenize=False)
        outs = self.llm.generate(requests, params, use_tqdm=False)                  # in request order
        if visual is not None:
            self._check_expanded(outs, ids, mask)
        comp, logp = self._completions(outs)                                        # [N, T] each
        cmask = completion_mask(comp, self.eos_id)
        logp = logp * cmask
        texts = self.tokenizer.batch_decode(comp * cmask + self.pad_id * (1 - cmask), skip_special_tokens=True)
        ids, mask = ids.repeat_interleave(n, 0), mask.repeat_interleave(n, 0)      # [N, P], N = len·n
        if visual is None:
            tokens = TokenBatch(ids, mask, comp, cmask)
        else:  # the G rows of a prompt share its images, as sample_visual's rollouts do
            tokens = VisualTokenBatch(ids, mask, comp, cmask, visual=visual,
                                      row_prompt=torch.arange(len(prompts)).repeat_interleave(n))
        return Rollout(tokens.to(self.device), logp.to(self.device), texts,
                       [i for i in range(len(prompts)) for _ in range(n)])

    def _requests(self, prompts: Sequence):
        """(prompt ids [U, P], mask [U, P], the prompts' VisualInputs or None for a text model, vLLM requests)."""
        from vllm.inputs import TokensPrompt

        if not self.visual:
            ids, mask = encode_prompts(self.tokenizer, prompts)
            return ids, mask, None, [TokensPrompt(prompt_token_ids=row[m.bool()].tolist()) for row, m in zip(ids, mask)]
        ids, mask, visual = encode_visual(self.tokenizer, prompts)
        requests = []
        for row, m, prompt in zip(ids, mask, prompts):
            images = split_images(prompt)[1]
            if len(images) > self.max_images:
                raise ValueError(f"a prompt has {len(images)} images, more than this engine's max_images={self.max_images}")
            real = row[m.bool()]
            requests.append(TokensPrompt(prompt_token_ids=one_pad_per_image(real, self.image_id).tolist(),
                                         multi_modal_data={"image": images}) if images else
                            TokensPrompt(prompt_token_ids=real.tolist()))
        return ids, mask, visual, requests

    @staticmethod
    def _check_expanded(outs, ids: Tensor, mask: Tensor) -> None:
        """vLLM's prompt after its image expansion must be ours token for token (else the positions differ)."""
        for i, out in enumerate(outs):
            ours = ids[i][mask[i].bool()].tolist()
            if list(out.prompt_token_ids) != ours:
                raise RuntimeError(f"prompt {i}: vLLM expanded the image tokens to {len(out.prompt_token_ids)} "
                                   f"tokens, copd's encode_visual to {len(ours)}: their image processors disagree")

    def _completions(self, outs) -> tuple[Tensor, Tensor]:
        """Completion ids [N, T] right padded (T = the longest) and their sampled-token logprobs [N, T]."""
        rows_tok: list[list[int]] = []
        rows_lp: list[list[float]] = []
        for out in outs:
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
        return comp, logp

    # ---------------------------------------------------------------- scoring

    def logprobs(self, batch: TokenBatch, *, temperature: float = 1.0) -> Tensor:
        """log π(completion_t | prompt, completion_<t) at `temperature`: [N, T], 0 where completion_mask is 0.

        Each row's real prompt ‖ completion (up to its last masked-in token) goes in as one prompt with
        `prompt_logprobs=0`. vLLM's prompt logprobs skip the sampler (no temperature), so for temperature
        ≠ 1 the model's logits are scaled by 1/temperature for the duration of the call. A batch with images
        is refused: its pixels are the image processor's output, not the images vLLM takes (the trainer
        scores with `HFEngine`: teachers and the reference do).
        """
        from vllm import SamplingParams
        from vllm.inputs import TokensPrompt

        visual = getattr(batch, "visual", None)
        if visual is not None and visual.pixel_values is not None:
            raise NotImplementedError("VllmEngine.logprobs: a batch with images can't be rescored by vLLM "
                                      "(it has pixels, not images); score it with HFEngine")

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

        model defaults to the one given at construction; a vision-language model's vision tower and projector
        go too (they are in its state dict). The prefix cache is cleared (its KV came from the old weights),
        and so is the encoder cache (image embeddings of the old vision tower).
        """
        model = model if model is not None else self.model
        weights = [(name, t.detach()) for name, t in model.state_dict().items()]
        self.llm.collective_rpc("reload_weights", kwargs={"weights_iterator": weights})
        self.llm.reset_prefix_cache()
        if self.visual:
            self.llm.llm_engine.reset_encoder_cache()

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
