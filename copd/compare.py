"""`copd compare SUITE.yaml`: run a suite (strategies × seeds) in the same harness and write a report.

A suite file names a base spec (`base: path`, relative to the suite file) or holds one inline (`spec:`),
the seeds, and entries `{name, strategy, overrides}`; each entry's overrides are deep-merged into the base.
Every run goes through `trainer.local.train_local` into OUT/runs/<entry>/s<seed>/ and is resumed or
skipped when already there, so a cut-off comparison continues where it stopped. The report (OUT/report.md
and OUT/*.png) is computed from the runs' metrics.jsonl alone. Each finished run also leaves a small record,
OUT/records/<entry>/s<seed>.json (what the report reads of it, a few kB): runs/ holds checkpoints and stays out
of git, records/ is committed, so `--report-only` rewrites a report on a fresh clone and a later call adds
entries or seeds beside runs that are no longer on disk.
"""

from __future__ import annotations

import copy
import os
import time
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from pathlib import Path
from typing import Any, Optional

import typer
import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from contract import metrics as M
from contract.spec import RunSpec, SpecError, format_validation_error, load_spec, parse_spec
from contract.vocab import MERGED, MIXED, STRATEGIES, STUDENT
from copd.summary import read_provenance
from trainer.provenance import one_line


class SuiteEntry(BaseModel):
    """One row of the comparison: a strategy and what it changes in the base spec."""

    model_config = ConfigDict(extra="forbid")
    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_-]{0,40}$", description="Row name in the report.")
    strategy: str = Field(description=" | ".join(STRATEGIES))
    overrides: dict[str, Any] = Field(default_factory=dict, description="Deep-merged into the base spec.")
    note: str = Field("", description="One line shown under the table (what the entry ablates).")
    match_tokens: Optional[str] = Field(
        None, description="mixed_rlvr only: the entry (say copd) whose training tokens this one matches, seed by "
                          "seed: `mixed.train_tokens` = that run's training tokens / cycles (run after it).")


class Suite(BaseModel):
    """Strategies × seeds over one base spec."""

    model_config = ConfigDict(extra="forbid")
    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_-]{0,40}$")
    description: str = ""
    base: Optional[str] = Field(None, description="Base spec file, relative to the suite file.")
    spec: Optional[dict[str, Any]] = Field(None, description="Inline base spec (overrides `base` where both).")
    seeds: list[int] = Field(default_factory=lambda: [0, 1, 2], min_length=1)
    entries: list[SuiteEntry] = Field(min_length=1)


def deep_merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    """`over` merged into a copy of `base`, mappings recursively, anything else replaced.

    >>> deep_merge({"a": {"x": 1, "y": 2}, "b": 1}, {"a": {"y": 3}, "c": 4})
    {'a': {'x': 1, 'y': 3}, 'b': 1, 'c': 4}
    """
    out = copy.deepcopy(base)
    for k, v in over.items():
        out[k] = deep_merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else copy.deepcopy(v)
    return out


def load_suite(path: Path) -> tuple[Suite, dict[str, Any]]:
    """(the suite, its base spec as a mapping); SpecError with one line naming the field."""
    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text())
        suite = Suite.model_validate(data)
    except OSError as err:
        raise SpecError(f"{path}: cannot read suite ({err.strerror or err})") from None
    except yaml.YAMLError as err:
        raise SpecError(f"{path}: not valid YAML ({str(err).splitlines()[0]})") from None
    except ValidationError as err:
        raise SpecError(f"{path}: {format_validation_error(err)}") from None
    base: dict[str, Any] = {}
    if suite.base:
        base = load_spec(path.parent / suite.base).model_dump(mode="json")
    base = deep_merge(base, suite.spec or {})
    names = [e.name for e in suite.entries]
    for e in suite.entries:  # fail before any run starts
        if e.match_tokens is not None:
            if e.strategy != "mixed_rlvr":
                raise SpecError(f"{path}: entry {e.name}: match_tokens: only a mixed_rlvr entry can match tokens")
            if e.match_tokens not in names or e.match_tokens == e.name:
                raise SpecError(f"{path}: entry {e.name}: match_tokens: '{e.match_tokens}' is not another entry "
                                f"(entries: {', '.join(names)})")
        entry_spec(suite, base, e, suite.seeds[0], train_tokens=1 if e.match_tokens else None)
    return suite, base


