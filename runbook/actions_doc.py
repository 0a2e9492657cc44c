"""The built-in actions' table of docs/runbook-file.md, made from the registry and the argument models.

    python -m runbook.actions_doc            # print the table
    python -m runbook.actions_doc --write    # replace it in docs/runbook-file.md (between the markers)

A test keeps the file and the code in step, so the reference never lags behind an argument.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

BEGIN = "<!-- actions table: made by `python -m runbook.actions_doc --write`; do not edit by hand -->"
END = "<!-- end of the actions table -->"
DOC = Path(__file__).resolve().parent.parent / "docs" / "runbook-file.md"


def _type(schema: dict[str, Any]) -> str:
    if "anyOf" in schema:
        kinds = [_type(s) for s in schema["anyOf"] if s.get("type") != "null"]
        return " or ".join(kinds) or "any"
    if "enum" in schema:
        return " | ".join(f"`{v}`" for v in schema["enum"])
    if "const" in schema:
        return f"`{schema['const']}`"
    kind = schema.get("type", "any")
    if kind == "array":
        return f"list of {_type(schema.get('items', {}))}"
    if kind == "object":
        return "mapping"
    return {"string": "text", "integer": "int", "number": "number", "boolean": "bool"}.get(kind, str(kind))


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def _args(model: Any) -> str:
    schema = model.model_json_schema()
    required = set(schema.get("required", []))
    parts = []
    for name, prop in schema.get("properties", {}).items():
        what = _type(prop)
        if name in required:
            what += ", required"
        elif "default" in prop and prop["default"] not in (None, "", [], {}):
            what += f", default `{json.dumps(prop['default'])}`"
        desc = prop.get("description", "")
        parts.append(f"`{name}` ({what})" + (f": {desc}" if desc else ""))
    return "<br>".join(_cell(p) for p in parts)


def render() -> str:
    from steps.registry import ACTIONS

    rows = ["| action | what it does | `with:` arguments | outputs |", "|---|---|---|---|"]
    for spec in ACTIONS.values():
        what = spec.summary + (f". {spec.details}" if spec.details else "")
        outputs = "<br>".join(f"`{k}`: {v}" for k, v in spec.outputs.items()) or "none"
        rows.append(f"| `{spec.name}` | {_cell(what)} | {_args(spec.args_model())} | {_cell(outputs)} |")
    return "\n".join([BEGIN, *rows, END])


def replace_section(text: str, begin: str, end: str, rendered: str) -> str:
    """`text` with its generated section (from the `begin` marker to the `end` one) replaced by `rendered`."""
    start, stop = text.index(begin), text.index(end) + len(end)
    return text[:start] + rendered + text[stop:]


def section_main(argv: list[str], doc: Path, render_section: Callable[[], str], begin: str, end: str) -> int:
    """The command line of a generated section: `--write` replaces it in `doc`, else it is printed."""
    if argv == ["--write"]:
        doc.write_text(replace_section(doc.read_text(), begin, end, render_section()))
        return 0
    print(render_section())
    return 0


def replace_in(text: str) -> str:
    return replace_section(text, BEGIN, END, render())


def main(argv: list[str]) -> int:
    return section_main(argv, DOC, render, BEGIN, END)


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
