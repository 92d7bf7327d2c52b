"""Catalog sync against a directory and a real HTTP server on 127.0.0.1 (with fault injection)."""

from __future__ import annotations

import datetime as dt
import http.server
import json
import shutil
import threading
from pathlib import Path
from typing import ClassVar

import numpy as np
import pytest

from shelfrank.device import Recommender
from shelfrank.device import bundle as bfmt
from shelfrank.errors import SignatureError, SyncError, UnknownItemError


@pytest.fixture()
def rec(published, tmp_path):
    r = Recommender.open(published["bundle"], public_key=published["pub"], state_dir=tmp_path / "state")
    yield r
    r.close()


def test_delta_chain_from_the_bundle(rec, published):
    rec.record("u", published["removed"][0], "view")  # an item the sync will remove
    res = rec.sync(published["dir"])
    assert (res.from_version, res.to_version, res.method) == (1, 3, "delta")
    cat = rec.catalog
    assert cat.version == 3 and {"NEW-1", "NEW-2", "NEW-3"} <= set(cat.item_ids)
    assert not set(published["removed"]) & set(cat.item_ids)
    assert cat.price[cat.index[published["changed"]]] == pytest.approx(1.23)
    with pytest.raises(UnknownItemError):
        rec.similar(published["removed"][0])
    # the new item was embedded by the publisher with the bundle's encoder: its own text finds it
    assert rec.search("Aurora Quantum Espresso Grinder [SEP] Kitchen [SEP] Aurora", k=3)[0].item_id == "NEW-1"
    # the removed item stays in the history but no longer counts
    assert [e.item_id for e in rec.history("u")] == [published["removed"][0]]
    assert rec.recommend("u", k=3) == rec.recommend("nobody", k=3)
    assert rec.sync(published["dir"]).method == "up to date"


def test_synced_catalog_survives_reopen(published, tmp_path):
    r = Recommender.open(published["bundle"], public_key=published["pub"], state_dir=tmp_path / "s")
    r.sync(published["dir"])
    r.close()
    r2 = Recommender.open(published["bundle"], public_key=published["pub"], state_dir=tmp_path / "s")
    assert r2.catalog.version == 3 and "NEW-3" in r2.catalog.index
    r2.close()


def test_snapshot_when_no_delta_chain(rec, published, tmp_path):
    cdn = tmp_path / "cdn"
    shutil.copytree(published["dir"], cdn)
    idx = json.loads((cdn / "index.json").read_text())
    idx["signed"]["deltas"] = [d for d in idx["signed"]["deltas"] if d["from"] != 1]
    (cdn / "index.json").write_bytes(_resign(idx["signed"], published["key"]))
    res = rec.sync(cdn)
    assert res.method == "snapshot" and rec.catalog.version == 3


def _resign(signed, key) -> bytes:
    from shelfrank.export.publish import sign_index

    return sign_index(signed, key)


def test_rollback_is_refused(rec, published):
    rec.sync(published["dir"])
    with pytest.raises(SyncError, match="refusing a rollback"):
        rec.sync(published["frozen_v2"])
    assert rec.catalog.version == 3


def test_expired_index_is_refused(rec, published):
    far = dt.datetime.now(dt.timezone.utc) + dt.timedelta(days=365)
    from shelfrank.device.sync import sync

    with pytest.raises(SyncError, match="expired"):
        sync(rec, published["dir"], now=far)
    assert rec.catalog.version == 1


def test_bad_signature_is_refused(rec, published, tmp_path):
    cdn = tmp_path / "cdn"
    shutil.copytree(published["dir"], cdn)
    idx = json.loads((cdn / "index.json").read_text())
    idx["signed"]["count"] += 1
    (cdn / "index.json").write_text(json.dumps(idx))
    with pytest.raises(SignatureError):
        rec.sync(cdn)
    evil, _ = bfmt.generate_keypair(tmp_path / "evil.key")
    (cdn / "index.json").write_bytes(_resign(idx["signed"], bfmt.load_private_key(evil)))
    with pytest.raises(SignatureError):
        rec.sync(cdn)
    assert rec.catalog.version == 1


