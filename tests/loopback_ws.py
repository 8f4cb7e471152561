"""A loopback websocket server for the tape tests: real sockets on 127.0.0.1, bounded, self-stopping.

``LoopbackWS(script)`` listens on a free port of ``127.0.0.1`` (the ``websockets`` server, in the
test's own event loop) and runs ``script(peer)`` for each connection; the script plays the venue:
it waits for the subscribe request, acknowledges it, sends documented frames and injects faults
(:meth:`Peer.abort` mid-burst, :meth:`Peer.close` with a code, silence by simply waiting,
:meth:`Peer.ping` protocol pings). While the script runs, a reader keeps every text the client
sent in :attr:`Peer.received` and answers the venue's app-level pings the way the venue documents
(``auto_pong="bybit"``: ``{"op":"ping"}`` -> the documented pong object; ``"okx"``: ``ping`` ->
``pong``), unless ``peer.answer_pings`` is turned off (to test the silence watchdog).

Bounds: the server stops by itself after ``lifetime_s`` seconds or once ``max_connections``
connections were accepted (later ones are closed at once with 1013); frames are limited to
``max_size`` bytes. Use ``async with LoopbackWS(...) as server:``; ``server.url`` is the address.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Literal

from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.exceptions import ConnectionClosed

__all__ = ["LoopbackWS", "Peer", "BYBIT_PONG", "BYBIT_SUBSCRIBED", "OKX_SUBSCRIBED"]

# documented response shapes (tests/fixtures/tape/SOURCES.md)
BYBIT_PONG = {"success": True, "ret_msg": "pong", "conn_id": "0970e817-426e-429a-a679-ff7f55e0b16a", "op": "ping"}
BYBIT_SUBSCRIBED = {"success": True, "ret_msg": "", "op": "subscribe", "conn_id": "cejreassvfrsfvb9v1a0-2m"}
OKX_SUBSCRIBED = {"event": "subscribe", "arg": {"channel": "liquidation-orders", "instType": "SWAP"}, "connId": "a4d3ae55"}


@dataclass
class Peer:
    """One client connection as the fake venue sees it."""

    index: int
    ws: ServerConnection
    auto_pong: Literal["bybit", "okx"] | None
    received: list[str] = field(default_factory=list)
    answer_pings: bool = True
    app_pings: int = 0
    _new: asyncio.Event = field(default_factory=asyncio.Event)

    async def send(self, msg: Any) -> None:
        """Send a text frame (a dict or list is JSON-encoded)."""
        await self.ws.send(msg if isinstance(msg, (str, bytes)) else json.dumps(msg))

    async def wait_for(self, predicate: Callable[[str], bool], timeout: float = 5.0) -> str:
        """The first text the client sent that matches (waiting for it, bounded)."""
        async def find() -> str:
            seen = 0
            while True:
                for text in self.received[seen:]:
                    if predicate(text):
                        return text
                seen = len(self.received)
                self._new.clear()
                await self._new.wait()

        return await asyncio.wait_for(find(), timeout)

    async def subscribed(self, timeout: float = 5.0) -> dict[str, Any]:
        """Wait for a subscribe request and return it."""
        text = await self.wait_for(lambda t: t.startswith("{") and json.loads(t).get("op") == "subscribe", timeout)
        return dict(json.loads(text))

    async def ping(self, timeout: float = 5.0) -> float:
        """A protocol-level ping; returns once the client's pong came back (latency in s)."""
        waiter = await self.ws.ping()
        return float(await asyncio.wait_for(waiter, timeout))

    async def close(self, code: int = 1000, reason: str = "") -> None:
        """A clean close handshake with this code."""
        await self.ws.close(code, reason)

    def abort(self) -> None:
        """Drop the TCP connection with no close frame (a network cut)."""
        self.ws.transport.abort()

    async def _reader(self) -> None:
        try:
            async for msg in self.ws:
                text = msg if isinstance(msg, str) else msg.decode("utf-8", "replace")
                self.received.append(text)
                self._new.set()
                if not self.answer_pings:
                    continue
                if self.auto_pong == "okx" and text == "ping":
                    self.app_pings += 1
                    await self.ws.send("pong")
                elif self.auto_pong == "bybit" and text.startswith("{") and '"ping"' in text:
                    if json.loads(text).get("op") == "ping":
                        self.app_pings += 1
                        await self.ws.send(json.dumps(BYBIT_PONG))
        except ConnectionClosed:
            pass


Script = Callable[[Peer], Awaitable[None]]


class LoopbackWS:
    """A websocket server on 127.0.0.1 that runs ``script`` per connection; stops by itself."""

    def __init__(
        self, script: Script, *, auto_pong: Literal["bybit", "okx"] | None = None, path: str = "/ws",
        lifetime_s: float = 30.0, max_connections: int = 20, max_size: int = 4 << 20,
    ) -> None:
        self.script = script
        self.auto_pong = auto_pong
        self.path = path
        self.lifetime_s = lifetime_s
        self.max_connections = max_connections
        self.max_size = max_size
        self.peers: list[Peer] = []
        self.errors: list[BaseException] = []
        self._server: Server | None = None
        self._timer: asyncio.Task[None] | None = None
        self._handlers: set[asyncio.Task[Any]] = set()

    @property
    def url(self) -> str:
        assert self._server is not None, "use it as `async with`"
        port = self._server.sockets[0].getsockname()[1]
        return f"ws://127.0.0.1:{port}{self.path}"

    async def _handle(self, ws: ServerConnection) -> None:
        if len(self.peers) >= self.max_connections:
            await ws.close(1013, "loopback server: connection limit")
            return
        task = asyncio.current_task()
        if task is not None:
            self._handlers.add(task)
        peer = Peer(len(self.peers), ws, self.auto_pong)
        self.peers.append(peer)
        reader = asyncio.create_task(peer._reader())
        try:
            await self.script(peer)
        except ConnectionClosed:
            pass
        except Exception as exc:  # noqa: BLE001 - surfaced by the test through .errors
            self.errors.append(exc)
        finally:
            if len(self.peers) >= self.max_connections:
                self._stop_soon()
            await ws.close()
            reader.cancel()
            await asyncio.gather(reader, return_exceptions=True)

    def _stop_soon(self) -> None:
        if self._server is not None:
            self._server.close(close_connections=True)

    async def __aenter__(self) -> LoopbackWS:
        self._server = await serve(
            self._handle, "127.0.0.1", 0, max_size=self.max_size, ping_interval=None, compression=None,
        )

        async def expire() -> None:
            await asyncio.sleep(self.lifetime_s)
            self._stop_soon()

        self._timer = asyncio.create_task(expire())
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._timer is not None:
            self._timer.cancel()
        for task in self._handlers:  # scripts still waiting (holding a connection open) end now
            task.cancel()
        if self._server is not None:
            self._server.close(close_connections=True)
            await asyncio.wait_for(self._server.wait_closed(), 10)


async def hold(seconds: float) -> None:
    """Keep a connection open, sending nothing (silence), for a bounded time."""
    await asyncio.sleep(seconds)
