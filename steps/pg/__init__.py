"""PostgreSQL's own tools and formats, as the actions and jobs use them.

- `tools`: finding and running pg_dump, pg_restore, psql and friends; connection arguments (libpq).
- `server`: a throwaway or recovered server: start, stop, wait, run as the server's user when we are root.
- `walnames`: WAL segment names and LSN arithmetic.
- `rows`: a table's rows, defined once: what a logical backup counts and every check compares with.
"""
