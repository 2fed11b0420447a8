"""The serving process's collector policy (collector.py)."""

from __future__ import annotations

import gc

from cachet_server import collector


def test_settle_freezes_what_exists_and_spaces_young_collections():
    """After settle, what existed is out of the collector's view (full collections walk
    only what came later) and young collections wait for YOUNG_THRESHOLD allocations;
    the older generations keep their ratios."""
    before = gc.get_threshold()
    frozen = gc.get_freeze_count()
    survivor = [object()]  # a container alive at settle time
    try:
        collector.settle()
        assert gc.get_freeze_count() > frozen
        assert gc.get_threshold() == (collector.YOUNG_THRESHOLD, before[1], before[2])
        assert not any(o is survivor for o in gc.get_objects())  # frozen, not walked
    finally:
        gc.unfreeze()
        gc.set_threshold(*before)
