"""Caption processing shared by the downloader (at download) and the trainer (re-shaping at load).

    process_caption("  A red car.  It is parked\\n near a tree. The sky is blue. ", sentences=2)
    # 'A red car. It is parked near a tree.'

RELAION-POP's LLaVA captions are paragraphs; the original model trained on their first two
sentences. The raw caption is always kept in each sample's json, so another cut can be made
later without downloading again.

A caption is cut to MAX_CAPTION_CHARS characters when it is downloaded (`cap_caption`): a URL
list may hold a megabyte of text in one cell, and each sample stores its caption twice (the
processed .txt and the raw one in the .json). The sample's json says how long it was
(`caption_chars`), and the downloader counts the cuts in its summary line.
"""

from __future__ import annotations

import re
import unicodedata

# Caption columns tried in order when none is named, by `streamcap enqueue` and `streamcap
# tokenizer build` alike: RELAION-POP's (the original model trained on LLaVA's), then the names
# other URL lists commonly use.
CAPTION_COLUMNS = ("llava_caption", "cogvlm_caption", "alt_txt", "caption", "text")

# Longer than any real caption (LLaVA's paragraphs run to ~1,500 characters), short enough that
# a runaway cell costs kilobytes per sample, not megabytes.
MAX_CAPTION_CHARS = 4000

_WHITESPACE = re.compile(r"\s+")
# A sentence ends at . ! or ? (optionally followed by closing quotes/brackets) and whitespace.
_SENTENCE_END = re.compile(r"(?<=[.!?])([\"'”’)\]]*)\s+")
# Abbreviations whose period does not end a sentence.
_ABBREVIATIONS = frozenset("mr mrs ms dr prof st jr sr vs etc e.g i.e approx no fig inc ltd co mt ft".split())


def normalize_whitespace(text: str) -> str:
    """NFC-normalise, drop control characters, collapse every whitespace run to one space."""
    text = unicodedata.normalize("NFC", text)
    text = "".join(ch if ch.isprintable() or ch.isspace() else " " for ch in text)
    return _WHITESPACE.sub(" ", text).strip()


def split_sentences(text: str) -> list[str]:
    """Sentences of already normalised text; abbreviations like 'Dr.' or 'e.g.' don't split."""
    pieces, current, last = [], "", 0
    for match in _SENTENCE_END.finditer(text):
        current += text[last : match.start()]
        last_word = current.rsplit(" ", 1)[-1].rstrip(".!?").lower()
        if last_word in _ABBREVIATIONS or (len(last_word) == 1 and last_word.isalpha()):
            current += text[match.start() : match.end()]  # not an end: keep the space
        else:
            pieces.append((current + match.group(1)).strip())
            current = ""
        last = match.end()
    tail = (current + text[last:]).strip()
    if tail:
        pieces.append(tail)
    return [p for p in pieces if p]


def cap_caption(raw: str) -> tuple[str, int]:
    """(`raw` cut to MAX_CAPTION_CHARS characters, its length before when it was cut, else 0)."""
    if len(raw) <= MAX_CAPTION_CHARS:
        return raw, 0
    return raw[:MAX_CAPTION_CHARS], len(raw)


def process_caption(raw: str | None, sentences: int = 2) -> str:
    """Whitespace-normalised caption cut to its first `sentences` sentences (0 keeps all)."""
    text = normalize_whitespace(raw or "")
    if sentences <= 0 or not text:
        return text
    return " ".join(split_sentences(text)[:sentences])
