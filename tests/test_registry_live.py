"""``--source live`` wiring: venues by name, one shared cache, CoinGlass only with a key, closing."""

from __future__ import annotations

import httpx
import pytest

from analysis.sources import registry
from analysis.sources.binance import BinanceSource
from analysis.sources.registry import LIVE_VENUES, aclose_sources, live_sources, make_sources
from bot.cli import build_parser, main


def offline():
    return httpx.MockTransport(lambda r: httpx.Response(503))


async def test_live_builds_every_available_venue_on_one_cache(tmp_path):
    sources = make_sources("live", cache_dir=tmp_path, transport=offline())
    assert isinstance(sources["binance"], BinanceSource)
    assert set(sources) <= set(LIVE_VENUES) and "coinglass" not in sources
    caches = {id(getattr(s, "cache", None)) for s in sources.values()}
    assert len(caches) == 1 and (tmp_path / "bars.sqlite3").exists()
    await aclose_sources(sources)
    assert sources["binance"].client.closed


async def test_live_default_cache_follows_env(tmp_path, monkeypatch):
    monkeypatch.setenv("LIQMAP_CACHE_DIR", str(tmp_path / "c"))
    sources = make_sources("live", transport=offline())
    assert (tmp_path / "c" / "bars.sqlite3").exists()
    await aclose_sources(sources)


async def test_missing_venue_module_is_skipped(monkeypatch, tmp_path):
    monkeypatch.setitem(registry.LIVE_VENUES, "nowhere", ("analysis.sources.does_not_exist", "X"))
    from analysis.sources.cache import BarCache

    sources = live_sources(transport=offline(), cache=BarCache(None))
    assert "nowhere" not in sources and "binance" in sources
    await aclose_sources(sources)


async def test_coinglass_only_with_a_key(tmp_path):
    pytest.importorskip("analysis.sources.coinglass")
    sources = make_sources("live", cache_dir=tmp_path, transport=offline(), coinglass_api_key="k" * 32)
    assert "coinglass" in sources
    await aclose_sources(sources)


async def test_aclose_sources_survives_a_failing_close():
    closed = []

    class A:
        async def aclose(self):
            raise RuntimeError("boom")

    class B:
        async def aclose(self):
            closed.append("b")

    await aclose_sources({"a": A(), "b": B(), "c": object()})
    assert closed == ["b"]


def test_report_defaults_to_live_and_sample_still_works(tmp_path, monkeypatch):
    from bot.settings import load_settings

    args = build_parser().parse_args(["report", "--out", str(tmp_path)])
    assert args.source is None  # the settings decide: LIQMAP_SOURCE, else live
    monkeypatch.delenv("LIQMAP_SOURCE", raising=False)
    assert load_settings(tmp_path / "no.env").sources.source == "live"
    assert main(["report", "--source", "sample", "--window", "1d", "--out", str(tmp_path)]) == 0


def test_report_cli_closes_its_sources(monkeypatch, tmp_path, capsys):
    closed = []

    class Down:
        name = "binance"

        async def symbols(self):
            return ["BTCUSDT"]

        async def bars(self, symbol, window):
            from analysis.errors import SourceError
            raise SourceError("binance", "/fapi/v1/klines", "HTTP 503: down")

        async def aclose(self):
            closed.append(True)

    monkeypatch.setattr(registry, "make_sources", lambda spec, **kw: {"binance": Down()})
    assert main(["report", "--out", str(tmp_path)]) == 2
    assert closed == [True]
    assert "HTTP 503" in capsys.readouterr().err
