import re

from hypothesis import given
from hypothesis import strategies as st

from raylm.pipelines.clean import normalize, quality_filter
from raylm.pipelines.config import CleanConfig, NormalizeConfig

GOOD = " ".join(f"word{i % 37} alpha beta gamma delta." for i in range(60))


def test_normalize_unicode_control_whitespace():
    raw = "Cafe\u0301\r\nline  \t\r\n\n\n\n\x07next\u200b line\ufeff  "
    assert normalize(raw, NormalizeConfig()) == "Café\nline\n\nnext line"


@given(st.lists(st.sampled_from([" ", "\t", "\n", "\r", "\r\n", "a", "b ", "\u3000", "\x07", "\u200b"]) | st.characters(), max_size=30).map("".join))
def test_whitespace_rules_as_regexes(text):
    """The whitespace rules, whatever str methods implement them: CRLF/CR -> LF, blanks before a newline
    dropped, 3+ newlines -> 2, ends stripped."""
    cfg = NormalizeConfig(unicode=None, strip_control=False)
    want = re.sub(r"\n{3,}", "\n\n", re.sub(r"[ \t]+\n", "\n", re.sub(r"\r\n?", "\n", text))).strip()
    assert normalize(text, cfg) == want


def test_normalize_switchable():
    raw = "a\r\nb\x07"
    assert normalize(raw, NormalizeConfig(unicode=None, strip_control=False, whitespace=False)) == raw


def test_good_text_passes():
    assert quality_filter(GOOD, CleanConfig()) is None


def test_each_filter_names_itself():
    cfg = CleanConfig()
    assert quality_filter("short text", cfg) == "chars"
    assert quality_filter("x" * 300, cfg) == "words"
    assert quality_filter(" ".join(["a"] * 300), cfg) == "mean_word_length"
    assert quality_filter(" ".join(["supercalifragilistic"] * 60), cfg) == "mean_word_length"
    assert quality_filter(" ".join(["#tag word"] * 60), cfg) == "symbol_ratio"
    ell = "\n".join(f"this line {i} trails off..." if i % 2 else f"a complete line number {i} here" for i in range(60))
    assert quality_filter(ell, CleanConfig(symbol_ratio={"max": 1.0})) == "ellipsis_lines"
    dup = "\n".join(["the same line repeated here"] * 30 + [f"unique line {i} with words" for i in range(20)])
    assert quality_filter(dup, cfg) == "dup_lines"
    para = "\n\n".join(["one paragraph that repeats\nwith two lines"] * 10 + [f"fresh paragraph {i}\nanother line {i}" for i in range(10)])
    assert quality_filter(para, CleanConfig(dup_lines={"max": 1.0})) == "dup_paragraphs"


def test_filters_switch_off():
    cfg = CleanConfig(chars={"enabled": False}, words={"enabled": False}, mean_word_length={"enabled": False})
    assert quality_filter("tiny", cfg) is None
