"""``python -m bench``: run the model/report benchmark (see bench/model.py)."""

from .model import main

main()
