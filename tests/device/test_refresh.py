"""Recommender.refresh: pick up a catalog another process synced into the same state folder."""

from __future__ import annotations

from shelfrank.device import Recommender


def test_refresh_swaps_in_a_catalog_synced_by_another_recommender(published, tmp_path):
    state = tmp_path / "state"
    serving = Recommender.open(published["bundle"], public_key=published["pub"], state_dir=state)
    syncer = Recommender.open(published["bundle"], public_key=published["pub"], state_dir=state)
    try:
        assert serving.refresh() is False  # nothing synced yet
        old = serving.catalog
        syncer.sync(published["dir"])
        assert serving.catalog is old and serving.catalog.version == 1
        assert serving.refresh() is True
        assert serving.catalog.version == 3 and "NEW-3" in serving.catalog.index
        assert serving.similar("NEW-3", k=2)
        assert serving.refresh() is False  # unchanged: one readlink, no reload
        assert old.version == 1 and len(old) > 0  # a query holding the old catalog can still finish
    finally:
        serving.close()
        syncer.close()


def test_refresh_ignores_an_older_synced_catalog(published, tmp_path):
    state = tmp_path / "state"
    a = Recommender.open(published["bundle"], public_key=published["pub"], state_dir=state)
    try:
        a.sync(published["dir"])  # a itself serves version 3 now
        assert a.catalog.version == 3
        assert a.refresh() is False
    finally:
        a.close()
