"""Point-in-time recovery: a base backup restored into a new data directory, WAL replayed to a target.

- `action`: the `pitr` built-in action.
"""
