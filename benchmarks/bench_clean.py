"""Benchmark of the text-cleaning engine against the guide's BeautifulSoup baseline.

What it measures, on one CPU core in one process (the script pins itself to one
core and sets POLARS_MAX_THREADS=1, re-executing itself once to do so):

* rows/s of the guide-style baseline (BeautifulSoup ``get_text(" ")``, then
  ``html.unescape``, whitespace collapse and ``.lower()``) and of the engine
  (``src.data.text.clean_series`` with ``lowercase=True``), each cleaning both
  text columns of every row, on the real sample tiled to ``--rows`` rows and on
  a seeded synthetic HTML-heavy set. The two alternate in blocks of ``--block-rows``
  rows, best of ``--repeat`` runs, timed in process CPU time (``--wall`` for the
  wall clock), so that other load on a shared machine disturbs the ratio as
  little as possible;
* how often the engine agrees with the oracle (``tests.support.oracle.reference_clean``)
  and, for information only, with the baseline;
* the peak RSS and rows/s of a chunked ``src.data.pipeline.clean_file`` run over
  ``--size-mb`` MiB of CSV, in a child process (which uses all cores unless
  ``--chunked-one-core``); its peak RSS is ``getrusage(RUSAGE_CHILDREN).ru_maxrss``
  read by a lean launcher process, cross-checked with the child's own VmHWM.

Every figure is printed as ``name=value`` on its own line; the last line is
``speedup_vs_bs4=`` (engine rows/s / baseline rows/s on both data sets combined).

``--whole-process`` measures instead what a user waits for: the installed
``clean-data --lowercase`` command and the guide-style script
(``benchmarks/guide_baseline.py``: the same baseline, pandas CSV in and out), each
as its own process on one core, on the real sample tiled to ``--whole-rows`` rows
(100,000 by default). The two alternate, A/B/A/B, ``--pairs`` times (after one
untimed run of each on the untiled sample, so both start with warm file caches);
wall time from start to exit, medians. Its last line is
``whole_process_speedup_vs_bs4=`` (median script time / median ``clean-data`` time).

Run (Linux): ``uv run python benchmarks/bench_clean.py`` (about 1 GiB of temporary CSV
in and out; ``--quick`` for a small smoke run, ``--help`` for the flags);
``uv run python benchmarks/bench_clean.py --whole-process`` (about 1 minute).
"""

from __future__ import annotations

import argparse
import html
import json
import os
import platform
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path

import polars as pl
from bs4 import BeautifulSoup, MarkupResemblesLocatorWarning

from src.data.lossy import french_words
from src.data.options import CleaningOptions
from src.data.text import clean_series
from tests.support.oracle import reference_clean

ROOT = Path(__file__).resolve().parent.parent
SAMPLE = ROOT / "tests" / "fixtures" / "rakuten_sample.csv"
GUIDE_SCRIPT = ROOT / "benchmarks" / "guide_baseline.py"
TEXT_COLUMNS = ("designation", "description")
OPTIONS = CleaningOptions(lowercase=True)
SEED = 20240607
PINNED_ENV = "BENCH_CLEAN_PINNED"
ORIGINAL_CPUS_ENV = "BENCH_CLEAN_ORIGINAL_CPUS"
ORIGINAL_THREADS_ENV = "BENCH_CLEAN_ORIGINAL_POLARS_MAX_THREADS"

Columns = dict[str, list[str]]


# --------------------------------------------------------------------------- data


def load_sample() -> Columns:
    """The real sample's text columns, nulls read as empty strings."""
    frame = pl.read_csv(SAMPLE, infer_schema=False)
    return {c: frame.get_column(c).fill_null("").to_list() for c in TEXT_COLUMNS}


