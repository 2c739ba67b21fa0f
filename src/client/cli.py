"""`clean-data --remote URL INPUT -o OUTPUT`: the same command, the cleaning done by the service.

Upload, follow the job with the same progress bar, download atomically, then the same
report file and summary lines as a local run. Exit 1 when the service refuses the
input (4xx) or the job fails; 3 when the service cannot be reached or fails (5xx);
one line on stderr either way, and no output file.
"""

from __future__ import annotations

import argparse
import contextlib
import sys
from pathlib import Path

import httpx

from src.client.client import CleaningClient
from src.client.errors import ApiError, JobFailed
from src.data.clean_data import (
    EXIT_BAD_INPUT,
    EXIT_FAILURE,
    default_target,
    progress_bar,
    report_outcome,
)
from src.data.formats import output_format
from src.data.options import CleaningOptions
from src.jobs.model import Job, JobStatus

EXIT_INTERRUPTED = 130


def _fail(message: str, code: int) -> int:
    print(f"clean-data: error: {message}", file=sys.stderr)
    return code


def run_remote(
    parser: argparse.ArgumentParser, args: argparse.Namespace, options: CleaningOptions
) -> int:
    url: str = args.remote
    if not url.startswith(("http://", "https://")):
        parser.error(f"--remote: {url!r} is not an http:// or https:// URL")
    if args.input is None:
        parser.error("--remote needs INPUT: the local file to clean on the service")
    source: Path = args.input
    target: Path = args.output or default_target(source, args.format)
    fmt = output_format(target, args.format)
    bar, update = progress_bar(source, args.quiet) if source.is_file() else (None, None)
    job: Job | None = None
    client = CleaningClient(url, args.api_key)
    try:
        job = client.submit(source, options, fmt)
        job = client.wait(job, on_progress=(lambda j: update(j.progress)) if update else None)
        if job.status != JobStatus.SUCCEEDED:
            raise JobFailed(job)
        client.download(job, target)
    except JobFailed as exc:
        return _fail(f"job {exc.job.id} {exc.job.status}: {exc}", EXIT_BAD_INPUT)
    except ApiError as exc:
        if 400 <= exc.status < 500:
            return _fail(f"the service refused: {exc}", EXIT_BAD_INPUT)
        return _fail(f"the service failed: {exc}", EXIT_FAILURE)
    except httpx.TransportError as exc:
        return _fail(f"service unreachable at {url} ({exc or type(exc).__name__})", EXIT_FAILURE)
    except OSError as exc:  # the local input or output, as in a local run
        return _fail(f"{exc.strerror or exc}: {exc.filename or ''}", EXIT_BAD_INPUT)
    except KeyboardInterrupt:
        if job is not None and job.status not in (JobStatus.SUCCEEDED, JobStatus.FAILED):
            with contextlib.suppress(Exception):
                client.cancel(job)
        what = f"job {job.id} cancelled; " if job is not None else ""
        print(f"clean-data: interrupted; {what}no output written", file=sys.stderr)
        return EXIT_INTERRUPTED
    except Exception as exc:  # one line, never a traceback for the user
        return _fail(f"unexpected failure: {type(exc).__name__}: {exc}", EXIT_FAILURE)
    finally:
        if bar is not None:
            bar.close()
        client.close()
    if job.report is not None:  # the service names its own files: name the local ones
        report = job.report.model_copy(update={"input": str(source), "output": str(target)})
        report_outcome(source, target, report, args.report, args.quiet, f" (job {job.id})")
    return 0
