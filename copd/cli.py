"""The `copd` command line (Typer). Every failure exits non-zero with one line saying what is wrong."""

from __future__ import annotations

import logging
import os
import re
import sys
from pathlib import Path
from typing import NoReturn, Optional

import typer

from contract.vocab import COMPLETED, CRASHED

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="copd: Co-Evolving Policy Distillation — train, serve and steer runs.")
db_app = typer.Typer(no_args_is_help=True, help="Database migrations.")
app.add_typer(db_app, name="db")
runs_app = typer.Typer(no_args_is_help=True, help="Runs on the API: create, list, watch, pause, resume, cancel.")
app.add_typer(runs_app, name="runs")
knobs_app = typer.Typer(no_args_is_help=True, help="OPD mixing of a run in progress (applied at the next step).")
app.add_typer(knobs_app, name="knobs")
spec_app = typer.Typer(no_args_is_help=True, help="Run specs: the resolved spec with its defaults.")
app.add_typer(spec_app, name="spec")
data_app = typer.Typer(no_args_is_help=True, help="Datasets of a spec: check the field mapping before training.")
app.add_typer(data_app, name="data")
from copd.checkpoints import checkpoints_app  # noqa: E402  (its own module: `copd checkpoints list|gc`)
app.add_typer(checkpoints_app, name="checkpoints")

SET_HELP = "Override a spec field, dotted: --set grpo.lr=1e-5 --set opd.beta=0.5 --set experts.0.domain.path=x.parquet."


def _load_spec_or_fail(spec: Path, sets: Optional[list[str]]):
    """The spec file with its --set overrides applied, or one line and exit 2."""
    from contract.spec import SpecError, load_spec

    try:
        return load_spec(spec, sets or ())
    except SpecError as err:
        fail(str(err))


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
    sets: Optional[list[str]] = typer.Option(None, "--set", help=SET_HELP),
) -> None:
    """Run a whole CoPD run in this process (no server): cycles of RLVR and mutual OPD, then merge."""
    run_spec = _load_spec_or_fail(spec, sets)
    _quiet_libraries()
    from copd.display import ConsoleDisplay
    from contract.settings import get_settings
    from contract.spec import SpecError
    from trainer.domains import DomainError
    from trainer.local import RunDirError, train_local

    from trainer.engines import environment_problems

    for problem in environment_problems(run_spec.rollout, run_spec.compute):
        fail(problem)
    display = ConsoleDisplay(quiet=quiet)
    try:
        train_local(run_spec, out, get_settings().model_cache, resume=resume, display=display,
                    log_fn=lambda m: display.console.print(f"[dim]{m}[/]"))
    except (DomainError, RunDirError, NotImplementedError, SpecError) as err:  # SpecError: COPD_REPORT_TO
        fail(str(err))
    except KeyboardInterrupt:
        fail(f"interrupted; continue with: copd train {spec} --out {out} --resume", code=130)
    except OSError as err:
        if "base_model" in str(err) or not Path(run_spec.base_model).exists():
            fail(f"base_model: cannot load '{run_spec.base_model}' ({str(err).splitlines()[0]})")
        raise
    from copd.summary import run_summary

    typer.echo(run_summary(out, run_spec.eval.prompts))


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


@app.command()
def worker(
    gpu: Optional[str] = typer.Option(None, "--gpu", help="GPU(s) of this worker, e.g. 0 or 0,1 (sets "
                                      "CUDA_VISIBLE_DEVICES; several serve an expert with compute.gpus_per_expert > 1 "
                                      "or teachers on another GPU); names the worker gpu<N>@host."),
    queues: str = typer.Option("gpu,light", "--queues", "-Q",
                               help="Queues to consume: gpu (training units), light (joins)."),
    name: Optional[str] = typer.Option(None, "--name", "-n", help="Celery node name (default copd-<pid>@<host>)."),
    loglevel: str = typer.Option("info", "--loglevel", "-l", help="debug | info | warning | error."),
) -> None:
    """Run a Celery worker: one unit at a time on this machine's GPU (or CPU), reporting to COPD_API_URL."""
    if gpu is not None:
        if not re.fullmatch(r"\d+(,\d+)*", gpu):
            fail(f"--gpu: expected a GPU index or a comma-separated list such as 0,1 (got {gpu!r})")
        os.environ["CUDA_VISIBLE_DEVICES"] = gpu
    _quiet_libraries()
    from worker.celery_app import app as celery_app

    node = name or (f"gpu{gpu.replace(',', '-')}@%h" if gpu is not None else f"copd-{os.getpid()}@%h")
    celery_app.worker_main(["worker", "--pool", "solo", "--concurrency", "1", "--queues", queues, "--hostname", node,
                            "--loglevel", loglevel, "--without-gossip", "--without-mingle", "--without-heartbeat"])


