"""A tiny but real bundle for device tests, built without torch: WordPiece tokenizer, onnx.helper
encoder and tower, int8 catalog of a small demo shop, signed. ``SHELFRANK_TEST_BUNDLE`` (with its
``.pub`` key beside it, if any) replaces it, e.g. with a bundle built on another machine."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np
import pytest

from shelfrank.device import Recommender
from shelfrank.device import bundle as bfmt
from shelfrank.export.data import Catalog
from shelfrank.export.publish import publish
from shelfrank.testing import build_device_bundle


@pytest.fixture(scope="session")
def bundle_and_key(tmp_path_factory) -> tuple[Path, Path | None]:
    env = os.environ.get("SHELFRANK_TEST_BUNDLE")
    if env:
        pub = Path(env + ".pub")
        return Path(env), pub if pub.exists() else None
    return build_device_bundle(tmp_path_factory.mktemp("device-bundle"))


@pytest.fixture()
def bundle_copy(bundle_and_key, tmp_path) -> Path:
    """A private copy a test may damage."""
    dst = tmp_path / "bundle"
    shutil.copytree(bundle_and_key[0], dst)
    return dst


@pytest.fixture()
def rec(bundle_and_key, tmp_path):
    bundle, pub = bundle_and_key
    r = Recommender.open(bundle, public_key=pub, state_dir=tmp_path / "state")
    yield r
    r.close()


@pytest.fixture()
def item_ids(rec) -> list[str]:
    return list(rec.catalog.item_ids)


def unit(v: np.ndarray) -> np.ndarray:
    return v / np.linalg.norm(v)


def _build(tmp_path_factory):
    root = tmp_path_factory.mktemp("sync-bundle")
    bundle, pub = build_device_bundle(root, n_items=120, seed=9)
    return bundle, pub, root / "keys" / "publisher.key"


@pytest.fixture(scope="session")
def published(tmp_path_factory):
    """The bundle, and a publish folder with versions 2 and 3 (and a frozen copy of version 2)."""
    bundle, pub, key_path = _build(tmp_path_factory)
    key = bfmt.load_private_key(key_path)
    rec = Recommender.open(bundle, public_key=pub, state_dir=tmp_path_factory.mktemp("s0"))
    items = [rec.catalog.item(i, 0.0) for i in range(len(rec.catalog))]
    rec.close()
    pub_dir = tmp_path_factory.mktemp("cdn") / "shop"

    def catalog_of(recs):
        return Catalog(
            [r["item_id"] for r in recs],
            [r["title"] for r in recs],
            [r["category"] for r in recs],
            [r["brand"] for r in recs],
            np.array([np.nan if r["price"] is None else r["price"] for r in recs]),
            np.array([r["in_stock"] for r in recs], bool),
        )

    v2 = [
        dict(item_id=r.item_id, title=r.title, category=r.category, brand=r.brand, price=r.price, in_stock=r.in_stock)
        for r in items[3:]
    ]  # removes the first three
    v2[0]["price"] = 1.23  # metadata change only: keeps its row
    v2.append(
        dict(
            item_id="NEW-1",
            title="Aurora Quantum Espresso Grinder",
            category="Kitchen",
            brand="Aurora",
            price=99.0,
            in_stock=True,
        )
    )
    v2.append(
        dict(
            item_id="NEW-2", title="Nimbus Trail Tent", category="Outdoor", brand="Nimbus", price=150.0, in_stock=False
        )
    )
    publish(bundle, pub_dir, catalog_of(v2), key=key)
    frozen_v2 = pub_dir.parent / "frozen-v2"
    shutil.copytree(pub_dir, frozen_v2)
    v3 = [
        *v2,
        dict(
            item_id="NEW-3",
            title="Kestrel Wireless Controller Pro",
            category="Controllers",
            brand="Kestrel",
            price=60.0,
            in_stock=True,
        ),
    ]
    publish(bundle, pub_dir, catalog_of(v3), key=key)
    return dict(
        bundle=bundle,
        pub=pub,
        key=key,
        dir=pub_dir,
        frozen_v2=frozen_v2,
        removed=[r.item_id for r in items[:3]],
        changed=items[3].item_id,
    )
