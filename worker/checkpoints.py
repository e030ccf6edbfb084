"""A unit's checkpoints across hosts and over time: fetch its inputs from the store, publish its output,
and apply the run's retention (contract.retention) — in the join after each phase and in `copd checkpoints gc`."""

from __future__ import annotations

import logging
import shutil
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING

from contract.client import Client
from contract.plan import Unit
from contract.retention import Held, RetentionPlan, fork_refs, needed_by_units, plan_retention, unit_inputs
from contract.schemas import CheckpointPublic
from contract.settings import get_settings
from contract.spec import RunSpec
from trainer.ckptfiles import drop_optimizer, folder_bytes, has_optimizer
from worker.runfolder import RunFolder
from worker.runs import run_root, spec_of
from worker.store import CheckpointStore, NotInStore, StoreError

if TYPE_CHECKING:  # torch: not imported by the join or the CLI
    from trainer.checkpoint import CheckpointInfo

log = logging.getLogger("copd.worker")
PAGE = 1000


def run_rel(run_id: int, *parts: str) -> str:
    """A run's path relative to the data dir (and to the store's root): `runs/<id>/...`."""
    return "/".join(("runs", str(run_id), *parts))


def local_rel(path: Path) -> str:
    """A local checkpoint folder's path relative to the data dir."""
    return Path(path).resolve().relative_to(get_settings().data_dir.resolve()).as_posix()


def fetch_inputs(store: CheckpointStore, run_id: int, spec: RunSpec, unit: Unit) -> list[str]:
    """Download (or find in the cache) every checkpoint the unit reads; returns their relative paths."""
    refs, _ = unit_inputs(spec, unit)
    root = run_root(run_id)
    fetched = []
    for policy, name in refs:
        rel = run_rel(run_id, "checkpoints", policy, name)
        try:
            store.fetch(rel, root / "checkpoints" / policy / name)
        except NotInStore as err:
            raise NotInStore(f"{unit.id} needs {policy}'s checkpoint {name}: {err}") from None
        fetched.append(rel)
    return fetched


def publish(store: CheckpointStore | None, spec: RunSpec, info: "CheckpointInfo") -> tuple["CheckpointInfo", bool]:
    """A checkpoint the unit just wrote, made ready to register: optimizer state dropped when the spec says
    `optimizer: none`, uploaded when there is a store (the registered URI is then the store's).
    Returns (what to register, whether its files hold optimizer state)."""
    local = Path(info.uri)
    if spec.checkpoints.optimizer == "none" and (new := drop_optimizer(local)) is not None:
        info = replace(info, sha256=new[0], bytes=new[1])
    optimizer = has_optimizer(local)
    if store is not None:
        info = replace(info, uri=store.upload(local, local_rel(local)))
    return info, optimizer


# ---- retention ---------------------------------------------------------------------------------

def all_checkpoints(api: Client, run_id: int) -> list[CheckpointPublic]:
    items: list[CheckpointPublic] = []
    while True:
        page = api.list_checkpoints(run_id, limit=PAGE, offset=len(items))
        items += page.items
        if len(items) >= page.total or not page.items:
            return items


def _name(c: CheckpointPublic) -> str:
    return c.uri.rstrip("/").rsplit("/", 1)[-1]


def _fork_needs(api: Client, run_id: int, items: list[CheckpointPublic]) -> set[tuple[str, str]]:
    """What the registered forks of this run start from (every expert of the fork, at the fork point)."""
    by_id = {c.id: c for c in items}
    refs: set[tuple[str, str]] = set()
    offset = 0
    while True:
        page = api.list_runs(limit=200, offset=offset)
        for run in page.items:
            if run.parent_run_id == run_id and run.parent_checkpoint_id in by_id:
                refs |= fork_refs(spec_of(run), _name(by_id[run.parent_checkpoint_id]))
        offset += len(page.items)
        if offset >= page.total or not page.items:
            return refs


def retention_plan(api: Client, run_id: int, spec: RunSpec, folder: RunFolder) -> RetentionPlan:
    """What the run's `checkpoints:` policy lets go now (nothing a unit not done or a fork needs)."""
    items = [c for c in all_checkpoints(api, run_id) if c.deleted_at is None]
    needed, with_optimizer = needed_by_units(spec, folder.done(spec))
    forks = _fork_needs(api, run_id, items)
    held = [Held(c, c.expert, _name(c), c.cycle, c.step, c.final, True if c.optimizer is None else c.optimizer)
            for c in items]
    return plan_retention(spec.checkpoints, held, needed=needed | forks, with_optimizer=with_optimizer | forks)


def _local(store: CheckpointStore | None, uri: str) -> tuple[Path | None, str | None]:
    """(the folder on this host, its path in the store) of a registered checkpoint URI."""
    rel = store.rel_of(uri) if store is not None else None
    if rel is not None:
        return get_settings().data_dir / rel, rel
    path = Path(uri)
    return (path if path.is_absolute() else None), None


def apply_plan(api: Client, run_id: int, plan: RetentionPlan, store: CheckpointStore | None,
               reason: str = "retention") -> None:
    """Delete (store first, then this host's copy, then the record) and drop optimizer states. A checkpoint
    held in a store other than this process's is refused before anything is touched."""
    for h in plan.delete + plan.drop_optimizer:
        uri = h.key.uri
        if "://" in uri and not uri.startswith("file://") and (store is None or store.rel_of(uri) is None):
            raise StoreError(f"checkpoint {h.key.id} is held in {uri.rsplit('/runs/', 1)[0]}: set "
                             "COPD_CHECKPOINT_URL to that store (and its credentials) to collect it")
    for h in plan.delete:
        c: CheckpointPublic = h.key
        local, rel = _local(store, c.uri)
        if rel is not None:
            store.delete(rel)
        if local is not None:
            shutil.rmtree(local, ignore_errors=True)
        api.mark_deleted(run_id, c.id, reason=reason)
    for h in plan.drop_optimizer:
        c = h.key
        local, rel = _local(store, c.uri)
        new = drop_optimizer(local) if local is not None and local.is_dir() else None
        if rel is not None:
            new = store.drop_optimizer(rel) or new
        if new is None and local is not None and local.is_dir():
            new = (c.sha256, folder_bytes(local))
        if new is not None:
            api.register_checkpoint(run_id, expert=c.expert, cycle=c.cycle, step=c.step, uri=c.uri,
                                    sha256=new[0], bytes=new[1], metrics=c.metrics, final=c.final, optimizer=False)


def describe(plan: RetentionPlan) -> list[str]:
    """One line per checkpoint the plan touches (what `copd checkpoints gc --dry-run` prints)."""
    lines = [f"delete  {h.key.id:>6}  {h.policy:<12} {h.name:<12} {h.key.bytes / 1e6:9.1f} MB  {h.key.uri}"
             for h in plan.delete]
    lines += [f"drop optimizer state  {h.key.id:>6}  {h.policy:<12} {h.name:<12}  {h.key.uri}"
              for h in plan.drop_optimizer]
    return lines
