"""Symbol spelling: turn what a user types into a canonical ``BASEQUOTE`` pair, safely.

Accepted: ``BTC``, ``btc``, ``BTCUSDT``, ``BTC/USDT``, ``BTC-USDT``, ``BTC-USDT-SWAP``,
``BTCUSDT.P``. A bare base asset means its USDT perpetual. Input is validated against a strict
pattern before it can reach a URL, a query or a template. Input is NFKC-normalised first, so
fullwidth letters and the Kelvin sign (U+212A, a look-alike of K) become ASCII; the result must be
ASCII, so invisible characters (zero-width joiners, direction marks) are refused, never kept.
"""

from __future__ import annotations

import difflib
import re
import unicodedata
from dataclasses import dataclass
from typing import Iterable

from .errors import InputError

__all__ = ["Pair", "parse_symbol", "suggest", "QUOTES"]

QUOTES = ("USDT", "USDC", "USD")
# re.ASCII: without it IGNORECASE lets U+212A (Kelvin) and U+017F (long s) match [A-Za-z].
_ALLOWED = re.compile(r"^[A-Za-z0-9]{1,20}([/\-_:][A-Za-z0-9]{2,10})?(-SWAP|\.P|-PERP)?$", re.IGNORECASE | re.ASCII)


@dataclass(frozen=True)
class Pair:
    """A perpetual's base and quote asset, upper case."""

    base: str
    quote: str

    @property
    def symbol(self) -> str:
        """Binance/Bybit spelling: ``BTCUSDT``."""
        return f"{self.base}{self.quote}"

    @property
    def okx_swap(self) -> str:
        """OKX instrument id: ``BTC-USDT-SWAP``."""
        return f"{self.base}-{self.quote}-SWAP"

    def __str__(self) -> str:
        return self.symbol


def parse_symbol(text: str) -> Pair:
    """Parse user input into a :class:`Pair`; raise :class:`InputError` for anything else."""
    raw = unicodedata.normalize("NFKC", str(text)).strip()
    if not raw or not raw.isascii() or not _ALLOWED.match(raw):
        shown = ascii(raw[:24])  # escapes direction marks and invisibles: the message reads as typed
        raise InputError(f"{shown} is not a symbol; use a ticker like BTC, BTCUSDT, BTC/USDT or BTC-USDT-SWAP")
    s = raw.upper()
    for suffix in ("-SWAP", ".P", "-PERP"):
        if s.endswith(suffix):
            s = s[: -len(suffix)]
    parts = re.split(r"[/\-_:]", s)
    if len(parts) == 2:
        base, quote = parts
    else:
        base, quote = parts[0], "USDT"
        for q in QUOTES:
            if s.endswith(q) and len(s) > len(q):
                base, quote = s[: -len(q)], q
                break
    if quote not in QUOTES:
        raise InputError(f"unsupported quote asset {quote!r} in {raw!r}; liqmap maps {', '.join(QUOTES)} perpetuals")
    return Pair(base, quote)


def suggest(wanted: str, known: Iterable[str], n: int = 3) -> list[str]:
    """Close spellings of ``wanted`` among ``known`` symbols (for 'did you mean')."""
    known = list(known)
    w = wanted.upper()
    hits = difflib.get_close_matches(w, known, n=n, cutoff=0.6)
    if len(hits) < n:
        hits += [k for k in known if k.startswith(w[:3]) and k not in hits][: n - len(hits)]
    return hits
