"""Subcommands of the ``streamparity`` console script, one module each."""
