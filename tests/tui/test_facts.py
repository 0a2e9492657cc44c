"""A step's named outputs and checks have their own lines in the run screen, whole at the pane's width; the
step list is as wide as its titles need, within the room the terminal has."""

from __future__ import annotations

from typing import Any

from textual.widgets import Static

from runbook.loader import load_runbook
from runbook.redact import MASK, Redactor
from runbook.tui.widgets import abbreviate, facts_text, steps_width
from tests.conftest import ROOT
from tests.tui.conftest import until, waiting_on

PITR_OUTPUTS = {
    "recovery_point": "2026-12-07T00:41:21.701182+00:00",
    "timeline": 2,
    "replay_s": 1.1,
    "data_directory": "/var/lib/postgresql/15/pitr-20261207T004124Z-restored-before-the-drop",
    "lsn": ["0/3044F90", "0.09"],
    "backup_id": "20261207T004117Z",
}
PITR_CHECKS = [
    {"name": "base backup chosen", "status": "ok", "hint": "20261207T004117Z, readable"},
    {"name": "tablespaces created after the backup", "status": "warning", "hint": "could not ask the cluster"},
    {"name": "recovery ended", "status": "ok", "hint": "promoted on timeline 2"},
]


def test_facts_keep_each_name_with_its_value_within_the_width() -> None:
    text = facts_text("9 pitr", PITR_OUTPUTS, PITR_CHECKS, 46, Redactor([]).redact)
    lines = text.plain.split("\n")
    # a pair longer than the line (47 columns here) keeps its name, and its value starts the next line, whole
    assert lines[:2] == ["9 pitr: recovery_point", "  2026-12-07T00:41:21.701182+00:00"]
    # only what is longer than a whole line by itself is wider: the screen wraps it (Static), nothing cuts it
    assert [ln for ln in lines if len(ln) > 46] == ["  " + PITR_OUTPUTS["data_directory"],
                                                    "! tablespaces created after the backup (warning)"]
    for pair in ("timeline 2", "replay_s 1.1", 'lsn ["0/3044F90", "0.09"]', "backup_id 20261207T004117Z",
                 "✓ base backup chosen", "! tablespaces created after the backup (warning)", "✓ recovery ended"):
        assert sum(pair in ln for ln in lines) == 1, f"{pair!r} is not whole on one line: {lines}"
    # at 110 columns the same facts take four lines, the recovery point with its name
    wide = facts_text("9 pitr", PITR_OUTPUTS, PITR_CHECKS, 110, Redactor([]).redact).plain.split("\n")
    assert len(wide) == 4 and wide[0].startswith("9 pitr: recovery_point 2026-12-07T00:41:21.701182+00:00 · ")
    assert all(len(ln) <= 110 for ln in wide)


def test_short_of_rows_the_checks_that_passed_are_counted_and_the_others_still_named() -> None:
    text = facts_text("9 pitr", {"timeline": 2}, PITR_CHECKS, 46, Redactor([]).redact, compact=True)
    assert text.plain.split("\n") == ["9 pitr: timeline 2 · ✓ 2 checks ok",
                                       "! tablespaces created after the backup (warning)"]


def test_facts_use_a_wide_pane_and_mask_secrets() -> None:
    outputs = {"dsn": "postgresql://app:Sup3rSecretPw@db/app", "restored_db": "assetflow_prod"}
    text = facts_text("from 3 restore", outputs, [], 160, Redactor(["Sup3rSecretPw"]).redact)
    assert text.plain == f"from 3 restore: dsn postgresql://app:{MASK}@db/app · restored_db assetflow_prod"


def test_the_step_list_widens_with_the_terminal_until_the_sample_titles_are_whole() -> None:
    titles = [s.display_title for s in load_runbook(ROOT / "runbook.yaml").steps]
    longest = max(len(t) for t in titles)
    wide = steps_width(160, longest) - 14  # the title's columns in the list (icon, number, mark, duration, border)
    assert [abbreviate(t, wide) for t in titles] == titles
    assert steps_width(80, longest) == 30  # at 80 columns the panel keeps 50
    assert steps_width(120, longest) == 48
    narrow = steps_width(80, longest) - 14
    for t in titles:  # at 80 columns: shortened in the middle, the end kept
        short = abbreviate(t, narrow)
        assert len(short) <= narrow and short.endswith(t.split(" ")[-1][-4:])
    assert steps_width(160, 17) == 31  # a runbook of short titles leaves the room to the panel


FACTS_RUNBOOK = """
    version: 1
    name: Facts
    steps:
      - id: notify-start
        title: Post the outage in the incident channel
        action: notify
        with: {text: "AssetFlow database outage: recovery started."}
        confirm: none
      - id: flood
        title: A step with a lot of output
        run: "seq 1 400"
      - {id: tell, title: Tell the team, manual: [Post the recovery point in the channel]}
"""


async def test_an_actions_outputs_and_checks_stay_in_sight_while_the_next_step_floods_the_log(make_app: Any) -> None:
    app, engine = make_app(FACTS_RUNBOOK)
    async with app.run_test(size=(80, 24)) as pilot:
        await until(pilot, waiting_on(app, "flood", "confirm"))
        screen = app.screen
        box = screen.query_one("#facts", Static)

        def shown() -> str:
            return str(box.render())

        await until(pilot, lambda: "sent false" in shown())
        assert shown().startswith("from 1 notify-start: sent false")
        assert "! message posted (warning)" in shown()
        await pilot.press("r")
        await until(pilot, waiting_on(app, "tell", "ack"))
        assert "\n".join(screen._lines).count("\n") > 400  # the log had them all
        await pilot.pause(0.2)
        # the log scrolled 400 lines; the facts are where they were, whole, inside the panel
        assert "sent false" in shown() and box.display
        panel = screen.query_one("#panel").region
        assert panel.contains_region(box.region), (panel, box.region)
        assert box.region.height == len(shown().split("\n")) == 2  # whole: as many rows as lines, none scrolled


PITR_RUNBOOK = """
    version: 1
    name: Facts
    targets: {rto: 2h, rpo: 5m}
    steps:
      - id: pitr
        title: Point-in-time recovery into a new data directory
        action: pitr
        with: {config: repository.yaml, target_time: "2026-11-25T02:59:00+00:00", pgdata: /var/lib/postgresql/15/pitr}
      - id: recovery-point
        title: Tell the team the recovery point
        action: notify
        with: {text: "recovered to {{ steps.pitr.recovery_point }}"}
        confirm: none
      - {id: tell, title: Tell the team, manual: [Post the recovery point in the channel]}
"""


async def test_the_recovery_point_stays_pinned_above_a_later_steps_facts(make_app: Any) -> None:
    point = "2026-11-25T02:41:07.512306+00:00"
    app, engine = make_app(PITR_RUNBOOK)
    async with app.run_test(size=(80, 24)) as pilot:
        await until(pilot, waiting_on(app, "pitr", "confirm"))
        box = app.screen.query_one("#facts", Static)
        assert not box.display  # nothing reported yet: no empty box
        await engine.skip("pitr", "recovered by hand")
        await until(pilot, waiting_on(app, "recovery-point", "value"))
        await engine.provide_value("recovery-point", point)
        await until(pilot, waiting_on(app, "tell", "ack"))
        await until(pilot, lambda: "sent false" in str(box.render()))
        lines = str(box.render()).split("\n")
        # the run's recovery point first, whole on one line of the 46-column panel, then the notify step's facts
        assert lines == [f"recovered to {point}", "from 2 recovery-point: sent false", "! message posted (warning)"]
        assert box.region.height == 3 and box.region.width >= len(lines[0])
