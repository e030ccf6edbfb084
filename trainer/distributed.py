"""One expert on several GPUs: FSDP primitives, and the launcher that runs a training unit across processes.

An expert whose spec asks for `compute.gpus_per_expert: N > 1` trains with FSDP (torch's FSDP2,
`fully_shard` per decoder layer plus the root) across N processes started by `python -m
torch.distributed.run` (`launch` below; the entry point is `trainer.dist_unit`). Why not accelerate:
docs/multi-gpu.md.

What keeps N processes equal to one (the math):
  - every rank takes `share(prompts)` = prompts[rank::N] of the step's draw (all ranks draw the same list with
    the same seed), so every rank holds whole GRPO groups and the same number of rows;
  - each rank's loss is the mean over ITS rows (`update_step` unchanged); FSDP's reduce-scatter averages the
    gradients over the N ranks, so the gradient is the mean over all rows, as in one process. This needs equal
    row counts per rank: `prompts_per_step` (and `opd.prompts_per_step`) must be multiples of N (`check_shares`);
  - `clip_grad_norm_` on the sharded (DTensor) gradients computes the global norm.

Sampling runs on the gathered weights (`gathered`): every layer unsharded at once, no collective per token
(ranks sample different lengths), then resharded for the update.

The parent (`launch`) keeps the real Reporter: rank 0 writes what it reports as JSON lines into the job folder,
the parent replays them; the parent writes the current knobs and the stop flag into `control.json`, which rank
0 reads at each step boundary and broadcasts.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Sequence, TypeVar

import torch
import torch.distributed as dist

from contract import metrics as M
from contract.spec import Knobs
from trainer.steps import Cancelled

T = TypeVar("T")

CONTROL = "control.json"   # parent → rank 0: {"version", "knobs", "stop"}
EVENTS = "events.jsonl"    # rank 0 → parent: one JSON object per reporter call
JOB = "job.json"           # parent → every rank: the spec, the layout, the unit
LOG = "log.txt"            # the launcher's (and every rank's) stdout and stderr


class DistributedError(RuntimeError):
    """A distributed unit failed; the message ends with the tail of the processes' output."""


# -- process group --------------------------------------------------------------------------------
@dataclass(frozen=True)
class Dist:
    """This process's place in the group."""

    rank: int
    world: int
    local_rank: int
    device: torch.device

    @property
    def main(self) -> bool:
        return self.rank == 0


def init() -> Dist:
    """Join the process group the launcher describes (RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR/PORT).

    nccl with one GPU per process (cuda:LOCAL_RANK) when CUDA is available, else gloo on the CPU.
    """
    rank, world = int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))
    local = int(os.environ.get("LOCAL_RANK", rank))
    if torch.cuda.is_available():
        torch.cuda.set_device(local)
        device = torch.device("cuda", local)
        backend = "cpu:gloo,cuda:nccl"  # gloo for CPU tensors (object collectives, CPU-offloaded state dicts)
    else:
        device, backend = torch.device("cpu"), "gloo"
    if not dist.is_initialized():
        dist.init_process_group(backend, rank=rank, world_size=world)
    return Dist(rank, world, local, device)


def close(*, barrier: bool = True) -> None:
    """Leave the group. The barrier first (on the success path): a rank that tears gloo down while a peer
    still works (rank 0 saving) aborted ~1 run in 10 here ("terminate called without an active exception")."""
    if dist.is_initialized():
        if barrier:
            dist.barrier()
        dist.destroy_process_group()


def hard_exit(code: int = 0) -> None:
    """End a rank after `close`, skipping the interpreter's teardown: there, ~1 CPU/gloo run in 15 aborted
    ("terminate called without an active exception", SIGABRT) after every rank had left the group and all
    work was written, which the launcher reports as a failed unit."""
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


# -- sharding -------------------------------------------------------------------------------------
def _blocks(model) -> list[torch.nn.Module]:
    """The repeated blocks to shard one by one: the classes transformers lists in `_no_split_modules`."""
    names = set(getattr(model, "_no_split_modules", None) or [])
    blocks = [m for m in model.modules() if type(m).__name__ in names]
    if not blocks and hasattr(getattr(model, "model", None), "layers"):
        blocks = list(model.model.layers)
    return blocks


def shard(model, d: Dist):
    """FSDP2: `fully_shard` every decoder layer, then the root (embeddings, final norm, tied head).

    The model's parameters become DTensors sharded over the ranks (dim 0); forward/backward gather one
    layer at a time and gradients are reduce-scattered with an average over the ranks.
    """
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard

    mesh = init_device_mesh(d.device.type, (d.world,))
    model.to(d.device)
    for block in _blocks(model):
        fully_shard(block, mesh=mesh)
    fully_shard(model, mesh=mesh)
    return model


def _fsdp_modules(model) -> list:
    from torch.distributed.fsdp import FSDPModule

    return [m for m in model.modules() if isinstance(m, FSDPModule)]


