"""Address discovery from Hyperliquid's public trades stream (websocket).

Contract (docs in tests/fixtures/hyperliquid_measured/SOURCES.md): connect to
``wss://api.hyperliquid.xyz/ws``, send ``{"method": "subscribe", "subscription": {"type":
"trades", "coin": "BTC"}}`` per coin; the server acknowledges with ``{"channel":
"subscriptionResponse", "data": {...the subscription...}}`` and then sends ``{"channel":
"trades", "data": [WsTrade, ...]}`` where every ``WsTrade`` has ``users: [buyer, seller]``.
The server closes a connection it has sent nothing to for 60 s; a client keeps a quiet one alive
with ``{"method": "ping"}``, answered by ``{"channel": "pong"}``. An ``{"channel": "error"}`` frame
is the server refusing something.

:class:`TradesStream` keeps one connection (the ``websockets`` asyncio client, as the tape
recorder does): pings after ``ping_s`` without a frame, a silence watchdog (``silence_s``, pongs
count), jittered exponential backoff on reconnect, frames bounded by ``max_frame_bytes``.
Every address found goes to ``on_users``; malformed frames are counted and skipped.
"""

from __future__ import annotations

import asyncio
import json
import logging
import random
import time
from dataclasses import dataclass
from typing import Callable, Sequence

import websockets
from websockets.asyncio.client import connect

from ..errors import InputError
from .shapes import trade_users

__all__ = ["WS_URL", "StreamParams", "TradesStream", "StreamStatus", "subscribe_message", "PING"]

log = logging.getLogger(__name__)

WS_URL = "wss://api.hyperliquid.xyz/ws"
PING = json.dumps({"method": "ping"})


def subscribe_message(coin: str) -> str:
    return json.dumps({"method": "subscribe", "subscription": {"type": "trades", "coin": coin}})


@dataclass(frozen=True)
class StreamParams:
    """Cadences and limits of the trades stream (docs/methodology.md, "Measured positions")."""

    #: send {"method": "ping"} after this long without any frame (the server's limit is 60 s)
    ping_s: float = 30.0
    #: no frame at all (trades, pong, ack) for this long: reconnect
    silence_s: float = 75.0
    open_timeout_s: float = 10.0
    subscribe_timeout_s: float = 10.0
    backoff_base_s: float = 1.0
    backoff_cap_s: float = 60.0
    backoff_jitter: float = 0.5
    #: a connection healthy this long resets the backoff
    stable_s: float = 60.0
    max_frame_bytes: int = 1 << 20

    def __post_init__(self) -> None:
        if not 0 < self.ping_s < self.silence_s:
            raise InputError(f"StreamParams needs 0 < ping_s ({self.ping_s:g}) < silence_s ({self.silence_s:g})")
        for name in ("open_timeout_s", "subscribe_timeout_s", "backoff_base_s", "backoff_cap_s", "stable_s"):
            if not getattr(self, name) > 0:
                raise InputError(f"StreamParams.{name} must be positive")
        if not 0 <= self.backoff_jitter <= 1 or self.max_frame_bytes < 1024:
            raise InputError("StreamParams: backoff_jitter in [0, 1], max_frame_bytes at least 1024")

    def backoff(self, attempt: int, rng: random.Random) -> float:
        base = min(self.backoff_cap_s, self.backoff_base_s * 2 ** min(attempt, 30))
        return base * (1.0 - self.backoff_jitter * rng.random())


@dataclass
class StreamStatus:
    connected: bool = False
    subscribed: tuple[str, ...] = ()
    frames: int = 0
    trades: int = 0
    users: int = 0
    malformed: int = 0
    pings: int = 0
    pongs: int = 0
    reconnects: int = 0
    last_error: str | None = None


class _Restart(Exception):
    pass


