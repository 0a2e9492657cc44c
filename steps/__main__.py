"""`python -m steps ACTION`: run one built-in action with its JSON arguments read from stdin."""

from __future__ import annotations

import json
import sys

from pydantic import ValidationError


def main(argv: list[str]) -> int:
    from runbook.errors import RunbookError
    from steps.events import Events
    from steps.registry import ACTIONS

    if len(argv) != 1 or argv[0] not in ACTIONS:
        known = ", ".join(sorted(ACTIONS))
        print(f"usage: python -m steps ACTION < args.json   (actions: {known})", file=sys.stderr)
        return 2
    spec = ACTIONS[argv[0]]
    raw = sys.stdin.read() if not sys.stdin.isatty() else ""
    try:
        data = json.loads(raw) if raw.strip() else {}
        args = spec.args_model().model_validate(data)
    except (json.JSONDecodeError, ValidationError) as e:
        print(f"{spec.name}: bad arguments: {e}", file=sys.stderr)
        return 2
    events = Events()
    try:
        return int(spec.entry()(args, events))
    except KeyboardInterrupt:
        print(f"{spec.name}: interrupted", file=sys.stderr)
        return 1
    except RunbookError as e:  # a problem the operator can act on: its message, no traceback
        print(f"{spec.name}: {e}", file=sys.stderr)
        return 1
    finally:
        events.close()


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
