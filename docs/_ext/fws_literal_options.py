"""
Command-line options read as what a user types, on every page.

Prose and generated text (the option tables' help, docstrings) name options bare:
"interface the --port listener binds". Rendered as plain text, ``--port`` is set in the
body font, and smartquotes would make its two hyphens an en dash (U+2013), which a
reader copying it gets wrong. This extension turns every ``--name`` (and ``--name=value``)
in plain text into literal text, before smartquotes runs, so the page shows what the
shell takes.

It also wraps every table in a ``div.table-wrapper`` (what the furo theme does itself),
so that a table wider than the page scrolls in its own box (``_static/fws.css``)
instead of being cut off or widening the page, whatever the theme.
"""

from __future__ import annotations

import re
from typing import Any

from docutils import nodes
from sphinx import addnodes
from sphinx.transforms import SphinxTransform
from sphinx.transforms.post_transforms import SphinxPostTransform

#: ``--name`` or ``--name=value`` standing alone (not inside a word, a path or a URL),
#: or a one-letter ``-f`` between spaces or punctuation.
OPTION = re.compile(r"(?<![\w/.:-])(?:--[A-Za-z][A-Za-z0-9_-]*(?:=[^\s,;()\[\]]*[^\s,;.:()\[\]])?"
                    r"|-[A-Za-z](?![\w-]))")

#: Where text is already literal, is markup, or is not shown as prose.
_SKIP = (nodes.literal, nodes.FixedTextElement, nodes.raw, nodes.comment, nodes.target,
         nodes.option_string, nodes.option_argument, nodes.substitution_definition,
         nodes.image, addnodes.desc_signature, addnodes.pending_xref)


def _skipped(node: nodes.Node) -> bool:
    parent = node.parent
    while parent is not None:
        if isinstance(parent, _SKIP):
            return True
        parent = parent.parent
    return False


def literal_options(document: nodes.document) -> None:
    """Replace each option name in the document's plain text with a literal node, and mark
    every literal that is an option name (``fws-option``: fws.css keeps it on one line)."""
    for literal in document.findall(nodes.literal):
        if OPTION.fullmatch(literal.astext()) and "fws-option" not in literal["classes"]:
            literal["classes"].append("fws-option")
    for text in list(document.findall(nodes.Text)):
        value = str(text)
        if "-" not in value or text.parent is None or _skipped(text):
            continue
        parts: list[nodes.Node] = []
        last = 0
        for match in OPTION.finditer(value):
            if match.start() > last:
                parts.append(nodes.Text(value[last:match.start()]))
            parts.append(nodes.literal(match.group(), match.group(), classes=["fws-option"]))
            last = match.end()
        if not parts:
            continue
        if last < len(value):
            parts.append(nodes.Text(value[last:]))
        parent = text.parent
        index = parent.index(text)
        parent.remove(text)
        for offset, part in enumerate(parts):
            parent.insert(index + offset, part)


class LiteralOptions(SphinxTransform):
    """Run on every read document, before ``SphinxSmartQuotes`` (priority 750)."""

    default_priority = 740

    def apply(self, **kwargs: Any) -> None:
        literal_options(self.document)


class WrapTables(SphinxPostTransform):
    """``div.table-wrapper`` around each table not already in one (furo's runs first)."""

    formats = ("html",)
    default_priority = 510

    def run(self, **kwargs: Any) -> None:
        for table in list(self.document.findall(nodes.table)):
            parent = table.parent
            if isinstance(parent, nodes.container) and "table-wrapper" in parent["classes"]:
                continue
            wrapper = nodes.container(classes=["table-wrapper"])
            parent.replace(table, wrapper)
            wrapper.append(table)


def setup(app: Any) -> dict[str, Any]:
    app.add_transform(LiteralOptions)
    app.add_post_transform(WrapTables)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
