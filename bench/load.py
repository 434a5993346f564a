"""A lean HTTP/1.1 load generator for the intake burst: `concurrency` kept-alive connections on asyncio streams.

httpx spends about 2.6 ms of CPU per request (its connection pool, its models): on a 2-core machine that is most
of a core at 300 requests/s, taken from the stack being measured. This client writes each request as bytes and
reads the status line, the headers and a Content-Length body, nothing more (a tenth of that CPU), like `wrk`.
"""
from __future__ import annotations

import asyncio
import json
from collections.abc import Iterable
from urllib.parse import urlsplit


async def _read_response(reader: asyncio.StreamReader) -> tuple[int, bytes, bool]:
    """(status, body, keep-alive) of one response; the server must send a Content-Length (uvicorn does)."""
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split(" ", 2)[1])
    headers = {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:] if line)}
    if "content-length" not in headers:
        raise ValueError("response without Content-Length")
    body = await reader.readexactly(int(headers["content-length"]))
    return status, body, headers.get("connection", "").lower() != "close"


async def post_json_many(base_url: str, path: str, bodies: Iterable[dict], concurrency: int = 64,
                         ) -> list[tuple[int, bytes]]:
    """POST each body as JSON, `concurrency` at once over kept-alive connections; (status, body) per request in
    order. A request whose connection fails is answered (0, b"error text")."""
    url = urlsplit(base_url)
    host, port = url.hostname or "127.0.0.1", url.port or 80
    items = list(bodies)
    results: list[tuple[int, bytes]] = [(0, b"not sent")] * len(items)
    next_index = iter(range(len(items)))

    async def worker() -> None:
        reader = writer = None
        for i in next_index:
            payload = json.dumps(items[i], ensure_ascii=False).encode()
            request = (f"POST {path} HTTP/1.1\r\nHost: {host}:{port}\r\nContent-Type: application/json\r\n"
                       f"Content-Length: {len(payload)}\r\n\r\n").encode() + payload
            # a kept-alive connection the server closed meanwhile: open a new one and send again, once (the
            # bench's posts are idempotent: intake records one case per source_ref)
            for attempt in (1, 2):
                try:
                    if writer is None:
                        reader, writer = await asyncio.open_connection(host, port)
                    writer.write(request)
                    await writer.drain()
                    status, body, keep = await _read_response(reader)
                    results[i] = (status, body)
                    if not keep:
                        writer.close()
                        writer = None
                    break
                except (OSError, asyncio.IncompleteReadError, ValueError) as exc:
                    if writer is not None:
                        writer.close()
                    writer = None
                    results[i] = (0, str(exc).encode())
                    if attempt == 2:
                        break
        if writer is not None:
            writer.close()

    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return results
