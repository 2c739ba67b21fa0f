"""Repair of the Rakuten lossy '¿': a character lost upstream and replaced by '¿'.

A repair is made only when exactly one candidate gives French words; anything
else is left as it is and counted as remaining. Never guess.
"""

from __future__ import annotations

import gzip
import importlib.resources
import itertools
import json
import re
from collections.abc import Mapping
from functools import lru_cache

LOSSY = "¿"

# Words that elide before a vowel or a mute h (l'encre, qu'il, aujourd'hui).
ELIDABLE = frozenset(
    [
        "l",
        "d",
        "j",
        "m",
        "n",
        "s",
        "t",
        "c",
        "qu",
        "jusqu",
        "lorsqu",
        "puisqu",
        "quoiqu",
        "presqu",
        "quelqu",
        "aujourd",
    ]
)
# A lost two-byte letter (UTF-8 é, è, à... read back as '¿¿').
ACCENTED = "éèêëàâäîïôöùûüçÿ"
_VOWEL_OR_H = frozenset("aeiouyhéèêëàâäîïôöùûüœæ")
# A token: a maximal run of word characters and '¿' holding at least one '¿' (the
# regular expression `(?<![\w¿])[\w¿]*¿[\w¿]*`); 'â¿¿' is a lost three-byte character
# (typically the typographic apostrophe U+2019 whose last two bytes were lost).
# Found from each '¿' outwards: scanning the whole text for word starts costs more.
_RUN_AFTER = re.compile(r"[\w¿]*")
_GAP = re.compile(r"â¿¿|¿¿|¿")
_MAX_COMBINATIONS = 512
# Several candidates are French words: the repair is still certain when one of
# them is this many times more frequent than all the others together
# ('¿¿ installer': 'à' is 770 times as frequent as the interjection 'ô').
DOMINANCE = 500

WordFrequencies = Mapping[str, int]


@lru_cache(maxsize=1)
def french_words() -> WordFrequencies:
    """French word frequencies shipped by pyspellchecker (œ is spelled 'oe' there).

    Read straight from the package's word list: the SpellChecker object around it
    would add its own copy to every worker process's memory.
    """
    resource = importlib.resources.files("spellchecker") / "resources" / "fr.json.gz"
    try:
        with resource.open("rb") as raw, gzip.open(raw, "rt", encoding="utf-8") as fh:
            return json.load(fh)
    except FileNotFoundError:  # a future layout of the package: ask its API
        from spellchecker import SpellChecker

        return dict(SpellChecker(language="fr", distance=1).word_frequency.dictionary)


def _candidates(gap: str) -> tuple[str, ...]:
    if gap == "¿":
        return ("'", "œ")
    if gap == "¿¿":
        return tuple(ACCENTED)
    return ("'",)


def _frequency(word: str, words: WordFrequencies) -> int:
    """How frequent `word` is as French (elisions allowed); 0 when it is not French."""
    lower = word.lower().replace("œ", "oe")
    if lower in words:
        return max(words[lower], 1)
    *prefixes, last = lower.split("'")
    if prefixes and all(p in ELIDABLE for p in prefixes) and last[:1] in _VOWEL_OR_H:
        return max(words.get(last, 0), 1 if last in words else 0)
    return 0


def _with_case(letter: str, before: str, after: str) -> str:
    """Upper-case the repaired letter inside an upper-case word (R¿¿SISTANT)."""
    if after[:1].isupper() and (not before or before[-1:].isupper()):
        return letter.upper()
    return letter


@lru_cache(maxsize=65_536)
def repair_token(token: str) -> str | None:
    """The one certain repair of `token`, or None when there is none or several.

    Cached: tokens repeat a lot (the same broken words across a catalogue) and
    trying every letter for every gap costs milliseconds on long ones.
    """
    words = french_words()
    gaps = list(_GAP.finditer(token))
    options = [_candidates(g.group()) for g in gaps]
    total = 1
    for o in options:
        total *= len(o)
    if not gaps or total > _MAX_COMBINATIONS:
        return None
    found: dict[str, int] = {}
    for combo in itertools.product(*options):
        parts: list[str] = []
        pos = 0
        for gap, letter in zip(gaps, combo, strict=True):
            parts.append(token[pos : gap.start()])
            parts.append(_with_case(letter, token[: gap.start()], token[gap.end() :]))
            pos = gap.end()
        parts.append(token[pos:])
        candidate = "".join(parts)
        frequency = _frequency(candidate, words)
        if frequency:
            found[candidate] = frequency
    if not found:
        return None
    best = max(found, key=found.__getitem__)
    others = sum(found.values()) - found[best]
    return best if others * DOMINANCE <= found[best] else None


def _is_word(char: str) -> bool:
    """A character of a token: what `[\\w¿]` matches in Python's `re`."""
    return char.isalnum() or char == "_" or char == LOSSY


def repair_lossy(text: str) -> tuple[str, int]:
    """Repair the certain '¿' of `text`; return the text and how many '¿' were repaired."""
    lossy = text.find(LOSSY)
    if lossy < 0:
        return text, 0
    repaired = 0
    pieces: list[str] = []
    done = 0  # text[:done] is in `pieces`
    while lossy >= 0:
        start = lossy
        while start > done and _is_word(text[start - 1]):
            start -= 1
        run = _RUN_AFTER.match(text, lossy)  # always matches: at least the '¿'
        end = run.end() if run else lossy + 1
        token = text[start:end]
        fixed = repair_token(token)
        if fixed is not None:
            pieces.append(text[done:start])
            pieces.append(fixed)
            repaired += token.count(LOSSY)
            done = end
        lossy = text.find(LOSSY, end)
    if not pieces:
        return text, 0
    pieces.append(text[done:])
    return "".join(pieces), repaired