@contextmanager
def gathered(model) -> Iterator[None]:
    """Every parameter unsharded (plain tensors) inside the block: sampling runs on the full weights.

    No collective runs inside (forward hooks see the groups unsharded and, with reshard-after-forward
    off, leave them so), so ranks may decode different numbers of tokens. Costs the full weights' memory.
    """
    mods = _fsdp_modules(model)
    for m in mods:
        m.unshard()
    for m in mods:
        m.set_reshard_after_forward(False, recurse=False)
    try:
        yield
    finally:
        for m in mods:
            m.reshard()
            m.set_reshard_after_forward(m is not model, recurse=False)  # FSDP's default: the root keeps its weights


# -- state dicts (save_pretrained / optimizer.pt compatible) --------------------------------------
def full_state_dict(model) -> dict[str, torch.Tensor]:
    """The whole model's state dict on CPU on rank 0 (the same keys as the unsharded model's); {} elsewhere."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    return get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))


def _param_names(model) -> list[str]:
    """Parameter names in `model.parameters()` order (tied weights once): index i is the optimizer's param id i."""
    return [n for n, _ in model.named_parameters()]


def full_optimizer_state(model, optimizer) -> dict[str, Any]:
    """The optimizer's state gathered on rank 0 in `torch.optim` form (param ids 0..n-1, as one process
    saves it: optimizer.pt stays interchangeable); {} on the other ranks."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_optimizer_state_dict

    osd = get_optimizer_state_dict(model, optimizer, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    if not osd:
        return {}
    ids = {n: i for i, n in enumerate(_param_names(model))}
    return {"state": {ids[n]: s for n, s in osd["state"].items()},
            "param_groups": [{**g, "params": [ids[n] for n in g["params"]]} for g in osd["param_groups"]]}


def load_optimizer_state(model, optimizer, state: dict[str, Any]) -> None:
    """Load a one-process `optimizer.state_dict()` (param ids) into the optimizer of the sharded model."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_optimizer_state_dict

    names = _param_names(model)
    osd = {"state": {names[int(i)]: s for i, s in state["state"].items()},
           "param_groups": [{**g, "params": [names[int(i)] for i in g["params"]]} for g in state["param_groups"]]}
    set_optimizer_state_dict(model, optimizer, osd, options=StateDictOptions(full_state_dict=True))


class FrozenOptimizer:
    """Stands in for an optimizer where only `state_dict()` is read (trainer.checkpoint.save_checkpoint)."""

    def __init__(self, state: dict[str, Any]):
        self._state = state

    def state_dict(self) -> dict[str, Any]:
        return self._state


# -- small collectives ----------------------------------------------------------------------------
def broadcast(obj: T, d: Dist) -> T:
    """Rank 0's Python object on every rank (knobs, the stop flag)."""
    if d.world == 1:
        return obj
    box = [obj if d.main else None]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def reduce_metrics(values: dict[str, float], d: Dist) -> dict[str, float]:
    """Step metrics over the ranks, each by its registered reduction (contract.metrics): the mean (equal
    rows per rank: the one-process value of a batch mean), the sum for counts and rates, the max for memory."""
    if d.world == 1:
        return dict(values)
    every: list[dict[str, float] | None] = [None] * d.world
    dist.all_gather_object(every, dict(values))
    return {key: M.reduce(key, [v[key] for v in every if v is not None and key in v])
            for key in every[0]}  # type: ignore[union-attr]


def share(items: Sequence[T], d: Dist) -> list[T]:
    """This rank's rows of a step's prompt list: items[rank::world] (whole prompts, so whole GRPO groups)."""
    return list(items[d.rank:: d.world])


def check_shares(spec, world: int) -> None:
    """Equal rows per rank is what makes N processes compute the one-process gradient; refuse otherwise."""
    bad = [f"{name}={n}" for name, n in (("grpo.prompts_per_step", spec.grpo.prompts_per_step),
                                         ("opd.prompts_per_step", spec.opd.prompts_per_step)) if n % world]
    if bad:
        raise ValueError(f"compute.gpus_per_expert={world}: {', '.join(bad)} must be multiples of it "
                         "(every process takes the same number of prompts)")


# -- the parent side ------------------------------------------------------------------------------
def _write_json(path: Path, data: Any) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(data))
    os.replace(tmp, path)


def _tail(path: Path, chars: int = 4000) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return ""
    lines = [ln for ln in text.splitlines() if "Warning" not in ln and "warnings.warn" not in ln]
    return "\n".join(lines)[-chars:]


def command(job: Path, nproc: int) -> list[str]:
    """The launcher command line: torchrun, standalone (a free local port), no restarts."""
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}",
            "--max-restarts=0", "-m", "trainer.dist_unit", str(job)]


def child_env() -> dict[str, str]:
    """The parent's environment, one OpenMP thread per rank, and this checkout importable."""
    env = dict(os.environ)
    env.setdefault("OMP_NUM_THREADS", "1")
    root = str(Path(__file__).resolve().parent.parent)
    env["PYTHONPATH"] = root + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    return env


