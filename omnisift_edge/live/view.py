"""The `--view` web page, served by aiohttp on its own thread and event loop.

Routes: `GET /` the page (`live.page.PAGE`), `GET /events` server-sent events (every watch event
as JSON; chunk events carry the 4 frames as JPEG data URLs), `POST /ask` `{"question": ...}` puts
a question in the watch loop's queue. Each page gets its own bounded queue: a slow browser loses
old events, never grows memory. Binds 127.0.0.1 unless told otherwise.
"""

from __future__ import annotations

import asyncio
import errno
import json
import threading
from collections import deque
from typing import Callable

from omnisift_edge.errors import UsageError, require

CLIENT_QUEUE = 32           # events waiting for one page at most
HISTORY = 16                # recent events a page opened late receives first (the start event always)


class View:
    """Start with `start()` (returns the URL), `publish(event)` from any thread, `stop()`."""

    def __init__(self, host: str, port: int, *, on_question: Callable[[str, str], None]):
        self.host, self.port, self.on_question = host, port, on_question
        self.loop = asyncio.new_event_loop()
        self.clients: set[asyncio.Queue] = set()
        self.start_event: str | None = None
        self.history: deque[str] = deque(maxlen=HISTORY)
        self.runner = None
        self.thread = threading.Thread(target=self.loop.run_forever, name="omnisift-view", daemon=True)

    def start(self) -> str:
        require("aiohttp", extra="live")
        self.thread.start()
        try:
            asyncio.run_coroutine_threadsafe(self._serve(), self.loop).result(timeout=10)
        except OSError as exc:
            self.stop()
            if exc.errno == errno.EADDRINUSE:
                raise UsageError(f"--view {self.host}:{self.port}: the port is taken; pick another port "
                                 f"(port 0 picks a free one)") from None
            raise UsageError(f"--view {self.host}:{self.port}: cannot listen there ({exc.strerror or exc}); "
                             "use 127.0.0.1:PORT") from None
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}/"

    async def _serve(self) -> None:
        from aiohttp import web

        app = web.Application()
        app.router.add_get("/", self._page)
        app.router.add_get("/events", self._events)
        app.router.add_post("/ask", self._ask)
        self.runner = web.AppRunner(app, shutdown_timeout=1.0, handle_signals=False)
        await self.runner.setup()
        site = web.TCPSite(self.runner, self.host, self.port)
        await site.start()
        self.port = self.runner.addresses[0][1]            # the port taken when 0 was asked

    async def _page(self, request):
        from aiohttp import web

        from omnisift_edge.live.page import PAGE

        return web.Response(text=PAGE, content_type="text/html")

    async def _events(self, request):
        from aiohttp import web

        response = web.StreamResponse(headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"})
        await response.prepare(request)
        mine: asyncio.Queue = asyncio.Queue(maxsize=CLIENT_QUEUE)
        backlog = ([self.start_event] if self.start_event else []) + list(self.history)
        self.clients.add(mine)
        try:
            for data in backlog:
                await response.write(f"data: {data}\n\n".encode())
            while True:
                data = await mine.get()
                if data is None:
                    break
                await response.write(f"data: {data}\n\n".encode())
        except (ConnectionResetError, asyncio.CancelledError):
            pass
        finally:
            self.clients.discard(mine)
        return response

    async def _ask(self, request):
        from aiohttp import web

        try:
            question = str((await request.json()).get("question", "")).strip()
        except (ValueError, AttributeError):
            question = ""
        if not question:
            return web.json_response({"error": "send {\"question\": \"...\"}"}, status=400)
        self.on_question(question, "view")
        return web.json_response({"queued": question})

    def publish(self, event: dict) -> None:
        """Send `event` to every open page (thread-safe; never blocks the caller)."""
        data = json.dumps(event)
        if not self.loop.is_closed():
            self.loop.call_soon_threadsafe(self._fan_out, event.get("event"), data)

    def _fan_out(self, kind: str | None, data: str) -> None:
        if kind == "start":
            self.start_event = data
        elif kind != "piece":
            self.history.append(data)
        for client in self.clients:
            if client.full():
                client.get_nowait()                          # the slow page loses its oldest event
            client.put_nowait(data)

    def stop(self) -> None:
        if not self.thread.is_alive():
            return

        async def shutdown():
            for client in list(self.clients):
                if client.full():
                    client.get_nowait()
                client.put_nowait(None)
            if self.runner is not None:
                await self.runner.cleanup()

        try:
            asyncio.run_coroutine_threadsafe(shutdown(), self.loop).result(timeout=5)
        except Exception:   # noqa: BLE001 - shutting down: a page that hangs must not keep us here
            pass
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(timeout=5)