def select_entries(suite: Suite, names: list[str] | None) -> Suite:
    """The suite with only the entries `names` (in the suite's order; None: all); SpecError naming an unknown one.
    A match_tokens entry selected without its matched entry matches that entry's runs already in OUT."""
    if not names:
        return suite
    known = [e.name for e in suite.entries]
    if unknown := [n for n in names if n not in known]:
        raise SpecError(f"--entries: '{unknown[0]}' is not an entry of suite {suite.name} (entries: {', '.join(known)})")
    return suite.model_copy(update={"entries": [e for e in suite.entries if e.name in names]})


def entry_spec(suite: Suite, base: dict[str, Any], entry: SuiteEntry, seed: int,
               train_tokens: int | None = None) -> RunSpec:
    """The run spec of one entry and seed (`train_tokens`: the token budget a match_tokens entry gets)."""
    data = deep_merge(base, entry.overrides)
    if train_tokens is not None:
        data = deep_merge(data, {"mixed": {"train_tokens": int(train_tokens)}})
    data |= {"name": f"{suite.name}-{entry.name}-s{seed}"[:64], "strategy": entry.strategy, "seed": seed}
    try:
        return parse_spec(data)
    except SpecError as err:
        raise SpecError(f"entry {entry.name}: {err}") from None


def _run_one(spec_json: str, out: str, model_cache: str) -> tuple[str, float]:
    """One run to completion (resumed if cut off, skipped if done); returns (out, seconds)."""
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    from trainer.local import RunState, train_local
    from contract.plan import plan

    spec = RunSpec.model_validate_json(spec_json)
    t0 = time.time()
    folder = Path(out)
    resume = (folder / "state.json").exists()
    if resume and set(RunState.load(folder).completed) >= {u.id for u in plan(spec)}:
        return out, 0.0
    with open(folder.parent / f"{folder.name}.log", "a") as log:  # the warm start's progress lines
        train_local(spec, folder, Path(model_cache), resume=resume, log_fn=lambda m: print(m, file=log, flush=True))
    (folder / "wall_s.txt").write_text(f"{time.time() - t0:.1f}\n")
    return out, time.time() - t0


def matched_tokens(out: Path, entry: SuiteEntry, seed: int) -> int | None:
    """The per-cycle token budget of a match_tokens entry: the matched run's training tokens / its cycles."""
    r = load_result(out, entry.match_tokens or "", seed)
    if r is None or not r.final or not r.train_tokens or not r.cycles:
        return None
    return max(1, round(r.train_tokens / r.cycles))


def suite_runs(suite: Suite, base: dict[str, Any], out: Path, seeds: list[int], *, matched: bool):
    """(entry, seed, folder, spec) of the runs of one pass: the plain entries, or (`matched`) the match_tokens
    ones, whose budget needs the matched runs' tokens (None as spec when those are missing)."""
    runs = []
    for seed in seeds:
        for e in suite.entries:
            if bool(e.match_tokens) != matched:
                continue
            folder = out / "runs" / e.name / f"s{seed}"
            folder.parent.mkdir(parents=True, exist_ok=True)
            tokens = matched_tokens(out, e, seed) if matched else None
            spec = entry_spec(suite, base, e, seed, train_tokens=tokens) if not matched or tokens else None
            runs.append((e.name, seed, folder, spec))
    return runs


def run_suite(suite: Suite, base: dict[str, Any], out: Path, model_cache: Path, *, seeds: list[int] | None = None,
              jobs: int = 1, log=print, runner=None) -> list[tuple[str, int, Path]]:
    """Every entry × seed, `jobs` at a time (match_tokens entries after the others); returns (entry, seed,
    run folder) of each. `runner` (entry, seed, folder, spec) → seconds runs one elsewhere (the API).
    A run with a record and no folder (its folder was deleted, or this is a fresh clone of a results folder)
    is not rerun; deleting its record reruns it."""
    seeds = seeds or suite.seeds
    done = []
    for matched in (False, True):
        runs = suite_runs(suite, base, out, seeds, matched=matched)
        for name, seed, folder, _ in runs:
            if not folder.exists() and record_path(out, name, seed).exists():
                log(f"{name} seed {seed}: recorded ({RECORDS}/{name}/s{seed}.json), not rerun")
        runs = [r for r in runs if r[2].exists() or not record_path(out, r[0], r[1]).exists()]
        for name, seed, _, spec in runs:
            if spec is None:
                log(f"{name} seed {seed}: SKIPPED (its match_tokens run has no result)")
        runs_ok = [r for r in runs if r[3] is not None]
        # Seed-interleaved order: the first runs in flight are of different seeds, so each seed's warm start
        # (builtin:tiny, cached per recipe and seed) is built once, by its first run, while the others train.
        order = sorted(runs_ok, key=lambda r: ([e.name for e in suite.entries].index(r[0]), seeds.index(r[1])))
        if runner is not None:
            runner(order, log)
        else:
            with ProcessPoolExecutor(max_workers=max(1, jobs), mp_context=get_context("spawn")) as pool:
                futures = {pool.submit(_run_one, spec.model_dump_json(), str(folder), str(model_cache)): (name, seed)
                           for name, seed, folder, spec in order}
                for fut, (name, seed) in futures.items():
                    try:
                        _, secs = fut.result()
                    except Exception as err:  # one failed run is a missing row in the report, not a lost suite
                        log(f"{name} seed {seed}: FAILED ({type(err).__name__}: {err})")
                        continue
                    log(f"{name} seed {seed}: {'done before' if secs == 0 else f'{secs:.0f}s'}")
        done += [(name, seed, folder) for name, seed, folder, _ in runs]
    return done


