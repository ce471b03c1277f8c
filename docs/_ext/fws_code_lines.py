"""
Code blocks whose long lines wrap with a hanging indent.

A long command in a code block either runs off the right edge of its box (where
scrollbars are hidden until used, it looks cut off) or, wrapped, reads as two commands.
This extension has Pygments put each source line in a ``span.fws-line``, which
``_static/fws.css`` lays out as one box per line with a hanging indent: a line too long
for the column continues, indented, beneath itself, and a new line starts at the margin.
What a reader copies is unchanged (the spans add no characters).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from pygments.formatters.html import HtmlFormatter
from sphinx.highlighting import PygmentsBridge


class LineFormatter(HtmlFormatter):  # type: ignore[type-arg]
    """Sphinx's HTML formatter, with each line of code in its own ``span.fws-line``."""

    def wrap(self, source: Iterator[tuple[int, str]]) -> Iterator[tuple[int, str]]:
        return super().wrap(self._lines(source))

    @staticmethod
    def _lines(source: Iterator[tuple[int, str]]) -> Iterator[tuple[int, str]]:
        for kind, line in source:
            if kind != 1:  # not a line of code (markup Pygments adds)
                yield kind, line
                continue
            body, newline = (line[:-1], "\n") if line.endswith("\n") else (line, "")
            yield kind, f'<span class="fws-line">{body}</span>{newline}'


def setup(app: Any) -> dict[str, Any]:
    PygmentsBridge.html_formatter = LineFormatter
    return {"parallel_read_safe": True, "parallel_write_safe": True}
