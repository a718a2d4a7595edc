"""gc_policy: what is frozen, when it is given back, and that a freeze made by someone else is left alone."""

from __future__ import annotations

import gc
from types import SimpleNamespace

import pytest

from streamparity.pytest_plugin import gc_policy


@pytest.fixture
def clean_gc(monkeypatch):
    """Each test starts with nothing frozen and leaves nothing frozen (what an earlier in-process parity run left
    frozen is given back first, as the next run's configure would)."""
    gc_policy.at_configure()
    if gc.get_freeze_count():
        pytest.skip("objects are frozen in this process already")
    monkeypatch.setitem(gc_policy._state, "frozen", None)
    yield
    gc.unfreeze()


PARITY = [SimpleNamespace(fixturenames=("parity", "parity_case"))] * 3
OTHER = [*PARITY, SimpleNamespace(fixturenames=("tmp_path",))]


def test_a_parity_run_stays_frozen_until_the_next_run_configures(clean_gc) -> None:
    gc_policy.at_plugin_import()
    assert gc.get_freeze_count() and gc_policy._state["frozen"] == "import"
    gc_policy.at_configure()  # the import's freeze is this run's: kept
    assert gc.get_freeze_count()
    gc_policy.at_collection_finish(PARITY)
    assert gc_policy._state["frozen"] == "run"
    gc_policy.at_configure()  # a later run in the same process
    assert gc.get_freeze_count() == 0 and gc_policy._state["frozen"] is None


def test_a_run_with_other_tests_gets_everything_back(clean_gc) -> None:
    gc_policy.at_plugin_import()
    gc_policy.at_collection_finish(OTHER)
    assert gc.get_freeze_count() == 0
    gc_policy.at_collection_finish([])  # nothing collected: nothing frozen
    assert gc.get_freeze_count() == 0


def test_a_freeze_made_elsewhere_is_left_alone(clean_gc) -> None:
    gc.freeze()
    before = gc.get_freeze_count()
    gc_policy.at_plugin_import()
    gc_policy.at_collection_finish(PARITY)
    gc_policy.at_collection_finish(OTHER)
    gc_policy.at_configure()
    assert gc.get_freeze_count() == before and gc_policy._state["frozen"] is None
