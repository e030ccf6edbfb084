"""Seed a running copd API over REST: runs in every state, trainer-shaped metrics, knobs, checkpoints, events.

Metric layout follows docs/trainer.md: per expert, evaluations at cycle 0 (step 0) and at the end of every
cycle (`acc/<domain>` for every domain, `overlap/<other>` and `overlap_top1/<other>` from cycle 1 on), and
per training step `reward/mean`, `opd/kl` (Phase II only), `phase` (1 or 2), `knobs/version`,
`rollout/logp_gap` and `memory/peak_gb`; the merged
model's `acc/<domain>` and `acc_mean` at the end; run-level `overlap/mean`, `overlap_top1/mean` and their
after-Phase-I twins `overlap_rl/mean`, `overlap_top1_rl/mean` per cycle (step = cycle).
"""

from __future__ import annotations

import base64
import io
import math
import random
from dataclasses import dataclass, field
from typing import Any

import httpx

EXPERTS = [("text", "builtin:arith"), ("image", "builtin:grid"), ("video", "builtin:frames")]


def spec(name: str, strategy: str = "copd", cycles: int = 2, rl_steps: int = 3, opd_steps: int = 2,
         **more: Any) -> dict[str, Any]:
    return {"name": name, "strategy": strategy, "experts": [{"name": n, "domain": d} for n, d in EXPERTS],
            "schedule": {"cycles": cycles, "rl_steps": rl_steps, "opd_steps": opd_steps}, **more}


@dataclass
class Seeder:
    """Talks to the API as the admin (who may do everything a worker does)."""

    http: httpx.Client
    ids: dict[str, int] = field(default_factory=dict)

    def ok(self, r: httpx.Response) -> Any:
        assert r.status_code < 300, f"{r.request.method} {r.request.url}: {r.status_code} {r.text}"
        return r.json() if r.content else None

    def create(self, name: str, **kw: Any) -> int:
        run = self.ok(self.http.post("/runs", json=spec(name, **kw)))
        self.ids[name] = run["id"]
        return run["id"]

    def to(self, run_id: int, *steps: str) -> None:
        """Move a run along: 'start', 'pause', … are user actions; 'running' etc. are worker reports."""
        for s in steps:
            if s in ("start", "pause", "resume", "cancel"):
                self.ok(self.http.post(f"/runs/{run_id}/{s}"))
            else:
                self.ok(self.http.post(f"/runs/{run_id}/status", json={"status": s}))

    def metrics(self, run_id: int, points: list[dict[str, Any]]) -> None:
        for i in range(0, len(points), 10_000):
            self.ok(self.http.post(f"/runs/{run_id}/metrics", json={"points": points[i:i + 10_000]}))

    def progress(self, run_id: int, cycle: int, phase: str, units: dict[str, str], progress: float) -> None:
        if not units:
            body = {"cycle": cycle, "phase": phase, "progress": progress}
            self.ok(self.http.post(f"/runs/{run_id}/progress", json=body))
        for expert, unit in units.items():
            self.ok(self.http.post(f"/runs/{run_id}/progress", json={
                "cycle": cycle, "phase": phase, "expert": expert, "unit": unit, "progress": progress}))

    def knobs(self, run_id: int, changes: dict[str, Any], applied_at: tuple[int, int] | None = None) -> int:
        now = self.ok(self.http.get(f"/runs/{run_id}/knobs"))["version"]
        body = self.ok(self.http.patch(f"/runs/{run_id}/knobs", json={"expected_version": now, "changes": changes}))
        if applied_at:
            self.ok(self.http.post(f"/runs/{run_id}/knobs/{body['version']}/applied",
                                   json={"cycle": applied_at[0], "step": applied_at[1]}))
        return body["version"]

    def checkpoint(self, run_id: int, expert: str, cycle: int, step: int, metrics: dict[str, float],
                   final: bool = False) -> None:
        self.ok(self.http.post(f"/runs/{run_id}/checkpoints", json={
            "expert": expert, "cycle": cycle, "step": step, "uri": f"file:///data/ckpt/run{run_id}/c{cycle}/{expert}",
            "sha256": f"{run_id:08x}{cycle:08x}{step:08x}".ljust(64, "a"), "bytes": 3_400_000 + 1000 * step,
            "metrics": metrics, "final": final}))

    def samples(self, run_id: int, cycle: int, samples: list[dict[str, Any]]) -> None:
        self.ok(self.http.post(f"/runs/{run_id}/samples", json={"cycle": cycle, "samples": samples}))

    def event(self, run_id: int, message: str, level: str = "info", expert: str | None = None) -> None:
        self.ok(self.http.post(f"/runs/{run_id}/events", json={"level": level, "message": message, "expert": expert}))


