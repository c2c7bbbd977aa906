"""Escaping of user strings (model names, task names, titles) for the Markdown and HTML we write.

A model folder or task may be named anything a file system allows: a backtick, a `<script>` or
a newline followed by `## Scores` in a name must show as text in a model card or report, never
become markup or a fake section. YAML front matter is written with `yaml.safe_dump`, which
quotes what needs quoting, so only Markdown and HTML need this module.
"""

from __future__ import annotations

import html
import re

_MD_SPECIAL = re.compile(r"([\\`*_{}\[\]()#+\-.!|~>])")


def md(text: object) -> str:
    """`text` as literal Markdown inline text: one line, HTML entities, Markdown punctuation escaped."""
    one_line = " ".join(str(text).split())
    return _MD_SPECIAL.sub(r"\\\1", html.escape(one_line, quote=False))


def html_text(text: object) -> str:
    """`text` as literal HTML text or attribute content."""
    return html.escape(str(text), quote=True)