def tile(columns: Columns, rows: int) -> Columns:
    """`columns` repeated until they hold exactly `rows` rows."""
    height = len(columns[TEXT_COLUMNS[0]])
    times = -(-rows // height)
    return {c: (values * times)[:rows] for c, values in columns.items()}


_ENTITIES = {
    "é": "eacute",
    "è": "egrave",
    "ê": "ecirc",
    "à": "agrave",
    "â": "acirc",
    "ç": "ccedil",
    "ô": "ocirc",
    "î": "icirc",
    "û": "ucirc",
    "ù": "ugrave",
}


def _words(text: str, sep: str | None = None) -> tuple[str, ...]:
    return tuple(text.split(sep))


_NOUNS = _words(
    "chargeur câble lampe chaise table housse coque montre poupée voiture piscine pompe "
    "cartouche batterie tablette enceinte souris clavier valise couette guirlande figurine "
    "perceuse tondeuse bouilloire cafetière trottinette raquette poussette peluche"
)
_VOWEL_NOUNS = _words(
    "encre appareil écran étui imprimante objet utilisateur enfant entretien emballage "
    "origine ensemble accessoire article usage installation intérieur extérieur aspirateur "
    "éclairage"
)
_ADJECTIVES = _words(
    "élégant pratique résistant léger idéal solide réglable étanche compact confortable "
    "durable robuste silencieux économique ergonomique lavable pliable sécurisé"
)
_VERBS = _words("utiliser installer entretenir ajuster ranger nettoyer assembler emporter")
_COLOURS = _words("noir blanc rouge bleu vert gris argenté doré beige rosé")
_MATERIALS = _words(
    "plastique ABS|acier inoxydable|aluminium|coton bio|bois de hêtre|polyester", "|"
)
_BRANDS = _words("Générique|Sélection Maison|L'Atelier|Bébé Confort|Électro Plus|Hôtel & Spa", "|")
_ELISION_TEMPLATES = (
    "l'{v}",
    "d'une {n}",
    "qu'il",
    "n'est",
    "s'adapte",
    "d'{v}",
    "jusqu'à",
    "aujourd'hui",
    "c'est",
    "l'{v}",
)


class SyntheticText:
    """Product-like French text with the HTML and encoding noise of the real data."""

    def __init__(self, rng: random.Random) -> None:
        self.rng = rng

    def _apostrophe(self) -> str:
        return self.rng.choices(
            ["'", "&#39;", "’", "&rsquo;", "¿", "&amp;#39;"], [40, 20, 10, 5, 20, 5]
        )[0]

    def _accents(self, text: str) -> str:
        """Accented letters as entities (sometimes double-escaped) or lost as '¿¿'."""
        r = self.rng.random()
        if r < 0.55:
            return text
        out = []
        for ch in text:
            if ch in _ENTITIES and self.rng.random() < 0.7:
                if r < 0.8:
                    ch = f"&{_ENTITIES[ch]};"
                elif r < 0.9:
                    ch = f"&amp;{_ENTITIES[ch]};"
                elif r < 0.95:
                    ch = f"&#{ord(ch)};"
                else:
                    ch = "¿¿"
            out.append(ch)
        return "".join(out)

    def _elision(self) -> str:
        template = self.rng.choice(_ELISION_TEMPLATES)
        phrase = template.format(v=self.rng.choice(_VOWEL_NOUNS), n=self.rng.choice(_NOUNS))
        return phrase.replace("'", self._apostrophe())

    def sentence(self) -> str:
        rng = self.rng
        noun, adj = rng.choice(_NOUNS), rng.choice(_ADJECTIVES)
        templates = [
            f"Ce {noun} est {adj} et {rng.choice(_ADJECTIVES)}.",
            f"Idéal pour {self._elision()} de votre {rng.choice(_NOUNS)}.",
            f"Grâce à sa conception, il {self._elision()} à tous les {noun}s.",
            f"Il {self._elision()} pas nécessaire de {rng.choice(_VERBS)} le {noun}.",
            f"Fabriqué en {rng.choice(_MATERIALS)}, {self._elision()} très {adj}.",
            f"Dimensions : {rng.randint(5, 200)} x {rng.randint(5, 200)} cm.",
            f"Livré avec {self._elision()} &amp; un mode d{self._apostrophe()}emploi.",
            f"Poids : {rng.randint(1, 90)},{rng.randint(0, 9)} kg.",
        ]
        return self._accents(rng.choice(templates))

    def bullet(self) -> str:
        rng = self.rng
        item = rng.choice(
            [
                f"Couleur : {rng.choice(_COLOURS)}",
                f"Matériau : {rng.choice(_MATERIALS)}",
                f"Puissance : {rng.randint(5, 2000)} W",
                f"Garantie : {rng.randint(1, 5)} ans",
                f"Idéal pour {self._elision()}",
                f"Température : {rng.randint(-20, 40)}&deg;C &ndash; {rng.randint(41, 90)}&deg;C",
                f"Contenu : {rng.randint(1, 12)} &times; {rng.choice(_NOUNS)}",
            ]
        )
        if rng.random() < 0.2:
            item = f"<strong>{item}</strong>"
        return self._accents(item)

    def description(self) -> str:
        rng = self.rng
        parts: list[str] = []
        for _ in range(rng.randint(1, 4)):
            kind = rng.random()
            sentences = " ".join(self.sentence() for _ in range(rng.randint(1, 5)))
            if kind < 0.35:
                parts.append(f"<p>{sentences}</p>")
            elif kind < 0.6:
                items = "".join(f"<li>{self.bullet()}</li>" for _ in range(rng.randint(2, 8)))
                parts.append(f"<ul>{items}</ul>")
            elif kind < 0.75:
                lines = "<br />".join(self.bullet() for _ in range(rng.randint(2, 6)))
                parts.append(f"<div><strong>Caractéristiques :</strong><br />{lines}</div>")
            elif kind < 0.85:
                parts.append(f'<span style="font-size: 12px;">{sentences}</span><br>')
            elif kind < 0.95:
                parts.append(f"<p><b>{self.sentence()}</b>&nbsp;{sentences}<br /></p>")
            else:
                parts.append(sentences)
        sep = rng.choice(["", " ", "\n", "\r\n"])
        return sep.join(parts)

    def designation(self) -> str:
        rng = self.rng
        title = (
            f"{rng.choice(_NOUNS).capitalize()} {rng.choice(_ADJECTIVES)} "
            f"{rng.choice(_BRANDS).replace('&', '&amp;')} - {rng.choice(_COLOURS)} - "
            f"{rng.randint(10, 300)} cm"
        )
        title = title.replace("'", self._apostrophe())
        if rng.random() < 0.15:
            title += f" pour {self._elision()}"
        if rng.random() < 0.03:  # mojibake: UTF-8 read back as cp1252
            title = title.encode("utf-8").decode("cp1252", errors="replace")
        return self._accents(title)


def synthetic(rows: int, seed: int = SEED) -> Columns:
    """A deterministic HTML-heavy set of `rows` rows (a tenth have no description)."""
    text = SyntheticText(random.Random(seed))
    designations, descriptions = [], []
    for _ in range(rows):
        designations.append(text.designation())
        descriptions.append("" if text.rng.random() < 0.1 else text.description())
    return {"designation": designations, "description": descriptions}


# ---------------------------------------------------------------------- cleaners


def baseline_clean(text: str) -> str:
    """What the origin project does to one value (the guide's recipe)."""
    text = BeautifulSoup(text, "html.parser").get_text(" ")
    text = html.unescape(text)
    text = " ".join(text.split())
    return text.lower()


def engine_clean(columns: Columns) -> Columns:
    """The engine's output for every text column (untimed; for the agreement checks)."""
    series = {c: pl.Series(c, values, dtype=pl.String) for c, values in columns.items()}
    return {c: clean_series(s, OPTIONS)[0].to_list() for c, s in series.items()}


def time_both(
    columns: Columns, block_rows: int, repeat: int, timer: Callable[[], float]
) -> tuple[float, float]:
    """Seconds taken by the baseline and by the engine to clean every text column.

    The rows are cut into blocks of `block_rows` (0: one block); on each block the
    two cleaners alternate `repeat` times and each keeps its best time, so that
    other load on the machine disturbs both alike and as little as possible.
    Polars series are built before the clock starts.
    """
    rows = len(columns[TEXT_COLUMNS[0]])
    step = block_rows or rows or 1
    baseline_s = engine_s = 0.0
    for start in range(0, rows, step):
        lists = {c: values[start : start + step] for c, values in columns.items()}
        series = {c: pl.Series(c, values, dtype=pl.String) for c, values in lists.items()}
        best_baseline = best_engine = float("inf")
        for _ in range(repeat):
            started = timer()
            for values in lists.values():
                for value in values:
                    baseline_clean(value)
            best_baseline = min(best_baseline, timer() - started)
            started = timer()
            for s in series.values():
                clean_series(s, OPTIONS)
            best_engine = min(best_engine, timer() - started)
        baseline_s += best_baseline
        engine_s += best_engine
    return baseline_s, engine_s


def agreement(
    columns: Columns, engine: Columns, expected: Callable[[str], str], normalise: bool = False
) -> tuple[int, int, list[tuple[str, str, str]]]:
    """Cells where the engine matches `expected`, cells compared, and a few mismatches."""
    same = total = 0
    mismatches: list[tuple[str, str, str]] = []
    for c, values in columns.items():
        for raw, got in zip(values, engine[c], strict=True):
            want = expected(raw)
            if normalise:
                got, want = " ".join(got.split()).lower(), " ".join(want.split()).lower()
            total += 1
            if got == want:
                same += 1
            elif len(mismatches) < 3:
                mismatches.append((raw, got, want))
    return same, total, mismatches


# ----------------------------------------------------------------- chunked run

# The chunked clean itself; VmHWM (this process's own peak RSS) is a cross-check.
CHILD_CODE = """
import json, re, sys
import polars as pl
from src.data.options import CleaningOptions
from src.data.pipeline import clean_file
report = clean_file(sys.argv[1], sys.argv[2], CleaningOptions(lowercase=True))
hwm = re.search(r"VmHWM:\\s*(\\d+)", open("/proc/self/status").read())
print(json.dumps({"rows": report.rows_in, "seconds": report.duration_s,
                  "threads": pl.thread_pool_size(), "vmhwm_kib": int(hwm.group(1))}))
"""
# A lean process that runs CHILD_CODE and reads its peak RSS. On Linux a child's
# ru_maxrss starts from its parent's RSS at fork time (it survives exec), so reading
# it from this benchmark (hundreds of MB of data) would report the benchmark's size.
LAUNCHER_CODE = """
import json, resource, subprocess, sys
done = subprocess.run([sys.executable, "-c", *sys.argv[1:]], capture_output=True, text=True)
if done.returncode:
    sys.exit(done.stderr or f"exit status {done.returncode}")
usage = resource.getrusage(resource.RUSAGE_CHILDREN)
result = json.loads(done.stdout.strip().splitlines()[-1])
result.update(maxrss_kib=usage.ru_maxrss, cpu_s=usage.ru_utime + usage.ru_stime)
print(json.dumps(result))
"""


def write_chunked_input(path: Path, size_bytes: int, extra: Columns) -> int:
    """Tile the real sample (plus the synthetic rows) into a CSV of at least `size_bytes`."""
    raw = SAMPLE.read_bytes()
    header, _, body = raw.partition(b"\n")
    if not body.endswith(b"\n"):
        body += b"\n"
    n = len(extra["designation"])
    synthetic_frame = pl.DataFrame(
        {
            "": [str(i) for i in range(n)],
            "designation": extra["designation"],
            "description": extra["description"],
            "productid": [str(10_000_000_000 + i) for i in range(n)],
            "imageid": [str(2_000_000_000 + i) for i in range(n)],
        }
    )
    unit = body + synthetic_frame.write_csv(include_header=False).encode("utf-8")
    written = 0
    with path.open("wb") as fh:
        fh.write(header + b"\n")
        written += len(header) + 1
        while written < size_bytes:
            fh.write(unit)
            written += len(unit)
    return written


def child_env(keep_pinned_threads: bool) -> tuple[dict[str, str], set[int]]:
    """The environment and CPUs the caller ran this script with (before `pin_to_one_core`)."""
    env = dict(os.environ)
    env.pop(PINNED_ENV, None)
    cpus = env.pop(ORIGINAL_CPUS_ENV, "")
    threads = env.pop(ORIGINAL_THREADS_ENV, "")
    if not keep_pinned_threads:  # as the caller had it
        env.pop("POLARS_MAX_THREADS", None)
        if threads:
            env["POLARS_MAX_THREADS"] = threads
    return env, {int(c) for c in cpus.split(",") if c} or os.sched_getaffinity(0)


def run_chunked(size_mb: int, extra: Columns, one_core: bool) -> dict[str, float]:
    """Clean a >= `size_mb` MiB CSV in a child process; its rows/s and peak RSS."""
    env, original = child_env(keep_pinned_threads=one_core)

    def unpin() -> None:  # runs in the child before exec
        if not one_core:
            os.sched_setaffinity(0, original)

    with tempfile.TemporaryDirectory(prefix="bench_clean_") as tmp:
        source, target = Path(tmp) / "input.csv", Path(tmp) / "output.csv"
        size = write_chunked_input(source, size_mb << 20, extra)
        done = subprocess.run(
            [sys.executable, "-c", LAUNCHER_CODE, CHILD_CODE, str(source), str(target)],
            cwd=ROOT,
            env=env,
            preexec_fn=unpin,
            capture_output=True,
            text=True,
            check=False,
        )
        if done.returncode != 0:
            raise RuntimeError(f"chunked clean failed:\n{done.stderr}")
        result = json.loads(done.stdout.strip().splitlines()[-1])
    return {
        "input_mb": size / (1 << 20),
        "rows": result["rows"],
        "seconds": result["seconds"],
        "threads": result["threads"],
        "cpu_s": result["cpu_s"],
        "peak_rss_mb": result["maxrss_kib"] / 1024,  # KiB on Linux
        "vmhwm_mb": result["vmhwm_kib"] / 1024,
    }


# ------------------------------------------------------------------ whole process

# Runs a command and prints its peak RSS: a lean parent, so that the figure is the
# command's own (see LAUNCHER_CODE).
RSS_LAUNCHER_CODE = """
import resource, subprocess, sys
done = subprocess.run(sys.argv[1:], capture_output=True, text=True)
if done.returncode:
    sys.exit(done.stderr or f"exit status {done.returncode}")
print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)
"""


def write_tiled_sample(path: Path, rows: int) -> int:
    """The real sample's records (one line each), repeated until there are `rows`."""
    header, _, body = SAMPLE.read_bytes().partition(b"\n")
    records = body.splitlines(keepends=True)
    if not records[-1].endswith(b"\n"):
        records[-1] += b"\n"
    with path.open("wb") as fh:
        fh.write(header + b"\n")
        for start in range(0, rows, len(records)):
            fh.writelines(records[: min(len(records), rows - start)])
    return path.stat().st_size


def clean_data_command() -> str:
    """The installed console script, next to this interpreter (the project's venv)."""
    beside = Path(sys.executable).parent / "clean-data"
    found = str(beside) if beside.exists() else shutil.which("clean-data")
    if not found:
        raise SystemExit("clean-data is not installed: run `uv sync --extra etl` first")
    return found


def timed_run(command: list[str], env: dict[str, str], cpu: int) -> tuple[float, float]:
    """Wall seconds from start to exit of `command` pinned to `cpu`, and its CPU seconds."""
    started = time.perf_counter()
    child = subprocess.Popen(
        command,
        cwd=ROOT,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        preexec_fn=lambda: os.sched_setaffinity(0, {cpu}),
    )
    assert child.stderr is not None
    errors = child.stderr.read()
    _, status, usage = os.wait4(child.pid, 0)
    wall = time.perf_counter() - started
    child.returncode = os.waitstatus_to_exitcode(status)
    if child.returncode:
        raise RuntimeError(f"{command[0]} failed ({child.returncode}): {errors.decode()[-2000:]}")
    return wall, usage.ru_utime + usage.ru_stime


def whole_process(rows: int, pairs: int) -> None:
    """`clean-data` against the guide-style script, each a whole process on one core."""
    env, original = child_env(keep_pinned_threads=False)
    cpu = min(original)
    clean_data = clean_data_command()

    def commands(source: Path, out: Path) -> dict[str, list[str]]:
        return {
            "clean_data": [clean_data, "-q", "--lowercase", str(source), "-o", f"{out}.cd.csv"],
            "guide_bs4": [sys.executable, str(GUIDE_SCRIPT), str(source), f"{out}.bs4.csv"],
        }

    emit("python", platform.python_version())
    emit("cpu", cpu)
    emit("load_avg_1m_before", f"{os.getloadavg()[0]:.2f}")
    times: dict[str, list[float]] = {"clean_data": [], "guide_bs4": []}
    cpu_times: dict[str, list[float]] = {name: [] for name in times}
    with tempfile.TemporaryDirectory(prefix="bench_whole_") as tmp:
        source, out = Path(tmp) / "input.csv", Path(tmp) / "out"
        size = write_tiled_sample(source, rows)
        emit("whole_rows", rows)
        emit("whole_input_mb", f"{size / 1e6:.1f}")
        for command in commands(SAMPLE, out).values():  # warm file caches, on the small sample
            timed_run(command, env, cpu)
        for _ in range(pairs):
            for name, command in commands(source, out).items():
                wall, used = timed_run(command, env, cpu)
                times[name].append(wall)
                cpu_times[name].append(used)
        done = subprocess.run(
            [sys.executable, "-c", RSS_LAUNCHER_CODE, *commands(source, out)["clean_data"]],
            env=env,
            preexec_fn=lambda: os.sched_setaffinity(0, {cpu}),
            capture_output=True,
            text=True,
            check=True,
        )
        peak_rss_mb = int(done.stdout.strip().splitlines()[-1]) / 1024  # KiB on Linux
    emit("pairs", pairs)
    for name in times:
        emit(f"{name}_runs_s", ",".join(f"{t:.2f}" for t in times[name]))
        emit(f"{name}_cpu_s", statistics.median(cpu_times[name]))
    emit("clean_data_peak_rss_mb", f"{peak_rss_mb:.1f}")
    emit("load_avg_1m_after", f"{os.getloadavg()[0]:.2f}")
    cpu_ratio = statistics.median(cpu_times["guide_bs4"]) / statistics.median(
        cpu_times["clean_data"]
    )
    emit("whole_process_cpu_speedup_vs_bs4", f"{cpu_ratio:.2f}")
    clean_s, guide_s = statistics.median(times["clean_data"]), statistics.median(times["guide_bs4"])
    emit("clean_data_s", clean_s)
    emit("guide_bs4_s", guide_s)
    print(f"whole_process_speedup_vs_bs4={guide_s / clean_s:.2f}", flush=True)


# ------------------------------------------------------------------------ main


def pin_to_one_core() -> None:
    """Re-execute this script on one core with a one-thread polars pool (set before import)."""
    if os.environ.get(PINNED_ENV) == "1":
        return
    original = sorted(os.sched_getaffinity(0))
    env = dict(os.environ)
    env.update(
        {
            PINNED_ENV: "1",
            ORIGINAL_CPUS_ENV: ",".join(map(str, original)),
            ORIGINAL_THREADS_ENV: os.environ.get("POLARS_MAX_THREADS", ""),
            "POLARS_MAX_THREADS": "1",
        }
    )
    os.sched_setaffinity(0, {original[0]})
    sys.stdout.flush()
    os.execve(sys.executable, [sys.executable, *sys.argv], env)


def emit(name: str, value: object) -> None:
    """One figure per line as name=value (floats: 4 decimals below 100, else 1)."""
    if isinstance(value, float):
        value = f"{value:.4f}" if abs(value) < 100 else f"{value:.1f}"
    print(f"{name}={value}", flush=True)


def show_mismatches(label: str, mismatches: Sequence[tuple[str, str, str]]) -> None:
    """A window around the first difference of each mismatch, on stderr."""
    for raw, got, want in mismatches:
        pairs = enumerate(zip(got, want, strict=False))
        at = next((i for i, (a, b) in pairs if a != b), min(len(got), len(want)))
        lo = max(at - 60, 0)
        print(f"[{label} mismatch at char {at}] raw={raw[:200]!r}", file=sys.stderr)
        print(f"  engine: {got[lo : at + 60]!r}", file=sys.stderr)
        print(f"  {label}: {want[lo : at + 60]!r}", file=sys.stderr)


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--rows", type=int, default=80_640, help="rows of the tiled real sample (default 80640)"
    )
    parser.add_argument(
        "--synthetic-rows", type=int, default=20_000, help="rows of the synthetic HTML set"
    )
    parser.add_argument(
        "--size-mb", type=int, default=1024, help="MiB of CSV for the chunked run (default 1024)"
    )
    parser.add_argument(
        "--chunked-one-core",
        action="store_true",
        help="keep the chunked child on one core (default: all cores, as a worker runs)",
    )
    parser.add_argument(
        "--block-rows",
        type=int,
        default=20_000,
        help="rows per engine call, baseline and engine alternating block by block "
        "(default 20000; 0: each column in one call)",
    )
    parser.add_argument(
        "--repeat",
        type=int,
        default=3,
        help="runs of each cleaner on each block, the best one kept (default 3)",
    )
    parser.add_argument(
        "--wall",
        action="store_true",
        help="time with the wall clock (default: this process's CPU time, which other "
        "load on a shared machine disturbs less; the same on an idle machine)",
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help="smoke run: 10k rows, 2k synthetic rows, 50 MiB, one repeat "
        "(with --whole-process: 10k rows, one pair)",
    )
    whole = parser.add_argument_group("whole process (--whole-process)")
    whole.add_argument(
        "--whole-process",
        action="store_true",
        help="time the installed `clean-data` and the guide-style script as whole processes "
        "instead (the other modes do not run)",
    )
    whole.add_argument(
        "--whole-rows",
        type=int,
        default=100_000,
        help="rows of the tiled real sample for --whole-process (default 100000)",
    )
    whole.add_argument(
        "--pairs",
        type=int,
        default=3,
        help="A/B pairs of --whole-process runs, medians reported (default 3)",
    )
    args = parser.parse_args(argv)
    if args.quick and args.whole_process:
        args.whole_rows, args.pairs = 10_000, 1
    if args.quick:
        args.rows, args.synthetic_rows, args.size_mb, args.repeat = 10_000, 2_000, 50, 1
    if min(args.rows, args.synthetic_rows, args.size_mb, args.repeat) < 1 or args.block_rows < 0:
        parser.error(
            "--rows, --synthetic-rows, --size-mb, --repeat must be >= 1; --block-rows >= 0"
        )
    if min(args.whole_rows, args.pairs) < 1:
        parser.error("--whole-rows and --pairs must be >= 1")
    return args


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    if args.whole_process:
        whole_process(args.whole_rows, args.pairs)
        return
    warnings.filterwarnings("ignore", category=MarkupResemblesLocatorWarning)
    emit("python", platform.python_version())
    emit("polars", pl.__version__)
    emit("polars_threads", pl.thread_pool_size())
    emit("cpus_pinned", ",".join(map(str, sorted(os.sched_getaffinity(0)))))
    emit("timer", "wall" if args.wall else "cpu")
    emit("block_rows", args.block_rows)
    emit("repeat", args.repeat)
    timer = time.perf_counter if args.wall else time.process_time

    sample = load_sample()
    synth = synthetic(args.synthetic_rows)
    tiled = tile(sample, args.rows)
    emit("sample_rows", len(sample["designation"]))
    emit("tiled_rows", args.rows)
    emit("synthetic_rows", args.synthetic_rows)

    # The engine's first '¿' repair loads pyspellchecker's French word list (about a
    # second, once per process): load it here, outside the timed region.
    started = time.perf_counter()
    french_words()
    emit("word_list_load_s", time.perf_counter() - started)
    # One untimed pass of both cleaners over the untiled sample fills the other one-time
    # caches (ftfy's tables, compiled regexes): what is timed is the steady state.
    time_both(sample, 0, 1, timer)

    totals = {"baseline": 0.0, "engine": 0.0}
    rows_total = 0
    for label, data in (("sample", tiled), ("synthetic", synth)):
        rows = len(data["designation"])
        base_s, engine_s = time_both(data, args.block_rows, args.repeat, timer)
        totals["baseline"] += base_s
        totals["engine"] += engine_s
        rows_total += rows
        emit(f"baseline_{label}_rows_per_s", rows / base_s)
        emit(f"engine_{label}_rows_per_s", rows / engine_s)
        emit(f"speedup_{label}", f"{base_s / engine_s:.2f}")

    # Correctness on distinct values only (the untiled sample and the synthetic set).
    distinct = {c: sample[c] + synth[c] for c in TEXT_COLUMNS}
    engine_out = engine_clean(distinct)
    same, total, bad = agreement(distinct, engine_out, lambda t: reference_clean(t, OPTIONS))
    show_mismatches("oracle", bad)
    emit("cells_compared", total)
    emit("oracle_mismatches", total - same)
    emit("oracle_agreement", f"{same / total:.6f}")
    same, total, bad = agreement(distinct, engine_out, baseline_clean, normalise=True)
    show_mismatches("baseline", bad)
    emit("baseline_agreement_normalised", f"{same / total:.6f}")

    chunked = run_chunked(args.size_mb, synth, args.chunked_one_core)
    emit("chunked_input_mb", f"{chunked['input_mb']:.1f}")
    emit("chunked_rows", chunked["rows"])
    emit("chunked_threads", chunked["threads"])
    emit("chunked_s", chunked["seconds"])
    emit("chunked_cpu_s", chunked["cpu_s"])
    emit("chunked_rows_per_s", chunked["rows"] / chunked["seconds"])
    emit("chunked_vmhwm_mb", f"{chunked['vmhwm_mb']:.1f}")
    emit("chunked_peak_rss_mb", f"{chunked['peak_rss_mb']:.1f}")

    emit("baseline_rows_per_s", rows_total / totals["baseline"])
    emit("engine_rows_per_s", rows_total / totals["engine"])
    print(f"speedup_vs_bs4={totals['baseline'] / totals['engine']:.2f}", flush=True)


if __name__ == "__main__":
    pin_to_one_core()
    main()
