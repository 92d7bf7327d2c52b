"""Device test fixtures on top of tests/conftest.py (the tiny bundle, ``rec``, ``sync_bundle``): a
private bundle copy to damage, and a publish folder with catalog versions 2 and 3."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

from shelfrank.device import bundle as bfmt
from shelfrank.testing import publish_records


@pytest.fixture()
def bundle_copy(bundle_and_key, tmp_path) -> Path:
    """A private copy a test may damage."""
    dst = tmp_path / "bundle"
    shutil.copytree(bundle_and_key[0], dst)
    return dst


@pytest.fixture()
def item_ids(rec) -> list[str]:
    return list(rec.catalog.item_ids)


def unit(v: np.ndarray) -> np.ndarray:
    return v / np.linalg.norm(v)


@pytest.fixture(scope="session")
def published(sync_bundle, tmp_path_factory):
    """The bundle, and a publish folder with versions 2 and 3 (and a frozen copy of version 2)."""
    bundle, pub, key_path = sync_bundle["bundle"], sync_bundle["pub"], sync_bundle["key"]
    key = bfmt.load_private_key(key_path)
    items = sync_bundle["records"]
    pub_dir = tmp_path_factory.mktemp("cdn") / "shop"

    v2 = [dict(r) for r in items[3:]]  # removes the first three
    v2[0]["price"] = 1.23  # metadata change only: keeps its row
    v2.append(dict(sync_bundle["new_item"]))  # NEW-1
    v2.append(
        dict(
            item_id="NEW-2", title="Nimbus Trail Tent", category="Outdoor", brand="Nimbus", price=150.0, in_stock=False
        )
    )
    publish_records(bundle, pub_dir, v2, key_path)
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
    publish_records(bundle, pub_dir, v3, key_path)
    return dict(
        bundle=bundle,
        pub=pub,
        key=key,
        dir=pub_dir,
        frozen_v2=frozen_v2,
        removed=[r["item_id"] for r in items[:3]],
        changed=items[3]["item_id"],
    )
