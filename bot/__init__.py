"""liqmap's front ends: the ``liqmap`` command line and the Discord bot, thin layers over ``analysis``."""
