"""Caption normalisation as the COCO caption evaluation does it, in Python.

The COCO evaluation (pycocoevalcap) pipes every caption through Stanford CoreNLP 3.4.1's
`PTBTokenizer -preserveLines -lowerCase` (Java) and then drops the tokens in `PUNCTUATION`.
`ptb_tokenize` reproduces that for English captions without Java:

    >>> ptb_tokenize("A man's dog, running (fast) in the park.")
    ['a', 'man', "'s", 'dog', 'running', '-lrb-', 'fast', '-rrb-', 'in', 'the', 'park']
    >>> ptb_tokenize("He can't see the U.S. flag... isn't it?")
    ['he', 'ca', "n't", 'see', 'the', 'u.s.', 'flag', 'is', "n't", 'it']

Quirks kept on purpose, because the reference numbers have them: brackets become `-lrb-` &c.
and survive (the COCO list removes only the upper-case forms), clitics split off (`'s`,
`n't`, `gon na`), known abbreviations and acronyms keep their period, `!!` survives.
The tokenizer is a small longest-match lexer, like the JFlex lexer it imitates; the test
`tests/unit/test_metrics_ptb.py` compares it with the Java original on a few hundred captions.
Not covered (never seen in captions): SGML with attributes, phone numbers, smileys.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Callable, Iterator

# What the COCO evaluation removes after tokenizing (pycocoevalcap's PUNCTUATIONS).
PUNCTUATION = frozenset(
    ["''", "'", "``", "`", "-LRB-", "-RRB-", "-LCB-", "-RCB-", ".", "?", "!", ",", ":", "-", "--", "...", ";"]
)

_APOS = "'\u2019\u0092\u00b4"  # straight, right curly, CP1252 right quote, acute accent
_A = f"[{_APOS}]"
_L = r"[^\W\d_]"  # a letter
_AN = r"[^\W_]"  # a letter or digit
_NUM = r"\d+(?:[.,:]\d+)*|\d*(?:[.,]\d+)+"
# One piece of a hyphenated word: a decimal number (not glued to letters) or letters and digits.
_PIECE = f"(?:[dlno]{_A}{_AN})?(?:\\d+(?:[.,:]\\d+)+(?![^\\W_])|{_AN}+)"

# Abbreviations that keep their period (matched without regard to case) ...
_ABBREVIATIONS = frozenset(
    "mr mrs ms dr drs st jr sr prof gen capt lt col sgt rev sen rep gov pres mt ft ave rd blvd co cos "
    "inc ltd corp vs etc jan feb mar apr jun jul aug sep sept oct nov dec mon tue tues wed thu thurs fri "
    "al ala ariz calif colo conn fla ga ind kan kans ky md mich minn mo mont neb nev okla penn tenn va vt "
    "wis wisc wyo bros esq cos assn univ intl est ext sq tel seq bldg dept cf adm maj cpl pvt hon messrs "
    "ste bancorp plc ph.d".split()
)
# ... those that do only with a capital first letter (they are also common words) ...
_CAPITAL_ABBREVIATIONS = frozenset("ill mass miss ore pa tex wash la ark del".split())
# ... and those that do only in front of a number ("No. 5", "fig. 3").
_NUMBER_ABBREVIATIONS = frozenset("no nos fig figs pp art prop op ca".split())

# Words that are split into two tokens: (pattern, characters in the second token).
_ASSIMILATIONS = {"cannot": 3, "gonna": 2, "gotta": 2, "wanna": 2, "lemme": 2, "gimme": 2}

_BRACKETS = {"(": "-LRB-", ")": "-RRB-", "[": "-LSB-", "]": "-RSB-", "{": "-LCB-", "}": "-RCB-"}
_QUOTES = {
    '"': "''",
    "\u201c": "``",
    "\u201d": "''",
    "\u00ab": "``",
    "\u00bb": "''",
    "\u2018": "`",
    "\u2019": "'",
    "\u2039": "`",
    "\u203a": "'",
    "`": "`",
    "'": "'",
}
_CURRENCY = {"\u20ac": "$", "\u00a3": "#"}
# Characters the Java lexer drops with a warning (besides emoji and control characters).
_UNTOKENIZABLE = frozenset("\u2010\u2011\u2012\u20b9")
_FRACTIONS = {"\u00bc": "1/4", "\u00bd": "1/2", "\u00be": "3/4"}

Lexeme = Callable[[str, "re.Match[str]"], list[str]]


def _first(word: str, m: re.Match[str]) -> list[str]:
    return [m.group(0)]


def _as(token: str) -> Lexeme:
    return lambda line, m: [token]


def _word(line: str, m: re.Match[str]) -> list[str]:
    """A word, with `n't` split off ("isn't" -> "is" "n't"); other clitics lex on their own."""
    word = m.group(0)
    rest = line[m.end() :]
    if word[-1:] in "nN" and len(word) > 1 and re.match(f"{_A}[tT](?!{_L})", rest):
        return [word[:-1], word[-1] + "'" + rest[1]]  # kept in the original case, lowered later
    return [word]


def _abbreviation(line: str, m: re.Match[str]) -> list[str]:
    """`word.`: the period stays on known abbreviations and acronyms, else is its own token."""
    word = m.group(0)[:-1]
    lower = word.lower()
    keeps = (
        lower in _ABBREVIATIONS
        or (lower in _CAPITAL_ABBREVIATIONS and word[0].isupper())
        or (lower in _NUMBER_ABBREVIATIONS and re.match(r"\s+\d", line[m.end() :]) is not None)
        or re.fullmatch(f"{_L}(?:\\.{_L})*", word) is not None  # "a.", "u.s.", "p.m."
    )
    if keeps:
        return [word + "."]
    return (_split_assimilation(word) if lower in _ASSIMILATIONS else [word]) + ["."]


def _assimilation(line: str, m: re.Match[str]) -> list[str]:
    return _split_assimilation(m.group(0))


def _split_assimilation(word: str) -> list[str]:
    cut = len(word) - _ASSIMILATIONS[word.lower()]
    return [word[:cut], word[cut:]]


def _clitic(line: str, m: re.Match[str]) -> list[str]:
    return ["'" + m.group(0)[1:]]


def _entity(line: str, m: re.Match[str]) -> list[str]:
    return [{"&amp;": "&", "&lt;": "<", "&gt;": ">", "&quot;": "''", "&apos;": "'"}[m.group(0)]]


def _negation(line: str, m: re.Match[str]) -> list[str]:
    text = m.group(0)
    return [text[0] + "'" + text[2]]


def _fraction(line: str, m: re.Match[str]) -> list[str]:
    return [re.sub(r"\s", "\u00a0", m.group(0))]


# Token patterns. At each position the longest match wins; on a tie, the earlier pattern.
_RULES: list[tuple[re.Pattern[str], Lexeme]] = [
    (re.compile(r"(?:https?|ftp)://[^\s<>\"]*[^\s<>\"'.,;:!?)\]}-]"), _first),
    (re.compile(r"[A-Za-z0-9][A-Za-z0-9._%+-]*@[A-Za-z0-9][A-Za-z0-9.-]*[A-Za-z0-9]"), _first),
    (re.compile(r"@[A-Za-z_][A-Za-z_0-9]*|#" + _L + r"[^\W]*|(?i:c\+\+|[cf]#)"), _first),
    (re.compile(r"&(?:amp|lt|gt|quot|apos);"), _entity),
    (re.compile(r"</?[A-Za-z][^<>\s]*>"), _first),
    (re.compile(f"(?i:cannot|gonna|gotta|wanna|lemme|gimme)(?![^\\W\\d_]|{_A})"), _assimilation),
    (re.compile(f"{_A}t(?=(?i:is|was)(?!{_L}))", re.I), _clitic),
    (re.compile(r"(?:\d{1,4}[- \u00a0])?\d{1,4}/\d{1,4}"), _fraction),
    (re.compile(r"\d{1,2}[-/]\d{1,2}[-/]\d{2,4}|\d{4}[-/]\d{1,2}[-/]\d{1,2}"), _first),
    (re.compile(f"[-+]?(?:{_NUM})"), _first),
    (re.compile(f"{_AN}+(?:-{_L}+){{0,2}}(?:/{_AN}+(?:-{_L}+){{0,2}}){{1,2}}"), _first),  # "he/she"
    (re.compile(r"[A-Z]+(?:&[A-Z]+)+"), _first),  # "AT&T" (capitals only, as in the original)
    (re.compile(f"{_L}[^\\W_]*(?:[.!?]{_L}[^\\W_]*)*"), _word),
    # hyphenated or underscored words and numbers: "black-and-white", "1.5-inch", "o'neil-smith"
    (re.compile(f"{_PIECE}(?:[-_]{_PIECE})*", re.I), _first),
    (re.compile(f"{_AN}(?:{_AN}|[.,])*(?:[-_]{_PIECE})+", re.I), _first),  # "u.s.a.-made"
    (re.compile(f"{_L}(?:\\.{_L})*\\.|{_L}+(?:\\.{_L}+)?\\.(?![^\\W_])"), _abbreviation),
    # apostrophes inside words: "o'neil", "l'oreal", "y'", "'em", "'80s", "rock 'n' roll"
    (
        re.compile(
            f"[dlno]{_A}{_L}{{2,}}|[jy]{_A}|{_L}+[aeiouy]{_A}[aeiou]{_L}*|{_A}(?:em|till?|cause)(?!{_L})|{_A}n{_A}"
            f"|{_A}[1-9]0s|(?:somethin|dunkin|ol){_A}",
            re.I,
        ),
        _first,
    ),
    (re.compile(f"{_A}(?:s|m|d|re|ve|ll)(?!{_L})", re.I), _clitic),
    (re.compile(f"n{_A}t(?!{_L})", re.I), _negation),  # a lone "n't", as in "is n't"
    (re.compile(r"\.\.\.+|\u2026"), _as("...")),
    (re.compile(r"--+|[\u2013\u2014\u2015]"), _as("--")),
    (re.compile(r"``|''"), _first),
    (re.compile(r"[?!]+"), _first),
]


def _single(ch: str) -> list[str]:
    """A character no rule matched: its PTB form, or nothing for untokenizable ones."""
    if ch in _BRACKETS:
        return [_BRACKETS[ch]]
    if ch in _QUOTES:
        return [_QUOTES[ch]]
    if ch in _CURRENCY:
        return [_CURRENCY[ch]]
    if ch in _UNTOKENIZABLE:
        return []
    if ord(ch) > 0xFFFF or ord(ch) < 0x20 or 0x7F <= ord(ch) < 0xA0:  # emoji, control characters
        return []
    return [ch]


def _lex(line: str) -> Iterator[str]:
    pos, end = 0, len(line)
    while pos < end:
        ch = line[pos]
        if ch.isspace() or ch in "\u200b\ufeff":
            pos += 1
            continue
        if not ch.isascii() and unicodedata.category(ch) == "No":  # "½", "²": one token each
            yield _FRACTIONS.get(ch, ch)
            pos += 1
            continue
        best, best_len = None, 0
        for pattern, lexeme in _RULES:
            m = pattern.match(line, pos)
            if m and m.end() - pos > best_len:
                best, best_len = (m, lexeme), m.end() - pos
        if best is None:
            yield from _single(line[pos])
            pos += 1
            continue
        m, lexeme = best
        tokens = lexeme(line, m)
        yield from tokens
        pos += len("".join(tokens)) if lexeme is _word else best_len


def _prepare(caption: str) -> str:
    """Newlines as spaces; vulgar fractions and super/subscript digits stand apart ("3½" -> "3 1/2")."""
    caption = caption.replace("\n", " ")
    if caption.isascii():
        return caption
    return "".join(f" {ch} " if unicodedata.category(ch) == "No" else ch for ch in caption)


def ptb_tokenize(caption: str) -> list[str]:
    """`caption` as the COCO evaluation sees it: PTB tokens, lower case, punctuation removed."""
    tokens = (t.lower() for t in _lex(_prepare(caption)))
    return [t for t in tokens if t not in PUNCTUATION]


def normalize(caption: str) -> str:
    """`ptb_tokenize` joined with single spaces, the string form pycocoevalcap's scorers take."""
    return " ".join(ptb_tokenize(caption))
