"""Each venue's public liquidation feed: URL, subscribe and keepalive messages, and the frame parser.

Pure: nothing here opens a socket (``analysis.tape.recorder`` does). Each :class:`VenueFeed`
turns one text frame into :class:`Frame` (normalised :class:`LiquidationEvent` plus what the
connection needs to know: a pong, a subscribe acknowledgement, a venue error). A frame that is
not what the venue documents is :class:`Malformed`, never an exception the caller must guess.

The venue contracts (docs cited in ``tests/fixtures/tape/SOURCES.md``):

========  ===========================================  ==========================================
venue     frame                                        side liquidated
========  ===========================================  ==========================================
bybit     ``{"topic","type","ts","data":[{T,s,S,v,p}]}``  ``S`` is the *position* side: ``Buy`` =
                                                       a long was liquidated
binance   ``{"e":"forceOrder","E","o":{s,S,q,p,ap,z,T}}``  ``S`` is the liquidation *order* side:
                                                       ``SELL`` closes a long
okx       ``{"arg","data":[{instId,details:[{side,posSide,  ``posSide`` long/short; in net mode
          bkPx,sz,ts}]}]}``                            (``net``) the order side: ``sell`` = long
========  ===========================================  ==========================================

Quantities: Bybit ``v`` and Binance ``z``/``q`` are in base coin; OKX ``sz`` is in contracts and is
multiplied by the instrument's ``ctVal`` (coin per contract), which the caller supplies.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Sequence

from ..symbols import parse_symbol
from .events import FEED_SAMPLED, LiquidationEvent, Side

__all__ = [
    "VENUES", "DEFAULT_URLS", "Frame", "Malformed", "VenueFeed", "BybitFeed", "BinanceFeed", "OkxFeed",
    "feed_for", "OKX_CONTRACT_VALUES", "BYBIT_ARGS_PER_REQUEST",
]

VENUES = ("bybit", "binance", "okx")

#: the documented public endpoints (each overridable, for tests and self-hosted relays)
DEFAULT_URLS: dict[str, str] = {
    "bybit": "wss://stream.bybit.com/v5/public/linear",
    # USDⓈ-M market streams moved to routed paths in 2026; forceOrder is "market" data. The legacy
    # wss://fstream.binance.com/ws/... accepts the connection but no longer delivers these streams.
    "binance": "wss://fstream.binance.com/market/ws/!forceOrder@arr",
    "okx": "wss://ws.okx.com:8443/ws/v5/public",
}

#: Bybit: topics per subscribe request (the documented limit is 21,000 characters of args per
#: connection and 10 args per request on spot; linear has none, 10 keeps every request small)
BYBIT_ARGS_PER_REQUEST = 10

#: OKX's published contract sizes (coin per contract) for the instruments whose ``ctVal`` is
#: taken from this table when the live instrument list cannot be read; any other instrument
#: without a loaded ``ctVal`` is not converted (its events are counted, not guessed)
OKX_CONTRACT_VALUES: dict[str, float] = {"BTC-USDT-SWAP": 0.01, "ETH-USDT-SWAP": 0.1}

_MAX_TS = 2**53  # larger is not a millisecond time any venue sends
_MAX_DETAIL_ITEMS = 10_000  # per frame; a frame is already bounded by the socket's max size


class Malformed(ValueError):
    """A frame (or one item of it) that does not match the venue's documented shape."""


@dataclass
class Frame:
    """What one text frame carried."""

    events: list[LiquidationEvent] = field(default_factory=list)
    pong: bool = False
    subscribed: bool = False
    error: str | None = None  # the venue refused something (a subscribe), in its words
    notice: str | None = None  # informational (OKX 64008: service upgrade soon)
    bad_items: int = 0  # items inside a valid frame that were malformed and skipped
    unconverted: dict[str, int] = field(default_factory=dict)  # OKX instId -> events without ctVal


