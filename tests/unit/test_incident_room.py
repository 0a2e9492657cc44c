"""The incident room's pure parts: the runbook keys (approve, approvals, every, reminders) and their errors, the
report's drivers and approvals (hand-over bands), the timed duties' arithmetic, the request checks."""

from __future__ import annotations

import textwrap
from datetime import timedelta

import pytest

from runbook.duties import duties
from runbook.errors import InvalidFile
from runbook.loader import load_runbook_text
from runbook.report import driver_spans, render_markdown
from runbook.report_html import render_html
from runbook.requests import Request, check_approval, command_hash
from tests.support.journals import T0, JournalBuilder, at


def _load(text: str):  # type: ignore[no-untyped-def]
    return load_runbook_text(textwrap.dedent(text).lstrip(), "rb.yaml")


def _problems(text: str) -> list[str]:
    with pytest.raises(InvalidFile) as info:
        _load(text)
    return [str(p) for p in info.value.problems]


def test_the_new_keys_load() -> None:
    rb = _load("""
        version: 1
        name: t
        approvals: {danger_in_live: false}
        reminders:
          - {id: update, every: 30m, title: Post the next stakeholder update}
        steps:
          - id: tell
            manual: [Post in the channel]
            every: 45m
          - id: drop
            run: dropdb x
            approve: {by: other}
    """)
    assert rb.approvals.danger_in_live is False
    assert rb.reminders[0].every == timedelta(minutes=30)
    assert rb.step("tell").every == timedelta(minutes=45)
    assert rb.step("drop").approve is not None and rb.step("drop").approve.by == "other"


def test_bad_new_keys_are_named_with_their_place() -> None:
    found = _problems("""
        version: 1
        name: t
        reminders:
          - {id: update, every: 30s, title: Too often}
          - {id: update, every: 30m, title: Twice}
        steps:
          - id: run-it
            run: "true"
            every: 30m
          - id: drop
            run: dropdb x
            approve: {by: me}
    """)
    text = "\n".join(found)
    assert "rb.yaml:4:" in text and "at least 1m" in text
    assert 'rb.yaml:5:' in text and 'duplicate reminder id "update" (first at line 4)' in text
    assert "`every` is for a manual step or a `notify` action" in text
    assert "rb.yaml:12:" in text and "other" in text


def test_driver_spans_and_the_report_show_the_hand_over_and_the_approval() -> None:
    b = JournalBuilder(["slow", "drop"])
    b.shown(1, "slow").ran(1, 30, "slow")
    b.add(10, "handover-requested", by={"user": "bob", "host": "ops2", "pid": 7}, step="slow")
    b.add(10, "run-detached", reason="taken over by bob@ops2", step="slow")
    b.add(10.1, "run-resumed", operator={"user": "bob", "host": "ops2", "pid": 7}, warnings=[])
    b.add(10.1, "handover", **{"from": {"user": "alice", "host": "ops1", "pid": 1}},
          to={"user": "bob", "host": "ops2", "pid": 7})
    b.shown(31, "drop")
    b.add(31, "approval-awaited", step="drop", command_hash="ab" * 32)
    b.add(33, "approval-refused", step="drop", approver="bob", uid=1000, reason="the driver's own user")
    b.add(35, "approved", step="drop", approver="carol", uid=1001, command_hash="ab" * 32)
    b.ran(36, 40, "drop", rto_end=True)
    b.finish(41)
    st = b.state()
    spans = driver_spans(st)
    assert [(d.user, d.how) for d in spans] == [("alice", "started"), ("bob", "took over from alice@ops1")]
    assert spans[0].end == spans[0].start + timedelta(minutes=10)
    assert spans[1].end == T0 + timedelta(minutes=41)
    md = render_markdown(st, {}, T0 + timedelta(hours=1))
    assert "| bob@ops2 | took over from alice@ops1 |" in md
    assert f"| drop | carol | {at(35)} | `{'ab' * 8}` |" in md
    assert "approval refused from bob: the driver's own user" in md
    assert "Watchers: not recorded" in md
    html = render_html(st, {}, T0 + timedelta(hours=1))
    assert html.count('class="driver-band"') == 2
    assert 'data-driver="bob@ops2"' in html and 'class="approval"' in html