@app.command()
def ui(host: str = typer.Option("127.0.0.1", help="Bind address."),
       port: int = typer.Option(8501, help="Port.")) -> None:
    """Serve the dashboard (Streamlit) on HOST:PORT; it talks to COPD_API_URL."""
    try:
        from ui.launch import run
    except ImportError:
        fail("the dashboard is not installed (no ui package)")
    run(port, host)


@app.command()
def up(host: str = typer.Option("127.0.0.1", help="API bind address."),
       port: int = typer.Option(8000, help="API port."),
       ui_port: int = typer.Option(8501, "--ui-port", help="Dashboard port."),
       no_ui: bool = typer.Option(False, "--no-ui", help="Do not start the dashboard.")) -> None:
    """Start the API, one worker and the dashboard on this machine; Ctrl-C stops all of them."""
    from contract.settings import get_settings
    from copd.stack import Child, child_env, copd_argv, hide_password, port_free, run_stack, ui_entry

    settings = get_settings()
    for what, p in (("API", port), ("dashboard", None if no_ui else ui_port)):
        if p is not None and not port_free(host, p):
            fail(f"{what} port {p} on {host} is in use (another copd up?); choose another with "
                 f"{'--port' if what == 'API' else '--ui-port'}")
    if settings.database_url is None:
        db_upgrade()  # the embedded SQLite file: create or migrate it
    api_url = f"http://{'127.0.0.1' if host in ('0.0.0.0', '::') else host}:{port}"
    logs = settings.data_dir / "logs"
    children = [Child("api", copd_argv("api", "--host", host, "--port", str(port)), logs / "api.log"),
                Child("worker", copd_argv("worker"), logs / "worker.log")]
    with_ui = not no_ui and ui_entry() is not None
    if with_ui:
        children.append(Child("ui", copd_argv("ui", "--host", host, "--port", str(ui_port)), logs / "ui.log"))

    def banner() -> None:
        token = "COPD_API_TOKEN" if settings.api_token else str(settings.token_file)
        broker = (hide_password(settings.broker_url) if settings.broker_url
                  else f"embedded, {settings.data_dir / 'broker'}")
        dashboard = f"http://127.0.0.1:{ui_port}" if with_ui else ("off (--no-ui)" if no_ui else "not installed yet")
        typer.echo("\n".join([
            "copd is up:",
            f"  API        {api_url}   (OpenAPI docs: {api_url}/docs)",
            f"  dashboard  {dashboard}",
            f"  worker     1, broker {broker}",
            f"  token      {token}",
            f"  data       {settings.data_dir}   (logs in {logs})",
            *next_steps(api_url, settings),
            "Ctrl-C stops everything.",
        ]))

    raise typer.Exit(run_stack(children, child_env(api_url), api_url, banner))


def next_steps(api_url: str, settings) -> list[str]:
    """The banner's last lines: what to type in another terminal (with the exports it needs to find this API)."""
    from contract.settings import Settings

    exports = []
    if api_url != Settings.model_fields["api_url"].default:
        exports.append(f"export COPD_API_URL={api_url}")
    if not settings.api_token and settings.data_dir != Settings.model_fields["data_dir"].default:
        exports.append(f"export COPD_DATA_DIR={settings.data_dir}")  # where the CLI finds the token
    lines = ["Next, in another terminal:"]
    if exports:
        lines.append("  " + "; ".join(exports))
    lines.append("  copd runs create examples/copd-tiny.yaml   then   copd runs watch <id>")
    return lines


