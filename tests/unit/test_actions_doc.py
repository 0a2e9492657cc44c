"""The runbook file reference lists every built-in action with its arguments and outputs, as the code has them."""

from __future__ import annotations

from runbook.actions_doc import BEGIN, DOC, END, render
from steps.registry import ACTIONS


def test_the_reference_lists_every_action_as_the_code_has_it() -> None:
    text = DOC.read_text()
    section = text[text.index(BEGIN):text.index(END) + len(END)]
    assert section == render(), "docs/runbook-file.md is behind the code: run `python -m runbook.actions_doc --write`"
    for name, spec in ACTIONS.items():
        row = next(line for line in section.splitlines() if line.startswith(f"| `{name}` |"))
        assert row.count(" | ") == 3, row  # four cells: no unescaped | inside one
        for field, info in spec.args_model().model_fields.items():
            key = info.alias or field  # `with:` uses the alias (e.g. `from`)
            assert f"`{key}` (" in row, (name, key)
        for output in spec.outputs:
            assert f"`{output}`:" in row, (name, output)
