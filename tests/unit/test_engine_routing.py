"""The engine's shortcuts give exactly what the plain whole-column engine gives.

`clean_series` runs each step only on the values that step can change (found by
`MAY_CHANGE_PATTERN` and the steps' own tests), the entity table only with the entities
a chunk holds, the block-tag pass with an ASCII `\\b` where that is the same, ftfy
without its confirming pass, and the '¿' tokens found from each '¿'. Each is held here
to the straightforward version it replaces, on the real sample and on seeded
adversarial text; any difference, in a value or in a count, fails.
"""

from __future__ import annotations

import csv
import random
import re
from dataclasses import asdict
from pathlib import Path

import ftfy
import polars as pl
import pytest

from src.data import html as H
from src.data import lossy
from src.data import text as T
from src.data.mojibake import fix_mojibake, ftfy_config
from src.data.options import CleaningOptions

# ----------------------------------------------------------------- the plain engine


def _plain_unescape(values: pl.Series) -> tuple[pl.Series, int]:
    """Entity decoding with the whole table, pass after pass over every '&' value."""
    has_amp = values.str.contains("&", literal=True)
    if not has_amp.any():
        return values, 0
    keys, decoded = H.entity_table()
    before = values.filter(has_amp)
    out = before.str.replace_many(keys, decoded)
    for _ in range(3):
        again = out.str.replace_all(H.SPLIT_AMP_PATTERN, "&").str.replace_many(keys, decoded)
        if again.equals(out):
            break
        out = again
    slow = out.str.contains(H.UNDECODED_PATTERN)
    if slow.any():
        exact = [H.unescape_entities(v) for v in before.filter(slow).to_list()]
        out = out.clone().scatter(slow.arg_true(), pl.Series(out.name, exact, dtype=pl.String))
    changed = int((out != before).sum())
    if not changed:
        return values, 0
    return values.clone().scatter(has_amp.arg_true(), out), changed


def _plain_apply(values: pl.Series, mask: pl.Series, func) -> tuple[pl.Series, int]:  # type: ignore[no-untyped-def]
    before = values.to_list()
    after = [func(v) if m else v for v, m in zip(before, mask.to_list(), strict=True)]
    changed = sum(a != b for a, b in zip(after, before, strict=True))
    return pl.Series(values.name, after, dtype=pl.String), changed


def _plain_clean(raw: pl.Series, options: CleaningOptions) -> tuple[pl.Series, T.ColumnCounts]:
    """Every step over every value of the column, in order (the engine before its shortcuts)."""
    s = raw.cast(pl.String).fill_null("")
    counts = T.ColumnCounts(values=s.len(), chars_before=int(s.str.len_chars().sum() or 0))
    original = s
    if options.strip_html:
        counts.html_stripped = int(s.str.contains(H.HAS_TAG_PATTERN).sum())
        if counts.html_stripped:
            for pattern in H.DROP_PATTERNS:
                s = s.str.replace_all(pattern, "")
            s = s.str.replace_all(H.BLOCK_PATTERN, " ").str.replace_all(H.TAG_PATTERN, "")
    if options.unescape_entities:
        s, counts.entities_unescaped = _plain_unescape(s)
    if options.fix_mojibake:
        s, counts.mojibake_fixed = _plain_apply(
            s, s.str.contains(T.MOJIBAKE_PATTERN), lambda v: ftfy.fix_text(v, ftfy_config())
        )
    if options.repair_lossy:
        repaired = [_plain_repair_lossy(v) for v in s.to_list()]
        counts.lossy_repaired = sum(n for _, n in repaired)
        s = pl.Series(s.name, [v for v, _ in repaired], dtype=pl.String)
    counts.lossy_remaining = int(s.str.count_matches(lossy.LOSSY, literal=True).sum() or 0)
    unstable = s.str.contains(T.NFC_UNSTABLE_CHAR)
    if unstable.any():
        s = s.clone().scatter(unstable.arg_true(), s.filter(unstable).str.normalize("NFC"))
    s = (
        s.str.replace_all(T.CONTROL_PATTERN, "")
        .str.replace_all(T.WHITESPACE_FAST_PATTERN, " ")
        .str.strip_chars(" ")
    )
    if options.lowercase:
        s = s.str.to_lowercase()
    if options.min_length > 1:
        short = s.str.len_chars() < options.min_length
        s = pl.select(pl.when(short).then(pl.lit("")).otherwise(s)).to_series().alias(s.name)
    empty_out = s == ""
    counts.empty = int(empty_out.sum())
    counts.emptied = int((empty_out & (original != "")).sum())
    counts.values_changed = int((s != original).sum())
    counts.chars_after = int(s.str.len_chars().sum() or 0)
    return s, counts


