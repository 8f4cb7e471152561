"""The bot's cogs, one module per feature, each with ``async def setup(bot)``.

``liqmap`` (the ``/liqmap`` command), ``daily`` (``/daily``), ``skew_alerts`` (``/skew-alerts``) and
``clusters`` (``/cluster-alerts``). What they share lives in named modules beside this package:
:mod:`bot.choices`, :mod:`bot.symbol_index`, :mod:`bot.cooldown`, :mod:`bot.checks` and
:mod:`bot.replies`.
"""
