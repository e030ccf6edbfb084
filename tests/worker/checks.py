"""What a finished run must look like through the API and in its folder (shared by the end-to-end tests)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from copd.client import Client
from trainer.checkpoint import manifest_sha, verify_checkpoint
from trainer.schedule import plan
from trainer.spec import parse_spec

TIMING = ("tokens/", "memory/")  # throughput and process memory depend on the machine, not on the seed

Points = dict[tuple[str | None, str, int], tuple[float, float | None]]  # (expert, key, step) → (value, wall_time)


def api_points(api: Client, run_id: int) -> Points:
    """Every metric point of a run; fails on a (expert, key, step) returned twice."""
    out: Points = {}
    for series in api.get_metrics(run_id, max_points=100_000).series:
        for p in series.points:
            key = (series.expert, series.key, p.step)
            assert key not in out, f"point {key} returned twice"
            out[key] = (p.value, p.wall_time)
    return out


def jsonl_points(path: Path) -> dict[tuple[str | None, str, int], float]:
    """metrics.jsonl of `copd train`, keyed like the API; fails on a point written twice."""
    out: dict[tuple[str | None, str, int], float] = {}
    for line in path.read_text().splitlines():
        r = json.loads(line)
        key = (r["expert"], r["key"], r["step"])
        assert key not in out, f"reference point {key} written twice"
        out[key] = r["value"]
    return out


def check_completed_run(api: Client, run_id: int, spec_data: dict[str, Any], run_root: Path) -> Points:
    """Every unit ran; every expert (and the merge) has accuracy on every domain; checkpoints are registered,
    intact and load; the merged model is the final one."""
    from trainer.models import load_pretrained

    spec = parse_spec(spec_data)
    run = api.get_run(run_id)
    assert run.status == "completed" and run.progress == 1.0
    assert all(e.status == "done" for e in run.experts), run.experts
    missing = [u.id for u in plan(spec) if not (run_root / "units" / f"{u.id.replace('/', '_')}.done").exists()]
    assert not missing, f"units that never finished: {missing}"

    points = api_points(api, run_id)
    per_cycle = spec.schedule.rl_steps + spec.schedule.opd_steps
    cycles = spec.schedule.cycles
    for domain in spec.expert_names:
        for e in spec.expert_names:
            steps = sorted(s for (x, k, s) in points if x == e and k == f"acc/{domain}")
            assert steps == [c * per_cycle for c in range(cycles + 1)], (e, domain, steps)
        assert ("merged", f"acc/{domain}", cycles * per_cycle) in points
    for e in spec.expert_names:
        trained = sorted(s for (x, k, s) in points if x == e and k == "loss/grpo")
        assert trained == list(range(1, cycles * per_cycle + 1)), (e, trained)

    ckpts = api.list_checkpoints(run_id, limit=1000).items
    expert_cycles = [(e, c) for e in spec.expert_names for c in range(1, cycles + 1)]
    expected = {(e, c, c * per_cycle - spec.schedule.opd_steps) for e, c in expert_cycles}
    expected |= {(e, c, c * per_cycle) for e, c in expert_cycles}
    expected.add(("merged", cycles, cycles * per_cycle))
    assert {(c.expert, c.cycle, c.step) for c in ckpts} == expected
    for c in ckpts:
        assert verify_checkpoint(Path(c.uri)) and manifest_sha(Path(c.uri)) == c.sha256, c
    model, _ = load_pretrained(next(c.uri for c in ckpts if c.expert == "merged"))
    assert sum(p.numel() for p in model.parameters()) > 0
    for c in ckpts[:: max(1, len(ckpts) // 4)]:  # a sample of the experts' checkpoints reloads too
        load_pretrained(c.uri)
    finals = [c for c in ckpts if c.final]
    assert [(c.expert, Path(c.uri)) for c in finals] == [("merged", run_root / "final")]
    return points


def check_knob_applied_after_patch(api: Client, run_id: int, spec_data: dict[str, Any], points: Points,
                                   t_patch: float, version: int, beta: float) -> None:
    """The PATCHed β took effect at a step computed after the PATCH, was reported there, and was used."""
    spec = parse_spec(spec_data)
    entry = next(h for h in api.get_knobs(run_id).history if h.version == version)
    assert entry.applied is not None, "the knob change was never reported as applied"
    at_applied = [(e, wall) for (e, k, s), (v, wall) in points.items()
                  if k == "knobs/version" and s == entry.applied.step and v == version]
    assert at_applied, f"no step {entry.applied.step} ran with knobs version {version}"
    assert all(wall is not None and wall > t_patch for _, wall in at_applied)
    for (e, k, s), (v, wall) in points.items():
        if k == "knobs/version" and wall is not None and wall < t_patch:
            assert v < version, f"{e} step {s} used version {v} before the PATCH"
    used = 0
    for e in spec.expert_names:
        for (x, k, s), (b, _) in points.items():
            if x == e and k == "opd/beta":
                v = points[(e, "knobs/version", s)][0]
                assert b == (beta if v >= version else spec.opd.beta), (e, s, b, v)
                used += v >= version
    assert used, "no OPD step ran with the new beta"