def compare(suite_path: Path, out: Path, seeds: list[int] | None = None, *, jobs: int = 1,
            model_cache: Path | None = None, report_only: bool = False, command: str | None = None,
            log=print, api=None, entries: list[str] | None = None) -> Path:
    """Run a suite (unless `report_only`) and write OUT/report.md and the plots; returns the report's path.
    `entries`: only these entries of the suite (run and reported).

    api: a `contract.client.Client`: the runs are submitted to that API (its workers train them, the
    dashboard shows them) instead of trained here (copd/compare_api.py)."""
    suite, base = load_suite(suite_path)
    suite = select_entries(suite, entries)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    if model_cache is None:
        from contract.settings import get_settings

        model_cache = get_settings().model_cache
    t0 = time.time()
    if not report_only and command:
        (out / "command.txt").write_text(command + "\n")
    elif command is None or report_only:
        command = (out / "command.txt").read_text().strip() if (out / "command.txt").exists() else command
    if not report_only:
        runner = None
        if api is not None:
            from copd.compare_api import api_runner

            runner = api_runner(api)
        run_suite(suite, base, out, Path(model_cache), seeds=seeds, jobs=jobs, log=log, runner=runner)
    seeds = seeds or suite.seeds
    return write_report(suite, out, seeds, command=command, wall_s=None if report_only else time.time() - t0)


# -- the report: computed from the runs' metrics.jsonl alone ------------------------------------------------


class RunResult(BaseModel):
    """What the report needs of one run, read from its metrics.jsonl."""

    entry: str
    strategy: str
    seed: int
    domains: list[str]
    base: dict[str, float]                       # domain → accuracy of the base model (cycle 0)
    experts: dict[str, dict[str, float]]         # expert → domain → accuracy after the experts' last cycle
    final: dict[str, float]                      # domain → accuracy of the all-in-one model ('merged')
    curve: list[tuple[int, float]]               # (cycle, mean accuracy of the strategy's policy/ies)
    overlap: list[tuple[int, int, float, float]]  # (cycle, step, top-k, top-1) run-level means
    overlap_phases: list[tuple[float, float, float]] = []  # (c − 0.5 after Phase I of c | c after it, top-k, top-1)
    opd_kl: list[tuple[int, float]]              # (global step, opd/kl mean over experts)
    steps: int                                   # update steps, every policy together
    rollout_tokens: float
    train_tokens: float
    cycles: int
    rl_steps: int
    opd_steps: int
    wall_s: Optional[float] = None               # the run's training time (wall_s.txt), when it finished here
    provenance: str = ""                         # its provenance.json as one line (versions, commit, base hash)

    @property
    def finished(self) -> bool:
        """The run's all-in-one model was evaluated (independent: every expert's last cycle)."""
        return bool(self.final) or (self.strategy == "independent" and len(self.experts) == len(self.domains))


RECORDS = "records"


def record_path(out: Path, entry: str, seed: int) -> Path:
    """OUT/records/<entry>/s<seed>.json: a finished run's RunResult, the report's input once runs/ is gone."""
    return Path(out) / RECORDS / entry / f"s{seed}.json"


def load_result(out: Path, entry: str, seed: int) -> RunResult | None:
    """One run's results: from its folder OUT/runs/<entry>/s<seed>/ when that is there (and then, once the
    run is finished, refreshed into its record), else from its record; None when neither has it."""
    folder = Path(out) / "runs" / entry / f"s{seed}"
    rec = record_path(out, entry, seed)
    if folder.exists():  # a run folder is the truth, also while it is being redone
        r = read_run(entry, seed, folder)
        if r is not None and r.finished:
            rec.parent.mkdir(parents=True, exist_ok=True)
            tmp = rec.with_name(f".{rec.name}.tmp")  # whole or not at all
            tmp.write_text(r.model_dump_json() + "\n")
            tmp.replace(rec)
        return r
    if rec.exists():
        return RunResult.model_validate_json(rec.read_text())
    return None


