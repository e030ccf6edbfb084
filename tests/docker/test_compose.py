"""The lab-server deployment (docker/, docker-compose*.yml, .env.example), checked without a Docker engine.

No engine runs on CI, so these tests read the files: the compose files parse, whatever a service waits for
is waited on by condition, GPU reservations are well formed, every variable is documented, no secret has
a default, and each image installs the project through its pyproject extras and runs exactly the `copd`
command that CI exercises. Where a Compose v2 client exists, `docker compose config` checks the rest.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from fnmatch import fnmatch
from functools import lru_cache
from pathlib import Path
from typing import Any

import pytest
import yaml

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - CI runs 3.11
    tomllib = pytest.importorskip("tomli")

ROOT = Path(__file__).resolve().parents[2]
COMPOSE = ROOT / "docker-compose.yml"
COMPOSE_CPU = ROOT / "docker-compose.cpu.yml"
ENV_EXAMPLE = ROOT / ".env.example"
DOCKERIGNORE = ROOT / ".dockerignore"
DOCKERFILES = {name: ROOT / "docker" / f"Dockerfile.{name}" for name in ("api", "ui", "worker")}

# The commands CI runs, and the image each runs in.
ENTRY = {"api": ["copd", "api"], "ui": ["copd", "ui"], "worker": ["copd", "worker"],
         "migrate": ["copd", "db", "upgrade"]}
IMAGE_OF = {"api": "api", "migrate": "api", "ui": "ui", "worker": "worker"}
# The pyproject extras each image must install; api and ui stay slim (no torch).
EXTRAS = {"api": {"api"}, "ui": {"ui"}, "worker": {"worker", "gpu"}}
TORCH_EXTRAS = {"worker", "gpu"}
SECRETS = ("COPD_API_TOKEN", "POSTGRES_PASSWORD", "REDIS_PASSWORD")
SECRET_NAME = re.compile(r"TOKEN|PASSWORD|SECRET|AUTH")
# After the step in progress ends, a stopping worker still requeues its unit and exits (seconds).
SHUTDOWN_MARGIN_S = 30
CONDITIONS = ("service_healthy", "service_completed_successfully")


# ---- loading ----

class Reset:
    """A value tagged `!reset` or `!override` in an override file: it replaces the base file's value."""

    def __init__(self, value: Any) -> None:
        self.value = value


class ComposeLoader(yaml.SafeLoader):
    """yaml.safe_load plus the merge tags Compose understands (!reset, !override)."""


def _tagged(loader: yaml.SafeLoader, node: yaml.Node) -> Reset:
    if isinstance(node, yaml.MappingNode):
        return Reset(loader.construct_mapping(node, deep=True))
    if isinstance(node, yaml.SequenceNode):
        return Reset(loader.construct_sequence(node, deep=True))
    return Reset(loader.construct_scalar(node))


ComposeLoader.add_constructor("!reset", _tagged)
ComposeLoader.add_constructor("!override", _tagged)  # replaces too: `merge` treats both alike


@lru_cache
def load(path: Path) -> dict[str, Any]:
    data = yaml.load(path.read_text(), Loader=ComposeLoader)
    assert isinstance(data, dict) and isinstance(data.get("services"), dict), f"{path.name}: no services"
    return data


def services() -> dict[str, dict[str, Any]]:
    return load(COMPOSE)["services"]


def workers() -> dict[str, dict[str, Any]]:
    return {n: s for n, s in services().items() if s.get("command", [])[:2] == ENTRY["worker"]}


REPLACED = {"command", "entrypoint", "test"}  # sequences an override replaces; other sequences append


def merge(base: Any, over: Any, key: str = "") -> Any:
    """Compose's merge of an override file, enough for these files: maps merge, lists append, tags replace."""
    if isinstance(over, Reset):
        return over.value
    if isinstance(base, dict) and isinstance(over, dict):
        return {**base, **{k: merge(base.get(k), v, k) for k, v in over.items()}}
    if isinstance(base, list) and isinstance(over, list) and key not in REPLACED:
        return base + over
    return over