_TOKEN = re.compile(r"(?<![\w¿])[\w¿]*¿[\w¿]*")


def _plain_repair_lossy(text: str) -> tuple[str, int]:
    """`repair_lossy` as a regular expression substitution."""
    repaired = 0

    def fix(match: re.Match[str]) -> str:
        nonlocal repaired
        fixed = lossy.repair_token(match.group())
        if fixed is None:
            return match.group()
        repaired += match.group().count(lossy.LOSSY)
        return fixed

    return _TOKEN.sub(fix, text), repaired


# ------------------------------------------------------------------- the inputs

# Pieces that reach every step and every shortcut's edge: tags (block names followed
# by non-ASCII letters, 'ſ' and the Kelvin sign that `(?i)` matches to 's' and 'k'),
# dropped elements joined by an earlier pass, entities of every kind, mojibake, the
# lossy '¿', NFC, controls, every kind of whitespace.
ATOMS = [
    "<p>", "</p>", "<br />", "<br>", "<li>", "</li>", "<b>", "</b>", "<div class=x>",
    "<pé>", "<bré>", "<addreſſ>", "<ADDREſS>", "<blockquote>", "<h1>", "<thé>", "<td\u00a0>",
    "<script>x</script>", "<<script>s</script>!-- c -->", "<style>p{}</style>", "<!-- c -->",
    "<![CDATA[x]]>", "<!DOCTYPE html>", "<?xml v?>", "< a >", "<10 cm>", "a < b", "<", ">",
    "&amp;", "&amp; amp;", "& amp;", "&eacute;", "&amp;eacute;", "&#39;", "&#x27;", "&#X27;",
    "&nbsp", "&nbspcm", "&notes", "&#128;", "&#0;", "&foo;", "&", "&#233;", "&amp;#39;",
    "&hellip;", "&lt;b&gt;", "AT&T", "&AMP;", "&Eacute",
    "Ã©", "Ã¨", "â€™", "Â·", "Â ", "à¢me", "\x9c", "\x85", "Ã\xa0",
    "¿", "¿¿", "l¿encre", "R¿¿SISTANT", "c¿ur", "â¿¿",
    "e\u0301", "\u00c5", "\u212b", "\u2000", "Ω", "\u1e9e", "İ", "Σ", "ΣΑΣ",
    "\x00", "\x07", "\x1b[31m", "\u200b", "\u202e", "\ufeff", "\u2060",
    " ", "  ", "\t", "\n", "\r\n", "\u00a0", "\u2009", "\u3000", "\u2028",
    "Chaise", "en bois", "é", "ï", "â", "Ü", "ß", "µ", "ÿ", "œ", "€", "–", "’", "日本",
    "K", "ſ", "_", "1", "2,5", "=1+1", "-", "+33",
]  # fmt: skip


def _soup(rng: random.Random, n: int) -> list[str]:
    return ["".join(rng.choices(ATOMS, k=rng.randint(0, 12))) for _ in range(n)]


def _sample_columns(sample_path: Path) -> dict[str, list[str]]:
    with sample_path.open(encoding="utf-8", newline="") as fh:
        rows = list(csv.DictReader(fh))
    return {c: [r[c] for r in rows] for c in ("designation", "description")}


OPTION_SETS = [
    CleaningOptions(),
    CleaningOptions(lowercase=True, min_length=3),
    CleaningOptions(strip_html=False),
    CleaningOptions(unescape_entities=False, fix_mojibake=False),
    CleaningOptions(strip_html=True, unescape_entities=False, repair_lossy=False),
]


@pytest.mark.parametrize("options", OPTION_SETS, ids=range(len(OPTION_SETS)))
def test_engine_equals_the_plain_engine(sample_path: Path, options: CleaningOptions) -> None:
    columns = _sample_columns(sample_path)
    columns["soup"] = _soup(random.Random(15), 3000)
    for name, values in columns.items():
        raw = pl.Series(name, values, dtype=pl.String)
        fast, fast_counts = T.clean_series(raw, options)
        plain, plain_counts = _plain_clean(raw, options)
        assert fast.to_list() == plain.to_list(), name
        assert asdict(fast_counts) == asdict(plain_counts), name


