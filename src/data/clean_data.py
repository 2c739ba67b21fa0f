"""`clean-data`: clean a product CSV (or every CSV of data/raw) from the command line.

Also runs as `python -m src.data.clean_data`, the guide's ETL container command. With
`--remote URL` the cleaning service does the work (`src.client.cli`), not this process.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import os
import sys
import typing
from pathlib import Path

from pydantic import ValidationError

from src.data.formats import DEFAULT_OUTPUT, OUTPUT_FORMATS, OutputFormat
from src.data.options import CleaningOptions
from src.data.report import CleaningReport

DEFAULT_RAW = Path("data/raw")
DEFAULT_CLEANED = Path("data/cleaned")
EXIT_BAD_INPUT = 1
EXIT_FAILURE = 3

EPILOG = """\
examples:
  clean-data tests/fixtures/rakuten_sample.csv -o out/sample.csv --report out/report.json
  clean-data X_train.csv --format parquet --lowercase --drop-duplicates
  clean-data                      # every data/raw/*.csv into data/cleaned/ (the ETL container)
  clean-data --remote http://127.0.0.1:8000 X_test.csv -o X_test.cleaned.csv   # on the service

exit status: 0 success; 1 bad input (one line on stderr, no output left behind;
with --remote: the service refused the input or the job failed); 2 bad command line;
3 unexpected failure (with --remote: the service is unreachable or failing).
"""


def _add_option_arguments(parser: argparse.ArgumentParser) -> None:
    """One flag per CleaningOptions field, so the CLI and the API never drift apart."""
    group = parser.add_argument_group("cleaning options (the same as the API's `options`)")
    for name, info in CleaningOptions.model_fields.items():
        flag = "--" + name.replace("_", "-")
        help_text = f"{info.description} (default: {info.default})"
        annotation = info.annotation
        if annotation is bool:
            group.add_argument(flag, action=argparse.BooleanOptionalAction, help=help_text)
        elif typing.get_origin(annotation) is list:
            group.add_argument(
                flag, metavar="A,B", type=lambda v: [c for c in v.split(",") if c], help=help_text
            )
        elif typing.get_origin(annotation) is typing.Literal:
            group.add_argument(flag, choices=typing.get_args(annotation), help=help_text)
        elif annotation is int:
            group.add_argument(flag, type=int, metavar="N", help=help_text)
        else:
            group.add_argument(flag, metavar=name.upper(), help=help_text)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="clean-data",
        description="Clean product text (HTML, entities, mojibake, lossy '¿', whitespace) "
        "in a CSV or Parquet file, streaming in chunks, and report what changed.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "input", nargs="?", type=Path, help="CSV or Parquet file; omit to clean data/raw/*.csv"
    )
    parser.add_argument(
        "-o", "--output", type=Path, help="output file (default: INPUT.cleaned.<format>)"
    )
    parser.add_argument("--format", choices=OUTPUT_FORMATS, help="output format")
    parser.add_argument("--report", type=Path, help="write the JSON report to this file")
    parser.add_argument(
        "--raw-dir", type=Path, default=DEFAULT_RAW, help="input folder when INPUT is omitted"
    )
    parser.add_argument(
        "--cleaned-dir",
        type=Path,
        default=DEFAULT_CLEANED,
        help="output folder when INPUT is omitted",
    )
    parser.add_argument("-q", "--quiet", action="store_true", help="no progress bar, no summary")
    remote = parser.add_argument_group("remote: clean on the cleaning service (docs/client.md)")
    remote.add_argument(
        "--remote", metavar="URL", help="the service's base URL, e.g. http://127.0.0.1:8000"
    )
    remote.add_argument(
        "--api-key",
        metavar="KEY",
        default=os.environ.get("CLEANING_API_KEY"),
        help="sent as X-API-Key (default: $CLEANING_API_KEY)",
    )
    _add_option_arguments(parser)
    return parser


def _options(args: argparse.Namespace) -> CleaningOptions:
    given = {
        n: getattr(args, n) for n in CleaningOptions.model_fields if getattr(args, n) is not None
    }
    return CleaningOptions(**given)


def progress_bar(path: Path, quiet: bool) -> tuple[typing.Any, typing.Any]:
    """A tqdm bar in bytes on a terminal; nothing when piped or quiet.

    `update` takes anything with `bytes_done` and `rows_done`: the engine's `Progress`
    or a remote job's `JobProgress`."""
    if quiet or not sys.stderr.isatty():
        return None, None
    from tqdm import tqdm

    bar = tqdm(total=path.stat().st_size, unit="B", unit_scale=True, desc=path.name, leave=False)

    def update(progress: typing.Any) -> None:
        bar.update(progress.bytes_done - bar.n)
        bar.set_postfix(rows=f"{progress.rows_done:,}")

    return bar, update


