"""Security settings on the real API: per-key rate limit in Redis, docs off, secrets unlogged."""

from __future__ import annotations

import time

import httpx

from tests.support.services import Stack, stop

SECRET = "sk-test-5b1f0c9e7a2d4f8c"


def test_rate_limit_per_key_with_retry_after(stack: Stack) -> None:
    """The read budget (READ_RATE_LIMIT_PER_MINUTE), per key; submissions have their own."""
    proc, base = stack.start_api(API_KEYS=f"{SECRET},other-key", READ_RATE_LIMIT_PER_MINUTE="5")
    try:
        if time.time() % 60 > 55:  # keep the burst inside one one-minute window
            time.sleep(61 - time.time() % 60)
        with httpx.Client(base_url=base, timeout=30) as c:
            mine = {"X-API-Key": SECRET}
            codes = [c.get("/jobs", headers=mine).status_code for _ in range(6)]
            assert codes == [200] * 5 + [429]
            limited = c.get("/jobs", headers=mine)
            assert limited.status_code == 429
            assert 1 <= int(limited.headers["retry-after"]) <= 62
            assert "rate limit exceeded" in limited.json()["detail"]
            assert c.get("/jobs", headers={"X-API-Key": "other-key"}).status_code == 200
            assert c.get("/health").status_code == 200  # never limited
        log = (stack.logs / f"api-{base.rsplit(':', 1)[1]}.log").read_text()
        assert SECRET not in log
    finally:
        stop(proc)


def test_docs_can_be_turned_off(stack: Stack) -> None:
    proc, base = stack.start_api(DOCS_ENABLED="false")
    try:
        with httpx.Client(base_url=base, timeout=30) as c:
            assert c.get("/docs").status_code == 404
            assert c.get("/openapi.json").status_code == 404
            assert c.get("/health").status_code == 200
    finally:
        stop(proc)
