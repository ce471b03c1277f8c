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


def _cell(text: str) -> nodes.entry:
    entry = nodes.entry()
    entry += nodes.paragraph(text=text)
    return entry


def _literal_cell(text: str) -> nodes.entry:
    entry = nodes.entry()
    para = nodes.paragraph()
    para += nodes.literal(text=text)
    entry += para
    return entry


class FwsOptions(Directive):
    """``.. fws-options:: [module]`` with an optional ``:only: name, name`` list."""

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
        table = nodes.table()
        group = nodes.tgroup(cols=4)
        table += group
        for width in (30, 18, 12, 40):
            group += nodes.colspec(colwidth=width)
        head = nodes.thead()
        row = nodes.row()
        for title in ("option", "environment / config key", "default", "meaning"):
            row += _cell(title)
        head += row
        group += head
        body = nodes.tbody()
        for opt in options:
            row = nodes.row()
            row += _literal_cell(", ".join(opt.option_strings))
            row += _literal_cell(f"{opt.env_var} / \"{opt.name}\"")
            default = opt.default
            if isinstance(default, tuple):
                default = " ".join(default)
            row += _cell("" if default in (None, "", False, ()) else str(default))
            row += _cell(opt.help + ("" if opt.kind != "flag" else " (a switch: list it under "
                                     "\"flags\" in a config file)"))
            body += row
        group += body
        return [table]


def setup(app: Any) -> dict[str, Any]:
    app.add_directive("fws-options", FwsOptions)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