def read_run(entry: str, seed: int, folder: Path) -> RunResult | None:
    """The run's results, or None when it has not produced its metrics yet."""
    import json

    spec_file, metrics_file = folder / "spec.json", folder / "metrics.jsonl"
    if not spec_file.exists() or not metrics_file.exists():
        return None
    spec = RunSpec.model_validate_json(spec_file.read_text())
    rows = [json.loads(line) for line in metrics_file.read_text().splitlines() if line.strip()]
    doms, C = spec.expert_names, spec.schedule.cycles
    acc: dict[tuple[str | None, int], dict[str, float]] = {}
    for r in rows:
        if M.ACC.matches(r["key"]):
            acc.setdefault((r["expert"], r["cycle"]), {})[M.ACC.name_in(r["key"])] = r["value"]
    base = acc.get((doms[0], 0), {})
    experts = {e: acc[(e, C)] for e in doms if (e, C) in acc} if spec.strategy not in ("mixed_rlvr",) else {}
    merged = [v for (e, c), v in acc.items() if e == MERGED]
    final = merged[-1] if merged else {}
    if spec.strategy == "independent" and len(experts) == len(doms):
        final = {}
    curve = [(0, _mean(base.get(d) for d in doms))] if base else []
    for (e, c), row in sorted(acc.items(), key=lambda kv: kv[0][1]):
        if c == 0 or e == MERGED:
            continue
        if e in (MIXED, STUDENT):
            curve.append((c, _mean(row.get(d) for d in doms)))
    if spec.strategy not in ("mixed_rlvr",):
        for c in range(1, C + 1):  # the experts: each on its own domain
            if all((e, c) in acc for e in doms):
                curve.append((c, _mean(acc[(e, c)].get(e) for e in doms)))
    curve.sort()
    per_cycle = spec.schedule.rl_steps + spec.schedule.opd_steps
    ov = {}
    for r in rows:
        if r["expert"] is None and r["key"] in (M.OVERLAP_MEAN.key, M.OVERLAP_TOP1_MEAN.key):
            ov.setdefault(r["cycle"], {})[r["key"]] = r["value"]
    overlap = [(c, c * per_cycle, v.get(M.OVERLAP_MEAN.key, float("nan")), v.get(M.OVERLAP_TOP1_MEAN.key, float("nan")))
               for c, v in sorted(ov.items())]
    if overlap:  # before training every expert is the base model: overlap 1
        overlap.insert(0, (0, 0, 1.0, 1.0))
    rl = {}
    for r in rows:
        if r["expert"] is None and r["key"] in (M.OVERLAP_RL_MEAN.key, M.OVERLAP_TOP1_RL_MEAN.key):
            rl.setdefault(r["cycle"], {})[r["key"]] = r["value"]
    phases = [(c - 0.5, v.get(M.OVERLAP_RL_MEAN.key, float("nan")), v.get(M.OVERLAP_TOP1_RL_MEAN.key, float("nan")))
              for c, v in rl.items()] + [(float(c), k, t) for c, _, k, t in overlap]
    phases.sort()
    kl: dict[int, list[float]] = {}
    for r in rows:
        if r["key"] == M.OPD_KL.key and r["expert"] in doms:
            kl.setdefault(r["step"], []).append(r["value"])
    cost = [r for r in rows if r["key"] in ("cost/rollout_tokens", "cost/train_tokens")]
    wall = folder / "wall_s.txt"
    prov = read_provenance(folder)
    return RunResult(
        entry=entry, strategy=spec.strategy, seed=seed, domains=doms, base=base, experts=experts, final=final,
        curve=curve, overlap=overlap, overlap_phases=phases if rl else [], opd_kl=sorted((s, _mean(v)) for s, v in kl.items()),
        steps=sum(1 for r in cost if r["key"] == "cost/train_tokens"),
        rollout_tokens=sum(r["value"] for r in cost if r["key"] == "cost/rollout_tokens"),
        train_tokens=sum(r["value"] for r in cost if r["key"] == "cost/train_tokens"),
        cycles=C, rl_steps=spec.schedule.rl_steps, opd_steps=spec.schedule.opd_steps,
        wall_s=float(wall.read_text()) if wall.exists() else None, provenance=one_line(prov) if prov else "")


