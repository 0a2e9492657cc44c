"""`runbook serve`: the watch cockpit in web browsers, through textual-serve (one `runbook watch` per browser).

What this adds to textual-serve's server: a random token that every request for the cockpit must carry (the page
as `/?token=…`, its websocket as `/ws/<token>`; without it, 403 and no cockpit), no download route, no access log
(it would hold the token), and URLs built from the address the browser used (so `--host 0.0.0.0` works from
another machine). The served command is `runbook watch`, which only reads: a browser can do nothing a watcher in
a terminal cannot.
"""

from __future__ import annotations

import asyncio
import secrets
import signal
import socket
from typing import Any

import aiohttp_jinja2
import jinja2
from aiohttp import web
from aiohttp.web_runner import GracefulExit
from textual_serve.server import Server

TOKEN_BYTES = 24


class TokenServer(Server):
    """textual-serve's server, the cockpit behind a token (see the module's docstring)."""

    def __init__(self, command: str, *, title: str, token: str) -> None:
        super().__init__(command, title=title)
        self.token = token

    def _allowed(self, given: str | None) -> None:
        if not given or not secrets.compare_digest(given.encode(), self.token.encode()):
            raise web.HTTPForbidden(text="runbook serve: this address needs the token printed by `runbook serve` "
                                         "(the whole URL, ?token=... included)\n")

    async def _make_app(self) -> web.Application:
        app = web.Application()
        aiohttp_jinja2.setup(app, loader=jinja2.FileSystemLoader(self.templates_path))
        app.add_routes([
            web.get("/", self.handle_index, name="index"),
            web.get("/ws/{token}", self.handle_websocket, name="websocket"),
            web.static("/static", self.statics_path, name="static"),  # the page's scripts and styles only
        ])
        return app

    @aiohttp_jinja2.template("app_index.html")
    async def handle_index(self, request: web.Request) -> dict[str, Any]:
        self._allowed(request.query.get("token"))
        base = f"{request.scheme}://{request.host}"
        try:
            size = max(8, min(40, int(request.query.get("fontsize", "16"))))
        except ValueError:
            size = 16
        ws = request.app.router["websocket"].url_for(token=self.token)
        return {
            "font_size": size,
            "app_websocket_url": ("wss:" if request.scheme == "https" else "ws:") + f"//{request.host}{ws}",
            "config": {"static": {"url": f"{base}/static/"}},
            "application": {"name": self.title},
        }

    async def handle_websocket(self, request: web.Request) -> web.WebSocketResponse:
        self._allowed(request.match_info.get("token"))
        return await super().handle_websocket(request)

    def serve_on(self, sock: socket.socket, url: str) -> None:
        """Serve on a bound socket until SIGINT or SIGTERM; every browser's cockpit is stopped on the way out."""
        loop = asyncio.new_event_loop()
        asyncio.set_event_loop(loop)

        def stop() -> None:
            raise GracefulExit()

        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop)
        print(f"serving the watch cockpit of {self.title} (read-only) at\n  {url}\n"
              "anyone with this URL can watch the run; Ctrl+C stops serving", flush=True)
        web.run_app(self._make_app(), sock=sock, handle_signals=False, loop=loop, access_log=None,
                    print=lambda *args: None)


def serve(command: str, run_id: str, *, host: str, port: int) -> int:
    """Listen on host:port (port 0: a free one), print the URL with its token, serve until stopped."""
    from runbook.errors import RunbookError

    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
        family, _, _, _, addr = infos[0]
        sock = socket.socket(family, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(addr)
        sock.listen(64)
    except OSError as e:
        raise RunbookError(f"cannot listen on {host}:{port}: {e.strerror or e}",
                           hint="choose another --port (0: a free one) or --host") from None
    bound = sock.getsockname()[1]
    token = secrets.token_urlsafe(TOKEN_BYTES)
    shown = f"[{host}]" if ":" in host else host
    if host in ("0.0.0.0", "::"):
        shown = socket.gethostname()
    server = TokenServer(command, title=f"run {run_id}", token=token)
    server.serve_on(sock, f"http://{shown}:{bound}/?token={token}")
    return 0
