"""Shared fixtures: offline, quiet, and a tiny-model cache shared by the whole test session."""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
# One intra-op thread: tests share 2 cores with workers and servers they start; spinning OpenMP threads
# competing for them slow a tiny model's step down by ~10x. Subprocesses inherit it.
os.environ.setdefault("COPD_TORCH_THREADS", "1")

import pytest  # noqa: E402


def _has_cuda() -> bool:
    try:
        import torch

        return torch.cuda.is_available()
    except ImportError:
        return False


def pytest_collection_modifyitems(config, items):
    if _has_cuda():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def model_cache(tmp_path_factory):
    """One folder for warm-started tiny models across the session (they are keyed by recipe hash)."""
    return tmp_path_factory.mktemp("models")
