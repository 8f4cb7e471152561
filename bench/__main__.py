"""``python -m bench``: run the model/report benchmark (see bench/model.py);
``python -m bench NAME [...]``: the benchmark ``bench/NAME.py`` (e.g. ``budgets``, ``render``,
``scale``, ``shared``, ``model_state``), each writing its own section of docs/benchmarks.md."""

import importlib
import sys

NAMES = ("model", "model_state", "budgets", "render", "scale", "shared", "bot", "sources", "startup",
         "heatmap", "tape", "tape_store")

if len(sys.argv) > 1 and sys.argv[1] in NAMES:
    rc = importlib.import_module(f"bench.{sys.argv[1]}").main(sys.argv[2:])
    sys.exit(rc if isinstance(rc, int) else 0)
elif len(sys.argv) > 1 and not sys.argv[1].startswith("-"):
    sys.exit(f"unknown benchmark {sys.argv[1][:40]!r}; one of: {', '.join(NAMES)}")
else:
    from .model import main

    main()