def test_safe_characters_need_no_step() -> None:
    """A value made of SAFE_CHARS (no double space, no space at an end) is left as it is."""
    ranges = re.findall(r"(.)(?:-(.))?", T.SAFE_CHARS, re.S)
    safe = [chr(c) for a, b in ranges for c in range(ord(a), ord(b or a) + 1)]
    assert " " in safe and "é" in safe and "<" not in safe and "&" not in safe
    values = pl.Series("v", [f"a{c}b" for c in [*safe, "".join(safe)]], dtype=pl.String)
    assert not values.str.contains(T.MAY_CHANGE_PATTERN).any()
    plain, counts = _plain_clean(values, CleaningOptions())
    assert plain.to_list() == values.to_list()
    assert counts.values_changed == 0


def test_block_pass_routing_equals_the_unicode_pass() -> None:
    values = pl.Series("v", _soup(random.Random(7), 3000), dtype=pl.String)
    stripped, _ = T.strip_tags(values)
    expected = values
    for pattern in H.DROP_PATTERNS:
        expected = expected.str.replace_all(pattern, "")
    expected = expected.str.replace_all(H.BLOCK_PATTERN, " ").str.replace_all(H.TAG_PATTERN, "")
    assert stripped.to_list() == expected.to_list()
    # the routing is needed: the ASCII pass alone differs on these
    tricky = pl.Series(["<addreſſ>x", "a<pé>b"])
    assert (
        tricky.str.replace_all(H.BLOCK_ASCII_PATTERN, " ").to_list()
        != tricky.str.replace_all(H.BLOCK_PATTERN, " ").to_list()
    )
    assert tricky.str.contains(H.BLOCK_NEEDS_UNICODE_PATTERN).all()


def _mojibake_corpus(sample_path: Path) -> list[str]:
    rng = random.Random(3)
    words = " ".join(_sample_columns(sample_path)["description"]).split()[:4000]
    corpus = []
    for _ in range(400):
        text = " ".join(rng.choices(words, k=rng.randint(1, 40)))
        kind = rng.random()
        if kind < 0.3:
            text = text.encode("utf-8").decode(rng.choice(["latin-1", "cp1252"]), errors="replace")
        elif kind < 0.5:  # mojibake inside correct text
            cut = rng.randint(0, len(text))
            broken = text[cut:].encode("utf-8").decode("cp1252", errors="replace")
            text = text[:cut] + broken
        elif kind < 0.6:  # twice
            text = text.encode("utf-8").decode("cp1252", errors="replace")
            text = text.encode("utf-8").decode("cp1252", errors="replace")
        text += rng.choice(["", "\n" + text, "\x9c", "\x1b[1m!", "Ã ", "â€�", "\ud83d\ude00"])
        corpus.append(text)
    return corpus


def test_fix_mojibake_equals_ftfy(sample_path: Path) -> None:
    corpus = _mojibake_corpus(sample_path)
    corpus += [v for c in _sample_columns(sample_path).values() for v in c]
    corpus += ["", "\n", "a\n\nb\n", "Les \x9cuvres", "Ã©tÃ©\nÃ©tÃ©", "x" * 10 + "\n"]
    for text in corpus:
        assert fix_mojibake(text) == ftfy.fix_text(text, ftfy_config()), text[:80]


def test_repair_lossy_finds_the_same_tokens() -> None:
    rng = random.Random(11)
    atoms = [
        "¿",
        "¿¿",
        "â¿¿",
        "l",
        "'",
        "encre",
        " ",
        "_",
        "1",
        "é",
        "ﬁ",
        "²",
        "٣",
        "-",
        "R",
        "SISTANT",
        "\u0301",
        "œ",
        "qu",
        "aujourd",
        "hui",
        ".",
        "\n",
        "ǅ",
        "〇",
        "c",
    ]
    for _ in range(5000):
        text = "".join(rng.choices(atoms, k=rng.randint(0, 16)))
        assert lossy.repair_lossy(text) == _plain_repair_lossy(text), text
