"""Read each tracker's export back with that library's own reader (or, for W&B, its own record schema)."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

BLOCK = 32 * 1024   # the .wandb transaction log: LevelDB's log format after a 7-byte ':W&B' header
HEADER = 7


def wandb_records(path: Path):
    """Every record of an offline run's .wandb file, parsed with wandb's protobuf `Record`."""
    from wandb.proto import wandb_internal_pb2 as pb

    data = Path(path).read_bytes()
    assert data[:4] == b":W&B", "not a wandb transaction log"
    pos, pending = HEADER, b""
    while pos + 7 <= len(data):
        left = BLOCK - pos % BLOCK
        if left < 7:          # a block's tail too short for a header is padding
            pos += left
            continue
        length = int.from_bytes(data[pos + 4:pos + 6], "little")
        kind = data[pos + 6]
        chunk = data[pos + 7:pos + 7 + length]
        pos += 7 + length
        if kind == 0 and length == 0:
            continue
        pending = chunk if kind in (1, 2) else pending + chunk
        if kind in (1, 4):    # FULL or LAST: one whole record
            r = pb.Record()
            r.ParseFromString(pending)
            yield r
            pending = b""


def wandb_points(run_dir: Path) -> tuple[Counter, dict]:
    """(Counter of (series, step, value) over the history rows, the run's config) of an offline run folder."""
    files = sorted(Path(run_dir).glob("offline-run-*/*.wandb"))
    assert files, f"no offline run under {run_dir}"
    points: Counter = Counter()
    config: dict = {}
    for f in files:
        for r in wandb_records(f):
            kind = r.WhichOneof("record_type")
            if kind == "history":
                row = {i.key or "/".join(i.nested_key): json.loads(i.value_json) for i in r.history.item}
                for k, v in row.items():
                    owner = k.split("/", 1)[0]
                    if k != f"{owner}/step" and isinstance(v, (int, float)) and f"{owner}/step" in row:
                        points[(k, int(row[f"{owner}/step"]), float(v))] += 1
            elif kind == "run":
                config.update({i.key: json.loads(i.value_json) for i in r.run.config.update})
            elif kind == "config":
                config.update({i.key: json.loads(i.value_json) for i in r.config.update})
    return points, config


def mlflow_points(tracking_uri: str, experiment: str = "copd") -> tuple[Counter, dict, dict]:
    """(Counter of (series, step, value), tags, params) of the one run of the experiment, by MlflowClient."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=tracking_uri)
    exp = client.get_experiment_by_name(experiment)
    runs = client.search_runs([exp.experiment_id])
    assert len(runs) == 1, [r.info.run_id for r in runs]
    run = runs[0]
    points: Counter = Counter()
    for key in run.data.metrics:
        for m in client.get_metric_history(run.info.run_id, key):
            points[(key, int(m.step), float(m.value))] += 1
    return points, dict(run.data.tags), dict(run.data.params) | {"_status": run.info.status}


def tensorboard_points(folder: Path) -> tuple[Counter, list[str]]:
    """(Counter of (series, step, value), text summaries) by TensorBoard's EventAccumulator."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from tensorboard.util import tensor_util

    ea = EventAccumulator(str(folder), size_guidance={"tensors": 0})
    ea.Reload()
    points: Counter = Counter()
    texts: list[str] = []
    for tag in ea.Tags()["tensors"]:
        for e in ea.Tensors(tag):
            value = tensor_util.make_ndarray(e.tensor_proto)
            if value.dtype.kind in "SO":
                texts.append(f"{tag}: {value.item().decode()}")
            else:
                points[(tag, int(e.step), float(value))] += 1
    return points, texts