def test_one_driver_draws_no_band() -> None:
    b = JournalBuilder(["a"])
    b.shown(1, "a").ran(1, 2, "a", rto_end=True)
    b.finish(3)
    assert 'class="driver-band"' not in render_html(b.state(), {}, T0 + timedelta(hours=1))


def test_duties_are_due_every_after_they_were_armed_or_last_done() -> None:
    rb = _load("""
        version: 1
        name: t
        reminders:
          - {id: update, every: 30m, title: Post the next stakeholder update}
        steps:
          - id: tell
            manual: [Post]
            every: 45m
          - id: b
            manual: [x]
    """)
    b = JournalBuilder(["tell", "b"], run_start=5)
    st = b.state()
    assert [(d.id, d.due_at) for d in duties(rb, st)] == [("update", T0 + timedelta(minutes=35))]
    b.manual(6, 8, "tell")
    b.add(40, "reminder-done", reminder="update", title="Post the next stakeholder update")
    found = {d.id: d for d in duties(rb, b.state())}
    assert found["update"].due_at == T0 + timedelta(minutes=70) and found["update"].times_done == 1
    assert found["tell"].due_at == T0 + timedelta(minutes=53)
    b.finish(60)
    assert duties(rb, b.state()) == []  # a closed run has none


def test_an_approval_is_checked_against_what_waits_now() -> None:
    h = command_hash("r1", "drop", "dropdb x")
    good = {"run_id": "r1", "step": "drop", "nonce": "n1", "hash": h}

    def why(body: dict, uid: int = 1001, step: str | None = "drop") -> str | None:  # type: ignore[type-arg]
        return check_approval(Request("f", uid, body), run_id="r1", step_id=step, nonce="n1" if step else None,
                              expected_hash=h, driver_uid=0)

    assert why(good) is None
    assert "driver's own user" in (why(good, uid=0) or "")
    assert "changed since" in (why({**good, "hash": command_hash("r1", "drop", "dropdb y")}) or "")
    assert "earlier wait" in (why({**good, "nonce": "n0"}) or "")
    assert "not this run" in (why({**good, "run_id": "r2"}) or "")
    assert "no step waits" in (why(good, step=None) or "")
    assert command_hash("r1", "drop", "a") != command_hash("r1", "drop2", "a")


def test_the_pending_approval_read_from_a_mirrored_journal() -> None:
    """What `approve -c` finds in the mirror: the last wait not ended (approved, the step started or skipped, the
    driver gone), its command and the hash recomputed from it; a hash that does not match its command refused."""
    from runbook.errors import RunbookError
    from runbook.remote_approve import pending_of

    shown = "echo dropping old_db with ******"
    good = command_hash("r1", "drop", shown, None)

    def journal(*extra: tuple[str, dict[str, object]], digest: str = good, wait: str | None = "a1" * 8,
                ) -> list[dict[str, object]]:
        b = JournalBuilder(["first", "drop"])
        b.shown(1, "drop", command=shown)
        b.add(1, "approval-awaited", step="drop", command_hash=digest, **({"wait": wait} if wait else {}))
        for t, data in extra:
            b.add(2, t, **data)
        return b.events

    p = pending_of("r1", journal())
    assert p is not None and (p.step, p.command, p.wait, p.command_hash) == ("drop", shown, "a1" * 8, good)
    assert p.driver["user"] == journal()[0]["operator"]["user"]  # type: ignore[index]
    assert pending_of("r1", journal(("approved", {"step": "drop", "approver": "carol"}))) is None
    assert pending_of("r1", journal(("step-skipped", {"step": "drop", "reason": "no"}))) is None
    assert pending_of("r1", journal(("run-detached", {"reason": "quit"}))) is None
    assert pending_of("r1", journal(("approved", {"step": "other"}))) is not None  # another step's: still waits
    assert pending_of("r1", journal(wait=None)) is None  # a wait without its nonce (an older driver): none to answer
    with pytest.raises(RunbookError, match="does not match"):
        pending_of("r1", journal(digest="0" * 64))