def training_metrics(cycles_done: int, rl_steps: int, opd_steps: int, extra_steps: int = 0, seed: int = 0,
                     lift: float = 0.06, merged: bool = False, strength: float = 1.0) -> list[dict[str, Any]]:
    """Points for `cycles_done` finished cycles (plus `extra_steps` into the next) of the three experts.

    Accuracy rises on the own domain and follows on the others; overlap dips after Phase I and recovers.
    `strength` scales how much the experts learn from each other (CoPD > independent).
    """
    rng = random.Random(seed)
    names = [n for n, _ in EXPERTS]
    per_cycle = rl_steps + opd_steps
    pts: list[dict[str, Any]] = []
    base = {"text": 0.30, "image": 0.25, "video": 0.20}

    def acc(expert: str, domain: str, cycle: int) -> float:
        own = 1.0 if expert == domain else 0.45 * strength
        return round(min(0.98, base[domain] + lift * own * cycle + rng.uniform(-0.01, 0.01)), 4)

    for cycle in range(cycles_done + 1):
        eval_step = cycle * per_cycle
        for i in names:
            for d in names:
                pts.append({"expert": i, "key": f"acc/{d}", "step": eval_step, "value": acc(i, d, cycle)})
            if cycle >= 1:
                for j in names:
                    if j != i:
                        top_k = round(0.97 - 0.03 * cycle / strength + rng.uniform(-0.01, 0.01), 4)
                        pts.append({"expert": i, "key": f"overlap/{j}", "step": eval_step, "value": top_k})
                        pts.append({"expert": i, "key": f"overlap_top1/{j}", "step": eval_step,
                                    "value": round(top_k - 0.1, 4)})
    total_steps = cycles_done * per_cycle + extra_steps
    for step in range(1, total_steps + 1):
        in_cycle = (step - 1) % per_cycle
        phase = 1.0 if in_cycle < rl_steps else 2.0
        for k, i in enumerate(names):
            reward = 0.3 + 0.4 * (1 - math.exp(-step / (2.0 * per_cycle))) + 0.03 * k + rng.uniform(-0.04, 0.04)
            pts.append({"expert": i, "key": "reward/mean", "step": step, "value": round(reward, 4)})
            pts.append({"expert": i, "key": "phase", "step": step, "value": phase})
            pts.append({"expert": i, "key": "knobs/version", "step": step, "value": 0.0})
            pts.append({"expert": i, "key": "rollout/logp_gap", "step": step, "value": round(2e-3 + 1e-3 * rng.random(), 6)})
            pts.append({"expert": i, "key": "memory/peak_gb", "step": step, "value": round(0.4 + 0.01 * k, 3)})
            if phase == 2.0:
                kl = 0.2 * math.exp(-(in_cycle - rl_steps) / max(opd_steps, 1)) + 0.02 * k + rng.uniform(0, 0.01)
                pts.append({"expert": i, "key": "opd/kl", "step": step, "value": round(kl, 4)})
    for cycle in range(1, cycles_done + 1):  # run-level means, step = cycle: a dip after Phase I, recovered after II
        for key, level in (("overlap_rl/mean", 0.93), ("overlap/mean", 0.96),
                           ("overlap_top1_rl/mean", 0.83), ("overlap_top1/mean", 0.86)):
            pts.append({"expert": None, "key": key, "step": cycle, "cycle": cycle,
                        "value": round(level + rng.uniform(-0.01, 0.01), 4)})
    if merged:
        step = cycles_done * per_cycle
        vals = {d: round(min(0.99, acc(d, d, cycles_done) + 0.02 * strength), 4) for d in names}
        for d, v in vals.items():
            pts.append({"expert": "merged", "key": f"acc/{d}", "step": step, "value": v})
        pts.append({"expert": "merged", "key": "acc_mean", "step": step, "value": round(sum(vals.values()) / 3, 4)})
    return pts


