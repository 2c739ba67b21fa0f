"""Real services for integration tests and benchmarks: Redis, the store, S3, the API, a worker.

Each runs as a child process on a free loopback port. Used by the integration
fixtures and by benchmarks/bench_api.py.
"""

from __future__ import annotations

import contextlib
import io
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, NoReturn

import httpx
import pytest

from tests.support.hold import HOLD_ENV

if TYPE_CHECKING:
    from minio import Minio

ROOT = Path(__file__).resolve().parents[2]
VENV_BIN = Path(sys.executable).parent


class ServiceUnavailable(RuntimeError):
    """A service binary is missing on this machine."""


def unavailable(what: str, exc: Exception | str) -> NoReturn:
    """Skip on a developer machine; fail in CI, where every service and tool must be there."""
    if os.environ.get("CI") == "true":
        pytest.fail(f"{what} unavailable in CI: {exc}")
    pytest.skip(f"{what} unavailable: {exc}")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for(check, timeout: float, what: str, proc: subprocess.Popen | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"{what} exited with code {proc.returncode}")
        with contextlib.suppress(Exception):
            if check():
                return
        time.sleep(0.1)
    raise TimeoutError(f"{what} not ready after {timeout}s")


def stop(proc: subprocess.Popen | None, sig: int = signal.SIGTERM, timeout: float = 15) -> None:
    if proc is None or proc.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, sig)
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(5)


def _spawn(cmd: list[str], log: Path, env: dict[str, str] | None = None) -> subprocess.Popen:
    return subprocess.Popen(
        cmd,
        stdout=log.open("ab"),
        stderr=subprocess.STDOUT,
        env=env,
        cwd=ROOT,
        start_new_session=True,  # its own process group: stop() takes its children too
    )


