"""Alembic migrations of the bot's tables; run from code by :meth:`bot.store.Store.open`."""