def _mean(values) -> float:
    vals = [v for v in values if v is not None]
    return sum(vals) / len(vals) if vals else float("nan")


def _sd(values) -> float:
    vals = [v for v in values if v is not None and v == v]
    if len(vals) < 2:
        return 0.0
    m = sum(vals) / len(vals)
    return (sum((v - m) ** 2 for v in vals) / (len(vals) - 1)) ** 0.5


def _pm(values, digits: int = 3) -> str:
    vals = [v for v in values if v is not None and v == v]
    if not vals:
        return "–"
    return f"{_mean(vals):.{digits}f} ± {_sd(vals):.{digits}f}" if len(vals) > 1 else f"{vals[0]:.{digits}f}"


def _row(name: str, per_seed: list[dict[str, float]], doms: list[str], cost: str = " | | ") -> str:
    cells = [_pm([r.get(d) for r in per_seed]) for d in doms]
    means = [_mean(r.get(d) for d in doms) for r in per_seed if all(d in r for d in doms)]
    return f"| {name} | " + " | ".join(cells) + f" | **{_pm(means)}** | {cost} |"


def _cost(results: list[RunResult]) -> str:
    if not results:
        return ""
    steps = _mean(r.steps for r in results)
    return f"{steps:.0f} | {_tokens(_mean(r.train_tokens for r in results))} | {_tokens(_mean(r.rollout_tokens for r in results))}"


def _tokens(n: float) -> str:
    return f"{n / 1e6:.2f}M" if n >= 1e6 else f"{n / 1e3:.0f}k" if n >= 1e4 else f"{n:.0f}"


def summarize(suite: Suite, results: list[RunResult]) -> str:
    """The markdown report: the accuracy table, the divergence cost and CoPD's recovery, overlap, notes."""
    by_entry: dict[str, list[RunResult]] = {}
    for r in results:
        by_entry.setdefault(r.entry, []).append(r)
    doms = results[0].domains
    head = "| model | " + " | ".join(doms) + " | mean | update steps | train tokens | rollout tokens |"
    lines = [head, "|" + " --- |" * (len(doms) + 5)]
    any_run = results[0]
    lines.append(_row("base model", [r.base for r in by_entry[any_run.entry]], doms, "0 | 0 | 0"))
    indep = independent_entry(suite)
    for e in suite.entries:  # each single expert (independent, and CoPD's experts unmerged)
        runs = by_entry.get(e.name, [])
        if (e.strategy == "copd" or e.name == indep) and runs:
            for x in doms:
                lines.append(_row(f"{e.name}: expert {x}", [r.experts.get(x, {}) for r in runs], doms,
                                  f"{_mean(r.steps for r in runs) / len(doms):.0f} | | "))
    for e in suite.entries:
        runs = [r for r in by_entry.get(e.name, []) if r.final]
        if runs:
            lines.append(_row(f"**{e.name}** ({e.strategy})", [r.final for r in runs], doms, _cost(runs)))
    notes = [f"- `{e.name}`: {e.note}" for e in suite.entries if e.note]
    out = [f"## Held-out accuracy (greedy), mean ± sd over seeds {sorted({r.seed for r in results})}", "",
           *lines, "", "Rows `X: expert k` are single experts (no merge) after their last cycle; bold rows are the "
           "all-in-one model of each strategy (the merge, the mixed policy, or the distilled student). Update steps "
           "count every policy's optimizer steps (static OPD / MOPD: the experts' plus the distillation's); tokens "
           "are completion tokens sampled (rollout) and trained on (train).", ""]
    if notes:
        out += ["Entries:", *notes, ""]
    out += _divergence(suite, by_entry, doms)
    out += _overlap_table(suite, by_entry)
    return "\n".join(out)


def independent_entry(suite: Suite) -> str | None:
    """The entry whose experts are the independent experts: an `independent` one, else an `independent_merge`
    one (the same experts, trained the same way, then merged), else None."""
    for strategy in ("independent", "independent_merge"):
        if name := next((e.name for e in suite.entries if e.strategy == strategy), None):
            return name
    return None


