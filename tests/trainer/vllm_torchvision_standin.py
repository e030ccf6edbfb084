"""What vLLM's Qwen2-VL path takes from torchvision, stood in for the CPU venv (tests only; docs/vllm.md).

scripts/vllm-cpu-venv.sh can't install torchvision offline here: the only torchvision 0.28 wheel on this
machine's index is the CUDA build, whose `_C.so` needs `libc10_cuda.so` (absent next to the +cpu torch), so
`import torchvision` fails ("operator torchvision::nms does not exist"). vLLM 0.32's Qwen2-VL model module
imports `transformers.models.qwen2_vl.image_processing_qwen2_vl` (the torchvision image processor, for
`smart_resize`), and builds the folder's `Qwen2VLProcessor`, whose video slot needs torchvision. None of
that computes anything copd uses: the images go through the PIL `Qwen2VLImageProcessorPil` (what the trainer
uses too) and frames are images (no video processor). So, only when torchvision is missing:

- that module is the PIL one (same `smart_resize`, `Qwen2VLImageProcessor` = the PIL class);
- `Qwen2VLProcessor.from_pretrained` builds the processor from the folder's tokenizer and PIL image processor,
  with a placeholder video slot (its merge / patch sizes; no video is ever passed: `limit_mm_per_prompt`
  has video 0);
- vLLM's model-class inspection runs in this process instead of a fresh interpreter (which would not have
  these stand-ins).

With a CPU torchvision in the venv (`torchvision==0.28.0+cpu` from the PyTorch CPU index) `install()` does
nothing, and on a GPU vLLM's own torchvision is there.
"""

from __future__ import annotations

import importlib.util
import sys
import types


def install() -> bool:
    """Put the stand-ins in place when torchvision is not importable; True when it did."""
    if importlib.util.find_spec("torchvision") is not None:
        return False
    from transformers import AutoTokenizer
    from transformers.models.qwen2_vl import image_processing_pil_qwen2_vl as pil
    from transformers.models.qwen2_vl import processing_qwen2_vl

    name = "transformers.models.qwen2_vl.image_processing_qwen2_vl"
    module = types.ModuleType(name)
    module.__dict__.update({k: v for k, v in vars(pil).items() if not k.startswith("__")})
    module.Qwen2VLImageProcessor = pil.Qwen2VLImageProcessorPil
    sys.modules[name] = module

    processor_cls = processing_qwen2_vl.Qwen2VLProcessor
    check = processor_cls.check_argument_for_proper_class

    def check_argument(self, attribute, value):
        return type(value) if attribute == "video_processor" else check(self, attribute, value)

    def from_pretrained(cls, path, *args, tokenizer=None, **kwargs):
        image = pil.Qwen2VLImageProcessorPil.from_pretrained(path)
        video = types.SimpleNamespace(valid_kwargs=type(image).valid_kwargs, merge_size=image.merge_size,
                                      patch_size=image.patch_size, temporal_patch_size=image.temporal_patch_size)
        return cls(image_processor=image, tokenizer=tokenizer or AutoTokenizer.from_pretrained(path),
                   video_processor=video)

    processor_cls.check_argument_for_proper_class = check_argument
    processor_cls.from_pretrained = classmethod(from_pretrained)

    from vllm.model_executor.models import registry

    registry._run_in_subprocess = lambda fn: fn()
    return True
