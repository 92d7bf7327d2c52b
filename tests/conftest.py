"""Shared pytest fixtures: where the real data lives; the tiny signed bundle (built without torch)
and a recommender on it; its hybrid twin (a neighbour table and a ``ranker`` entry); a second tiny
bundle that catalog updates are published for.

``SHELFRANK_TEST_BUNDLE`` (with its ``.pub`` key beside it, if any) replaces the tiny bundle, e.g.
with a bundle built on another machine (how the emulated aarch64 run gets it)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from shelfrank.testing import build_device_bundle, publisher_key, tiny_ranker

REPO = Path(__file__).resolve().parent.parent


def data_dir() -> Path:
    """SHELFRANK_DATA, else ``shared/data`` beside the checkout."""
    return Path(os.environ.get("SHELFRANK_DATA", REPO.parent / "shared" / "data"))


@pytest.fixture(scope="session")
def shelfrank_data() -> Path:
    d = data_dir()
    if not d.is_dir():
        pytest.fail(f"the shopping data is not at {d}; set SHELFRANK_DATA to the shared/data folder")
    return d


@pytest.fixture(scope="session")
def bundle_and_key(tmp_path_factory) -> tuple[Path, Path | None]:
    env = os.environ.get("SHELFRANK_TEST_BUNDLE")
    if env:
        pub = Path(env + ".pub")
        return Path(env), pub if pub.exists() else None
    return build_device_bundle(tmp_path_factory.mktemp("device-bundle"))


@pytest.fixture()
def rec(bundle_and_key, tmp_path):
    from shelfrank.device import Recommender

    bundle, pub = bundle_and_key
    r = Recommender.open(bundle, public_key=pub, state_dir=tmp_path / "state")
    yield r
    r.close()


@pytest.fixture(scope="session")
def hybrid_bundle(tmp_path_factory) -> tuple[Path, Path]:
    """The tiny bundle with a co-occurrence neighbour table (8 per item) and the hybrid ranker entry
    ``shelfrank.testing.tiny_ranker()``; its private key is ``../keys/publisher.key``."""
    return build_device_bundle(tmp_path_factory.mktemp("hybrid-bundle"), neighbors=8, ranker=tiny_ranker())


@pytest.fixture()
def hybrid_rec(hybrid_bundle, tmp_path):
    from shelfrank.device import Recommender

    bundle, pub = hybrid_bundle
    r = Recommender.open(bundle, public_key=pub, state_dir=tmp_path / "hybrid-state")
    yield r
    r.close()


@pytest.fixture(scope="session")
def sync_bundle(tmp_path_factory) -> dict:
    """A bundle for catalog-update tests: bundle, pub, key (private key path), its items as records
    (dicts with the fields ``shelfrank.testing.publish_records`` takes) and new_item (one more)."""
    from shelfrank.device import Recommender

    root = tmp_path_factory.mktemp("sync-bundle")
    bundle, pub = build_device_bundle(root, n_items=120, seed=9)
    r = Recommender.open(bundle, public_key=pub, state_dir=root / "s0")
    items = [r.catalog.item(i) for i in range(len(r.catalog))]
    r.close()
    fields = ("item_id", "title", "category", "brand", "price", "in_stock")
    records = [{f: getattr(it, f) for f in fields} for it in items]
    new_item = dict(item_id="NEW-1", title="Aurora Quantum Espresso Grinder", category="Kitchen", brand="Aurora")
    new_item.update(price=99.0, in_stock=True)
    return dict(bundle=bundle, pub=pub, key=publisher_key(bundle), records=records, new_item=new_item)