def env_names(text: str) -> set[str]:
    """Variables a compose file interpolates: ${VAR...} and $VAR, not the $$ escape."""
    text = text.replace("$$", "")
    return set(re.findall(r"\$\{([A-Za-z_][A-Za-z0-9_]*)", text)) | set(
        re.findall(r"\$([A-Za-z_][A-Za-z0-9_]*)", text))


def passthrough_names(data: dict[str, Any]) -> set[str]:
    """Environment entries without a value: passed from the shell or .env when set there."""
    names: set[str] = set()
    for svc in data["services"].values():
        env = svc.get("environment") or {}
        if isinstance(env, dict):
            names |= {k for k, v in env.items() if v is None}
        else:
            names |= {e for e in env if "=" not in e}
    return names


def documented_names() -> set[str]:
    return set(re.findall(r"^#?[ \t]*([A-Z_][A-Z0-9_]*)=", ENV_EXAMPLE.read_text(), flags=re.M))


def seconds(duration: str | int | float) -> float:
    if isinstance(duration, (int, float)):
        return float(duration)
    parts = re.findall(r"(\d+(?:\.\d+)?)(h|ms|us|m|s)", duration)
    assert parts and "".join(n + u for n, u in parts) == duration, f"not a duration: {duration!r}"
    scale = {"h": 3600, "m": 60, "s": 1, "ms": 1e-3, "us": 1e-6}
    return sum(float(n) * scale[u] for n, u in parts)


# ---- compose: services, dependencies, health ----

def test_compose_files_parse_and_hold_the_whole_system():
    names = set(services())
    assert {"postgres", "redis", "migrate", "api", "ui", "flower", "minio", "minio-init"} <= names
    assert workers(), "no `copd worker` service"
    assert set(load(COMPOSE_CPU)["services"]) <= names, "the CPU override names a service the base lacks"


def test_optional_services_sit_behind_profiles():
    svc = services()
    assert svc["flower"]["profiles"] == ["flower"]
    assert svc["minio"]["profiles"] == ["minio"] and svc["minio-init"]["profiles"] == ["minio"]
    core = ["postgres", "redis", "migrate", "api", "ui", *workers()]
    assert not [n for n in core if svc[n].get("profiles")], "a core service only starts with a profile"


def test_every_dependency_exists_and_is_waited_on_by_condition():
    svc = services()
    for name, s in svc.items():
        deps = s.get("depends_on", {})
        assert isinstance(deps, dict), f"{name}: depends_on must name a condition for each dependency"
        for dep, how in deps.items():
            assert dep in svc, f"{name} depends on missing service {dep}"
            assert how.get("condition") in CONDITIONS, f"{name} -> {dep}: {how.get('condition')}"
            if how["condition"] == "service_healthy":
                assert svc[dep].get("healthcheck", {}).get("test"), f"{name} waits for {dep}'s health, which has no healthcheck"
            else:
                assert svc[dep].get("restart") == "no", f"{name} waits for {dep} to finish, but {dep} restarts"
            if svc[dep].get("profiles") and not set(svc[dep]["profiles"]) <= set(s.get("profiles", [])):
                assert how.get("required") is False, f"{name} needs {dep}, which only runs with a profile"


def test_healthchecks_probe_the_service_itself():
    svc = services()
    assert "pg_isready" in svc["postgres"]["healthcheck"]["test"]
    assert "redis-cli ping" in " ".join(svc["redis"]["healthcheck"]["test"])
    assert any("/healthz" in part for part in svc["api"]["healthcheck"]["test"])
    assert any("/_stcore/health" in part for part in svc["ui"]["healthcheck"]["test"])


