"""A guard for a kombu 5.7.0 bug that kills a worker when Redis restarts.

The bug. A worker with an unacknowledged message (`acks_late`) and room to prefetch
more has a BRPOP pending on its task channel. When Redis goes away, Celery may see the
loss on another socket first (the control channel's pub/sub), and then closes the
connection twice: `collect()`, then `close()`. In the first close, the task channel's
`Channel.close` drains the pending BRPOP reply first; on the dead socket that read
raises a connection error, which aborts the close before it restores the unacked
messages, and `collect()` swallows it and detaches the transport from its connection
(`transport.client = None`). The second close finds the channel still open, drops its
Redis pools and restores the unacked messages through a new pool, whose parameters
come from `transport.client`: `AttributeError: 'NoneType' object has no attribute
'hostname'` in `kombu/transport/redis.py` `_connparams`, which Celery reports as an
"Unrecoverable error" and the worker exits. It happens on most Redis restarts while
one task is in flight on a worker of two processes (tests/integration/test_kombu_guard.py).

The guard. The same close, except that a connection error while draining the pending
BRPOP reply is logged instead of aborting it: the first close then goes on as it does
when no BRPOP is pending (pools dropped, unacked messages restored while the transport
still knows its broker; if Redis is still down that restore fails as a connection
error, which Celery ignores, and the messages stay in Redis's unacked hash for the
visibility-timeout restore). The second close finds the channel closed and does
nothing. The running tasks finish and are acknowledged through the channel's pool;
the worker reconnects and consumes again.

Upstream. kombu 5.7.0 is the newest release on PyPI; its tracker has older reports of
this family of errors (the same AttributeError from other close paths, closed long
ago), none for this path, and no release changes `Channel.close`.

When to delete it. On any kombu upgrade (the import below refuses another version on
purpose): comment out `kombu_guard.apply()` in `src/worker/celery_app.py` and run
tests/integration/test_kombu_guard.py a few times. If it passes without the guard,
delete this module and that line; otherwise update `WRITTEN_FOR` after checking that
`Channel.close` and `Channel._brpop_read` still read as described above.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from queue import Empty
from typing import Any

import kombu
from kombu.transport import redis as kombu_redis

log = logging.getLogger(__name__)

WRITTEN_FOR = "5.7.0"

if kombu.__version__ != WRITTEN_FOR:
    raise RuntimeError(
        f"src/worker/kombu_guard.py was written for kombu {WRITTEN_FOR}, found "
        f"{kombu.__version__}: re-check the guard (its docstring says how), then update it"
    )


def _guarded(close: Callable[[Any], None]) -> Callable[[Any], None]:
    def guarded_close(self: Any) -> None:
        if self._in_poll:
            try:
                self._brpop_read()  # as the original does first; it clears _in_poll
            except Empty:
                pass
            except self.connection_errors as exc:
                log.warning("broker connection lost while closing a channel: %r", exc)
        close(self)

    guarded_close.__wrapped__ = close  # type: ignore[attr-defined]
    return guarded_close


def apply() -> None:
    """Install the guard on kombu's Redis channel (once; later calls do nothing)."""
    channel = kombu_redis.Channel
    if not hasattr(channel.close, "__wrapped__"):
        channel.close = _guarded(channel.close)  # type: ignore[method-assign]