def thumbnail(colour: str, size: tuple[int, int] = (56, 56)) -> str:
    """A base64 PNG of one colour."""
    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", size, colour).save(buf, format="PNG")
    return base64.b64encode(buf.getvalue()).decode()


def sample_prompts(experts: list[str], cycle: int) -> list[dict[str, Any]]:
    """Two prompts per domain, as the eval unit reports them: the text domain without images, `image` with
    one, `video` with three frames; every expert answers, and from cycle 2 on the image expert gets its
    second prompt right."""
    images = {"text": [], "image": [thumbnail("red")], "video": [thumbnail(c, (84, 28)) for c in ("red", "green", "blue")]}
    out = []
    for d in experts:
        for i in range(2):
            right = d == "image" and i == 1 and cycle >= 2
            answers = [{"model": e, "answer": "3" if right and e == "image" else "7", "score": float(right and e == "image"),
                        "correct": right and e == "image"} for e in experts]
            out.append({"domain": d, "index": i, "prompt": f"{d} prompt {i}?", "reference": "3",
                        "images": images[d], "answers": answers})
    return out


def seed_all(http: httpx.Client, big_points: int = 100_000) -> dict[str, int]:
    """Every run the UI tests use; returns name → id."""
    s = Seeder(http)
    names = [n for n, _ in EXPERTS]

    # A CoPD run in its fourth cycle, with history on every view (the README screenshot's run).
    live = s.create("copd-live", cycles=4, rl_steps=30, opd_steps=20)
    s.to(live, "start", "running")
    s.metrics(live, training_metrics(cycles_done=3, rl_steps=30, opd_steps=20, extra_steps=12, seed=1))
    s.progress(live, 3, "rl", {n: f"c3/rl/{n}" for n in names}, progress=162 / 200)
    s.knobs(live, {"beta": 0.8}, applied_at=(1, 61))
    s.knobs(live, {"opd_steps": 25, "teacher_weights": {"text": {"image": 0.5}}}, applied_at=(2, 103))
    for cycle in range(1, 4):
        for n in names:
            s.checkpoint(live, n, cycle, cycle * 50, {f"acc/{n}": 0.3 + 0.05 * cycle})
    s.event(live, "worker gpu-0 took c3/rl/text", expert="text")
    s.event(live, "rollout slow: 812 tokens/s", level="warning", expert="video")
    s.event(live, "c2/eval done: mean acc 0.41")
    for cycle in range(4):
        s.samples(live, cycle, sample_prompts(names, cycle))

    # Finished runs to compare: CoPD, independent experts merged, independent experts alone.
    for name, strategy, strength in (("copd-done", "copd", 1.0), ("indep-merge-done", "independent_merge", 0.3)):
        rid = s.create(name, strategy=strategy)
        s.to(rid, "start", "running")
        s.metrics(rid, training_metrics(cycles_done=2, rl_steps=3, opd_steps=2, seed=2, merged=True, strength=strength))
        s.checkpoint(rid, "merged", 2, 10, {"acc_mean": 0.5}, final=True)
        s.progress(rid, 2, "merge", {}, progress=1.0)
        s.to(rid, "completed")
    rid = s.create("indep-done", strategy="independent")
    s.to(rid, "start", "running")
    s.metrics(rid, training_metrics(cycles_done=2, rl_steps=3, opd_steps=2, seed=3, strength=0.2))
    s.progress(rid, 2, "eval", {}, progress=1.0)
    s.to(rid, "completed")

    seed_experiment(s)

    # One run in every other state.
    s.create("draft-run")
    s.to(s.create("queued-run"), "start")
    s.to(s.create("paused-run"), "start", "running", "pause")
    s.to(s.create("failed-run"), "start", "running", "failed")
    s.to(s.create("cancelled-run"), "cancel")

    # A long run: `big_points` reward points of one expert (the UI must ask for downsampled series).
    big = s.create("big-run", cycles=1000, rl_steps=60, opd_steps=40)
    s.to(big, "start", "running")
    s.metrics(big, [{"expert": "text", "key": "reward/mean", "step": i, "value": math.sin(i / 500.0)}
                    for i in range(1, big_points + 1)])
    return s.ids