@dataclass
class Redis:
    port: int
    proc: subprocess.Popen
    workdir: Path

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    @classmethod
    def start(cls, workdir: Path, port: int | None = None) -> Redis:
        binary = shutil.which("redis-server")
        if binary is None:
            raise ServiceUnavailable("redis-server is not installed (apt-get install redis-server)")
        port = port or free_port()
        workdir.mkdir(parents=True, exist_ok=True)
        proc = _spawn(
            [
                binary,
                "--port",
                str(port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                str(workdir),
            ],
            workdir / "redis.log",
        )
        redis = cls(port, proc, workdir)
        wait_for(redis.ping, 15, "redis-server", proc)
        return redis

    def ping(self) -> bool:
        with socket.create_connection(("127.0.0.1", self.port), timeout=1) as s:
            s.sendall(b"PING\r\n")
            return s.recv(16).startswith(b"+PONG")

    def stop(self) -> None:
        stop(self.proc)

    def restart(self) -> Redis:
        self.stop()
        return Redis.start(self.workdir, self.port)


@dataclass
class Store:
    """The MongoDB wire-protocol server (nx-27017), or a real MongoDB from MONGO_URL."""

    url: str
    proc: subprocess.Popen | None = None
    workdir: Path | None = None
    port: int | None = None

    @classmethod
    def start(cls, workdir: Path, port: int | None = None) -> Store:
        if url := os.environ.get("MONGO_URL"):
            return cls(url)
        binary = VENV_BIN / "nx-27017"
        if not binary.exists():
            raise ServiceUnavailable("nx-27017 is not installed (uv sync --all-extras)")
        workdir.mkdir(parents=True, exist_ok=True)
        log = workdir / "nx.log"
        log.unlink(missing_ok=True)
        proc = _spawn(
            [
                str(binary),
                "--db",
                "memory",
                "--host",
                "127.0.0.1",
                "-p",
                str(port or 0),
                "--pid-file",
                str(workdir / "nx.pid"),
                "--log-file",
                str(log),
            ],
            workdir / "nx.out",
        )
        found: list[int] = []

        def listening() -> bool:
            m = re.search(r"Listening on 127\.0\.0\.1:(\d+)", log.read_text())
            if m:
                found.append(int(m.group(1)))
            return bool(m)

        wait_for(listening, 30, "nx-27017", proc)
        return cls(f"mongodb://127.0.0.1:{found[0]}", proc, workdir, found[0])

    def stop(self) -> None:
        stop(self.proc)

    def restart(self) -> Store:
        """Same port, empty store (in-memory): enough to prove reconnection."""
        assert self.workdir is not None and self.port is not None
        self.stop()
        return Store.start(self.workdir, self.port)


@dataclass
class Stack:
    """Environment shared by the API and workers of one test session."""

    redis: Redis
    store: Store
    data_dir: Path
    logs: Path
    extra_env: dict[str, str] = field(default_factory=dict)

    def env(self, **overrides: str) -> dict[str, str]:
        env = {
            k: v for k, v in os.environ.items() if not k.startswith(("MONGO_", "REDIS_", "API_"))
        }
        env.update(
            PYTHONPATH=str(ROOT),
            PYTHONUNBUFFERED="1",
            MONGO_URL=self.store.url,
            MONGO_DB=self.extra_env.get("MONGO_DB", "cleaning_test"),
            REDIS_URL=self.redis.url,
            DATA_DIR=str(self.data_dir),
            HEARTBEAT_SECONDS="0.5",
            STALE_AFTER_SECONDS="3",
            SWEEP_INTERVAL_SECONDS="1",
            BROKER_TIMEOUT_SECONDS="1",
            STORE_TIMEOUT_MS="1500",
            CALLBACK_RETRIES="1",
            # The tests' callback receivers listen on 127.0.0.1; test_callbacks.py turns
            # it off to prove the refusal.
            CALLBACK_ALLOW_PRIVATE="true",
        )
        env.update(self.extra_env)
        env.update(overrides)
        return env

    def start_worker(
        self,
        name: str = "w1",
        concurrency: int = 2,
        beat: bool = False,
        prefix: list[str] | None = None,
        queues: str = "cleaning",
        supervised: bool = False,
        hold_file: Path | None = None,
        **env: str,
    ) -> subprocess.Popen:
        """A Celery worker; `prefix` wraps the command (e.g. to enter a memory cgroup).

        With `hold_file`, its runs stay in flight while that file exists
        (tests/support/hold.py), so a test can kill or cancel one without racing it.
        """
        cmd = [
            str(VENV_BIN / "celery"),
            "-A",
            "src.worker.celery_app",
            "worker",
            "-Q",
            queues,
            "-c",
            str(concurrency),
            "--pool",
            "prefork",
            "-n",
            f"{name}@%h",
            "--without-gossip",
            "--without-mingle",
            "-l",
            "INFO",
        ]
        if beat:
            cmd += ["-B", "-s", str(self.logs / f"beat-{name}")]
        if hold_file is not None:
            cmd += ["-I", "tests.support.hold"]
            env[HOLD_ENV] = str(hold_file)
        if supervised:  # started again when it exits, as compose's `restart: unless-stopped`
            loop = 'trap "exit 0" TERM; while :; do "$@"; sleep 1; done'
            cmd = ["bash", "-c", loop, "supervise", *cmd]
        log = self.logs / f"worker-{name}.log"
        start = log.stat().st_size if log.exists() else 0
        proc = _spawn([*(prefix or []), *cmd], log, self.env(**env))

        def ready() -> bool:
            with log.open("rb") as fh:
                fh.seek(start)
                return b" ready." in fh.read()

        wait_for(ready, 60, f"celery worker {name}", proc)
        return proc

    def start_api(self, port: int | None = None, **env: str) -> tuple[subprocess.Popen, str]:
        port = port or free_port()
        proc = _spawn(
            [
                str(VENV_BIN / "uvicorn"),
                "src.api.main:app",
                "--host",
                "127.0.0.1",
                "--port",
                str(port),
                "--log-level",
                "warning",
            ],
            self.logs / f"api-{port}.log",
            self.env(**env),
        )
        base = f"http://127.0.0.1:{port}"
        wait_for(lambda: httpx.get(f"{base}/health", timeout=1).status_code == 200, 60, "API", proc)
        return proc, base


@contextlib.contextmanager
def running_stack(workdir: Path, **extra_env: str) -> Iterator[Stack]:
    """Redis and the store for the duration of the block."""
    redis = Redis.start(workdir / "redis")
    try:
        store = Store.start(workdir / "store")
    except BaseException:
        redis.stop()
        raise
    data_dir = workdir / "data"
    (data_dir / "raw").mkdir(parents=True, exist_ok=True)
    logs = workdir / "logs"
    logs.mkdir(exist_ok=True)
    stack = Stack(redis, store, data_dir, logs, dict(extra_env))
    try:
        yield stack
    finally:
        stack.redis.stop()
        stack.store.stop()


@dataclass
class S3Server:
    """An S3-compatible server: PyPI moto's, in memory (no MinIO binary exists here).

    Real HTTP and the real S3 wire protocol, so the MinIO client under test is the one
    production uses; any non-empty credentials are accepted.
    """

    port: int
    proc: subprocess.Popen
    workdir: Path
    access_key: str = "test-access-key"
    secret_key: str = "test-secret-key"
    region: str = "us-east-1"

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @classmethod
    def start(cls, workdir: Path, port: int | None = None) -> S3Server:
        binary = VENV_BIN / "moto_server"
        if not binary.exists():
            raise ServiceUnavailable("moto_server is not installed (uv sync: moto[server], dev)")
        workdir.mkdir(parents=True, exist_ok=True)
        log = workdir / "moto.log"
        error: Exception | None = None
        for _ in range(3):  # a free port can be taken before the server binds it
            chosen = port or free_port()
            proc = _spawn([str(binary), "-H", "127.0.0.1", "-p", str(chosen)], log)
            server = cls(chosen, proc, workdir)
            try:
                wait_for(server.ping, 30, "moto_server", proc)
                return server
            except (RuntimeError, TimeoutError) as exc:
                server.stop()
                error = exc
            except BaseException:
                server.stop()
                raise
        tail = log.read_text(errors="replace")[-500:]
        raise ServiceUnavailable(f"moto_server did not start: {error}\n{tail}")

    def ping(self) -> bool:
        # moto's own API answers once the server routes requests (no S3 signature needed)
        return httpx.get(f"{self.endpoint}/moto-api/", timeout=1).status_code == 200

    def client(self) -> Minio:
        """The MinIO client, as the services use it, to look into the bucket from outside."""
        from minio import Minio

        return Minio(
            f"127.0.0.1:{self.port}",
            access_key=self.access_key,
            secret_key=self.secret_key,
            secure=False,
            region=self.region,
        )

    def bucket(self, name: str) -> S3Bucket:
        """A bucket on this server, created if missing (names have at least 3 characters)."""
        client = self.client()
        if not client.bucket_exists(name):
            client.make_bucket(name)
        return S3Bucket(self, name, client)

    def stop(self) -> None:
        stop(self.proc)


@dataclass
class S3Bucket:
    """One bucket of an S3Server; tests keep apart by using a prefix each."""

    server: S3Server
    name: str
    client: Minio

    def env(self, prefix: str) -> dict[str, str]:
        """The settings that keep a stack's files in this bucket under `prefix`."""
        return {
            "STORAGE_URL": f"s3://{self.name}/{prefix}",
            "S3_ENDPOINT_URL": self.server.endpoint,
            "S3_ACCESS_KEY": self.server.access_key,
            "S3_SECRET_KEY": self.server.secret_key,
            "S3_REGION": self.server.region,
        }

    def keys(self, prefix: str) -> set[str]:
        """Every object name under `prefix/`."""
        found = self.client.list_objects(self.name, prefix=f"{prefix}/", recursive=True)
        return {o.object_name for o in found if o.object_name}

    def incomplete_uploads(self, prefix: str) -> list[str]:
        """Multipart uploads begun and never completed nor aborted (they hold storage).

        The MinIO client lists them only through a private method; a test may use it.
        """
        found = self.client._list_multipart_uploads(self.name, prefix=f"{prefix}/")
        return [u.object_name for u in found.uploads if u.object_name]

    def read(self, key: str) -> bytes:
        response = self.client.get_object(self.name, key)
        try:
            return response.read()
        finally:
            response.close()
            response.release_conn()

    def put(self, key: str, data: bytes) -> None:
        self.client.put_object(self.name, key, io.BytesIO(data), len(data))


@dataclass
class Prometheus:
    """A real Prometheus (Debian's `prometheus` package) on a free loopback port."""

    port: int
    proc: subprocess.Popen
    workdir: Path

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @classmethod
    def start(cls, config: Path, workdir: Path, port: int | None = None) -> Prometheus:
        binary = shutil.which("prometheus")
        if binary is None:
            raise ServiceUnavailable("prometheus is not installed (apt-get install prometheus)")
        port = port or free_port()
        workdir.mkdir(parents=True, exist_ok=True)
        proc = _spawn(
            [
                binary,
                f"--config.file={config}",
                f"--storage.tsdb.path={workdir / 'tsdb'}",
                f"--web.listen-address=127.0.0.1:{port}",
                "--storage.tsdb.retention.time=1d",
                "--log.level=warn",
            ],
            workdir / "prometheus.log",
        )
        prom = cls(port, proc, workdir)
        wait_for(
            lambda: httpx.get(f"{prom.url}/-/ready", timeout=1).status_code == 200,
            30,
            "prometheus",
            proc,
        )
        return prom

    def query(self, expr: str, at: float | None = None) -> dict:
        """The raw answer of /api/v1/query (`status`, `data` or `error`), evaluated now or
        `at` (epoch seconds)."""
        params: dict[str, str | float] = {"query": expr}
        if at is not None:
            params["time"] = at
        return httpx.get(f"{self.url}/api/v1/query", params=params, timeout=10).json()

    def value(self, expr: str) -> float | None:
        """The value of a single-series instant query; None when it returns nothing."""
        body = self.query(expr)
        if body["status"] != "success":
            raise RuntimeError(f"{expr}: {body.get('error')}")
        result = body["data"]["result"]
        return float(result[0]["value"][1]) if result else None

    def stop(self) -> None:
        stop(self.proc)


@dataclass
class MlflowServer:
    """A real MLflow tracking server (PyPI `mlflow`, dev group): SQLite backend, artifacts
    proxied by the server into a local folder, as compose's server proxies them to MinIO.

    `start` returns at once with the port chosen: `wait` blocks until it serves, so a test
    can first use the address while nothing listens there (MLflow down).
    """

    port: int
    workdir: Path
    proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @classmethod
    def at_free_port(cls, workdir: Path) -> MlflowServer:
        if not (VENV_BIN / "mlflow").exists():
            raise ServiceUnavailable("mlflow is not installed (uv sync: mlflow, dev group)")
        workdir.mkdir(parents=True, exist_ok=True)
        return cls(free_port(), workdir)

    def start(self) -> MlflowServer:
        if self.proc is None or self.proc.poll() is not None:
            cmd = [
                str(VENV_BIN / "mlflow"),
                "server",
                "--backend-store-uri",
                f"sqlite:///{self.workdir / 'mlflow.db'}",
                "--artifacts-destination",
                str(self.workdir / "artifacts"),
                "--host",
                "127.0.0.1",
                "--port",
                str(self.port),
                "--workers",
                "1",
            ]
            # No telemetry: the server would otherwise try to reach MLflow's hosts.
            env = {**os.environ, "MLFLOW_DISABLE_TELEMETRY": "true", "DO_NOT_TRACK": "true"}
            self.proc = _spawn(cmd, self.workdir / "mlflow.log", env)
        return self

    def wait(self, timeout: float = 180) -> MlflowServer:
        """Until it serves (its first start creates the database: tens of seconds)."""
        try:
            wait_for(self.ping, timeout, "mlflow server", self.start().proc)
        except (RuntimeError, TimeoutError) as exc:
            tail = (self.workdir / "mlflow.log").read_text(errors="replace")[-800:]
            raise ServiceUnavailable(f"mlflow server did not start: {exc}\n{tail}") from exc
        return self

    def ping(self) -> bool:
        return httpx.get(f"{self.url}/health", timeout=1).status_code == 200

    def stop(self) -> None:
        stop(self.proc)
        self.proc = None
