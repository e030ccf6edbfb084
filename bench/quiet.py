"""The set-up every benchmark's `main` shares, kept free of torch at import: offline, quiet, N threads.

The environment variables must be set before transformers is first imported, so a benchmark calls this
before its own torch / transformers imports.
"""

from __future__ import annotations

import os
import warnings


def quiet_offline(threads: int):
    """Offline hub, no tokenizers fork warnings, no Python or transformers warnings, `threads` intra-op
    threads; returns torch."""
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    warnings.filterwarnings("ignore")
    import torch
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    torch.set_num_threads(threads)
    return torch
