"""Turn a ``--source`` spec into the named sources a report service uses.

Specs:

* ``live`` -- the public exchange APIs (binance, plus bybit and okx), sharing one on-disk
  :class:`~analysis.sources.cache.BarCache`; ``coinglass`` joins when an API key is given.
  Venue modules are imported by name from :data:`LIVE_VENUES`, so a missing one is skipped.
* ``recorded:DIR`` -- replay of a ``liqmap record`` directory, offline, at the recording's time.
* ``sample`` -- the bundled real Binance BTCUSDT 5m data; or a path to a CSV file in that format.

Live and recorded sources hold HTTP connections: close them with :func:`aclose_sources`.
:func:`record` makes a ``recorded:DIR`` directory. Venues come from :mod:`analysis.venues`.
"""

from __future__ import annotations

import importlib
import logging
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .. import venues as _venues
from ..errors import InputError, LiqmapError, SourceError

if TYPE_CHECKING:
    import httpx

    from .base import Source

__all__ = ["make_sources", "live_sources", "recorded_sources", "aclose_sources", "record", "SOURCE_HELP", "LIVE_VENUES",
           "Progress"]

log = logging.getLogger(__name__)

#: an optional progress callback: receives one short line per slow step (the CLI shows it on a terminal)
Progress = Callable[[str], None]

SOURCE_HELP = (
    f"live ({', '.join(_venues.display_name(v) for v in _venues.LIVE_VENUES)} public APIs), "
    "recorded:DIR (replay of liqmap record), sample (bundled recorded Binance data) or a path to a CSV file"
)

#: venue -> (module, class) of the live bar sources, imported by name so a missing one is skipped.
LIVE_VENUES: dict[str, tuple[str, str]] = {
    v.name: (v.module, v.cls) for v in _venues.VENUES if v.kind == "estimated"
}


def _venue_class(venue: str) -> type | None:
    module, cls = LIVE_VENUES[venue]
    try:
        return getattr(importlib.import_module(module), cls)
    except (ImportError, AttributeError) as exc:
        log.warning("live venue %s unavailable (%s)", venue, exc)
        return None


def live_sources(
    *,
    cache: Any = None,
    transport: httpx.AsyncBaseTransport | None = None,
    recorder: Any = None,
    now_ms: Callable[[], int] | None = None,
    venues: tuple[str, ...] | None = None,
    coinglass_api_key: str | None = None,
    progress: Progress | None = None,
) -> dict[str, Source]:
    """One source per live venue, sharing ``cache`` (default: the on-disk cache) and ``transport``;
    ``progress`` hears of long waits (rate limits, retries)."""
    from .cache import BarCache, default_cache_path

    if cache is None:
        cache = BarCache(default_cache_path())
    kw: dict[str, Any] = {"cache": cache, "transport": transport, "recorder": recorder}
    if now_ms is not None:
        kw["now_ms"] = now_ms
    out: dict[str, Source] = {}
    for venue in venues or tuple(LIVE_VENUES):
        if venue not in LIVE_VENUES:
            continue
        cls = _venue_class(venue)
        if cls is not None:
            out[venue] = cls(**kw)
    if coinglass_api_key and (venues is None or "coinglass" in venues):
        cg = _coinglass(coinglass_api_key, out.get("binance"), kw)
        if cg is not None:
            out["coinglass"] = cg
    if not out:
        raise InputError("no live venue is available in this installation")
    if progress is not None:
        from .http import VenueClient

        for src in out.values():
            client = getattr(src, "client", None)
            if isinstance(client, VenueClient):
                client.progress = progress
    return out


def _coinglass(key: str, binance: Any, kw: Mapping[str, Any]) -> Source | None:
    """CoinGlass's own map, priced by Binance's mark price (CoinGlass sends no current price)."""
    try:
        venue = _venues.VENUE_BY_NAME["coinglass"]
        cls = getattr(importlib.import_module(venue.module), venue.cls)
    except (ImportError, AttributeError) as exc:
        log.warning("coinglass source unavailable (%s)", exc)
        return None
    if binance is None or not hasattr(binance, "mark_price"):
        log.warning("coinglass needs the binance source for the current price; skipped")
        return None
    extra = {k: kw[k] for k in ("transport", "recorder", "now_ms") if k in kw}
    return cls(key, price=binance.mark_price, **extra)


def recorded_sources(directory: str | Path) -> dict[str, Source]:
    """Sources that replay a ``liqmap record`` directory offline, at the recording's time."""
    from .cache import BarCache
    from .recorded import ReplayTransport, load_manifest

    manifest = load_manifest(directory)
    venues = tuple(v for v in manifest.venues if v in LIVE_VENUES)
    if not venues:
        raise InputError(f"the recording in {directory} holds no responses of a replayable venue ({', '.join(LIVE_VENUES)})")
    now = manifest.now_ms
    return live_sources(cache=BarCache(None), transport=ReplayTransport(manifest), now_ms=lambda: now, venues=venues)


