import pytest

from streamcap.text.captions import normalize_whitespace, process_caption, split_sentences


def test_whitespace_and_control_characters():
    assert normalize_whitespace("  a\t b\n\nc\x00d\u00a0e  ") == "a b c d e"


@pytest.mark.parametrize(
    "sentences, expected",
    [
        (1, "A red car."),
        (2, "A red car. It is parked near a tree!"),
        (0, "A red car. It is parked near a tree! Is the sky blue? Yes"),
        (9, "A red car. It is parked near a tree! Is the sky blue? Yes"),
    ],
)
def test_cut_to_first_sentences(sentences, expected):
    raw = "  A red car.   It is parked\n near a tree! Is the sky blue? Yes"
    assert process_caption(raw, sentences) == expected


def test_abbreviations_and_decimals_do_not_split():
    text = "Dr. Smith holds a 3.5 kg fish, e.g. a trout. The water is calm."
    assert split_sentences(text) == ["Dr. Smith holds a 3.5 kg fish, e.g. a trout.", "The water is calm."]


def test_closing_quotes_stay_with_their_sentence():
    assert split_sentences('He said "stop." Then he left.') == ['He said "stop."', "Then he left."]


def test_empty_and_none():
    assert process_caption(None) == "" and process_caption("   ") == ""
