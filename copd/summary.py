"""The end-of-run table of `copd train`: held-out accuracy of the base, each expert and the merged model.

Read from DIR/metrics.jsonl alone (so it also works on a finished run's folder): `acc/<domain>` points,
where a domain is named by the expert that owns it. The base row is cycle 0 (every policy is the base
model then); a policy's row is its last evaluated cycle; `merged` is the final/merge unit's evaluation.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

from contract.metrics import ACC
from contract.vocab import BASE, MERGED
from trainer.provenance import one_line


def read_provenance(out: Path) -> dict | None:
    """A run folder's provenance.json (versions, commit, base model hash), or None where it has none."""
    try:
        return json.loads((Path(out) / "provenance.json").read_text())
    except (OSError, ValueError):
        return None


def accuracy_table(metrics: Path) -> tuple[list[str], dict[str, dict[str, float]]]:
    """(domains in order, row name → domain → accuracy) from a metrics.jsonl file; rows base, policies, merged."""
    last: dict[str, tuple[int, dict[str, float]]] = {}  # policy → (cycle, its accuracies at that cycle)
    base: dict[str, float] = {}
    merged: dict[str, float] = {}
    domains: list[str] = []
    with open(metrics, encoding="utf-8") as f:
        for line in f:
            try:
                p = json.loads(line)
            except json.JSONDecodeError:
                continue  # a line cut off by an interruption
            key, who = p.get("key", ""), p.get("expert")
            if not ACC.matches(key) or who is None:
                continue
            domain = ACC.name_in(key)
            if domain not in domains:
                domains.append(domain)
            value, cycle = float(p["value"]), int(p["cycle"])
            if who == MERGED:
                merged[domain] = value
                continue
            if cycle == 0:
                base.setdefault(domain, value)
                continue
            seen_cycle, row = last.get(who, (cycle, {}))
            if cycle > seen_cycle:
                row = {}
            row[domain] = value
            last[who] = (max(cycle, seen_cycle), row)
    rows: dict[str, dict[str, float]] = {}
    if base:
        rows[BASE] = base
    rows.update({who: row for who, (_, row) in last.items()})
    if merged:
        rows[MERGED] = merged
    return domains, rows


def format_table(domains: list[str], rows: dict[str, dict[str, float]], n_eval: int | None = None) -> str:
    """A plain-text table: one row per policy, one column per domain and the mean (own domain marked *)."""
    head = ["", *domains, "mean"]
    body = []
    for name, row in rows.items():
        vals = [row.get(d) for d in domains]
        known = [v for v in vals if v is not None]
        cells = [("-" if v is None else f"{v:.3f}") + ("*" if d == name else "") for d, v in zip(domains, vals)]
        body.append([name, *cells, f"{sum(known) / len(known):.3f}" if known else "-"])
    widths = [max(len(r[i]) for r in [head, *body]) for i in range(len(head))]
    lines = ["  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths)))
             for r in [head, *body]]
    lines.insert(1, "  ".join("-" * w for w in widths))
    note = "* = the expert's own domain"
    if n_eval:
        se = math.sqrt(0.25 / n_eval)
        note += (f"; greedy, on up to {n_eval} held-out prompts per domain (with {n_eval}, a standard error of"
                 f" at most ±{se:.3f})")
    return "\n".join([*lines, note])


def run_summary(out: Path, n_eval: int | None = None) -> str:
    """The table and where the run's files are, as `copd train` prints it at the end."""
    out = Path(out)
    metrics = out / "metrics.jsonl"
    parts = []
    if metrics.exists():
        domains, rows = accuracy_table(metrics)
        if rows:
            parts += ["Held-out accuracy (greedy) per domain:", format_table(domains, rows, n_eval), ""]
    parts.append(f"metrics      {metrics}   (one JSON point a line; events in {out / 'events.jsonl'})")
    prov = read_provenance(out)
    if prov is not None:
        parts.append(f"provenance   {out / 'provenance.json'}   ({one_line(prov)})")
    if (out / "final").exists():
        vl = (out / "final" / "preprocessor_config.json").exists()  # a vision-language model (docs/vlm.md)
        loader = "AutoModelForImageTextToText + AutoProcessor" if vl else "AutoModelForCausalLM"
        parts.append(f"final model  {out / 'final'}   ({loader}.from_pretrained)")
    parts.append("dashboard    with `copd up` running, `copd runs create SPEC` runs the same spec there and shows"
                 " it in the dashboard (http://127.0.0.1:8501 by default)")
    return "\n".join(parts)
