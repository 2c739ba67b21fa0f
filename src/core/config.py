"""Every environment variable of the contract, in one settings class."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from functools import cached_property, lru_cache
from pathlib import Path

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    """Read from the environment (and `.env` when present)."""

    # hide_input_in_errors: a malformed secret (CALLBACK_SECRET) is never echoed at start-up.
    model_config = SettingsConfigDict(env_file=".env", extra="ignore", hide_input_in_errors=True)

    mongo_url: str = Field("mongodb://127.0.0.1:27017", description="MONGO_URL")
    mongo_db: str = Field("cleaning", description="MONGO_DB")
    redis_url: str = Field("redis://127.0.0.1:6379/0", description="REDIS_URL")
    data_dir: Path = Field(Path("data"), description="DATA_DIR: inputs, results, raw sources")
    api_keys: str = Field(
        "",
        description="API_KEYS: name:key pairs, comma-separated (a bare key gets a generated "
        "name); a job belongs to the key that created it; empty means no auth",
    )
    admin_api_keys: str = Field(
        "", description="ADMIN_API_KEYS: name:key pairs whose holders see and cancel every job"
    )
    max_upload_mb: int = Field(512, ge=1, description="MAX_UPLOAD_MB")
    rate_limit_per_minute: int = Field(
        0,
        ge=0,
        description="RATE_LIMIT_PER_MINUTE: submissions per API key (or client address) and "
        "minute; 0: off",
    )
    read_rate_limit_per_minute: int = Field(
        0,
        ge=0,
        description="READ_RATE_LIMIT_PER_MINUTE: other requests per key and minute (an event "
        "stream counts once); 0: ten times RATE_LIMIT_PER_MINUTE",
    )
    max_streams_per_key: int = Field(
        10, ge=0, description="MAX_STREAMS_PER_KEY: open event streams per key and API process"
    )
    docs_enabled: bool = Field(True, description="DOCS_ENABLED: serve /docs and /openapi.json")
    watch_fallback_seconds: float = Field(
        5.0,
        gt=0,
        description="WATCH_FALLBACK_SECONDS: `?wait=` and event streams are woken by change "
        "notices (Redis pub/sub); they read the store this often without one all the same",
    )
    job_cache_seconds: float = Field(
        5.0,
        ge=0,
        description="JOB_CACHE_SECONDS: GET /jobs/{id} answers a job read this recently "
        "without the store while no change notice came for it (0: always read the store)",
    )

    job_retention_hours: float = Field(
        168, gt=0, description="JOB_RETENTION_HOURS: jobs and their files expire after this"
    )
    max_attempts: int = Field(
        3, ge=1, description="MAX_ATTEMPTS: a job whose worker died this often ends failed"
    )
    job_time_limit_seconds: float = Field(
        3600.0,
        gt=0,
        description="JOB_TIME_LIMIT_SECONDS: a run of a job (or of one part, or the merge, "
        "of a split job) that lasts longer ends failed",
    )
    heartbeat_seconds: float = Field(2.0, gt=0, description="HEARTBEAT_SECONDS")
    stale_after_seconds: float = Field(
        10.0, gt=0, description="STALE_AFTER_SECONDS: a running job silent this long is requeued"
    )
    requeue_queued_after_seconds: float = Field(
        300.0, gt=0, description="A queued job this old has its task sent again (harmless twice)"
    )
    sweep_interval_seconds: float = Field(15.0, gt=0, description="SWEEP_INTERVAL_SECONDS")
    broker_timeout_seconds: float = Field(
        3.0, gt=0, description="How long a submission waits for the broker before a 503"
    )
    store_timeout_ms: int = Field(3000, ge=100, description="MongoDB server selection timeout")
    callback_retries: int = Field(4, ge=0, description="CALLBACK_RETRIES")
    callback_secret: str = Field(
        "",
        pattern=r"^(whsec_[A-Za-z0-9+/]{32,}={0,2})?$",
        description="CALLBACK_SECRET: whsec_<base64 of 24+ random bytes> signs callbacks "
        "(Standard Webhooks); empty: unsigned",
    )
    callback_allow_private: bool = Field(
        False,
        description="CALLBACK_ALLOW_PRIVATE: allow callbacks to loopback, private, link-local "
        "and other non-public addresses",
    )
    worker_metrics_port: int = Field(
        9808, ge=0, le=65535, description="WORKER_METRICS_PORT: worker /metrics; 0 turns it off"
    )
    worker_metrics_addr: str = Field("0.0.0.0", description="WORKER_METRICS_ADDR")

    storage_url: str = Field(
        "",
        description="STORAGE_URL: s3://bucket/prefix keeps inputs and results in an "
        "S3-compatible store (MinIO) for workers on several hosts; empty: files under DATA_DIR",
    )
    s3_endpoint_url: str = Field("http://127.0.0.1:9000", description="S3_ENDPOINT_URL")
    s3_access_key: str = Field("", description="S3_ACCESS_KEY")
    s3_secret_key: str = Field("", description="S3_SECRET_KEY")
    s3_region: str = Field("us-east-1", description="S3_REGION")
    split_above_mb: float = Field(
        64.0,
        gt=0,
        description="SPLIT_ABOVE_MB: a CSV input larger than this is cleaned in parts, "
        "one Celery task each, by as many workers as are free",
    )
    part_mb: float = Field(16.0, gt=0, description="PART_MB: the size of one part of a split job")
    mlflow_tracking_uri: str = Field(
        "",
        description="MLFLOW_TRACKING_URI: an MLflow server (http://…); set, every job is "
        "logged as one run. Empty: no tracking",
    )
    mlflow_experiment: str = Field("data-cleaning", description="MLFLOW_EXPERIMENT")
    mlflow_ui_url: str = Field(
        "",
        description="MLFLOW_UI_URL: MLflow's address as a person's browser reaches it; set, "
        "jobs link to their run",
    )
    mlflow_retries: int = Field(
        5, ge=0, description="MLFLOW_RETRIES: how many times the sweep retries a run's logging"
    )

    @property
    def keys(self) -> list[ApiKey]:
        """Every accepted key, admins included; empty: no auth."""
        return [*_parse_keys(self.api_keys, admin=False), *_parse_keys(self.admin_api_keys, True)]

    @property
    def read_rate_limit(self) -> int:
        return self.read_rate_limit_per_minute or 10 * self.rate_limit_per_minute

    @property
    def split_above_bytes(self) -> int:
        return int(self.split_above_mb * (1 << 20))

    @property
    def part_bytes(self) -> int:
        return max(int(self.part_mb * (1 << 20)), 1)

    @property
    def max_upload_bytes(self) -> int:
        return self.max_upload_mb << 20


@dataclass(frozen=True)
class ApiKey:
    """One key of API_KEYS or ADMIN_API_KEYS. Jobs record `name` and `digest`, never `key`."""

    name: str
    key: str = field(repr=False)
    admin: bool = False

    @cached_property  # asked on every request
    def digest(self) -> str:
        return hashlib.sha256(self.key.encode()).hexdigest()


@lru_cache(maxsize=16)  # `Settings.keys` is asked on every request: parse each value once
def _parse_keys(raw: str, admin: bool) -> tuple[ApiKey, ...]:
    found = []
    for entry in (e.strip() for e in raw.split(",")):
        if not entry:
            continue
        name, sep, key = entry.partition(":")
        if not sep:  # a bare key: a stable name that does not reveal it
            name, key = f"key-{hashlib.sha256(entry.encode()).hexdigest()[:8]}", entry
        found.append(ApiKey(name.strip(), key.strip(), admin))
    return tuple(found)


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    return Settings()
