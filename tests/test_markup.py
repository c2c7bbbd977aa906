"""What `markup` makes of names a user or a received run folder chose: shown as text, never as
markup, terminal control or a look-alike of another name."""

from __future__ import annotations

import pytest

from evo_merge.markup import md, shell, visible


@pytest.mark.parametrize(("name", "shown"), [
    ("plain name\twith a tab", "plain name\twith a tab"),
    ("m\x1b]0;TITLE\x07", "m\\x1b]0;TITLE\\x07"),  # a terminal title escape
    ("x\n## Fake", "x\\x0a## Fake"),  # a line of its own
    ("abc\u202etxt.exe", "abc\\u202etxt.exe"),  # a bidi override reorders what follows
    ("a\u200bb", "a\\u200bb"),  # zero width space: would read as `ab`
    ("a\u200db", "a\\u200db"),  # zero width joiner
    ("a\u2060b", "a\\u2060b"),  # word joiner
    ("\ufeffname", "\\ufeffname"),  # a byte order mark
    ("soft\u00adhyphen", "soft\\xadhyphen"),  # shown only where a line breaks
    ("a\u180eb", "a\\u180eb"),  # Mongolian vowel separator
    ("tag\U000e0041", "tag\\U000e0041"),  # a tag character: invisible, outside the basic plane
    ("\u00e9t\u00e9 \u4e2d\u6587", "\u00e9t\u00e9 \u4e2d\u6587"),  # letters of any script stay
])
def test_visible_shows_what_would_hide_or_move(name, shown):
    assert visible(name) == shown


def test_md_is_one_line_of_literal_text():
    assert md("1. *x*\n## [a](b) <b>`c`</b>") == "1\\. \\*x\\* \\#\\# \\[a\\]\\(b\\) &lt;b&gt;\\`c\\`&lt;/b&gt;"
    assert md("a\u200bb") == "a\\\\u200bb"  # the backslash of `\u200b` escaped for Markdown


def test_shell_quotes_words_a_shell_would_split():
    assert shell("evo-merge", "status", "runs/my run", "it's") == "evo-merge status 'runs/my run' 'it'\"'\"'s'"
