"""``python -m bench.accuracy``: regenerate the shipped backtest headline from the backtest itself.

Not a benchmark: it runs ``liqmap backtest`` in-process (default model parameters, 7-day warm-up,
1,000 block-bootstrap resamples, seed 0: the run of docs/methodology.md, "Results on the dev file")
on the realized-liquidation file and writes the map-only headline that ``/about`` shows to
``analysis/data/backtest-headline.json`` (:func:`analysis.accuracy.headline_from_backtest`).

    python -m bench.accuracy [--data ../shared/data/btc-realized-liquidations-1h-dev.csv] [--out FILE] [--check]

``--check`` writes nothing and exits 1 when the shipped file's figures differ from a fresh run.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

from analysis.accuracy import PUBLISHED_HEADLINE, headline_from_backtest

DEV_FILE = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "btc-realized-liquidations-1h-dev.csv"
COMMAND = "python -m bench.accuracy --data ../shared/data/btc-realized-liquidations-1h-dev.csv"


def build(data: Path, *, now_ms: int | None = None) -> dict[str, Any]:
    """The headline document of a fresh default backtest of ``data``."""
    from analysis.backtest import load_history, params_with, run_backtest

    result = run_backtest(load_history(data), params_with(()), warmup="7d", n_boot=1000, seed=0)
    return headline_from_backtest(result.to_json(), symbol="BTCUSDT", command=COMMAND,
                                  generated_ms=int(time.time() * 1000) if now_ms is None else now_ms)


def same_figures(a: dict[str, Any], b: dict[str, Any]) -> bool:
    """Equal apart from when they were generated."""
    return {k: v for k, v in a.items() if k != "generated"} == {k: v for k, v in b.items() if k != "generated"}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.accuracy", description=__doc__.splitlines()[0])
    p.add_argument("--data", type=Path, default=DEV_FILE)
    p.add_argument("--out", type=Path, default=PUBLISHED_HEADLINE)
    p.add_argument("--check", action="store_true", help="compare with --out instead of writing it")
    args = p.parse_args(argv)
    doc = build(args.data)
    if args.check:
        shipped = json.loads(args.out.read_text(encoding="utf-8"))
        ok = same_figures(doc, shipped)
        print(f"{args.out}: {'matches' if ok else 'DIFFERS FROM'} a fresh backtest of {args.data.name}")
        return 0 if ok else 1
    args.out.write_text(json.dumps(doc, indent=1) + "\n", encoding="utf-8")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
