"""Built-in actions: each runs as a child process, `python -m steps ACTION`, arguments as JSON on stdin.

Plain output goes to stdout/stderr; structured events (progress, check, output) go as JSON lines to
the file descriptor named by `RUNBOOK_EVENT_FD`. Exit codes: 0 done, 1 failed, 2 bad arguments.
"""