def _clean_one(
    source: Path,
    target: Path,
    report_path: Path | None,
    fmt: OutputFormat | None,
    args: argparse.Namespace,
    options: CleaningOptions,
) -> None:
    from src.data.pipeline import clean_file

    bar, update = progress_bar(source, args.quiet) if source.is_file() else (None, None)
    try:
        report = clean_file(source, target, options, fmt=fmt, on_progress=update)
    finally:
        if bar is not None:
            bar.close()
    report_outcome(source, target, report, report_path, args.quiet)


def report_outcome(
    source: Path,
    target: Path,
    report: CleaningReport,
    report_path: Path | None,
    quiet: bool,
    note: str = "",
) -> None:
    """The JSON report to `report_path`, and the summary lines unless quiet."""
    if report_path:
        report_path.parent.mkdir(parents=True, exist_ok=True)
        report_path.write_text(report.model_dump_json(indent=2) + "\n", encoding="utf-8")
    if not quiet:
        print(f"{source} → {target}{note}")
        print(report.summary())


def default_target(source: Path, fmt: OutputFormat | None) -> Path:
    return source.with_name(f"{source.stem}.cleaned.{fmt or DEFAULT_OUTPUT}")


def run(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        options = _options(args)
    except ValidationError as exc:
        err = exc.errors()[0]
        parser.error(f"--{'-'.join(map(str, err['loc'])).replace('_', '-')}: {err['msg']}")
    if not gc.isenabled():  # `main` paused the collector: load the engine, then resume
        if args.remote is None:
            with contextlib.suppress(ImportError):  # an install without the engine: see below
                import src.data.pipeline  # noqa: F401
            gc.freeze()
        gc.enable()
    if args.remote is not None:
        try:
            from src.client.cli import run_remote
        except ImportError as exc:  # an install without the `client` extra
            print(f"clean-data: error: --remote needs httpx and httpx-sse: {exc}", file=sys.stderr)
            return EXIT_FAILURE
        return run_remote(parser, args, options)
    from src.data.io import InputError

    try:
        if args.input is not None:
            fmt = args.format
            target = args.output or default_target(args.input, fmt)
            _clean_one(args.input, target, args.report, fmt, args, options)
        else:
            sources = sorted(args.raw_dir.glob("*.csv"))
            if not sources:
                raise InputError(f"no CSV file in {args.raw_dir}")
            fmt = args.format or DEFAULT_OUTPUT
            for source in sources:
                target = args.cleaned_dir / f"{source.stem}.{fmt}"
                report = args.cleaned_dir / f"{source.stem}.report.json"
                _clean_one(source, target, report, fmt, args, options)
    except InputError as exc:
        print(f"clean-data: error: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except OSError as exc:
        print(f"clean-data: error: {exc.strerror or exc}: {exc.filename or ''}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except KeyboardInterrupt:
        print("clean-data: interrupted; no output written", file=sys.stderr)
        return 130
    except Exception as exc:  # one line, never a traceback for the user
        print(f"clean-data: unexpected failure: {type(exc).__name__}: {exc}", file=sys.stderr)
        return EXIT_FAILURE
    return 0


def main() -> None:
    # The engine's libraries (polars above all) create ~50,000 objects as they load,
    # which the cyclic collector would traverse again and again (~40 ms of a start-up);
    # a command keeps them for its whole life anyway, so `run` freezes them once loaded.
    gc.disable()
    try:
        code = run()
    finally:
        gc.enable()
    sys.exit(code)


if __name__ == "__main__":
    main()
