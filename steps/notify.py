"""notify: POST a JSON message to a chat webhook (Slack, Mattermost, Teams or any JSON endpoint).

The message is rendered by the runbook (templates); an empty `url` means no webhook is configured: the step
succeeds with a **warning** check (nothing was sent; the checklist beside it still asks a person to post). A webhook that
does not answer 2xx is a failure with the status and the start of its answer, so the step can be
retried or skipped. Only the host of the URL is printed: webhook URLs carry their secret in the path.
"""

from __future__ import annotations

import json
import os
import urllib.error
import urllib.request
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field

from steps.events import Events


class Args(BaseModel):
    model_config = ConfigDict(extra="forbid")
    url: str = Field("", description="Webhook URL (http or https); prefer url_env, webhook URLs are secrets")
    url_env: str = Field("NOTIFY_WEBHOOK_URL", description="Environment variable holding the URL (e.g. from the "
                         "secrets file, so it is masked everywhere); used when url is empty")
    text: str = Field(min_length=1, description="The message")
    payload_key: str = Field("text", description="JSON key that carries the message (Slack/Mattermost: text)")
    extra: dict[str, object] = Field(default_factory=dict, description="More JSON fields, e.g. channel, username")
    timeout_s: float = Field(10, gt=0, le=120)


def main(args: Args, events: Events) -> int:
    url = args.url.strip() or os.environ.get(args.url_env, "").strip()
    if not url:
        print("no webhook configured (url is empty): post the message by hand:")
        print(args.text)
        events.check("message posted", "warning", f"nothing was sent: no webhook configured (url, or ${args.url_env}); "
                     "post the message by hand")
        events.output("sent", False)
        return 0
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        print(f"notify: {parts.scheme or 'no'} scheme: the webhook URL must start with http:// or https://")
        return 2
    body = json.dumps({**args.extra, args.payload_key: args.text}).encode()
    req = urllib.request.Request(url, data=body, method="POST",
                                 headers={"Content-Type": "application/json", "User-Agent": "runbook-notify"})
    where = parts.hostname or "?"
    try:
        with urllib.request.urlopen(req, timeout=args.timeout_s) as resp:  # noqa: S310 (http/https checked)
            status = resp.status
    except urllib.error.HTTPError as e:
        answer = e.read(300).decode("utf-8", "replace").strip()
        print(f"notify: the webhook at {where} answered {e.code}: {answer or e.reason}")
        events.check("message posted", "failed", f"HTTP {e.code} from {where}; check the webhook URL, or skip and post by hand")
        return 1
    except (urllib.error.URLError, OSError) as e:
        reason = getattr(e, "reason", e)
        print(f"notify: cannot reach the webhook at {where}: {reason}")
        events.check("message posted", "failed", f"{where} unreachable; retry, or skip and post by hand")
        return 1
    print(f"message posted to {where} (HTTP {status})")
    events.check("message posted", "ok", f"HTTP {status} from {where}")
    events.output("sent", True)
    return 0
