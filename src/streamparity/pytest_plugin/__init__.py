"""The pytest plugin: hooks in ``plugin``, which call into the ``session`` object.

Importing it first puts what is loaded so far out of the garbage collector's sight (:mod:`.gc_policy`)."""

from streamparity.pytest_plugin import gc_policy as _gc_policy

_gc_policy.at_plugin_import()
