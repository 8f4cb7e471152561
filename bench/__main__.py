"""``python -m bench``: run the model/report benchmark (see bench/model.py);
``python -m bench budgets [...]``: the posting spread and OI cold start (bench/budgets.py)."""

import sys

if len(sys.argv) > 1 and sys.argv[1] == "budgets":
    from .budgets import main as budgets

    budgets(sys.argv[2:])
else:
    from .model import main

    main()
