"""Applying `pg_dumpall --globals-only` output role by role, on a server that may already have some roles.

The file is split into statements (quotes, dollar quotes and comments respected; psql meta-commands such
as `\\restrict` skipped) and run one by one in autocommit. A role that exists already is reported and
left as it is: its `CREATE ROLE`, `ALTER ROLE ... WITH` and `ALTER ROLE ... SET` are skipped, so a restore
never changes the password or attributes of a role the new server has. An "already exists" error of any
other statement is reported, not fatal; any other error stops, naming the statement.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

from runbook.errors import RunbookError

_IDENT = r'(?:"(?:[^"]|"")+"|[A-Za-z_][A-Za-z0-9_$]*)'
_CREATE_ROLE = re.compile(rf"^CREATE ROLE ({_IDENT})\s*;?$", re.S)
_ALTER_ROLE = re.compile(rf"^ALTER ROLE ({_IDENT})\s+(WITH\b|SET\b|RESET\b|IN DATABASE\b)", re.S)
_DUPLICATE = {"42710", "42P04", "42P06", "42P07"}  # duplicate object/database/schema/table


def unquote_ident(text: str) -> str:
    if text.startswith('"'):
        return text[1:-1].replace('""', '"')
    return text.lower()


def split_statements(sql: str) -> list[str]:
    """SQL statements of a pg_dumpall script, without comments and psql meta-commands."""
    out: list[str] = []
    buf: list[str] = []
    i, n = 0, len(sql)
    at_start = True
    while i < n:
        ch = sql[i]
        if at_start and ch == "\\":  # a psql meta-command: the rest of the line
            j = sql.find("\n", i)
            i = n if j < 0 else j + 1
            continue
        if ch == "-" and sql.startswith("--", i):
            j = sql.find("\n", i)
            i = n if j < 0 else j + 1
            continue
        if ch == "/" and sql.startswith("/*", i):
            j = sql.find("*/", i + 2)
            i = n if j < 0 else j + 2
            continue
        if ch in ("'", '"'):
            j = i + 1
            while j < n:
                if sql[j] == ch:
                    if j + 1 < n and sql[j + 1] == ch:
                        j += 2
                        continue
                    break
                j += 1
            buf.append(sql[i:j + 1])
            i = j + 1
            at_start = False
            continue
        if ch == "$" and not (buf and re.match(r"[A-Za-z0-9_]", buf[-1][-1:])):
            m = re.match(r"\$([A-Za-z_][A-Za-z0-9_]*)?\$", sql[i:])
            if m:
                tag = m.group(0)
                j = sql.find(tag, i + len(tag))
                j = n if j < 0 else j + len(tag)
                buf.append(sql[i:j])
                i = j
                at_start = False
                continue
        if ch == ";":
            stmt = "".join(buf).strip()
            if stmt:
                out.append(stmt + ";")
            buf = []
            i += 1
            at_start = True
            continue
        if not ch.isspace():
            at_start = False
        elif ch == "\n" and not "".join(buf).strip():
            at_start = True
        buf.append(ch)
        i += 1
    rest = "".join(buf).strip()
    if rest:
        out.append(rest)
    return out


@dataclass
class GlobalsReport:
    created: list[str] = field(default_factory=list)
    existing: list[str] = field(default_factory=list)
    applied: int = 0
    skipped: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


def apply_globals(conn: Any, sql: str) -> GlobalsReport:
    """Run the globals script on `conn` (autocommit, a role allowed to create roles)."""
    import psycopg

    report = GlobalsReport()
    with conn.cursor() as cur:
        cur.execute("select rolname from pg_roles")
        existing = {r[0] for r in cur.fetchall()}
    for stmt in split_statements(sql):
        m = _CREATE_ROLE.match(stmt)
        if m:
            role = unquote_ident(m.group(1))
            if role in existing:
                report.existing.append(role)
                continue
            report.created.append(role)
        else:
            m = _ALTER_ROLE.match(stmt)
            if m and unquote_ident(m.group(1)) in existing:
                # Never echo the statement: it may carry a password hash.
                report.skipped.append(f"ALTER ROLE {unquote_ident(m.group(1))} {m.group(2)} ...")
                continue
        try:
            conn.execute(stmt)
            report.applied += 1
        except psycopg.Error as e:
            state = getattr(e, "sqlstate", None)
            if state in _DUPLICATE:
                report.notes.append(f"{str(e).strip()} (kept as it is)")
                continue
            shown = re.sub(r"PASSWORD\s+'[^']*'", "PASSWORD '••••••'", stmt)[:200]
            raise RunbookError(f"restoring the globals failed at: {shown}\n{str(e).strip()}",
                               hint="fix the cause (e.g. a tablespace directory) or restore with globals: false") from None
    return report
