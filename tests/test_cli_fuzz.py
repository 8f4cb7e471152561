"""A bounded fuzz of the ``liqmap`` CLI, in process and offline.

Every run must end with exit 0, 2 (bad input) or 75 (try again later); a non-zero run prints
exactly one ``error:`` line and never "unexpected internal error"; a run that does not finish
within the guard fails the test as a hang. Inputs: ``--source sample``, generated CSV files,
generated recording directories, generated settings files and generated options.
``LIQMAP_FUZZ_EXAMPLES`` raises the number of examples (default 150).
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import tempfile
import threading
from collections import Counter
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bot.cli import main

EXAMPLES = int(os.environ.get("LIQMAP_FUZZ_EXAMPLES", "150"))
HANG_GUARD_S = 120.0  # far above any honest run on a loaded machine; only a hang reaches it
STATS: Counter[str] = Counter()

ENV_NAMES = (
    "DISCORD_TOKEN", "DEV_GUILD_ID", "DATABASE_URL", "LIQMAP_SOURCE", "COINGLASS_API_KEY", "LIQMAP_CACHE_DIR",
    "LIQMAP_DAILY_GRACE_MINUTES", "LIQMAP_DELIVERY_RETENTION_DAYS", "LIQMAP_WATCH_INTERVAL_MINUTES", "LIQMAP_GUILD_SUBSCRIPTION_CAP",
    "LIQMAP_REPORT_TTL_SECONDS", "LIQMAP_REPORT_CACHE_MB", "LIQMAP_COOLDOWN_USES", "LIQMAP_COOLDOWN_SECONDS",
)

# -- pieces ------------------------------------------------------------------------------------------

texts = st.text(alphabet=st.characters(codec="utf-8", exclude_categories=("Cs",)), max_size=12)
symbols = st.one_of(st.sampled_from(["BTC", "btc", "BTCUSDT", "BTC/USDT", "BTC-USDT-SWAP", "ETH", "\u212aAS",
                                     "\uff22\uff34\uff23", "BT\u200dC", "<@1>", "BTC/EUR", ""]), texts)
windows = st.one_of(st.sampled_from(["1d", "7d", "30d", "2d", "", "7D"]), texts)
exchanges = st.one_of(st.sampled_from(["all", "binance", "bybit", "kraken", "coinglass", "ALL"]), texts)
numbers = st.one_of(
    st.integers(-10**6, 10**6).map(str), st.floats(allow_nan=True, allow_infinity=True).map(repr),
    st.sampled_from(["nan", "inf", "-inf", "none", "None", "", "1e308", "1e999", "0", "-0", "1,2", "5,10,25", "0x10"]),
    st.integers(0, 420).map(lambda n: "9" * n),
    texts,
)
PARAM_KEYS = ["leverage", "leverage_weights", "leverage_spread", "levels_per_hour", "leverage_nodes", "entry_points",
              "side_model", "taker_net_scale", "oi_units", "holding_days", "oi_scale", "open_bar_sweep",
              "typical_position_usd", "bin_pct", "bin_width", "min_bars", "max_gap_bars", "margin_table", "nonsense"]
overrides = st.lists(st.tuples(st.sampled_from(PARAM_KEYS), numbers).map(lambda kv: f"{kv[0]}={kv[1]}"), max_size=3)


cells = numbers


@st.composite
def csv_files(draw) -> bytes:
    """A small bars CSV: mostly well-formed rows with a few mutated cells, headers or bytes."""
    header = draw(st.sampled_from([
        "timestamp,open,high,low,close,oi_usd", "timestamp,open,high,low,close", "time,open,high,low,close,oi_usd,volume",
        "timestamp,price_open,price_high,price_low,price_close,oi_close,liquidation_long_usd,liquidation_short_usd", "",
    ]))
    n = draw(st.integers(0, 60))
    step = draw(st.sampled_from([300_000, 3_600_000, 60_000, 1, 0, -300_000]))
    cols = len(header.split(",")) if header else 6
    rows = []
    for i in range(n):
        base = 100 + (i % 7)
        row = [str(i * step), str(base), str(base + 1), str(base - 1), str(base + 0.5)] + [str(1000 + i)] * (cols - 5)
        rows.append(row[:cols])
    for _ in range(draw(st.integers(0, 4))):
        if rows:
            r = draw(st.integers(0, len(rows) - 1))
            c = draw(st.integers(0, cols - 1))
            rows[r][c] = draw(cells).replace("\n", " ").replace(",", ";")
    text = (header + "\n" + "".join(",".join(r) + "\n" for r in rows)).encode("utf-8")
    if draw(st.booleans()) and draw(st.booleans()):
        text = draw(st.binary(max_size=64)) + text[draw(st.integers(0, len(text))):]
    return text


@st.composite
def recordings(draw) -> tuple[bytes, dict[str, bytes]]:
    """A recording directory: manifest bytes and files, from a valid one-entry manifest, mutated."""
    body = draw(st.sampled_from([b"[]", b"{}", b'{"symbols": []}', b"not json"])) if draw(st.booleans()) else draw(
        st.binary(max_size=64))
    entry: dict[str, object] = {
        "file": "0001-binance-x.json", "venue": "binance", "url": "https://fapi.binance.com/fapi/v1/exchangeInfo",
        "path": "/fapi/v1/exchangeInfo", "params": {}, "status": 200, "sha256": hashlib.sha256(body).hexdigest(),
    }
    wild = st.one_of(st.none(), st.integers(), texts, st.sampled_from(
        ["/etc/passwd", "../x.json", "/dev/zero", "kraken", "okx", "https://[::1", "http://x/y", "A" * 64, "0" * 64]))
    for key in draw(st.lists(st.sampled_from(sorted(entry)), max_size=2)):
        entry[key] = draw(wild)
    doc: object = {"format": draw(st.sampled_from([1, 1, 1, 2, "1"])), "now_ms": draw(st.sampled_from(
        [1_700_000_000_000, 0, -1, True, "x", 10**20])), "responses": [entry],
        "meta": draw(st.sampled_from([{}, {"symbol": "BTCUSDT", "window": "1d"}, {"symbol": "<@1>"}, []]))}
    raw = json.dumps(doc).encode() if draw(st.integers(0, 5)) else draw(st.binary(max_size=80))
    return raw, {"0001-binance-x.json": body}


DB_URLS = ["sqlite+aiosqlite:///{tmp}/db.sqlite3", "sqlite+aiosqlite:////nonexistent-dir/x/db.sqlite3", "foo://bar",
           ":::", "sqlite:///{tmp}/x.db", "postgresql+asyncpg://u:secret@127.0.0.1:1/db", "mysql+aiomysql://u@h/db", ""]


@st.composite
def env_files(draw) -> bytes:
    """A settings file: known names with plausible, wrong or non-UTF-8 values (never a Discord token)."""
    lines = [b"LIQMAP_SOURCE=sample"] if draw(st.integers(0, 4)) else []
    for name in draw(st.lists(st.sampled_from([n for n in ENV_NAMES if n not in ("DISCORD_TOKEN", "COINGLASS_API_KEY")]),
                              max_size=4)):
        if name == "DATABASE_URL":
            value = draw(st.sampled_from(DB_URLS)).encode()
        elif name == "LIQMAP_SOURCE":
            value = draw(st.sampled_from([b"sample", b"live", b"recorded:", b"recorded:/nonexistent", b"nope", b"x.csv"]))
        elif name == "LIQMAP_CACHE_DIR":
            value = b"{tmp}/cache"
        else:
            value = draw(numbers).encode("utf-8", "replace")
        lines.append(name.encode() + b"=" + value)
    if not draw(st.integers(0, 6)):
        lines.append(draw(st.binary(max_size=20)))
    return b"\n".join(lines) + b"\n"


@st.composite
def invocations(draw) -> tuple[str, list[str], dict[str, object]]:
    kind = draw(st.sampled_from(["report-sample", "report-csv", "report-recorded", "backtest", "dry-run", "record",
                                 "sync", "parse"]))
    files: dict[str, object] = {}
    if kind == "report-sample":
        argv = ["report", "--source", "sample", "--symbol", draw(symbols), "--window", draw(windows),
                "--exchange", draw(exchanges), "--theme", draw(st.sampled_from(["dark", "light", "neon"])),
                "--stack", draw(st.sampled_from(["tier", "venue", "x"])), "--out", "{tmp}/out"]
    elif kind == "report-csv":
        files["bars.csv"] = draw(csv_files())
        argv = ["report", "--source", "{tmp}/bars.csv", "--window", draw(st.sampled_from(["1d", "7d"])), "--out", "{tmp}/out"]
    elif kind == "report-recorded":
        files["rec"] = draw(recordings())
        argv = ["report", "--source", "recorded:{tmp}/rec", "--symbol", draw(symbols), "--window", draw(windows),
                "--out", "{tmp}/out"]
    elif kind == "backtest":
        files["hist.csv"] = draw(csv_files())
        argv = ["backtest", "--data", "{tmp}/hist.csv", "--warmup", draw(st.sampled_from(["0", "1h", "7d", "x", "-1d"])),
                "--boot", draw(st.sampled_from(["1", "10", "0", "100001"])), "--seed", draw(st.sampled_from(["0", "-1", "7"]))]
        for item in draw(overrides):
            argv += ["--set", item]
        if draw(st.booleans()):
            argv.append("--json")
    elif kind == "dry-run":
        files["bot.env"] = draw(env_files())
        argv = ["bot", "--dry-run", "--env-file", "{tmp}/bot.env"]
    elif kind == "record":  # refused before any network: a bad symbol, window or exchange
        argv = ["record", "--symbol", draw(symbols), "--window", draw(windows),
                "--exchange", draw(st.sampled_from(["kraken", "", "coinglass", "nyse"])), "--out", "{tmp}/rec-out"]
    elif kind == "sync":  # no token anywhere: refused before any network
        files["bot.env"] = draw(env_files())
        argv = ["sync-commands", "--env-file", "{tmp}/bot.env", "--guild", draw(st.sampled_from(["0", "-5", "12"]))]
    else:
        argv = draw(st.lists(st.sampled_from(["report", "backtest", "--out", "--set", "x", "--window", "-v", "--help",
                                              "bot", "--boot", "abc", "--nope"]), max_size=5))
    return kind, argv, files


def _lay_out(tmp: Path, files: dict[str, object]) -> None:
    for name, content in files.items():
        if isinstance(content, tuple):
            raw, bodies = content
            (tmp / "rec").mkdir()
            (tmp / "rec" / "manifest.json").write_bytes(raw)
            for fname, body in bodies.items():
                (tmp / "rec" / fname).write_bytes(body)
        else:
            data = content if isinstance(content, bytes) else b""
            (tmp / name).write_bytes(data.replace(b"{tmp}", str(tmp).encode()))


def _run(argv: list[str]) -> tuple[int, str]:
    """main(argv) in a daemon thread with the hang guard; (exit status, stderr)."""
    out: dict[str, object] = {}
    err, std = io.StringIO(), io.StringIO()

    def target() -> None:
        try:
            out["code"] = main(argv)
        except SystemExit as exc:  # argparse: usage errors and --help
            out["code"] = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 2)
        except BaseException as exc:  # noqa: BLE001 - anything escaping main is a finding
            out["escaped"] = exc

    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(std):
        worker = threading.Thread(target=target, daemon=True)
        worker.start()
        worker.join(HANG_GUARD_S)
    assert not worker.is_alive(), f"liqmap {argv} hung (no result after {HANG_GUARD_S:.0f} s)"
    assert "escaped" not in out, f"liqmap {argv} raised {out.get('escaped')!r}"
    code = out["code"]
    assert isinstance(code, int), f"liqmap {argv} returned {code!r}"
    return code, err.getvalue()


@pytest.fixture(autouse=True)
def clean_env(monkeypatch, tmp_path):
    for name in ENV_NAMES:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("LIQMAP_CACHE_DIR", str(tmp_path / "state"))
    # the default database lives in the data dir: without this the runs would share the user's
    # ~/.local/state/liqmap database with whatever else ran there (another checkout's migrations)
    monkeypatch.setenv("LIQMAP_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.chdir(tmp_path)


@pytest.mark.filterwarnings("ignore::pytest.PytestUnhandledThreadExceptionWarning")  # aiosqlite, see test_cli_errors
@settings(max_examples=EXAMPLES, deadline=None, derandomize=True, database=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow, HealthCheck.data_too_large])
@given(invocations())
def test_every_cli_run_ends_cleanly(invocation):
    kind, argv, files = invocation
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        _lay_out(tmp, files)
        code, err = _run([a.replace("{tmp}", d) for a in argv])
    STATS["runs"] += 1
    STATS[f"exit {code}"] += 1
    assert "unexpected internal error" not in err, (argv, err)
    assert code in (0, 2, 75), (argv, code, err)
    if code != 0:
        lines = [line for line in err.splitlines() if "error:" in line]
        assert len(lines) == 1, (argv, err)
        assert "secret" not in lines[0], lines[0]  # a password in DATABASE_URL never reaches the error line
    STATS["clean"] += 1


def test_fuzz_figures(capsys):
    """Not a check: prints the figures of the fuzz run above (with -s) for the record."""
    if STATS["runs"]:
        with capsys.disabled():
            print(f"\nCLI fuzz: {STATS['runs']} runs, {STATS['clean']} ended cleanly; "
                  + ", ".join(f"{k}: {v}" for k, v in sorted(STATS.items()) if k.startswith("exit")))
