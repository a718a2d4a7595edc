"""The ``streamparity`` command line: ``main`` dispatches to one ``cmd_*`` module per command."""