def test_state_lives_on_named_volumes_and_redis_keeps_every_queued_unit():
    data = load(COMPOSE)
    svc = data["services"]
    assert "postgres-data:/var/lib/postgresql/data" in svc["postgres"]["volumes"]
    assert "redis-data:/data" in svc["redis"]["volumes"]
    for volume in ("postgres-data", "redis-data", "copd-data"):
        assert volume in data["volumes"]
    cmd = svc["redis"]["command"]
    assert cmd[cmd.index("--appendonly") + 1] == "yes"
    assert cmd[cmd.index("--maxmemory-policy") + 1] == "noeviction"


def test_database_users_wait_for_the_migration():
    svc = services()
    assert svc["migrate"]["command"] == ENTRY["migrate"]
    assert svc["migrate"]["depends_on"]["postgres"]["condition"] == "service_healthy"
    for name in ("api", "ui", *workers()):
        assert svc[name]["depends_on"]["migrate"]["condition"] == "service_completed_successfully", name


def test_api_and_workers_share_one_data_volume_at_copd_data_dir():
    svc = services()
    for name in ("api", *workers()):
        data_dir = svc[name]["environment"]["COPD_DATA_DIR"]
        assert f"copd-data:{data_dir}" in svc[name]["volumes"], name


def test_services_run_the_commands_ci_exercises_in_the_right_image():
    svc = services()
    for name, role in [("api", "api"), ("migrate", "migrate"), ("ui", "ui")] + [(w, "worker") for w in workers()]:
        s = svc[name]
        assert s["command"][:len(ENTRY[role])] == ENTRY[role], name
        assert "entrypoint" not in s, f"{name} must run its copd command directly"
        assert s["build"]["dockerfile"] == f"docker/Dockerfile.{IMAGE_OF[role]}", name
        assert s["image"].endswith(f"-{IMAGE_OF[role]}:${{COPD_IMAGE_TAG:-local}}"), name


def test_published_services_listen_on_every_interface_of_their_container():
    """`copd api` and `copd ui` bind 127.0.0.1 by default: unreachable through a published port."""
    svc = services()
    for name in ("api", "ui"):
        cmd, port = svc[name]["command"], svc[name]["ports"][0].rsplit(":", 1)[1]
        assert cmd[cmd.index("--host") + 1] == "0.0.0.0" and cmd[cmd.index("--port") + 1] == port, name
        assert any(f"127.0.0.1:{port}/" in part for part in svc[name]["healthcheck"]["test"]), name


# ---- compose: GPU workers ----

def test_worker_gpu_reservations_are_well_formed():
    seen: list[str] = []
    for name, s in workers().items():
        devices = s["deploy"]["resources"]["reservations"]["devices"]
        assert len(devices) == 1, f"{name}: one GPU per worker"
        dev = devices[0]
        assert dev["driver"] == "nvidia" and dev["capabilities"] == ["gpu"], name
        assert "count" not in dev, f"{name}: count and device_ids exclude each other"
        ids = dev["device_ids"]
        assert len(ids) == 1 and isinstance(ids[0], str) and ids[0].isdigit(), f"{name}: device_ids {ids}"
        seen += ids
        # The reserved GPU is the only one the container sees: always cuda:0 inside.
        cmd = s["command"]
        assert cmd[cmd.index("--gpu") + 1] == "0", name
    assert len(seen) == len(set(seen)), f"two workers reserve the same GPU: {seen}"


def test_worker_stop_grace_outlasts_the_soft_shutdown():
    for name, s in workers().items():
        soft = float(s["x-soft-shutdown-s"])
        grace = seconds(s["stop_grace_period"])
        assert grace >= soft + SHUTDOWN_MARGIN_S, f"{name}: stop_grace_period {grace}s vs soft shutdown {soft}s"
        assert s.get("init") is True, f"{name}: an init process forwards SIGTERM to the worker"


