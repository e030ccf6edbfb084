"""`copd checkpoints list|gc RUN`: a run's checkpoints on the API, and its retention applied by hand."""

from __future__ import annotations

import typer

checkpoints_app = typer.Typer(no_args_is_help=True, help="A run's checkpoints: list them, apply retention (gc).")


def _fail(message: str, code: int = 1):
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(code)


def _client():
    from contract.client import ApiError, Client

    try:
        return Client.from_settings()
    except ApiError as err:
        _fail(err.detail, 2)


@checkpoints_app.command("list")
def checkpoints_list(run_id: int = typer.Argument(..., help="Run id."),
                     all_: bool = typer.Option(False, "--all", help="Also the deleted ones.")) -> None:
    """Every checkpoint of a run: policy, cycle, step, size, whether it holds optimizer state, where it is."""
    from contract.client import ApiError
    from worker.checkpoints import all_checkpoints

    try:
        items = all_checkpoints(_client(), run_id)
    except ApiError as err:
        _fail(err.message)
    typer.echo(f"{'id':>6}  {'expert':<12} {'cycle':>5} {'step':>7} {'MB':>9}  opt  {'state':<8} uri")
    for c in items:
        if c.deleted_at is not None and not all_:
            continue
        state = "deleted" if c.deleted_at else ("final" if c.final else "kept")
        opt = {True: "yes", False: "no", None: "?"}[c.optimizer]
        typer.echo(f"{c.id:>6}  {c.expert:<12} {c.cycle:>5} {c.step:>7} {c.bytes / 1e6:9.1f}  {opt:<4} {state:<8} {c.uri}")


@checkpoints_app.command("gc")
def checkpoints_gc(run_id: int = typer.Argument(..., help="Run id."),
                   dry_run: bool = typer.Option(False, "--dry-run", help="List what would go; delete nothing."),
                   keep_last: int = typer.Option(None, "--keep-last", min=1, help="Override the spec's "
                                                 "checkpoints.keep_last for this collection."),
                   optimizer: str = typer.Option(None, "--optimizer", help="Override checkpoints.optimizer "
                                                 "(last | all | none).")) -> None:
    """Apply the run's `checkpoints:` retention now: in the store (COPD_CHECKPOINT_URL) and in this host's
    data dir, and mark the records deleted. Never touches final models, what a unit not done needs, or the
    fork points of registered forks."""
    from pydantic import ValidationError

    from contract.client import ApiError
    from contract.spec import CheckpointsSpec
    from worker.checkpoints import apply_plan, describe, retention_plan
    from worker.runs import checkpoint_store, run_folder, spec_of
    from worker.store import StoreError

    api = _client()
    try:
        spec = spec_of(api.get_run(run_id))
        changes = {k: v for k, v in (("keep_last", keep_last), ("optimizer", optimizer)) if v is not None}
        if changes:
            try:
                policy = CheckpointsSpec.model_validate({**spec.checkpoints.model_dump(), **changes})
            except ValidationError as err:
                e = err.errors()[0]
                _fail(f"--{'-'.join(map(str, e['loc'])).replace('_', '-')}: {e['msg']}", 2)
            spec = spec.model_copy(update={"checkpoints": policy})
        plan = retention_plan(api, run_id, spec, run_folder(api, run_id))
        lines = describe(plan)
        freed = sum(h.key.bytes for h in plan.delete) / 1e6
        for line in lines:
            typer.echo(line)
        verb = "would delete" if dry_run else "deleted"
        summary = (f"{verb} {len(plan.delete)} checkpoints ({freed:.1f} MB), "
                   f"{'would drop' if dry_run else 'dropped'} optimizer state of {len(plan.drop_optimizer)}")
        if not dry_run and plan:
            apply_plan(api, run_id, plan, checkpoint_store(), reason="copd checkpoints gc")
        typer.echo(summary if plan else "nothing to collect: every checkpoint is kept by the run's retention")
    except ApiError as err:
        _fail(err.message)
    except (StoreError, OSError) as err:
        _fail(str(err).splitlines()[0])