def replay(record: dict[str, Any], reporter) -> Any:
    """Hand one line written by rank 0 to the parent's reporter; returns a CheckpointInfo for a checkpoint."""
    from trainer.checkpoint import CheckpointInfo

    kind = record["t"]
    if kind == "metrics":
        reporter.metrics(record["expert"], record["cycle"], record["step"], record["values"])
    elif kind == "knobs_applied":
        reporter.knobs_applied(record["version"], record["cycle"], record["step"])
    elif kind == "progress":
        reporter.progress(record["unit"], record["step"], record["total"], record["fields"])
    elif kind == "event":
        reporter.event(record["message"], level=record.get("level", "info"), expert=record.get("expert"))
    elif kind == "checkpoint":
        info = CheckpointInfo(**record["info"])
        reporter.checkpoint(info)
        return info
    return None


def launch(ctx, unit, reporter, nproc: int, *, poll_s: float = 0.1, control_s: float = 2.0,
           timeout_s: float | None = None, keep: bool = False):
    """Run one training unit (rl / opd) with FSDP across `nproc` processes; returns its CheckpointInfo.

    Blocks until the processes exit. Meanwhile replays rank 0's reports into `reporter` (every `poll_s`) and
    passes the reporter's knobs and stop flag down: after every step the ranks report, and every `control_s`
    otherwise (the REST reporter's `knobs()` is a GET: not every poll). Raises `trainer.steps.Cancelled` when the run was cancelled,
    DistributedError (with the processes' output tail) when they fail.
    """
    assert unit.kind in ("rl", "opd") and unit.expert is not None, unit
    check_shares(ctx.spec, nproc)
    if torch.cuda.is_available() and torch.cuda.device_count() < nproc:
        raise DistributedError(f"compute.gpus_per_expert={nproc}, but this worker sees {torch.cuda.device_count()} "
                               "GPU(s): start it with --gpu listing as many (e.g. --gpu 0,1)")
    job = Path(tempfile.mkdtemp(prefix=f"copd-fsdp-{unit.expert}-"))
    _write_json(job / JOB, {"spec": ctx.spec.model_dump(mode="json"), "root": str(ctx.layout.root),
                            "base": str(ctx.layout.base), "unit": unit.id, "nproc": nproc})
    control: tuple[int, Any, bool] | None = None

    def push_control() -> None:
        nonlocal control
        version, knobs = reporter.knobs()
        knobs = knobs.model_dump(mode="json") if isinstance(knobs, Knobs) else dict(knobs)
        now = (version, knobs, bool(reporter.should_stop()))
        if now != control:
            control = now
            _write_json(job / CONTROL, {"version": now[0], "knobs": now[1], "stop": now[2]})

    push_control()
    (job / EVENTS).touch()
    info, cancelled, offset, stepped = None, False, 0, False

    def pump() -> None:
        nonlocal info, cancelled, offset, stepped
        with open(job / EVENTS, "rb") as f:
            f.seek(offset)
            data = f.read()
        end = data.rfind(b"\n") + 1  # whole lines only; a partial one waits for the next read
        offset += end
        for line in data[:end].splitlines():
            record = json.loads(line)
            cancelled = cancelled or record["t"] == "cancelled"
            stepped = stepped or record["t"] == "progress"
            got = replay(record, reporter)
            info = got if got is not None else info

    t0 = t_control = time.monotonic()
    with open(job / LOG, "wb") as log:
        proc = subprocess.Popen(command(job, nproc), stdout=log, stderr=subprocess.STDOUT, env=child_env(),
                                start_new_session=True)
    try:
        while proc.poll() is None:
            pump()
            if stepped or time.monotonic() - t_control >= control_s:
                push_control()
                stepped, t_control = False, time.monotonic()
            if timeout_s is not None and time.monotonic() - t0 > timeout_s:
                raise DistributedError(f"{unit.id}: no result after {timeout_s:.0f}s\n{_tail(job / LOG)}")
            time.sleep(poll_s)
        pump()
    except BaseException:
        _stop(proc)
        raise
    if cancelled:
        shutil.rmtree(job, ignore_errors=True)
        raise Cancelled(unit.id)
    if proc.returncode != 0 or info is None:
        errors = sorted(job.glob("error-rank*.txt"))  # a rank's own traceback beats the launcher's summary
        detail = errors[0].read_text(errors="replace")[-4000:] if errors else _tail(job / LOG)
        raise DistributedError(f"{unit.id}: {nproc} FSDP processes failed (exit {proc.returncode}); "
                               f"output in {job / LOG}; {errors[0].stem if errors else 'tail'}:\n{detail}")
    if not keep:
        shutil.rmtree(job, ignore_errors=True)
    return info


def _stop(proc: subprocess.Popen) -> None:
    """Terminate the launcher and its ranks (their own process group), then kill what is left."""
    if proc.poll() is not None:
        return
    try:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=15)
    except (ProcessLookupError, subprocess.TimeoutExpired):
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        proc.wait()