def test_cpu_override_removes_every_gpu_reservation():
    base, cpu = load(COMPOSE), load(COMPOSE_CPU)
    assert set(workers()) <= set(cpu["services"]), "a worker keeps its GPU reservation in the CPU override"
    merged = merge(base, cpu)
    for name in workers():
        s = merged["services"][name]
        assert not s.get("deploy", {}).get("resources", {}).get("reservations", {}).get("devices"), name
        assert s["command"][:2] == ENTRY["worker"] and "--gpu" not in s["command"], name


LAB_DOC = ROOT / "docs" / "lab-server.md"


def doc_gpu1_snippet() -> str:
    """The docs' docker-compose.override.yml that adds a worker on GPU 1."""
    blocks = re.findall(r"```yaml\n(.*?)```", LAB_DOC.read_text(), flags=re.S)
    found = [b for b in blocks if "worker-gpu1:" in b]
    assert len(found) == 1, "docs/lab-server.md: one yaml block adds worker-gpu1"
    return found[0]


def test_documented_extra_gpu_worker_reserves_only_its_own_gpu():
    snippet = yaml.load(doc_gpu1_snippet(), Loader=ComposeLoader)["services"]["worker-gpu1"]
    ext = snippet.pop("extends")
    assert ext["file"] == "docker-compose.yml" and ext["service"] in workers()
    s = merge(services()[ext["service"]], snippet)
    assert s["deploy"]["resources"]["reservations"]["devices"] == [
        {"driver": "nvidia", "device_ids": ["1"], "capabilities": ["gpu"]}]
    assert s["command"] == ["copd", "worker", "--gpu", "0"] and s["stop_grace_period"]


# ---- environment and secrets ----

def test_every_variable_the_compose_files_use_is_in_env_example():
    used: set[str] = set()
    for path in (COMPOSE, COMPOSE_CPU):
        used |= env_names(path.read_text()) | passthrough_names(load(path))
    documented = documented_names()
    assert not used - documented, f"not in .env.example: {sorted(used - documented)}"
    assert not documented - used, f".env.example documents unused: {sorted(documented - used)}"


def test_no_secret_has_a_default():
    text = COMPOSE.read_text().replace("$$", "")
    for name in SECRETS:
        uses = re.findall(r"\$\{" + name + r"([^A-Za-z0-9_][^}]*)?\}?", text)
        assert uses, f"{name} unused"
        assert all(u.startswith(":?") for u in uses), f"{name} must be required (${{{name}:?...}}) everywhere"
        assert not re.search(r"\$" + name + r"\b", text), f"{name} used as ${name}, which cannot be required"
    for name, default in re.findall(r"\$\{([A-Z0-9_]+):?-([^}$]*)\}", text):
        assert not (SECRET_NAME.search(name) and default), f"{name} has a default value"
    env = dict(re.findall(r"^([A-Z_][A-Z0-9_]*)=(.*)$", ENV_EXAMPLE.read_text(), flags=re.M))
    for name in SECRETS:
        assert env.get(name) == "", f".env.example must leave {name} empty"
    assert not [n for n, v in env.items() if SECRET_NAME.search(n) and v], ".env.example holds a secret"


def test_dockerignore_keeps_env_files_out_of_images():
    lines = [ln.strip() for ln in DOCKERIGNORE.read_text().splitlines() if ln.strip() and not ln.startswith("#")]
    assert lines[0] == "*", "the build context is an allow-list"
    assert not [ln for ln in lines if ln.startswith("!") and ".env" in ln]


# ---- Dockerfiles ----

