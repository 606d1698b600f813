"""Character classes of BERT's basic tokenization, as Hugging Face `tokenizers` applies them.

    >>> char_class("\\u200b"), char_class("\\xa0"), char_class("猫"), char_class("!"), char_class("a")
    ('drop', 'space', 'cjk', 'plain', 'plain')
    >>> is_punctuation("!"), is_punctuation("$"), is_nonspacing_mark("\\u0301")
    (True, True, True)

The rules are BERT's: control and format characters are dropped, every whitespace becomes a
space, CJK ideographs become words of their own, accents (non-spacing marks after NFD) are
stripped, and punctuation (ASCII punctuation plus Unicode category P*) splits words.

Python's `unicodedata` (Unicode 14 in Python 3.11) and the `tokenizers` wheel disagree on a
few hundred rare code points: `tokenizers` classifies punctuation, non-spacing marks and
format characters with older Unicode tables (the `unicode_categories` crate) and treats
unassigned code points (Cn) as ordinary. The `_HF_*` tables below list the code points whose
class differs, so that ids match `tokenizers` exactly; tests/unit/test_tokenizer_parity.py
sweeps every code point of Unicode planes 0 and 1 against `tokenizers` to keep them honest. What remains
differs only for characters newer than the running Python's Unicode database.
"""

from __future__ import annotations

import bisect
import unicodedata
from functools import cache

# Rust's char::is_whitespace (the White_Space property), which `tokenizers` uses.
WHITESPACE = frozenset(
    "\t\n\x0b\x0c\r \x85\xa0\u1680\u2000\u2001\u2002\u2003\u2004\u2005\u2006\u2007\u2008"
    "\u2009\u200a\u2028\u2029\u202f\u205f\u3000"
)

# Code points Python calls punctuation (P*) that `tokenizers`' older tables do not.
_HF_NOT_PUNCT = (
    (0x61D, 0x61D),
    (0x9FD, 0x9FD),
    (0xA76, 0xA76),
    (0xC77, 0xC77),
    (0xC84, 0xC84),
    (0x1B7D, 0x1B7E),
    (0x2E43, 0x2E4F),
    (0x2E52, 0x2E5D),
    (0x10EAD, 0x10EAD),
    (0x10F55, 0x10F59),
    (0x10F86, 0x10F89),
    (0x1144B, 0x1144F),
    (0x1145A, 0x1145B),
    (0x1145D, 0x1145D),
    (0x11660, 0x1166C),
    (0x116B9, 0x116B9),
    (0x1183B, 0x1183B),
    (0x11944, 0x11946),
    (0x119E2, 0x119E2),
    (0x11A3F, 0x11A46),
    (0x11A9A, 0x11A9C),
    (0x11A9E, 0x11AA2),
    (0x11C41, 0x11C45),
    (0x11C70, 0x11C71),
    (0x11EF7, 0x11EF8),
    (0x11FFF, 0x11FFF),
    (0x12FF1, 0x12FF2),
    (0x16E97, 0x16E9A),
    (0x16FE2, 0x16FE2),
    (0x1E95E, 0x1E95F),
)
# ... and the reverse: U+166D (now So) and U+111C9 (now Mn) were punctuation in older tables.
_HF_EXTRA_PUNCT = ((0x166D, 0x166D), (0x111C9, 0x111C9))
# Non-spacing marks (Mn) in Python's tables that `tokenizers` keeps instead of stripping.
_HF_NOT_MARK = (
    (0x7FD, 0x7FD),
    (0x898, 0x89F),
    (0x8CA, 0x8E1),
    (0x9FE, 0x9FE),
    (0xAFA, 0xAFF),
    (0xB55, 0xB55),
    (0xC04, 0xC04),
    (0xC3C, 0xC3C),
    (0xD00, 0xD00),
    (0xD3B, 0xD3C),
    (0xD81, 0xD81),
    (0xEBA, 0xEBA),
    (0x180F, 0x180F),
    (0x1885, 0x1886),
    (0x1ABF, 0x1ACE),
    (0x1DF6, 0x1DFB),
    (0xA82C, 0xA82C),
    (0xA8C5, 0xA8C5),
    (0xA8FF, 0xA8FF),
    (0xA9BD, 0xA9BD),
    (0x10D24, 0x10D27),
    (0x10EAB, 0x10EAC),
    (0x10F46, 0x10F50),
    (0x10F82, 0x10F85),
    (0x11070, 0x11070),
    (0x11073, 0x11074),
    (0x110C2, 0x110C2),
    (0x111C9, 0x111C9),
    (0x111CF, 0x111CF),
    (0x1123E, 0x1123E),
    (0x1133B, 0x1133B),
    (0x11438, 0x1143F),
    (0x11442, 0x11444),
    (0x11446, 0x11446),
    (0x1145E, 0x1145E),
    (0x1182F, 0x11837),
    (0x11839, 0x1183A),
    (0x1193B, 0x1193C),
    (0x1193E, 0x1193E),
    (0x11943, 0x11943),
    (0x119D4, 0x119D7),
    (0x119DA, 0x119DB),
    (0x119E0, 0x119E0),
    (0x11A01, 0x11A0A),
    (0x11A33, 0x11A38),
    (0x11A3B, 0x11A3E),
    (0x11A47, 0x11A47),
    (0x11A51, 0x11A56),
    (0x11A59, 0x11A5B),
    (0x11A8A, 0x11A96),
    (0x11A98, 0x11A99),
    (0x11C30, 0x11C36),
    (0x11C38, 0x11C3D),
    (0x11C3F, 0x11C3F),
    (0x11C92, 0x11CA7),
    (0x11CAA, 0x11CB0),
    (0x11CB2, 0x11CB3),
    (0x11CB5, 0x11CB6),
    (0x11D31, 0x11D36),
    (0x11D3A, 0x11D3A),
    (0x11D3C, 0x11D3D),
    (0x11D3F, 0x11D45),
    (0x11D47, 0x11D47),
    (0x11D90, 0x11D91),
    (0x11D95, 0x11D95),
    (0x11D97, 0x11D97),
    (0x11EF3, 0x11EF4),
    (0x16F4F, 0x16F4F),
    (0x16FE4, 0x16FE4),
    (0x1CF00, 0x1CF2D),
    (0x1CF30, 0x1CF46),
    (0x1E000, 0x1E006),
    (0x1E008, 0x1E018),
    (0x1E01B, 0x1E021),
    (0x1E023, 0x1E024),
    (0x1E026, 0x1E02A),
    (0x1E130, 0x1E136),
    (0x1E2AE, 0x1E2AE),
    (0x1E2EC, 0x1E2EF),
    (0x1E944, 0x1E94A),
)
# ... and the reverse: U+1734 was Mn before Unicode 14 made it Mc.
_HF_EXTRA_MARK = ((0x1734, 0x1734),)
# Format characters (Cf) in Python's tables that `tokenizers` keeps instead of dropping.
_HF_NOT_CONTROL = ((0x890, 0x891), (0x8E2, 0x8E2), (0x110CD, 0x110CD), (0x13430, 0x13438))

