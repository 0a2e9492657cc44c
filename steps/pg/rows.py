"""A table's rows, defined once: what the backup counts into manifest.json and what every check compares.

The definition, named `own` (manifest.json's `row_counts_definition`):

- A table's rows are its **own** rows, `SELECT count(*) FROM ONLY schema.table`, exact, keyed
  `"schema.table"` (the names as the catalog spells them, unquoted; quoted when counted).
- Counted: every ordinary table (relkind `r`) in a user schema, whatever its place in an inheritance tree
  (a parent's count leaves its children out; each child, grandchild, ... has its own count), every
  partition that holds rows (a leaf partition, the default partition included) and every unlogged table.
  A plain `count(*)` of an inheritance parent also reads its children: a changed child would then change
  every ancestor's count too, and a parent's count would not match the rows pg_dump writes for it.
- Not counted, recorded with the reason (manifest.json's `row_counts_skipped`):
  a **partitioned table** (relkind `p`, at any level) has no rows of its own: its rows are its partitions',
  each counted under the partition's own name; a **foreign table** (relkind `f`, a foreign partition too):
  its rows live on another server, the backup holds only its definition; a **materialized view** (relkind
  `m`): the backup holds its query, not its rows, the restore computes them again (REFRESH), from the
  restored tables and not from the state the view had (maybe stale, maybe never populated) at the backup;
  on a **standby**, an unlogged table: its data cannot be read there, and pg_dump leaves it out.
- Not listed at all: the catalogs, toast and temporary schemas, and the tables of an extension (the
  extension's script makes them), as pg_dump does.

Manifests written before the definition was named have no `row_counts_definition`: their backups counted
exactly this way (`count(*) FROM ONLY` of every table of relkind `r`), so they are read as `own`. Counts
under a definition this module does not know are refused, never compared as if they were its own.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

DEFINITION = "own"

# Every relation that has or could be thought to have rows, with what decides whether it is counted.
_RELATIONS = """
select n.nspname, c.relname, c.relkind::text, c.relpersistence::text
from pg_class c join pg_namespace n on n.oid = c.relnamespace
where c.relkind in ('r', 'p', 'f', 'm') and n.nspname not in ('pg_catalog', 'information_schema')
  and n.nspname not like 'pg\\_toast%' and n.nspname not like 'pg\\_temp\\_%'
  and not exists (select 1 from pg_depend d where d.classid = 'pg_class'::regclass and d.objid = c.oid
                  and d.deptype = 'e')
order by 1, 2
"""

SKIP_PARTITIONED = "partitioned table: no rows of its own; each of its partitions is counted under its own name"
SKIP_FOREIGN = "foreign table: its rows live on another server; the backup holds only its definition"
SKIP_MATVIEW = ("materialized view: the backup holds its query, not its rows; the restore computes them again "
                "(REFRESH) from the restored tables")
SKIP_UNLOGGED_ON_STANDBY = "unlogged table on a standby: its data cannot be read there, and pg_dump leaves it out"


class UnknownDefinition(ValueError):
    """Counts taken under a definition this version does not know."""


def key(schema: str, table: str) -> str:
    """The name a count is kept under: `schema.table`, as the catalog spells them."""
    return f"{schema}.{table}"


@dataclass
class RowCounts:
    counts: dict[str, int] = field(default_factory=dict)
    skipped: dict[str, str] = field(default_factory=dict)  # name -> why it is not counted


def count_rows(pg: Any) -> RowCounts:
    """Every table's own rows in `pg`'s current transaction (the dump's snapshot, when the backup calls it).

    `pg` is an open psycopg connection; psycopg errors are the caller's to report."""
    from psycopg import sql

    out = RowCounts()
    with pg.cursor() as cur:
        cur.execute("select pg_is_in_recovery()")
        standby = bool(cur.fetchone()[0])
        cur.execute(_RELATIONS)
        relations = cur.fetchall()
        for schema, table, kind, persistence in relations:
            name = key(schema, table)
            if kind == "p":
                out.skipped[name] = SKIP_PARTITIONED
            elif kind == "f":
                out.skipped[name] = SKIP_FOREIGN
            elif kind == "m":
                out.skipped[name] = SKIP_MATVIEW
            elif persistence == "u" and standby:
                out.skipped[name] = SKIP_UNLOGGED_ON_STANDBY
            else:
                cur.execute(sql.SQL("select count(*) from only {}").format(sql.Identifier(schema, table)))
                out.counts[name] = int(cur.fetchone()[0])
    return out


def expected_counts(manifest: Mapping[str, Any]) -> dict[str, int]:
    """A logical backup's manifest's counts, to compare with `count_rows` of a restored database.

    Raises UnknownDefinition for counts taken under another definition than this module's."""
    definition = manifest.get("row_counts_definition")
    if definition is not None and definition != DEFINITION:
        raise UnknownDefinition(f"the backup's row counts were taken under the definition {definition!r}; "
                                f"this version of runbook counts rows as {DEFINITION!r} and cannot compare them")
    return {str(k): int(v) for k, v in manifest.get("row_counts", {}).items()}


@dataclass
class Comparison:
    name: str
    want: int
    got: int | None
    detail: str

    @property
    def ok(self) -> bool:
        return self.got == self.want


def compare(expected: Mapping[str, int], found: RowCounts) -> list[Comparison]:
    """Each expected table against the rows found, by name, in name order."""
    out: list[Comparison] = []
    for name, want in sorted(expected.items()):
        got = found.counts.get(name)
        if got == want:
            detail = f"{got} rows"
        elif got is not None:
            detail = f"{got} rows, the backup holds {want}"
        elif name in found.skipped:
            detail = f"not counted here ({found.skipped[name]}), the backup holds {want} rows"
        else:
            detail = "table missing"
        out.append(Comparison(name, want, got, detail))
    return out
