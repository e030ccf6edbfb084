"""`copd bench` as a Typer command over `python -m bench` (register with `app.command("bench")(bench)`)."""

from __future__ import annotations

import typer


def bench(
    smoke: bool = typer.Option(False, help="One repeat, no warm-up, smallest sizes, tiny model only (CI)."),
    models: str = typer.Option("tiny,small", help="Comma-separated model recipes: tiny, small."),
    repeats: int = typer.Option(5, help="Timed rounds per comparison (medians reported)."),
    warmup: int = typer.Option(2, help="Untimed rounds first."),
    threads: int = typer.Option(1, help="torch intra-op threads."),
    only: str = typer.Option("", help="Comma-separated comparisons: grpo_step, phase2_1t, phase2_2t, rollout."),
    memory: bool = typer.Option(None, help="Peak memory per side, each in its own process (default: on unless --smoke)."),
    clock: str = typer.Option("wall", help="wall, or cpu: this process's CPU time (steadier on a loaded machine)."),
) -> None:
    """Step rate, OPD overhead, rollout throughput and memory: copd vs TRL vs a stock-transformers baseline."""
    if clock not in ("wall", "cpu"):
        raise typer.BadParameter(f"expected wall or cpu, got {clock!r}", param_hint="--clock")
    from bench.__main__ import main

    args = ["--models", models, "--repeats", str(repeats), "--warmup", str(warmup), "--threads", str(threads),
            "--only", only, "--clock", clock] + (["--smoke"] if smoke else [])
    if memory is not None:
        args.append("--memory" if memory else "--no-memory")
    raise typer.Exit(main(args))
