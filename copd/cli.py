"""The `copd` command line (Typer). Every failure exits non-zero with one line saying what is wrong."""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path
from typing import NoReturn, Optional

import typer

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="copd: Co-Evolving Policy Distillation — train, serve and steer runs.")
db_app = typer.Typer(no_args_is_help=True, help="Database migrations.")
app.add_typer(db_app, name="db")


def fail(message: str, code: int = 2) -> NoReturn:
    """Print one line to stderr and exit non-zero."""
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(code)


def _quiet_libraries() -> None:
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    try:
        from transformers.utils import logging as hf_logging

        hf_logging.set_verbosity_error()
        hf_logging.disable_progress_bar()
    except ImportError:
        pass


@app.command()
def train(
    spec: Path = typer.Argument(..., help="Run spec, YAML or JSON (see examples/copd-tiny.yaml)."),
    out: Path = typer.Option(..., "--out", "-o", help="Output folder: metrics.jsonl, checkpoints/, final/."),
    resume: bool = typer.Option(False, "--resume", help="Continue an interrupted run in --out."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bar."),
) -> None:
    """Run a whole CoPD run in this process (no server): cycles of RLVR and mutual OPD, then merge."""
    from trainer.spec import SpecError, load_spec

    try:
        run_spec = load_spec(spec)
    except SpecError as err:
        fail(str(err))
    _quiet_libraries()
    from copd.display import ConsoleDisplay
    from copd.settings import get_settings
    from trainer.domains import DomainError
    from trainer.local import RunDirError, train_local

    display = ConsoleDisplay(quiet=quiet)
    try:
        train_local(run_spec, out, get_settings().model_cache, resume=resume, display=display,
                    log_fn=lambda m: display.console.print(f"[dim]{m}[/]"))
    except (DomainError, RunDirError, NotImplementedError) as err:
        fail(str(err))
    except KeyboardInterrupt:
        fail(f"interrupted; continue with: copd train {spec} --out {out} --resume", code=130)
    except OSError as err:
        if "base_model" in str(err) or not Path(run_spec.base_model).exists():
            fail(f"base_model: cannot load '{run_spec.base_model}' ({str(err).splitlines()[0]})")
        raise
    typer.echo(f"done: metrics in {out / 'metrics.jsonl'}" + (f", merged model in {out / 'final'}" if (out / "final").exists() else ""))


@app.command()
def api(host: str = typer.Option("127.0.0.1", help="Bind address."),
        port: int = typer.Option(8000, help="Port.")) -> None:
    """Serve the REST API (FastAPI) on HOST:PORT."""
    from server.cli import serve

    _run_or_fail(lambda: serve(host, port))


@db_app.command("upgrade")
def db_upgrade() -> None:
    """Migrate the database (COPD_DATABASE_URL, or the embedded SQLite) to the latest schema."""
    from server.cli import db_upgrade as upgrade

    _run_or_fail(upgrade)


def _run_or_fail(fn) -> None:
    try:
        fn()
    except RuntimeError as err:
        fail(str(err).splitlines()[0] if str(err) else type(err).__name__)


def main() -> None:  # pragma: no cover - console entry point
    logging.basicConfig(level=logging.WARNING)
    app()


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
