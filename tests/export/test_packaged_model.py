"""The packaged all-MiniLM-L6-v2 through the whole path: export (few steps) → signed bundle → device API."""

from __future__ import annotations

import pytest

from shelfrank.device import bundle as bfmt

pytestmark = pytest.mark.slow


def test_packaged_teacher_to_device(tmp_path):
    from shelfrank.device import Recommender
    from shelfrank.export.demo_shop import make_demo_shop
    from shelfrank.export.pipeline import Preset, run_export

    shop = make_demo_shop(n_items=300, n_users=120, seed=11)
    key, pub = bfmt.generate_keypair(tmp_path / "k")
    preset = Preset(
        "smoke",
        teacher_steps=2,
        student_steps=2,
        batch=8,
        tower_epochs=1,
        tower_time_s=None,
        max_events=8,
        eval_sample=50,
        zero_shot_sample=10,
        latency_runs=2,
        parity_texts=60,
    )
    res = run_export(shop, tmp_path / "bundle", key=key, preset=preset)  # the packaged teacher
    m = res.manifest
    assert m["model"]["dim"] == 384 and m["model"]["layers"] == 3
    assert (tmp_path / "bundle" / "encoder.onnx").stat().st_size <= 18e6
    assert res.quality["parity"]["mean_cos"] >= 0.99
    rec = Recommender.open(tmp_path / "bundle", public_key=pub, state_dir=tmp_path / "state")
    try:
        coffee = rec.catalog.rows_where({"category": "Coffee"})
        rec.record("u", rec.catalog.item_ids[coffee[0]], "purchase")
        got = rec.recommend("u", k=5)
        assert len(got) == 5
        hits = rec.search("espresso beans", k=5)
        assert sum(h.category in ("Coffee", "Kitchen") for h in hits) >= 3, hits
    finally:
        rec.close()
