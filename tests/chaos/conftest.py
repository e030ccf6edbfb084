"""The chaos suite (`-m chaos`): faults injected into real runs — API, worker and services as processes."""

from tests.worker.conftest import make_stack, shared_models  # noqa: F401  (the worker tests' fixtures)