def _divergence(suite: Suite, by_entry: dict[str, list[RunResult]], doms: list[str]) -> list[str]:
    """Divergence cost per seed (independent experts on their own domains − mixed RLVR), then gaps to mixed."""
    indep = independent_entry(suite)
    mixed = next((e.name for e in suite.entries if e.strategy == "mixed_rlvr" and not e.match_tokens), None)
    if not mixed:
        return []
    mix = {r.seed: _mean(r.final.get(d) for d in doms) for r in by_entry.get(mixed, []) if r.final}
    out = []
    if indep:
        own = {r.seed: _mean(r.experts.get(d, {}).get(d) for d in doms) for r in by_entry.get(indep, [])}
        seeds = sorted(set(own) & set(mix))
        if seeds:
            costs = [own[s] - mix[s] for s in seeds]
            whose = "" if by_entry[indep][0].strategy == "independent" else f" (`{indep}`'s, before their merge)"
            out += ["## Inter-capability divergence cost", "",
                    f"Independent experts{whose}, each on its own domain, minus mixed RLVR (mean over domains), per seed: "
                    + ", ".join(f"s{s}: {c:+.3f}" for s, c in zip(seeds, costs))
                    + f" → **{_mean(costs):+.3f} ± {_sd(costs):.3f}** (positive = mixed RLVR pays a cost).", "",
                    "Per domain (mean over seeds): " + ", ".join(
                        f"{d} {_mean(r.experts.get(d, {}).get(d) for r in by_entry[indep]) - _mean(r.final.get(d) for r in by_entry[mixed] if r.final):+.3f}"
                        for d in doms), ""]
    if not mix:
        return out
    out += [f"## Paired differences to `{mixed}`", "",
            f"Each strategy's all-in-one model minus `{mixed}` (mean over domains), paired by seed; then per domain:", ""]
    for e in suite.entries:
        runs = {r.seed: r for r in by_entry.get(e.name, []) if r.final}
        seeds = sorted(set(runs) & set(mix))
        gaps = [_mean(runs[s].final.get(d) for d in doms) - mix[s] for s in seeds]
        if gaps and e.name != mixed:
            mixed_runs = {r.seed: r for r in by_entry[mixed] if r.final}
            per = ", ".join(f"{d} {_mean(runs[s].final.get(d, float('nan')) - mixed_runs[s].final.get(d, float('nan')) for s in seeds):+.3f}"
                            for d in doms)
            out.append(f"- `{e.name}`: **{_mean(gaps):+.3f} ± {_sd(gaps):.3f}** (n={len(gaps)}; "
                       + ", ".join(f"s{s} {g:+.3f}" for s, g in zip(seeds, gaps)) + f") — {per}")
    return out + [""]


def _overlap_table(suite: Suite, by_entry: dict[str, list[RunResult]]) -> list[str]:
    """Inter-expert overlap after the last cycle, for the strategies with several experts."""
    rows = []
    for e in suite.entries:
        runs = [r for r in by_entry.get(e.name, []) if r.overlap and e.strategy in ("copd", "independent", "independent_merge")]
        if runs:
            rows.append(f"| {e.name} | {_pm([r.overlap[-1][2] for r in runs])} | {_pm([r.overlap[-1][3] for r in runs])} |"
                        f" {_pm([min(o[3] for o in r.overlap) for r in runs])} |")
    if not rows:
        return []
    out = ["## Inter-expert agreement (measured at cycle ends, on each expert's own states)", "",
           "| entry | top-k overlap, last cycle | top-1 agreement, last cycle | lowest top-1 over cycles |",
           "| --- | --- | --- | --- |", *rows, ""]
    phased = []
    for e in suite.entries:
        runs = [r for r in by_entry.get(e.name, []) if r.overlap_phases]
        if runs:
            after_rl = [_mean(t for x, _, t in r.overlap_phases if x % 1) for r in runs]
            after_opd = [_mean(t for x, _, t in r.overlap_phases if x > 0 and not x % 1) for r in runs]
            phased.append(f"| {e.name} | {_pm(after_rl)} | {_pm(after_opd)} | "
                          f"{_pm([b - a for a, b in zip(after_rl, after_opd)])} |")
    if phased:
        out += ["Top-1 agreement after each phase (mean over cycles; Phase II − Phase I > 0: OPD recovers what "
                "RLVR drifted apart):", "", "| entry | after Phase I | after Phase II | Phase II − Phase I |",
                "| --- | --- | --- | --- |", *phased, ""]
    return out