# ---- runs and knobs over the API -------------------------------------------------------------------

def _api():
    from contract.client import ApiError, Client

    try:
        return Client.from_settings()
    except ApiError as err:
        fail(err.detail)


def _call(fn, *args, **kwargs):
    """An API call; ApiError becomes one line on stderr and exit 1."""
    from contract.client import ApiError

    try:
        return fn(*args, **kwargs)
    except ApiError as err:
        if err.status:
            fail(f"API {err.status}: {err.detail}", code=1)
        fail(f"{err.detail}; is it running? `copd up` (or `copd api`) starts it, and if it listens elsewhere: "
             f"export COPD_API_URL={err.url or 'http://HOST:PORT'} (the URL it printed)", code=1)


@runs_app.command("create")
def runs_create(spec: Path = typer.Argument(..., help="Run spec, YAML or JSON."),
                draft: bool = typer.Option(False, "--draft", help="Create it without starting it."),
                watch: bool = typer.Option(False, "--watch", "-w", help="Then watch it until it ends."),
                sets: Optional[list[str]] = typer.Option(None, "--set", help=SET_HELP)) -> None:
    """Create a run from SPEC on the API and start it (workers pick it up)."""
    run_spec = _load_spec_or_fail(spec, sets)
    with _api() as api:
        run = _call(api.create_run, run_spec)
        if not draft:
            run = _call(api.start, run.id)
        typer.echo(f"run {run.id} '{run.name}' {run.status}; watch it with: copd runs watch {run.id}")
        if watch:
            _watch(api, run.id)


@runs_app.command("list")
def runs_list(status: Optional[list[str]] = typer.Option(None, "--status", "-s",
                                                        help="Only runs in this state (repeatable)."),
              limit: int = typer.Option(20, help="At most this many, newest first.")) -> None:
    """Runs on the API, newest first."""
    with _api() as api:
        page = _call(api.list_runs, status=status, limit=limit)
    for r in page.items:
        typer.echo(f"{r.id:>5}  {r.name:<24} {r.status:<10} {r.strategy:<10} cycle {r.cycle}/{r.schedule.cycles}"
                   f"  {r.progress * 100:5.1f}%  {r.created_at:%Y-%m-%d %H:%M}")
    typer.echo(f"{len(page.items)} of {page.total} runs", err=True)


@runs_app.command("watch")
def runs_watch(run_id: int = typer.Argument(..., help="Run id.")) -> None:
    """A live progress bar of the run and its events, until it completes (exit 0) or stops (exit 1)."""
    with _api() as api:
        _watch(api, run_id)


def _watch(api, run_id: int) -> None:
    from rich.console import Console

    from copd.watch import watch_run

    try:
        run = _call(watch_run, api, run_id, Console(stderr=True))
    except KeyboardInterrupt:
        typer.echo(f"stopped watching; run {run_id} goes on", err=True)
        raise typer.Exit(130) from None
    if run.status != COMPLETED:
        hint = f"; continue it with: copd runs resume {run_id}" if run.status == CRASHED else ""
        fail(f"run {run_id} is {run.status}{hint}", code=1)
    typer.echo(f"run {run_id} completed")


def _lifecycle(verb: str):
    def command(run_id: int = typer.Argument(..., help="Run id.")) -> None:
        with _api() as api:
            run = _call(api.action, run_id, verb)
        typer.echo(f"run {run.id} is {run.status}")

    command.__doc__ = {"start": "Start a draft run.", "pause": "Pause: no new unit starts; the current ones finish.",
                       "resume": "Resume a paused or crashed run from its last completed unit.",
                       "cancel": "Cancel: units stop at their next step boundary."}[verb]
    return command


for _verb in ("start", "pause", "resume", "cancel"):
    runs_app.command(_verb)(_lifecycle(_verb))