def _number(value: Any, what: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float, str)) or (isinstance(value, str) and len(value) > 40):
        raise Malformed(f"{what} is not a number")
    try:
        out = float(value)
    except ValueError:
        raise Malformed(f"{what} is not a number") from None
    if not math.isfinite(out):
        raise Malformed(f"{what} is not finite")
    return out


def _positive(value: Any, what: str) -> float:
    out = _number(value, what)
    if out <= 0:
        raise Malformed(f"{what} must be positive")
    return out


def _time_ms(value: Any, what: str) -> int:
    out = _number(value, what)
    if out <= 0 or out >= _MAX_TS or out != int(out):
        raise Malformed(f"{what} is not a millisecond time")
    return int(out)


def _text(value: Any, what: str, limit: int = 64) -> str:
    if not isinstance(value, str) or not value or len(value) > limit:
        raise Malformed(f"{what} is not a short string")
    return value


def _decode(text: str | bytes) -> Any:
    if isinstance(text, bytes):
        try:
            text = text.decode("utf-8")
        except UnicodeDecodeError:
            raise Malformed("binary frame that is not UTF-8") from None
    try:
        return json.loads(text)
    except (ValueError, RecursionError):
        raise Malformed("not valid JSON") from None


class _Keys:
    """Makes keys unique inside one frame: the n-th identical tuple gets ``#n`` (stable on replay)."""

    def __init__(self) -> None:
        self.seen: dict[str, int] = {}

    def __call__(self, base: str) -> str:
        n = self.seen.get(base, 0)
        self.seen[base] = n + 1
        return base if n == 0 else f"{base}#{n}"


class VenueFeed:
    """One venue's feed contract; subclasses fill in the details."""

    name: str = ""
    #: whether the venue acknowledges the subscription (else subscribed = connected)
    acknowledges: bool = True
    #: ping only after this long without any frame (OKX), else on a fixed cadence
    ping_when_idle: bool = False

    def __init__(self, symbols: Sequence[str]) -> None:
        self.symbols = tuple(symbols)
        self.sampled = FEED_SAMPLED[self.name]

    def subscribe_messages(self) -> list[str]:
        """Text frames to send once connected."""
        return []

    def ping_message(self) -> str | None:
        """The app-level ping, or None for a protocol-level ping frame."""
        return None

    def parse(self, text: str | bytes) -> Frame:
        """One frame -> :class:`Frame`; raise :class:`Malformed` for a frame not in the documented shape."""
        raise NotImplementedError

    def _event(self, symbol: str, time_ms: int, side: Side, price: float, qty: float, key: str) -> LiquidationEvent:
        return LiquidationEvent(self.name, symbol, time_ms, side, price, qty, price * qty, self.sampled, key)


