"""`copd runs watch ID`: a live progress bar of a run, from the API only, with its events as they come."""

from __future__ import annotations

import time

from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, Progress, TaskProgressColumn, TextColumn, TimeElapsedColumn

from contract.client import Client
from contract import vocab as V
from contract.schemas import RunPublic

TERMINAL = V.TERMINAL  # the old name here
PHASES = {"rl": "Phase I RLVR", "opd": "Phase II OPD", "lockstep": "Phase II OPD (lockstep)", "eval": "evaluate",
          "merge": "merge"}
LEVEL_STYLE = {"warning": "yellow", "error": "red", "debug": "dim"}


def where(run: RunPublic) -> str:
    """One line: status, cycle, phase and what each busy expert is doing."""
    parts = [run.status]
    if run.phase:
        parts.append(f"cycle {run.cycle}/{run.schedule.cycles} · {PHASES.get(run.phase, run.phase)}")
    busy = [f"{e.name}:{e.unit.split('/')[1] if e.unit else '-'}" for e in run.experts if e.status == "running"]
    if busy:
        parts.append(" ".join(busy))
    return " · ".join(parts)


def watch_run(api: Client, run_id: int, console: Console, interval_s: float = 1.0,
              stop_on: frozenset[str] = V.WATCH_STOP) -> RunPublic:
    """Poll the run until it reaches a state in `stop_on`; prints events above the bar; returns the last view."""
    run = api.get_run(run_id)
    last_event = 0
    with Progress(TextColumn(f"[bold]run {run_id} {escape(run.name)}[/]"), BarColumn(), TaskProgressColumn(),
                  TimeElapsedColumn(), TextColumn("{task.fields[where]}"), console=console) as bar:
        task = bar.add_task("run", total=1.0, completed=run.progress, where=where(run))
        while True:
            events = api.list_events(run_id, after_id=last_event, limit=200).items
            for ev in events:
                style = LEVEL_STYLE.get(ev.level, "")
                who = f"{ev.expert}: " if ev.expert else ""
                text = escape(who + (ev.message.splitlines()[0] if ev.message else ""))
                bar.console.print(f"[dim]{ev.time:%H:%M:%S}[/] " + (f"[{style}]{text}[/]" if style else text),
                                  highlight=False)
                last_event = ev.id
            bar.update(task, completed=run.progress, where=where(run))
            if run.status in stop_on:
                return run
            time.sleep(interval_s)
            run = api.get_run(run_id)
