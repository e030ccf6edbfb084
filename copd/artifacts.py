"""What a finished run leaves behind, after the fact: `copd merge` (another merge of its experts, evaluated
like the run's own) and `copd export` (the final model with a model card, locally or to the Hugging Face hub).

A run is its folder: `copd train --out DIR`'s DIR, or a worker's `<COPD_DATA_DIR>/runs/<id>` (given as the id).
"""

from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path
from typing import Any, Callable

import yaml

from contract.plan import strategy_of
from contract.spec import MergeSpec, RunSpec
from contract.vocab import MERGED, STRATEGY_NOTES

HF_TARGET_RE = re.compile(r"^hf://([A-Za-z0-9][\w.-]{0,95})/([A-Za-z0-9][\w.-]{0,95})$")
HF_TOKEN_VARS = ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN")
# Files of a checkpoint that are training state, not the model a user downloads.
TRAINING_FILES = {"optimizer.pt", "trainer_state.json", "manifest.json"}


class ArtifactError(ValueError):
    """The run or the target cannot be used as asked (one line)."""


def run_folder(run: str, data_dir: Path) -> Path:
    """The folder of RUN: a path, or a run id of the API's workers (`<data_dir>/runs/<id>`)."""
    folder = data_dir / "runs" / run if run.isdigit() and not Path(run).exists() else Path(run)
    if not (folder / "spec.json").is_file():
        raise ArtifactError(f"{run}: not a run folder (no spec.json in {folder}); give a `copd train --out` folder "
                            "or the id of a run whose folder is in COPD_DATA_DIR/runs")
    return folder


def run_spec(folder: Path) -> RunSpec:
    return RunSpec.model_validate_json((folder / "spec.json").read_text())


def _fresh_out(out: Path) -> None:
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise ArtifactError(f"--out {out}: already exists and is not empty; choose another folder")


def merge_run(folder: Path, merge: MergeSpec, out: Path, model_cache: Path,
              log_fn: Callable[[str], None] = print) -> dict[str, float]:
    """Merge a run's final experts by `merge` into the checkpoint folder `out` and evaluate it like the run's
    own merge (acc/<domain>, eval_len/<domain>, acc_mean); the row is also written to out/eval.json."""
    from trainer.checkpoint import read_state
    from trainer.units import RunContext, evaluate_merged, merge_checkpoints

    spec = run_spec(folder)
    strat = strategy_of(spec)
    if not strat.experts or strat.distill:
        raise ArtifactError(f"{folder}: strategy {spec.strategy} ends with one policy; there are no experts to merge")
    if merge.weights is not None and (unknown := sorted(set(merge.weights) - set(spec.expert_names))):
        raise ArtifactError(f"--weights: unknown expert(s) {', '.join(unknown)} (experts: {', '.join(spec.expert_names)})")
    _fresh_out(out)
    ctx = RunContext.create(spec, folder, model_cache, log_fn)
    sources = ctx.layout.final_sources(spec)
    missing = [str(s) for s in sources if not (s / "config.json").is_file()]
    if missing:
        raise ArtifactError(f"{folder}: the experts' final checkpoints are missing ({missing[0]}); is the run finished?")
    step = max(int(read_state(s).get("step", 0)) if spec.schedule.cycles else 0 for s in sources)
    merge_checkpoints(ctx, sources, out, merge, step)
    model, tok = ctx.load(out, cache=False)
    row = evaluate_merged(ctx, model, tok)
    (out / "eval.json").write_text(json.dumps({"run": str(folder), "merge": merge.model_dump(), "step": step,
                                               "metrics": row}, indent=1))
    return row


def parse_weights(raw: str | None) -> dict[str, float] | None:
    """`a=0.5,b=0.5` → {a: 0.5, b: 0.5}."""
    if raw is None:
        return None
    out: dict[str, float] = {}
    for part in raw.split(","):
        name, sep, value = part.partition("=")
        try:
            out[name.strip()] = float(value)
        except ValueError:
            raise ArtifactError(f"--weights: {part!r} is not EXPERT=NUMBER") from None
        if not sep or not name.strip():
            raise ArtifactError(f"--weights: {part!r} is not EXPERT=NUMBER")
    return out


# ---- export -------------------------------------------------------------------------------------------

def hf_target(to: str | None) -> tuple[str, str] | None:
    """(repo id, token) of `--to hf://org/name`, checked before anything is written; None without --to."""
    if to is None:
        return None
    m = HF_TARGET_RE.match(to)
    if not m:
        raise ArtifactError(f"--to {to}: expected hf://<org>/<name>")
    token = next((os.environ[v] for v in HF_TOKEN_VARS if os.environ.get(v)), None)
    if token is None:
        raise ArtifactError(f"--to {to}: set HF_TOKEN (a Hugging Face token with write access) to upload")
    return f"{m.group(1)}/{m.group(2)}", token


