"""``GET /metrics`` (the Prometheus text exposition format 0.0.4) and impressions with click-through
joined on the device: read back through a strict parser of the format written here, never
prometheus_client (not a dependency)."""

from __future__ import annotations

import math
import re
import sqlite3
import time

import pytest

from shelfrank.device.events import MAX_SURFACES, OTHER_SURFACE, EventStore
from shelfrank.device.service.metrics import BUCKETS, Metrics
from shelfrank.errors import InputError

_NAME = re.compile(r"[a-zA-Z_:][a-zA-Z0-9_:]*")
_SAMPLE = re.compile(r"([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})? (\S+)")
_LABEL = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\\n]|\\[\\"n])*)"(,|$)')
_SUFFIXES = {"counter": ("",), "gauge": ("",), "histogram": ("_bucket", "_sum", "_count")}


def parse_exposition(text: str) -> dict[str, dict]:
    """The families of an exposition text: {name: {type, help, samples: {(suffix, labels): value}}}.

    Strict: HELP then TYPE before a family's samples, each family once, known types, valid names,
    labels and numbers, no duplicate series, a final newline; histograms with cumulative buckets
    ending in +Inf equal to _count; counters never negative.
    """
    assert text.endswith("\n"), "the text must end with a newline"
    families: dict[str, dict] = {}
    current = None
    for n, line in enumerate(text[:-1].split("\n"), 1):
        assert line, f"line {n}: empty"
        if line.startswith("# HELP "):
            name, _, help_ = line[7:].partition(" ")
            assert _NAME.fullmatch(name) and name not in families, f"line {n}: {line}"
            current = families[name] = {"help": help_, "type": None, "samples": {}}
            current["name"] = name
        elif line.startswith("# TYPE "):
            name, _, kind = line[7:].partition(" ")
            assert current and current["name"] == name and current["type"] is None, f"line {n}: {line}"
            assert kind in _SUFFIXES, f"line {n}: type {kind}"
            current["type"] = kind
        else:
            assert not line.startswith("#"), f"line {n}: {line}"
            m = _SAMPLE.fullmatch(line)
            assert m and current and current["type"], f"line {n}: {line}"
            name, labels_text, value = m.groups()
            suffix = name[len(current["name"]) :]
            assert name.startswith(current["name"]) and suffix in _SUFFIXES[current["type"]], f"line {n}: {line}"
            labels: list[tuple[str, str]] = []
            rest = labels_text or ""
            while rest:
                lm = _LABEL.match(rest)
                assert lm, f"line {n}: bad labels {labels_text!r}"
                labels.append((lm.group(1), lm.group(2)))
                rest = rest[lm.end() :]
            assert len({k for k, _ in labels}) == len(labels), f"line {n}: repeated label"
            number = float(value)  # NaN, +Inf, -Inf and decimals all parse
            key = (suffix, tuple(labels))
            assert key not in current["samples"], f"line {n}: duplicate series"
            current["samples"][key] = number
    for name, fam in families.items():
        assert fam["type"], f"{name}: no TYPE"
        if fam["type"] == "counter":
            assert all(v >= 0 for v in fam["samples"].values()), name
        if fam["type"] == "histogram":
            _check_histogram(name, fam["samples"])
    return families


def _check_histogram(name: str, samples: dict) -> None:
    series: dict[tuple, list[tuple[float, float]]] = {}
    for (suffix, labels), v in samples.items():
        if suffix == "_bucket":
            le = dict(labels)["le"]
            rest = tuple(kv for kv in labels if kv[0] != "le")
            series.setdefault(rest, []).append((float(le), v))
    for rest, buckets in series.items():
        buckets.sort()
        counts = [v for _, v in buckets]
        assert counts == sorted(counts), (name, rest, "buckets must be cumulative")
        assert math.isinf(buckets[-1][0]), (name, rest, "the last bucket is +Inf")
        assert buckets[-1][1] == samples[("_count", rest)], (name, rest)
        assert ("_sum", rest) in samples, (name, rest)


def value(families: dict, name: str, suffix: str = "", **labels: str) -> float | None:
    fam = families[name]
    for (s, ls), v in fam["samples"].items():
        if s == suffix and dict(ls) == labels:
            return v
    return None


def scrape(client) -> tuple[str, dict]:
    client.conn.request("GET", "/metrics")
    r = client.conn.getresponse()
    body = r.read().decode()
    assert r.status == 200, body
    assert r.headers["Content-Type"] == "text/plain; version=0.0.4; charset=utf-8"
    return body, parse_exposition(body)


def test_parser_is_strict():
    good = '# HELP a_total A.\n# TYPE a_total counter\na_total{x="1"} 3\n'
    assert value(parse_exposition(good), "a_total", x="1") == 3
    for bad in (
        good[:-1],  # no final newline
        "a_total 3\n",  # a sample before its TYPE
        good + 'a_total{x="1"} 4\n',  # a duplicate series
        good.replace('x="1"', "x=1"),  # an unquoted label value
        good.replace("counter", "count"),  # an unknown type
        good.replace(" 3\n", " -3\n"),  # a negative counter
        good + good,  # a family twice
    ):
        with pytest.raises(AssertionError):
            parse_exposition(bad)


def test_metrics_count_requests_latency_and_the_catalog(rec, client):
    secret_user = "shopper-secret-42"
    item = rec.recommend(secret_user, 1)[0].item_id
    _, before = scrape(client)
    assert value(before, "shelfrank_catalog_version") == rec.catalog.version
    assert value(before, "shelfrank_catalog_items") == len(rec.catalog)
    assert "shelfrank_catalog_sync_age_seconds" not in before  # the bundle's own catalog
    build = next(iter(before["shelfrank_build_info"]["samples"]))[1]
    assert dict(build)["version"] and dict(build)["isa"]
    n0 = value(before, "shelfrank_requests_total", operation="recommend", status="200") or 0

    for _ in range(3):
        assert client.post("/v1/recommend", {"user_id": secret_user, "k": 3})[0] == 200
    assert client.post("/v1/record", {"user_id": secret_user, "item_id": item, "action": "view"})[0] == 200
    assert client.post("/v1/similar", {"item_id": "NO-SUCH-ITEM"})[0] == 404
    text, after = scrape(client)
    assert value(after, "shelfrank_requests_total", operation="recommend", status="200") == n0 + 3
    assert value(after, "shelfrank_requests_total", operation="similar", status="404") == 1
    assert value(after, "shelfrank_requests_total", operation="metrics", status="200") >= 1
    count = value(after, "shelfrank_request_duration_seconds", "_count", operation="recommend")
    assert count == n0 + 3
    total = value(after, "shelfrank_request_duration_seconds", "_sum", operation="recommend")
    assert 0 < total < 10 * count
    buckets = [k for k in after["shelfrank_request_duration_seconds"]["samples"] if k[0] == "_bucket"]
    assert len(buckets) == len({k[1] for k in buckets}) and len(buckets) % (len(BUCKETS) + 1) == 0
    assert value(after, "shelfrank_uptime_seconds") > 0
    # nothing that identifies a shopper: no user id, no item id anywhere in the text
    assert secret_user not in text and item not in text and "NO-SUCH-ITEM" not in text


def test_impressions_and_click_through_per_surface(rec, client):
    user = "u-ctr"
    shown = [it.item_id for it in rec.recommend(user, 4)]
    status, doc = client.post("/v1/impression", {"user_id": user, "item_ids": shown, "surface": "home"})
    assert status == 200 and (doc["surface"], doc["items"]) == ("home", 4) and doc["ts"] > 0
    _, fam = scrape(client)
    assert value(fam, "shelfrank_impressions_total", surface="home") == 4
    assert value(fam, "shelfrank_clicks_total", surface="home") == 0
    assert value(fam, "shelfrank_click_through_ratio", surface="home") == 0

    other = next(it.item_id for it in rec.similar(shown[0], 20) if it.item_id not in shown)
    for item_id in (shown[1], shown[1], other):  # the same impression joins once; an unshown item never
        assert client.post("/v1/record", {"user_id": user, "item_id": item_id, "action": "click"})[0] == 200
    assert client.post("/v1/record", {"user_id": user, "item_id": shown[2], "action": "view"})[0] == 200  # not a click
    assert client.post("/v1/record", {"user_id": "someone-else", "item_id": shown[3], "action": "click"})[0] == 200
    _, fam = scrape(client)
    assert value(fam, "shelfrank_clicks_total", surface="home") == 1
    assert value(fam, "shelfrank_click_through_ratio", surface="home") == 0.25

    # refusals: a surface that is not a short name (422, the field named), an unknown item (404)
    status, doc = client.post("/v1/impression", {"user_id": user, "item_ids": shown, "surface": "Home Page"})
    assert (status, doc["field"]) == (422, "surface")
    status, doc = client.post("/v1/impression", {"user_id": user, "item_ids": [], "surface": "home"})
    assert (status, doc["field"]) == (422, "item_ids")
    status, doc = client.post("/v1/impression", {"user_id": user, "item_ids": ["NOPE"], "surface": "home"})
    assert (status, doc["error"]) == (404, "unknown_item")

    # forget: the shopper's impression rows go, the per-surface totals (no shopper in them) stay
    assert client.post("/v1/forget", {"user_id": user})[0] == 200
    with sqlite3.connect(rec.events.path) as con:
        assert con.execute("SELECT COUNT(*) FROM impressions WHERE user_id = ?", (user,)).fetchone()[0] == 0
    assert rec.events.click_through()["home"] == (4, 1)


def test_click_window_latest_impression_and_the_surface_cap(tmp_path):
    store = EventStore(tmp_path / "events.sqlite", click_window=60.0)
    t = 1_000_000.0
    store.record_impression("u", ["a", "b"], "search", ts=t)
    store.record_impression("u", ["a"], "recommended", ts=t + 10)
    store.record("u", "a", "click", ts=t + 20)  # the latest impression of a: recommended
    store.record("u", "b", "click", ts=t + 61)  # past the window of b's impression
    store.record("u", "a", "click", ts=t + 30)  # a's other impression (search) is still open
    assert store.click_through() == {"search": (2, 1), "recommended": (1, 1)}
    store.record_impression("u", ["c"], "search", ts=t + 100)
    store.record("u", "c", "click", ts=t + 99)  # before it was shown: no
    assert store.click_through()["search"] == (3, 1)
    store.record_impression("u", ["d"], "search", ts=t + 1000)  # rows older than the window are dropped
    with sqlite3.connect(store.path) as con:
        assert con.execute("SELECT item_id FROM impressions").fetchall() == [("d",)]

    for i in range(MAX_SURFACES + 3):
        got = store.record_impression("u", ["x"], f"s{i}", ts=t + 2000)
        # search and recommended, then s0..s28 apart: one slot is kept for other
        assert got == (f"s{i}" if i < MAX_SURFACES - 3 else OTHER_SURFACE), (i, got)
    assert len(store.click_through()) == MAX_SURFACES
    for bad in ("", "Search", "a b", "x" * 33, 7):
        with pytest.raises(InputError, match="surface"):
            store.record_impression("u", ["a"], bad)
    with pytest.raises(InputError, match="item_ids"):
        store.record_impression("u", [], "search")
    store.close()
    with pytest.raises(InputError, match="click_window"):
        EventStore(tmp_path / "e2.sqlite", click_window=0)


def test_sync_age_of_a_synced_catalog(published, tmp_path):
    from shelfrank.device import Recommender
    from shelfrank.device.service.endpoints import Service

    rec = Recommender.open(published["bundle"], public_key=published["pub"], state_dir=tmp_path / "state")
    try:
        service = Service(rec)
        assert "sync_age" not in service.exposition().decode()
        rec.sync(published["dir"])
        time.sleep(0.05)
        fam = parse_exposition(service.exposition().decode())
        assert value(fam, "shelfrank_catalog_version") == 2
        assert 0 < value(fam, "shelfrank_catalog_sync_age_seconds") < 60
    finally:
        rec.close()


def test_observe_is_cheap_and_thread_safe():
    import threading

    m = Metrics()
    threads = [threading.Thread(target=lambda: [m.observe("x", 200, 0.001) for _ in range(5000)]) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert m.requests() == {("x", 200): 20000}
    counts, total, n = m.latency()["x"]
    assert n == 20000 and counts[BUCKETS.index(0.001)] == 20000 and abs(total - 20.0) < 1e-6
    started = time.perf_counter()
    for _ in range(20000):
        m.observe("y", 200, 0.003)
    per_call = (time.perf_counter() - started) / 20000
    assert per_call < 50e-6, per_call  # a few µs on a Pi; the request it counts takes ≥ 300 µs