# Categories `tokenizers` drops in clean-text (C* except Cn; tab, newline, CR are whitespace).
_DROPPED_CATEGORIES = frozenset({"Cc", "Cf", "Co", "Cs"})


def _in_ranges(ranges: tuple[tuple[int, int], ...], cp: int) -> bool:
    i = bisect.bisect_right(ranges, (cp, 0x10FFFF)) - 1
    return i >= 0 and ranges[i][0] <= cp <= ranges[i][1]


def is_cjk(cp: int) -> bool:
    """CJK ideograph blocks BERT isolates (the ranges `tokenizers` uses, U+2B920 lower bound included)."""
    return (
        0x4E00 <= cp <= 0x9FFF
        or 0x3400 <= cp <= 0x4DBF
        or 0x20000 <= cp <= 0x2A6DF
        or 0x2A700 <= cp <= 0x2B73F
        or 0x2B740 <= cp <= 0x2B81F
        or 0x2B920 <= cp <= 0x2CEAF
        or 0xF900 <= cp <= 0xFAFF
        or 0x2F800 <= cp <= 0x2FA1F
    )


@cache
def char_class(ch: str) -> str:
    """How clean-text treats one raw character: 'drop', 'space', 'cjk' or 'plain'."""
    cp = ord(ch)
    if cp == 0 or cp == 0xFFFD:
        return "drop"
    if ch in "\t\n\r":
        return "space"
    if unicodedata.category(ch) in _DROPPED_CATEGORIES and not _in_ranges(_HF_NOT_CONTROL, cp):
        return "drop"
    if ch in WHITESPACE:
        return "space"
    return "cjk" if is_cjk(cp) else "plain"


@cache
def is_nonspacing_mark(ch: str) -> bool:
    """A character accent stripping removes after NFD."""
    cp = ord(ch)
    if _in_ranges(_HF_EXTRA_MARK, cp):
        return True
    return unicodedata.category(ch) == "Mn" and not _in_ranges(_HF_NOT_MARK, cp)


@cache
def is_punctuation(ch: str) -> bool:
    """BERT punctuation: all ASCII punctuation (so $ + < = > ^ ` | ~ too) and Unicode P*."""
    cp = ord(ch)
    if cp < 128:
        return (33 <= cp <= 47) or (58 <= cp <= 64) or (91 <= cp <= 96) or (123 <= cp <= 126)
    if _in_ranges(_HF_EXTRA_PUNCT, cp):
        return True
    return unicodedata.category(ch).startswith("P") and not _in_ranges(_HF_NOT_PUNCT, cp)