def instructions(path: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined and comments dropped."""
    out: list[tuple[str, str]] = []
    pending = ""
    for line in path.read_text().splitlines():
        if not pending and (not line.strip() or line.lstrip().startswith("#")):
            continue
        if line.rstrip().endswith("\\"):
            pending += line.rstrip()[:-1] + " "
            continue
        full = (pending + line).strip()
        pending = ""
        if full.startswith("#"):
            continue
        word, _, args = full.partition(" ")
        out.append((word.upper(), args.strip()))
    return out


def stages(path: Path) -> tuple[dict[str, str], list[list[tuple[str, str]]]]:
    """Global ARG defaults, then the instructions of each stage (each starting with its FROM)."""
    global_args: dict[str, str] = {}
    result: list[list[tuple[str, str]]] = []
    for ins, args in instructions(path):
        if ins == "FROM":
            result.append([(ins, args)])
        elif result:
            result[-1].append((ins, args))
        elif ins == "ARG" and "=" in args:
            key, _, value = args.partition("=")
            global_args[key.strip()] = value.strip().strip('"')
    return global_args, result


def base_images(path: Path) -> list[str]:
    global_args, result = stages(path)
    aliases: set[str] = set()
    images = []
    for stage in result:
        words = stage[0][1].split()
        image = re.sub(r"\$\{?(\w+)\}?", lambda m: global_args.get(m.group(1), m.group(0)), words[0])
        if image not in aliases:
            images.append(image)
        if len(words) >= 3 and words[-2].upper() == "AS":
            aliases.add(words[-1])
    return images


def installed_extras(path: Path) -> set[str]:
    extras: set[str] = set()
    for ins, args in instructions(path):
        if ins == "RUN" and "pip install" in args:
            for group in re.findall(r"""(?:^|\s)["']?\.\[([\w,\s-]+)\]["']?(?=\s|$)""", args):
                extras |= {e.strip() for e in group.split(",")}
    return extras


@pytest.mark.parametrize("image", sorted(DOCKERFILES))
def test_dockerfile_is_multi_stage_pinned_and_unprivileged(image):
    path = DOCKERFILES[image]
    assert path.is_file()
    _, result = stages(path)
    assert len(result) >= 2, f"{path.name}: not a multi-stage build"
    for ref in base_images(path):
        assert "$" not in ref, f"{path.name}: unresolved base {ref}"
        name, _, tag = ref.partition("@")[0].rpartition(":")
        assert "@sha256:" in ref or (name and tag != "latest" and re.search(r"\d", tag)), f"{path.name}: unpinned base {ref}"
    final = result[-1]
    users = [args for ins, args in final if ins == "USER"]
    assert users and users[-1].split(":")[0] not in ("root", "0"), f"{path.name}: runs as root"
    assert any(ins == "COPY" and args.startswith("--from=") for ins, args in final), f"{path.name}: final stage copies nothing from the build"


@pytest.mark.parametrize("image", sorted(DOCKERFILES))
def test_dockerfile_installs_the_project_through_its_extras(image):
    extras = installed_extras(DOCKERFILES[image])
    assert EXTRAS[image] <= extras, f"{image}: installs extras {sorted(extras)}"
    if image != "worker":
        assert not extras & TORCH_EXTRAS, f"{image} image must stay slim (no torch)"


def test_worker_builds_on_a_cuda_pytorch_base():
    images = base_images(DOCKERFILES["worker"])
    assert images and all(re.fullmatch(r"pytorch/pytorch:\d+\.\d+\.\d+-cuda[\d.]+-cudnn\d+-runtime", i) for i in images), images


@pytest.mark.parametrize("image", sorted(DOCKERFILES))
def test_dockerfile_runs_exactly_the_ci_command(image):
    _, result = stages(DOCKERFILES[image])
    final = result[-1]
    assert not [a for ins, a in final if ins == "ENTRYPOINT"], f"{image}: CMD alone says what runs"
    cmd = json.loads([a for ins, a in final if ins == "CMD"][-1])
    assert cmd[:len(ENTRY[image])] == ENTRY[image]
    if "--host" in cmd:
        assert cmd[cmd.index("--host") + 1] == "0.0.0.0", f"{image}: unreachable from outside the container"


def _pyproject_extras() -> dict[str, list[str]]:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())["project"].get("optional-dependencies", {})


def test_every_extra_a_dockerfile_installs_exists_in_pyproject():
    declared = set(_pyproject_extras())
    for image, path in DOCKERFILES.items():
        missing = installed_extras(path) - declared
        assert not missing, f"{path.name} installs extras pyproject.toml lacks: {sorted(missing)}"


def test_slim_images_install_no_torch():
    extras = _pyproject_extras()
    if not {"api", "ui"} <= set(extras):
        pytest.skip("extras split pending")
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]

    def requirements(extra_names: set[str]) -> set[str]:
        reqs = set(project.get("dependencies", []))
        for extra in extra_names:
            for req in extras.get(extra, []):
                inner = re.fullmatch(r"copd\[([\w,\s-]+)\]", req.replace(" ", ""))
                reqs |= requirements(set(inner.group(1).split(","))) if inner else {req}
        return reqs

    for image in ("api", "ui"):
        names = {re.split(r"[\s\[<>=!~;]", r, maxsplit=1)[0].lower() for r in requirements(installed_extras(DOCKERFILES[image]))}
        assert "torch" not in names, f"the {image} image would install torch"