async def aclose_sources(sources: Mapping[str, Any]) -> None:
    """Close every source that holds connections (those with an ``aclose``)."""
    for src in sources.values():
        close = getattr(src, "aclose", None)
        if close is not None:
            try:
                await close()
            except Exception:  # closing must not hide the real outcome
                log.exception("closing source %s failed", getattr(src, "name", src))


def make_sources(
    spec: str,
    *,
    cache_dir: str | Path | None = None,
    coinglass_api_key: str | None = None,
    transport: httpx.AsyncBaseTransport | None = None,
    progress: Progress | None = None,
) -> dict[str, Source]:
    """The venue -> source mapping for a ``--source`` spec; InputError for an unknown spec.

    ``cache_dir`` holds the live bar cache (``bars.sqlite3``; default ``$LIQMAP_CACHE_DIR`` or
    ``~/.cache/liqmap``); ``transport`` replaces the network (tests).
    """
    from .csvfile import CsvSource, SampleSource

    spec = str(spec).strip()
    if spec == "live":
        from .cache import BarCache, default_cache_path

        cache = BarCache(Path(cache_dir) / "bars.sqlite3" if cache_dir else default_cache_path())
        return live_sources(cache=cache, transport=transport, coinglass_api_key=coinglass_api_key, progress=progress)
    if spec.startswith("recorded:"):
        directory = spec[len("recorded:"):].strip()
        if not directory:
            raise InputError("recorded: needs a directory, e.g. --source recorded:./rec")
        return recorded_sources(directory)
    if spec == "sample":
        src: Source = SampleSource()
        return {src.name: src}
    path = Path(spec)
    if path.suffix.lower() in (".csv", ".gz") or path.exists():
        if not path.is_file():
            raise InputError(f"no such file: {path}")
        src = CsvSource(path)
        return {src.name: src}
    raise InputError(f"unknown source {spec[:40]!r}; use {SOURCE_HELP}")


async def record(
    symbol: str, window: str, exchange: str, out: str | Path, *, transport: httpx.AsyncBaseTransport | None = None,
    now_ms: int | None = None, progress: Progress | None = None,
) -> list[str]:
    """Fetch ``symbol``'s bars for ``window`` from the live venues, recording every response in ``out``.

    Each venue starts from an empty in-memory cache, so the recording holds every page a cold
    report needs; replay with ``--source recorded:OUT``. ``transport``/``now_ms`` are for tests. A venue that fails is named in the
    manifest and the returned lines; only when all fail is it an error. Returns lines to print.
    ``progress`` hears of each venue's fetch and of long waits.
    """
    from ..symbols import parse_symbol
    from ..windows import parse_window
    from .cache import BarCache
    from .recorded import Recorder

    pair = parse_symbol(symbol)
    win = parse_window(window)
    key = str(exchange).strip().lower()
    if key != "all" and key not in LIVE_VENUES:
        raise InputError(f"unknown exchange {str(exchange)[:20]!r}; choose all or one of {', '.join(LIVE_VENUES)}")
    rec = Recorder(out, now_ms=now_ms, autosave=False)
    now = rec.now_ms
    saved = False
    try:  # any failure (every venue down, an exception, a cancel) removes what was written: a retry works
        sources = live_sources(cache=BarCache(None), transport=transport, recorder=rec, now_ms=lambda: now,
                               venues=None if key == "all" else (key,), progress=progress)
        lines, failed, done = [], {}, []
        try:
            for venue, src in sources.items():
                if progress is not None:
                    progress(f"fetching {venue} {pair.symbol} {win.label}")
                try:
                    bars = await src.bars(pair.symbol, win)
                except LiqmapError as exc:
                    failed[venue] = str(exc)
                    lines.append(f"{venue}: failed: {exc}")
                    continue
                done.append(venue)
                lines.append(f"{venue}: {len(bars)} {bars.interval} bars of {pair.symbol}")
                tiers = getattr(src, "margin_tiers", None)
                if tiers is not None:  # the venue's margin tiers too, so a replay prices levels as live did
                    table = await tiers(pair.symbol)
                    lines.append(f"{venue}: margin tiers: {table.name} ({table.origin})")
        finally:
            await aclose_sources(sources)
        if not done:
            raise SourceError("all", "record", "every venue failed (" + "; ".join(f"{v}: {why}" for v, why in failed.items())
                              + f"); nothing was kept in {rec.dir}")
        rec.meta = {"symbol": pair.symbol, "window": win.label, "exchange": key, "venues": done, "failed": failed}
        rec.save()
        saved = True
    finally:
        if not saved:
            rec.discard()
    lines.append(f"recorded {len(rec.responses)} responses in {rec.dir}; replay with: "
                 f"liqmap report --source recorded:{rec.dir} --symbol {pair.symbol} --window {win.label}")
    return lines
