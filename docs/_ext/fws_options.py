"""
A directive that renders fws's option table from the code (``fws.config`` and a
storage module's ``OPTIONS``), so the documentation cannot drift from ``-h``.

    .. fws-options::
    .. fws-options:: fws.storage_objects.redis
    .. fws-options::
       :only: max_message_size, max_frame_size
"""

from __future__ import annotations

import importlib
from typing import Any

from docutils import nodes
from docutils.parsers.rst import Directive, directives


def _literal(text: str) -> nodes.literal:
    return nodes.literal(text, text)


def _join(parent: nodes.Element, items: list[nodes.Node], sep: str = ", ") -> None:
    for i, item in enumerate(items):
        if i:
            parent += nodes.Text(sep)
        parent += item


class FwsOptions(Directive):
    """``.. fws-options:: [module]`` with an optional ``:only: name, name`` list.

    Each option is a definition-list entry rather than a table row: the option names are
    the term, and the meaning, with the environment variable, the config-file key and the
    default on a line of their own, is the definition. A four-column table of these was
    wider than any page (its "meaning" column was clipped off screen); a list reads at any
    width and keeps every option name whole and literal.
    """

    optional_arguments = 1
    option_spec = {"only": directives.unchanged}

    def run(self) -> list[Any]:
        from fws.config import CORE_OPTIONS

        options = (
            importlib.import_module(self.arguments[0]).OPTIONS if self.arguments else CORE_OPTIONS
        )
        if "only" in self.options:
            wanted = [n.strip() for n in self.options["only"].split(",") if n.strip()]
            by_name = {opt.name: opt for opt in options}
            missing = [n for n in wanted if n not in by_name]
            if missing:
                raise self.error(f"unknown options: {', '.join(missing)}")
            options = tuple(by_name[n] for n in wanted)
        document = self.state.document
        listing = nodes.definition_list(classes=["fws-options"])
        for opt in options:
            item = nodes.definition_list_item()
            term = nodes.term()
            anchor = nodes.make_id(f"option-{opt.name}")
            if anchor not in document.ids:  # the first listing of an option on a page
                term["ids"].append(anchor)
                document.ids[anchor] = term
            _join(term, [_literal(s) for s in opt.option_strings])
            item += term
            definition = nodes.definition()
            meaning = opt.help + ("" if opt.kind != "flag" else " (a switch: list it under "
                                  "\"flags\" in a config file)")
            definition += nodes.paragraph(text=meaning)
            where = nodes.paragraph(classes=["fws-option-keys"])
            where += nodes.Text("environment ")
            where += _literal(opt.env_var)
            where += nodes.Text(", config key ")
            where += _literal(f'"{opt.name}"')
            default = opt.default
            if isinstance(default, tuple):
                default = " ".join(default)
            if default not in (None, "", False, ()):
                where += nodes.Text(", default ")
                where += _literal(str(default))
            definition += where
            item += definition
            listing += item
        return [listing]


def setup(app: Any) -> dict[str, Any]:
    app.add_directive("fws-options", FwsOptions)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