def export_run(folder: Path, out: Path, to: str | None = None) -> Path:
    """Write the run's final model and a model card (README.md) into `out`, atomically; upload it to the
    hub when `to` is hf://org/name. Returns `out`."""
    from trainer.checkpoint import verify_checkpoint

    target = hf_target(to)
    spec = run_spec(folder)
    final = folder / "final"
    if not final.is_dir():
        raise ArtifactError(f"{folder}: has no final model (final/); the run has not finished its merge")
    if not verify_checkpoint(final):
        raise ArtifactError(f"{final}: fails its manifest check (a file is missing or changed)")
    _fresh_out(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.export-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        tmp.mkdir()
        for p in final.iterdir():
            if p.is_file() and p.name not in TRAINING_FILES:
                shutil.copy2(p, tmp / p.name)
        (tmp / "README.md").write_text(model_card(folder, spec))
        if out.exists():
            out.rmdir()
        tmp.rename(out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if target is not None:
        upload(out, *target)
    return out


def upload(folder: Path, repo_id: str, token: str) -> None:
    """Create the hub repo (private) when needed and upload the folder."""
    from huggingface_hub import HfApi

    api = HfApi(token=token)
    api.create_repo(repo_id, private=True, exist_ok=True)
    api.upload_folder(folder_path=str(folder), repo_id=repo_id, commit_message="copd export")


def model_card(folder: Path, spec: RunSpec) -> str:
    """The README.md of an exported model: metadata, the strategy, accuracy per domain, lineage, the spec."""
    from huggingface_hub import ModelCardData

    from copd.summary import accuracy_table, format_table

    state = _json(folder / "final" / "trainer_state.json")
    hub_base = spec.base_model if not spec.base_model.startswith("builtin:") and not Path(spec.base_model).exists() else None
    meta = ModelCardData(library_name="transformers", base_model=hub_base, tags=["copd", spec.strategy, "rlvr"])
    parts = ["---", meta.to_yaml(), "---", "", f"# {spec.name}", "",
             f"Trained with copd (Co-Evolving Policy Distillation) — strategy **{spec.strategy}**: "
             f"{STRATEGY_NOTES.get(spec.strategy, '')}.", ""]
    metrics = folder / "metrics.jsonl"
    if metrics.is_file():
        domains, rows = accuracy_table(metrics)
        if rows:
            parts += ["## Held-out accuracy per domain", "", _markdown_table(domains, rows), "",
                      f"Greedy decoding on up to {spec.eval.prompts} held-out prompts per domain. "
                      "`base` is the untrained model, `merged` this model.", "",
                      "<details><summary>plain text</summary>", "", "```", format_table(domains, rows), "```",
                      "", "</details>", ""]
    merge = state.get("merge") or {"method": "average", "weights": spec.merge.weights}
    parts += ["## Lineage", "",
              f"- base model: `{spec.base_model}`",
              "- experts (each trained on its domain): "
              + ", ".join(f"`{e.name}` ({_domain_name(e.domain)})" for e in spec.experts),
              f"- schedule: {spec.schedule.cycles} cycles × ({spec.schedule.rl_steps} RLVR + "
              f"{spec.schedule.opd_steps} OPD steps), topology `{spec.topology}`",
              f"- this model: {'merge of ' + ', '.join(state.get('merged_from', [])) if state.get('merged_from') else MERGED}"
              f" by `{merge.get('method', 'average')}`"
              + (f" (weights {merge['weights']})" if merge.get("weights") else " (uniform weights)")
              + f", at step {state.get('step', '?')}",
              f"- final checkpoint sha256 (manifest): `{_manifest_sha(folder / 'final')}`", ""]
    parts += ["## Run spec", "", "```yaml", yaml.safe_dump(spec.model_dump(mode="json"), sort_keys=False).rstrip(),
              "```", ""]
    return "\n".join(parts)


def _markdown_table(domains: list[str], rows: dict[str, dict[str, float]]) -> str:
    head = "| model | " + " | ".join(domains) + " | mean |"
    lines = [head, "|" + "---|" * (len(domains) + 2)]
    for name, row in rows.items():
        vals = [row.get(d) for d in domains]
        known = [v for v in vals if v is not None]
        cells = ["-" if v is None else f"{v:.3f}" for v in vals]
        mean = f"{sum(known) / len(known):.3f}" if known else "-"
        lines.append(f"| {name} | " + " | ".join(cells) + f" | {mean} |")
    return "\n".join(lines)


def _domain_name(domain: Any) -> str:
    return domain if isinstance(domain, str) else f"{domain.type}: {domain.path or getattr(domain, 'hub', '')}"


def _manifest_sha(folder: Path) -> str:
    from trainer.checkpoint import manifest_sha

    return manifest_sha(folder)


def _json(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
