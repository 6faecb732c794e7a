"""Tianchi normalisation, checked on examples worked out by hand."""

from __future__ import annotations

import pytest

from mtl.data.normalize import tianchi_normalize


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        # full-width punctuation, letters and digits become ASCII (NFKD compatibility mapping)
        ("你好，世界？！", "你好,世界?!"),
        ("（ＡＢＣ１２３）：；", "(abc123):;"),
        # accents: é = e + U+0301, the combining mark is dropped
        ("Café Übermensch naïve", "cafe ubermensch naive"),
        # kana dakuten / handakuten: が = か + U+3099, パ = ハ + U+309A
        ("がぎぐ パピプ", "かきく ハヒフ"),
        # half-width katakana become full-width (NFKD), its voiced mark is a combining one too
        ("ｶﾞ", "カ"),
        # case
        ("iPhone XS MAX", "iphone xs max"),
        # whitespace: runs of spaces, tabs, newlines, ideographic space collapse to one space and are stripped
        ("  a \t\n b\u3000\u3000c  ", "a b c"),
        ("\u3000全角\u3000空格\u3000", "全角 空格"),
        # the ellipsis is a compatibility character; curly quotes are not
        ("“好”…", "“好”..."),
        # Chinese characters themselves are untouched
        ("上课时学生手机响个不停", "上课时学生手机响个不停"),
        ("", ""),
    ],
)
def test_examples(raw: str, expected: str) -> None:
    assert tianchi_normalize(raw) == expected


def test_idempotent() -> None:
    text = "Ｔｈｅ　ＣＡＦÉ，が！  x"
    once = tianchi_normalize(text)
    assert tianchi_normalize(once) == once == "the cafe,か! x"