PACKAGES = ("copd", "server", "trainer", "worker", "ui")  # [tool.setuptools.packages.find] include


def _ships(path: Path, setuptools: dict[str, Any], root: Path = ROOT) -> bool:
    """Whether a regular (non-editable) install, as in the images, carries this file (setuptools' rules)."""
    namespaces = setuptools.get("packages", {}).get("find", {}).get("namespaces", True)
    rel = path.relative_to(root)
    home = root / rel.parts[0]
    for part in rel.parts[1:-1]:  # the deepest folder that is still a package
        folder = home / part
        if not ((folder / "__init__.py").is_file() or (namespaces and "." not in part)):
            break
        home = folder
    if home == path.parent and path.suffix == ".py":
        return True
    inner = path.relative_to(home).parts
    package_data = setuptools.get("package-data", {})
    patterns = package_data.get("*", []) + package_data.get(".".join(home.relative_to(root).parts), [])
    return any(len(p.split("/")) == len(inner) and all(fnmatch(a, b) for a, b in zip(inner, p.split("/")))
               for p in patterns)


def test_every_source_file_ships_in_the_images():
    """The images install the project non-editable: a data file no package-data pattern names is left out."""
    setuptools = tomllib.loads((ROOT / "pyproject.toml").read_text()).get("tool", {}).get("setuptools", {})
    left_out = []
    for top in PACKAGES:
        for path in sorted((ROOT / top).rglob("*")):
            if path.is_file() and "__pycache__" not in path.parts and path.suffix != ".pyc" and not _ships(path, setuptools):
                left_out.append(str(path.relative_to(ROOT)))
    assert not left_out, f"not in a pip-installed copd (add __init__.py or package-data): {left_out}"


# ---- the CLI the images call ----

@pytest.mark.parametrize("path, flags", [(("api",), {"--host", "--port"}), (("db", "upgrade"), set()),
                                         (("worker",), {"--gpu"}), (("ui",), {"--host", "--port"})])
def test_copd_accepts_the_commands_the_images_run(path, flags):
    """The images call these with these flags; a command still being built skips until it lands."""
    from typer.main import get_command

    from copd.cli import app

    command = get_command(app)
    for part in path:
        sub = getattr(command, "commands", {}).get(part)
        if sub is None:
            pytest.skip(f"`copd {' '.join(path)}` is not in copd/cli.py yet")
        command = sub
    options = {opt for param in command.params for opt in getattr(param, "opts", [])}
    assert flags <= options, f"`copd {' '.join(path)}` lacks {sorted(flags - options)}"


# ---- `docker compose config`, where a Compose v2 client exists ----