class TradesStream:
    """Subscribes to the trades of ``coins`` and hands every buyer and seller to ``on_users``."""

    def __init__(self, coins: Sequence[str], on_users: Callable[[list[str]], None], *, url: str = WS_URL,
                 params: StreamParams | None = None, clock: Callable[[], float] = time.monotonic,
                 rng: random.Random | None = None) -> None:
        if not coins:
            raise InputError("the trades stream needs at least one coin")
        self.coins = tuple(dict.fromkeys(coins))
        self.on_users = on_users
        self.url = url
        self.params = params or StreamParams()
        self._clock = clock
        self._rng = rng or random.Random()
        self.status = StreamStatus()

    async def run(self, stop: asyncio.Event) -> None:
        """Stay connected until ``stop`` is set; faults reconnect, never raise."""
        p, st = self.params, self.status
        attempt = 0
        while not stop.is_set():
            started: float | None = None
            try:
                async with connect(self.url, open_timeout=p.open_timeout_s, ping_interval=None, ping_timeout=None,
                                   close_timeout=2.0, max_size=p.max_frame_bytes, max_queue=64) as ws:
                    started = await self._session(ws, stop)
            except asyncio.CancelledError:
                raise
            except _Restart as exc:
                st.last_error = str(exc)
            except websockets.exceptions.ConnectionClosed as exc:
                st.last_error = (f"closed by the server ({exc.rcvd.code})" if exc.rcvd is not None
                                 else "connection lost (no close frame)")
            except (OSError, asyncio.TimeoutError, websockets.exceptions.WebSocketException) as exc:
                st.last_error = f"{type(exc).__name__}: {str(exc)[:200]}"
            except Exception as exc:  # noqa: BLE001 - discovery must never stop the tracker
                log.exception("measured: trades stream failed unexpectedly")
                st.last_error = f"{type(exc).__name__}: {str(exc)[:200]}"
            finally:
                st.connected = False
                st.subscribed = ()
            if stop.is_set():
                break
            if started is not None and self._clock() - started >= p.stable_s:
                attempt = 0
            st.reconnects += 1
            delay = p.backoff(attempt, self._rng)
            attempt += 1
            try:
                await asyncio.wait_for(stop.wait(), delay)
            except asyncio.TimeoutError:
                pass

    async def _session(self, ws, stop: asyncio.Event) -> float:
        p, st = self.params, self.status
        for coin in self.coins:
            await ws.send(subscribe_message(coin))
        opened = last_frame = self._clock()
        pinged_at: float | None = None
        subscribed: list[str] = []
        stopper = asyncio.ensure_future(stop.wait())
        recv: asyncio.Future | None = None
        try:
            while not stop.is_set():
                now = self._clock()
                if len(subscribed) < len(self.coins) and now - opened >= p.subscribe_timeout_s:
                    raise _Restart(f"no subscription acknowledgement within {p.subscribe_timeout_s:g} s")
                if now - last_frame >= p.silence_s:
                    raise _Restart(f"silence watchdog: no frame for {now - last_frame:.0f} s")
                next_ping = (last_frame if pinged_at is None or pinged_at < last_frame else pinged_at) + p.ping_s
                deadline = min(next_ping, last_frame + p.silence_s)
                if len(subscribed) < len(self.coins):
                    deadline = min(deadline, opened + p.subscribe_timeout_s)
                recv = asyncio.ensure_future(ws.recv())
                done, _ = await asyncio.wait({recv, stopper}, timeout=max(0.0, deadline - now),
                                             return_when=asyncio.FIRST_COMPLETED)
                if recv not in done:
                    recv.cancel()
                    await asyncio.gather(recv, return_exceptions=True)
                    if stop.is_set():
                        break
                    if self._clock() >= next_ping:
                        await ws.send(PING)
                        st.pings += 1
                        pinged_at = self._clock()
                    continue
                raw = recv.result()
                last_frame = self._clock()
                st.frames += 1
                coin = self._frame(raw)
                if coin is not None and coin not in subscribed:
                    subscribed.append(coin)
                    st.subscribed = tuple(subscribed)
                    st.connected = True
                    st.last_error = None
        finally:
            stopper.cancel()
            if recv is not None and not recv.done():
                recv.cancel()
            if recv is not None:
                recv.add_done_callback(lambda f: None if f.cancelled() else f.exception())  # retrieved, never logged
        return opened

    def _frame(self, raw: str | bytes) -> str | None:
        """Handle one frame; returns the coin a subscription acknowledgement names."""
        st = self.status
        text = raw.decode("utf-8", "replace") if isinstance(raw, bytes) else raw
        if not text.startswith("{"):
            return None  # the server's greeting ("Websocket connection established.") and other plain text
        try:
            msg = json.loads(text)
        except ValueError:
            st.malformed += 1
            return None
        channel = msg.get("channel") if isinstance(msg, dict) else None
        data = msg.get("data") if isinstance(msg, dict) else None
        if channel == "trades":
            users, bad = trade_users(data)
            st.malformed += bad
            st.trades += len(data) if isinstance(data, list) else 0
            if users:
                st.users += len(users)
                self.on_users(users)
            return None
        if channel == "pong":
            st.pongs += 1
            return None
        if channel == "subscriptionResponse":
            sub = data.get("subscription") if isinstance(data, dict) else None
            coin = sub.get("coin") if isinstance(sub, dict) and sub.get("type") == "trades" else None
            return coin if coin in self.coins else None
        if channel == "error":
            raise _Restart(f"the server refused: {str(data)[:200]}")
        st.malformed += 1
        return None
