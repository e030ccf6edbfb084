"""What every task needs about a run: its spec (from the API), its folder, its cached RunContext."""

from __future__ import annotations

import hashlib
import threading
from collections import OrderedDict
from pathlib import Path

from contract.settings import get_settings
from contract.schemas import RunPublic
from contract.vocab import RUNNABLE  # noqa: F401  (a unit of such a run may start; the old name was ACTIVE)
from contract.spec import RunSpec, check_data_paths, parse_spec

MAX_CONTEXTS = 2                           # runs whose models a worker keeps in memory

_contexts: "OrderedDict[tuple[int, str], object]" = OrderedDict()
_lock = threading.Lock()


def spec_of(run: RunPublic) -> RunSpec:
    """The run's spec: the spec fields of GET /runs/{id} (the experts without their live state)."""
    data = run.model_dump(mode="json")
    fields = {k: data[k] for k in RunSpec.model_fields if k in data}
    fields["experts"] = [{"name": e["name"], "domain": e["domain"]} for e in data["experts"]]
    return parse_spec(fields)


def run_root(run_id: int) -> Path:
    """`<data_dir>/runs/<run_id>/`: checkpoints and marker files (a shared folder when workers are many)."""
    return get_settings().data_dir / "runs" / str(run_id)


_stores: dict[str, object] = {}


def checkpoint_store():
    """This process's CheckpointStore (COPD_CHECKPOINT_URL), or None when checkpoints stay in the data dir."""
    from worker.store import CheckpointStore

    settings = get_settings()
    if not settings.checkpoint_url:
        return None
    with _lock:
        if settings.checkpoint_url not in _stores:
            _stores[settings.checkpoint_url] = CheckpointStore.from_settings(settings)
        return _stores[settings.checkpoint_url]


def run_folder(api, run_id: int):
    """The run's markers: in the API's database with a checkpoint store (hosts share no disk), else files."""
    from worker.config import WorkerSettings
    from worker.runfolder import ApiRunFolder, RunFolder

    if get_settings().checkpoint_url:
        return ApiRunFolder(run_root(run_id), api, run_id, lease_ttl_s=WorkerSettings().lease_ttl_s)
    return RunFolder(run_root(run_id))


def context_for(run_id: int, spec: RunSpec, log_fn=print):
    """The run's trainer RunContext, kept across tasks: its models stay in memory keyed by checkpoint hash,
    so the next unit of the same expert (or the same teachers) does not load them from disk again."""
    from trainer.units import RunContext  # torch: only in processes that run units

    check_data_paths(spec)  # COPD_DATA_ROOTS on this worker, before any file of the spec is opened
    key = (run_id, hashlib.sha256(spec.model_dump_json().encode()).hexdigest())
    with _lock:
        if key in _contexts:
            _contexts.move_to_end(key)
            return _contexts[key]
    ctx = RunContext.create(spec, run_root(run_id), get_settings().model_cache, log_fn)
    with _lock:
        _contexts[key] = ctx
        while len(_contexts) > MAX_CONTEXTS:
            _contexts.popitem(last=False)
    return ctx
