"""Escaping of user strings (model names, task names, titles) for the Markdown and HTML we write,
and for the shell commands we print to be pasted.

A model folder or task may be named anything a file system allows: a backtick, a `<script>` or
a newline followed by `## Scores` in a name must show as text in a model card or report, never
become markup or a fake section. YAML front matter is written with `yaml.safe_dump`, which
quotes what needs quoting, so only Markdown and HTML need this module.
"""

from __future__ import annotations

import html
import re
import shlex

_MD_SPECIAL = re.compile(r"([\\`*_{}\[\]()#!|~<>])")
# control characters but the tab (a newline forges a line of output, ESC and the C1 codes drive a
# terminal), the bidirectional controls (they reorder what is shown: "Trojan Source") and the
# invisible ones (`models.1 named 'ab'` must not hide that the folder is `a\u200bb`): zero-width
# characters, the soft hyphen, the Mongolian vowel separator, the byte order mark and the tag characters
CONTROL = re.compile(r"[\x00-\x08\x0a-\x1f\x7f-\x9f\xad\u061c\u180e\u200b-\u200f\u202a-\u202e\u2060-\u2069\ufeff"
                     r"\U000e0000-\U000e007f]")
# what a campaign's own text may not hold (`config.check_printable`): the control characters but the tab
# and the newline (a path may hold a tab, a YAML block scalar ends in a newline, and campaigns with them
# ran before), so ESC, carriage return, BEL and the C1 codes; what is read back is shown by `visible`
TERMINAL_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]")
_LINE_START = re.compile(r"^(\d+)([.)])(?=\s|$)|^([-+=])")  # a list item or setext underline if it began a line


def md(text: object) -> str:
    """`text` as literal Markdown inline text: one line, HTML entities, Markdown punctuation escaped,
    and control characters shown as `\\xNN` (a terminal escape sequence in a model folder's name
    reached a card raw; audit 116)."""
    one_line = visible(" ".join(str(text).split()))
    escaped = _MD_SPECIAL.sub(r"\\\1", html.escape(one_line, quote=False))
    return _LINE_START.sub(lambda m: f"{m[1]}\\{m[2]}" if m[1] else f"\\{m[3]}", escaped)


def visible(text: str) -> str:
    """`text` with its control characters (the tab aside), bidirectional controls and invisible
    characters (`CONTROL`) shown as their escapes: text a run folder someone sent holds, printed,
    must not move the cursor, retitle or recolour the terminal, start a line of its own (audit 116),
    reorder what is shown around it (audit 119), or look like another name (audit 130)."""
    return CONTROL.sub(lambda m: _escape(ord(m[0])), text)


def _escape(code: int) -> str:
    """A character as Python writes its escape: `\\xNN`, `\\uNNNN` or `\\UNNNNNNNN`."""
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}" if code < 0x10000 else f"\\U{code:08x}"


def html_text(text: object) -> str:
    """`text` as literal HTML text or attribute content."""
    return html.escape(str(text), quote=True)


def shell(*words: object) -> str:
    """A command line to paste: each word quoted where a shell would split or expand it (a run
    folder `runs/my run` printed bare split into two arguments)."""
    return " ".join(shlex.quote(str(word)) for word in words)