def write_plots(suite: Suite, results: list[RunResult], out: Path) -> list[str]:
    """accuracy_per_cycle.png, overlap.png (CoPD, phases shaded) and cost_vs_accuracy.png; returns the names."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    by_entry: dict[str, list[RunResult]] = {}
    for r in results:
        by_entry.setdefault(r.entry, []).append(r)
    names = []
    fig, ax = plt.subplots(figsize=(7, 4.2))
    for e in suite.entries:
        runs = by_entry.get(e.name, [])
        if not runs:
            continue
        cycles = sorted({c for r in runs for c, _ in r.curve})
        ys = [_mean(dict(r.curve).get(c) for r in runs) for c in cycles]
        line, = ax.plot(cycles, ys, marker="o", ms=3, label=e.name)
        fin = [_mean(r.final.get(d) for d in r.domains) for r in runs if r.final]
        if fin:
            ax.errorbar([max(cycles) + 0.3], [_mean(fin)], yerr=[_sd(fin)], marker="*", ms=11, color=line.get_color())
    ax.set_xlabel("cycle (distillation cycles follow the experts')")
    ax.set_ylabel("mean held-out accuracy")
    ax.set_title(f"{suite.name}: experts on own domain / the one policy; ★ = final all-in-one model", fontsize=9)
    ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    fig.savefig(out / "accuracy_per_cycle.png", dpi=110)
    plt.close(fig)
    names.append("accuracy_per_cycle.png")

    first_copd = next((e.name for e in suite.entries if e.strategy == "copd"), "")
    copd_runs = by_entry.get(first_copd, [])
    if copd_runs:
        r0 = copd_runs[0]
        fig, (ax1, ax2) = plt.subplots(2, 1, figsize=(7, 5), sharex=True)
        per = r0.rl_steps + r0.opd_steps
        for c in range(r0.cycles):
            for ax_ in (ax1, ax2):
                ax_.axvspan(c * per, c * per + r0.rl_steps, color="tab:blue", alpha=0.08, lw=0)
                ax_.axvspan(c * per + r0.rl_steps, (c + 1) * per, color="tab:orange", alpha=0.12, lw=0)
        indep = independent_entry(suite)
        for e in suite.entries:
            runs = by_entry.get(e.name, [])
            if (e.strategy == "copd" or e.name == indep) and runs and runs[0].overlap_phases:
                xs = [x for x, _, _ in runs[0].overlap_phases]  # after Phase I of c: c − 0.5; after c: c
                steps = [int((x - 0.5) * per) + r0.rl_steps if x % 1 else int(x * per) for x in xs]
                n = len(steps)
                for col, mk, ls in ((1, "o", "-"), (2, "s", "--")):
                    ax1.plot(steps, [_mean(r.overlap_phases[i][col] for r in runs if len(r.overlap_phases) > i)
                                     for i in range(n)], marker=mk, ls=ls,
                             label=f"{e.name} {'top-k' if col == 1 else 'top-1'}")
            elif (e.name == first_copd or e.name == indep) and runs and runs[0].overlap:
                steps = [s for _, s, _, _ in runs[0].overlap]
                ax1.plot(steps, [_mean(r.overlap[i][2] for r in runs if len(r.overlap) > i) for i in range(len(steps))],
                         marker="o", label=f"{e.name} top-k")
                ax1.plot(steps, [_mean(r.overlap[i][3] for r in runs if len(r.overlap) > i) for i in range(len(steps))],
                         marker="s", ls="--", label=f"{e.name} top-1")
        for e in suite.entries:  # every copd entry (teachers per phase, per step, ablations)
            runs = by_entry.get(e.name, []) if e.strategy == "copd" else []
            kl_steps = sorted({s for r in runs for s, _ in r.opd_kl})
            if kl_steps:
                ax2.plot(kl_steps, [_mean(dict(r.opd_kl).get(s) for r in runs) for s in kl_steps], ".", label=e.name)
        ax2.legend(fontsize=7)
        ax1.set_ylabel("inter-expert overlap\n(after each phase)")
        ax1.legend(fontsize=7)
        ax2.set_ylabel("CoPD OPD reverse KL")
        ax2.set_xlabel("expert update step (blue: Phase I RLVR, orange: Phase II OPD)")
        fig.tight_layout()
        fig.savefig(out / "overlap.png", dpi=110)
        plt.close(fig)
        names.append("overlap.png")

    fig, ax = plt.subplots(figsize=(6, 4))
    for e in suite.entries:
        runs = [r for r in by_entry.get(e.name, []) if r.final]
        if runs:
            x = _mean(r.train_tokens for r in runs) / 1e3
            ys = [_mean(r.final.get(d) for d in r.domains) for r in runs]
            ax.errorbar([x], [_mean(ys)], yerr=[_sd(ys)], marker="o", capsize=3, label=e.name)
    ax.set_xlabel("training tokens (thousands, all policies)")
    ax.set_ylabel("all-in-one model: mean accuracy")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out / "cost_vs_accuracy.png", dpi=110)
    plt.close(fig)
    names.append("cost_vs_accuracy.png")
    return names


def write_report(suite: Suite, out: Path, seeds: list[int], *, command: str | None = None,
                 wall_s: float | None = None) -> Path:
    """OUT/report.md and the plots from OUT/runs/<entry>/s<seed>/, or from OUT/records/ for runs no longer on
    disk (missing runs are listed, not fatal)."""
    results, missing = [], []
    for seed in seeds:
        for e in suite.entries:
            r = load_result(out, e.name, seed)
            (results.append(r) if r else missing.append(f"{e.name}/s{seed}"))
    text = [f"# Suite `{suite.name}`", "", suite.description.strip(), ""]
    if command:
        text += ["Produced by:", "", "```", command, "```", ""]
    walls = [r.wall_s for r in results if r.wall_s is not None]
    if walls:
        text += [f"Training time: {sum(walls) / 60:.1f} min summed over {len(walls)} runs (longest {max(walls):.0f} s)"
                 + (f"; {wall_s / 60:.1f} min wall for this invocation." if wall_s else "."), ""]
    provs = sorted({r.provenance for r in results if r.provenance})
    if provs:
        text += ["Provenance (each run's provenance.json): " + "; ".join(provs), ""]
    if missing:
        text += [f"Missing or unfinished runs: {', '.join(missing)}", ""]
    if results:
        text.append(summarize(suite, results))
        plots = write_plots(suite, results, out)
        text += ["", "## Plots", ""] + [f"![{p}]({p})" for p in plots]
    path = out / "report.md"
    path.write_text("\n".join(text) + "\n")
    return path


app = typer.Typer(add_completion=False)


@app.command("compare")
def compare_command(
    suite: Path = typer.Argument(..., help="Suite file (suites/*.yaml): base spec, seeds, entries."),
    out: Path = typer.Option(..., "--out", "-o", help="Output folder: runs/, report.md, *.png."),
    seeds: Optional[str] = typer.Option(None, "--seeds", help="Comma-separated seeds (default: the suite's)."),
    entries: Optional[str] = typer.Option(None, "--entries",
                                          help="Comma-separated entry names (default: all): run and report only these."),
    jobs: int = typer.Option(1, "--jobs", "-j", help="Runs at a time (one torch thread each is best on CPU)."),
    report_only: bool = typer.Option(False, "--report-only", help="Only (re)write the report from runs already in OUT."),
    api_url: Optional[str] = typer.Option(
        None, "--api", envvar="COPD_API_URL", show_envvar=True,
        help="Submit the runs to this API (its workers train them; they appear in the dashboard) instead of "
             "training them here. Token: COPD_API_TOKEN or the data dir's token file."),
    local: bool = typer.Option(False, "--local", help="Train here even when COPD_API_URL is set."),
) -> None:
    """Run strategies × seeds in the same harness and write a markdown report with plots."""
    import sys

    from contract.client import ApiError, Client, read_token
    from contract.settings import get_settings

    seed_list = None
    if seeds:
        try:
            seed_list = [int(s) for s in seeds.split(",") if s.strip()]
        except ValueError as err:
            bad = str(err).rsplit(": ", 1)[-1]
            typer.echo(f"error: --seeds: {bad} is not a seed (comma-separated integers)", err=True)
            raise typer.Exit(2)
    client = None
    if api_url and not local and not report_only:
        token = read_token(get_settings())
        if token is None:
            typer.echo("error: --api: no API token (set COPD_API_TOKEN)", err=True)
            raise typer.Exit(2)
        client = Client(api_url.rstrip("/"), token)
        try:
            client.healthz()
        except ApiError as err:
            typer.echo(f"error: --api: {err.message}", err=True)
            raise typer.Exit(2)
    args = sys.argv[2:] if sys.argv[1:2] == ["compare"] else sys.argv[1:]
    env = " ".join(f"{k}={os.environ[k]}" for k in ("COPD_TORCH_THREADS",) if k in os.environ)
    try:
        path = compare(suite, out, seed_list, jobs=jobs, report_only=report_only,
                       entries=[e.strip() for e in entries.split(",") if e.strip()] if entries else None,
                       command=(env + " " if env else "") + "copd compare " + " ".join(args), api=client)
    except SpecError as err:
        typer.echo(f"error: {err}", err=True)
        raise typer.Exit(2)
    except ApiError as err:
        typer.echo(f"error: --api: {err.message}", err=True)
        raise typer.Exit(2)
    typer.echo(f"report: {path}")


if __name__ == "__main__":
    app()
