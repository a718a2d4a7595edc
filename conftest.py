"""Root conftest.

The streamparity plugin is registered through the ``pytest11`` entry point of the installed
package (``pip install -e .``), so that its options (``--reference=PATH`` ...) are known before
pytest picks its rootdir from the command line.

Two trees: ``suite/`` holds the product's parity tests and benchmarks (what ``pytest -m parity`` runs);
``tests/`` holds the project's own tests, which carry none of the product's markers.  When the ``-m``
expression can only select product-marked tests, no test module of ``tests/`` is imported; its
``conftest.py`` still is (pytest loads the conftest files of its testpaths first), so it imports only the
standard library, pytest and the plugin's options at module level.  Fixtures shared by the project's own tests
are in ``tests/conftest.py``.
"""

from __future__ import annotations

import itertools
import re
from pathlib import Path

import pytest

SELF_TESTS = Path(__file__).resolve().parent / "tests"
PRODUCT_MARKERS = {"parity", "functional", "closed_loop", "stability", "benchmark", "gpu", "trt"}


def _selects_only_product_tests(markexpr: str) -> bool:
    """True when ``-m markexpr`` is false for every test without a product marker, whatever its other markers."""
    if not markexpr.strip():
        return False
    try:
        from _pytest.mark.expression import Expression  # pytest's own -m evaluator

        expr = Expression.compile(markexpr)
    except Exception:  # an unknown pytest, or a bad expression: pytest itself reports the latter
        return False
    others = sorted(set(re.findall(r"[A-Za-z_][\w]*", markexpr)) - PRODUCT_MARKERS - {"and", "or", "not"})
    if len(others) > 10:
        return False
    for values in itertools.product((False, True), repeat=len(others)):
        marks = dict(zip(others, values))
        if expr.evaluate(lambda name, _marks=marks, **_: bool(_marks.get(name, False))):  # type: ignore[misc]
            return False
    return True


def pytest_ignore_collect(collection_path: Path, config: pytest.Config) -> bool | None:
    inside = collection_path == SELF_TESTS or SELF_TESTS in collection_path.parents
    if inside and _selects_only_product_tests(config.option.markexpr):
        return True
    return None
