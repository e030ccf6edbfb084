"""A forked run starts from a checkpoint of its parent: copy the parent's experts at that point, mark the
units before it done, and let the fork continue from there (DESIGN: "forked from any checkpoint, lineage kept").

Forking from `c<c>-rl` re-runs Phase II of cycle c; from `c<c>-opd` the fork evaluates cycle c, then goes on
with cycle c+1. Every expert of the fork must exist in the parent (their peers are needed as teachers).
"""

from __future__ import annotations

import re
import shutil
from pathlib import Path

from contract.client import Client
from contract.schemas import RunPublic
from contract.plan import plan
from contract.spec import RunSpec
from worker.runfolder import RunFolder
from worker.runs import checkpoint_store, run_root

SEEDED = "fork.json"  # the seed marker's file (the API's `fork` marker with a checkpoint store)


class ForkError(ValueError):
    """The fork cannot start from its parent's checkpoint (one line saying why)."""


def seed_fork(api: Client, run: RunPublic, spec: RunSpec, folder: RunFolder) -> None:
    """Once per forked run: the parent's checkpoints at the fork point, and done markers before it."""
    if run.parent_checkpoint_id is None or folder.seeded():
        return
    parent_id = int(run.parent_run_id)
    ckpt = api.get_checkpoint(parent_id, run.parent_checkpoint_id)
    m = re.fullmatch(r"c(\d+)-(rl|opd)", Path(ckpt.uri).name)
    if m is None:
        raise ForkError(f"checkpoint {ckpt.id} of run {parent_id} ({ckpt.expert}, {Path(ckpt.uri).name}) is not an "
                        "expert's end of Phase I or II; fork from one of those")
    cycle, kind = int(m.group(1)), m.group(2)
    if cycle > spec.schedule.cycles:
        raise ForkError(f"schedule.cycles: the fork has {spec.schedule.cycles} cycles but starts after cycle {cycle}")
    store = checkpoint_store()
    for expert in spec.expert_names:
        if store is not None:
            _copy_in_store(store, parent_id, run.id, expert, f"c{cycle}-{kind}")
        else:
            _copy_local(parent_id, folder, expert, f"c{cycle}-{kind}")
    done_kinds = {"rl"} if kind == "rl" else {"rl", "opd"}
    for unit in plan(spec):
        if unit.kind != "merge" and (unit.cycle < cycle or (unit.cycle == cycle and unit.kind in done_kinds)):
            folder.mark_done(unit.id, {"forked_from": {"run": parent_id, "checkpoint": ckpt.id}})
    folder.mark_seeded({"parent_run_id": parent_id, "checkpoint_id": ckpt.id, "cycle": cycle, "phase": kind})


def _copy_local(parent_id: int, folder: RunFolder, expert: str, name: str) -> None:
    src = run_root(parent_id) / "checkpoints" / expert / name
    if not (src / "manifest.json").exists():
        raise ForkError(f"run {parent_id} has no checkpoint of expert '{expert}' at {name} ({src})")
    dst = folder.root / "checkpoints" / expert / name
    if not dst.exists():
        tmp = dst.with_name(f".{dst.name}.fork")
        shutil.rmtree(tmp, ignore_errors=True)
        shutil.copytree(src, tmp)
        tmp.rename(dst)


def _copy_in_store(store, parent_id: int, fork_id: int, expert: str, name: str) -> None:
    """The parent's checkpoint copied to the fork's place in the store (manifest last), where every host finds it."""
    src, dst = (f"runs/{r}/checkpoints/{expert}/{name}" for r in (parent_id, fork_id))
    if store.manifest(src) is None:
        raise ForkError(f"run {parent_id} has no checkpoint of expert '{expert}' at {name} in the store "
                        f"{store.uri(src)} (deleted by retention?)")
    if store.manifest(dst) != store.manifest(src):
        store.copy(src, dst)
