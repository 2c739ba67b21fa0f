"""Callbacks on the real stack: signed deliveries, refused destinations, no redirects.

Two API + worker pairs of their own (a Redis database and a store database each, in the
session's Redis and store): `signed` has CALLBACK_SECRET and, like every test stack,
CALLBACK_ALLOW_PRIVATE=true (the receivers listen on 127.0.0.1); `guarded` has
CALLBACK_ALLOW_PRIVATE=false, as in production.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path

import httpx
import pytest
from pymongo import MongoClient
from standardwebhooks import Webhook, WebhookVerificationError

from tests.integration.conftest import Pair, pair, upload, wait_held, wait_job
from tests.support.hold import held
from tests.support.services import Stack

SECRET = "whsec_c2lnbmVkIGJ5IHRoZSB0ZXN0IHN0YWNrIG9ubHkh"  # base64 of 24+ bytes
PUBLIC = "http://93.184.215.14/hook"  # a public address: accepted without a lookup

Answer = Callable[[str], tuple[int, dict[str, str]]]


def settled(job: dict) -> bool:
    """The callback was delivered or given up (not `retrying`, not yet sent)."""
    return job["callback_status"] in ("delivered", "failed")


@dataclass
class Receiver:
    """An HTTP endpoint on 127.0.0.1 that records every request it gets."""

    server: HTTPServer
    hits: list[tuple[str, dict[str, str], bytes]] = field(default_factory=list)

    def url(self, path: str = "/hook", host: str = "127.0.0.1") -> str:
        return f"http://{host}:{self.server.server_port}{path}"


@contextlib.contextmanager
def receiver(answer: Answer = lambda path: (204, {})) -> Iterator[Receiver]:
    hits: list[tuple[str, dict[str, str], bytes]] = []

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("content-length", "0")))
            hits.append((self.path, {k.lower(): v for k, v in self.headers.items()}, body))
            status, headers = answer(self.path)
            self.send_response(status)
            for name, value in {**headers, "content-length": "0"}.items():
                self.send_header(name, value)
            self.end_headers()

        def log_message(self, *args: object) -> None:
            pass

    server = HTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield Receiver(server, hits)
    finally:
        server.shutdown()
        server.server_close()


def submitted(client: httpx.Client, path: Path, callback_url: str) -> str:
    r = upload(client, path, callback_url=callback_url)
    assert r.status_code == 202, r.text
    return r.json()["id"]


def verified(headers: dict[str, str], body: bytes) -> dict:
    """What a receiver does (README, docs/api.md#callbacks): the job, or an exception."""
    return Webhook(SECRET).verify(body, headers)


@pytest.fixture(scope="module")
def signed(stack: Stack) -> Iterator[Pair]:
    with pair(stack, "cb_signed", 1, CALLBACK_SECRET=SECRET) as p:
        yield p


@pytest.fixture(scope="module")
def guarded(stack: Stack) -> Iterator[Pair]:
    with pair(stack, "cb_guarded", 2, CALLBACK_ALLOW_PRIVATE="false") as p:
        yield p


def test_delivery_is_signed_and_retries_keep_the_id(signed: Pair, sample_path: Path) -> None:
    answers = iter([500, 204])  # the first attempt fails: the retry must carry the same id
    with receiver(lambda path: (next(answers), {})) as hook:
        job_id = submitted(signed.client, sample_path, hook.url())
        done = wait_job(signed.client, job_id, settled)
    assert done["callback_status"] == "delivered", done
    assert done["status"] == "succeeded" and done["callback_error"] is None
    assert len(hook.hits) == 2
    for _, headers, body in hook.hits:
        assert headers["webhook-id"] == f"job_{job_id}_succeeded"
        assert headers["webhook-signature"].startswith("v1,")
        job = verified(headers, body)
        assert job["id"] == job_id and job["status"] == "succeeded"
    _, headers, body = hook.hits[-1]
    with pytest.raises(WebhookVerificationError):  # the signature covers the body
        verified(headers, body.replace(b"succeeded", b"failed"))
    with pytest.raises(WebhookVerificationError):  # and the timestamp
        verified({**headers, "webhook-timestamp": str(int(headers["webhook-timestamp"]) - 1)}, body)


def test_redirects_are_not_followed(signed: Pair, sample_path: Path) -> None:
    with receiver() as target:
        moved = (302, {"Location": target.url("/target")})
        with receiver(lambda path: moved) as hook:
            job_id = submitted(signed.client, sample_path, hook.url())
            done = wait_job(signed.client, job_id, settled)
    assert done["callback_status"] == "failed", done
    assert done["status"] == "succeeded"
    assert "HTTP 302" in done["callback_error"]
    assert "redirects are not followed" in done["callback_error"]
    assert hook.hits and target.hits == []


@pytest.mark.parametrize(
    ("url", "reason"),
    [
        ("http://127.0.0.1:{port}/hook", "127.0.0.1 is a loopback address"),
        ("http://localhost:{port}/hook", "localhost resolves to"),
        ("http://169.254.169.254/latest/meta-data/", "a link-local address"),
        ("http://10.0.0.1/hook", "a private address"),
    ],
)
def test_private_destinations_are_refused_at_submission(
    guarded: Pair, sample_path: Path, url: str, reason: str
) -> None:
    with receiver() as hook:
        callback_url = url.format(port=hook.server.server_port)
        r = upload(guarded.client, sample_path, callback_url=callback_url)
        # The JSON body too; the callback is refused before the source is even looked up.
        body = {"source": "raw/none.csv", "callback_url": callback_url}
        r_json = guarded.client.post("/jobs/clean", json=body)
    for response in (r, r_json):
        assert response.status_code == 422, response.text
        problem = response.json()
        assert problem["type"] == "/problems/validation-failed"
        assert problem["detail"].startswith("callback_url: ")
        assert reason in problem["detail"] and "CALLBACK_ALLOW_PRIVATE=true" in problem["detail"]
        assert [e["loc"] for e in problem["errors"]] == [["body", "callback_url"]]
    listed = guarded.client.get("/jobs", params={"limit": 200}).json()["items"]
    assert all(j["callback_url"] != callback_url for j in listed)
    assert hook.hits == []


def test_a_destination_turned_private_is_refused_at_delivery(
    stack: Stack, guarded: Pair, sample_path: Path
) -> None:
    """DNS rebinding: accepted at submission (public), private by delivery time. The job's
    callback_url is changed in the store while the job is held running, to a name that
    resolves to loopback; the worker resolves it again and refuses it."""
    with receiver() as hook:  # listening throughout: it must not be called
        with held(guarded.hold):
            job_id = submitted(guarded.client, sample_path, PUBLIC)
            wait_held(guarded.client, job_id, guarded.hold)
            with MongoClient(stack.store.url) as mongo:
                changed = mongo[guarded.db]["jobs"].update_one(
                    {"_id": job_id}, {"$set": {"callback_url": hook.url(host="localhost")}}
                )
            assert changed.modified_count == 1
        done = wait_job(guarded.client, job_id, settled)
    assert done["callback_status"] == "failed", done
    assert done["status"] == "succeeded"
    assert done["callback_error"].startswith("destination refused: localhost resolves to")
    assert "loopback" in done["callback_error"]
    assert hook.hits == []