class BybitFeed(VenueFeed):
    """Bybit v5 public linear, ``allLiquidation.{symbol}`` (complete; pushed every 500 ms)."""

    name = "bybit"

    def __init__(self, symbols: Sequence[str]) -> None:
        super().__init__(symbols)
        self._wanted = frozenset(symbols)

    def subscribe_messages(self) -> list[str]:
        topics = [f"allLiquidation.{s}" for s in self.symbols]
        return [
            json.dumps({"op": "subscribe", "args": topics[i : i + BYBIT_ARGS_PER_REQUEST]})
            for i in range(0, len(topics), BYBIT_ARGS_PER_REQUEST)
        ]

    def ping_message(self) -> str:
        return '{"op":"ping"}'

    def parse(self, text: str | bytes) -> Frame:
        msg = _decode(text)
        if not isinstance(msg, dict):
            raise Malformed("not a JSON object")
        op = msg.get("op")
        if op is not None:  # a response to our ping or subscribe
            if msg.get("success") is False:
                return Frame(error=f"{op}: {str(msg.get('ret_msg', ''))[:200]}")
            if op == "ping" or msg.get("ret_msg") == "pong" or op == "pong":
                return Frame(pong=True)
            if op == "subscribe":
                return Frame(subscribed=True)
            return Frame()
        topic = msg.get("topic")
        if not isinstance(topic, str) or not topic.startswith("allLiquidation."):
            raise Malformed("neither a response nor an allLiquidation frame")
        data = msg.get("data")
        if not isinstance(data, list):
            raise Malformed("data is not a list")
        out = Frame()
        keys = _Keys()
        for item in data[:_MAX_DETAIL_ITEMS]:
            try:
                if not isinstance(item, dict):
                    raise Malformed("item is not an object")
                sym = _text(item.get("s"), "s")
                if sym not in self._wanted:
                    continue
                side_raw = item.get("S")
                if side_raw == "Buy":
                    side: Side = "long"  # documented: a Buy update means a long position was liquidated
                elif side_raw == "Sell":
                    side = "short"
                else:
                    raise Malformed("S is neither Buy nor Sell")
                t = _time_ms(item.get("T"), "T")
                qty = _positive(item.get("v"), "v")
                price = _positive(item.get("p"), "p")
            except Malformed:
                out.bad_items += 1
                continue
            key = keys(f"{sym}:{t}:{side_raw}:{item['v']}:{item['p']}")
            out.events.append(self._event(sym, t, side, price, qty, key))
        out.bad_items += max(0, len(data) - _MAX_DETAIL_ITEMS)
        return out


class BinanceFeed(VenueFeed):
    """Binance USDⓈ-M ``!forceOrder@arr`` (sampled: the latest liquidation per symbol per 1000 ms)."""

    name = "binance"
    acknowledges = False  # the stream is in the URL path: connected means subscribed

    def __init__(self, symbols: Sequence[str]) -> None:
        super().__init__(symbols)
        self._wanted = frozenset(symbols)

    def parse(self, text: str | bytes) -> Frame:
        msg = _decode(text)
        if isinstance(msg, dict) and "stream" in msg and "data" in msg:  # combined-stream wrapper
            msg = msg["data"]
        if isinstance(msg, dict) and "result" in msg and "id" in msg:  # a reply to a JSON request
            return Frame()
        if isinstance(msg, list):  # tolerated: an array of events
            items = msg[:_MAX_DETAIL_ITEMS]
        elif isinstance(msg, dict):
            items = [msg]
        else:
            raise Malformed("not a JSON object")
        out = Frame()
        keys = _Keys()
        for ev in items:
            try:
                if not isinstance(ev, dict) or ev.get("e") != "forceOrder":
                    raise Malformed("not a forceOrder event")
                o = ev.get("o")
                if not isinstance(o, dict):
                    raise Malformed("o is not an object")
                sym = _text(o.get("s"), "o.s")
                if sym not in self._wanted:
                    continue
                side_raw = o.get("S")
                if side_raw == "SELL":
                    side: Side = "long"  # the liquidation order sells: a long was closed
                elif side_raw == "BUY":
                    side = "short"
                else:
                    raise Malformed("o.S is neither BUY nor SELL")
                t = _time_ms(o.get("T", ev.get("E")), "o.T")
                filled = _number(o.get("z", 0), "o.z")
                avg = _number(o.get("ap", 0), "o.ap")
                qty = filled if filled > 0 else _positive(o.get("q"), "o.q")
                price = avg if avg > 0 else _positive(o.get("p"), "o.p")
                if qty <= 0 or price <= 0:
                    raise Malformed("non-positive size or price")
            except Malformed:
                out.bad_items += 1
                continue
            key = keys(f"{sym}:{t}:{side_raw}:{o.get('z', o.get('q'))}:{o.get('ap', o.get('p'))}")
            out.events.append(self._event(sym, t, side, price, qty, key))
        if not out.events and out.bad_items == len(items) and items:
            raise Malformed("no forceOrder event in the frame")
        return out


