"""A run on a verl-format parquet with a reward plugin that raises: the unit goes on, errors are counted."""

from __future__ import annotations

import json

import pyarrow as pa
import pyarrow.parquet as pq

from contract import metrics as M
from tests.trainer.conftest import tiny_spec
from trainer.local import train_local

PLUGIN = '''
def compute_score(data_source, solution_str, ground_truth, extra_info=None):
    if extra_info["index"] % 2:
        raise ValueError("odd rows are broken")
    return {"score": float(solution_str.strip() == ground_truth), "even": 1.0}
'''


def test_dataset_domain_with_a_raising_plugin_trains(tmp_path, model_cache):
    rows = [{"data_source": "sums", "prompt": [{"role": "user", "content": f"{a}+{b}="}],
             "reward_model": {"ground_truth": str(a + b)}, "extra_info": {"index": i}}
            for i, (a, b) in enumerate((a, b) for a in range(10, 20) for b in range(10, 14))]
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "train.parquet")
    (tmp_path / "reward.py").write_text(PLUGIN)
    domain = {"type": "dataset", "path": str(tmp_path / "train.parquet"), "answer_key": "reward_model.ground_truth",
              "verifier": {"function": f"{tmp_path}/reward.py:compute_score"}}
    spec = tiny_spec(experts=[{"name": "sums", "domain": domain}, {"name": "image", "domain": "builtin:grid"}],
                     schedule={"cycles": 1, "rl_steps": 2, "opd_steps": 0}, strategy="independent")
    out = tmp_path / "run"
    train_local(spec, out, model_cache, log_fn=lambda m: None)
    points = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    errors = [p["value"] for p in points if p["expert"] == "sums" and p["key"] == M.REWARD_ERRORS.key]
    even = [p["value"] for p in points if p["expert"] == "sums" and p["key"] == "reward/even"]
    # 4 prompts x 4 samples a step; odd-index rows (half the file) raise, each of their samples counts once
    assert len(errors) == 2 and all(e == int(e) and 0 <= e <= 16 and e % 4 == 0 for e in errors) and sum(errors) > 0
    assert len(even) == 2 and all(v == 1.0 for v in even)  # the plugin's extra key, over the samples it scored
    assert not any(p["key"] == M.REWARD_ERRORS.key for p in points if p["expert"] == "image")
    events = (out / "events.jsonl").read_text()
    assert events.count("ValueError: odd rows are broken") == 1 and "reward plugin" in events  # the first traceback, once
