"""Headless Chromium driven over its DevTools protocol, to read what a textual-serve page shows.

textual-serve draws the terminal with xterm.js on a canvas: the page's DOM holds no text. Before the page's
scripts run, a small hook keeps every xterm Terminal the page creates (textual-serve's client assigns it to a
`terminal` property), and `terminal_text` reads the terminal's visible rows from its buffer: the characters the
canvas shows. No profile is left behind; the browser is stopped on the way out.
"""

from __future__ import annotations

import asyncio
import json
import shutil
import subprocess
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import aiohttp
import pytest

HOOK = """
(() => {
  const seen = [];
  Object.defineProperty(window, '__runbookTerminals', {value: seen});
  Object.defineProperty(Object.prototype, 'terminal', {configurable: true, set(value) {
    Object.defineProperty(this, 'terminal', {value, writable: true, configurable: true, enumerable: true});
    if (value && value.buffer && value.buffer.active) seen.push(value);
  }});
})();
"""

READ = """(() => {
  const t = window.__runbookTerminals && window.__runbookTerminals[0];
  if (!t) return null;
  const b = t.buffer.active, rows = [];
  for (let i = 0; i < t.rows; i++) { const line = b.getLine(b.viewportY + i); rows.push(line ? line.translateToString(true) : ''); }
  return rows.join('\\n');
})()"""


class Page:
    def __init__(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        self.ws = ws
        self._n = 0

    async def call(self, method: str, **params: Any) -> dict[str, Any]:
        self._n += 1
        n = self._n
        await self.ws.send_json({"id": n, "method": method, "params": params})
        async for msg in self.ws:
            data = json.loads(msg.data)
            if data.get("id") == n:
                if "error" in data:
                    raise AssertionError(f"{method}: {data['error']}")
                return dict(data.get("result") or {})
        raise AssertionError(f"the browser closed its connection during {method}")

    async def evaluate(self, expression: str) -> Any:
        result = await self.call("Runtime.evaluate", expression=expression, returnByValue=True)
        return result.get("result", {}).get("value")

    async def open(self, url: str) -> None:
        await self.call("Page.enable")
        await self.call("Page.addScriptToEvaluateOnNewDocument", source=HOOK)
        await self.call("Page.navigate", url=url)

    async def terminal_text(self) -> str | None:
        """The terminal's visible rows, or None while the page has no terminal."""
        value = await self.evaluate(READ)
        return value if isinstance(value, str) else None

    async def wait_for_terminal(self, *texts: str, timeout: float = 30) -> str:
        deadline = time.monotonic() + timeout
        shown: str | None = None
        while time.monotonic() < deadline:
            shown = await self.terminal_text()
            if shown is not None and all(t in shown for t in texts):
                return shown
            await asyncio.sleep(0.2)
        raise AssertionError(f"{texts!r} never appeared in the browser's terminal; it shows:\n{shown}")

    async def body_text(self) -> str:
        return str(await self.evaluate("document.body ? document.body.innerText : ''") or "")


@asynccontextmanager
async def chromium(tmp: Path) -> AsyncIterator[Page]:
    exe = shutil.which("chromium")
    if exe is None:
        pytest.fail("Chromium is missing: apt-get install -y chromium (as root; scripts/setup.sh installs it)")
    profile = tmp / "chromium-profile"
    proc = subprocess.Popen(
        [exe, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking",
         "--disable-component-update", "--disable-sync", "--remote-debugging-port=0", f"--user-data-dir={profile}",
         "--window-size=1280,800", "about:blank"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        port_file = profile / "DevToolsActivePort"
        deadline = time.monotonic() + 30
        while not (port_file.exists() and port_file.read_text().count("\n") >= 1):
            if time.monotonic() > deadline or proc.poll() is not None:
                raise AssertionError("chromium did not open its DevTools port")
            await asyncio.sleep(0.1)
        port = port_file.read_text().split()[0]
        async with aiohttp.ClientSession() as session:
            targets = await (await session.get(f"http://127.0.0.1:{port}/json/list")).json()
            page = next(t for t in targets if t.get("type") == "page")
            async with session.ws_connect(page["webSocketDebuggerUrl"], max_msg_size=0) as ws:
                yield Page(ws)
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        shutil.rmtree(profile, ignore_errors=True)