@lru_cache
def compose_cli() -> tuple[str, ...] | None:
    """`docker compose`, else a standalone Compose v2 `docker-compose` that reports failures by exit code."""
    candidates = []
    if shutil.which("docker"):
        candidates.append((shutil.which("docker"), "compose"))
    if shutil.which("docker-compose"):
        candidates.append((shutil.which("docker-compose"),))
    for cli in candidates:
        try:
            version = subprocess.run([*cli, "version"], capture_output=True, text=True, timeout=20)
            broken = subprocess.run([*cli, "-f", str(ROOT / "no-such-compose.yml"), "config", "-q"],
                                    capture_output=True, timeout=20)
        except (OSError, subprocess.TimeoutExpired):
            continue
        if version.returncode == 0 and re.search(r"v2\.\d+", version.stdout) and broken.returncode != 0:
            return cli
    return None


needs_compose = pytest.mark.skipif(compose_cli() is None, reason="no Docker Compose v2 client on this machine")
DUMMY = {"COPD_API_TOKEN": "dummy-token-0123456789abcdef", "POSTGRES_PASSWORD": "dummypw", "REDIS_PASSWORD": "dummypw"}


def compose(tmp_path: Path, *args: str, files=(COMPOSE,), secrets=DUMMY) -> subprocess.CompletedProcess:
    """`docker compose ... config` on .env.example with `secrets` filled in, isolated from the shell."""
    env_file = tmp_path / "test.env"
    text = ENV_EXAMPLE.read_text()
    for name, value in secrets.items():
        text = re.sub(rf"^{name}=$", f"{name}={value}", text, flags=re.M)
    env_file.write_text(text)
    cmd = [*compose_cli(), "--env-file", str(env_file)]
    for f in files:
        cmd += ["-f", str(f)]
    environ = {"PATH": os.environ.get("PATH", ""), "HOME": os.environ.get("HOME", str(tmp_path))}
    return subprocess.run([*cmd, *args], capture_output=True, text=True, timeout=60, env=environ, cwd=ROOT)


@needs_compose
@pytest.mark.parametrize("files, profiles", [((COMPOSE,), ()), ((COMPOSE,), ("flower", "minio")),
                                             ((COMPOSE, COMPOSE_CPU), ())])
def test_docker_compose_config_accepts_the_stack(tmp_path, files, profiles):
    flags = [a for p in profiles for a in ("--profile", p)]
    out = compose(tmp_path, *flags, "config", "-q", files=files)
    assert out.returncode == 0, out.stderr


@needs_compose
def test_docker_compose_cpu_override_leaves_no_device_reservation(tmp_path):
    out = compose(tmp_path, "config", "--format", "json", files=(COMPOSE, COMPOSE_CPU))
    assert out.returncode == 0, out.stderr
    config = json.loads(out.stdout)
    for name in workers():
        assert not config["services"][name].get("deploy", {}).get("resources", {}).get("reservations", {}).get("devices")


@needs_compose
def test_docker_compose_accepts_the_documented_extra_gpu_worker(tmp_path):
    override = tmp_path / "docker-compose.override.yml"
    override.write_text(doc_gpu1_snippet().replace("file: docker-compose.yml", f"file: {COMPOSE}"))
    out = compose(tmp_path, "config", "--format", "json", files=(COMPOSE, override))
    assert out.returncode == 0, out.stderr
    config = json.loads(out.stdout)["services"]
    ids = {n: [i for d in config[n]["deploy"]["resources"]["reservations"]["devices"] for i in d["device_ids"]]
           for n in ("worker-gpu0", "worker-gpu1")}
    assert ids == {"worker-gpu0": ["0"], "worker-gpu1": ["1"]}


@needs_compose
@pytest.mark.parametrize("missing", SECRETS)
def test_docker_compose_refuses_to_start_without_a_secret(tmp_path, missing):
    secrets = {k: v for k, v in DUMMY.items() if k != missing}
    out = compose(tmp_path, "config", "-q", secrets=secrets)
    assert out.returncode != 0 and missing in out.stderr, out.stderr
