"""Callbacks: the final job JSON POSTed to the `callback_url` a submission gave, signed
the Standard Webhooks way (https://www.standardwebhooks.com).

Headers: `webhook-id` (`job_<id>_<status>`: the same on every retry, so a receiver can
drop a duplicate), `webhook-timestamp` (this attempt, Unix seconds: a receiver refuses
old ones, against replays) and `webhook-signature` (`v1,<base64 HMAC-SHA256 of
"{id}.{timestamp}.{body}">` keyed with CALLBACK_SECRET, `whsec_<base64>`). The signature
comes from `standardwebhooks`, the spec's own Python library (no dependencies of its
own), so a receiver's verifier agrees with it by construction.

Without CALLBACK_SECRET the callback is still delivered, unsigned (no `webhook-signature`;
a warning is logged once per process): a receiver that verifies refuses it, one that
does not keeps working as before. Set it in production.

The destination is vetted again here (`src.jobs.destinations`) and the request goes to
the vetted address itself: the URL's host is swapped for that IP while the `Host` header,
the TLS SNI and the certificate check keep the name, so nothing resolves the name a
second time between check and connect (DNS rebinding). Redirects are not followed (a 3xx
is a failed delivery), and proxy variables are ignored (a proxy would resolve and connect
on its own). The response body is never read.
"""

from __future__ import annotations

import json
import logging
import time
from datetime import UTC, datetime
from functools import lru_cache

import httpx
from standardwebhooks import Webhook

from src.core.config import Settings
from src.jobs import destinations
from src.jobs.destinations import Address
from src.jobs.model import CallbackStatus, Job
from src.jobs.store import JobStore

log = logging.getLogger(__name__)


class CallbackFailed(Exception):
    """The callback was not delivered; the task retries it unless `final`."""

    def __init__(self, message: str, final: bool = False) -> None:
        super().__init__(message)
        self.final = final


def webhook_id(job_id: str, status: str) -> str:
    """One id per job and final status: retries reuse it (no '.', as the spec asks)."""
    return f"job_{job_id}_{status}"


def webhook_headers(secret: str, msg_id: str, body: str, timestamp: int) -> dict[str, str]:
    """The three Standard Webhooks headers (no signature without a secret)."""
    headers = {"webhook-id": msg_id, "webhook-timestamp": str(timestamp)}
    if secret:
        when = datetime.fromtimestamp(timestamp, tz=UTC)
        headers["webhook-signature"] = Webhook(secret).sign(msg_id, when, body)
    else:
        _warn_unsigned()
    return headers


@lru_cache(maxsize=1)
def _warn_unsigned() -> None:
    log.warning("CALLBACK_SECRET is not set: callbacks are delivered unsigned")


def post_pinned(
    url: str, addresses: list[Address], body: bytes, headers: dict[str, str], timeout: float
) -> httpx.Response:
    """POST to `url` at one of the vetted `addresses` (tried in order), never re-resolving
    its host; the response is closed unread."""
    with httpx.Client(timeout=timeout, follow_redirects=False, trust_env=False) as client:
        request = client.build_request("POST", url, content=body, headers=headers)
        target = request.url  # its Host header is already the name's
        if target.scheme == "https":
            request.extensions["sni_hostname"] = target.host  # SNI and certificate check
        failure: httpx.ConnectError | None = None
        for ip in addresses:
            request.url = target.copy_with(host=str(ip))
            try:
                response = client.send(request, stream=True)
            except httpx.ConnectError as exc:
                failure = exc
                continue
            response.close()
            return response
        assert failure is not None
        raise failure


def deliver_callback(
    store: JobStore, settings: Settings, job_id: str, timeout: float = 10.0
) -> bool:
    """POST the final job JSON to its callback_url; True when delivered."""
    doc = store.get(job_id)
    if doc is None or not doc.get("callback_url"):
        return False
    url = doc["callback_url"]
    try:
        _, _, addresses = destinations.vet(url, settings.callback_allow_private)
    except destinations.Unresolvable as exc:
        raise CallbackFailed(str(exc)) from exc
    except destinations.Refused as exc:  # it would be refused again: no retry
        raise CallbackFailed(f"destination refused: {exc}", final=True) from exc
    job = Job.from_doc(doc)
    body = json.dumps(job.model_dump(mode="json"), separators=(",", ":"), ensure_ascii=False)
    msg_id = webhook_id(job.id, job.status.value)
    headers = {
        "content-type": "application/json",
        **webhook_headers(settings.callback_secret, msg_id, body, int(time.time())),
    }
    try:
        response = post_pinned(url, addresses, body.encode(), headers, timeout)
    except httpx.HTTPError as exc:
        raise CallbackFailed(f"{type(exc).__name__}: {exc}") from exc
    if 300 <= response.status_code < 400:
        location = response.headers.get("location", "")[:200]
        raise CallbackFailed(
            f"HTTP {response.status_code} to {location!r}: redirects are not followed"
        )
    if not response.is_success:
        raise CallbackFailed(f"HTTP {response.status_code}")
    store.set_fields(job_id, callback_status=CallbackStatus.DELIVERED, callback_error=None)
    return True


def record_failure(store: JobStore, job_id: str, error: str, final: bool) -> None:
    """Show the delivery problem on the job: `retrying`, or `failed` once given up."""
    status = CallbackStatus.FAILED if final else CallbackStatus.RETRYING
    store.set_fields(job_id, callback_status=status, callback_error=error)