def parse_knob_assignments(items: list[str]) -> dict:
    """`beta=0.5 beta.text=0.2 teacher_weights.text.image=0 rl_steps=4` → the knob changes mapping."""
    import json

    changes: dict = {}
    for item in items:
        path, sep, raw = item.partition("=")
        if not sep or not path:
            raise ValueError(f"'{item}': expected KNOB=VALUE (e.g. beta=0.5 or beta.text=0.5)")
        try:
            value = json.loads(raw)
        except ValueError:
            value = raw
        keys = path.split(".")
        node = changes
        for k in keys[:-1]:
            node = node.setdefault(k, {})
            if not isinstance(node, dict):
                raise ValueError(f"'{item}': {k} is set to a value and to a map")
        node[keys[-1]] = value
    return changes


@knobs_app.command("set")
def knobs_set(run_id: int = typer.Argument(..., help="Run id."),
              assignments: list[str] = typer.Argument(
                  ..., help="KNOB=VALUE ...: beta=0.5, beta.text=0.5, rl_steps=4, opd_steps=2, lr=1e-4, "
                            "teacher_weights.text.image=0")) -> None:
    """Change OPD mixing of a run; workers apply it at the next step boundary and report the version."""
    try:
        changes = parse_knob_assignments(assignments)
    except ValueError as err:
        fail(str(err))
    with _api() as api:
        knobs = _call(api.set_knobs, run_id, changes)
    typer.echo(f"run {run_id} knobs version {knobs.version}: "
               + " ".join(f"{k}={v}" for k, v in changes.items()) + " (applied at the next step boundary)")


@knobs_app.command("show")
def knobs_show(run_id: int = typer.Argument(..., help="Run id.")) -> None:
    """Current knob values and every version, with where a worker applied it."""
    import json

    with _api() as api:
        knobs = _call(api.get_knobs, run_id)
    typer.echo(f"version {knobs.version}: {json.dumps(knobs.values)}")
    for h in knobs.history[1:]:
        applied = f"applied at cycle {h.applied.cycle} step {h.applied.step}" if h.applied else "not applied yet"
        typer.echo(f"  v{h.version} by {h.author}: {json.dumps(h.changes)} — {applied}")


# ---- specs and data -----------------------------------------------------------------------------

@spec_app.command("show")
def spec_show(spec: Path = typer.Argument(..., help="Run spec, YAML or JSON."),
              sets: Optional[list[str]] = typer.Option(None, "--set", help=SET_HELP),
              as_json: bool = typer.Option(False, "--json", help="JSON instead of YAML.")) -> None:
    """Print the resolved spec: the file, --set overrides applied, every default filled in."""
    import json

    import yaml

    data = _load_spec_or_fail(spec, sets).model_dump(mode="json")
    typer.echo(json.dumps(data, indent=1) if as_json else yaml.safe_dump(data, sort_keys=False, allow_unicode=True).rstrip())


@data_app.command("check")
def data_check(spec: Path = typer.Argument(..., help="Run spec, YAML or JSON."),
               sets: Optional[list[str]] = typer.Option(None, "--set", help=SET_HELP),
               rows: int = typer.Option(200, "--rows", min=1, help="Rows per split whose gold answer is scored.")) -> None:
    """Load every domain: rows per split, a prompt as the model sees it, its answer, and the verifier's
    score of the gold answers (should be 1.0), so a broken field mapping shows before a GPU hour is spent."""
    run_spec = _load_spec_or_fail(spec, sets)
    _quiet_libraries()
    from copd.datacheck import DataCheckError, check_domains

    try:
        ok = check_domains(run_spec, rows, typer.echo)
    except DataCheckError as err:
        fail(str(err))
    if not ok:
        typer.echo("warning: a gold answer scored below 1.0 (see above): check answer_key, the verifier and extract",
                   err=True)


# ---- after the fact: another merge of a run's experts, and the export of its final model ----------------

