"""A small webhook receiver that plays the departments: it verifies every delivery with `standardwebhooks`,
keeps each webhook-id once, and can be told to fail for a unit (for tests) or to answer like a unit (demo).

`fail_next[unit]` holds the answers to give first, each a status code (`500`) or a dict
`{"status": 429, "headers": {"Retry-After": "30"}, "delay": 2.0}` (delay: seconds to wait before answering).
`delay[unit]` makes every answer of that unit slow (a slow department); `started` logs each request's arrival
and `max_in_flight` the most requests a unit had open at once.

It is a real HTTP server on loopback (uvicorn in a background thread), not a mock of our own sending code.
"""
from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import uvicorn
from fastapi import FastAPI, Request, Response
from standardwebhooks.webhooks import Webhook, WebhookVerificationError


@dataclass
class Received:
    unit: str
    webhook_id: str
    type: str
    data: dict[str, Any]
    at: float


@dataclass
class Receiver:
    port: int
    secrets: dict[str, str] = field(default_factory=dict)        # unit code -> whsec_...
    fail_next: dict[str, list[int | dict[str, Any]]] = field(default_factory=dict)  # unit -> answers to give first
    delay: dict[str, float] = field(default_factory=dict)         # unit code -> seconds before every answer
    on_event: Callable[[Received], None] | None = None
    received: list[Received] = field(default_factory=list)        # first receipt of each webhook-id
    attempts: list[tuple[str, str, int]] = field(default_factory=list)  # (unit, webhook-id, status answered)
    rejected: list[str] = field(default_factory=list)             # signature failures
    started: list[tuple[str, str, float]] = field(default_factory=list)  # (unit, webhook-id, arrival time)
    max_in_flight: dict[str, int] = field(default_factory=dict)   # unit -> most requests open at once
    _in_flight: dict[str, int] = field(default_factory=dict)
    _server: uvicorn.Server | None = None
    _lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def hook_url(self, unit: str) -> str:
        return f"{self.url}/hooks/{unit}"

    def app(self) -> FastAPI:
        app = FastAPI()

        @app.post("/hooks/{unit}")
        async def hook(unit: str, request: Request) -> Response:
            webhook_id = request.headers.get("webhook-id", "")
            with self._lock:
                self.started.append((unit, webhook_id, time.time()))
                self._in_flight[unit] = self._in_flight.get(unit, 0) + 1
                self.max_in_flight[unit] = max(self.max_in_flight.get(unit, 0), self._in_flight[unit])
            try:
                return await answer(unit, webhook_id, request)
            finally:
                with self._lock:
                    self._in_flight[unit] -= 1

        async def answer(unit: str, webhook_id: str, request: Request) -> Response:
            body = await request.body()
            with self._lock:
                queued = self.fail_next.get(unit)
                planned = queued.pop(0) if queued else None
            if planned is not None:
                if isinstance(planned, int):
                    planned = {"status": planned}
                if planned.get("delay"):
                    await asyncio.sleep(planned["delay"])
                with self._lock:
                    self.attempts.append((unit, webhook_id, planned["status"]))
                return Response(status_code=planned["status"], headers=planned.get("headers"))
            if self.delay.get(unit):
                await asyncio.sleep(self.delay[unit])
            secret = self.secrets.get(unit)
            try:
                payload = Webhook(secret).verify(body, dict(request.headers)) if secret else None
            except WebhookVerificationError:
                payload = None
            if payload is None:
                with self._lock:
                    self.rejected.append(webhook_id)
                    self.attempts.append((unit, webhook_id, 400))
                return Response(status_code=400)
            with self._lock:
                self.attempts.append((unit, webhook_id, 204))
                duplicate = any(r.webhook_id == webhook_id for r in self.received)
                item = Received(unit, webhook_id, payload["type"], payload["data"], time.time())
                if not duplicate:
                    self.received.append(item)
            if not duplicate and self.on_event is not None:
                self.on_event(item)
            return Response(status_code=204)

        return app

    def start(self) -> "Receiver":
        config = uvicorn.Config(self.app(), host="127.0.0.1", port=self.port, log_level="warning")
        self._server = uvicorn.Server(config)
        thread = threading.Thread(target=lambda: asyncio.run(self._server.serve()), daemon=True)
        thread.start()
        deadline = time.monotonic() + 15
        while not self._server.started:
            if time.monotonic() > deadline:
                raise RuntimeError("webhook receiver did not start")
            time.sleep(0.05)
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.should_exit = True

    def of(self, unit: str | None = None, type: str | None = None, case_number: str | None = None) -> list[Received]:
        with self._lock:
            return [r for r in self.received
                    if (unit is None or r.unit == unit) and (type is None or r.type == type)
                    and (case_number is None or r.data.get("case_number") == case_number)]
