"""The pytest plugin: hooks in ``plugin``, which call into the ``session`` object."""
