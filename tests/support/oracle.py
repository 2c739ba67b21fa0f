"""The reference cleaner: BeautifulSoup for HTML, plain Python for the rest.

Slow and obviously right: the tests hold the fast engine (`text.py`) to it.
Requires beautifulsoup4, a dev dependency: it lives under tests/ so that no image
ships it, and the engine never imports it.
"""

from __future__ import annotations

import re
import unicodedata

from bs4 import BeautifulSoup, Comment, NavigableString, Tag
from bs4.element import CData, Declaration, Doctype, ProcessingInstruction

from src.data.html import BLOCK_TAGS, DROPPED_ELEMENTS, unescape_entities, unescape_nested
from src.data.lossy import repair_lossy
from src.data.options import CleaningOptions
from src.data.text import CONTROL_PATTERN, WHITESPACE_PATTERN, fix_mojibake

_BLOCK = frozenset(BLOCK_TAGS)
_NOT_TEXT = (Comment, CData, Declaration, Doctype, ProcessingInstruction)
_CONTROL = re.compile(CONTROL_PATTERN)
_WHITESPACE = re.compile(WHITESPACE_PATTERN)


def _text_of(node: Tag, out: list[str]) -> None:
    for child in node.children:
        if isinstance(child, NavigableString):
            if not isinstance(child, _NOT_TEXT):
                out.append(str(child))
        elif isinstance(child, Tag):
            if child.name in DROPPED_ELEMENTS:
                continue
            block = child.name in _BLOCK
            if block:
                out.append(" ")
            _text_of(child, out)
            if block:
                out.append(" ")


def html_to_text(text: str) -> str:
    """Text of an HTML fragment, block elements separated by spaces."""
    out: list[str] = []
    _text_of(BeautifulSoup(text, "html.parser"), out)
    return "".join(out)


def reference_clean(text: str, options: CleaningOptions) -> str:
    """One value cleaned the slow, obvious way."""
    if options.strip_html:
        text = html_to_text(text)  # bs4 decodes entities once on the way
        if options.unescape_entities:
            text = unescape_nested(text)
    elif options.unescape_entities:
        text = unescape_entities(text)
    if options.fix_mojibake:
        text = fix_mojibake(text)
    if options.repair_lossy:
        text = repair_lossy(text)[0]
    text = unicodedata.normalize("NFC", text)
    text = _CONTROL.sub("", text)
    text = _WHITESPACE.sub(" ", text).strip(" ")
    if options.lowercase:
        text = text.lower()
    if len(text) < options.min_length:
        text = ""
    return text