@app.command("merge")
def merge_command(
    run: str = typer.Argument(..., help="A `copd train --out` folder, or the id of an API run (COPD_DATA_DIR/runs/<id>)."),
    out: Path = typer.Option(..., "--out", "-o", help="New folder for the merged model (a Hugging Face folder)."),
    method: Optional[str] = typer.Option(None, "--method", help="average | task_arithmetic | ties | dare_linear | "
                                         "dare_ties (default: the run's merge.method)."),
    density: Optional[float] = typer.Option(None, "--density", help="ties / dare_*: share of each delta kept, in (0, 1]."),
    scale: Optional[float] = typer.Option(None, "--scale", help="λ: the merged delta is added to the base times this."),
    weights: Optional[str] = typer.Option(None, "--weights", help="Expert weights, summing to 1: text=0.5,image=0.5."),
    sign_method: Optional[str] = typer.Option(None, "--sign-method", help="ties / dare_ties: total | frequency."),
) -> None:
    """Merge a finished run's experts again by another method, and evaluate it like the run's own merge."""
    from pydantic import ValidationError

    from contract.settings import get_settings
    from contract.spec import MergeSpec, format_validation_error
    from copd.artifacts import ArtifactError, merge_run, parse_weights, run_folder, run_spec
    from copd.summary import accuracy_table, format_table

    settings = get_settings()
    try:
        folder = run_folder(run, settings.data_dir)
        spec = run_spec(folder)
        given = {"method": method, "density": density, "scale": scale, "weights": parse_weights(weights),
                 "sign_method": sign_method}
        merge = MergeSpec.model_validate({**spec.merge.model_dump(), **{k: v for k, v in given.items() if v is not None}})
    except ValidationError as err:
        fail(f"--{format_validation_error(err)}")
    except ArtifactError as err:
        fail(str(err))
    _quiet_libraries()
    from trainer.merge import MergeError

    try:
        row = merge_run(folder, merge, out, settings.model_cache, log_fn=lambda m: typer.echo(m, err=True))
    except (ArtifactError, MergeError) as err:
        fail(str(err))
    domains, rows = accuracy_table(folder / "metrics.jsonl") if (folder / "metrics.jsonl").is_file() else ([], {})
    from contract.metrics import ACC

    label = f"{merge.method}" + (f" d={merge.density:g}" if merge.method != "average" else "")
    rows[label] = {ACC.name_in(k): v for k, v in row.items() if ACC.matches(k)}
    typer.echo(format_table(domains or list(rows[label]), rows, spec.eval.prompts))
    typer.echo(f"merged model  {out}   (eval in {out / 'eval.json'})")


@app.command("export")
def export_command(
    run: str = typer.Argument(..., help="A `copd train --out` folder, or the id of an API run (COPD_DATA_DIR/runs/<id>)."),
    out: Path = typer.Option(..., "--out", "-o", help="New folder: the final model and its model card (README.md)."),
    to: Optional[str] = typer.Option(None, "--to", help="Also upload to the Hugging Face hub: hf://<org>/<name> "
                                     "(a private repo; the token from HF_TOKEN)."),
) -> None:
    """Write a run's final model with a model card (spec, strategy, accuracy per domain, lineage)."""
    from contract.settings import get_settings
    from copd.artifacts import ArtifactError, export_run, hf_target, run_folder

    try:
        hf_target(to)  # a bad target or a missing token fails before anything is written
        folder = run_folder(run, get_settings().data_dir)
        export_run(folder, out, to)
    except ArtifactError as err:
        fail(str(err))
    typer.echo(f"exported     {out}" + (f"   (uploaded to {to})" if to else ""))


def _register_compare() -> None:
    from copd.compare import compare_command  # torch-free at import; trains only when called

    app.command("compare")(compare_command)


_register_compare()

try:  # bench/ lives in the repository, not in the installed package: `copd bench` works from the repo root
    if (Path.cwd() / "bench" / "cli.py").is_file() and str(Path.cwd()) not in sys.path:
        sys.path.append(str(Path.cwd()))  # appended: installed packages still win over same-named folders
    from bench.cli import bench as _bench

    app.command("bench")(_bench)
except ImportError:
    @app.command("bench")
    def _bench_elsewhere() -> None:
        """Benchmarks vs TRL and a stock-transformers baseline (run from the repository root; see docs/perf.md)."""
        fail("copd bench runs from the repository root, where bench/ lives (or: python -m bench)")


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
