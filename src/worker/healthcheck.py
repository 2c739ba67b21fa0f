"""Container health check of an ml-worker: does this container's Celery node answer a ping?

`python -m src.worker.healthcheck [NODE]` exits 0 when NODE (default `celery@<hostname>`,
the name `celery worker` gives itself) replies within the timeout, 1 otherwise, with one
line on stderr. It asks only its own node, so a scaled service (`--scale ml-worker=3`)
checks each container separately. Bounded: one broker connection attempt, then a short
broadcast; it never waits on the broker's retry policy.
"""

from __future__ import annotations

import os
import socket
import sys

TIMEOUT_SECONDS = float(os.environ.get("HEALTHCHECK_TIMEOUT_SECONDS", "3"))


def node_name(argv: list[str]) -> str:
    return argv[0] if argv else f"celery@{socket.gethostname()}"


def check(node: str, timeout: float = TIMEOUT_SECONDS) -> str | None:
    """None when `node` answers, else the reason it is considered unhealthy."""
    from src.core.broker import celery_app  # not the worker's entry point: no metrics set-up

    app = celery_app()
    try:
        with app.connection_for_write() as conn:
            conn.ensure_connection(max_retries=1, timeout=timeout)
            replies = app.control.ping(destination=[node], timeout=timeout, connection=conn)
    except Exception as exc:  # any failure is "unhealthy", said in one line
        return f"broker unreachable: {type(exc).__name__}: {exc}"
    if any(node in reply for reply in replies):
        return None
    return f"no reply from {node} within {timeout:g}s"


def main(argv: list[str] | None = None) -> int:
    node = node_name(sys.argv[1:] if argv is None else argv)
    problem = check(node)
    if problem:
        print(f"unhealthy: {problem}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