def running_run(http: httpx.Client, name: str) -> int:
    """A fresh running run (for tests that change it)."""
    s = Seeder(http)
    rid = s.create(name)
    s.to(rid, "start", "running")
    s.checkpoint(rid, "text", 1, 5, {"acc/text": 0.4})
    return rid


# The experiment as `copd compare --api` submits it: <suite>-<entry>-s<seed>, final accuracies chosen so
# that the paired differences are known: copd − mixed = +0.03 (s0), +0.01 (s1) → +0.020 ± 0.014.
EXPERIMENT = {("copd", 0): 0.43, ("copd", 1): 0.41, ("copd_step", 0): 0.44, ("copd_step", 1): 0.40,
              ("mixed_rlvr", 0): 0.40, ("mixed_rlvr", 1): 0.40}


def experiment_metrics(entry: str, seed: int, cycles: int = 2, per_cycle: int = 5) -> list[dict[str, Any]]:
    """Points (with their cycle) of one run of the experiment: accuracy per cycle, run-level overlap after each
    phase (a dip after Phase I, a recovery after Phase II) for the experts' strategies, the merged model."""
    names = [n for n, _ in EXPERTS]
    final = EXPERIMENT[(entry, seed)]
    pts: list[dict[str, Any]] = []
    for c in range(cycles + 1):
        acc = round(0.25 + (final - 0.25) * c / cycles, 4)
        who = names if c == 0 or entry != "mixed_rlvr" else ["mixed"]
        for e in who:
            for d in names:
                pts.append({"expert": e, "key": f"acc/{d}", "step": c * per_cycle, "cycle": c,
                            "value": acc if e in (d, "mixed") else round(acc - 0.05, 4)})
        if c and entry != "mixed_rlvr":
            for key, value in (("overlap_rl/mean", 0.90), ("overlap/mean", 0.95),
                               ("overlap_top1_rl/mean", 0.70), ("overlap_top1/mean", 0.80)):
                pts.append({"expert": None, "key": key, "step": c, "cycle": c, "value": value + 0.01 * seed})
    for d in names:
        pts.append({"expert": "merged", "key": f"acc/{d}", "step": cycles * per_cycle, "cycle": cycles, "value": final})
    return pts


def seed_experiment(s: Seeder) -> None:
    for (entry, seed) in EXPERIMENT:
        more: dict[str, Any] = {"seed": seed}
        if entry == "copd_step":
            more["opd"] = {"teacher_sync": "step"}
        rid = s.create(f"exp-{entry}-s{seed}", strategy="mixed_rlvr" if entry == "mixed_rlvr" else "copd", **more)
        s.to(rid, "start", "running")
        s.metrics(rid, experiment_metrics(entry, seed))
        s.progress(rid, 2, "merge", {}, progress=1.0)
        s.to(rid, "completed")
