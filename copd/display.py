"""Console display of a local run: one rich progress bar (cycle, phase, expert, step, reward, ETA) and events."""

from __future__ import annotations

from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from contract.plan import Unit

PHASES = {"rl": "Phase I RLVR", "opd": "Phase II OPD", "eval": "evaluate", "merge": "merge"}


class ConsoleDisplay:
    """What `copd train` shows while it runs."""

    def __init__(self, console: Console | None = None, quiet: bool = False):
        self.console = console or Console(stderr=True)
        self.quiet = quiet
        self.bar: Progress | None = None
        self.task = None
        self._reward: dict[str, float] = {}

    def start(self, spec, units: list[Unit], completed: list[str]) -> None:
        # bar units: one per training step, one per evaluation or merge
        weight = {"rl": spec.schedule.rl_steps, "opd": spec.schedule.opd_steps, "eval": 1, "merge": 1}
        total = sum(weight[u.kind] for u in units)
        done = sum(weight[u.kind] for u in units if u.id in completed)
        self.bar = Progress(
            TextColumn("[bold]{task.fields[where]}"), BarColumn(), MofNCompleteColumn(),
            TextColumn("reward {task.fields[reward]}"), TimeElapsedColumn(), TextColumn("ETA"), TimeRemainingColumn(),
            console=self.console, disable=self.quiet, transient=False)
        self.bar.start()
        self.task = self.bar.add_task("run", total=total, completed=done, where="starting", reward="-")

    def progress(self, unit: str, step: int, total: int, fields: dict[str, Any]) -> None:
        u = Unit.parse(unit)
        if self.bar is None:
            return
        where = f"cycle {u.cycle} · {PHASES[u.kind]} · {u.expert} · step {step}/{total}"
        self.bar.update(self.task, advance=1, where=where, reward=f"{fields.get('reward', 0):.2f}")

    def metrics(self, expert, cycle, step, values) -> None:
        pass

    def event(self, message: str, *, level: str = "info", expert: str | None = None) -> None:
        if self.bar is None or self.quiet:
            return
        if message.startswith("checkpoint") or ": " in message and " steps from " in message:
            return
        style = {"warning": "yellow", "error": "red"}.get(level, "dim")
        self.bar.console.print(f"[{style}]{message}[/]")

    def unit_done(self, unit: Unit) -> None:
        if self.bar is not None and unit.kind in ("eval", "merge"):
            where = "merged" if unit.kind == "merge" else f"cycle {unit.cycle} · evaluated"
            self.bar.update(self.task, advance=1, where=where)

    def stop(self) -> None:
        if self.bar is not None:
            self.bar.stop()
