"""HTML to text and entity decoding, shared by the fast engine and the test oracle
(`tests/support/oracle.py`).

The tag patterns are for polars (Rust's `regex`: no look-around, no
back-references; the end of text is written with a z escape).
"""

from __future__ import annotations

import html
import html.entities
import re
from functools import lru_cache

# Tags whose boundaries separate words: they become a space, so
# `<li>a</li><li>b</li>` reads "a b" and never "ab".
BLOCK_TAGS = [
    "address",
    "article",
    "aside",
    "blockquote",
    "br",
    "dd",
    "div",
    "dl",
    "dt",
    "fieldset",
    "figcaption",
    "figure",
    "footer",
    "form",
    "h1",
    "h2",
    "h3",
    "h4",
    "h5",
    "h6",
    "header",
    "hr",
    "li",
    "main",
    "nav",
    "ol",
    "p",
    "pre",
    "section",
    "table",
    "tbody",
    "td",
    "tfoot",
    "th",
    "thead",
    "tr",
    "ul",
    "body",
    "html",
    "head",
    "title",
    "option",
]
# Elements whose content is not text at all.
DROPPED_ELEMENTS = ("script", "style")

# An element dropped with its content; an unclosed one runs to the end (as in a browser).
DROP_PATTERNS = [rf"(?is)<{name}\b.*?(?:</{name}\s*>|\z)" for name in DROPPED_ELEMENTS] + [
    r"(?s)<!--.*?(?:-->|\z)",
    r"(?s)<!\[CDATA\[.*?(?:\]\]>|\z)",
    r"<![A-Za-z][^>]*>",  # <!DOCTYPE ...>
    r"<\?[^>]*>",  # <?xml ...?>
]
# What a value must hold for each of DROP_PATTERNS to match (the lazy `.*?` up to
# the end always matches once it starts): a pass is skipped when no value holds it.
DROP_GATES = [rf"(?i)<{name}" for name in DROPPED_ELEMENTS] + [
    "<!--",
    r"<!\[CDATA\[",
    "<![A-Za-z]",
    r"<\?",
]
BLOCK_PATTERN = r"(?i)</?(?:" + "|".join(BLOCK_TAGS) + r")\b[^>]*>"
# The same pass with an ASCII `\b`, which Rust's regex runs on its fast engine (a
# Unicode one sends it to a slower one on non-ASCII text). The two differ only at a
# non-ASCII character after a tag name, or at a name ending in a non-ASCII letter
# that `(?i)` matches (U+017F for 's', U+212A for 'k'): values holding either
# (BLOCK_NEEDS_UNICODE_PATTERN) get BLOCK_PATTERN.
BLOCK_ASCII_PATTERN = r"(?i)</?(?:" + "|".join(BLOCK_TAGS) + r")(?-u:\b)[^>]*>"
BLOCK_NEEDS_UNICODE_PATTERN = r"</?(?i:" + "|".join(BLOCK_TAGS) + r")[^\x00-\x7f]|[\x{17f}\x{212a}]"
# Any other tag: a '<' followed by a letter (or '/' and a letter), up to '>'.
# "a < b" and "<10 cm>" are text, not tags.
TAG_PATTERN = r"</?[A-Za-z][^>]*>"
HAS_TAG_PATTERN = r"<(?:[A-Za-z]|/[A-Za-z]|!|\?)"

# Entities decoded after the first pass: only complete ones (with ';'), so that
# "AT&amp;T &notes" does not turn into "AT&T ¬es" on a second pass.
_STRICT_ENTITY = re.compile(r"&(?:#[0-9]{1,7}|#[xX][0-9a-fA-F]{1,6}|[A-Za-z][A-Za-z0-9]{1,31});")
# "&amp; amp;" in the data: an escaped ampersand whose "amp;" was split by a space.
_SPLIT_AMP = re.compile(r"&\s+amp;")
_MAX_PASSES = 3


def unescape_entities(text: str) -> str:
    """Decode entities, then the double-escaped ones (`&amp;eacute;` → `é`)."""
    return unescape_nested(html.unescape(text))


def unescape_nested(text: str) -> str:
    """Decode what a first pass left: `&eacute;` from `&amp;eacute;`, `&` from `& amp;`."""
    out = text
    for _ in range(_MAX_PASSES):
        again = _SPLIT_AMP.sub("&", out)
        again = _STRICT_ENTITY.sub(lambda m: html.unescape(m.group()), again)
        if again == out:
            break
        out = again
    return out


# What the vectorised decoder may leave for the exact Python path: an '&' that
# could still start an entity (legacy names without ';', other code points, &amp;x).
UNDECODED_PATTERN = "&[A-Za-z0-9#]"
SPLIT_AMP_PATTERN = r"&\s+amp;"
# Any complete entity the table could hold (they never overlap: each ends at its first ';').
ENTITY_TOKEN_PATTERN = "&#?[A-Za-z0-9]+;"
# What another decoding pass can change: a complete entity or a split '& amp;'.
MAY_DECODE_AGAIN_PATTERN = ENTITY_TOKEN_PATTERN + "|" + SPLIT_AMP_PATTERN


@lru_cache(maxsize=1)
def entity_table() -> tuple[list[str], list[str]]:
    """Complete entities (';'-terminated) and what `html.unescape` makes of each.

    Named HTML5 entities plus the numeric forms of Latin-1 and general punctuation:
    the entities product text uses. Anything else goes to the Python path.
    """
    keys = [f"&{name}" for name in html.entities.html5 if name.endswith(";")]
    keys += [f"&#{i};" for i in (*range(256), *range(0x2000, 0x2140))]
    keys += [f"&#x{i:x};" for i in range(256)]
    return keys, [html.unescape(k) for k in keys]


@lru_cache(maxsize=1)
def entity_lookup() -> dict[str, str]:
    """`entity_table` as a mapping, to pick the entities a chunk holds."""
    return dict(zip(*entity_table(), strict=True))