def test_corrupt_file_is_refused_and_old_catalog_serves(rec, published, tmp_path):
    cdn = tmp_path / "cdn"
    shutil.copytree(published["dir"], cdn)
    rows = next((cdn / "deltas").glob("1-2")) / "rows.i8.npy"
    data = bytearray(rows.read_bytes())
    data[-1] ^= 1
    rows.write_bytes(bytes(data))
    before = rec.recommend("x", k=5)
    with pytest.raises(SyncError, match="sha256 mismatch"):
        rec.sync(cdn)
    assert rec.catalog.version == 1 and rec.recommend("x", k=5) == before


def test_nan_in_delta_is_refused(rec, published, tmp_path):
    cdn = tmp_path / "cdn"
    shutil.copytree(published["dir"], cdn)
    d = cdn / "deltas" / "1-2"
    scales = np.load(d / "scales.f32.npy")
    scales[0] = np.nan
    np.save(d / "scales.f32.npy", scales)
    idx = json.loads((cdn / "index.json").read_text())
    for delta in idx["signed"]["deltas"]:
        for f in delta["files"]:
            p = cdn / f["path"]
            f["sha256"], f["size"] = bfmt.sha256_file(p), p.stat().st_size
    (cdn / "index.json").write_bytes(_resign(idx["signed"], published["key"]))
    with pytest.raises(SyncError, match="NaN"):
        rec.sync(cdn)
    assert rec.catalog.version == 1


# ---- a real HTTP server on 127.0.0.1 with Range support and injected faults ---------------------


class _Handler(http.server.SimpleHTTPRequestHandler):
    faults: ClassVar[dict] = {}

    def log_message(self, *args):
        pass

    def do_GET(self):
        path = Path(self.translate_path(self.path))
        if not path.is_file():
            self.send_error(404)
            return
        data = path.read_bytes()
        start = 0
        rng = self.headers.get("Range")
        if rng and rng.startswith("bytes="):
            start = int(rng[6:].split("-")[0])
        body = data[start:]
        self.send_response(206 if start else 200)
        if start:
            self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        cut = self.faults.pop(path.name, None)  # one fault per file name, then it serves normally
        if cut is not None:
            self.wfile.write(body[:cut])
            self.wfile.flush()
            self.close_connection = True
            return
        self.wfile.write(body)


@pytest.fixture()
def http_cdn(published):
    root = published["dir"].parent
    handler = lambda *a, **kw: _Handler(*a, directory=str(root), **kw)  # noqa: E731
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    t = threading.Thread(target=server.serve_forever, daemon=True)
    t.start()
    _Handler.faults = {}
    yield f"http://127.0.0.1:{server.server_address[1]}/{published['dir'].name}/", _Handler.faults
    server.shutdown()
    server.server_close()


def test_http_sync(rec, http_cdn):
    url, _ = http_cdn
    res = rec.sync(url)
    assert res.to_version == 3 and res.downloaded_bytes > 0


def test_http_dropped_connection_then_resume(rec, http_cdn, published):
    url, faults = http_cdn
    rows = published["dir"] / "deltas" / "1-2" / "rows.i8.npy"
    faults["rows.i8.npy"] = rows.stat().st_size // 2
    with pytest.raises(SyncError, match=r"truncated|dropped"):
        rec.sync(url)
    assert rec.catalog.version == 1
    partial = list((rec.state_dir / "downloads").glob("*.part"))
    assert partial and partial[0].stat().st_size == rows.stat().st_size // 2
    res = rec.sync(url)  # resumes with a Range request
    assert res.to_version == 3


def test_http_server_down(rec):
    with pytest.raises(SyncError, match="cannot connect"):
        rec.sync("http://127.0.0.1:9/shop/")
    assert rec.catalog.version == 1


def test_http_missing_file(rec, http_cdn):
    url, _ = http_cdn
    with pytest.raises(SyncError, match="HTTP 404"):
        rec.sync(url + "nope/")


def test_queries_keep_running_during_sync(rec, published):
    errors = []
    stop = threading.Event()

    def reader():
        try:
            while not stop.is_set():
                got = rec.recommend("u", k=5)
                assert len(got) == 5
                rec.similar(rec.catalog.item_ids[5], k=3)
        except BaseException as e:
            errors.append(e)

    threads = [threading.Thread(target=reader) for _ in range(3)]
    for t in threads:
        t.start()
    try:
        rec.sync(published["dir"])
    finally:
        stop.set()
        for t in threads:
            t.join()
    assert not errors, errors
