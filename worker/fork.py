"""A forked run starts from a checkpoint of its parent: copy the parent's experts at that point, mark the
units before it done, and let the fork continue from there (DESIGN: "forked from any checkpoint, lineage kept").

Forking from `c<c>-rl` re-runs Phase II of cycle c; from `c<c>-opd` the fork evaluates cycle c, then goes on
with cycle c+1. Every expert of the fork must exist in the parent (their peers are needed as teachers).
"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

from contract.client import Client
from contract.schemas import RunPublic
from contract.plan import plan
from contract.spec import RunSpec
from worker.runfolder import RunFolder, write_atomic
from worker.runs import run_root

SEEDED = "fork.json"


class ForkError(ValueError):
    """The fork cannot start from its parent's checkpoint (one line saying why)."""


def seed_fork(api: Client, run: RunPublic, spec: RunSpec, folder: RunFolder) -> None:
    """Once per forked run: the parent's checkpoints at the fork point, and done markers before it."""
    if run.parent_checkpoint_id is None or (folder.root / SEEDED).exists():
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
    parent = run_root(parent_id) / "checkpoints"
    for expert in spec.expert_names:
        src = parent / expert / f"c{cycle}-{kind}"
        if not (src / "manifest.json").exists():
            raise ForkError(f"run {parent_id} has no checkpoint of expert '{expert}' at {src.name} ({src})")
        dst = folder.root / "checkpoints" / expert / src.name
        if not dst.exists():
            tmp = dst.with_name(f".{dst.name}.fork")
            shutil.rmtree(tmp, ignore_errors=True)
            shutil.copytree(src, tmp)
            tmp.rename(dst)
    done_kinds = {"rl"} if kind == "rl" else {"rl", "opd"}
    for unit in plan(spec):
        if unit.kind != "merge" and (unit.cycle < cycle or (unit.cycle == cycle and unit.kind in done_kinds)):
            folder.mark_done(unit.id, {"forked_from": {"run": parent_id, "checkpoint": ckpt.id}})
    write_atomic(folder.root / SEEDED, json.dumps({"parent_run_id": parent_id, "checkpoint_id": ckpt.id,
                                                   "cycle": cycle, "phase": kind}))