class OkxFeed(VenueFeed):
    """OKX ``liquidation-orders`` for ``SWAP`` (sampled: "doesn't represent the total number")."""

    name = "okx"
    ping_when_idle = True  # documented: send "ping" when nothing arrived for N < 30 s

    def __init__(self, symbols: Sequence[str], contract_values: Callable[[], Mapping[str, float]] = dict) -> None:
        super().__init__(symbols)
        self._inst = {parse_symbol(s).okx_swap: s for s in symbols}
        self._ct = contract_values

    @property
    def instruments(self) -> dict[str, str]:
        """OKX instrument id -> canonical symbol."""
        return dict(self._inst)

    def subscribe_messages(self) -> list[str]:
        return [json.dumps({"op": "subscribe", "args": [{"channel": "liquidation-orders", "instType": "SWAP"}]})]

    def ping_message(self) -> str:
        return "ping"

    def parse(self, text: str | bytes) -> Frame:
        if text == "pong" or text == b"pong":
            return Frame(pong=True)
        msg = _decode(text)
        if not isinstance(msg, dict):
            raise Malformed("not a JSON object")
        event = msg.get("event")
        if event is not None:
            if event == "subscribe":
                return Frame(subscribed=True)
            if event == "error":
                return Frame(error=f"{str(msg.get('code', ''))[:10]} {str(msg.get('msg', ''))[:200]}".strip())
            if event == "notice":
                return Frame(notice=f"{str(msg.get('code', ''))[:10]} {str(msg.get('msg', ''))[:200]}".strip())
            return Frame()
        arg = msg.get("arg")
        data = msg.get("data")
        if not isinstance(arg, dict) or arg.get("channel") != "liquidation-orders" or not isinstance(data, list):
            raise Malformed("neither an event nor a liquidation-orders push")
        out = Frame()
        keys = _Keys()
        ct = self._ct()
        seen = 0
        for inst in data:
            if seen >= _MAX_DETAIL_ITEMS:
                out.bad_items += 1
                break
            if not isinstance(inst, dict) or not isinstance(inst.get("details"), list):
                out.bad_items += 1
                continue
            inst_id = inst.get("instId")
            sym = self._inst.get(inst_id) if isinstance(inst_id, str) else None
            if sym is None:
                continue  # another swap of the all-SWAP channel
            for d in inst["details"]:
                seen += 1
                if seen > _MAX_DETAIL_ITEMS:
                    out.bad_items += 1
                    break
                try:
                    if not isinstance(d, dict):
                        raise Malformed("detail is not an object")
                    pos = d.get("posSide")
                    order_side = d.get("side")
                    if pos == "long" or pos == "short":
                        side: Side = pos
                    elif pos in ("net", "", None) and order_side in ("buy", "sell"):
                        side = "long" if order_side == "sell" else "short"  # net mode: a sell closes a long
                    else:
                        raise Malformed("posSide/side not documented values")
                    t = _time_ms(d.get("ts"), "ts")
                    contracts = _positive(d.get("sz"), "sz")
                    price = _positive(d.get("bkPx"), "bkPx")
                except Malformed:
                    out.bad_items += 1
                    continue
                ct_val = ct.get(inst_id)
                if ct_val is None:
                    out.unconverted[inst_id] = out.unconverted.get(inst_id, 0) + 1
                    continue
                key = keys(f"{inst_id}:{t}:{order_side}:{pos}:{d['sz']}:{d['bkPx']}")
                out.events.append(self._event(sym, t, side, price, contracts * ct_val, key))
        return out


def feed_for(venue: str, symbols: Sequence[str], contract_values: Callable[[], Mapping[str, float]] = dict) -> VenueFeed:
    """The :class:`VenueFeed` of a venue name."""
    if venue == "bybit":
        return BybitFeed(symbols)
    if venue == "binance":
        return BinanceFeed(symbols)
    if venue == "okx":
        return OkxFeed(symbols, contract_values)
    raise ValueError(f"no liquidation feed for venue {venue!r}")
