"""The trainers' page lists every registered fault with its texts, as the registry has them."""

from __future__ import annotations

from runbook.faults_doc import BEGIN, DOC, END, render
from steps.sandbox.faults import listing


def test_the_trainers_page_lists_every_fault_as_the_registry_has_it() -> None:
    text = DOC.read_text()
    section = text[text.index(BEGIN):text.index(END) + len(END)]
    assert section == render(), "docs/game-days.md is behind the faults: run `python -m runbook.faults_doc --write`"
    for f in listing(None):
        assert f"#### `{f.name}`: {f.title}" in section and f.story in section and f.handling in section
