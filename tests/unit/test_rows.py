"""steps.pg.rows without PostgreSQL: how a manifest's counts are read and how they are compared (the counting
itself runs against real clusters in tests/integration/test_row_counts.py)."""

from __future__ import annotations

import pytest

from steps.pg import rows


def test_a_manifest_without_a_definition_is_read_as_own_rows() -> None:
    # written before the definition was named: the backup counted count(*) FROM ONLY then too
    assert rows.expected_counts({"row_counts": {"s.t": "3"}}) == {"s.t": 3}
    assert rows.expected_counts({"row_counts": {"s.t": 3}, "row_counts_definition": "own"}) == {"s.t": 3}
    assert rows.expected_counts({}) == {}


def test_counts_under_an_unknown_definition_are_refused() -> None:
    with pytest.raises(rows.UnknownDefinition, match="'with-children'"):
        rows.expected_counts({"row_counts": {"s.t": 3}, "row_counts_definition": "with-children"})


def test_each_expected_table_is_compared_by_its_name() -> None:
    found = rows.RowCounts(counts={"a.Parent": 3, "a.child": 3, 'we.ird "x".t': 0},
                           skipped={"a.remote": rows.SKIP_FOREIGN})
    got = {c.name: (c.ok, c.detail) for c in rows.compare(
        {"a.Parent": 3, "a.child": 4, "a.gone": 1, "a.remote": 5, 'we.ird "x".t': 0}, found)}
    assert got == {
        "a.Parent": (True, "3 rows"),
        "a.child": (False, "3 rows, the backup holds 4"),
        "a.gone": (False, "table missing"),
        "a.remote": (False, f"not counted here ({rows.SKIP_FOREIGN}), the backup holds 5 rows"),
        'we.ird "x".t': (True, "0 rows"),
    }
