"""The few MLflow tracking calls the worker makes, over MLflow's REST API with httpx.

Written by hand, not with `mlflow-skinny`: that package adds about 69 MB to the worker's
environment and 2.5 s to a cold import, for eight HTTP calls the worker needs (checked
against a real `mlflow server` by tests/integration/test_mlflow.py). Artifacts go through
the server's artifact proxy (`mlflow server --serve-artifacts`, the default: runs get an
`mlflow-artifacts:` URI), so workers never hold the artifact store's credentials.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote, urlsplit

import httpx

API = "/api/2.0/mlflow"
ARTIFACTS = "/api/2.0/mlflow-artifacts/artifacts"
BATCH = 100  # MLflow accepts at most 100 params and 1000 metrics per log-batch


class MlflowError(Exception):
    """MLflow could not be reached or refused a call; the message says which and why."""


@dataclass(frozen=True)
class Dataset:
    """A dataset as MLflow records it in a run's inputs (`log-inputs`)."""

    name: str
    digest: str  # MLflow keeps at most 36 characters
    source_type: str  # "local", "s3", …
    source: str  # JSON: {"uri": …}
    context: str  # the `mlflow.data.context` tag: what the dataset was to this run
    profile: str | None = None  # JSON, free form

    def as_json(self) -> dict[str, Any]:
        dataset = {
            "name": self.name,
            "digest": self.digest,
            "source_type": self.source_type,
            "source": self.source,
        }
        if self.profile is not None:
            dataset["profile"] = self.profile
        return {"tags": [{"key": "mlflow.data.context", "value": self.context}], "dataset": dataset}


def now_ms() -> int:
    return int(time.time() * 1000)


def _pairs(values: dict[str, str]) -> list[dict[str, str]]:
    return [{"key": k, "value": v} for k, v in values.items()]


class MlflowTracking:
    """One tracking server. Every failure is an `MlflowError` with a readable message."""

    def __init__(self, uri: str, timeout: float = 10.0) -> None:
        self.uri = uri.rstrip("/")
        self.http = httpx.Client(base_url=self.uri, timeout=timeout)

    def close(self) -> None:
        self.http.close()

    def __enter__(self) -> MlflowTracking:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _call(self, method: str, path: str, **kwargs: Any) -> dict[str, Any]:
        try:
            response = self.http.request(method, path, **kwargs)
        except httpx.HTTPError as exc:
            raise MlflowError(
                f"MLflow at {self.uri} unreachable: {exc or type(exc).__name__}"
            ) from exc
        if response.status_code >= 400:
            try:
                body = response.json()
                why = f"{body.get('error_code', '')}: {body.get('message', '')}".strip(": ")
            except ValueError:
                why = response.text[:200]
            raise MlflowError(f"MLflow {method} {path} answered {response.status_code}: {why}")
        return response.json() if response.content else {}

    def experiment_id(self, name: str) -> str:
        """The experiment named `name`, created on first use."""
        try:
            found = self._call(
                "GET", f"{API}/experiments/get-by-name", params={"experiment_name": name}
            )
            return str(found["experiment"]["experiment_id"])
        except MlflowError as exc:
            if "RESOURCE_DOES_NOT_EXIST" not in str(exc):
                raise
        try:
            made = self._call("POST", f"{API}/experiments/create", json={"name": name})
            return str(made["experiment_id"])
        except MlflowError as exc:  # another worker created it meanwhile
            if "RESOURCE_ALREADY_EXISTS" not in str(exc):
                raise
            return self.experiment_id(name)

    def create_run(
        self, experiment_id: str, name: str, start_ms: int, tags: dict[str, str]
    ) -> dict[str, Any]:
        """A new run (status RUNNING); its `info` (run_id, artifact_uri, …)."""
        body = {
            "experiment_id": experiment_id,
            "run_name": name,
            "start_time": start_ms,
            "tags": _pairs(tags),
        }
        return dict(self._call("POST", f"{API}/runs/create", json=body)["run"]["info"])

    def run_info(self, run_id: str) -> dict[str, Any]:
        return dict(self._call("GET", f"{API}/runs/get", params={"run_id": run_id})["run"]["info"])

    def log_batch(
        self,
        run_id: str,
        params: dict[str, str],
        metrics: dict[str, float],
        tags: dict[str, str],
        at_ms: int,
    ) -> None:
        """Params, metrics and tags, a hundred at a time (MLflow's limit for params)."""
        items: list[tuple[str, dict[str, Any]]] = [
            *(("params", p) for p in _pairs(params)),
            *(("tags", t) for t in _pairs(tags)),
            *(
                ("metrics", {"key": k, "value": v, "timestamp": at_ms, "step": 0})
                for k, v in metrics.items()
            ),
        ]
        for start in range(0, len(items), BATCH):
            body: dict[str, Any] = {"run_id": run_id, "params": [], "metrics": [], "tags": []}
            for kind, item in items[start : start + BATCH]:
                body[kind].append(item)
            self._call("POST", f"{API}/runs/log-batch", json=body)

    def log_inputs(self, run_id: str, datasets: list[Dataset]) -> None:
        body = {"run_id": run_id, "datasets": [d.as_json() for d in datasets]}
        self._call("POST", f"{API}/runs/log-inputs", json=body)

    def upload_artifact(
        self, artifact_uri: str, path: str, content: bytes, media_type: str
    ) -> None:
        """Put one file under the run's artifacts, through the server's proxy."""
        parts = urlsplit(artifact_uri)
        if parts.scheme != "mlflow-artifacts":
            raise MlflowError(
                f"MLflow stores this run's artifacts at {artifact_uri}, which workers cannot "
                "write: start the server with --serve-artifacts (the default) and no "
                "--default-artifact-root outside its proxy"
            )
        target = f"{ARTIFACTS}/{parts.path.strip('/')}/{quote(path)}"
        self._call("PUT", target, content=content, headers={"Content-Type": media_type})

    def end_run(self, run_id: str, status: str, end_ms: int) -> None:
        """FINISHED, FAILED or KILLED."""
        body = {"run_id": run_id, "status": status, "end_time": end_ms}
        self._call("POST", f"{API}/runs/update", json=body)
